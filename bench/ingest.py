"""Benchmark: `keep ingest` beside the plain Spark floor, and the generator, at several day sizes.

    .venv/bin/python bench/ingest.py                      # 1 M, 5 M and 20 M impressions (defaults)
    .venv/bin/python bench/ingest.py --sizes 200000       # any sizes

For each size, in a fresh temporary KEEP_HOME (200 k users, 50 k items):

1. ``keep generate`` writes one day of that many impressions (its own process);
2. ``keep ingest`` loads the day into Delta (its own process): parse, 20+ row rules,
   quarantine, deduplication with the conflict rule, audit, five Delta tables;
3. the floor, ``bench/_ingest_floor.py`` (its own process): the same impressions file read
   with an explicit schema, ``try_cast``, ``dropDuplicates(impression_id)``, one Delta write
   -- the least Spark work that turns the file into a deduplicated table.

Ingest and the floor run with the same Spark settings (keep's defaults: ``local[2]``, 2 g
driver heap, unless ``--driver-memory`` is given) and are timed the same way: the wall
time of the whole process, **including its JVM start** (``measured_with_jvm_start``), so
rows/s = impressions / that time. Memory is the peak proportional set size (PSS) of each
process tree (Python, the JVM, any Python workers; ``bench/_common.py``), sampled every 200 ms.

Writes reports/bench/ingest.json: ``sizes``; per size (lists aligned with ``sizes``)
``ingest_s``, ``floor_s``, ``ingest_rows_per_s``, ``floor_rows_per_s``, ``ratio``
(ingest rows/s / floor rows/s), ``peak_pss_mb`` (ingest), ``floor_peak_pss_mb``,
``ingest_spark_jobs`` and ``ingest_delta_commits`` (all tables), ``generator_s``,
``generator_rows_per_s``, ``generator_peak_pss_mb``; and ``driver_memory``,
``measured_with_jvm_start``, ``total_s`` (the whole run).

The defaults took about 25 minutes on the reference machine (2 cores; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import PYTHON, REPO, Measured, run_measured, write_report

DAY = "2026-01-01"
CLI = [PYTHON, "-m", "keep.flows.cli"]


def delta_commits(lake: Path) -> int:
    """Commits in every Delta table under ``lake`` (a fresh home: all of them ingest's)."""
    return len(list(lake.glob("*/*/_delta_log/*.json")))


def spark_jobs(run: Measured) -> int | None:
    """The Spark job count ingest logs ("... N Spark jobs")."""
    found = re.search(r"(\d+) Spark jobs", run.output)
    return int(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument(
        "--driver-memory", default=None, help="spark.driver_memory (default: keep's own, 2g)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from keep.core.config import load_settings

    driver_memory = args.driver_memory or load_settings().spark.driver_memory
    figures: dict[str, object] = {"sizes": [], "driver_memory": driver_memory}
    rows: dict[str, list[float | int | None]] = {
        key: []
        for key in (
            "ingest_s",
            "floor_s",
            "ingest_rows_per_s",
            "floor_rows_per_s",
            "ratio",
            "peak_pss_mb",
            "floor_peak_pss_mb",
            "ingest_spark_jobs",
            "ingest_delta_commits",
            "generator_s",
            "generator_rows_per_s",
            "generator_peak_pss_mb",
        )
    }
    began = time.perf_counter()
    for size in args.sizes:
        home = Path(tempfile.mkdtemp(prefix="keep-bench-ingest-"))
        env = {
            "KEEP_HOME": str(home),
            "KEEP_GENERATOR__IMPRESSIONS_PER_DAY": str(size),
            "KEEP_GENERATOR__N_USERS": str(args.users),
            "KEEP_GENERATOR__N_ITEMS": str(args.items),
        }
        if args.driver_memory:
            env["KEEP_SPARK__DRIVER_MEMORY"] = args.driver_memory
        try:
            gen = run_measured([*CLI, "generate", "--start", DAY], env)
            ing = run_measured([*CLI, "ingest", "--ds", DAY], env)
            commits = delta_commits(home / "var" / "lake")
            raw = home / "var" / "raw" / "impressions" / f"ds={DAY}"
            floor = run_measured(
                [PYTHON, "bench/_ingest_floor.py", str(raw), str(home / "floor"), DAY], env
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)
        figures["sizes"].append(size)  # type: ignore[attr-defined]
        values = {
            "ingest_s": round(ing.wall_s, 1),
            "floor_s": round(floor.wall_s, 1),
            "ingest_rows_per_s": round(size / ing.wall_s),
            "floor_rows_per_s": round(size / floor.wall_s),
            "ratio": round(floor.wall_s / ing.wall_s, 2),
            "peak_pss_mb": round(ing.peak_pss_mb),
            "floor_peak_pss_mb": round(floor.peak_pss_mb),
            "ingest_spark_jobs": spark_jobs(ing),
            "ingest_delta_commits": commits,
            "generator_s": round(gen.wall_s, 1),
            "generator_rows_per_s": round(size / gen.wall_s),
            "generator_peak_pss_mb": round(gen.peak_pss_mb),
        }
        for key, value in values.items():
            rows[key].append(value)
        print(
            f"{size:>12,} impressions: generate {gen.wall_s:.1f} s ({gen.peak_pss_mb:.0f} MB); "
            f"ingest {ing.wall_s:.1f} s ({ing.peak_pss_mb:.0f} MB, "
            f"{values['ingest_spark_jobs']} jobs, {commits} commits); "
            f"floor {floor.wall_s:.1f} s ({floor.peak_pss_mb:.0f} MB); "
            f"ratio {values['ratio']}",
            flush=True,
        )
    figures.update(rows)
    figures["measured_with_jvm_start"] = True
    figures["total_s"] = round(time.perf_counter() - began)
    write_report("ingest", figures)


if __name__ == "__main__":
    main()

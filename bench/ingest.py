"""Benchmark: generator and Spark ingest throughput and peak memory at several day sizes.

    .venv/bin/python bench/ingest.py                      # 1 M and 5 M impressions (defaults)
    .venv/bin/python bench/ingest.py --sizes 200000       # any sizes

For each size, in a fresh temporary KEEP_HOME: ``keep generate`` writes one day of that many
impressions, then ``keep ingest`` loads it into Delta, each as its own process so the peak
memory of each (Python + the Spark JVM child) is measured alone. Writes
reports/bench/ingest.json with keys ``sizes``, ``generator_rows_per_s``,
``ingest_rows_per_s``, ``peak_rss_mb`` (ingest, including the JVM) and
``generator_peak_rss_mb`` (lists aligned with ``sizes``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import PYTHON, run_measured, write_report

DAY = "2026-01-01"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--driver-memory", default="2g")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {
        "sizes": [],
        "generator_rows_per_s": [],
        "ingest_rows_per_s": [],
        "peak_rss_mb": [],
        "generator_peak_rss_mb": [],
        "generator_s": [],
        "ingest_s": [],
    }
    for size in args.sizes:
        home = Path(tempfile.mkdtemp(prefix="keep-bench-ingest-"))
        env = {
            "KEEP_HOME": str(home),
            "KEEP_GENERATOR__IMPRESSIONS_PER_DAY": str(size),
            "KEEP_GENERATOR__N_USERS": str(args.users),
            "KEEP_GENERATOR__N_ITEMS": str(args.items),
            "KEEP_SPARK__DRIVER_MEMORY": args.driver_memory,
        }
        try:
            gen = run_measured([PYTHON, "-m", "keep.flows.cli", "generate", "--start", DAY], env)
            ing = run_measured([PYTHON, "-m", "keep.flows.cli", "ingest", "--ds", DAY], env)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        figures["sizes"].append(size)
        figures["generator_s"].append(round(gen.wall_s, 1))
        figures["ingest_s"].append(round(ing.wall_s, 1))
        figures["generator_rows_per_s"].append(round(size / gen.wall_s))
        figures["ingest_rows_per_s"].append(round(size / ing.wall_s))
        figures["peak_rss_mb"].append(round(ing.peak_pss_mb))
        figures["generator_peak_rss_mb"].append(round(gen.peak_pss_mb))
        print(
            f"{size:>12,} rows: generate {gen.wall_s:.1f} s ({gen.peak_pss_mb:.0f} MB), "
            f"ingest {ing.wall_s:.1f} s ({ing.peak_pss_mb:.0f} MB incl. JVM)",
            flush=True,
        )
    write_report("ingest", figures)


if __name__ == "__main__":
    main()

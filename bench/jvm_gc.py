"""Benchmark: Spark's JVM under G1 (the JVM's default here) vs the serial collector.

    .venv/bin/python bench/jvm_gc.py                               # 2 k and 50 k a day
    .venv/bin/python bench/jvm_gc.py --impressions 2000 --days 8 --report jvm_gc_8days
    .venv/bin/python bench/jvm_gc.py --options "" "-XX:+UseSerialGC" "-XX:+UseParallelGC"

Each configuration (``spark.java_options``) runs the same work in a process of its own,
with its own JVM start, as a daily task or a test does: ``--days`` days of a generated
world landed, ingested, aggregated and turned into samples, in a fresh home, local[2]
with the platform's other settings. Per run: the wall seconds, the CPU seconds the whole
machine spent meanwhile (busy time from ``/proc/stat``: on an otherwise idle machine, the
run's processes, the JVM included) and the peak PSS of the process tree. Configurations
run in turn within each round, in an order that alternates from round to round.

CPU seconds matter as much as wall time here: a 2-core machine running the daily tasks,
or the test suite's two workers, keeps both cores busy.

Writes reports/bench/<--report>.json (default ``jvm_gc``): per world size and option, the
median wall and CPU seconds and peak PSS, and each option's CPU and wall relative to the
first one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import psutil
from _common import PYTHON, REPO, cpu_probe, run_measured, write_report

# The work of one run, in a process of its own (argv: home, impressions, days, options).
WORK = """
import datetime as dt, sys
from pathlib import Path
from keep.core.config import load_settings
from keep.lake.spark import get_spark
from keep.sources import generator
from spark_jobs.aggregate import run_aggregate
from spark_jobs.ingest import run_ingest
from spark_jobs.samples import run_samples

home, impressions, days, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
users = max(300, impressions // 10)
settings = load_settings(
    home=Path(home),
    spark={"jars_dir": Path(sys.argv[5]), "java_options": options},
    generator={"n_users": users, "n_items": max(200, users // 2), "impressions_per_day": impressions},
)
spark = get_spark(settings)
for i in range(days):
    ds = dt.date(2026, 1, 1) + dt.timedelta(days=i)
    generator.write_day(settings, ds)
    run_ingest(spark, settings, ds)
    run_aggregate(spark, settings, ds)
    run_samples(spark, settings, ds)
gcs = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
print("collectors:", ",".join(str(b.getName()) for b in gcs), flush=True)
spark.stop()
"""


def busy_cpu_s() -> float:
    """CPU seconds the machine has spent busy (all cores, not idle or iowait) since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - times.iowait)


def one_run(impressions: int, days: int, options: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="keep-bench-gc-") as home:
        cpu_before = busy_cpu_s()
        measured = run_measured(
            [
                PYTHON,
                "-c",
                WORK,
                home,
                str(impressions),
                str(days),
                options,
                str(REPO / ".cache" / "jars"),
            ],
            env={"PYTHONPATH": str(REPO)},
        )
        cpu = busy_cpu_s() - cpu_before
    collectors = next(
        line.split(":", 1)[1].strip()
        for line in measured.output.splitlines()
        if line.startswith("collectors:")
    )
    return {
        "wall_s": round(measured.wall_s, 1),
        "cpu_s": round(cpu, 1),
        "peak_pss_mb": round(measured.peak_pss_mb),
        "collectors": collectors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impressions", type=int, nargs="+", default=[2_000, 50_000])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--options",
        nargs="+",
        default=["", "-XX:+UseSerialGC"],
        help='spark.java_options to compare ("" = the JVM\'s defaults), the first is the base',
    )
    parser.add_argument("--report", default="jvm_gc", help="name of the report under reports/bench")
    args = parser.parse_args()

    began = time.monotonic()
    probe_before = cpu_probe()
    results: dict[str, dict[str, object]] = {}
    for impressions in args.impressions:
        runs: dict[str, list[dict[str, object]]] = {o: [] for o in args.options}
        for round_ in range(args.repeats):
            order = args.options if round_ % 2 == 0 else args.options[::-1]
            for options in order:
                run = one_run(impressions, args.days, options)
                runs[options].append(run)
                print(f"{impressions:,} a day, {options or '(JVM defaults)'}: {run}", flush=True)
        summary: dict[str, dict[str, object]] = {}
        base: dict[str, float] = {}
        for options, done in runs.items():
            medians = {
                key: statistics.median(float(r[key]) for r in done)  # type: ignore[arg-type]
                for key in ("wall_s", "cpu_s", "peak_pss_mb")
            }
            base = base or medians  # the first option's
            summary[options or "default"] = {
                **medians,
                "cpu_ratio": round(medians["cpu_s"] / base["cpu_s"], 3),
                "wall_ratio": round(medians["wall_s"] / base["wall_s"], 3),
                "collectors": done[0]["collectors"],
                "runs": done,
            }
        results[str(impressions)] = summary
    write_report(
        args.report,
        {
            "impressions_per_day": args.impressions,
            "days": args.days,
            "repeats": args.repeats,
            "options": args.options,
            "results": results,
            "bench_wall_s": round(time.monotonic() - began),
            "cpu_probe_s": [probe_before, cpu_probe()],
            "python": sys.version.split()[0],
        },
    )


if __name__ == "__main__":
    main()

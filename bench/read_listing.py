"""Benchmark: reading a table as the files its Delta log names, listed in the driver or by
a Spark job, side by side in one Spark session.

    .venv/bin/python bench/read_listing.py                       # 8, 60, 240, 1000 files
    .venv/bin/python bench/read_listing.py --files 60 --repeats 9

The lake's readers (``keep.lake.spark_io.read_files``) pass Spark the exact Parquet files
of the partitions they read. Spark lists more than
``spark.sql.sources.parallelPartitionDiscovery.threshold`` paths (32 by default) with a
Spark job of its own; the platform's sessions list up to
``keep.lake.spark.LISTING_PATHS_IN_DRIVER`` paths in the driver. A table of a few files a
day passes 32 within weeks (the daily counts, the dimensions read as of a day, the
samples).

One local session (the platform's configuration), one ``dim.users`` partition written with
``max(--files)`` files. For each count, the first ``n`` files are read whole (resolve and
count, what a step does with them) ``--repeats`` times under each threshold, alternating
(Spark's 32, then the platform's), after one untimed warm-up read of each. Writes
reports/bench/read_listing.json: per count, the median seconds per read under each
threshold, their ratio and the Spark jobs per read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_probe, write_report

sys.path.insert(0, str(REPO))

DAY = dt.date(2026, 1, 1)
KEY = "spark.sql.sources.parallelPartitionDiscovery.threshold"
SPARK_DEFAULT = "32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, nargs="+", default=[8, 60, 240, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from keep.core.config import load_settings
    from keep.core.tables import DIM_USERS
    from keep.lake import delta
    from keep.lake import spark_io as lake
    from keep.lake.spark import LISTING_PATHS_IN_DRIVER, get_spark

    began = time.monotonic()
    probe_before = cpu_probe()
    with tempfile.TemporaryDirectory(prefix="keep-bench-listing-") as tmp:
        settings = load_settings(home=Path(tmp), spark={"jars_dir": REPO / ".cache" / "jars"})
        spark = get_spark(settings)
        ours = str(spark.conf.get(KEY))
        most = max(args.files)
        print(f"writing one partition of {most} files ...", flush=True)
        users = spark.range(most * 10).select(
            F.col("id").alias("user_id"),
            F.lit("F").alias("gender"),
            F.lit(1).cast("int").alias("age_level"),
            F.lit(0).cast("int").alias("purchase_power"),
        )
        lake.overwrite_partition(users.repartition(most, "user_id"), settings, DIM_USERS, DAY)
        files = delta.partition_files(settings, DIM_USERS, DAY)
        assert len(files.paths) == most, len(files.paths)
        tracker, context = spark.sparkContext.statusTracker(), spark.sparkContext

        def read(n: int, threshold: str, group: str) -> float:
            spark.conf.set(KEY, threshold)
            context.setJobGroup(group, "")
            subset = delta.PartitionFiles(files.paths[:n], 0, True)
            start = time.perf_counter()
            lake.read_files(spark, settings, DIM_USERS, subset).count()
            return time.perf_counter() - start

        results: dict[str, dict[str, float]] = {}
        for n in sorted(args.files):
            read(n, SPARK_DEFAULT, "warm")
            read(n, ours, "warm")
            default_s, ours_s = [], []
            for i in range(args.repeats):
                default_s.append(read(n, SPARK_DEFAULT, f"default-{n}-{i}"))
                ours_s.append(read(n, ours, f"ours-{n}-{i}"))
            jobs = {
                name: len(tracker.getJobIdsForGroup(f"{name}-{n}-0"))
                for name in ("default", "ours")
            }
            row = {
                "spark_default_s": round(statistics.median(default_s), 3),
                "platform_s": round(statistics.median(ours_s), 3),
                "spark_jobs_per_read_default": jobs["default"],
                "spark_jobs_per_read_platform": jobs["ours"],
            }
            row["ratio_default_over_platform"] = round(
                row["spark_default_s"] / row["platform_s"], 2
            )
            results[str(n)] = row
            print(n, row, flush=True)
        spark.stop()
    write_report(
        "read_listing",
        {
            "files": sorted(args.files),
            "by_files": results,
            "threshold_spark_default": int(SPARK_DEFAULT),
            "threshold_platform": LISTING_PATHS_IN_DRIVER,
            "repeats": args.repeats,
            "bench_wall_s": round(time.monotonic() - began),
            "cpu_probe_s": [probe_before, cpu_probe()],
        },
    )


if __name__ == "__main__":
    main()

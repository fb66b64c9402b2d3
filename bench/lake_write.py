"""Benchmark: a day's first write to a table, appended (the platform) or as a Delta
``replaceWhere`` over the empty partition (before), side by side in one Spark session.

    .venv/bin/python bench/lake_write.py                    # 3 and 50,000 rows a write
    .venv/bin/python bench/lake_write.py --rows 3 --repeats 9

``keep.lake.spark_io.overwrite_partition`` replaces a day's partition. When the Delta log
(read with delta-rs) has no file of that day, it appends: the same commit as a
``replaceWhere`` over an empty partition, without Delta first computing the table's state
and filtering its files. A daily step writes each of its tables once a day for the first
time, so this is the write of every normal day; a rerun of the day still replaces.

One local session (the platform's configuration), two ``dim.users`` tables that each hold
``--days`` days already. Each round writes one new day to each table, by both ways in turn
(alternating which goes first), ``--repeats`` rounds per row count, after one untimed
warm-up write of each. Writes reports/bench/lake_write.json: per row count, the median
seconds per write each way, their ratio, and the Spark jobs per write.
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

FIRST = dt.date(2026, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[3, 50_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--days", type=int, default=10, help="days each table holds first")
    args = parser.parse_args()

    from pyspark.sql import functions as F

    from keep.core.config import load_settings
    from keep.core.tables import DIM_USERS
    from keep.lake import delta
    from keep.lake import spark_io as lake
    from keep.lake.spark import get_spark

    began = time.monotonic()
    probe_before = cpu_probe()
    with tempfile.TemporaryDirectory(prefix="keep-bench-write-") as tmp:
        homes = {way: Path(tmp) / way for way in ("append", "replace_where")}
        settings = {
            way: load_settings(home=home, spark={"jars_dir": REPO / ".cache" / "jars"})
            for way, home in homes.items()
        }
        spark = get_spark(settings["append"])
        context = spark.sparkContext
        tracker = context.statusTracker()

        def frame(n: int, ds: dt.date):  # type: ignore[no-untyped-def]
            return spark.range(n).select(
                F.col("id").alias("user_id"),
                F.lit("F").alias("gender"),
                F.lit(1).cast("int").alias("age_level"),
                F.lit(0).cast("int").alias("purchase_power"),
                F.lit(ds.isoformat()).alias("ds"),
            )

        def write(way: str, n: int, ds: dt.date, group: str) -> float:
            s = settings[way]
            assert ds.isoformat() not in delta.partition_days(s, DIM_USERS)
            context.setJobGroup(group, "")
            start = time.perf_counter()
            if way == "append":
                lake.overwrite_partition(frame(n, ds), s, DIM_USERS, ds)
            else:
                lake.replace_where(frame(n, ds), s, DIM_USERS, f"ds = '{ds.isoformat()}'")
            return time.perf_counter() - start

        day = FIRST
        print(f"{args.days} days of history in each table ...", flush=True)
        for _ in range(args.days):
            for way in homes:
                lake.replace_where(frame(10, day), settings[way], DIM_USERS, f"ds = '{day}'")
            day += dt.timedelta(days=1)

        results: dict[str, dict[str, float]] = {}
        for n in args.rows:
            seconds: dict[str, list[float]] = {way: [] for way in homes}
            for i in range(args.repeats + 1):
                order = list(homes) if i % 2 == 0 else list(reversed(homes))
                for way in order:
                    took = write(way, n, day, f"{way}-{n}-{i}")
                    if i:  # round 0 warms up
                        seconds[way].append(took)
                day += dt.timedelta(days=1)
            jobs = {way: len(tracker.getJobIdsForGroup(f"{way}-{n}-1")) for way in homes}
            row = {
                "append_s": round(statistics.median(seconds["append"]), 3),
                "replace_where_s": round(statistics.median(seconds["replace_where"]), 3),
                "spark_jobs_append": jobs["append"],
                "spark_jobs_replace_where": jobs["replace_where"],
            }
            row["ratio_replace_where_over_append"] = round(
                row["replace_where_s"] / row["append_s"], 2
            )
            results[str(n)] = row
            print(n, row, flush=True)
        for way, s in settings.items():  # both tables hold the same rows
            assert delta.partition_days(s, DIM_USERS) == delta.partition_days(
                settings["append"], DIM_USERS
            ), way
        spark.stop()
    write_report(
        "lake_write",
        {
            "rows": args.rows,
            "by_rows": results,
            "days_before": args.days,
            "repeats": args.repeats,
            "bench_wall_s": round(time.monotonic() - began),
            "cpu_probe_s": [probe_before, cpu_probe()],
        },
    )


if __name__ == "__main__":
    main()

"""Benchmark: incremental aggregation vs history length, full recomputation, Spark vs DuckDB.

    .venv/bin/python bench/aggregate.py                                  # defaults (hours)
    .venv/bin/python bench/aggregate.py --days 8 --impressions 20000     # a quick check
    .venv/bin/python bench/aggregate.py --help                           # every option

In a fresh temporary KEEP_HOME (removed afterwards unless ``--keep-home``):

1. **generate** (own process): ``days + 2`` days of ``--impressions`` impressions a day
   (default 200,000; ``--users`` / ``--items`` size the world), in ``--gen-jobs`` processes.
2. **measure** (own process, one ``local[2]`` SparkSession for everything; its peak RSS,
   JVM included, is reported): the history is built in order, ``run_ingest`` then
   ``run_aggregate`` for each day. Day ``short_days + 1`` (default day 6: after 5 days of
   history) and day ``days + 1`` (default day 61: after 60 days) are aggregated
   ``--repeats`` times: the first run is the real one, the others idempotent re-runs of
   the same day right after it. ``incremental_s_5d`` / ``incremental_s_60d`` are the
   medians of those runs (both in the same warm process; every run is in
   ``incremental_runs_s``), ``ratio_60d_over_5d`` their ratio (goal: <= 1.5, the cost of
   a day must not grow with the history); ``aggregate_s_by_day`` has the whole curve.
   ``--overlap`` builds the history a little faster (about 10% on 2 cores): the next
   day's ingest runs, in a second thread of the same session, during every *unmeasured*
   aggregation; measured runs still run alone, but ``aggregate_s_by_day`` is then
   comparable only between days not listed in ``days_aggregated_with_next_ingest``.
3. **full recomputation** of the last day's state (the day of ``incremental_s_60d``) from
   the whole bronze history with the reference functions ``full_stats`` /
   ``full_sequences`` (each impression gets its item's category as of its own log day),
   written to a scratch Delta location: ``full_recompute_s_60d``. It is checked against
   the incremental state (``full_equals_incremental``).
4. **one day's counters** (impressions / clicks / carts / purchases per user) of the last
   day, from the same Parquet files of bronze.impressions (the live files of that
   partition, listed with delta-rs), by Spark (the same warm ``local[2]`` session; result
   computed into Spark's ``noop`` sink) and by DuckDB (``read_parquet``, as many threads
   as Spark has cores; result fetched as Arrow): medians of ``--repeats`` runs after one
   untimed warm-up each (``spark_s``, ``duckdb_s``, ``spark_over_duckdb``); the first
   (cold) runs are reported too. Both results are checked equal (``counters_equal``).
5. **the day after** (``days + 2``), one run: ``incremental_s_next_day``. With the defaults
   (``aggregate.snapshot_retention_days`` = 60) it is the first day whose aggregation also
   deletes expired snapshots, the steady-state daily cost
   (``retention_deletes_next_day``).

Writes reports/bench/aggregate.json (keys ``incremental_s_5d``, ``incremental_s_60d``,
``ratio_60d_over_5d``, ``full_recompute_s_60d``, ``spark_s``, ``duckdb_s``,
``spark_over_duckdb`` plus context: sizes, per-day timings, peak memory) and prints it.
With ``--days N --short-days M`` the keys keep their names (``..._5d`` = after M days,
``..._60d`` = after N days); ``days`` and ``short_days`` in the report say which.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, Measured, run_measured, write_report

EPOCH = dt.date(2026, 1, 1)  # the generator's default epoch
HEADLINE = (
    "incremental_s_5d",
    "incremental_s_60d",
    "ratio_60d_over_5d",
    "full_recompute_s_60d",
    "spark_s",
    "duckdb_s",
    "spark_over_duckdb",
)


def _day(i: int) -> dt.date:
    """Day number ``i`` (1-based) of the history."""
    return EPOCH + dt.timedelta(days=i - 1)


# --------------------------------------------------------------------------- generate phase


def _generate_range(args: tuple[int, int, int]) -> None:
    from keep.core.config import load_settings
    from keep.sources import generator

    first, last, step = args
    settings = load_settings()
    for i in range(first, last + 1, step):
        generator.write_day(settings, _day(i))


def generate(n_days: int, jobs: int) -> None:
    """Write days 1..n_days (settings from KEEP_* variables) in ``jobs`` processes."""
    from multiprocessing import get_context

    jobs = max(1, min(jobs, n_days))
    with get_context("spawn").Pool(jobs) as pool:
        pool.map(_generate_range, [(1 + j, n_days, jobs) for j in range(jobs)])


# --------------------------------------------------------------------------- measure phase


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - began, out


def events_with_category(spark: Any, settings: Any, last: dt.date) -> Any:
    """All bronze impressions up to ``last``, each with its item's attributes as of its day.

    dim.items is a change log (a row per item and day it changed); a row is valid from its
    ``ds`` to the next row's ``ds`` of the same item, so the as-of join is an equi-join on
    item_id plus a range condition.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from keep.core.tables import DIM_ITEMS, IMPRESSIONS
    from keep.lake import spark_io as lake

    items = lake.read_table(spark, settings, DIM_ITEMS).where(F.col("ds") <= last.isoformat())
    nxt = F.lead("ds").over(Window.partitionBy("item_id").orderBy("ds"))
    versions = items.select(
        "item_id",
        "category_id",
        "brand_id",
        F.col("ds").alias("valid_from"),
        nxt.alias("valid_to"),
    )
    impressions = lake.read_table(spark, settings, IMPRESSIONS).where(
        F.col("ds") <= last.isoformat()
    )
    i, v = impressions.alias("i"), versions.alias("v")
    cond = (
        (F.col("i.item_id") == F.col("v.item_id"))
        & (F.col("i.ds") >= F.col("v.valid_from"))
        & (F.col("v.valid_to").isNull() | (F.col("i.ds") < F.col("v.valid_to")))
    )
    return i.join(v, cond, "left").select("i.*", "v.category_id", "v.brand_id")


def full_recompute(spark: Any, settings: Any, ds: dt.date, out_root: Path) -> dict[str, Any]:
    """State of ``ds`` from the whole bronze history (reference functions); Delta writes."""
    from keep.core.tables import ENTITIES, USER_BEHAVIOR, stats_spec
    from keep.lake import spark_io as lake
    from spark_jobs.aggregate import daily_counts, full_sequences, full_stats

    agg = settings.aggregate
    began = time.perf_counter()
    events = events_with_category(spark, settings, ds).cache()
    written: dict[str, Any] = {}
    try:
        for entity in ENTITIES:
            # The daily job's counters, for every day of the history at once.
            history = daily_counts(events, entity, by=("ds",))
            spec = stats_spec(entity, agg.windows)
            stats = full_stats(
                history,
                entity,
                windows=agg.windows,
                prior_ctr=agg.prior_ctr,
                prior_strength=agg.prior_strength,
                ds=ds,
            )
            lake.conform(stats, spec).write.format("delta").mode("overwrite").partitionBy(
                "ds"
            ).save(str(out_root / spec.name))
            written[spec.name] = spec
        sequences = full_sequences(events, length=agg.sequence_length, ds=ds)
        lake.conform(sequences, USER_BEHAVIOR).write.format("delta").mode("overwrite").partitionBy(
            "ds"
        ).save(str(out_root / USER_BEHAVIOR.name))
        written[USER_BEHAVIOR.name] = USER_BEHAVIOR
    finally:
        events.unpersist()
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "tables": written}


def full_equals_incremental(
    spark: Any, settings: Any, ds: dt.date, out_root: Path, tables: dict[str, Any]
) -> bool:
    """Do the recomputed tables hold exactly the incremental state of ``ds``?"""
    from keep.lake import spark_io as lake

    for name, spec in tables.items():
        full = spark.read.format("delta").load(str(out_root / name))
        incremental = lake.conform(lake.read_partition(spark, settings, spec, ds), spec)
        if full.count() != incremental.count() or not full.exceptAll(incremental).isEmpty():
            print(f"full recomputation differs from the incremental state in {name}", flush=True)
            return False
    return True


def parquet_files(settings: Any, ds: dt.date) -> list[str]:
    """Live Parquet files of bronze.impressions' partition ``ds``, from the Delta log (delta-rs)."""
    from deltalake import DeltaTable

    from keep.core.tables import IMPRESSIONS
    from keep.lake import delta

    table = DeltaTable(str(delta.table_path(settings, IMPRESSIONS)))
    uris = table.file_uris(file_pruning_predicate=[("ds", "=", ds.isoformat())])
    return [u.removeprefix("file://") for u in uris]


def spark_cores(spark: Any) -> int:
    """Cores of a ``local[N]`` session (``spark.default.parallelism`` is set to the shuffle
    partitions by keep.lake.spark, so it does not tell); the machine's cores otherwise."""
    master = spark.sparkContext.master
    if master.startswith("local[") and master[6:-1].isdigit():
        return int(master[6:-1])
    return 1 if master == "local" else os.cpu_count() or 1


COUNTERS_SQL = """
SELECT user_id, count(*) AS impressions, sum(click) AS clicks, sum(cart) AS carts,
       sum(purchase) AS purchases
FROM read_parquet({files})
GROUP BY user_id
"""


def spark_vs_duckdb(spark: Any, files: list[str], repeats: int) -> dict[str, Any]:
    """One day's per-user counters by Spark and by DuckDB over the same Parquet files."""
    import duckdb
    from pyspark.sql import functions as F

    def spark_counters() -> Any:
        return (
            spark.read.parquet(*files)
            .groupBy("user_id")
            .agg(
                F.count(F.lit(1)).alias("impressions"),
                F.sum("click").alias("clicks"),
                F.sum("cart").alias("carts"),
                F.sum("purchase").alias("purchases"),
            )
        )

    cores = spark_cores(spark)
    con = duckdb.connect()
    con.execute(f"SET threads = {cores}")
    sql = COUNTERS_SQL.format(files=json.dumps(files).replace('"', "'"))

    def run_spark() -> None:
        spark_counters().write.format("noop").mode("overwrite").save()

    def run_duckdb() -> None:
        result = con.execute(sql)
        # to_arrow_table in recent duckdb (2.x has no fetch_arrow_table), fetch_arrow_table before
        (getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table"))()  # noqa: B009

    spark_runs = [_timed(run_spark)[0] for _ in range(repeats + 1)]
    duck_runs = [_timed(run_duckdb)[0] for _ in range(repeats + 1)]
    want = sorted(tuple(int(x) for x in r) for r in spark_counters().collect())
    got = sorted(tuple(int(x) for x in r) for r in con.execute(sql).fetchall())
    return {
        "spark_s": statistics.median(spark_runs[1:]),
        "duckdb_s": statistics.median(duck_runs[1:]),
        "spark_cold_s": spark_runs[0],
        "duckdb_cold_s": duck_runs[0],
        "spark_runs_s": spark_runs,
        "duckdb_runs_s": duck_runs,
        "cores": cores,
        "duckdb_version": duckdb.__version__,
        "counters_equal": want == got,
        "counter_rows": len(want),
        "files": len(files),
    }


def measure(days: int, short_days: int, repeats: int, out: Path, overlap: bool) -> None:
    """Build the history in one SparkSession, take every measurement; figures to ``out``."""
    from keep.core.config import load_settings
    from keep.core.tables import IMPRESSIONS
    from keep.lake import spark_io as lake
    from keep.lake.spark import get_spark
    from spark_jobs.aggregate import run_aggregate
    from spark_jobs.ingest import run_ingest

    settings = load_settings()
    session_s, spark = _timed(get_spark, settings)
    timed_days = {short_days + 1: "short", days + 1: "long"}
    ingest_s: list[float] = []
    aggregate_s: list[float] = []
    overlapped: list[int] = []
    runs: dict[str, list[float]] = {}
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as ahead:
        pending: Future[tuple[float, Any]] | None = None
        for i in range(1, days + 2):
            ds = _day(i)
            seconds, _ = pending.result() if pending else _timed(run_ingest, spark, settings, ds)
            ingest_s.append(seconds)
            # Ingest day i + 1 (independent of day i's aggregation) while aggregating day i,
            # except around measured days: those run alone.
            pending = None
            if overlap and i not in timed_days and i + 1 <= days + 1:
                pending = ahead.submit(_timed, run_ingest, spark, settings, _day(i + 1))
                overlapped.append(i)
            seconds, _ = _timed(run_aggregate, spark, settings, ds)
            aggregate_s.append(seconds)
            if i in timed_days:
                again = [_timed(run_aggregate, spark, settings, ds)[0] for _ in range(repeats - 1)]
                runs[timed_days[i]] = [seconds, *again]
            note = " (with the next day's ingest)" if pending else ""
            print(
                f"day {i:>3} {ds}: ingest {ingest_s[-1]:6.1f} s, aggregate {seconds:6.1f} s{note}",
                flush=True,
            )
    history_s = time.perf_counter() - began
    last = _day(days + 1)
    scratch = settings.home / "bench-full"
    full = full_recompute(spark, settings, last, scratch)
    print(f"full recomputation of {last}: {full['seconds']:.1f} s", flush=True)
    same = full_equals_incremental(spark, settings, last, scratch, full["tables"])
    counters = spark_vs_duckdb(spark, parquet_files(settings, last), repeats)
    # One more day, after everything else: from day snapshot_retention_days + 2 on, every
    # day also deletes the oldest snapshots (retention), which day days + 1 does not yet.
    after = _day(days + 2)
    run_ingest(spark, settings, after)
    next_day_s = _timed(run_aggregate, spark, settings, after)[0]
    print(f"day {days + 2:>3} {after}: aggregate {next_day_s:6.1f} s", flush=True)
    bronze_rows = lake.read_table(spark, settings, IMPRESSIONS).count()
    short, long_ = statistics.median(runs["short"]), statistics.median(runs["long"])
    figures = {
        "incremental_s_5d": round(short, 2),
        "incremental_s_60d": round(long_, 2),
        "ratio_60d_over_5d": round(long_ / short, 3),
        "incremental_s_next_day": round(next_day_s, 2),
        "retention_deletes_next_day": days + 2 > settings.aggregate.snapshot_retention_days + 1,
        "full_recompute_s_60d": round(full["seconds"], 2),
        "full_over_incremental_60d": round(full["seconds"] / long_, 2),
        "full_equals_incremental": same,
        "spark_s": round(counters["spark_s"], 3),
        "duckdb_s": round(counters["duckdb_s"], 3),
        "spark_over_duckdb": round(counters["spark_s"] / counters["duckdb_s"], 1),
        "spark_cold_s": round(counters["spark_cold_s"], 3),
        "duckdb_cold_s": round(counters["duckdb_cold_s"], 3),
        "counters_equal": counters["counters_equal"],
        "counter_rows": counters["counter_rows"],
        "counter_parquet_files": counters["files"],
        "counter_cores": counters["cores"],
        "duckdb_version": counters["duckdb_version"],
        "incremental_days": {"short": short_days + 1, "long": days + 1},
        "incremental_runs_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "spark_runs_s": [round(x, 3) for x in counters["spark_runs_s"]],
        "duckdb_runs_s": [round(x, 3) for x in counters["duckdb_runs_s"]],
        "session_start_s": round(session_s, 1),
        "history_build_s": round(history_s, 1),
        "ingest_s_by_day": [round(x, 1) for x in ingest_s],
        "aggregate_s_by_day": [round(x, 1) for x in aggregate_s],
        "days_aggregated_with_next_ingest": overlapped,
        "bronze_rows": bronze_rows,
        "master": settings.spark.master,
        "shuffle_partitions": settings.spark.shuffle_partitions,
    }
    spark.stop()
    out.write_text(json.dumps(figures, indent=2) + "\n")


# --------------------------------------------------------------------------- driver


def run_streaming(cmd: list[str], env: dict[str, str]) -> Measured:
    """``_common.run_measured`` echoing the child's progress lines as they come (the
    history build takes a long time); Spark's and Java's noise is not echoed."""
    return run_measured(
        cmd,
        env,
        echo=lambda line: (
            not line.startswith(
                (" ", "\t", "WARNING", "Using Spark", "Setting default", "To adjust")
            )
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=60, help="long history, in days (default 60)")
    parser.add_argument(
        "--short-days", type=int, default=5, help="short history, in days (default 5)"
    )
    parser.add_argument("--impressions", type=int, default=200_000, help="impressions a day")
    parser.add_argument(
        "--users",
        type=int,
        default=25_000,
        help="users on day 1 (~240 impressions a user a month at the defaults)",
    )
    parser.add_argument("--items", type=int, default=10_000, help="items on day 1")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement (median)"
    )
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--gen-jobs", type=int, default=os.cpu_count() or 1, help="generator processes"
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="ingest the next day during unmeasured aggregations (faster history build; ~10%% here)",
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary KEEP_HOME")
    parser.add_argument("--phase", choices=["generate", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.short_days < args.days:
        parser.error("need 1 <= --short-days < --days")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.phase == "generate":
        generate(args.days + 2, args.gen_jobs)
        return
    if args.phase == "measure":
        measure(args.days, args.short_days, args.repeats, args.out, args.overlap)
        return

    home = Path(tempfile.mkdtemp(prefix="keep-bench-aggregate-"))
    env = {
        "KEEP_HOME": str(home),
        "KEEP_GENERATOR__IMPRESSIONS_PER_DAY": str(args.impressions),
        "KEEP_GENERATOR__N_USERS": str(args.users),
        "KEEP_GENERATOR__N_ITEMS": str(args.items),
        "KEEP_SPARK__DRIVER_MEMORY": args.driver_memory,
        "KEEP_SPARK__MASTER": args.master,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    common = [
        "--days",
        str(args.days),
        "--short-days",
        str(args.short_days),
        "--repeats",
        str(args.repeats),
    ]
    common += ["--overlap"] if args.overlap else []
    script = str(Path(__file__).resolve())
    out = home / "figures.json"
    print(f"KEEP_HOME={home}: {args.days + 2} days of {args.impressions:,} impressions", flush=True)
    try:
        gen = run_streaming(
            [PYTHON, script, "--phase", "generate", "--gen-jobs", str(args.gen_jobs), *common], env
        )
        print(f"generated in {gen.wall_s:.1f} s", flush=True)
        run = run_streaming([PYTHON, script, "--phase", "measure", "--out", str(out), *common], env)
        figures: dict[str, Any] = json.loads(out.read_text())
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    figures = {
        **{k: figures.pop(k) for k in HEADLINE},
        "days": args.days,
        "short_days": args.short_days,
        "impressions_per_day": args.impressions,
        "users": args.users,
        "items": args.items,
        "repeats": args.repeats,
        "generate_s": round(gen.wall_s, 1),
        "measure_wall_s": round(run.wall_s, 1),
        "measure_peak_rss_mb": round(run.peak_pss_mb),
        **figures,
    }
    write_report("aggregate", figures)


if __name__ == "__main__":
    main()

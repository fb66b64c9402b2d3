"""Benchmark: the real incremental aggregation of a new day after 60 vs 5 days of history.

    .venv/bin/python bench/aggregate.py                                  # defaults (~15 min on 2 cores)
    .venv/bin/python bench/aggregate.py --days 8 --impressions 20000     # a quick check
    .venv/bin/python bench/aggregate.py --help                           # every option

In a fresh temporary KEEP_HOME (removed afterwards unless ``--keep-home``), two lakes: the
long one (``--days`` of history, default 60) and the short one (``--short-days``, default
5), at ``--impressions`` a day (default 200,000; ``--users`` / ``--items`` size the world).

1. **generate** (own processes, ``--gen-jobs``): every day of the history and the new days
   (``--repeats`` after each history, default 3) as typed bronze rows — bronze.impressions,
   dim.users, dim.items, exactly the rows ``keep ingest`` stores from the generator's raw
   files, which are clean — one Parquet file per source and day.
2. **measure** (own process, one ``local[2]`` SparkSession for everything; the peak PSS of
   its process tree, JVM and Python workers included, is reported as ``peak_pss_mb``):

   * **history in bulk**: each lake's bronze and dimension tables written from those files,
     one Spark job and one Delta commit per table (the schema and ``ds`` partitioning of
     ``keep.core.tables``, as the daily job reads them): ``bronze_load_s``;
     ``history_build_s`` = generation + load;
   * **seed**: the state of the last history day (day 60; day 5 in the short lake) by one
     full recomputation from bronze, ``spark_jobs.aggregate.run_seed_state``: the daily
     counts of every retained day, the stats and sequences of the day, retention applied —
     the real state the daily job reads (``seed_s``, ``seed_s_5d``);
   * **the new days**: ``run_aggregate`` of ``--repeats`` real new days per lake (their
     bronze was loaded with the history; the state grows day by day), alternating short and
     long (day 6, day 61, day 7, day 62...): ``incremental_s_5d`` / ``incremental_s_60d`` are
     the medians, ``ratio_60d_over_5d`` their ratio (goal <= 1.5: a day costs one day of
     data plus one snapshot, whatever the history). Each run's Spark jobs and Delta commits
     are in ``incremental_runs``;
   * **full recomputation vs incremental** (unless ``--no-check``): the state of the first
     new long day (day 61) recomputed from the whole bronze history with the seed's
     functions (no writes: ``full_recompute_s_60d``) and compared with what the incremental
     run wrote, table by table, by row count and the sum of 64-bit row hashes
     (``full_equals_incremental``);
   * **one day's counters** (impressions / clicks / carts / purchases per user) of day 61
     from the same Parquet files of bronze.impressions, by Spark (the warm session, into
     the ``noop`` sink) and by DuckDB (as many threads as Spark has cores): medians of 3
     runs after one warm-up each (``spark_s``, ``duckdb_s``), results checked equal.

Writes reports/bench/aggregate.json (``wall_s``: the whole command) and prints it. With
``--days N --short-days M`` the keys keep their names (``..._5d`` = after M days,
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
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, Measured, run_measured, write_report

EPOCH = dt.date(2026, 1, 1)  # the generator's default epoch
HEADLINE = (
    "incremental_s_5d",
    "incremental_s_60d",
    "ratio_60d_over_5d",
    "seed_s",
    "history_build_s",
)
SOURCES = ("impressions", "users", "items")


def _day(i: int) -> dt.date:
    """Day number ``i`` (1-based) of the history."""
    return EPOCH + dt.timedelta(days=i - 1)


def _new_days(days: int, short_days: int, repeats: int) -> dict[str, list[int]]:
    """The real new days of each lake."""
    return {
        "short": [short_days + 1 + r for r in range(repeats)],
        "long": [days + 1 + r for r in range(repeats)],
    }


# --------------------------------------------------------------------------- generate phase


def bulk_dir(home: Path, source: str) -> Path:
    return home / "bulk" / source


def bronze_day(settings: Any, ds: dt.date, out: Path) -> None:
    """Day ``ds`` of the generator as the rows ``keep ingest`` stores (bronze.impressions,
    dim.users, dim.items), one Parquet file per source under ``out/<source>/``.

    The generator's raw files are clean (no duplicate, late or malformed row), so ingest
    stores every row, typed: the same typing is done here with pyarrow.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS
    from keep.sources import generator

    day = ds.isoformat()

    def write(frame: pd.DataFrame, spec: Any, source: str) -> None:
        frame = frame.assign(ds=day)
        table = pa.Table.from_pandas(frame[spec.columns], schema=spec.schema, preserve_index=False)
        path = out / source / f"{day}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    chunks = []
    for raw, _oracle in generator.iter_impression_chunks(settings, ds):
        chunks.append(
            raw.assign(
                event_time=pd.to_datetime(raw["event_time"], utc=True, format="ISO8601").astype(
                    "datetime64[us, UTC]"
                )
            )
        )
    write(pd.concat(chunks, ignore_index=True), IMPRESSIONS, "impressions")
    users, items = generator.dimensions_for_day(settings, ds)
    write(users.assign(gender=users["gender"].str.strip().str.upper()), DIM_USERS, "users")
    write(items, DIM_ITEMS, "items")


def _generate_range(args: tuple[str, list[int]]) -> None:
    from keep.core.config import load_settings

    home, days = args
    settings = load_settings()
    for i in days:
        bronze_day(settings, _day(i), Path(home) / "bulk")


def generate(home: Path, days: int, jobs: int) -> None:
    """Bronze files of days 1..days, in ``jobs`` processes."""
    from multiprocessing import get_context

    jobs = max(1, min(jobs, days))
    with get_context("spawn").Pool(jobs) as pool:
        pool.map(
            _generate_range, [(str(home), list(range(1 + j, days + 1, jobs))) for j in range(jobs)]
        )


# --------------------------------------------------------------------------- measure phase


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - began, out


def load_bronze(spark: Any, settings: Any, home: Path, days: int) -> None:
    """Bronze and dimension tables of days 1..days from the generated files: one Spark job
    (and one Delta commit) per table."""
    from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS
    from keep.lake import spark_io as lake

    for source, spec in zip(SOURCES, (IMPRESSIONS, DIM_USERS, DIM_ITEMS), strict=True):
        files = [
            str(bulk_dir(home, source) / f"{_day(i).isoformat()}.parquet")
            for i in range(1, days + 1)
        ]
        lake.replace_where(spark.read.parquet(*files), settings, spec, f"ds <= '{_day(days)}'")


def delta_commits(settings: Any) -> int:
    """Commits in every Delta table of the lake (``_delta_log/*.json``)."""
    return sum(1 for _ in settings.lake.root.glob("*/*/_delta_log/*.json"))


def counted(spark: Any, settings: Any, label: str, fn: Any, *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)``: its seconds, Spark jobs (a job group), Delta commits, and what it
    returned (the state's row counts)."""
    sc = spark.sparkContext
    before = delta_commits(settings)
    sc.setJobGroup(label, label)
    try:
        seconds, rows = _timed(fn, *args)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    return {
        "seconds": round(seconds, 2),
        "spark_jobs": len(sc.statusTracker().getJobIdsForGroup(label)),
        "delta_commits": delta_commits(settings) - before,
        "state_rows": rows,
    }


def checksum(frame: Any, spec: Any) -> tuple[int, int]:
    """Rows and the sum of their 64-bit hashes (every column, as the table stores them): equal
    for equal multisets of rows, whatever their order, in one pass without a shuffle."""
    from pyspark.sql import functions as F

    from keep.lake import spark_io as lake

    rows = lake.conform(frame, spec)
    row_hash = F.xxhash64(*rows.columns).cast("decimal(38,0)")
    n, total = rows.agg(F.count(F.lit(1)), F.sum(row_hash)).first()
    return int(n), int(total or 0)


def full_equals_incremental(spark: Any, settings: Any, ds: dt.date) -> bool:
    """Recompute the state of ``ds`` from the whole bronze history (the seed's functions, no
    writes) and compare it with what the incremental runs wrote (:func:`checksum`)."""
    from pyspark.sql import functions as F

    from keep.core.tables import (
        DAILY_COUNTS,
        DIM_ITEMS,
        ENTITIES,
        IMPRESSIONS,
        USER_BEHAVIOR,
        stats_spec,
    )
    from keep.lake import spark_io as lake
    from spark_jobs.aggregate import history_with_category, seed_state

    agg = settings.aggregate
    upto = F.col("ds") <= ds.isoformat()
    events = history_with_category(
        lake.read_table(spark, settings, IMPRESSIONS).where(upto),
        lake.read_table(spark, settings, DIM_ITEMS).where(upto),
    )
    state = seed_state(events, agg=agg, ds=ds)
    pairs = [
        (
            DAILY_COUNTS,
            state.daily_counts,
            lake.read_table(spark, settings, DAILY_COUNTS).where(upto),
        ),
        (USER_BEHAVIOR, state.sequences, lake.read_partition(spark, settings, USER_BEHAVIOR, ds)),
    ]
    for entity in ENTITIES:
        spec = stats_spec(entity, agg.windows)
        pairs.append((spec, state.stats[entity], lake.read_partition(spark, settings, spec, ds)))
    same = True
    for spec, full, written in pairs:
        want, got = checksum(full, spec), checksum(written, spec)
        if want != got or want[0] == 0:
            print(f"{spec.name}: full recomputation {want} != incremental {got}", flush=True)
            same = False
    return same


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


def spark_vs_duckdb(spark: Any, files: list[str], repeats: int = 3) -> dict[str, Any]:
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
    spark_s, duckdb_s = statistics.median(spark_runs[1:]), statistics.median(duck_runs[1:])
    return {
        "spark_s": round(spark_s, 3),
        "duckdb_s": round(duckdb_s, 3),
        "spark_over_duckdb": round(spark_s / duckdb_s, 1),
        "spark_cold_s": round(spark_runs[0], 3),
        "duckdb_cold_s": round(duck_runs[0], 3),
        "cores": cores,
        "duckdb_version": duckdb.__version__,
        "counters_equal": want == got,
        "counter_rows": len(want),
        "files": len(files),
    }


def lake_settings(home: Path, lake: str) -> Any:
    """Settings of one of the two lakes."""
    from keep.core.config import load_settings

    return load_settings(lake={"root": home / lake})


def measure(home: Path, days: int, short_days: int, repeats: int, check: bool, out: Path) -> None:
    """Build both lakes in one SparkSession, take every measurement; figures to ``out``."""
    from keep.core.tables import IMPRESSIONS
    from keep.lake import spark_io as lake
    from keep.lake.spark import get_spark
    from spark_jobs.aggregate import run_aggregate, run_seed_state

    lakes = {"long": lake_settings(home, "lake-long"), "short": lake_settings(home, "lake-short")}
    history = {"long": days, "short": short_days}
    new_days = _new_days(days, short_days, repeats)
    # Bronze of the history and of the new days, in bulk (the seed reads days <= its day).
    loaded = {k: new_days[k][-1] for k in lakes}
    session_s, spark = _timed(get_spark, lakes["long"])
    figures: dict[str, Any] = {"session_start_s": round(session_s, 1)}

    load_s = {k: _timed(load_bronze, spark, lakes[k], home, loaded[k])[0] for k in lakes}
    print(
        f"bronze loaded: {load_s['long']:.1f} s (long), {load_s['short']:.1f} s (short)", flush=True
    )
    seeds = {}
    for k in ("long", "short"):
        seeds[k] = counted(
            spark, lakes[k], f"seed-{k}", run_seed_state, spark, lakes[k], _day(history[k])
        )
        print(f"seed of day {history[k]} ({k}): {seeds[k]}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"short": [], "long": []}
    for r in range(repeats):
        for k in ("short", "long"):
            i = new_days[k][r]
            run = counted(spark, lakes[k], f"day-{i}", run_aggregate, spark, lakes[k], _day(i))
            runs[k].append({"day": i, **run})
            print(f"day {i:>3} ({k}, after {i - 1} days): aggregate {run}", flush=True)

    first_long = _day(new_days["long"][0])
    if check:
        full_s, same = _timed(full_equals_incremental, spark, lakes["long"], first_long)
        figures |= {"full_recompute_s_60d": round(full_s, 1), "full_equals_incremental": same}
        print(
            f"full recomputation of day {new_days['long'][0]}: {full_s:.1f} s, equal: {same}",
            flush=True,
        )
    figures |= spark_vs_duckdb(spark, parquet_files(lakes["long"], first_long))

    short = statistics.median(r["seconds"] for r in runs["short"])
    long_ = statistics.median(r["seconds"] for r in runs["long"])
    figures = {
        "incremental_s_5d": round(short, 2),
        "incremental_s_60d": round(long_, 2),
        "ratio_60d_over_5d": round(long_ / short, 3),
        "seed_s": seeds["long"]["seconds"],
        "seed_s_5d": seeds["short"]["seconds"],
        "seed_spark_jobs": seeds["long"]["spark_jobs"],
        "seed_delta_commits": seeds["long"]["delta_commits"],
        "bronze_load_s": round(load_s["long"] + load_s["short"], 1),
        "incremental_runs": runs,
        **figures,
        "bronze_rows_long": lake.read_table(spark, lakes["long"], IMPRESSIONS).count(),
        "master": lakes["long"].spark.master,
        "shuffle_partitions": lakes["long"].spark.shuffle_partitions,
    }
    spark.stop()
    out.write_text(json.dumps(figures, indent=2) + "\n")


# --------------------------------------------------------------------------- driver


def run_streaming(cmd: list[str], env: dict[str, str]) -> Measured:
    """``_common.run_measured`` echoing the child's progress lines as they come; Spark's and
    Java's noise is not echoed."""
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
        "--repeats", type=int, default=3, help="real new days aggregated per lake (median)"
    )
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--gen-jobs", type=int, default=os.cpu_count() or 1, help="generator processes"
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip the full recomputation of the first new long day (compared with the incremental state)",
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary KEEP_HOME")
    parser.add_argument("--phase", choices=["generate", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.short_days < args.days:
        parser.error("need 1 <= --short-days < --days")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    new_days = _new_days(args.days, args.short_days, args.repeats)
    if args.phase == "generate":
        generate(args.home, new_days["long"][-1], args.gen_jobs)
        return
    if args.phase == "measure":
        measure(args.home, args.days, args.short_days, args.repeats, not args.no_check, args.out)
        return

    began = time.perf_counter()
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
    common = ["--home", str(home), "--days", str(args.days), "--short-days", str(args.short_days)]
    common += ["--repeats", str(args.repeats)] + (["--no-check"] if args.no_check else [])
    script = str(Path(__file__).resolve())
    out = home / "figures.json"
    print(
        f"KEEP_HOME={home}: {args.days} days of {args.impressions:,} impressions "
        f"(+ {args.repeats} new days per lake)",
        flush=True,
    )
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
    figures["history_build_s"] = round(gen.wall_s + figures["bronze_load_s"], 1)
    figures = {
        **{k: figures.pop(k) for k in HEADLINE},
        "days": args.days,
        "short_days": args.short_days,
        "wall_s": round(time.perf_counter() - began, 1),
        "peak_pss_mb": round(run.peak_pss_mb),
        "impressions_per_day": args.impressions,
        "users": args.users,
        "items": args.items,
        "repeats": args.repeats,
        "generate_s": round(gen.wall_s, 1),
        "measure_wall_s": round(run.wall_s, 1),
        **figures,
    }
    write_report("aggregate", figures)


if __name__ == "__main__":
    main()

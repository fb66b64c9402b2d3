"""Ingest: one day of raw files -> bronze.impressions, dim.users, dim.items, bronze.quarantine.

Every raw row gets exactly one status:

* ``stored``                  - parsed, valid, first copy of its key;
* ``quarantined``             - at least one rule failed; the first failed rule is the
                                ``reason``, all failed rules are in ``reasons``;
* ``duplicate_within_day``    - another copy of the key in the same day was kept;
* ``duplicate_earlier_day``   - the impression_id is already stored in an earlier day
                                (within ``ingest.dedup_lookback_days``).

so rows in = stored + quarantined + duplicates, and the audit table records each count.

Pure transforms: ``check_impressions`` / ``check_users`` / ``check_items`` type a source's
raw rows and name the rules each breaks (row by row); ``classify`` gives every row its
status (one shuffle by key); ``stored_rows``, ``quarantine_rows`` and ``audit`` select what
each table gets. ``run_ingest`` is the thin entry point (CLI ``keep ingest``, the DAG's
``ingest`` task): it reads config and inputs, calls the transforms, writes.

Conflicting copies of one impression_id within a day: the copy furthest down the funnel
wins (click, then cart, then purchase), then the earliest event time, then the first
in file order. Against earlier days, the stored (first-arrived) copy always wins.

Memory does not grow with the day (docs/raw-format.md, "Scale"): the raw files are read
once, row by row; the one shuffle sorts each task's share of the day by key, spilling to
disk; the classified rows are kept on local disk (not on the heap) for the three tables
that read them; nothing is collected but the audit's three rows. A task's share is bounded
by ``ingest.raw_bytes_per_task``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    DIM_ITEMS,
    DIM_USERS,
    IMPRESSIONS,
    INGEST_AUDIT,
    QUARANTINE,
    RAW_FIELDS,
    SourceCounts,
)
from keep.lake import delta, raw_format, raw_reader
from keep.lake import spark_io as lake
from keep.lake.spark import is_remote

log = logging.getLogger(__name__)

STORED = "stored"
QUARANTINED = "quarantined"
DUP_WITHIN = "duplicate_within_day"
DUP_EARLIER = "duplicate_earlier_day"

Check = tuple[str, Column]


def _blank(name: str) -> Column:
    """Whether raw field ``name`` is missing or blank (column ``b_<name>`` of ``_checked``)."""
    return F.col(f"b_{name}")


def _typed(name: str) -> Column:
    """Field ``name``'s typed value, null when not castable (column ``t_<name>``)."""
    return F.col(f"t_{name}")


def _cast(name: str, sql_type: str) -> Column:
    return F.expr(f"try_cast(trim(`{name}`) AS {sql_type})")


def _required(name: str) -> list[Check]:
    """null_<name> when missing, bad_type_<name> when present but not castable."""
    return [
        (f"null_{name}", _blank(name)),
        (f"bad_type_{name}", ~_blank(name) & _typed(name).isNull()),
    ]


def _optional(name: str) -> list[Check]:
    return [(f"bad_type_{name}", ~_blank(name) & _typed(name).isNull())]


def _checked(raw: DataFrame, typed: dict[str, Column], checks: list[Check]) -> DataFrame:
    """``raw`` plus the typed values ``t_<name>``, ``reason`` (the first broken rule, null
    when the row is valid) and the rule flags ``_flag_<i>`` (the rule's name when broken).

    Two projections: each field is trimmed and cast once (``b_*``, ``t_*``), then the rules
    compare those (Spark keeps a projection whose costly columns are used several times
    apart from the next one). ``reason`` is a ``coalesce`` of the flags, compiled to Java;
    the array of all broken rules needs a higher-order function that Spark evaluates in its
    interpreter, so ``classify`` builds it for the broken rows only.
    """
    fields = [c for c in raw.columns if not c.startswith("_")]
    blank = [(F.col(f).isNull() | (F.trim(F.col(f)) == "")).alias(f"b_{f}") for f in fields]
    step = raw.select("*", *blank, *[col.alias(f"t_{name}") for name, col in typed.items()])
    flags = [F.when(F.coalesce(cond, F.lit(False)), F.lit(name)) for name, cond in checks]
    return step.select(
        "*",
        F.coalesce(*flags).alias("reason"),
        *[flag.alias(f"_flag_{i}") for i, flag in enumerate(flags)],
    )


def _day_bounds(ds: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(ds.year, ds.month, ds.day, tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def impression_checks(
    ds: dt.date, scenarios: list[str], allowed_lateness_minutes: int
) -> list[Check]:
    """Row rules of raw impressions, in priority order (docs/raw-format.md lists them)."""
    start, end = _day_bounds(ds)
    earliest = start - dt.timedelta(minutes=allowed_lateness_minutes)
    event_time = _typed("event_time")
    labels = ("click", "cart", "purchase")
    checks: list[Check] = [("malformed_record", F.col("_malformed"))]
    checks += [("null_impression_id", _blank("impression_id"))]
    checks += _required("user_id") + _required("item_id")
    checks += _required("event_time")
    checks += [
        ("event_time_too_late", event_time < F.lit(earliest)),
        ("event_time_after_day", event_time >= F.lit(end)),
        ("null_scenario", _blank("scenario")),
        ("unknown_scenario", ~_blank("scenario") & ~_typed("scenario").isin(scenarios)),
    ]
    checks += _required("position") + [("out_of_range_position", _typed("position") < 0)]
    for label in labels:
        checks += _required(label)
        checks.append((f"out_of_range_{label}", ~_typed(label).isin(0, 1)))
    click = _typed("click")
    checks += [
        ("cart_without_click", (_typed("cart") == 1) & (click == 0)),
        ("purchase_without_click", (_typed("purchase") == 1) & (click == 0)),
    ]
    return checks


def check_impressions(
    raw: DataFrame, *, ds: dt.date, scenarios: list[str], allowed_lateness_minutes: int
) -> DataFrame:
    """Raw impression rows with typed ``t_*`` columns and ``reason`` (see ``_checked``)."""
    typed = {
        "impression_id": F.trim("impression_id"),
        "user_id": _cast("user_id", "BIGINT"),
        "item_id": _cast("item_id", "BIGINT"),
        "event_time": _cast("event_time", "TIMESTAMP"),
        "scenario": F.trim("scenario"),
        "position": _cast("position", "INT"),
        "click": _cast("click", "INT"),
        "cart": _cast("cart", "INT"),
        "purchase": _cast("purchase", "INT"),
    }
    return _checked(raw, typed, impression_checks(ds, scenarios, allowed_lateness_minutes))


def impression_order() -> list[Column]:
    """Which copy of an impression wins: furthest down the funnel, earliest, first in file."""
    return [
        F.col("t_click").desc(),
        F.col("t_cart").desc(),
        F.col("t_purchase").desc(),
        F.col("t_event_time").asc(),
        *_file_order(),
    ]


def user_checks() -> list[Check]:
    return (
        [("malformed_record", F.col("_malformed"))]
        + _required("user_id")
        + [("unknown_gender", ~_blank("gender") & ~_typed("gender").isin("F", "M", "U"))]
        + _optional("age_level")
        + _optional("purchase_power")
        + [
            ("out_of_range_age_level", _typed("age_level") < 0),
            ("out_of_range_purchase_power", _typed("purchase_power") < 0),
        ]
    )


def check_users(raw: DataFrame) -> DataFrame:
    """Raw user dimension rows with typed ``t_*`` columns and ``reason``."""
    typed = {
        "user_id": _cast("user_id", "BIGINT"),
        "gender": F.upper(F.trim("gender")),
        "age_level": _cast("age_level", "INT"),
        "purchase_power": _cast("purchase_power", "INT"),
    }
    return _checked(raw, typed, user_checks())


def item_checks() -> list[Check]:
    price = _typed("price")
    return (
        [("malformed_record", F.col("_malformed"))]
        + _required("item_id")
        + _required("category_id")
        + _optional("brand_id")
        + _required("price")
        + [
            ("negative_price", price < 0),
            # Spark parses "NaN" and "Infinity" as doubles: a price must be a finite number.
            ("non_finite_price", F.isnan(price) | F.abs(price).eqNullSafe(float("inf"))),
        ]
    )


def check_items(raw: DataFrame) -> DataFrame:
    """Raw item dimension rows with typed ``t_*`` columns and ``reason``."""
    typed = {
        "item_id": _cast("item_id", "BIGINT"),
        "category_id": _cast("category_id", "BIGINT"),
        "brand_id": _cast("brand_id", "BIGINT"),
        "price": _cast("price", "DOUBLE"),
    }
    return _checked(raw, typed, item_checks())


def last_in_file_order() -> list[Column]:
    """Dimensions: the last copy of a key in the day wins (a later line is a later change)."""
    return [F.col("_source_file").desc(), F.col("_line").desc()]


def _file_order() -> list[Column]:
    return [F.col("_source_file").asc(), F.col("_line").asc()]


def classify(
    checked: DataFrame, key: str, order: list[Column], earlier_keys: DataFrame | None
) -> DataFrame:
    """Every checked row with its ``status`` and ``conflict`` (a duplicate whose content
    differs from the copy kept); the raw line and ``reasons`` are kept on quarantined rows
    only, the typed ``t_*`` values on every row.

    One shuffle by key: each task sorts its keys' rows (spilling to disk when they do not
    fit), valid copies first in ``order``, so the first row of a key is the copy kept.
    Rows without a key (all quarantined) get a key of their own, so no group grows with
    the day.
    """
    typed = [c for c in checked.columns if c.startswith("t_")]
    valid = F.col("reason").isNull()
    flags = [c for c in checked.columns if c.startswith("_flag_")]
    # filter() is evaluated by Spark's interpreter: only for the rows that need it.
    reasons = F.when(~valid, F.filter(F.array(*flags), lambda r: r.isNotNull()))
    own_key = F.concat(F.lit("\u0000"), F.col("_line").cast("string"))
    rows = checked.select(
        *typed,
        F.coalesce(F.col(f"t_{key}").cast("string"), own_key).alias("_key"),
        valid.alias("_valid"),
        "_source_file",
        "_line",
        "reason",
        reasons.alias("reasons"),
        F.when(~valid, F.col("_raw")).alias("_raw"),
    )
    copies = Window.partitionBy("_key").orderBy(F.col("_valid").desc(), *order)
    running = copies.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    content = F.struct(*[F.col(c) for c in typed if c != f"t_{key}"])
    ranked = rows.select(
        "*",
        F.row_number().over(running).alias("_copy"),
        # The frame's first row is the copy kept: compare typed values, not their text.
        (~content.eqNullSafe(F.first(content).over(running))).alias("_differs"),
    )
    if earlier_keys is not None:
        # Joined on the window's own partitioning: only the earlier keys are shuffled.
        seen = earlier_keys.select(F.col(key).alias("_key")).distinct()
        ranked = ranked.join(seen.withColumn("_seen", F.lit(True)), on="_key", how="left")
    else:
        ranked = ranked.withColumn("_seen", F.lit(None).cast("boolean"))
    status = (
        F.when(~F.col("_valid"), F.lit(QUARANTINED))
        .when(F.col("_copy") > 1, F.lit(DUP_WITHIN))
        .when(F.coalesce(F.col("_seen"), F.lit(False)), F.lit(DUP_EARLIER))
        .otherwise(F.lit(STORED))
    )
    conflict = F.col("_valid") & (F.col("_copy") > 1) & F.col("_differs")
    return ranked.select(
        *typed,
        status.alias("status"),
        conflict.alias("conflict"),
        "reason",
        "reasons",
        "_raw",
        "_source_file",
    )


def stored_rows(classified: DataFrame, ds: dt.date) -> DataFrame:
    """The rows to store, with their typed values under the table's column names."""
    typed_cols = [c for c in classified.columns if c.startswith("t_")]
    return classified.where(F.col("status") == STORED).select(
        *[F.col(c).alias(c[2:]) for c in typed_cols], F.lit(ds.isoformat()).alias("ds")
    )


def quarantine_rows(classified: DataFrame, source: str, ds: dt.date) -> DataFrame:
    """The rows that broke a rule: the first broken rule, all of them, and the raw line."""
    return classified.where(F.col("status") == QUARANTINED).select(
        F.lit(source).alias("source"),
        "reason",
        "reasons",
        F.col("_raw").alias("raw"),
        F.col("_source_file").alias("source_file"),
        F.lit(ds.isoformat()).alias("ds"),
    )


def audit(classified: DataFrame, source: str) -> DataFrame:
    """One row of counts for ``source`` (rows_in = stored + quarantined + dups)."""

    def count(status: str) -> Column:
        return F.coalesce(F.sum(F.when(F.col("status") == status, 1).otherwise(0)), F.lit(0)).cast(
            "long"
        )

    return classified.agg(
        F.count(F.lit(1)).cast("long").alias("rows_in"),
        count(STORED).alias("rows_stored"),
        count(QUARANTINED).alias("rows_quarantined"),
        count(DUP_WITHIN).alias("duplicates_within_day"),
        count(DUP_EARLIER).alias("duplicates_earlier_days"),
        F.coalesce(F.sum(F.col("conflict").cast("int")), F.lit(0))
        .cast("long")
        .alias("conflicting_duplicates"),
    ).select(
        F.lit(source).alias("source"),
        "*",
        F.when(F.col("rows_in") > 0, F.col("rows_quarantined") / F.col("rows_in"))
        .otherwise(F.lit(0.0))
        .alias("quarantine_rate"),
    )


def audit_frame(spark: SparkSession, counts: Iterable[SourceCounts], ds: dt.date) -> DataFrame:
    """The audit rows as a DataFrame of literals (built in the JVM: no Python worker)."""
    types = {f.name: lake.ddl(f.type) for f in INGEST_AUDIT.schema}
    fields = list(SourceCounts.__dataclass_fields__)
    rows = [
        F.struct(*[F.lit(getattr(c, name)).cast(types[name]).alias(name) for name in fields])
        for c in counts
    ]
    return spark.range(1).select(F.inline(F.array(*rows))).withColumn("ds", F.lit(ds.isoformat()))


def read_day(spark: SparkSession, settings: Settings, source: str, ds: dt.date) -> DataFrame:
    """The day's raw rows of ``source`` with a file-order line number ``_line``."""
    files = raw_format.day_files(settings, source, ds)
    if source == "impressions" and not files:
        raise InputError(
            f"No raw impression files for {ds} in {raw_format.day_dir(settings, source, ds)} "
            f"(expected *.jsonl, *.csv or *.parquet; see docs/raw-format.md)."
        )
    return raw_reader.read_raw(spark, files, RAW_FIELDS[source]).withColumn(
        "_line", F.monotonically_increasing_id()
    )


def earlier_impression_ids(
    spark: SparkSession, settings: Settings, ds: dt.date
) -> DataFrame | None:
    """Impression ids stored in the lookback days before ``ds``; None when there are none
    (read from the Delta log without a Spark job, so a first day skips the join)."""
    first = ds - dt.timedelta(days=settings.ingest.dedup_lookback_days)
    last = ds - dt.timedelta(days=1)
    days = delta.partition_days(settings, IMPRESSIONS)
    if not any(first.isoformat() <= d <= last.isoformat() for d in days):
        return None
    return lake.read_days(spark, settings, IMPRESSIONS, first, last).select("impression_id")


def shuffle_partitions(settings: Settings, raw_bytes: int) -> int:
    """Shuffle partitions for a day of ``raw_bytes``: one per ``ingest.raw_bytes_per_task``
    (at least ``spark.shuffle_partitions``), so each task sorts a bounded share of the day."""
    return max(
        settings.spark.shuffle_partitions, -(-raw_bytes // settings.ingest.raw_bytes_per_task)
    )


def _job_ids(spark: SparkSession) -> list[int]:
    """Ids of the Spark jobs run in this thread's job group (None: no group), for the log;
    none on a Spark Connect session (its jobs run in the server)."""
    if is_remote(spark):
        return []
    sc = spark.sparkContext
    return list(sc.statusTracker().getJobIdsForGroup(sc.getLocalProperty("spark.jobGroup.id")))


@contextmanager
def _session_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set Spark SQL settings for the duration of a job, then put the previous ones back."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, previous in before.items():
            if previous is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, previous)


def run_ingest(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """Ingest day ``ds``: replace its partitions in every bronze/dim table; return the counts.

    The day's raw files are read once: the classified rows (compact: typed values, status;
    the raw line of quarantined rows only) are kept on local disk while the stored rows are
    written, then the quarantine and the audit are read from there. Five Delta commits.
    """
    rules = settings.ingest
    jobs_before = max(_job_ids(spark), default=-1)
    raw = {source: read_day(spark, settings, source, ds) for source in RAW_FIELDS}
    checked = {
        "impressions": check_impressions(
            raw["impressions"],
            ds=ds,
            scenarios=rules.scenarios,
            allowed_lateness_minutes=rules.allowed_lateness_minutes,
        ),
        "users": check_users(raw["users"]),
        "items": check_items(raw["items"]),
    }
    classified = {
        "impressions": classify(
            checked["impressions"],
            "impression_id",
            impression_order(),
            earlier_impression_ids(spark, settings, ds),
        ),
        "users": classify(checked["users"], "user_id", last_in_file_order(), None),
        "items": classify(checked["items"], "item_id", last_in_file_order(), None),
    }
    targets = {"impressions": IMPRESSIONS, "users": DIM_USERS, "items": DIM_ITEMS}
    raw_bytes = sum(
        p.stat().st_size for s in RAW_FIELDS for p in raw_format.day_files(settings, s, ds)
    )
    job_conf = {
        "spark.sql.shuffle.partitions": str(shuffle_partitions(settings, raw_bytes)),
        # HotSpot does not compile a method over 8000 bytes of bytecode: the row rules make
        # whole-stage code that large, which then runs interpreted, 2x slower than Spark's
        # per-expression code.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        # The classified day is read back once per table: uncompressed batches cost less CPU
        # than they save in local disk reads.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # A day is one partition of each table: one writer per task, no sort by ds first.
        "spark.sql.maxConcurrentOutputFileWriters": "1",
        # The optimizer's constraint propagation multiplies the rules' many aliases of the
        # same fields: with the join on earlier days it filled the 2 g driver heap while
        # planning. The job has no filter that inferred constraints would help.
        "spark.sql.constraintPropagation.enabled": "false",
    }
    with _session_conf(spark, job_conf):
        try:
            for df in classified.values():
                # On disk, not on the heap: a day's size must not decide whether ingest survives.
                df.persist(StorageLevel.DISK_ONLY)
            for source, df in classified.items():
                lake.overwrite_partition(stored_rows(df, ds), settings, targets[source], ds)
            quarantine = reduce(
                DataFrame.unionByName, [quarantine_rows(df, s, ds) for s, df in classified.items()]
            )
            lake.overwrite_partition(quarantine, settings, QUARANTINE, ds)
            audits = reduce(DataFrame.unionByName, [audit(df, s) for s, df in classified.items()])
            rows = audits.collect()
        finally:
            for df in classified.values():
                df.unpersist()
    names = SourceCounts.__dataclass_fields__
    counts = {r["source"]: SourceCounts(**{k: r[k] for k in names}) for r in rows}
    lake.overwrite_partition(audit_frame(spark, counts.values(), ds), settings, INGEST_AUDIT, ds)
    if is_remote(spark):
        log.info("ingest %s: %d Delta commits (on the Spark server)", ds, len(targets) + 2)
    else:
        jobs = sum(1 for job in _job_ids(spark) if job > jobs_before)
        log.info("ingest %s: %d Delta commits, %d Spark jobs", ds, len(targets) + 2, jobs)
    for c in counts.values():
        log.info(
            "ingest %s %s: in=%d stored=%d quarantined=%d duplicates=%d",
            ds,
            c.source,
            c.rows_in,
            c.rows_stored,
            c.rows_quarantined,
            c.duplicates,
        )
    return counts

"""Ingest: one day of raw files -> bronze.impressions, dim.users, dim.items, bronze.quarantine.

Pure transforms (``classify_impressions``, ``classify_users``, ``classify_items``,
``audit``) annotate every raw row with exactly one status:

* ``stored``                  - parsed, valid, first copy of its key;
* ``quarantined``             - at least one rule failed; the first failed rule is the
                                ``reason``, all failed rules are in ``reasons``;
* ``duplicate_within_day``    - another copy of the key in the same day was kept;
* ``duplicate_earlier_day``   - the impression_id is already stored in an earlier day
                                (within ``ingest.dedup_lookback_days``).

so rows in = stored + quarantined + duplicates, by construction, and the audit table
records each count. ``run_ingest`` is the thin entry point (CLI ``keep ingest``, the
DAG's ``ingest`` task): it reads config and inputs, calls the transforms, writes.

Conflicting copies of one impression_id within a day: the copy furthest down the funnel
wins (click, then cart, then purchase), then the earliest event time, then the first
in file order. Against earlier days, the stored (first-arrived) copy always wins.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable

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
from keep.lake import raw_format, raw_reader
from keep.lake import spark_io as lake

log = logging.getLogger(__name__)

STORED = "stored"
QUARANTINED = "quarantined"
DUP_WITHIN = "duplicate_within_day"
DUP_EARLIER = "duplicate_earlier_day"

Check = tuple[str, Column]


def _blank(name: str) -> Column:
    return F.col(name).isNull() | (F.trim(F.col(name)) == "")


def _typed(name: str, sql_type: str) -> Column:
    return F.expr(f"try_cast(trim(`{name}`) AS {sql_type})")


def _required(name: str, sql_type: str) -> list[Check]:
    """null_<name> when missing, bad_type_<name> when present but not castable."""
    return [
        (f"null_{name}", _blank(name)),
        (f"bad_type_{name}", ~_blank(name) & _typed(name, sql_type).isNull()),
    ]


def _optional(name: str, sql_type: str) -> list[Check]:
    return [(f"bad_type_{name}", ~_blank(name) & _typed(name, sql_type).isNull())]


def _with_reasons(raw: DataFrame, checks: Iterable[Check]) -> DataFrame:
    """Add ``reasons`` (failed rule names in priority order) and ``reason`` (the first)."""
    flags = [F.when(F.coalesce(cond, F.lit(False)), F.lit(name)) for name, cond in checks]
    reasons = F.filter(F.array(*flags), lambda r: r.isNotNull())
    return raw.withColumn("reasons", reasons).withColumn(
        "reason", F.when(F.size("reasons") > 0, F.col("reasons")[0])
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
    event_time = _typed("event_time", "TIMESTAMP")
    labels = ("click", "cart", "purchase")
    checks: list[Check] = [("malformed_record", F.col("_malformed"))]
    checks += [("null_impression_id", _blank("impression_id"))]
    checks += _required("user_id", "BIGINT") + _required("item_id", "BIGINT")
    checks += _required("event_time", "TIMESTAMP")
    checks += [
        ("event_time_too_late", event_time < F.lit(earliest)),
        ("event_time_after_day", event_time >= F.lit(end)),
        ("null_scenario", _blank("scenario")),
        ("unknown_scenario", ~_blank("scenario") & ~F.trim("scenario").isin(scenarios)),
    ]
    checks += _required("position", "INT") + [
        ("out_of_range_position", _typed("position", "INT") < 0)
    ]
    for label in labels:
        checks += _required(label, "INT")
        checks.append((f"out_of_range_{label}", ~_typed(label, "INT").isin(0, 1)))
    click = _typed("click", "INT")
    checks += [
        ("cart_without_click", (_typed("cart", "INT") == 1) & (click == 0)),
        ("purchase_without_click", (_typed("purchase", "INT") == 1) & (click == 0)),
    ]
    return checks


def _finish(
    checked: DataFrame,
    typed: dict[str, Column],
    key: str,
    order: list[Column],
    earlier_keys: DataFrame | None,
) -> DataFrame:
    """Type the columns, rank copies per key, and assign each row its status."""
    df = checked.select("*", *[col.alias(f"t_{name}") for name, col in typed.items()])
    valid = F.col("reason").isNull()
    # Only valid rows compete for a key; ranks of invalid rows are irrelevant.
    rank_window = Window.partitionBy(valid, F.col(f"t_{key}")).orderBy(*order)
    df = df.withColumn("_copy", F.row_number().over(rank_window))
    if earlier_keys is not None:
        seen = earlier_keys.select(F.col(key).alias(f"t_{key}")).distinct()
        df = df.join(seen.withColumn("_seen", F.lit(True)), on=f"t_{key}", how="left")
    else:
        df = df.withColumn("_seen", F.lit(False))
    status = (
        F.when(~valid, F.lit(QUARANTINED))
        .when(F.col("_copy") > 1, F.lit(DUP_WITHIN))
        .when(F.coalesce(F.col("_seen"), F.lit(False)), F.lit(DUP_EARLIER))
        .otherwise(F.lit(STORED))
    )
    # A duplicate "conflicts" when its content differs from the copy that was kept.
    content = F.sha2(F.to_json(F.struct(*[F.col(f"t_{n}") for n in typed if n != key])), 256)
    kept_content = F.first(content).over(rank_window)
    conflict = (F.col("_copy") > 1) & valid & (content != kept_content)
    return df.withColumn("status", status).withColumn("conflict", conflict)


def _file_order() -> list[Column]:
    return [F.col("_source_file").asc(), F.col("_line").asc()]


def classify_impressions(
    raw: DataFrame,
    earlier_ids: DataFrame | None,
    *,
    ds: dt.date,
    scenarios: list[str],
    allowed_lateness_minutes: int,
) -> DataFrame:
    """Annotate raw impression rows with typed ``t_*`` columns, ``reason(s)`` and ``status``."""
    checked = _with_reasons(raw, impression_checks(ds, scenarios, allowed_lateness_minutes))
    typed = {
        "impression_id": F.trim("impression_id"),
        "user_id": _typed("user_id", "BIGINT"),
        "item_id": _typed("item_id", "BIGINT"),
        "event_time": _typed("event_time", "TIMESTAMP"),
        "scenario": F.trim("scenario"),
        "position": _typed("position", "INT"),
        "click": _typed("click", "INT"),
        "cart": _typed("cart", "INT"),
        "purchase": _typed("purchase", "INT"),
    }
    order = [
        typed["click"].desc(),
        typed["cart"].desc(),
        typed["purchase"].desc(),
        typed["event_time"].asc(),
        *_file_order(),
    ]
    return _finish(checked, typed, "impression_id", order, earlier_ids)


def user_checks() -> list[Check]:
    return (
        [("malformed_record", F.col("_malformed"))]
        + _required("user_id", "BIGINT")
        + [("unknown_gender", ~_blank("gender") & ~F.upper(F.trim("gender")).isin("F", "M", "U"))]
        + _optional("age_level", "INT")
        + _optional("purchase_power", "INT")
        + [
            ("out_of_range_age_level", _typed("age_level", "INT") < 0),
            ("out_of_range_purchase_power", _typed("purchase_power", "INT") < 0),
        ]
    )


def classify_users(raw: DataFrame) -> DataFrame:
    """Annotate raw user dimension rows; the last copy of a user_id in a day wins."""
    checked = _with_reasons(raw, user_checks())
    typed = {
        "user_id": _typed("user_id", "BIGINT"),
        "gender": F.upper(F.trim("gender")),
        "age_level": _typed("age_level", "INT"),
        "purchase_power": _typed("purchase_power", "INT"),
    }
    order = [F.col("_source_file").desc(), F.col("_line").desc()]
    return _finish(checked, typed, "user_id", order, None)


def item_checks() -> list[Check]:
    return (
        [("malformed_record", F.col("_malformed"))]
        + _required("item_id", "BIGINT")
        + _required("category_id", "BIGINT")
        + _optional("brand_id", "BIGINT")
        + _required("price", "DOUBLE")
        + [
            ("negative_price", _typed("price", "DOUBLE") < 0),
            # Spark parses "NaN" and "Infinity" as doubles: a price must be a finite number.
            (
                "non_finite_price",
                F.isnan(_typed("price", "DOUBLE"))
                | F.abs(_typed("price", "DOUBLE")).eqNullSafe(float("inf")),
            ),
        ]
    )


def classify_items(raw: DataFrame) -> DataFrame:
    """Annotate raw item dimension rows; the last copy of an item_id in a day wins."""
    checked = _with_reasons(raw, item_checks())
    typed = {
        "item_id": _typed("item_id", "BIGINT"),
        "category_id": _typed("category_id", "BIGINT"),
        "brand_id": _typed("brand_id", "BIGINT"),
        "price": _typed("price", "DOUBLE"),
    }
    order = [F.col("_source_file").desc(), F.col("_line").desc()]
    return _finish(checked, typed, "item_id", order, None)


def stored_rows(classified: DataFrame, ds: dt.date) -> DataFrame:
    """The rows to store, with their typed values under the table's column names."""
    typed_cols = [c for c in classified.columns if c.startswith("t_")]
    return classified.where(F.col("status") == STORED).select(
        *[F.col(c).alias(c[2:]) for c in typed_cols], F.lit(ds.isoformat()).alias("ds")
    )


def quarantine_rows(classified: DataFrame, source: str, ds: dt.date) -> DataFrame:
    return classified.where(F.col("status") == QUARANTINED).select(
        F.lit(source).alias("source"),
        "reason",
        "reasons",
        F.col("_raw").alias("raw"),
        F.col("_source_file").alias("source_file"),
        F.lit(ds.isoformat()).alias("ds"),
    )


def audit(classified: DataFrame, source: str, ds: dt.date) -> DataFrame:
    """One row of counts for ``source`` on ``ds`` (rows_in = stored + quarantined + dups)."""

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
        F.lit(ds.isoformat()).alias("ds"),
    )


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


def run_ingest(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """Ingest day ``ds``: replace its partitions in every bronze/dim table; return the counts."""
    rules = settings.ingest
    earlier = lake.read_days(
        spark,
        settings,
        IMPRESSIONS,
        ds - dt.timedelta(days=rules.dedup_lookback_days),
        ds - dt.timedelta(days=1),
    ).select("impression_id")
    classified = {
        "impressions": classify_impressions(
            read_day(spark, settings, "impressions", ds),
            earlier,
            ds=ds,
            scenarios=rules.scenarios,
            allowed_lateness_minutes=rules.allowed_lateness_minutes,
        ),
        "users": classify_users(read_day(spark, settings, "users", ds)),
        "items": classify_items(read_day(spark, settings, "items", ds)),
    }
    targets = {"impressions": IMPRESSIONS, "users": DIM_USERS, "items": DIM_ITEMS}
    try:
        for df in classified.values():
            df.persist(StorageLevel.MEMORY_AND_DISK)
        for source, df in classified.items():
            lake.overwrite_partition(stored_rows(df, ds), settings, targets[source], ds)
        quarantine = None
        audits = None
        for source, df in classified.items():
            q = quarantine_rows(df, source, ds)
            a = audit(df, source, ds)
            quarantine = q if quarantine is None else quarantine.unionByName(q)
            audits = a if audits is None else audits.unionByName(a)
        assert quarantine is not None and audits is not None
        lake.overwrite_partition(quarantine, settings, QUARANTINE, ds)
        rows = audits.collect()
        lake.overwrite_partition(
            spark.createDataFrame(rows, audits.schema), settings, INGEST_AUDIT, ds
        )
    finally:
        for df in classified.values():
            df.unpersist()
    names = SourceCounts.__dataclass_fields__
    counts = {r["source"]: SourceCounts(**{k: r[k] for k in names}) for r in rows}
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

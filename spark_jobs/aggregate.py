"""Aggregate: long-history state per day, updated incrementally from yesterday's state.

For day ``ds`` (after ``ingest``):

* ``silver.<entity>_daily_counts`` (entity = user, item, user_category): the day's counters;
* ``silver.<entity>_stats``: counters over every window ``w`` as of the end of ``ds``:
  ``S_w(ds) = S_w(ds-1) + D(ds) - D(ds-w)`` — yesterday's snapshot plus today's daily
  counts minus the daily counts of the day that leaves the window. The cost is one day of
  data plus one snapshot, whatever the history length;
* ``silver.user_behavior``: the last N behaviours per user: yesterday's sequence plus
  today's behaviours, sorted by time, truncated to N.

Keys whose longest window is empty are dropped from the stats. The category of an
impression is its item's category as of the impression's log day.

``full_stats`` / ``full_sequences`` recompute the same state from the whole bronze
history; they are the reference the incremental path is tested and benchmarked against.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, cast

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    BEHAVIOR,
    COUNTERS,
    DIM_ITEMS,
    ENTITIES,
    IMPRESSIONS,
    USER_BEHAVIOR,
    TableSpec,
    daily_counts_spec,
    stats_spec,
)
from keep.core.time import end_of_day
from keep.lake import delta
from keep.lake import spark_io as lake

log = logging.getLogger(__name__)

# One behaviour of a sequence, as a Spark struct (its schema: keep.core.tables.BEHAVIOR).
_BEHAVIOR = cast(T.StructType, lake.spark_type(BEHAVIOR))


def with_category(impressions: DataFrame, items_as_of: DataFrame) -> DataFrame:
    """Impressions with their item's category and brand (null for unknown items)."""
    attrs = items_as_of.select("item_id", "category_id", "brand_id")
    return impressions.join(attrs, on="item_id", how="left")


# --------------------------------------------------------------------------- counters


def daily_counts(impressions: DataFrame, entity: str, *, by: tuple[str, ...] = ()) -> DataFrame:
    """One day's counters per key of ``entity`` (impressions must carry ``category_id``).

    ``by``: extra grouping columns, e.g. ``("ds",)`` for every day of a history at once.
    """
    keys = ENTITIES[entity]
    rows = (
        impressions.where(F.col("category_id").isNotNull())
        if "category_id" in keys
        else impressions
    )
    return rows.groupBy(*keys, *by).agg(
        F.count(F.lit(1)).cast("long").alias("impressions"),
        F.sum("click").cast("long").alias("clicks"),
        F.sum("cart").cast("long").alias("carts"),
        F.sum("purchase").cast("long").alias("purchases"),
    )


def _long(
    frame: DataFrame, keys: tuple[str, ...], window: int, sign: int, suffix: str
) -> DataFrame:
    """Counters of ``frame`` as (keys, window, counters) rows, times ``sign``."""
    return frame.select(
        *keys,
        F.lit(window).alias("window"),
        *[(F.col(f"{c}{suffix}") * sign).cast("long").alias(c) for c in COUNTERS],
    )


def finish_stats(
    long_rows: DataFrame,
    keys: tuple[str, ...],
    windows: list[int],
    *,
    prior_ctr: float,
    prior_strength: float,
    ds: dt.date,
) -> DataFrame:
    """Sum (keys, window, counters) rows into one wide row per key; add smoothed rates."""
    summed = long_rows.groupBy(*keys, "window").agg(*[F.sum(c).alias(c) for c in COUNTERS])
    wide = (
        summed.groupBy(*keys)
        .pivot("window", list[Any](windows))
        .agg(*[F.first(c).alias(c) for c in COUNTERS])
    )
    cols: list[Column] = [F.col(k) for k in keys]
    for w in windows:
        for c in COUNTERS:
            cols.append(F.coalesce(F.col(f"{w}_{c}"), F.lit(0)).cast("long").alias(f"{c}_{w}d"))
    out = wide.select(*cols)
    rates = [
        (
            (F.col(f"clicks_{w}d") + prior_strength * prior_ctr)
            / (F.col(f"impressions_{w}d") + prior_strength)
        ).alias(f"ctr_{w}d")
        for w in windows
    ]
    longest = max(windows)
    return (
        out.select("*", *rates)
        .where(F.col(f"impressions_{longest}d") > 0)
        .withColumn("event_timestamp", F.lit(end_of_day(ds)))
        .withColumn("ds", F.lit(ds.isoformat()))
    )


def update_stats(
    previous: DataFrame,
    today: DataFrame,
    leaving: dict[int, DataFrame],
    entity: str,
    *,
    windows: list[int],
    prior_ctr: float,
    prior_strength: float,
    ds: dt.date,
) -> DataFrame:
    """``S_w(ds) = S_w(ds-1) + D(ds) - D(ds-w)`` for every window ``w``."""
    keys = ENTITIES[entity]
    parts = []
    for w in windows:
        parts.append(_long(previous, keys, w, +1, f"_{w}d"))
        parts.append(_long(today, keys, w, +1, ""))
        parts.append(_long(leaving[w], keys, w, -1, ""))
    rows = parts[0]
    for part in parts[1:]:
        rows = rows.unionByName(part)
    return finish_stats(
        rows, keys, windows, prior_ctr=prior_ctr, prior_strength=prior_strength, ds=ds
    )


def full_stats(
    daily_history: DataFrame,
    entity: str,
    *,
    windows: list[int],
    prior_ctr: float,
    prior_strength: float,
    ds: dt.date,
) -> DataFrame:
    """The same counters recomputed from every day's counts (reference for tests/bench)."""
    keys = ENTITIES[entity]
    parts = []
    for w in windows:
        first = (ds - dt.timedelta(days=w - 1)).isoformat()
        in_window = daily_history.where(F.col("ds").between(first, ds.isoformat()))
        parts.append(_long(in_window, keys, w, +1, ""))
    rows = parts[0]
    for part in parts[1:]:
        rows = rows.unionByName(part)
    return finish_stats(
        rows, keys, windows, prior_ctr=prior_ctr, prior_strength=prior_strength, ds=ds
    )


# --------------------------------------------------------------------------- sequences


def behaviors_of_day(impressions: DataFrame) -> DataFrame:
    """Per user, the day's behaviours (clicked impressions), as BEHAVIOR structs."""
    kind = (
        F.when(F.col("purchase") == 1, "purchase")
        .when(F.col("cart") == 1, "cart")
        .otherwise("click")
    )
    event = F.struct(
        *[
            (kind if f.name == "behavior_type" else F.col(f.name)).cast(f.dataType).alias(f.name)
            for f in _BEHAVIOR.fields
        ]
    )
    return (
        impressions.where(F.col("click") == 1)
        .groupBy("user_id")
        .agg(F.collect_list(event).alias("today"))
    )


def update_sequences(
    previous: DataFrame, today: DataFrame, *, length: int, ds: dt.date
) -> DataFrame:
    """Yesterday's sequences plus today's behaviours, time-ordered, last ``length`` kept."""
    joined = previous.select("user_id", "behaviors").join(today, on="user_id", how="full_outer")
    merged = F.array_sort(
        F.concat(
            F.coalesce(F.col("behaviors"), F.array().cast(T.ArrayType(_BEHAVIOR))),
            F.coalesce(F.col("today"), F.array().cast(T.ArrayType(_BEHAVIOR))),
        )
    )
    kept = F.slice(merged, F.greatest(F.size(merged) - length + 1, F.lit(1)), length)
    return joined.select(
        "user_id",
        kept.alias("behaviors"),
    ).select(
        "user_id",
        "behaviors",
        F.size("behaviors").alias("seq_len"),
        F.lit(end_of_day(ds)).alias("event_timestamp"),
        F.lit(ds.isoformat()).alias("ds"),
    )


def full_sequences(impressions_history: DataFrame, *, length: int, ds: dt.date) -> DataFrame:
    """The same sequences recomputed from all impressions up to ``ds`` (reference)."""
    today = behaviors_of_day(impressions_history.where(F.col("ds") <= ds.isoformat()))
    previous = today.select(
        "user_id", F.array().cast(T.ArrayType(_BEHAVIOR)).alias("behaviors")
    ).limit(0)
    return update_sequences(previous, today, length=length, ds=ds)


# --------------------------------------------------------------------------- entry point


def partitions(settings: Settings, spec: TableSpec) -> list[dt.date]:
    """Days (``ds``) with live files in a table, read from the Delta log with delta-rs."""
    from deltalake import DeltaTable

    if not delta.table_exists(settings, spec):
        return []
    table = DeltaTable(str(delta.table_path(settings, spec)))
    return sorted({dt.date.fromisoformat(p["ds"]) for p in table.partitions()})


def state_days(settings: Settings) -> list[dt.date]:
    """Days whose silver state is complete (the user stats are written last but one)."""
    return partitions(settings, USER_BEHAVIOR)


def check_order(settings: Settings, ds: dt.date) -> None:
    """Refuse a day whose bronze is missing or whose predecessor's state is missing."""
    bronze_days = partitions(settings, IMPRESSIONS)
    if ds not in bronze_days:
        raise InputError(
            f"bronze.impressions has no partition {ds}: run `keep ingest --ds {ds}` first."
        )
    earlier = [d for d in bronze_days if d < ds]
    if not earlier:
        return  # the first day of the lake starts from empty state
    previous = ds - dt.timedelta(days=1)
    if previous not in state_days(settings):
        raise InputError(
            f"Cannot aggregate {ds}: the state of {previous} is missing (state depends on the "
            f"previous day). Run the days in order, or `keep backfill --start {previous} --end {ds}`."
        )


def run_aggregate(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, int]:
    """Aggregate day ``ds``; returns the row count of every written state table."""
    check_order(settings, ds)
    agg = settings.aggregate
    previous_day = ds - dt.timedelta(days=1)
    items = lake.as_of(lake.read_table(spark, settings, DIM_ITEMS), "item_id", ds)
    impressions = with_category(
        lake.read_partition(spark, settings, IMPRESSIONS, ds), items
    ).cache()
    counts: dict[str, int] = {}
    try:
        for entity in ENTITIES:
            daily_spec = daily_counts_spec(entity)
            lake.overwrite_partition(daily_counts(impressions, entity), settings, daily_spec, ds)
            stats = stats_spec(entity, agg.windows)
            leaving = {
                w: lake.read_partition(spark, settings, daily_spec, ds - dt.timedelta(days=w))
                for w in agg.windows
            }
            updated = update_stats(
                lake.read_partition(spark, settings, stats, previous_day),
                lake.read_partition(spark, settings, daily_spec, ds),
                leaving,
                entity,
                windows=agg.windows,
                prior_ctr=agg.prior_ctr,
                prior_strength=agg.prior_strength,
                ds=ds,
            )
            lake.overwrite_partition(updated, settings, stats, ds)
        sequences = update_sequences(
            lake.read_partition(spark, settings, USER_BEHAVIOR, previous_day),
            behaviors_of_day(impressions),
            length=agg.sequence_length,
            ds=ds,
        )
        lake.overwrite_partition(sequences, settings, USER_BEHAVIOR, ds)
    finally:
        impressions.unpersist()
    apply_retention(spark, settings, ds)
    for spec in [USER_BEHAVIOR, *[stats_spec(e, agg.windows) for e in ENTITIES]]:
        counts[spec.name] = delta.partition_rows(settings, spec, ds)
    log.info("aggregate %s: %s", ds, counts)
    return counts


def apply_retention(spark: SparkSession, settings: Settings, ds: dt.date) -> None:
    """Delete snapshots older than the retention, and daily counts older than every window."""
    from delta.tables import DeltaTable

    agg = settings.aggregate
    snapshot_cut = (ds - dt.timedelta(days=agg.snapshot_retention_days)).isoformat()
    daily_cut = (
        ds - dt.timedelta(days=max(max(agg.windows), agg.snapshot_retention_days) + 1)
    ).isoformat()
    targets = [(USER_BEHAVIOR, snapshot_cut)]
    targets += [(stats_spec(e, agg.windows), snapshot_cut) for e in ENTITIES]
    targets += [(daily_counts_spec(e), daily_cut) for e in ENTITIES]
    for spec, cut in targets:
        if any(d.isoformat() < cut for d in partitions(settings, spec)):
            DeltaTable.forPath(spark, str(delta.table_path(settings, spec))).delete(
                F.col("ds") < cut
            )

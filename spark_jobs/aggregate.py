"""Aggregate: long-history state per day, updated incrementally from yesterday's state.

For day ``ds`` (after ``ingest``):

* ``silver.daily_counts``: the day's counters per key of every entity (user, item,
  user_category), one table for all entities;
* ``silver.<entity>_stats``: counters over every window ``w`` as of the end of ``ds``:
  ``S_w(ds) = S_w(ds-1) + D(ds) - D(ds-w)`` — yesterday's snapshot plus today's daily
  counts minus the daily counts of the day that leaves the window. The cost is one day of
  data plus one snapshot, whatever the history length;
* ``silver.user_behavior``: the last N behaviours per user: yesterday's sequence plus
  today's behaviours, sorted by time, truncated to N.

Keys whose longest window is empty are dropped from the stats. The category of an
impression is its item's category as of the impression's log day. A day costs one Delta
commit per table (five), retention included: partitions past retention are removed in the
commit that writes the day.

**Seed (bootstrap).** ``run_seed_state(spark, settings, ds)`` writes the state of ``ds`` by
one full recomputation from the bronze history (``seed_state``: ``full_stats`` /
``full_sequences`` over ``history_with_category``): the state the daily job would have left
after running every day up to ``ds``, so ``run_aggregate`` can continue with ``ds + 1``.
For a history loaded in bulk, or state lost. The same functions are the reference the
incremental path is tested and benchmarked against (bench/aggregate.py).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import cast

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keep.core.config import AggregateSettings, Settings
from keep.core.errors import InputError
from keep.core.tables import (
    BEHAVIOR,
    COUNT_KEYS,
    COUNTERS,
    DAILY_COUNTS,
    DIM_ITEMS,
    ENTITIES,
    IMPRESSIONS,
    USER_BEHAVIOR,
    TableSpec,
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


def all_daily_counts(impressions: DataFrame, *, by: tuple[str, ...] = ()) -> DataFrame:
    """Every entity's counters in one frame: rows of silver.daily_counts (``entity``, the
    entity's key columns set and the other keys null, the counters; plus ``by``)."""
    frames = [
        daily_counts(impressions, entity, by=by).select(
            F.lit(entity).alias("entity"),
            *[(F.col(k) if k in keys else F.lit(None)).cast("long").alias(k) for k in COUNT_KEYS],
            *COUNTERS,
            *by,
        )
        for entity, keys in ENTITIES.items()
    ]
    return reduce(DataFrame.unionByName, frames)


def counts_of(rows: DataFrame, entity: str) -> DataFrame:
    """One entity's rows of silver.daily_counts, with only its key columns."""
    extra = [c for c in ("ds",) if c in rows.columns]
    return rows.where(F.col("entity") == entity).select(*ENTITIES[entity], *COUNTERS, *extra)


def _window_columns(windows: list[int], value: Callable[[int, str], Column]) -> list[Column]:
    """One long column ``<counter>_<w>d`` per window and counter, holding ``value(w, counter)``."""
    return [value(w, c).cast("long").alias(f"{c}_{w}d") for w in windows for c in COUNTERS]


def finish_stats(
    summed: DataFrame,
    keys: tuple[str, ...],
    windows: list[int],
    *,
    prior_ctr: float,
    prior_strength: float,
    ds: dt.date,
) -> DataFrame:
    """Window counters per key (``<counter>_<w>d``) plus smoothed rates; keys whose longest
    window is empty are dropped."""
    rates = [
        (
            (F.col(f"clicks_{w}d") + prior_strength * prior_ctr)
            / (F.col(f"impressions_{w}d") + prior_strength)
        ).alias(f"ctr_{w}d")
        for w in windows
    ]
    longest = max(windows)
    return (
        summed.select("*", *rates)
        .where(F.col(f"impressions_{longest}d") > 0)
        .withColumn("event_timestamp", F.lit(end_of_day(ds)))
        .withColumn("ds", F.lit(ds.isoformat()))
    )


def update_stats(
    previous: DataFrame,
    today: DataFrame,
    leaving: DataFrame,
    entity: str,
    *,
    windows: list[int],
    prior_ctr: float,
    prior_strength: float,
    ds: dt.date,
) -> DataFrame:
    """``S_w(ds) = S_w(ds-1) + D(ds) - D(ds-w)`` for every window ``w``.

    ``previous``: the stats of ``ds - 1``; ``today``: the daily counts of ``ds``; ``leaving``:
    the daily counts of the days ``ds - w`` (one frame; a row's ``ds`` says which window it
    leaves). One row per key and source, summed in one aggregation: the cost is one
    snapshot plus a few days of counts, whatever the history length.
    """
    keys = ENTITIES[entity]
    leaves = {w: (ds - dt.timedelta(days=w)).isoformat() for w in windows}
    zero = F.lit(0)
    rows = (
        previous.select(*keys, *_window_columns(windows, lambda w, c: F.col(f"{c}_{w}d")))
        .unionByName(today.select(*keys, *_window_columns(windows, lambda w, c: F.col(c))))
        .unionByName(
            leaving.select(
                *keys,
                *_window_columns(
                    windows,
                    lambda w, c: F.when(F.col("ds") == leaves[w], -F.col(c)).otherwise(zero),
                ),
            )
        )
    )
    names = [f"{c}_{w}d" for w in windows for c in COUNTERS]
    summed = rows.groupBy(*keys).agg(*[F.sum(n).cast("long").alias(n) for n in names])
    return finish_stats(
        summed, keys, windows, prior_ctr=prior_ctr, prior_strength=prior_strength, ds=ds
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
    """The same counters recomputed from every day's counts (the seed; reference for tests)."""
    keys = ENTITIES[entity]
    firsts = {w: (ds - dt.timedelta(days=w - 1)).isoformat() for w in windows}
    in_range = daily_history.where(F.col("ds").between(firsts[max(windows)], ds.isoformat()))
    summed = in_range.groupBy(*keys).agg(
        *_window_columns(
            windows,
            lambda w, c: F.sum(F.when(F.col("ds") >= firsts[w], F.col(c)).otherwise(F.lit(0))),
        )
    )
    return finish_stats(
        summed, keys, windows, prior_ctr=prior_ctr, prior_strength=prior_strength, ds=ds
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
            (kind if f.name == "behavior_type" else F.col(f.name))
            .cast(f.dataType.simpleString())
            .alias(f.name)
            for f in _BEHAVIOR.fields
        ]
    )
    return (
        impressions.where(F.col("click") == 1)
        .groupBy("user_id")
        .agg(F.collect_list(event).alias("today"))
    )


def _last(behaviors: Column, length: int) -> Column:
    """The last ``length`` elements of a (sorted) array."""
    return F.slice(behaviors, F.greatest(F.size(behaviors) - length + 1, F.lit(1)), length)


def _with_sequence_columns(users: DataFrame, ds: dt.date) -> DataFrame:
    return users.select(
        "user_id",
        "behaviors",
        F.size("behaviors").alias("seq_len"),
        F.lit(end_of_day(ds)).alias("event_timestamp"),
        F.lit(ds.isoformat()).alias("ds"),
    )


def update_sequences(
    previous: DataFrame, today: DataFrame, *, length: int, ds: dt.date
) -> DataFrame:
    """Yesterday's sequences plus today's behaviours, time-ordered, last ``length`` kept.

    A user without behaviours today keeps yesterday's sequence as it is (already sorted and
    at most ``length`` long), so only the day's active users are re-sorted.
    """
    joined = previous.select("user_id", "behaviors").join(today, on="user_id", how="full_outer")
    empty = F.array().cast(T.ArrayType(_BEHAVIOR).simpleString())
    merged = F.array_sort(
        F.concat(F.coalesce(F.col("behaviors"), empty), F.coalesce(F.col("today"), empty))
    )
    unchanged = F.col("today").isNull() & (F.size("behaviors") <= length)
    kept = F.when(unchanged, F.col("behaviors")).otherwise(_last(merged, length))
    return _with_sequence_columns(joined.select("user_id", kept.alias("behaviors")), ds)


def full_sequences(impressions_history: DataFrame, *, length: int, ds: dt.date) -> DataFrame:
    """The same sequences recomputed from all impressions up to ``ds`` (the seed; reference)."""
    every = behaviors_of_day(impressions_history.where(F.col("ds") <= ds.isoformat()))
    return _with_sequence_columns(
        every.select("user_id", _last(F.array_sort("today"), length).alias("behaviors")), ds
    )


# --------------------------------------------------------------------------- seed (bootstrap)


def history_with_category(impressions: DataFrame, items: DataFrame) -> DataFrame:
    """Impressions of many days, each with its item's category and brand as of its own day.

    ``items`` is dim.items, a change log (a row per item and day it changed): a row is valid
    from its ``ds`` to the next row's ``ds`` of the same item, so the as-of lookup is an
    equi-join on item_id plus a range condition (null attributes for unknown items), the same
    attributes :func:`with_category` gives the daily job on each day.
    """
    following = F.lead("ds").over(Window.partitionBy("item_id").orderBy("ds"))
    versions = items.select(
        "item_id",
        "category_id",
        "brand_id",
        F.col("ds").alias("valid_from"),
        following.alias("valid_to"),
    )
    i, v = impressions.alias("i"), versions.alias("v")
    valid = (
        (F.col("i.item_id") == F.col("v.item_id"))
        & (F.col("i.ds") >= F.col("v.valid_from"))
        & (F.col("v.valid_to").isNull() | (F.col("i.ds") < F.col("v.valid_to")))
    )
    return i.join(v, valid, "left").select("i.*", "v.category_id", "v.brand_id")


def snapshot_cut(agg: AggregateSettings, ds: dt.date) -> dt.date:
    """Snapshots (stats, sequences) older than this are removed when ``ds`` is written."""
    return ds - dt.timedelta(days=agg.snapshot_retention_days)


def daily_cut(agg: AggregateSettings, ds: dt.date) -> dt.date:
    """Daily counts older than this are removed when ``ds`` is written (they have left every
    window and the snapshot retention)."""
    return ds - dt.timedelta(days=max(max(agg.windows), agg.snapshot_retention_days) + 1)


@dataclass(frozen=True)
class State:
    """The state a day leaves for the next one: daily counts, stats per entity, sequences."""

    daily_counts: DataFrame
    stats: dict[str, DataFrame]
    sequences: DataFrame


def seed_state(events: DataFrame, *, agg: AggregateSettings, ds: dt.date) -> State:
    """The state of ``ds`` recomputed from a whole history (:func:`history_with_category`).

    Exactly what running the daily job on every day up to ``ds`` leaves behind: the daily
    counts of every day retention keeps (``daily_cut`` .. ``ds``), the stats and the
    sequences of ``ds``.
    """
    first, last = daily_cut(agg, ds).isoformat(), ds.isoformat()
    daily = all_daily_counts(events.where(F.col("ds").between(first, last)), by=("ds",))
    stats = {
        e: full_stats(
            counts_of(daily, e),
            e,
            windows=agg.windows,
            prior_ctr=agg.prior_ctr,
            prior_strength=agg.prior_strength,
            ds=ds,
        )
        for e in ENTITIES
    }
    sequences = full_sequences(events, length=agg.sequence_length, ds=ds)
    return State(daily_counts=daily, stats=stats, sequences=sequences)


# --------------------------------------------------------------------------- entry points


def partitions(settings: Settings, spec: TableSpec) -> list[dt.date]:
    """Days (``ds``) with live files in a table, read from the Delta log with delta-rs."""
    from deltalake import DeltaTable

    if not delta.table_exists(settings, spec):
        return []
    table = DeltaTable(str(delta.table_path(settings, spec)))
    return sorted({dt.date.fromisoformat(p["ds"]) for p in table.partitions()})


def state_days(settings: Settings) -> list[dt.date]:
    """Days whose silver state is complete (user_behavior is written last)."""
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


def _state_rows(settings: Settings, ds: dt.date) -> dict[str, int]:
    agg = settings.aggregate
    specs = [USER_BEHAVIOR, *[stats_spec(e, agg.windows) for e in ENTITIES]]
    return {spec.name: delta.partition_rows(settings, spec, ds) for spec in specs}


def run_aggregate(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, int]:
    """Aggregate day ``ds``; returns the row count of every written state table.

    One Delta commit per table and day: the day's partition replaces the old one and, in the
    same commit, partitions past retention are removed (``snapshot_cut`` / ``daily_cut``).
    The stats are written before the daily counts, so every table is read and written at
    the version it had when the run began (no table is read back after this run wrote it);
    user_behavior is written last: its partition marks the day's state complete.
    """
    check_order(settings, ds)
    agg = settings.aggregate
    previous_day = ds - dt.timedelta(days=1)
    leaving_days = [(ds - dt.timedelta(days=w)).isoformat() for w in agg.windows]
    items = lake.as_of(lake.read_table(spark, settings, DIM_ITEMS), "item_id", ds)
    impressions = with_category(
        lake.read_partition(spark, settings, IMPRESSIONS, ds), items
    ).cache()
    today = all_daily_counts(impressions).cache()
    leaving = (
        lake.read_table(spark, settings, DAILY_COUNTS).where(F.col("ds").isin(leaving_days)).cache()
    )
    try:
        for entity in ENTITIES:
            stats = stats_spec(entity, agg.windows)
            updated = update_stats(
                lake.read_partition(spark, settings, stats, previous_day),
                counts_of(today, entity),
                counts_of(leaving, entity),
                entity,
                windows=agg.windows,
                prior_ctr=agg.prior_ctr,
                prior_strength=agg.prior_strength,
                ds=ds,
            )
            lake.overwrite_partition(
                updated, settings, stats, ds, drop_before=snapshot_cut(agg, ds)
            )
        lake.overwrite_partition(today, settings, DAILY_COUNTS, ds, drop_before=daily_cut(agg, ds))
        sequences = update_sequences(
            lake.read_partition(spark, settings, USER_BEHAVIOR, previous_day),
            behaviors_of_day(impressions),
            length=agg.sequence_length,
            ds=ds,
        )
        lake.overwrite_partition(
            sequences, settings, USER_BEHAVIOR, ds, drop_before=snapshot_cut(agg, ds)
        )
    finally:
        for frame in (leaving, today, impressions):
            frame.unpersist()
    counts = _state_rows(settings, ds)
    log.info("aggregate %s: %s", ds, counts)
    return counts


def run_seed_state(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, int]:
    """Bootstrap the state of ``ds`` from the bronze history by one full recomputation.

    For a lake whose bronze (and dim) history was loaded in bulk, or whose state was lost:
    afterwards ``run_aggregate`` continues with ``ds + 1``. Writes what the daily job would
    have left: the daily counts of every day ``<= ds`` that retention keeps (older ones are
    removed), and partition ``ds`` of the stats and of user_behavior (snapshots past
    retention removed). Earlier snapshots are not recomputed: state before ``ds`` is only
    what the lake already held. Returns the row counts, like :func:`run_aggregate`.
    """
    if ds not in partitions(settings, IMPRESSIONS):
        raise InputError(
            f"bronze.impressions has no partition {ds}: ingest the history up to {ds} first."
        )
    agg = settings.aggregate
    upto = F.col("ds") <= ds.isoformat()
    events = history_with_category(
        lake.read_table(spark, settings, IMPRESSIONS).where(upto),
        lake.read_table(spark, settings, DIM_ITEMS).where(upto),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    state = seed_state(events, agg=agg, ds=ds)
    daily = state.daily_counts.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        for entity in ENTITIES:
            lake.overwrite_partition(
                state.stats[entity],
                settings,
                stats_spec(entity, agg.windows),
                ds,
                drop_before=snapshot_cut(agg, ds),
            )
        # Every day up to ds is replaced: the recomputed days kept, older ones removed.
        lake.replace_where(daily, settings, DAILY_COUNTS, f"ds <= '{ds.isoformat()}'")
        lake.overwrite_partition(
            state.sequences, settings, USER_BEHAVIOR, ds, drop_before=snapshot_cut(agg, ds)
        )
    finally:
        daily.unpersist()
        events.unpersist()
    counts = _state_rows(settings, ds)
    log.info("seed state %s: %s", ds, counts)
    return counts

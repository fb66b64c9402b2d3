"""Samples: the day's impressions joined with the state as of the end of the day before.

A sample of day ``ds`` sees only what was known at the end of ``ds - 1`` (``state_ds``):
the user's behaviour sequence, the user / item / user × category counters, and user and
item attributes as of ``ds - 1``. Keys without state get explicit cold-start values: an
empty sequence, zero counters, and the prior click rate.

``gold.pretrain_samples`` holds every subsystem (the super-domain);
``gold.downstream_samples`` the downstream subsystem only.

Negative down-sampling (``aggregate.negative_sample_rate`` = r < 1) keeps every click and
a deterministic fraction r of non-clicks (by a hash of the impression id) with weight 1/r,
so weighted click rates and a weighted log-loss stay calibrated.
"""

from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    BEHAVIOR,
    DIM_ITEMS,
    DIM_USERS,
    ENTITIES,
    IMPRESSIONS,
    STAT_PREFIX,
    USER_BEHAVIOR,
    sample_specs,
    stats_spec,
    window_columns,
)
from keep.lake import delta
from keep.lake import spark_io as lake
from spark_jobs.aggregate import partitions, state_days

log = logging.getLogger(__name__)


def _prefixed(stats: DataFrame, entity: str, windows: list[int]) -> DataFrame:
    keys = ENTITIES[entity]
    prefix = STAT_PREFIX[entity]
    return stats.select(*keys, *[F.col(c).alias(prefix + c) for c in window_columns(windows)])


def build_samples(
    impressions: DataFrame,
    users: DataFrame,
    items: DataFrame,
    sequences: DataFrame,
    stats: dict[str, DataFrame],
    *,
    windows: list[int],
    prior_ctr: float,
    negative_sample_rate: float,
    state_ds: dt.date,
) -> DataFrame:
    """Join one day's impressions with state as of ``state_ds`` (all inputs already as of it)."""
    if not 0 < negative_sample_rate <= 1:
        raise ValueError(f"negative_sample_rate must be in (0, 1], got {negative_sample_rate}")
    rows = impressions
    if negative_sample_rate < 1:
        bucket = F.pmod(F.xxhash64("impression_id"), F.lit(1_000_000)) / 1_000_000.0
        rows = rows.where((F.col("click") == 1) | (bucket < negative_sample_rate))
    weight = F.when(F.col("click") == 1, 1.0).otherwise(1.0 / negative_sample_rate)
    rows = (
        rows.withColumn("weight", weight)
        .join(items.select("item_id", "category_id", "brand_id", "price"), "item_id", "left")
        .join(users.select("user_id", "gender", "age_level", "purchase_power"), "user_id", "left")
        .join(sequences.select("user_id", "behaviors", "seq_len"), "user_id", "left")
    )
    for entity, frame in stats.items():
        rows = rows.join(_prefixed(frame, entity, windows), list(ENTITIES[entity]), "left")
    fills: dict[str, object] = {}
    for prefix in STAT_PREFIX.values():
        for col in window_columns(windows):
            fills[prefix + col] = prior_ctr if col.startswith("ctr_") else 0
    empty = F.array().cast(lake.ddl(pa.list_(BEHAVIOR)))
    return (
        rows.na.fill(fills)  # type: ignore[arg-type]
        .withColumn("behaviors", F.coalesce(F.col("behaviors"), empty))
        .withColumn("seq_len", F.coalesce(F.col("seq_len"), F.lit(0)))
        .withColumn("state_ds", F.lit(state_ds.isoformat()))
    )


def check_inputs(settings: Settings, ds: dt.date) -> None:
    """Refuse a day without bronze, or whose previous day has no state (from the Delta logs,
    no Spark job)."""
    state_ds = ds - dt.timedelta(days=1)
    bronze_days = partitions(settings, IMPRESSIONS)
    if ds not in bronze_days:
        raise InputError(
            f"bronze.impressions has no partition {ds}: run `keep ingest --ds {ds}` first."
        )
    if any(d < ds for d in bronze_days) and state_ds not in state_days(settings):
        raise InputError(
            f"Cannot build samples of {ds}: the state of {state_ds} is missing. "
            f"Run `keep aggregate --ds {state_ds}` (or `keep backfill`) first."
        )


def run_samples(spark: SparkSession, settings: Settings, ds: dt.date) -> dict[str, int]:
    """Write day ``ds`` of gold.pretrain_samples and gold.downstream_samples."""
    check_inputs(settings, ds)
    agg = settings.aggregate
    state_ds = ds - dt.timedelta(days=1)
    samples = build_samples(
        lake.read_partition(spark, settings, IMPRESSIONS, ds),
        lake.as_of(lake.read_table(spark, settings, DIM_USERS), "user_id", state_ds),
        lake.as_of(lake.read_table(spark, settings, DIM_ITEMS), "item_id", state_ds),
        lake.read_partition(spark, settings, USER_BEHAVIOR, state_ds),
        {
            e: lake.read_partition(spark, settings, stats_spec(e, agg.windows), state_ds)
            for e in ENTITIES
        },
        windows=agg.windows,
        prior_ctr=agg.prior_ctr,
        negative_sample_rate=agg.negative_sample_rate,
        state_ds=state_ds,
    ).cache()
    pretrain, downstream = sample_specs(settings.aggregate.windows)
    try:
        lake.overwrite_partition(samples, settings, pretrain, ds)
        lake.overwrite_partition(
            samples.where(F.col("scenario") == settings.downstream.scenario),
            settings,
            downstream,
            ds,
        )
    finally:
        samples.unpersist()
    counts = {
        spec.name: delta.partition_rows(settings, spec, ds) for spec in (pretrain, downstream)
    }
    log.info("samples %s: %s", ds, counts)
    return counts

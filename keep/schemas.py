"""Every lake table's schema, key and partitioning, defined once.

A table name is ``<layer>.<table>``; on disk it lives at ``<lake root>/<layer>/<table>``.
Jobs write exactly these columns in this order (``conform`` enforces it), so the
Delta schema never drifts by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    """Name, schema, primary key and partition columns of one lake table."""

    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ("ds",)
    description: str = ""

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]

    def conform(self, df: DataFrame) -> DataFrame:
        """Select and cast ``df`` to exactly this table's columns, in order."""
        return df.select(
            *[F.col(f.name).cast(f.dataType).alias(f.name) for f in self.schema.fields]
        )


def _f(name: str, dtype: object, nullable: bool = True) -> StructField:
    return StructField(name, dtype, nullable)  # type: ignore[arg-type]


IMPRESSIONS = TableSpec(
    name="bronze.impressions",
    description="One row per impression of any subsystem, deduplicated by impression_id.",
    key=("impression_id",),
    schema=StructType(
        [
            _f("impression_id", StringType(), False),
            _f("user_id", LongType(), False),
            _f("item_id", LongType(), False),
            _f("event_time", TimestampType(), False),
            _f("scenario", StringType(), False),
            _f("position", IntegerType(), False),
            _f("click", IntegerType(), False),
            _f("cart", IntegerType(), False),
            _f("purchase", IntegerType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

QUARANTINE = TableSpec(
    name="bronze.quarantine",
    description="Raw rows rejected by ingest, with the reason(s) and the raw content.",
    key=("ds", "source", "source_file", "raw"),
    schema=StructType(
        [
            _f("source", StringType(), False),
            _f("reason", StringType(), False),
            _f("reasons", ArrayType(StringType(), True), False),
            _f("raw", StringType(), True),
            _f("source_file", StringType(), True),
            _f("ds", StringType(), False),
        ]
    ),
)

INGEST_AUDIT = TableSpec(
    name="bronze.ingest_audit",
    description="Per day and source: rows in = stored + quarantined + duplicates.",
    key=("ds", "source"),
    schema=StructType(
        [
            _f("source", StringType(), False),
            _f("rows_in", LongType(), False),
            _f("rows_stored", LongType(), False),
            _f("rows_quarantined", LongType(), False),
            _f("duplicates_within_day", LongType(), False),
            _f("duplicates_earlier_days", LongType(), False),
            _f("conflicting_duplicates", LongType(), False),
            _f("quarantine_rate", DoubleType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

DIM_USERS = TableSpec(
    name="dim.users",
    description=(
        "User attributes as received on day ds (new or changed users). "
        "The attributes as of day d are each user's row with the greatest ds <= d."
    ),
    key=("user_id", "ds"),
    schema=StructType(
        [
            _f("user_id", LongType(), False),
            _f("gender", StringType(), True),
            _f("age_level", IntegerType(), True),
            _f("purchase_power", IntegerType(), True),
            _f("ds", StringType(), False),
        ]
    ),
)

DIM_ITEMS = TableSpec(
    name="dim.items",
    description=(
        "Item attributes as received on day ds (new or changed items). "
        "The attributes as of day d are each item's row with the greatest ds <= d."
    ),
    key=("item_id", "ds"),
    schema=StructType(
        [
            _f("item_id", LongType(), False),
            _f("category_id", LongType(), False),
            _f("brand_id", LongType(), True),
            _f("price", DoubleType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

# --------------------------------------------------------------------------- silver

BEHAVIOR = StructType(
    [
        # event_time first: sorting an array of behaviours sorts it by time.
        _f("event_time", TimestampType(), True),
        _f("item_id", LongType(), True),
        _f("category_id", LongType(), True),
        _f("brand_id", LongType(), True),
        _f("scenario", StringType(), True),
        _f("behavior_type", StringType(), True),
    ]
)

USER_BEHAVIOR = TableSpec(
    name="silver.user_behavior",
    description=(
        "Per user, the last N behaviours (click / cart / purchase) across all subsystems, "
        "oldest first, as of the end of ds (one full snapshot per day)."
    ),
    key=("user_id", "ds"),
    schema=StructType(
        [
            _f("user_id", LongType(), False),
            _f("behaviors", ArrayType(BEHAVIOR, True), False),
            _f("seq_len", IntegerType(), False),
            _f("event_timestamp", TimestampType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

COUNTERS: tuple[str, ...] = ("impressions", "clicks", "carts", "purchases")

# Entities with counters: name -> key columns.
ENTITIES: dict[str, tuple[str, ...]] = {
    "user": ("user_id",),
    "item": ("item_id",),
    "user_category": ("user_id", "category_id"),
}


def daily_counts_spec(entity: str) -> TableSpec:
    """silver.<entity>_daily_counts: one day's counters per key (the windows' building block)."""
    keys = ENTITIES[entity]
    return TableSpec(
        name=f"silver.{entity}_daily_counts",
        description=f"Impressions, clicks, carts, purchases per {entity} on day ds.",
        key=(*keys, "ds"),
        schema=StructType(
            [_f(k, LongType(), False) for k in keys]
            + [_f(c, LongType(), False) for c in COUNTERS]
            + [_f("ds", StringType(), False)]
        ),
    )


def window_columns(windows: list[int]) -> list[str]:
    """Counter and smoothed-rate columns of a stats table, e.g. clicks_7d, ctr_7d."""
    return [f"{c}_{w}d" for w in windows for c in (*COUNTERS, "ctr")]


def stats_spec(entity: str, windows: list[int]) -> TableSpec:
    """silver.<entity>_stats: multi-window counters as of the end of ds."""
    keys = ENTITIES[entity]
    fields = [_f(k, LongType(), False) for k in keys]
    for w in windows:
        fields += [_f(f"{c}_{w}d", LongType(), False) for c in COUNTERS]
        fields.append(_f(f"ctr_{w}d", DoubleType(), False))
    fields += [_f("event_timestamp", TimestampType(), False), _f("ds", StringType(), False)]
    return TableSpec(
        name=f"silver.{entity}_stats",
        description=(
            f"Per {entity}: counters over windows {windows} days ending with ds, and smoothed "
            "click rates; event_timestamp = end of ds (for Feast's point-in-time join)."
        ),
        key=(*keys, "ds"),
        schema=StructType(fields),
    )


# --------------------------------------------------------------------------- gold

STAT_PREFIX: dict[str, str] = {"user": "u_", "item": "i_", "user_category": "uc_"}


def samples_spec(name: str, windows: list[int]) -> TableSpec:
    """gold.pretrain_samples / gold.downstream_samples: impressions of ds with state of ds-1."""
    fields = [
        _f("impression_id", StringType(), False),
        _f("user_id", LongType(), False),
        _f("item_id", LongType(), False),
        _f("event_time", TimestampType(), False),
        _f("scenario", StringType(), False),
        _f("position", IntegerType(), False),
        _f("click", IntegerType(), False),
        _f("cart", IntegerType(), False),
        _f("purchase", IntegerType(), False),
        _f("weight", DoubleType(), False),
        _f("gender", StringType(), True),
        _f("age_level", IntegerType(), True),
        _f("purchase_power", IntegerType(), True),
        _f("category_id", LongType(), True),
        _f("brand_id", LongType(), True),
        _f("price", DoubleType(), True),
        _f("behaviors", ArrayType(BEHAVIOR, True), False),
        _f("seq_len", IntegerType(), False),
    ]
    for prefix in STAT_PREFIX.values():
        for col in window_columns(windows):
            dtype = DoubleType() if col.startswith("ctr_") else LongType()
            fields.append(_f(prefix + col, dtype, False))
    fields += [_f("state_ds", StringType(), False), _f("ds", StringType(), False)]
    return TableSpec(
        name=name,
        description=(
            "One row per impression of ds, joined with behaviour sequence, counters and "
            "attributes as of the end of ds-1 (state_ds); weight undoes negative down-sampling."
        ),
        key=("impression_id",),
        schema=StructType(fields),
    )


# --------------------------------------------------------------------------- knowledge

KNOWLEDGE_ENTITIES: tuple[str, ...] = ("user", "item", "user_category")


def knowledge_spec(entity: str) -> TableSpec:
    """knowledge.<entity>: one knowledge vector per key and snapshot.

    ``knowledge_lineage`` changes only when the vectors' meaning changes (training from
    scratch, new dimension / buckets / architecture); ``snapshot_ds`` is the day of the
    checkpoint that produced the snapshot, whose ``event_timestamp`` is the end of that day.
    Every snapshot covers every known key: ``recomputed`` says whether the vector was
    computed from this day's state or carried forward from the previous snapshot.
    Written by delta-rs (no JVM), read by Feast, the gate and the downstream models.
    """
    keys = ENTITIES[entity]
    return TableSpec(
        name=f"knowledge.{entity}",
        description=f"Knowledge vector per {entity} key, lineage and snapshot day.",
        key=(*keys, "knowledge_lineage", "snapshot_ds"),
        partition_by=("knowledge_lineage", "snapshot_ds"),
        schema=StructType(
            [_f(k, LongType(), False) for k in keys]
            + [
                _f("vector", ArrayType(FloatType(), False), False),
                _f("recomputed", BooleanType(), False),
                _f("event_timestamp", TimestampType(), False),
                _f("knowledge_lineage", StringType(), False),
                _f("snapshot_ds", StringType(), False),
            ]
        ),
    )


def to_arrow_schema(spec: TableSpec) -> pa.Schema:
    """The table's schema as pyarrow types, for readers and writers without a JVM.

    Timestamps are microseconds in UTC (Spark cannot read nanosecond parquet timestamps).
    """
    return pa.schema(
        [pa.field(f.name, _to_arrow(f.dataType), f.nullable) for f in spec.schema.fields]
    )


def _to_arrow(dtype: DataType) -> pa.DataType:
    simple: dict[type, pa.DataType] = {
        StringType: pa.string(),
        LongType: pa.int64(),
        IntegerType: pa.int32(),
        DoubleType: pa.float64(),
        FloatType: pa.float32(),
        BooleanType: pa.bool_(),
        TimestampType: pa.timestamp("us", tz="UTC"),
    }
    if type(dtype) in simple:
        return simple[type(dtype)]
    if isinstance(dtype, ArrayType):
        return pa.list_(pa.field("element", _to_arrow(dtype.elementType), dtype.containsNull))
    if isinstance(dtype, StructType):
        return pa.struct(
            [pa.field(f.name, _to_arrow(f.dataType), f.nullable) for f in dtype.fields]
        )
    raise TypeError(f"no arrow mapping for {dtype}")


ALL_TABLES: tuple[TableSpec, ...] = (IMPRESSIONS, QUARANTINE, INGEST_AUDIT, DIM_USERS, DIM_ITEMS)


# --------------------------------------------------------------------------- training sets

TRAINING_SET = "gold.downstream_training_set"


def training_set_spec(windows: list[int]) -> TableSpec:
    """gold.downstream_training_set: downstream samples with Feast's point-in-time features.

    The samples' columns, with the counters (u_*, i_*, uc_*) as served by Feast, plus one
    knowledge vector per entity of ONE lineage, explicit cold-start flags (a missing vector
    is all zeros, missing counters are 0 with the prior click rate), and the lineage.
    Written by keep.training_sets (delta-rs); see docs/training_sets.md.
    """
    base = samples_spec("gold.downstream_samples", windows)
    fields = [f for f in base.schema.fields if f.name != "ds"]
    fields += [_f(f"{e}_vector", ArrayType(FloatType(), False), False) for e in KNOWLEDGE_ENTITIES]
    fields += [_f(f"{e}_knowledge_missing", BooleanType(), False) for e in KNOWLEDGE_ENTITIES]
    fields += [_f(f"{e}_stats_missing", BooleanType(), False) for e in ENTITIES]
    fields += [_f("knowledge_lineage", StringType(), False), _f("ds", StringType(), False)]
    return TableSpec(
        name=TRAINING_SET,
        description=(
            "One row per downstream sample of ds with knowledge of one lineage and counters "
            "as of the end of ds-1, read through Feast's feature service."
        ),
        key=("impression_id", "knowledge_lineage"),
        partition_by=("knowledge_lineage", "ds"),
        schema=StructType(fields),
    )

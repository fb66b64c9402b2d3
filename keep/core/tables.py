"""Every lake table's name, schema, key and partitioning, defined once.

A table name is ``<layer>.<table>``; on disk it lives at ``<lake root>/<layer>/<table>``.
Schemas are pyarrow types: the JVM-free readers and writers (delta-rs, torch's reader,
Feast) use them as they are, and the Spark layer derives its ``StructType`` from them
(``keep.lake.spark_io.spark_schema``). Spark jobs write exactly these columns in this order
(``keep.lake.spark_io.conform``), so the Delta schema never drifts by accident.

This module imports only the standard library and pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from keep.core.errors import InputError


@dataclass(frozen=True)
class TableSpec:
    """Name, schema, primary key and partition columns of one lake table."""

    name: str
    schema: pa.Schema
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
        return list(self.schema.names)


def _f(name: str, dtype: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable)


def _list(element: pa.DataType, contains_null: bool = True) -> pa.DataType:
    """An array column; elements named ``element`` as Spark and delta-rs write them."""
    return pa.list_(pa.field("element", element, contains_null))


# Timestamps are microseconds in UTC: Spark cannot read nanosecond parquet timestamps, and
# every lake timestamp is UTC (DESIGN.md, Contracts: Time).
TIMESTAMP = pa.timestamp("us", tz="UTC")


# --------------------------------------------------------------------------- raw

# The raw landing format's fields per source (docs/raw-format.md): every field arrives as
# text and is typed by ingest. ``keep.lake.raw_format`` reads them; the ingest gate expects
# every impression field to be set on a stored row.
RAW_FIELDS: dict[str, tuple[str, ...]] = {
    "impressions": (
        "impression_id",
        "user_id",
        "item_id",
        "event_time",
        "scenario",
        "position",
        "click",
        "cart",
        "purchase",
    ),
    "users": ("user_id", "gender", "age_level", "purchase_power"),
    "items": ("item_id", "category_id", "brand_id", "price"),
}
LABELS: tuple[str, ...] = ("click", "cart", "purchase")

# --------------------------------------------------------------------------- bronze

IMPRESSIONS = TableSpec(
    name="bronze.impressions",
    description="One row per impression of any subsystem, deduplicated by impression_id.",
    key=("impression_id",),
    schema=pa.schema(
        [
            _f("impression_id", pa.string(), False),
            _f("user_id", pa.int64(), False),
            _f("item_id", pa.int64(), False),
            _f("event_time", TIMESTAMP, False),
            _f("scenario", pa.string(), False),
            _f("position", pa.int32(), False),
            _f("click", pa.int32(), False),
            _f("cart", pa.int32(), False),
            _f("purchase", pa.int32(), False),
            _f("ds", pa.string(), False),
        ]
    ),
)

QUARANTINE = TableSpec(
    name="bronze.quarantine",
    description="Raw rows rejected by ingest, with the reason(s) and the raw content.",
    key=("ds", "source", "source_file", "raw"),
    schema=pa.schema(
        [
            _f("source", pa.string(), False),
            _f("reason", pa.string(), False),
            _f("reasons", _list(pa.string(), True), False),
            _f("raw", pa.string(), True),
            _f("source_file", pa.string(), True),
            _f("ds", pa.string(), False),
        ]
    ),
)

INGEST_AUDIT = TableSpec(
    name="bronze.ingest_audit",
    description="Per day and source: rows in = stored + quarantined + duplicates.",
    key=("ds", "source"),
    schema=pa.schema(
        [
            _f("source", pa.string(), False),
            _f("rows_in", pa.int64(), False),
            _f("rows_stored", pa.int64(), False),
            _f("rows_quarantined", pa.int64(), False),
            _f("duplicates_within_day", pa.int64(), False),
            _f("duplicates_earlier_days", pa.int64(), False),
            _f("conflicting_duplicates", pa.int64(), False),
            _f("quarantine_rate", pa.float64(), False),
            _f("ds", pa.string(), False),
        ]
    ),
)


@dataclass(frozen=True)
class SourceCounts:
    """Counts of one source on one day: a row of :data:`INGEST_AUDIT` (what ingest returns)."""

    source: str
    rows_in: int
    rows_stored: int
    rows_quarantined: int
    duplicates_within_day: int
    duplicates_earlier_days: int
    conflicting_duplicates: int
    quarantine_rate: float

    @property
    def duplicates(self) -> int:
        return self.duplicates_within_day + self.duplicates_earlier_days


DIM_USERS = TableSpec(
    name="dim.users",
    description=(
        "User attributes as received on day ds (new or changed users). "
        "The attributes as of day d are each user's row with the greatest ds <= d."
    ),
    key=("user_id", "ds"),
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("gender", pa.string(), True),
            _f("age_level", pa.int32(), True),
            _f("purchase_power", pa.int32(), True),
            _f("ds", pa.string(), False),
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
    schema=pa.schema(
        [
            _f("item_id", pa.int64(), False),
            _f("category_id", pa.int64(), False),
            _f("brand_id", pa.int64(), True),
            _f("price", pa.float64(), False),
            _f("ds", pa.string(), False),
        ]
    ),
)

# --------------------------------------------------------------------------- silver

BEHAVIOR = pa.struct(
    [
        # event_time first: sorting an array of behaviours sorts it by time.
        _f("event_time", TIMESTAMP, True),
        _f("item_id", pa.int64(), True),
        _f("category_id", pa.int64(), True),
        _f("brand_id", pa.int64(), True),
        _f("scenario", pa.string(), True),
        _f("behavior_type", pa.string(), True),
    ]
)

USER_BEHAVIOR = TableSpec(
    name="silver.user_behavior",
    description=(
        "Per user, the last N behaviours (click / cart / purchase) across all subsystems, "
        "oldest first, as of the end of ds (one full snapshot per day)."
    ),
    key=("user_id", "ds"),
    schema=pa.schema(
        [
            _f("user_id", pa.int64(), False),
            _f("behaviors", _list(BEHAVIOR, True), False),
            _f("seq_len", pa.int32(), False),
            _f("event_timestamp", TIMESTAMP, False),
            _f("ds", pa.string(), False),
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


# Every key column of some entity, in order: the columns of silver.daily_counts.
COUNT_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for keys in ENTITIES.values() for k in keys))

DAILY_COUNTS = TableSpec(
    name="silver.daily_counts",
    description=(
        "Impressions, clicks, carts, purchases per key of every entity on day ds: one row per "
        "entity (user, item, user_category) and key; the entity's key columns are set, the "
        "others null. The windows' building block; one write per day for all entities."
    ),
    key=("entity", *COUNT_KEYS, "ds"),
    partition_by=("ds", "entity"),
    schema=pa.schema(
        [_f("entity", pa.string(), False)]
        + [_f(k, pa.int64(), True) for k in COUNT_KEYS]
        + [_f(c, pa.int64(), False) for c in COUNTERS]
        + [_f("ds", pa.string(), False)]
    ),
)


def window_columns(windows: list[int]) -> list[str]:
    """Counter and smoothed-rate columns of a stats table, e.g. clicks_7d, ctr_7d."""
    return [f"{c}_{w}d" for w in windows for c in (*COUNTERS, "ctr")]


def stats_spec(entity: str, windows: list[int]) -> TableSpec:
    """silver.<entity>_stats: multi-window counters as of the end of ds."""
    keys = ENTITIES[entity]
    fields = [_f(k, pa.int64(), False) for k in keys]
    for w in windows:
        fields += [_f(f"{c}_{w}d", pa.int64(), False) for c in COUNTERS]
        fields.append(_f(f"ctr_{w}d", pa.float64(), False))
    fields += [_f("event_timestamp", TIMESTAMP, False), _f("ds", pa.string(), False)]
    return TableSpec(
        name=f"silver.{entity}_stats",
        description=(
            f"Per {entity}: counters over windows {windows} days ending with ds, and smoothed "
            "click rates; event_timestamp = end of ds (for Feast's point-in-time join)."
        ),
        key=(*keys, "ds"),
        schema=pa.schema(fields),
    )


# --------------------------------------------------------------------------- gold

STAT_PREFIX: dict[str, str] = {"user": "u_", "item": "i_", "user_category": "uc_"}

PRETRAIN_SAMPLES = "gold.pretrain_samples"
DOWNSTREAM_SAMPLES = "gold.downstream_samples"
TRAINING_SET = "gold.downstream_training_set"


def samples_spec(name: str, windows: list[int]) -> TableSpec:
    """:data:`PRETRAIN_SAMPLES` / :data:`DOWNSTREAM_SAMPLES`: impressions of ds with the state
    of ds-1."""
    fields = [
        _f("impression_id", pa.string(), False),
        _f("user_id", pa.int64(), False),
        _f("item_id", pa.int64(), False),
        _f("event_time", TIMESTAMP, False),
        _f("scenario", pa.string(), False),
        _f("position", pa.int32(), False),
        _f("click", pa.int32(), False),
        _f("cart", pa.int32(), False),
        _f("purchase", pa.int32(), False),
        _f("weight", pa.float64(), False),
        _f("gender", pa.string(), True),
        _f("age_level", pa.int32(), True),
        _f("purchase_power", pa.int32(), True),
        _f("category_id", pa.int64(), True),
        _f("brand_id", pa.int64(), True),
        _f("price", pa.float64(), True),
        _f("behaviors", _list(BEHAVIOR, True), False),
        _f("seq_len", pa.int32(), False),
    ]
    for prefix in STAT_PREFIX.values():
        for col in window_columns(windows):
            dtype = pa.float64() if col.startswith("ctr_") else pa.int64()
            fields.append(_f(prefix + col, dtype, False))
    fields += [_f("state_ds", pa.string(), False), _f("ds", pa.string(), False)]
    return TableSpec(
        name=name,
        description=(
            "One row per impression of ds, joined with behaviour sequence, counters and "
            "attributes as of the end of ds-1 (state_ds); weight undoes negative down-sampling."
        ),
        key=("impression_id",),
        schema=pa.schema(fields),
    )


def sample_specs(windows: list[int]) -> tuple[TableSpec, TableSpec]:
    """The pre-training (super-domain) and downstream samples tables."""
    return samples_spec(PRETRAIN_SAMPLES, windows), samples_spec(DOWNSTREAM_SAMPLES, windows)


# --------------------------------------------------------------------------- knowledge

KNOWLEDGE_ENTITIES: tuple[str, ...] = ("user", "item", "user_category")
# The two parts of a knowledge version (DESIGN.md, Contracts): columns and partitions.
LINEAGE = "knowledge_lineage"
SNAPSHOT = "snapshot_ds"


def check_entity(entity: str) -> None:
    if entity not in KNOWLEDGE_ENTITIES:
        raise InputError(
            f"unknown knowledge entity {entity!r}: use one of {', '.join(KNOWLEDGE_ENTITIES)}"
        )


def check_lineage(lineage: str) -> None:
    """Lineages name partitions and manifest folders: keep them to safe characters."""
    if not lineage or not all(c.isalnum() or c in "-_." for c in lineage):
        raise InputError(
            f"invalid knowledge lineage {lineage!r}: use letters, digits, '-', '_' or '.'"
        )


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
        schema=pa.schema(
            [_f(k, pa.int64(), False) for k in keys]
            + [
                _f("vector", _list(pa.float32(), False), False),
                _f("recomputed", pa.bool_(), False),
                _f("event_timestamp", TIMESTAMP, False),
                _f("knowledge_lineage", pa.string(), False),
                _f("snapshot_ds", pa.string(), False),
            ]
        ),
    )


# --------------------------------------------------------------------------- training sets


def training_set_spec(windows: list[int]) -> TableSpec:
    """gold.downstream_training_set: downstream samples with Feast's point-in-time features.

    The samples' columns, with the counters (u_*, i_*, uc_*) as served by Feast, plus one
    knowledge vector per entity of ONE lineage, explicit cold-start flags (a missing vector
    is all zeros, missing counters are 0 with the prior click rate), and the lineage.
    Written by keep.store.training_sets (delta-rs); see docs/training_sets.md.
    """
    base = samples_spec(DOWNSTREAM_SAMPLES, windows)
    fields = [f for f in base.schema if f.name != "ds"]
    fields += [_f(f"{e}_vector", _list(pa.float32(), False), False) for e in KNOWLEDGE_ENTITIES]
    fields += [_f(f"{e}_knowledge_missing", pa.bool_(), False) for e in KNOWLEDGE_ENTITIES]
    fields += [_f(f"{e}_stats_missing", pa.bool_(), False) for e in ENTITIES]
    fields += [_f("knowledge_lineage", pa.string(), False), _f("ds", pa.string(), False)]
    return TableSpec(
        name=TRAINING_SET,
        description=(
            "One row per downstream sample of ds with knowledge of one lineage and counters "
            "as of the end of ds-1, read through Feast's feature service."
        ),
        key=("impression_id", "knowledge_lineage"),
        partition_by=("knowledge_lineage", "ds"),
        schema=pa.schema(fields),
    )


# --------------------------------------------------------------------------- serving features

SERVING_ENTITIES: tuple[str, ...] = ("user", "item")


def serving_features_spec(entity: str) -> TableSpec:
    """gold.downstream_<entity>_serving: what the live downstream model reads online, besides
    knowledge, per user (profile, in-scenario behaviours, du_* counters) or per item
    (category, brand, price, di_* counters), packed in one binary value per key
    (models/downstream/serving_features.py). One partition per (subsystem, ds): the state
    at the end of ds, for scoring on ds + 1. Written by the downstream DAG's register task;
    the source of the Feast view ``downstream_<entity>_fv``."""
    if entity not in SERVING_ENTITIES:
        raise ValueError(f"no serving features for {entity!r}; entities: {SERVING_ENTITIES}")
    keys = ENTITIES[entity]
    return TableSpec(
        name=f"gold.downstream_{entity}_serving",
        description=(
            f"Per {entity}: the downstream model's own online features as of the end of ds, "
            "packed (one value per key), for the scoring service."
        ),
        key=(*keys, "subsystem", "ds"),
        partition_by=("subsystem", "ds"),
        schema=pa.schema(
            [
                *(_f(k, pa.int64(), False) for k in keys),
                _f("features", pa.binary(), False),
                _f("event_timestamp", TIMESTAMP, False),
                _f("subsystem", pa.string(), False),
                _f("ds", pa.string(), False),
            ]
        ),
    )


# --------------------------------------------------------------------------- model registry

MODEL_REGISTRY = TableSpec(
    name="registry.downstream_models",
    description=(
        "One row per registered version of a downstream subsystem's model: the knowledge "
        "lineage and snapshot it was trained with, its training days, metrics, model-gate "
        "report and card. Written by keep.store.model_registry (delta-rs, append only); the "
        "live version is a pointer file beside the checkpoints, not a column."
    ),
    key=("subsystem", "version"),
    partition_by=(),
    schema=pa.schema(
        [
            _f("subsystem", pa.string(), False),
            _f("version", pa.int64(), False),
            _f("arm", pa.string(), False),
            _f("knowledge_lineage", pa.string(), False),
            _f("snapshot_ds", pa.string(), False),
            _f("train_days", _list(pa.string(), False), False),
            _f("metrics_json", pa.string(), False),
            _f("gate_json", pa.string(), False),
            _f("checkpoint", pa.string(), False),
            _f("card", pa.string(), False),
            _f("registered_at", TIMESTAMP, False),
        ]
    ),
)

"""Knowledge export: day ``ds``'s checkpoint applied to the state as of the end of ``ds``.

``export_knowledge(settings, ds, lineage=None)`` writes one snapshot ``(lineage, ds)`` of
``knowledge.user``, ``knowledge.item`` and ``knowledge.user_category`` (delta-rs, no JVM)
and its manifest ``<manifest_root>/<lineage>/<ds>.json``. See docs/knowledge.md.

**Keys.** A snapshot covers every *known* key: users with a behaviour sequence, attributes
(``dim.users`` as of ``ds``), counters, or a vector in the previous snapshot of the lineage;
items with attributes, counters or a previous vector; user x category pairs with counters or
a previous vector. A key is *recomputed* (model towers on its state as of the end of ``ds``)
when it had an impression within the last ``active_window_days`` days ending with ``ds``
(``silver.daily_counts``) or has no vector in the previous snapshot (a brand-new
lineage recomputes every key); otherwise its previous vector is *carried forward*.
"Previous snapshot" = the latest snapshot of the same lineage before ``ds``.

**Inputs** are built exactly like the training samples' (spark_jobs/samples.py): the
behaviour sequence, attributes as of ``ds`` (each key's change row with the greatest
``ds``), counters renamed ``u_*`` / ``i_*`` / ``uc_*``, cold-start fills (empty sequence,
zero counts, ``ctr = prior_ctr``, unknown attributes null), then ``models.pretrain.features``.

**Bounded memory.** The day's inputs are streamed once from Delta and split into ``B`` key
buckets (a hash of ``user_id`` for users and user x category, of ``item_id`` for items) on
local disk (Arrow IPC files under ``spill_root``), with ``B`` chosen from the Delta log's
row counts so a bucket holds about ``export_batch_rows`` keys. Each bucket is then joined,
scored in model batches of at most ``export_batch_rows`` rows and streamed into one Delta
write per table: peak memory depends on the batch size, not on the number of keys.

**Idempotent.** Each table's snapshot is replaced in one Delta transaction (overwrite with a
predicate on its ``(knowledge_lineage, snapshot_ds)`` partition); the manifest is written
atomically last, so a manifest means a complete snapshot.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    DAILY_COUNTS,
    DIM_ITEMS,
    DIM_USERS,
    ENTITIES,
    KNOWLEDGE_ENTITIES,
    LINEAGE,
    SNAPSHOT,
    STAT_PREFIX,
    USER_BEHAVIOR,
    TableSpec,
    check_lineage,
    knowledge_spec,
    stats_spec,
    window_columns,
)
from keep.core.time import end_of_day
from keep.lake import delta
from keep.lake import knowledge as kn
from models.pretrain import features
from models.pretrain.checkpoint import LoadedCheckpoint, lineage_dir, load_checkpoint, metrics_path
from models.pretrain.multitask import MultiTaskModel

log = logging.getLogger(__name__)

USER_ATTRIBUTES = ("gender", "age_level", "purchase_power")
ITEM_ATTRIBUTES = ("category_id", "brand_id", "price")
# Which side (bucketing key) each entity is exported from.
SIDE = {"user": "user_id", "user_category": "user_id", "item": "item_id"}


@dataclass
class ExportResult:
    """What one export wrote (per entity: rows, recomputed and carried-forward keys)."""

    lineage: str
    ds: dt.date
    checkpoint: Path
    rows: dict[str, int]
    recomputed: dict[str, int]
    carried_forward: dict[str, int]
    previous_snapshot: dict[str, str | None]
    manifest_path: Path
    seconds: float
    buckets: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    """One input of the export: a Delta table's columns and rows for the snapshot day."""

    name: str
    spec: TableSpec
    columns: tuple[str, ...]
    filter: pc.Expression
    required: bool = False


def _window_filter(ds: dt.date, days: int) -> pc.Expression:
    first = ds - dt.timedelta(days=max(days, 1) - 1)
    return (
        (pc.field("ds") >= first.isoformat())
        & (pc.field("ds") <= ds.isoformat())
        & (pc.field("impressions") > 0)
    )


def _sources(settings: Settings, ds: dt.date, lineage: str) -> dict[str, list[Source]]:
    """The inputs of each side (``user_id`` side: users and user x category; ``item_id``)."""
    windows = settings.aggregate.windows
    day = pc.field("ds") == ds.isoformat()
    as_of = pc.field("ds") <= ds.isoformat()
    active = _window_filter(ds, settings.knowledge.active_window_days)
    stat_cols = tuple(window_columns(windows))

    def stats(entity: str) -> Source:
        return Source(
            f"{entity}_stats",
            stats_spec(entity, windows),
            (*ENTITIES[entity], *stat_cols),
            day,
            required=True,
        )

    def activity(entity: str) -> Source:
        of_entity = active & (pc.field("entity") == entity)
        return Source(f"{entity}_active", DAILY_COUNTS, ENTITIES[entity], of_entity)

    def previous(entity: str) -> Source | None:
        prev = kn.previous_snapshot(settings, entity, lineage, ds)
        if prev is None:
            return None
        return Source(
            f"{entity}_previous",
            knowledge_spec(entity),
            (*ENTITIES[entity], "vector"),
            kn.snapshot_filter(lineage, prev),
        )

    user_side = [
        Source("behavior", USER_BEHAVIOR, ("user_id", "behaviors", "seq_len"), day, required=True),
        Source("users", DIM_USERS, ("user_id", *USER_ATTRIBUTES, "ds"), as_of),
        stats("user"),
        activity("user"),
        stats("user_category"),
        activity("user_category"),
    ]
    item_side = [
        Source("items", DIM_ITEMS, ("item_id", *ITEM_ATTRIBUTES, "ds"), as_of),
        stats("item"),
        activity("item"),
    ]
    for entity, side in (("user", user_side), ("user_category", user_side), ("item", item_side)):
        prev = previous(entity)
        if prev is not None:
            side.append(prev)
    return {"user_id": user_side, "item_id": item_side}


def _dataset(settings: Settings, spec: TableSpec) -> pads.Dataset | None:
    from deltalake import DeltaTable

    if not delta.table_exists(settings, spec):
        return None
    return DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_dataset()


def _count(settings: Settings, source: Source, ds: dt.date) -> int:
    """Rows of the source (from parquet metadata where the filter is on partitions only)."""
    dataset = _dataset(settings, source.spec)
    n = 0 if dataset is None else int(dataset.count_rows(filter=source.filter))
    if source.required and n == 0:
        raise InputError(
            f"{source.spec.name} has no rows for {ds.isoformat()}: run the aggregation of that "
            f"day first (`keep aggregate --ds {ds.isoformat()}` or `keep backfill`)."
        )
    return n


def _spill(
    settings: Settings, source: Source, key: str, buckets: int, folder: Path, batch_rows: int
) -> None:
    """Stream ``source`` from Delta into ``folder/<bucket>/*.arrow`` (bucket = hash(key) % B)."""
    dataset = _dataset(settings, source.spec)
    if dataset is None:
        return
    # Read ahead one batch of one file at a time: the default read-ahead (several files of
    # many batches) would hold hundreds of MB of decoded behaviour sequences.
    scanner = dataset.scanner(
        columns=list(source.columns),
        filter=source.filter,
        batch_size=batch_rows,
        batch_readahead=1,
        fragment_readahead=1,
    )
    schema = scanner.projected_schema.append(pa.field("bucket", pa.int32()))

    def with_bucket() -> Iterator[pa.RecordBatch]:
        for batch in scanner.to_batches():
            if batch.num_rows == 0:
                continue
            keys = batch.column(key).to_numpy(zero_copy_only=False)
            bucket = (kn.mix64(keys) % np.uint64(buckets)).astype(np.int32)
            yield pa.RecordBatch.from_arrays([*batch.columns, pa.array(bucket)], schema=schema)

    pads.write_dataset(
        pa.RecordBatchReader.from_batches(schema, with_bucket()),
        folder,
        format="arrow",
        partitioning=pads.partitioning(pa.schema([("bucket", pa.int32())])),
        existing_data_behavior="overwrite_or_ignore",
        max_rows_per_group=batch_rows,
        use_threads=False,
    )


def _read_bucket(folder: Path, bucket: int) -> pa.Table | None:
    path = folder / str(bucket)
    if not path.is_dir():
        return None
    return pads.dataset(path, format="arrow").to_table()


# --------------------------------------------------------------------------- joins


def _key_frame(table: pa.Table | None, keys: list[str]) -> pd.DataFrame:
    if table is None or table.num_rows == 0:
        return pd.DataFrame({k: pd.Series(dtype="int64") for k in keys})
    return table.select(keys).to_pandas()


def _indexer(table: pa.Table | None, known: pd.DataFrame, keys: list[str], what: str) -> np.ndarray:
    """Row of ``table`` holding each known key, -1 where it has none."""
    if table is None or table.num_rows == 0:
        return np.full(len(known), -1, dtype=np.int64)
    src = _key_frame(table, keys)
    if len(keys) == 1:
        index: pd.Index = pd.Index(src[keys[0]])
        target: pd.Index = pd.Index(known[keys[0]])
    else:
        index = pd.MultiIndex.from_frame(src[keys])
        target = pd.MultiIndex.from_frame(known[keys])
    if not index.is_unique:
        raise InputError(
            f"{what} holds a key more than once for the snapshot day: fix the table "
            "(re-run the step that writes it) and export again."
        )
    return np.asarray(index.get_indexer(target), dtype=np.int64)


def _take(table: pa.Table | None, idx: np.ndarray, column: str, dtype: pa.DataType) -> pa.Array:
    """``table[column]`` at rows ``idx`` (null where ``idx`` is -1 or there is no table)."""
    if table is None or table.num_rows == 0:
        return pa.nulls(len(idx), dtype)
    col = table.column(column).combine_chunks()
    return col.take(pa.array(idx, mask=idx < 0)).cast(dtype)


def _as_of(table: pa.Table | None, key: str) -> pa.Table | None:
    """Each key's change row with the greatest ``ds`` (attributes as of the snapshot day)."""
    if table is None or table.num_rows == 0:
        return None
    order = pc.sort_indices(table, sort_keys=[(key, "ascending"), ("ds", "descending")])
    table = table.take(order)
    keys = table.column(key).to_numpy(zero_copy_only=False)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def _union(frames: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({k: pd.Series(dtype="int64") for k in keys})
    out = pd.concat(frames, ignore_index=True).drop_duplicates().sort_values(keys)
    return out.reset_index(drop=True).astype("int64")


# --------------------------------------------------------------------------- feature tables


@dataclass
class _Context:
    settings: Settings
    ds: dt.date
    lineage: str
    model: MultiTaskModel
    spill: dict[str, Path]  # source name -> folder
    dim: int
    counts: dict[str, dict[str, int]]


def _counters(
    ctx: _Context, entity: str, stats: pa.Table | None, idx: np.ndarray
) -> dict[str, pa.Array]:
    """The entity's counters renamed with its prefix; cold-start: 0 counts, ctr = prior."""
    prior = ctx.settings.aggregate.prior_ctr
    out: dict[str, pa.Array] = {}
    for col in window_columns(ctx.settings.aggregate.windows):
        is_rate = col.startswith("ctr_")
        values = _take(stats, idx, col, pa.float64() if is_rate else pa.int64())
        out[STAT_PREFIX[entity] + col] = values.fill_null(prior if is_rate else 0)
    return out


def _sequence(beh: pa.Table | None, idx: np.ndarray) -> dict[str, pa.Array]:
    behaviors_type = USER_BEHAVIOR.schema.field("behaviors").type
    behaviors = _take(beh, idx, "behaviors", behaviors_type)
    if behaviors.null_count:
        behaviors = behaviors.fill_null(pa.scalar([], behaviors_type))
    return {
        "behaviors": behaviors,
        "seq_len": _take(beh, idx, "seq_len", pa.int32()).fill_null(0),
    }


def user_table(ctx: _Context, known: pd.DataFrame, inputs: dict[str, pa.Table | None]) -> pa.Table:
    """Gold-sample columns of the user side for the ``known`` users."""
    beh, users, stats = inputs["behavior"], inputs["users"], inputs["user_stats"]
    columns: dict[str, pa.Array] = {"user_id": pa.array(known["user_id"].to_numpy())}
    columns |= _sequence(beh, _indexer(beh, known, ["user_id"], USER_BEHAVIOR.name))
    users_idx = _indexer(users, known, ["user_id"], DIM_USERS.name)
    dim_types = DIM_USERS.schema
    for attr in USER_ATTRIBUTES:
        columns[attr] = _take(users, users_idx, attr, dim_types.field(attr).type)
    columns |= _counters(ctx, "user", stats, _indexer(stats, known, ["user_id"], "user stats"))
    return pa.table(columns)


def user_category_table(
    ctx: _Context, known: pd.DataFrame, inputs: dict[str, pa.Table | None]
) -> pa.Table:
    """Gold-sample columns of the user x category side for the ``known`` pairs."""
    beh, stats = inputs["behavior"], inputs["user_category_stats"]
    keys = list(ENTITIES["user_category"])
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(known["user_id"].to_numpy()),
        "category_id": pa.array(known["category_id"].to_numpy()),
    }
    columns |= _sequence(beh, _indexer(beh, known, ["user_id"], USER_BEHAVIOR.name))
    columns |= _counters(
        ctx, "user_category", stats, _indexer(stats, known, keys, "user x category stats")
    )
    return pa.table(columns)


def item_table(ctx: _Context, known: pd.DataFrame, inputs: dict[str, pa.Table | None]) -> pa.Table:
    """Gold-sample columns of the item side for the ``known`` items."""
    items, stats = inputs["items"], inputs["item_stats"]
    columns: dict[str, pa.Array] = {"item_id": pa.array(known["item_id"].to_numpy())}
    items_idx = _indexer(items, known, ["item_id"], DIM_ITEMS.name)
    dim_types = DIM_ITEMS.schema
    for attr in ITEM_ATTRIBUTES:
        columns[attr] = _take(items, items_idx, attr, dim_types.field(attr).type)
    columns |= _counters(ctx, "item", stats, _indexer(stats, known, ["item_id"], "item stats"))
    return pa.table(columns)


TABLES: dict[str, Callable[[_Context, pd.DataFrame, dict[str, pa.Table | None]], pa.Table]] = {
    "user": user_table,
    "item": item_table,
    "user_category": user_category_table,
}


def knowledge_of(
    model: MultiTaskModel, entity: str, table: pa.Table, batch_rows: int = 4_096
) -> np.ndarray:
    """The model's knowledge ``[N, K]`` for a gold-sample-column table of one entity,
    ``batch_rows`` rows per forward pass."""
    max_len = model.config.max_seq_len
    parts = []
    with torch.inference_mode():
        for start in range(0, table.num_rows, max(batch_rows, 1)):
            chunk = table.slice(start, batch_rows)
            if entity == "user":
                out = model.user_knowledge(features.user_batch(chunk, max_len))
            elif entity == "item":
                out = model.item_knowledge(features.item_batch(chunk))
            else:
                out = model.user_category_knowledge(features.user_category_batch(chunk, max_len))
            parts.append(out.detach().cpu().numpy().astype(np.float32, copy=False))
    if not parts:
        return np.zeros((0, model.config.knowledge_dim), np.float32)
    return np.concatenate(parts)


# --------------------------------------------------------------------------- snapshot rows


# Inputs whose keys make a key "known", per entity (the previous snapshot is added).
KNOWN_FROM = {
    "user": ("behavior", "users", "user_stats", "user_active"),
    "item": ("items", "item_stats", "item_active"),
    "user_category": ("user_category_stats", "user_category_active"),
}
INPUTS = {
    "user": ("behavior", "users", "user_stats"),
    "item": ("items", "item_stats"),
    "user_category": ("behavior", "user_category_stats"),
}


def _vector_array(matrix: np.ndarray, vector_type: pa.DataType) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(vector_type)


def _bucket_rows(ctx: _Context, entity: str, bucket: int) -> Iterator[pa.RecordBatch]:
    """The snapshot's rows of one key bucket, in batches of at most ``export_batch_rows``."""
    keys = list(ENTITIES[entity])
    loaded: dict[str, pa.Table | None] = {}
    for name in {*KNOWN_FROM[entity], *INPUTS[entity], f"{entity}_previous"}:
        loaded[name] = _read_bucket(ctx.spill[name], bucket) if name in ctx.spill else None
    for dim_name, key in (("users", "user_id"), ("items", "item_id")):
        if dim_name in loaded:
            loaded[dim_name] = _as_of(loaded[dim_name], key)
    previous = loaded[f"{entity}_previous"]
    known = _union(
        [_key_frame(loaded[n], keys) for n in (*KNOWN_FROM[entity], f"{entity}_previous")], keys
    )
    if known.empty:
        return
    active_idx = _indexer(
        _distinct(loaded[f"{entity}_active"], keys), known, keys, f"{entity} daily counts"
    )
    prev_idx = _indexer(previous, known, keys, knowledge_spec(entity).name)
    recompute = (active_idx >= 0) | (prev_idx < 0)

    schema = knowledge_spec(entity).schema
    vector_type = schema.field("vector").type
    batch_rows = ctx.settings.knowledge.export_batch_rows
    stamp = end_of_day(ctx.ds)
    for start in range(0, len(known), batch_rows):
        part = known.iloc[start : start + batch_rows].reset_index(drop=True)
        fresh = recompute[start : start + batch_rows]
        vectors = np.empty((len(part), ctx.dim), dtype=np.float32)
        if fresh.any():
            table = TABLES[entity](ctx, part[fresh].reset_index(drop=True), loaded)
            vectors[fresh] = knowledge_of(
                ctx.model, entity, table, ctx.settings.knowledge.inference_batch_rows
            )
        if (~fresh).any():
            assert previous is not None  # keys without a previous vector are recomputed
            rows = prev_idx[start : start + batch_rows][~fresh]
            carried = previous.column("vector").take(pa.array(rows))
            vectors[~fresh] = kn.vectors_matrix(carried, ctx.dim)
        n = len(part)
        counts = ctx.counts[entity]
        counts["rows"] += n
        counts["recomputed"] += int(fresh.sum())
        counts["carried_forward"] += int((~fresh).sum())
        yield pa.RecordBatch.from_arrays(
            [
                *[pa.array(part[k].to_numpy(), pa.int64()) for k in keys],
                _vector_array(vectors, vector_type),
                pa.array(fresh, pa.bool_()),
                pa.array([stamp] * n, schema.field("event_timestamp").type),
                pa.array([ctx.lineage] * n, pa.string()),
                pa.array([ctx.ds.isoformat()] * n, pa.string()),
            ],
            schema=schema,
        )


def _distinct(table: pa.Table | None, keys: list[str]) -> pa.Table | None:
    """Distinct keys of an activity input (one row per key and active day)."""
    if table is None or table.num_rows == 0:
        return None
    return pa.Table.from_pandas(_key_frame(table, keys).drop_duplicates(), preserve_index=False)


# --------------------------------------------------------------------------- entry point


def _config_hash(settings: Settings, checkpoint: LoadedCheckpoint) -> str:
    """Hash of everything that shapes the snapshot's values (not paths or batch sizes)."""
    knowledge = settings.knowledge.model_dump(
        mode="json", exclude={"manifest_root", "spill_root", "export_batch_rows"}
    )
    payload = {
        "knowledge": knowledge,
        "model": checkpoint.model.config.fingerprint(),
        "windows": settings.aggregate.windows,
        "sequence_length": settings.aggregate.sequence_length,
        "prior_ctr": settings.aggregate.prior_ctr,
        "prior_strength": settings.aggregate.prior_strength,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _checkpoint_metrics(settings: Settings, checkpoint: LoadedCheckpoint) -> Any:
    path = metrics_path(settings, checkpoint.lineage, checkpoint.ds)
    if path.is_file():
        return json.loads(path.read_text())
    return checkpoint.meta.get("eval")


def _data_range(settings: Settings, checkpoint: LoadedCheckpoint) -> dict[str, Any]:
    """Which days of data the snapshot reflects: the lineage's training history + the state."""
    lineage_file = lineage_dir(settings, checkpoint.lineage) / "lineage.json"
    first_day = None
    if lineage_file.is_file():
        first_day = json.loads(lineage_file.read_text()).get("first_day")
    return {
        "lineage_first_day": first_day,
        "checkpoint_train_days": [d for p in checkpoint.meta.get("phases", []) for d in p],
        "checkpoint_parent_ds": checkpoint.meta.get("parent_ds"),
        "state_as_of": checkpoint.ds.isoformat(),
    }


def export_knowledge(settings: Settings, ds: dt.date, lineage: str | None = None) -> ExportResult:
    """Export day ``ds``'s knowledge of ``lineage`` (None: the current pre-training lineage).

    Writes the three knowledge tables' ``(lineage, ds)`` snapshot and its manifest;
    re-running replaces them. Raises :class:`InputError` when the checkpoint or the day's
    silver state is missing.
    """
    began = time.perf_counter()
    checkpoint = load_checkpoint(settings, ds, lineage)
    name = checkpoint.lineage
    check_lineage(name)
    cfg = settings.knowledge
    batch_rows = cfg.export_batch_rows
    if batch_rows < 1:
        raise InputError("knowledge.export_batch_rows must be at least 1")
    torch.set_num_threads(max(1, settings.pretrain.threads))
    dim = checkpoint.model.config.knowledge_dim
    previous = {e: kn.previous_snapshot(settings, e, name, ds) for e in KNOWLEDGE_ENTITIES}
    sides = _sources(settings, ds, name)

    cfg.spill_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-{ds.isoformat()}-", dir=cfg.spill_root))
    counts = {e: {"rows": 0, "recomputed": 0, "carried_forward": 0} for e in KNOWLEDGE_ENTITIES}
    buckets: dict[str, int] = {}
    try:
        spill: dict[str, Path] = {}
        for key, sources in sides.items():
            rows = max(_count(settings, s, ds) for s in sources)
            buckets[key] = max(1, math.ceil(rows / batch_rows))
            for source in sources:
                spill[source.name] = scratch / source.name
                _spill(settings, source, key, buckets[key], spill[source.name], batch_rows)
                pa.default_memory_pool().release_unused()
        ctx = _Context(settings, ds, name, checkpoint.model, spill, dim, counts)
        for entity in KNOWLEDGE_ENTITIES:
            _write_entity(ctx, entity, buckets[SIDE[entity]])
            pa.default_memory_pool().release_unused()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    manifest = {
        "lineage": name,
        "snapshot_ds": ds.isoformat(),
        "event_timestamp": end_of_day(ds).isoformat(),
        "checkpoint": str(checkpoint.path),
        "knowledge_dim": dim,
        "model_config_fingerprint": checkpoint.model.config.fingerprint(),
        "config_hash": _config_hash(settings, checkpoint),
        "data_range": _data_range(settings, checkpoint),
        "active_window": {
            "days": cfg.active_window_days,
            "first_ds": (ds - dt.timedelta(days=cfg.active_window_days - 1)).isoformat(),
            "last_ds": ds.isoformat(),
        },
        "previous_snapshot": {e: d.isoformat() if d else None for e, d in previous.items()},
        "tables": {e: {"table": knowledge_spec(e).name, **counts[e]} for e in KNOWLEDGE_ENTITIES},
        "metrics": _checkpoint_metrics(settings, checkpoint),
        "written_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    path = kn.write_manifest(settings, name, ds, manifest)
    result = ExportResult(
        lineage=name,
        ds=ds,
        checkpoint=checkpoint.path,
        rows={e: c["rows"] for e, c in counts.items()},
        recomputed={e: c["recomputed"] for e, c in counts.items()},
        carried_forward={e: c["carried_forward"] for e, c in counts.items()},
        previous_snapshot=manifest["previous_snapshot"],
        manifest_path=path,
        seconds=time.perf_counter() - began,
        buckets=buckets,
    )
    log.info("knowledge export %s@%s: %s", name, ds, result.rows)
    return result


def _write_entity(ctx: _Context, entity: str, buckets: int) -> None:
    """Replace the snapshot of one table in one Delta transaction, streaming bucket by bucket."""
    from deltalake import write_deltalake

    spec = knowledge_spec(entity)
    schema = spec.schema

    def batches() -> Iterator[pa.RecordBatch]:
        for bucket in range(buckets):
            yield from _bucket_rows(ctx, entity, bucket)

    write_deltalake(
        str(delta.table_path(ctx.settings, spec)),
        pa.RecordBatchReader.from_batches(schema, batches()),
        partition_by=list(spec.partition_by),
        mode="overwrite",
        predicate=(f"{LINEAGE} = '{ctx.lineage}' AND {SNAPSHOT} = '{ctx.ds.isoformat()}'"),
    )

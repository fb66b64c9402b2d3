"""Tiny lake tables for the Feast tests, written with delta-rs in the tables' own schemas."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from keep.core.config import Settings
from keep.core.tables import ENTITIES, knowledge_spec, stats_spec, window_columns
from keep.lake.delta import table_path

if TYPE_CHECKING:
    from feast import FeatureStore


def end_of(ds: dt.date) -> dt.datetime:
    return dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def snapshot_vectors(
    entity: str, lineage: str, ds: dt.date, n: int, dim: int, salt: str = ""
) -> np.ndarray:
    """Deterministic vectors, different for every (entity, lineage, day, salt)."""
    seed = int(hashlib.sha256(f"{entity}|{lineage}|{ds}|{salt}".encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def knowledge_keys(entity: str, n: int) -> dict[str, np.ndarray]:
    if entity == "user_category":
        return {
            "user_id": np.arange(n, dtype=np.int64) // 4 + 1,
            "category_id": np.arange(n) % 4 + 100,
        }
    return {ENTITIES[entity][0]: np.arange(n, dtype=np.int64) + (1 if entity == "user" else 1000)}


def write_knowledge(
    settings: Settings,
    entity: str,
    lineage: str,
    ds: dt.date,
    n: int,
    dim: int | None = None,
    salt: str = "",
    vectors: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Write one snapshot partition (``vectors``: given, else deterministic random ones);
    returns its keys and vectors (the expected values)."""
    dim = dim or settings.pretrain.knowledge_dim
    spec = knowledge_spec(entity)
    keys = knowledge_keys(entity, n)
    if vectors is None:
        vectors = snapshot_vectors(entity, lineage, ds, n, dim, salt)
    dim = vectors.shape[1]
    schema = spec.schema
    columns: dict[str, pa.Array] = {k: pa.array(v, pa.int64()) for k, v in keys.items()}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(
        schema.field("vector").type
    )
    columns["recomputed"] = pa.array(np.arange(n) % 2 == 0)
    columns["event_timestamp"] = pa.array([end_of(ds)] * n, schema.field("event_timestamp").type)
    columns["knowledge_lineage"] = pa.array([lineage] * n)
    columns["snapshot_ds"] = pa.array([ds.isoformat()] * n)
    table = pa.table([columns[f.name] for f in schema], schema=schema)
    write_deltalake(
        str(table_path(settings, spec)),
        table,
        mode="overwrite",
        partition_by=list(spec.partition_by),
        predicate=f"knowledge_lineage = '{lineage}' AND snapshot_ds = '{ds.isoformat()}'",
    )
    return keys, vectors


Snapshot = dict[str, tuple[dict[str, np.ndarray], np.ndarray]]


def write_snapshot(
    settings: Settings, lineage: str, ds: dt.date, n: int = 40, salt: str = ""
) -> Snapshot:
    """All three knowledge tables for one snapshot; entity -> (keys, vectors)."""
    return {e: write_knowledge(settings, e, lineage, ds, n, salt=salt) for e in ENTITIES}


def write_all_stats(settings: Settings, ds: dt.date, n: int = 10) -> None:
    for e in ENTITIES:
        write_stats(settings, e, ds, n)


def write_stats(settings: Settings, entity: str, ds: dt.date, n: int = 10) -> pa.Table:
    """One day of silver.<entity>_stats with counters derived from the key and the day."""
    spec = stats_spec(entity, settings.aggregate.windows)
    schema = spec.schema
    keys = knowledge_keys(entity, n)
    day = ds.toordinal() % 100
    cols: dict[str, pa.Array] = {k: pa.array(v, pa.int64()) for k, v in keys.items()}
    for c in window_columns(settings.aggregate.windows):
        base = np.arange(n, dtype=np.int64) * 10 + day
        if c.startswith("ctr_"):
            cols[c] = pa.array(base / 1000.0, pa.float64())
        else:
            cols[c] = pa.array(base + len(c), pa.int64())
    cols["event_timestamp"] = pa.array([end_of(ds)] * n, schema.field("event_timestamp").type)
    cols["ds"] = pa.array([ds.isoformat()] * n)
    table = pa.table([cols[f.name] for f in schema], schema=schema)
    write_deltalake(
        str(table_path(settings, spec)),
        table,
        mode="overwrite",
        partition_by=list(spec.partition_by),
        predicate=f"ds = '{ds.isoformat()}'",
    )
    return table


def write_serving_online(
    store: FeatureStore, entity: str, ids: list[int], blobs: list[bytes], ds: dt.date
) -> None:
    """Packed downstream features of ``ids`` straight into ``downstream_<entity>_fv`` online
    (Feast's own ``write_to_online_store``), stamped at the end of ``ds``."""
    import pandas as pd

    from keep.core.feast_names import serving_feature, serving_view_name

    frame = pd.DataFrame(
        {
            ENTITIES[entity][0]: np.asarray(ids, np.int64),
            serving_feature(entity): list(blobs),
            "event_timestamp": [end_of(ds)] * len(ids),
        }
    )
    store.write_to_online_store(serving_view_name(entity), frame)

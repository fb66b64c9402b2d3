"""The knowledge tables on the lake, read and listed without a JVM (delta-rs + pyarrow).

``knowledge.user``, ``knowledge.item`` and ``knowledge.user_category`` hold one vector per
key, ``knowledge_lineage`` and ``snapshot_ds`` (``keep.core.tables.knowledge_spec``), partitioned
by (lineage, snapshot day). The export (``models.pretrain.export``) writes them and the gate
(``keep.quality.knowledge_gate``) checks them; both use the helpers here: which snapshots exist,
reading one in bounded batches, its vectors as a matrix, deterministic key sampling and
the snapshot manifests. See docs/knowledge.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from keep.core.config import Settings
from keep.core.tables import (
    ENTITIES,
    LINEAGE,
    SNAPSHOT,
    TableSpec,
    knowledge_spec,
)
from keep.lake import delta

# --------------------------------------------------------------------------- snapshots


def table_version(settings: Settings, entity: str) -> int | None:
    """The latest Delta version of ``knowledge.<entity>`` (None if it was never written)."""
    from deltalake import DeltaTable

    spec = knowledge_spec(entity)
    if not delta.table_exists(settings, spec):
        return None
    return int(DeltaTable(str(delta.table_path(settings, spec))).version())


def snapshot_rows(
    settings: Settings, entity: str, version: int | None = None
) -> dict[tuple[str, str], int]:
    """Row count of every (lineage, snapshot_ds) of ``knowledge.<entity>``, from the Delta log
    (at ``version``; default the latest)."""
    from deltalake import DeltaTable

    spec = knowledge_spec(entity)
    if not delta.table_exists(settings, spec):
        return {}
    table = DeltaTable(str(delta.table_path(settings, spec)), version=version)
    actions = pa.table(table.get_add_actions(True))
    rows: dict[tuple[str, str], int] = {}
    for n, lineage, day in zip(
        actions.column("num_records").to_pylist(),
        actions.column(f"partition.{LINEAGE}").to_pylist(),
        actions.column(f"partition.{SNAPSHOT}").to_pylist(),
        strict=True,
    ):
        rows[(lineage, day)] = rows.get((lineage, day), 0) + int(n or 0)
    return rows


def lineage_snapshots(settings: Settings, entity: str, lineage: str) -> list[dt.date]:
    """The snapshot days of ``lineage`` in ``knowledge.<entity>``, oldest first."""
    days = {day for lin, day in snapshot_rows(settings, entity) if lin == lineage}
    return sorted(dt.date.fromisoformat(d) for d in days)


def previous_snapshot(settings: Settings, entity: str, lineage: str, ds: dt.date) -> dt.date | None:
    """The latest snapshot of ``lineage`` strictly before ``ds`` (None: none yet)."""
    earlier = [d for d in lineage_snapshots(settings, entity, lineage) if d < ds]
    return earlier[-1] if earlier else None


def reference_lineage(
    settings: Settings, entity: str, lineage: str, ds: dt.date
) -> tuple[str, dt.date] | None:
    """The other lineage to compare a new lineage with, and its snapshot day.

    Without a registry of the live lineage, the reference is the other lineage with the
    latest snapshot on or before ``ds`` (ties: the one with more rows, then by name).
    """
    candidates = [
        (day, n, lin)
        for (lin, day), n in snapshot_rows(settings, entity).items()
        if lin != lineage and day <= ds.isoformat()
    ]
    if not candidates:
        return None
    day, _, lin = max(candidates)
    return lin, dt.date.fromisoformat(day)


def _dataset(settings: Settings, spec: TableSpec, version: int | None = None) -> pads.Dataset:
    from deltalake import DeltaTable

    path = str(delta.table_path(settings, spec))
    return DeltaTable(path, version=version).to_pyarrow_dataset()


def snapshot_filter(lineage: str, ds: dt.date) -> pc.Expression:
    return (pc.field(LINEAGE) == lineage) & (pc.field(SNAPSHOT) == ds.isoformat())


def snapshot_batches(
    settings: Settings,
    entity: str,
    lineage: str,
    ds: dt.date,
    columns: Sequence[str],
    batch_rows: int,
    version: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """One snapshot's ``columns`` in batches of at most ``batch_rows`` rows (empty if absent),
    from the table's Delta ``version`` (default the latest)."""
    spec = knowledge_spec(entity)
    if not delta.table_exists(settings, spec):
        return
    dataset = _dataset(settings, spec, version)
    yield from dataset.to_batches(
        columns=list(columns), filter=snapshot_filter(lineage, ds), batch_size=batch_rows
    )


def vectors_matrix(vector: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A list<float> column whose rows all have length ``dim`` as an N x dim float32 matrix."""
    if isinstance(vector, pa.ChunkedArray):
        vector = vector.combine_chunks() if vector.num_chunks else pa.array([], vector.type)
    values = pc.list_flatten(vector).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(vector), dim)


# --------------------------------------------------------------------------- key hashing


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 keys: a well-mixed, platform-independent hash (uint64)."""
    with np.errstate(over="ignore"):
        z = values.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def key_hash(entity: str, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Hash of each row's full key (uint64), the same in every table and snapshot."""
    h = np.zeros(batch.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, key in enumerate(ENTITIES[entity]):
            col = batch.column(key).to_numpy(zero_copy_only=False)
            h = mix64((h * np.uint64(31 + i) ^ mix64(col)).view(np.int64))
    return h


def sample_threshold(fraction: float) -> np.uint64:
    """Keys whose hash is below this are in a ``fraction`` sample (the same keys everywhere)."""
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction >= 1.0:
        return np.uint64(np.iinfo(np.uint64).max)
    return np.uint64(int(fraction * float(2**64)))


# --------------------------------------------------------------------------- manifests


def manifest_path(settings: Settings, lineage: str, ds: dt.date) -> Path:
    return settings.knowledge.manifest_root / lineage / f"{ds.isoformat()}.json"


def write_manifest(settings: Settings, lineage: str, ds: dt.date, manifest: dict[str, Any]) -> Path:
    """Write the snapshot's manifest atomically (temp file in the same folder + rename)."""
    path = manifest_path(settings, lineage, ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def read_manifest(settings: Settings, lineage: str, ds: dt.date) -> dict[str, Any] | None:
    path = manifest_path(settings, lineage, ds)
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def gated_lineages(settings: Settings, ds: dt.date) -> list[str]:
    """Lineages whose snapshot of ``ds`` passed the knowledge gate (from the manifests)."""
    root = settings.knowledge.manifest_root
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = read_manifest(settings, folder.name, ds)
        if manifest and (manifest.get("gate") or {}).get("success"):
            found.append(folder.name)
    return found


def served_knowledge(settings: Settings, ds: dt.date) -> tuple[str, dt.date] | None:
    """(lineage, snapshot day) of the knowledge a sample of day ``ds`` sees: the gated
    snapshot of ``ds - 1`` (DESIGN.md, Time); None before the first one. When two lineages
    both have one (a new lineage published beside the old), the one created last."""
    previous = ds - dt.timedelta(days=1)
    lineages = gated_lineages(settings, previous)
    if not lineages:
        return None
    newest = max(lineages, key=lambda lin: manifest_path(settings, lin, previous).stat().st_mtime)
    return newest, previous

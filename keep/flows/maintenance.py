"""The daily maintenance step: what a year of daily runs leaves on one disk stays bounded.

Runs after the publication (the ``maintain`` step of :data:`keep.flows.pipeline.STEPS`,
so the daily DAG's last task and ``keep run``'s last step; also ``keep maintain``), with
the retentions of ``settings.maintenance`` (docs/operations.md, "A year on one disk"):

1. **What is in use** is read first: the current pre-training lineage, both online slots'
   snapshots (Feast publication record), the live downstream model of every subsystem and
   the versions it can be rolled back to. Nothing in use is ever removed, whatever its age.
2. **Delta tables**: old partitions dropped (gold after ``gold_days_kept`` days; knowledge
   snapshots after ``knowledge_days_kept`` days unless in use; bronze only when
   ``bronze_days_kept`` is set), small files compacted (the daily DAG's own tables; the
   downstream DAG may be writing its tables at this moment), then VACUUM (files removed more
   than ``vacuum_retention_hours`` ago, and files of writers killed before their commit),
   a log checkpoint and Delta's log retention. The silver state's own retention is the
   aggregation's (``aggregate.snapshot_retention_days``).
3. **Files**: pre-training checkpoints older than ``checkpoint_days_kept`` days (the newest
   of each lineage in use stays), lineages nothing uses, downstream candidates of older
   snapshots, model files of registry versions beyond ``model_versions_kept``, manifests of
   dropped knowledge snapshots.
4. **Online store**: the non-live slot is emptied when its lineage is no longer in use.

Every part is idempotent and commits on its own: a run killed half-way is finished by the
next one, and the lake is readable at every moment in between.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from keep.core.config import Settings
from keep.core.tables import (
    DAILY_COUNTS,
    DIM_ITEMS,
    DIM_USERS,
    DOWNSTREAM_SAMPLES,
    ENTITIES,
    IMPRESSIONS,
    INGEST_AUDIT,
    KNOWLEDGE_ENTITIES,
    LINEAGE,
    MODEL_REGISTRY,
    PRETRAIN_SAMPLES,
    QUARANTINE,
    SERVING_ENTITIES,
    SNAPSHOT,
    USER_BEHAVIOR,
    TableSpec,
    knowledge_spec,
    samples_spec,
    serving_features_spec,
    stats_spec,
    training_set_spec,
)
from keep.lake import knowledge
from keep.lake.maintenance import maintain_table, partition_values, tree_bytes

log = logging.getLogger(__name__)


def in_use(settings: Settings, *, online: bool = True) -> dict[str, Any]:
    """What maintenance must keep, whatever its age: lineages and (lineage, snapshot) pairs.

    ``online=False`` skips the Feast publication record (no online store configured yet)."""
    from keep.store import model_registry
    from models.pretrain.layout import current_lineage

    lineages: set[str] = set()
    snapshots: set[tuple[str, str]] = set()
    current = current_lineage(settings)
    if current:
        lineages.add(current)
    if online and settings.feast.store_root.is_dir():
        from keep.store.publication import read_pointer

        for slot in read_pointer(settings)["slots"].values():
            if slot.get("status") in ("complete", "writing") and slot.get("lineage"):
                snapshots.add((str(slot["lineage"]), str(slot["snapshot_ds"])))
                lineages.add(str(slot["lineage"]))
    keep = settings.maintenance.model_versions_kept
    for subsystem in model_registry.subsystems(settings):
        state = model_registry.pointer_state(settings, subsystem)
        numbers = [state.get("live"), *state.get("history", [])[-keep:]]
        for v in model_registry.versions(settings, subsystem):
            if v.version in numbers:
                lineages.add(v.knowledge_lineage)
    return {"lineages": lineages, "snapshots": snapshots}


def _older(values: list[dict[str, str]], column: str, cut: dt.date) -> list[dict[str, str]]:
    return [p for p in values if p[column] < cut.isoformat()]


def _knowledge_to_drop(
    settings: Settings, ds: dt.date, used: dict[str, Any]
) -> list[tuple[str, str]]:
    """(lineage, snapshot_ds) pairs to remove: older than the retention, not in use, not the
    newest snapshot of a lineage in use."""
    cut = (ds - dt.timedelta(days=settings.maintenance.knowledge_days_kept - 1)).isoformat()
    present: set[tuple[str, str]] = set()
    for entity in KNOWLEDGE_ENTITIES:
        present |= set(knowledge.snapshot_rows(settings, entity))
    newest: dict[str, str] = {}
    for lineage, day in present:
        newest[lineage] = max(day, newest.get(lineage, day))
    keep = set(used["snapshots"]) | {
        (lin, day) for lin, day in newest.items() if lin in used["lineages"]
    }
    return sorted(p for p in present if p[1] < cut and p not in keep)


def _stale_manifests(settings: Settings, ds: dt.date, dropped: list[tuple[str, str]]) -> int:
    """Remove the manifests of dropped snapshots (and of older snapshots never written)."""
    root = settings.knowledge.manifest_root
    if not root.is_dir():
        return 0
    present: set[tuple[str, str]] = set()
    for entity in KNOWLEDGE_ENTITIES:
        present |= set(knowledge.snapshot_rows(settings, entity))
    cut = (ds - dt.timedelta(days=settings.maintenance.knowledge_days_kept - 1)).isoformat()
    removed = 0
    for path in sorted(root.glob("*/*.json")):
        pair = (path.parent.name, path.stem)
        if pair in dropped or (pair[1] < cut and pair not in present):
            path.unlink()
            removed += 1
    for folder in root.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def maintain(settings: Settings, ds: dt.date, *, online: bool = True) -> dict[str, Any]:
    """Day ``ds``'s lake maintenance (see the module's docstring); returns what it did and
    the bytes each part of the KEEP home takes after it."""
    from keep.store import model_registry
    from models.downstream.layout import prune_candidates
    from models.pretrain.layout import prune_checkpoints

    m = settings.maintenance
    used = in_use(settings, online=online)
    windows = settings.aggregate.windows
    gold_cut = ds - dt.timedelta(days=m.gold_days_kept - 1)
    tables: list[dict[str, Any]] = []

    def run(spec: TableSpec, drop: list[dict[str, str]] | None = None, *, compact: bool) -> None:
        report = maintain_table(settings, spec, drop=drop, compact_files=compact)
        log.info(
            "%s: dropped %d partitions (%d rows), compacted %d files, vacuumed %d files",
            spec.name, report.dropped_partitions, report.dropped_rows, report.compacted_files,
            report.vacuumed_files,
        )  # fmt: skip
        tables.append(report.to_dict())

    # Bronze: the history itself; dropped only past an explicit retention.
    for spec in (IMPRESSIONS, QUARANTINE, INGEST_AUDIT):
        drop = []
        if m.bronze_days_kept is not None:
            cut = ds - dt.timedelta(days=m.bronze_days_kept - 1)
            drop = _older(partition_values(settings, spec), "ds", cut)
        run(spec, drop, compact=True)
    for spec in (DIM_USERS, DIM_ITEMS, USER_BEHAVIOR, DAILY_COUNTS):
        run(spec, compact=True)
    for entity in ENTITIES:
        run(stats_spec(entity, windows), compact=True)
    for name in (PRETRAIN_SAMPLES, DOWNSTREAM_SAMPLES):
        spec = samples_spec(name, windows)
        run(spec, _older(partition_values(settings, spec), "ds", gold_cut), compact=True)
    dropped = _knowledge_to_drop(settings, ds, used)
    for entity in KNOWLEDGE_ENTITIES:
        spec = knowledge_spec(entity)
        drop = [{LINEAGE: lin, SNAPSHOT: day} for lin, day in dropped]
        present = {(p[LINEAGE], p[SNAPSHOT]) for p in partition_values(settings, spec)}
        run(spec, [p for p in drop if (p[LINEAGE], p[SNAPSHOT]) in present], compact=True)
    manifests = _stale_manifests(settings, ds, dropped)
    # The downstream DAG's tables: it may be writing them now, so no compaction (a rewrite
    # of a partition it replaces would make one of the two commits fail).
    for spec in (
        training_set_spec(windows),
        *(serving_features_spec(e) for e in SERVING_ENTITIES),
    ):
        run(spec, _older(partition_values(settings, spec), "ds", gold_cut), compact=False)
    run(MODEL_REGISTRY, compact=True)  # appends only: a compaction never conflicts with them

    raw = prune_raw(settings, ds)
    checkpoints = prune_checkpoints(settings, ds, m.checkpoint_days_kept, used["lineages"])
    candidates = prune_candidates(settings, ds, m.checkpoint_days_kept)
    versions = {
        s: model_registry.prune_versions(settings, s, m.model_versions_kept)
        for s in model_registry.subsystems(settings)
    }
    cleared = None
    if online and settings.feast.store_root.is_dir():
        from keep.store.publication import clear_dead_slot

        cleared = clear_dead_slot(settings, used["lineages"])
    usage = disk_usage(settings)
    result: dict[str, Any] = {
        "ds": ds.isoformat(),
        "in_use": {
            "lineages": sorted(used["lineages"]),
            "snapshots": sorted(f"{lin}/{day}" for lin, day in used["snapshots"]),
        },
        "tables": tables,
        "knowledge_snapshots_dropped": [f"{lin}/{day}" for lin, day in dropped],
        "manifests_removed": manifests,
        "raw_days_removed": raw,
        "checkpoints": checkpoints,
        "candidates": candidates,
        "model_versions": versions,
        "online_slot_cleared": cleared,
        "disk_bytes": usage,
    }
    log.info(
        "maintenance of %s: %d knowledge snapshots dropped, %d checkpoint files, %d lineages, "
        "%d candidates, home now %.1f MB",
        ds, len(dropped), checkpoints["files"], checkpoints["lineages"],
        candidates["candidates"], usage["total"] / 2**20,
    )  # fmt: skip
    return result


def prune_raw(settings: Settings, ds: dt.date) -> int:
    """Delete landed raw day folders (``<raw_root>/<kind>/ds=<day>``) older than
    ``maintenance.raw_days_kept`` days whose day was ingested (has a partition in
    bronze.ingest_audit); returns how many folders were removed."""
    import shutil

    from keep.lake import delta

    kept = settings.maintenance.raw_days_kept
    root = settings.lake.raw_root
    if kept is None or not root.is_dir():
        return 0
    cut = (ds - dt.timedelta(days=kept - 1)).isoformat()
    ingested = delta.partition_days(settings, INGEST_AUDIT)
    removed = 0
    for folder in sorted(root.glob("*/ds=*")):
        day = folder.name[3:]
        if folder.is_dir() and day < cut and day in ingested:
            shutil.rmtree(folder)
            removed += 1
    return removed


def disk_usage(settings: Settings) -> dict[str, int]:
    """Bytes per part of the KEEP home (lake layers, checkpoints, registry, Feast, ...)."""
    parts: dict[str, Path] = {
        f"lake/{layer}": settings.lake.root / layer
        for layer in ("bronze", "dim", "silver", "gold", "knowledge", "registry")
    }
    parts |= {
        "raw": settings.lake.raw_root,
        "checkpoints": settings.pretrain.checkpoint_root,
        "downstream": settings.downstream.checkpoint_root,
        "registry": settings.downstream.registry_root,
        "manifests": settings.knowledge.manifest_root,
        "feast": settings.feast.store_root,
    }
    usage = {name: tree_bytes(path) for name, path in parts.items()}
    usage["total"] = sum(usage.values())
    return usage

"""Delta table maintenance without a JVM (delta-rs): retention, compaction, VACUUM, log
checkpoints, and what the lake takes on disk.

Each function does one thing to one table and is safe to re-run (a crash half-way leaves
the table at its last commit; the next run finishes the job). The daily step that calls
them in order, with what to keep, is :mod:`keep.flows.maintenance`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keep.core.config import Settings
from keep.core.tables import TableSpec
from keep.lake import delta


@dataclass
class TableMaintenance:
    """What maintenance did to one table."""

    table: str
    dropped_partitions: int = 0
    dropped_rows: int = 0
    compacted_files: int = 0
    vacuumed_files: int = 0
    version: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if absent); links are not followed."""
    total = 0
    if path.is_file():
        return path.stat().st_size
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while walking (a concurrent VACUUM)
                continue
    return total


def _escape(value: str) -> str:
    return value.replace("'", "''")


def drop_partitions(
    table: Any, spec: TableSpec, partitions: list[dict[str, str]]
) -> tuple[int, int]:
    """Delete whole partitions (``[{column: value, ...}, ...]``, on partition columns only) of
    the open delta-rs ``table`` in one commit; returns (partitions dropped, rows deleted). The
    files stay until VACUUM."""
    if not partitions:
        return 0, 0
    for part in partitions:
        unknown = set(part) - set(spec.partition_by)
        if unknown:
            raise ValueError(f"{spec.name}: {sorted(unknown)} are not partition columns")
    predicate = " OR ".join(
        "(" + " AND ".join(f"{c} = '{_escape(v)}'" for c, v in sorted(p.items())) + ")"
        for p in partitions
    )
    metrics = table.delete(predicate)
    return len(partitions), int(metrics.get("num_deleted_rows") or 0)


def partition_values(settings: Settings, spec: TableSpec) -> list[dict[str, str]]:
    """Every partition of the table (its partition columns' values), from the Delta log."""
    from deltalake import DeltaTable

    if not spec.partition_by or not delta.table_exists(settings, spec):
        return []
    import pyarrow as pa

    actions = pa.table(DeltaTable(str(delta.table_path(settings, spec))).get_add_actions(True))
    columns = [actions.column(f"partition.{c}").to_pylist() for c in spec.partition_by]
    seen = {tuple(str(v) for v in values) for values in zip(*columns, strict=True)}
    return [dict(zip(spec.partition_by, values, strict=True)) for values in sorted(seen)]


def compact(settings: Settings, table: Any) -> int:
    """Rewrite partitions of the open delta-rs ``table`` holding several small files into
    files of about ``maintenance.compact_target_mb`` (one commit; the rows are unchanged).
    Returns the number of files removed (0 when every partition already has one file)."""
    metrics = table.optimize.compact(
        target_size=settings.maintenance.compact_target_mb * 2**20, max_concurrent_tasks=1
    )
    return int(metrics.get("numFilesRemoved") or 0)


def vacuum(settings: Settings, table: Any, *, retention_hours: int | None = None) -> int:
    """Delete files no version within the retention needs: files removed from the open
    delta-rs ``table`` more than ``maintenance.vacuum_retention_hours`` ago, and files no
    commit references (left by a writer killed before its commit) older than that. Then
    write a log checkpoint and expire old log entries (Delta's log retention, the table's
    ``logRetentionDuration``). Returns the number of files deleted."""
    hours = (
        settings.maintenance.vacuum_retention_hours if retention_hours is None else retention_hours
    )
    removed = table.vacuum(
        retention_hours=hours, dry_run=False, enforce_retention_duration=False, full=True
    )
    table.create_checkpoint()
    table.cleanup_metadata()
    return len(removed)


def maintain_table(
    settings: Settings,
    spec: TableSpec,
    *,
    drop: list[dict[str, str]] | None = None,
    compact_files: bool = True,
    retention_hours: int | None = None,
) -> TableMaintenance:
    """Drop ``drop``'s partitions, compact, VACUUM: one table's daily maintenance (each a
    commit of its own, on one open table)."""
    from deltalake import DeltaTable

    report = TableMaintenance(table=spec.name)
    if not delta.table_exists(settings, spec):
        report.notes.append("no committed version: nothing to maintain")
        return report
    table = DeltaTable(str(delta.table_path(settings, spec)))
    report.dropped_partitions, report.dropped_rows = drop_partitions(table, spec, drop or [])
    if compact_files:
        report.compacted_files = compact(settings, table)
    report.vacuumed_files = vacuum(settings, table, retention_hours=retention_hours)
    report.version = int(table.version())
    return report

"""Lake paths and Delta log reads without a JVM (delta-rs + pyarrow).

Where a table lives (``<lake root>/<layer>/<table>``), whether it has been written, and
partition row counts from the Delta log's file statistics. Used by Spark jobs and by every
JVM-free reader alike (training, export, gates, the Feast offline store).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa

from keep.core.config import Settings
from keep.core.tables import TableSpec


def table_path(settings: Settings, spec: TableSpec) -> Path:
    return settings.lake.root / spec.layer / spec.table


def table_exists(settings: Settings, spec: TableSpec) -> bool:
    """Whether the table has a committed version (a commit file or a checkpoint in its log).

    A writer killed during the very first commit can leave ``_delta_log/`` holding only
    ``_staged_commits/`` (and data files nothing references): that is no table. It reads
    as absent, and the next write creates version 0 over it (the stray files are never
    read, and VACUUM removes them)."""
    return has_commit(table_path(settings, spec))


def has_commit(path: Path) -> bool:
    """Whether the Delta table at ``path`` has at least one committed version."""
    log = path / "_delta_log"
    if not log.is_dir():
        return False
    with os.scandir(log) as entries:
        return any(
            e.name[:1].isdigit() and (e.name.endswith(".json") or ".checkpoint" in e.name)
            for e in entries
            if e.is_file()
        )


def partition_rows(settings: Settings, spec: TableSpec, ds: dt.date) -> int:
    """Row count of partition ``ds`` from the Delta log's file statistics (no JVM, no scan)."""
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return 0
    actions = pa.table(DeltaTable(str(table_path(settings, spec))).get_add_actions(flatten=True))
    day = ds.isoformat()
    return sum(
        int(n)
        for n, part in zip(
            actions.column("num_records").to_pylist(),
            actions.column("partition.ds").to_pylist(),
            strict=True,
        )
        if part == day
    )


@dataclass(frozen=True)
class PartitionFiles:
    """The data files of one partition at the table's latest version, from the Delta log."""

    paths: list[Path]
    rows: int  # from the files' statistics
    # Reader protocol 1 (no deletion vectors, no column mapping): the files' rows are the
    # partition's rows, so any Parquet reader reads the partition exactly as Delta would.
    plain_parquet: bool


def partition_files(settings: Settings, spec: TableSpec, ds: dt.date) -> PartitionFiles:
    """Files and row count of partition ``ds`` (one read of the log, no JVM, no scan)."""
    return table_files(settings, spec, first=ds, last=ds)


def table_files(
    settings: Settings,
    spec: TableSpec,
    *,
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> PartitionFiles:
    """Files and row count of the partitions ``first <= ds <= last`` (either bound may be
    None: unbounded) at the table's latest version: one read of the log, no JVM, no scan."""
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return PartitionFiles([], 0, plain_parquet=True)
    root = table_path(settings, spec)
    table = DeltaTable(str(root))
    actions = pa.table(table.get_add_actions(flatten=True))
    low = first.isoformat() if first else None
    high = last.isoformat() if last else None
    paths: list[Path] = []
    rows = 0
    for path, n, part in zip(
        actions.column("path").to_pylist(),
        actions.column("num_records").to_pylist(),
        actions.column("partition.ds").to_pylist(),
        strict=True,
    ):
        if (low is None or part >= low) and (high is None or part <= high):
            # Relative URIs (percent-encoded) under the table, or absolute ones.
            paths.append(
                Path(unquote(urlparse(path).path)) if "://" in path else root / unquote(path)
            )
            rows += int(n)
    return PartitionFiles(paths, rows, plain_parquet=table.protocol().min_reader_version == 1)


def partition_days(settings: Settings, spec: TableSpec) -> set[str]:
    """The ``ds`` values of the table's live files, from the Delta log (no JVM, no scan)."""
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return set()
    actions = pa.table(DeltaTable(str(table_path(settings, spec))).get_add_actions(flatten=True))
    return {d for d in actions.column("partition.ds").to_pylist() if d is not None}

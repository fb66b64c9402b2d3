"""Order-independent content checksums of the lake's Delta tables, read with delta-rs.

Used by the scheduler tests to compare a run that was interrupted with one that was not:
same rows, same values, whatever the files, their order or the number of commits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deltalake import DeltaTable

# Tables whose content depends only on the input days (Spark jobs and their gates).
LAKE_TABLES = (
    "bronze/impressions",
    "bronze/quarantine",
    "dim/users",
    "dim/items",
    "silver/user_behavior",
    "silver/daily_counts",
    "silver/user_stats",
    "silver/item_stats",
    "silver/user_category_stats",
    "gold/pretrain_samples",
    "gold/downstream_samples",
)


def _row_digest(row: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()


def table_checksum(
    path: Path, drop: tuple[str, ...] = (), days: list[str] | None = None
) -> tuple[int, str]:
    """(rows, sha256 over the sorted row digests) of the Delta table at ``path``; of its
    partitions ``ds`` in ``days`` only, when given."""
    if not (path / "_delta_log").is_dir():
        return 0, ""
    partitions = [("ds", "in", days)] if days is not None else None
    table = DeltaTable(str(path)).to_pyarrow_table(partitions=partitions)
    table = table.drop_columns([c for c in drop if c in table.column_names])
    digests = sorted(_row_digest(r) for r in table.to_pylist())
    return len(digests), hashlib.sha256("".join(digests).encode()).hexdigest()


def lake_checksums(
    lake_root: Path, tables: tuple[str, ...] = LAKE_TABLES, days: list[str] | None = None
) -> dict[str, tuple[int, str]]:
    """Checksums of ``tables``; of the lake tables' (``ds``-partitioned) days ``days`` only,
    when given (the other tables whole)."""
    return {
        name: table_checksum(lake_root / name, days=days if name in LAKE_TABLES else None)
        for name in tables
    }

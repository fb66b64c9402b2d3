"""Where downstream candidates live, and their retention: paths only, no torch."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from keep.core.config import Settings


def candidate_dir(settings: Settings, lineage: str, snapshot_ds: str) -> Path:
    return settings.downstream.checkpoint_root / "candidates" / lineage / snapshot_ds


def prune_candidates(settings: Settings, ds: dt.date, keep_days: int) -> dict[str, int]:
    """Delete candidate folders of knowledge snapshots older than ``keep_days`` days before
    ``ds`` (a registered candidate's model is copied into the registry; the rest are the
    trace of a gate decision, kept that long). Returns counts of what was deleted."""
    import shutil

    root = settings.downstream.checkpoint_root / "candidates"
    deleted = {"candidates": 0, "bytes": 0}
    if not root.is_dir():
        return deleted
    cut = (ds - dt.timedelta(days=keep_days - 1)).isoformat()
    for lineage in sorted(p for p in root.iterdir() if p.is_dir()):
        for snapshot in sorted(p for p in lineage.iterdir() if p.is_dir()):
            if snapshot.name < cut:
                deleted["bytes"] += sum(
                    f.stat().st_size for f in snapshot.rglob("*") if f.is_file()
                )
                shutil.rmtree(snapshot)
                deleted["candidates"] += 1
        if not any(lineage.iterdir()):
            lineage.rmdir()
    return deleted

"""Where pre-training checkpoints live, and their retention: paths only, no torch.

The layout (``models.pretrain.checkpoint`` writes and reads the files)::

    <checkpoint_root>/CURRENT.json            {"lineage": "<id>"}
    <checkpoint_root>/<lineage>/lineage.json  model config, first training day, creation time
    <checkpoint_root>/<lineage>/ds=<day>.pt   the model after training day ``day``
    <checkpoint_root>/<lineage>/ds=<day>.json that day's metrics
    <checkpoint_root>/<lineage>/ds=<day>.partial.pt   mid-run checkpoint
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from keep.core.config import Settings
from keep.core.files import atomic_write_text

_DAY_FILE = re.compile(r"^ds=(\d{4}-\d{2}-\d{2})\.pt$")


def lineage_dir(settings: Settings, lineage: str) -> Path:
    return settings.pretrain.checkpoint_root / lineage


def checkpoint_path(settings: Settings, lineage: str, ds: dt.date) -> Path:
    return lineage_dir(settings, lineage) / f"ds={ds.isoformat()}.pt"


def partial_path(settings: Settings, lineage: str, ds: dt.date) -> Path:
    return lineage_dir(settings, lineage) / f"ds={ds.isoformat()}.partial.pt"


def metrics_path(settings: Settings, lineage: str, ds: dt.date) -> Path:
    return lineage_dir(settings, lineage) / f"ds={ds.isoformat()}.json"


def _pointer(settings: Settings) -> Path:
    return settings.pretrain.checkpoint_root / "CURRENT.json"


def current_lineage(settings: Settings) -> str | None:
    """The lineage the daily step extends, or None before the first training."""
    path = _pointer(settings)
    if not path.exists():
        return None
    return str(json.loads(path.read_text())["lineage"])


def set_current_lineage(settings: Settings, lineage: str) -> None:
    atomic_write_text(_pointer(settings), json.dumps({"lineage": lineage}) + "\n")


def checkpoint_days(settings: Settings, lineage: str) -> list[dt.date]:
    """Days with a completed checkpoint in ``lineage``, oldest first."""
    folder = lineage_dir(settings, lineage)
    if not folder.is_dir():
        return []
    days = [_DAY_FILE.match(p.name) for p in folder.iterdir()]
    return sorted(dt.date.fromisoformat(m.group(1)) for m in days if m)


def lineages(settings: Settings) -> list[str]:
    """Every lineage with a completed checkpoint, oldest first (by the day it was created
    for, from ``lineage.json``; then by name)."""
    root = settings.pretrain.checkpoint_root
    if not root.is_dir():
        return []

    def created(name: str) -> str:
        path = lineage_dir(settings, name) / "lineage.json"
        return str(json.loads(path.read_text()).get("created_by_ds", "")) if path.is_file() else ""

    found = [p.name for p in root.iterdir() if p.is_dir() and checkpoint_days(settings, p.name)]
    return sorted(found, key=lambda name: (created(name), name))


def prune_checkpoints(
    settings: Settings, ds: dt.date, keep_days: int, in_use: set[str]
) -> dict[str, int]:
    """Retention of the checkpoint folder as of day ``ds``: in every lineage, day files
    (``.pt`` and mid-run ``.partial.pt``) older than ``keep_days`` days are deleted, except
    the newest checkpoint of each lineage in ``in_use`` (or the current one), which a
    warm start or a rollback may still need; a lineage not in use with no day left is
    removed whole. The day's metrics (``.json``) of kept lineages stay: they are the
    lineage's history, a few KB a day. Returns counts of what was deleted."""
    import shutil

    root = settings.pretrain.checkpoint_root
    deleted = {"files": 0, "lineages": 0, "bytes": 0}
    if not root.is_dir():
        return deleted
    cut = ds - dt.timedelta(days=keep_days - 1)
    keep_lineages = set(in_use) | {current_lineage(settings) or ""}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        days = checkpoint_days(settings, folder.name)
        kept = {d for d in days if d >= cut}
        if folder.name in keep_lineages and days:
            kept.add(days[-1])
        if not kept and folder.name not in keep_lineages and days:
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder)
            deleted["lineages"] += 1
            deleted["bytes"] += size
            continue
        for path in folder.glob("ds=*.pt"):
            day = dt.date.fromisoformat(path.name[3:13])
            partial = path.name.endswith(".partial.pt")
            if day >= cut or (day in kept and not partial):
                continue  # recent (a partial one may be resumed), or still in use
            deleted["bytes"] += path.stat().st_size
            path.unlink()
            deleted["files"] += 1
    return deleted

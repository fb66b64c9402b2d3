"""Checkpoints of the pre-training model: layout, lineages, atomic writes, safe loading.

Layout under ``settings.pretrain.checkpoint_root``::

    CURRENT.json                       {"lineage": "<id>"}: the lineage the daily step extends
    <lineage>/lineage.json             model config, first training day, creation time
    <lineage>/ds=<YYYY-MM-DD>.pt       the model after training day ds (weights, optimizer,
                                       reader position, RNG states, meta)
    <lineage>/ds=<YYYY-MM-DD>.json     that day's metrics (held-out evaluation + training)
    <lineage>/ds=<YYYY-MM-DD>.partial.pt   mid-run checkpoint (removed when the day completes)

A lineage id is ``<first training day>-<day it was created for>-<hash of the model config>``
(days as YYYYMMDD): it is new whenever training starts from scratch or the dims / buckets /
counters / architecture change.

Files are written to a temporary name in the same folder, fsynced and ``os.replace``d, so a
crash never leaves a half-written checkpoint under the real name. They hold only tensors,
numbers and strings (meta is a JSON string) and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.files import fsync_replace
from models.pretrain.layout import (
    checkpoint_days,
    checkpoint_path,
    current_lineage,
    lineage_dir,
    lineages,
    metrics_path,
    partial_path,
    prune_checkpoints,
    set_current_lineage,
)
from models.pretrain.multitask import ModelConfig, MultiTaskModel

__all__ = [
    "checkpoint_days",
    "checkpoint_path",
    "current_lineage",
    "lineage_dir",
    "lineages",
    "metrics_path",
    "partial_path",
    "prune_checkpoints",
    "set_current_lineage",
]

FORMAT_VERSION = 1


def lineage_id(config: ModelConfig, first_day: dt.date, created_for: dt.date) -> str:
    """Lineage id of a from-scratch training of ``config`` over ``first_day .. created_for``.

    Deterministic (re-running the same full retrain reuses its id, so it is idempotent),
    and distinct from every lineage started on another day or with another config.
    """
    return f"{first_day:%Y%m%d}-{created_for:%Y%m%d}-{config.fingerprint()}"


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class TrainingSnapshot:
    """Everything needed to continue training exactly: what a checkpoint file holds."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    torch_rng: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model_state,
            "optimizer": self.optimizer_state,
            "torch_rng": self.torch_rng,
            "meta_json": json.dumps(self.meta, sort_keys=True),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainingSnapshot:
        if payload.get("format") != FORMAT_VERSION:
            raise InputError(
                f"checkpoint format {payload.get('format')} is not {FORMAT_VERSION}: "
                "retrain (`pretrain_day(..., full_retrain=True)`)."
            )
        return cls(
            model_state=payload["model"],
            optimizer_state=payload["optimizer"],
            torch_rng=payload["torch_rng"],
            meta=json.loads(payload["meta_json"]),
        )


def save_snapshot(snapshot: TrainingSnapshot, path: Path) -> None:
    atomic_save(snapshot.to_payload(), path)


def read_snapshot(path: Path) -> TrainingSnapshot:
    """Read a checkpoint file safely (no arbitrary unpickling)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return TrainingSnapshot.from_payload(payload)


@dataclass
class LoadedCheckpoint:
    """A day's model ready for inference (eval mode) with its lineage, day and meta."""

    model: MultiTaskModel
    lineage: str
    ds: dt.date
    meta: dict[str, Any]
    path: Path


def model_from_snapshot(snapshot: TrainingSnapshot) -> MultiTaskModel:
    model = MultiTaskModel(ModelConfig.from_json(snapshot.meta["config"]))
    model.load_state_dict(snapshot.model_state)
    return model


def load_checkpoint(
    settings: Settings, ds: dt.date, lineage: str | None = None
) -> LoadedCheckpoint:
    """The model after training day ``ds`` in ``lineage`` (None: the current lineage)."""
    name = lineage or current_lineage(settings)
    if name is None:
        raise InputError(
            f"no pre-training lineage under {settings.pretrain.checkpoint_root}: "
            "run the pre-training step (models.pretrain.train.pretrain_day) first."
        )
    path = checkpoint_path(settings, name, ds)
    if not path.exists():
        days = [d.isoformat() for d in checkpoint_days(settings, name)]
        raise InputError(
            f"lineage {name} has no checkpoint for {ds.isoformat()} (it has {days}): "
            "pre-train that day first."
        )
    snapshot = read_snapshot(path)
    model = model_from_snapshot(snapshot)
    model.eval()
    return LoadedCheckpoint(model=model, lineage=name, ds=ds, meta=snapshot.meta, path=path)

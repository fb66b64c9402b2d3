"""Checkpoints of the downstream models, pinned to the knowledge lineage they were trained on.

Layout under ``settings.downstream.checkpoint_root``::

    <arm>/seed=<seed>/ds=<YYYY-MM-DD>.pt    the model after training day ds

A file holds the weights, the optimizer state (the next day's warm start continues it) and a
JSON meta: arm, model config, seed, the days trained, and — for the arms that read
knowledge (``keep``, ``concat``) — the **knowledge lineage** and the snapshot day of the
knowledge they last trained with (``finetune`` records its pre-training lineage).

Lineage pinning (DESIGN.md, "Lineages in serving"): knowledge vectors of another lineage
mean something else to the model, so :func:`load_model` with ``lineage=`` and
:func:`check_lineage` on a table refuse them with an :class:`InputError` naming both
lineages. Snapshots within the lineage are interchangeable (the knowledge gate bounds their
drift). Writes are atomic (temp file, fsync, ``os.replace``; models/pretrain/checkpoint.py)
and reads use ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import LINEAGE
from models.downstream.finetune import FinetuneModel
from models.downstream.model import DownstreamConfig, DownstreamModel
from models.pretrain.checkpoint import atomic_save
from models.pretrain.multitask import ModelConfig, MultiTaskModel
from models.pretrain.optim import PretrainOptimizer

FORMAT_VERSION = 1


@dataclass
class DownstreamMeta:
    """What a downstream checkpoint says about its model."""

    arm: str
    config: dict[str, Any]
    seed: int
    train_days: list[str] = field(default_factory=list)  # ISO days, oldest first
    knowledge_lineage: str | None = None  # None: the arm reads no knowledge
    snapshot_ds: str | None = None  # knowledge snapshot of the last training day
    pretrain_lineage: str | None = None  # finetune arm: the checkpoint it started from
    # Lineage switch by orthogonal Procrustes: per entity, the matrix mapping the recorded
    # lineage's vectors into the space the model was trained in (models/downstream/daily.py).
    alignment: dict[str, list[list[float]]] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DownstreamMeta:
        return cls(**json.loads(text))


@dataclass
class LoadedDownstream:
    """A downstream model (eval mode), its meta and its optimizer state (for warm starts)."""

    model: DownstreamModel | FinetuneModel
    meta: DownstreamMeta
    optimizer_state: dict[str, Any] | None
    path: Path


def model_path(settings: Settings, arm: str, seed: int, ds: dt.date) -> Path:
    root = settings.downstream.checkpoint_root
    return root / arm / f"seed={seed}" / f"ds={ds.isoformat()}.pt"


def save_model(
    model: DownstreamModel | FinetuneModel,
    meta: DownstreamMeta,
    path: Path,
    optimizer: PretrainOptimizer | None = None,
) -> None:
    """Write ``model`` with ``meta`` (and the optimizer state) atomically to ``path``."""
    if meta.arm != model.arm:
        raise ValueError(f"meta says arm {meta.arm!r}, the model is {model.arm!r}")
    if isinstance(model, DownstreamModel) and model.uses_knowledge and not meta.knowledge_lineage:
        raise ValueError(f"a {model.arm} model must record the knowledge lineage it trained on")
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "meta_json": meta.to_json(),
    }
    atomic_save(payload, path)


def _refuse(trained: str, offered: str, what: str) -> InputError:
    return InputError(
        f"{what} holds knowledge of lineage {offered!r}, but the model was trained on lineage "
        f"{trained!r}: knowledge of another lineage means something else to it. Use knowledge "
        f"of {trained!r}, or train (and register) a model on {offered!r} first."
    )


def check_lineage(meta: DownstreamMeta, table: pa.Table) -> None:
    """Refuse ``table`` if its ``knowledge_lineage`` is not the model's (one lineage only)."""
    if meta.knowledge_lineage is None:
        return
    if LINEAGE not in table.column_names:
        raise InputError(
            f"the {meta.arm} model needs knowledge of lineage {meta.knowledge_lineage!r}; the "
            f"table has no {LINEAGE!r} column: build it with keep.store.training_sets."
        )
    for offered in pc.unique(table.column(LINEAGE)).to_pylist():
        if offered != meta.knowledge_lineage:
            raise _refuse(meta.knowledge_lineage, str(offered), "the table")


def load_model(path: Path, *, lineage: str | None = None) -> LoadedDownstream:
    """Read a downstream checkpoint; with ``lineage``, refuse a model of a knowledge arm that
    was trained on another lineage."""
    if not path.exists():
        raise InputError(f"no downstream checkpoint at {path}: train that day first.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise InputError(
            f"downstream checkpoint {path} has format {payload.get('format')}, not "
            f"{FORMAT_VERSION}: retrain the model."
        )
    meta = DownstreamMeta.from_json(payload["meta_json"])
    if lineage is not None and meta.knowledge_lineage not in (None, lineage):
        raise _refuse(meta.knowledge_lineage, lineage, "the knowledge offered")
    model: DownstreamModel | FinetuneModel
    if meta.arm == FinetuneModel.arm:
        net = MultiTaskModel(ModelConfig.from_json(meta.config))
        model = FinetuneModel(net, pretrain_lineage=meta.pretrain_lineage or "")
    else:
        model = DownstreamModel(DownstreamConfig.from_json(meta.config), meta.arm)
    module: nn.Module = model
    module.load_state_dict(payload["model"])
    model.eval()
    return LoadedDownstream(
        model=model, meta=meta, optimizer_state=payload["optimizer"] or None, path=path
    )

"""Training and inference of every downstream arm on a day's training-set rows.

* :func:`train_on` — weighted binary cross-entropy on ``click`` (the ``weight`` column undoes
  negative down-sampling), Adam for dense weights + SparseAdam for the hashed tables
  (:class:`models.pretrain.optim.PretrainOptimizer`), mini-batches in a seeded permutation:
  the same model, table, settings and seed give the same weights. Pass the optimizer of the
  previous day to warm-start its moments too.
* :func:`predict` — click probabilities in row order, under ``torch.inference_mode``.

Both take any arm: a model provides ``batch(table)`` (the inputs it reads) and
``forward(batch) -> [B]`` logits, and the batch has ``labels`` and ``take``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from keep.core.config import DownstreamSettings
from models.pretrain.features import Labels
from models.pretrain.optim import PretrainOptimizer

PREDICT_BATCH_ROWS = 4096


class ClickBatch(Protocol):
    labels: Labels

    def take(self, index: Tensor | slice) -> Any: ...
    def __len__(self) -> int: ...


class ClickModel(Protocol):
    """What the trainer needs of an arm (DownstreamModel, FinetuneModel)."""

    training: bool

    def batch(self, table: pa.Table) -> Any: ...
    def __call__(self, batch: Any) -> Tensor: ...
    def train(self, mode: bool = True) -> Any: ...
    def sparse_parameters(self) -> list[torch.nn.Parameter]: ...
    def dense_parameters(self) -> list[torch.nn.Parameter]: ...


def weighted_bce(logits: Tensor, labels: Labels) -> Tensor:
    """Weighted mean BCE of click logits ``[B]`` against ``labels.click`` ``[B]``."""
    losses = F.binary_cross_entropy_with_logits(logits, labels.click, reduction="none")
    return (losses * labels.weight).sum() / labels.weight.sum().clamp_min(1e-12)


@dataclass
class TrainReport:
    """What one call of :func:`train_on` did; ``optimizer`` continues the next day."""

    steps: int
    rows: int
    epoch_losses: list[float] = field(default_factory=list)
    optimizer: PretrainOptimizer | None = None


def train_on(
    model: ClickModel,
    table: pa.Table,
    settings: DownstreamSettings,
    *,
    seed: int,
    epochs: int | None = None,
    optimizer: PretrainOptimizer | None = None,
) -> TrainReport:
    """Train ``model`` on ``table``'s rows for ``epochs`` (default ``settings.epochs``)."""
    torch.set_num_threads(settings.threads)
    epochs = settings.epochs if epochs is None else epochs
    optimizer = optimizer or PretrainOptimizer(model, settings)
    full = model.batch(table)
    n = len(full)
    generator = torch.Generator().manual_seed(seed)
    report = TrainReport(steps=0, rows=n, optimizer=optimizer)
    was_training = model.training
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = weight = 0.0
        for start in range(0, n, settings.batch_size):
            batch = full.take(order[start : start + settings.batch_size])
            loss = weighted_bce(model(batch), batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            report.steps += 1
            w = float(batch.labels.weight.sum())
            total += float(loss.detach()) * w
            weight += w
        report.epoch_losses.append(total / max(weight, 1e-12))
    model.train(was_training)
    return report


def predict(model: ClickModel, table: pa.Table) -> np.ndarray:
    """Click probabilities ``[N]`` (float64) of ``table``'s rows, in row order."""
    was_training = model.training
    model.train(False)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, table.num_rows, PREDICT_BATCH_ROWS):
            batch = model.batch(table.slice(start, PREDICT_BATCH_ROWS))
            out.append(torch.sigmoid(model(batch)).double().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def weighted_logloss(model: ClickModel, table: pa.Table) -> float:
    """The weighted click log loss of ``model`` on ``table`` (evaluation, no gradients)."""
    was_training = model.training
    model.train(False)
    with torch.inference_mode():
        batch = model.batch(table)
        value = float(weighted_bce(model(batch), batch.labels))
    model.train(was_training)
    return value

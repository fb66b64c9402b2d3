"""The ``finetune`` arm: the pre-trained multi-task model fine-tuned end to end downstream.

The strongest "transfer without knowledge" baseline: start from a pre-training checkpoint
(models/pretrain/checkpoint.py), then train *all* its parameters on the downstream rows'
click label (its click head). Downstream training-set rows carry every column of the
samples tables, so :func:`models.pretrain.features.sample_batch` reads them directly (the
model therefore sees the super-domain sequence and counters, as it did in pre-training).

Day 1 starts from the pre-training checkpoint (:func:`finetune_from_pretrain`); later days
warm-start from the arm's own previous version (models/downstream/checkpoint.py), never
from a newer pre-training checkpoint, like every other arm.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from torch import Tensor, nn

from keep.core.config import Settings
from models.pretrain.checkpoint import load_checkpoint
from models.pretrain.features import SampleBatch, sample_batch
from models.pretrain.multitask import ModelConfig, MultiTaskModel


class FinetuneModel(nn.Module):
    """A :class:`MultiTaskModel` whose click logit is the downstream prediction."""

    arm = "finetune"

    def __init__(self, pretrained: MultiTaskModel, *, pretrain_lineage: str = "") -> None:
        super().__init__()
        self.net = pretrained
        self.pretrain_lineage = pretrain_lineage

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    def batch(self, table: pa.Table) -> SampleBatch:
        return sample_batch(table, self.net.config.max_seq_len)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return self.net.sparse_parameters()

    def dense_parameters(self) -> list[nn.Parameter]:
        return self.net.dense_parameters()

    def forward(self, batch: SampleBatch) -> Tensor:
        """Click logits ``[B]`` (column 0 of the multi-task logits ``[B, 3]``)."""
        return self.net(batch)[:, 0]


def finetune_from_pretrain(
    settings: Settings, ds: dt.date, lineage: str | None = None
) -> FinetuneModel:
    """The ``finetune`` arm's starting point: the pre-trained model after day ``ds`` of
    ``lineage`` (None: the current pre-training lineage), in training mode."""
    loaded = load_checkpoint(settings, ds, lineage)
    model = FinetuneModel(loaded.model, pretrain_lineage=loaded.lineage)
    model.train()
    return model

"""The finetune arm: starts as the pre-trained click head, trains, and round-trips."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch

from models.downstream.checkpoint import DownstreamMeta, load_model, model_path, save_model
from models.downstream.finetune import finetune_from_pretrain
from models.downstream.trainer import predict, train_on
from models.pretrain.checkpoint import TrainingSnapshot, checkpoint_path, save_snapshot
from models.pretrain.features import sample_batch
from models.pretrain.multitask import MultiTaskModel
from models.pretrain.train import model_config
from tests.models.downstream.conftest import downstream_settings, make_training_day

DS = dt.date(2026, 1, 10)
PRETRAIN_LINEAGE = "20260101-20260101-test"


def test_finetune_from_a_pretraining_checkpoint(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    cfg = model_config(settings)
    torch.manual_seed(0)
    pretrained = MultiTaskModel(cfg)
    snapshot = TrainingSnapshot(
        model_state=pretrained.state_dict(),
        optimizer_state={},
        torch_rng=torch.get_rng_state(),
        meta={"config": cfg.to_json()},
    )
    save_snapshot(snapshot, checkpoint_path(settings, PRETRAIN_LINEAGE, DS - dt.timedelta(1)))
    table = make_training_day(settings, DS, rows=70)

    model = finetune_from_pretrain(settings, DS - dt.timedelta(1), PRETRAIN_LINEAGE)
    assert model.pretrain_lineage == PRETRAIN_LINEAGE
    with torch.no_grad():
        click = torch.sigmoid(pretrained.eval()(sample_batch(table))[:, 0]).double().numpy()
    before = predict(model, table)
    np.testing.assert_allclose(before, click, rtol=0, atol=1e-7)

    report = train_on(model, table, settings.downstream, seed=0, epochs=1)
    after = predict(model, table)
    assert not np.allclose(after, before)

    meta = DownstreamMeta(
        arm="finetune",
        config=cfg.to_json(),
        seed=0,
        train_days=[DS.isoformat()],
        pretrain_lineage=PRETRAIN_LINEAGE,
    )
    path = model_path(settings, "finetune", 0, DS)
    save_model(model, meta, path, report.optimizer)
    loaded = load_model(path, lineage="any")  # no knowledge read: no lineage pin
    np.testing.assert_array_equal(predict(loaded.model, table), after)

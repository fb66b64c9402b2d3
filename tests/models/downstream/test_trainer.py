"""Training lowers the loss on a learnable table, is seeded, and predict keeps row order."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from models.downstream.model import DownstreamConfig, build_model
from models.downstream.trainer import predict, train_on, weighted_logloss
from tests.models.downstream.conftest import downstream_settings, with_counters

DS = dt.date(2026, 1, 10)


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    table = with_counters(settings, DS, rows=400)
    model = build_model(DownstreamConfig.from_settings(settings), "keep", seed=0)
    before = weighted_logloss(model, table)
    report = train_on(model, table, settings.downstream, seed=0, epochs=4)
    assert report.steps == 4 * 7  # 400 rows / 64 per batch, 4 epochs
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert weighted_logloss(model, table) < before - 0.02


def test_training_is_deterministic_given_the_seed(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    table = with_counters(settings, DS, rows=150)
    cfg = DownstreamConfig.from_settings(settings)
    runs = []
    for seed in (0, 0, 1):
        model = build_model(cfg, "base", seed=0)
        train_on(model, table, settings.downstream, seed=seed, epochs=1)
        runs.append(predict(model, table))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # the seed orders the mini-batches


def test_predict_keeps_row_order(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    table = with_counters(settings, DS, rows=90)
    model = build_model(DownstreamConfig.from_settings(settings), "concat", seed=0)
    p = predict(model, table)
    assert p.shape == (90,) and np.all((p > 0) & (p < 1))
    reverse = pa.array(np.arange(89, -1, -1))
    np.testing.assert_allclose(predict(model, table.take(reverse)), p[::-1], rtol=0, atol=1e-6)
    with torch.no_grad():
        one = torch.sigmoid(model.eval()(model.batch(table.slice(5, 1)))).item()
    assert abs(one - p[5]) < 1e-6

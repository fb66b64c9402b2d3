"""The daily pre-training step: lineages, warm start, exact resume, held-out metrics."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest
import torch

from keep.core.config import Settings
from keep.core.errors import InputError
from models.pretrain.checkpoint import (
    checkpoint_days,
    checkpoint_path,
    current_lineage,
    load_checkpoint,
    metrics_path,
    partial_path,
    read_snapshot,
)
from models.pretrain.features import sample_columns
from models.pretrain.multitask import MultiTaskModel
from models.pretrain.train import (
    TrainingInterrupted,
    evaluate,
    model_config,
    pretrain_day,
    samples_table_uri,
)
from tests.models.pretrain.conftest import tiny_settings, write_days

D1, D2, D3 = (dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(3))


def weights(settings: Settings, ds: dt.date, lineage: str | None = None) -> dict[str, torch.Tensor]:
    return load_checkpoint(settings, ds, lineage).model.state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_daily_warm_start_continues_the_lineage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings(tmp_path)
    write_days(settings, [D1, D2, D3])
    with caplog.at_level(logging.WARNING, logger="keep.pretrain"):
        first = pretrain_day(settings, D1, progress=False)
    assert first.mode == "full_retrain" and first.new_lineage
    assert "no pre-training lineage yet" in caplog.text
    assert "click_auc" not in first.metrics  # nothing earlier to hold out

    second = pretrain_day(settings, D2, progress=False)
    assert second.mode == "warm_start" and second.lineage == first.lineage
    assert current_lineage(settings) == first.lineage
    # The held-out metrics were computed before training on D2, i.e. with D1's weights:
    # recompute them independently from D1's checkpoint; a fresh init gives other values.
    uri, cols = samples_table_uri(settings), sample_columns(settings.aggregate.windows)
    from_d1 = evaluate(load_checkpoint(settings, D1).model, uri, D2, columns=cols)
    assert second.metrics["click_logloss"] == pytest.approx(from_d1["click_logloss"], rel=1e-9)
    torch.manual_seed(settings.pretrain.seed)
    fresh = evaluate(MultiTaskModel(model_config(settings)), uri, D2, columns=cols)
    assert abs(fresh["click_logloss"] - from_d1["click_logloss"]) > 1e-3
    # Training on D2 moved the weights on from D1's.
    w1, w2 = weights(settings, D1), weights(settings, D2)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)

    third = pretrain_day(settings, D3, progress=False)
    assert third.lineage == first.lineage and checkpoint_days(settings, first.lineage) == [
        D1,
        D2,
        D3,
    ]
    # The planted signal is learned: next-day AUC well above chance on every head with signal.
    assert third.metrics["click_auc"] > 0.62
    saved = json.loads(metrics_path(settings, first.lineage, D3).read_text())
    assert saved["eval"]["click_auc"] == pytest.approx(third.metrics["click_auc"])
    assert saved["parent_ds"] == D2.isoformat()
    loaded = load_checkpoint(settings, D3)
    assert not loaded.model.training and loaded.meta["parent_ds"] == D2.isoformat()


def test_full_retrain_and_config_change_start_new_lineages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tiny_settings(tmp_path)
    write_days(settings, [D1, D2, D3])
    base = pretrain_day(settings, D1, progress=False).lineage
    retrain = pretrain_day(settings, D3, full_retrain=True, progress=False)
    assert retrain.new_lineage and retrain.lineage != base
    assert retrain.train_days == [D1, D2, D3]  # full_retrain_days = 3
    assert retrain.metrics["eval_ds"] == D3.isoformat()
    assert retrain.metrics["model_trained_through"] == D2.isoformat()
    assert current_lineage(settings) == retrain.lineage
    assert checkpoint_days(settings, base) == [D1]  # the old lineage is left as it was

    # A missing day-1 checkpoint (D1 of the new lineage) -> new lineage, clear log line.
    with caplog.at_level(logging.WARNING, logger="keep.pretrain"):
        again = pretrain_day(settings, D2, progress=False)
    assert again.new_lineage and "no checkpoint for 2026-01-01" in caplog.text

    wider = tiny_settings(tmp_path, embedding_dim=4)
    with caplog.at_level(logging.WARNING, logger="keep.pretrain"):
        changed = pretrain_day(wider, D3, progress=False)
    assert changed.new_lineage and "model config changed" in caplog.text
    assert changed.lineage.split("-")[-1] != again.lineage.split("-")[-1]


@pytest.mark.parametrize("stop_after", [13, 27])
def test_killed_run_resumes_to_identical_weights(tmp_path: Path, stop_after: int) -> None:
    """Interrupted mid-epoch (13: in the D1 phase, 27: in the D2 phase after the held-out
    evaluation) and resumed from the partial checkpoint == never interrupted."""
    straight = tiny_settings(tmp_path / "straight", epochs=2)
    broken = tiny_settings(tmp_path / "broken", epochs=2)
    for s in (straight, broken):
        write_days(s, [D1, D2])
    ref = pretrain_day(straight, D2, full_retrain=True, progress=False)

    with pytest.raises(TrainingInterrupted):
        pretrain_day(broken, D2, full_retrain=True, progress=False, stop_after_steps=stop_after)
    assert partial_path(broken, ref.lineage, D2).exists()
    assert current_lineage(broken) is None  # nothing published by the dead run
    resumed = pretrain_day(broken, D2, full_retrain=True, progress=False)
    assert resumed.lineage == ref.lineage
    assert not partial_path(broken, ref.lineage, D2).exists()
    saved = json.loads(metrics_path(broken, ref.lineage, D2).read_text())
    assert saved["train"]["resumed"] is True
    # 1200 rows / 128 = 10 steps per epoch, 2 epochs, 2 phases; the last partial checkpoint
    # was at a multiple of 5 steps, so the resumed run redid the steps after it.
    assert saved["train"]["steps"] == 40 - (stop_after // 5) * 5
    assert_same_weights(weights(straight, D2), weights(broken, D2))
    # The RNG state the next day's warm start restores is the same too (the reader draws
    # nothing from torch's global generator, however often it is restarted).
    rng = [read_snapshot(checkpoint_path(s, ref.lineage, D2)).torch_rng for s in (straight, broken)]
    assert torch.equal(*rng)
    assert resumed.metrics["click_auc"] == pytest.approx(ref.metrics["click_auc"])


def test_missing_day_is_a_clear_error(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path)
    write_days(settings, [D1], rows=200)
    with pytest.raises(InputError, match="ds=2026-01-05"):
        pretrain_day(settings, dt.date(2026, 1, 5), progress=False)
    with pytest.raises(InputError, match="no pre-training lineage"):
        load_checkpoint(settings, D1)


def test_held_out_evaluation_of_a_large_day_scores_a_fixed_uniform_sample(tmp_path: Path) -> None:
    """Above ``pretrain.eval_max_rows`` the daily step scores about that many rows, the same
    rows every time; the rates of the sample stay close to the whole day's."""
    settings = tiny_settings(tmp_path, eval_max_rows=600)
    write_days(settings, [D1, D2], rows=3000)
    pretrain_day(settings, D1, progress=False)
    second = pretrain_day(settings, D2, progress=False)
    assert 450 <= second.metrics["eval_rows"] <= 750  # 600 expected, binomial spread

    uri, cols = samples_table_uri(settings), sample_columns(settings.aggregate.windows)
    model = load_checkpoint(settings, D1).model
    again = evaluate(model, uri, D2, columns=cols, max_rows=600)
    assert again["eval_rows"] == second.metrics["eval_rows"]
    assert again["click_logloss"] == pytest.approx(second.metrics["click_logloss"], rel=1e-9)
    whole = evaluate(model, uri, D2, columns=cols)
    assert whole["eval_rows"] == 3000
    assert abs(whole["click_rate"] - again["click_rate"]) < 0.06

"""Downstream checkpoints: round trip, atomic write, knowledge of another lineage refused."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from keep.core.errors import InputError
from models.downstream.checkpoint import (
    DownstreamMeta,
    check_lineage,
    load_model,
    model_path,
    save_model,
)
from models.downstream.model import DownstreamConfig, build_model
from models.downstream.trainer import predict, train_on
from tests.models.downstream.conftest import (
    LINEAGE,
    SNAPSHOT,
    downstream_settings,
    make_training_day,
    with_counters,
)

DS = dt.date(2026, 1, 10)


def _saved_keep_model(tmp_path: Path) -> tuple[Path, pa.Table, np.ndarray]:
    settings = downstream_settings(tmp_path)
    table = with_counters(settings, DS, rows=80)
    cfg = DownstreamConfig.from_settings(settings)
    model = build_model(cfg, "keep", seed=0)
    report = train_on(model, table, settings.downstream, seed=0, epochs=1)
    meta = DownstreamMeta(
        arm="keep",
        config=cfg.to_json(),
        seed=0,
        train_days=[DS.isoformat()],
        knowledge_lineage=LINEAGE,
        snapshot_ds=SNAPSHOT.isoformat(),
    )
    path = model_path(settings, "keep", 0, DS)
    save_model(model, meta, path, report.optimizer)
    return path, table, predict(model, table)


def test_round_trip(tmp_path: Path) -> None:
    path, table, expected = _saved_keep_model(tmp_path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    loaded = load_model(path, lineage=LINEAGE)
    assert loaded.meta.knowledge_lineage == LINEAGE
    assert loaded.meta.snapshot_ds == SNAPSHOT.isoformat()
    assert loaded.meta.train_days == [DS.isoformat()]
    assert loaded.optimizer_state is not None
    np.testing.assert_array_equal(predict(loaded.model, table), expected)


def test_knowledge_of_another_lineage_is_refused(tmp_path: Path) -> None:
    path, table, _ = _saved_keep_model(tmp_path)
    with pytest.raises(
        InputError, match=f"lineage 'other-lineage'.*trained on lineage '{LINEAGE}'"
    ):
        load_model(path, lineage="other-lineage")
    meta = load_model(path).meta
    check_lineage(meta, table)  # the lineage it was trained on: fine
    settings = downstream_settings(tmp_path)
    foreign = make_training_day(settings, DS, rows=5, lineage="other-lineage")
    with pytest.raises(InputError, match="other-lineage.*" + LINEAGE):
        check_lineage(meta, foreign)


def test_a_knowledge_arm_must_record_its_lineage(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    cfg = DownstreamConfig.from_settings(settings)
    model = build_model(cfg, "concat", seed=0)
    meta = DownstreamMeta(arm="concat", config=cfg.to_json(), seed=0)
    with pytest.raises(ValueError, match="lineage"):
        save_model(model, meta, tmp_path / "m.pt")

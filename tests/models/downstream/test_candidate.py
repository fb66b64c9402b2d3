"""The downstream DAG's model work on small fake training sets (no Spark, no Feast)."""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from keep.core.config import Settings
from keep.core.tables import training_set_spec
from keep.lake import delta
from keep.store import model_registry as registry
from models.downstream import candidate, trainer
from models.downstream.checkpoint import load_model
from tests.models.downstream.conftest import LINEAGE, downstream_settings, make_training_day

D1, D2 = dt.date(2026, 1, 10), dt.date(2026, 1, 11)


def _write_days(settings: Settings, *days: dt.date, lineage: str = LINEAGE) -> None:
    spec = training_set_spec(settings.aggregate.windows)
    for ds in days:
        write_deltalake(
            str(delta.table_path(settings, spec)),
            make_training_day(settings, ds, 600, lineage=lineage),
            mode="append",
            partition_by=list(spec.partition_by),
        )


def _day(ds: dt.date, lineage: str = LINEAGE) -> dict[str, str]:
    return {
        "ds": ds.isoformat(),
        "lineage": lineage,
        "snapshot": (ds - dt.timedelta(days=1)).isoformat(),
    }


def _held_out(ids: list[str], fraction: float) -> set[str]:
    """The holdout rule computed here, independently: crc32 of the id in 1/10,000 buckets."""
    return {i for i in ids if zlib.crc32(i.encode()) % 10_000 < fraction * 10_000}


def test_candidate_never_trains_on_its_holdout_and_warm_starts_from_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = downstream_settings(tmp_path, gate_holdout_fraction=0.25)
    _write_days(settings, D1, D2)
    seen: list[set[str]] = []
    real_train_on = trainer.train_on

    def spy(model, rows: pa.Table, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(set(rows.column("impression_id").to_pylist()))
        return real_train_on(model, rows, *args, **kwargs)

    monkeypatch.setattr("models.downstream.daily.train_on", spy)
    first = candidate.train_candidate(
        settings, lineage=LINEAGE, snapshot_ds=D1.isoformat(), days=[_day(D1)], live_checkpoint=None
    )
    ids = make_training_day(settings, D1, 600).column("impression_id").to_pylist()
    held = _held_out(ids, 0.25)
    assert first["holdout_rows"] == len(held) and 100 < len(held) < 200
    assert seen and all(not (rows & held) for rows in seen)  # keep and base
    assert all(rows == set(ids) - held for rows in seen)

    evaluation = candidate.evaluate_candidate(
        settings, first, live_checkpoint=None, live_lineage=None
    )
    assert evaluation["candidate"]["rows"] == len(held) and evaluation["candidate"]["finite"]
    assert evaluation["live"] is None and evaluation["base"]["rows"] == len(held)

    live = registry.register(
        settings,
        "ads",
        Path(first["checkpoint"]),
        arm="keep",
        lineage=LINEAGE,
        snapshot_ds=D1.isoformat(),
        train_days=first["train_days"],
        metrics={},
        gate={"success": True},
    )
    second = candidate.train_candidate(
        settings,
        lineage=LINEAGE,
        snapshot_ds=D2.isoformat(),
        days=[_day(D2)],
        live_checkpoint=live.checkpoint,
    )
    model = load_model(Path(second["checkpoint"]), lineage=LINEAGE)
    assert model.meta.train_days == [D1.isoformat(), D2.isoformat()]  # continued the live one
    assert second["progressive"]["keep"]["held_out"] is True
    # The live version is scored on the same held-out impressions of the newest day.
    evaluation = candidate.evaluate_candidate(
        settings, second, live_checkpoint=live.checkpoint, live_lineage=LINEAGE
    )
    assert evaluation["live"]["rows"] == evaluation["candidate"]["rows"]


def test_a_new_lineage_is_switched_to_after_training(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    _write_days(settings, D1)
    trained = candidate.train_candidate(
        settings, lineage="NEW", snapshot_ds=D1.isoformat(), days=[_day(D1)], live_checkpoint=None
    )
    # A first model has nothing to switch; train again from it under a new lineage.
    _write_days(settings, D2)
    first = registry.register(
        settings,
        "ads",
        Path(trained["trained_checkpoint"]),
        arm="keep",
        lineage=LINEAGE,
        snapshot_ds=D1.isoformat(),
        train_days=[D1.isoformat()],
        metrics={},
        gate={"success": True},
    )
    switched = candidate.train_candidate(
        settings,
        lineage="NEW",
        snapshot_ds=D2.isoformat(),
        days=[_day(D2)],
        live_checkpoint=first.checkpoint,
    )
    # No knowledge snapshots on disk to fit a rotation on: the plug-in restarts (reinit).
    assert switched["lineage_switch"] == "reinit"
    assert load_model(Path(switched["trained_checkpoint"])).meta.knowledge_lineage == LINEAGE
    assert load_model(Path(switched["checkpoint"])).meta.knowledge_lineage == "NEW"

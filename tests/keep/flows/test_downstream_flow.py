"""The downstream DAG's plan: one version per knowledge snapshot, never two."""

from __future__ import annotations

from pathlib import Path

import pytest

from keep.core.errors import InputError
from keep.flows import downstream
from keep.store import model_registry as registry
from tests.conftest import make_settings

EVENT = {"lineage": "L1", "snapshot_ds": "2026-01-03", "slot": "blue"}


def test_the_newest_event_of_a_run_is_processed() -> None:
    older = {"lineage": "L1", "snapshot_ds": "2026-01-02"}
    assert downstream.newest_event([EVENT, older]) == EVENT
    with pytest.raises(InputError, match="no knowledge event"):
        downstream.newest_event([{}])


def test_a_snapshot_is_trained_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    # Nothing registered: the plan goes ahead (and refuses a day without samples).
    with pytest.raises(InputError, match="has no rows for 2026-01-03"):
        downstream.plan(settings, [EVENT])
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"w")
    registry.register(
        settings,
        "ads",
        checkpoint,
        arm="keep",
        lineage="L1",
        snapshot_ds="2026-01-03",
        train_days=["2026-01-03"],
        metrics={},
        gate={"success": True},
    )
    assert downstream.plan(settings, [EVENT]) is None  # a re-publication: nothing to do
    # An older snapshot than what the live version was trained through: nothing to do.
    assert downstream.plan(settings, [{"lineage": "L1", "snapshot_ds": "2026-01-02"}]) is None


def test_a_rejected_candidate_is_not_retrained_unless_forced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    registry.record_attempt(settings, "ads", "L1", "2026-01-03", {"status": "rejected", "gate": {}})
    assert downstream.plan(settings, [EVENT]) is None
    with pytest.raises(InputError, match="has no rows"):
        downstream.plan(settings, [EVENT], force=True)


def test_task_results_are_strict_json() -> None:
    assert downstream.json_safe({"a": [float("nan"), 1.0], "b": float("inf")}) == {
        "a": [None, 1.0],
        "b": None,
    }

"""The downstream model registry: versions, the live pointer, promotion and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deltalake import DeltaTable

from keep.core.config import Settings
from keep.core.errors import InputError, KeepError
from keep.store import model_registry as registry
from tests.conftest import make_settings

PASSED = {"success": True, "summary": "ok", "checks": []}


def _checkpoint(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.pt"
    path.write_bytes(f"weights of {name}".encode())
    return path


def _register(
    settings: Settings, tmp_path: Path, snapshot: str, lineage: str = "L1"
) -> registry.ModelVersion:
    return registry.register(
        settings,
        "ads",
        _checkpoint(tmp_path, snapshot),
        arm="keep",
        lineage=lineage,
        snapshot_ds=snapshot,
        train_days=[snapshot],
        metrics={
            "holdout": {
                "candidate": {"auc": 0.71, "calibration": 1.02, "rows": 50.0, "clicks": 9.0}
            }
        },
        gate=PASSED,
    )


def test_versions_live_pointer_promote_and_rollback(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    assert registry.versions(settings) == [] and registry.live(settings, "ads") is None
    v1 = _register(settings, tmp_path, "2026-01-02")
    v2 = _register(settings, tmp_path, "2026-01-03")
    assert (v1.version, v2.version) == (1, 2)
    assert registry.live(settings, "ads").version == 2  # type: ignore[union-attr]
    # The version's files: an immutable copy of the checkpoint, a card naming its knowledge.
    assert Path(v2.checkpoint).read_bytes() == b"weights of 2026-01-03"
    card = (Path(v2.checkpoint).parent / "card.md").read_text()
    assert "lineage `L1`, snapshot 2026-01-03" in card and "0.7100" in card
    # The table of record, read independently with delta-rs.
    rows = DeltaTable(str(settings.lake.root / "registry" / "downstream_models")).to_pyarrow_table()
    assert sorted(
        zip(rows["version"].to_pylist(), rows["snapshot_ds"].to_pylist(), strict=True)
    ) == [
        (1, "2026-01-02"),
        (2, "2026-01-03"),
    ]
    assert [v.live for v in registry.versions(settings, "ads")] == [False, True]

    assert registry.rollback(settings, "ads").version == 1
    assert registry.live(settings, "ads").version == 1  # type: ignore[union-attr]
    with pytest.raises(KeepError, match="no earlier live version"):
        registry.rollback(settings, "ads")
    assert registry.promote(settings, "ads", 2).live
    assert (
        json.loads((settings.downstream.registry_root / "ads" / "LIVE.json").read_text())["live"]
        == 2
    )
    with pytest.raises(InputError, match="no registered version v7"):
        registry.promote(settings, "ads", 7)


def test_registration_is_idempotent_per_snapshot_and_needs_a_passed_gate(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = _register(settings, tmp_path, "2026-01-02")
    again = _register(settings, tmp_path, "2026-01-02")
    assert again.version == first.version
    assert len(registry.versions(settings, "ads")) == 1
    # Another lineage's snapshot of the same day is another version.
    assert _register(settings, tmp_path, "2026-01-02", lineage="L2").version == 2
    with pytest.raises(InputError, match="gate did not pass"):
        registry.register(
            settings,
            "ads",
            _checkpoint(tmp_path, "bad"),
            arm="keep",
            lineage="L1",
            snapshot_ds="2026-01-09",
            train_days=["2026-01-09"],
            metrics={},
            gate={"success": False, "summary": "model gate FAILED"},
        )
    assert len(registry.versions(settings, "ads")) == 2


def test_a_registration_that_crashed_before_its_row_is_redone(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    _register(settings, tmp_path, "2026-01-02")
    orphan = registry.version_dir(settings, "ads", 2)  # files written, row never appended
    orphan.mkdir(parents=True)
    (orphan / "model.pt").write_bytes(b"half")
    v = _register(settings, tmp_path, "2026-01-03")
    assert v.version == 2 and Path(v.checkpoint).read_bytes() == b"weights of 2026-01-03"
    assert registry.live(settings, "ads").version == 2  # type: ignore[union-attr]

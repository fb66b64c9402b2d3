"""The model gate's checks on hand-made evaluations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from keep.quality.model_gate import check_candidate
from tests.conftest import make_settings


def _evaluation(
    auc: float = 0.70,
    live_auc: float | None = 0.70,
    clicks: float = 40.0,
    calibration: float = 1.0,
    finite: bool = True,
) -> dict:
    live = None if live_auc is None else {"auc": live_auc, "clicks": clicks, "finite": True}
    return {
        "candidate": {"auc": auc, "calibration": calibration, "clicks": clicks, "finite": finite},
        "live": live,
        "live_note": "no live version yet" if live is None else "scored",
    }


def _failed(
    tmp_path: Path, evaluation: dict, lineage: str = "L1", live_lineage: str | None = "L1"
) -> list[str]:
    settings = make_settings(tmp_path, downstream={"gate_auc_margin": 0.02, "gate_min_clicks": 20})
    report = check_candidate(
        settings,
        evaluation,
        subject="ads",
        candidate_lineage=lineage,
        live_knowledge_lineage=live_lineage,
    )
    assert report.success == (not [c for c in report.checks if not c.success])
    return [c.name for c in report.checks if not c.success]


def test_a_good_candidate_passes(tmp_path: Path) -> None:
    assert _failed(tmp_path, _evaluation(auc=0.69, live_auc=0.70)) == []  # within the margin
    assert _failed(tmp_path, _evaluation(live_auc=None)) == []  # nothing live to compare with


@pytest.mark.parametrize(
    ("evaluation", "lineage", "live_lineage", "failed"),
    [
        (_evaluation(auc=0.67, live_auc=0.70), "L1", "L1", ["auc_vs_live"]),
        (_evaluation(calibration=2.5), "L1", "L1", ["calibration"]),
        (_evaluation(calibration=math.nan), "L1", "L1", ["calibration"]),
        (_evaluation(finite=False), "L1", "L1", ["finite"]),
        (_evaluation(), "L1", "L2", ["lineage"]),
        (_evaluation(), "L1", None, ["lineage"]),
    ],
)
def test_each_check_fails_on_its_own(
    tmp_path: Path, evaluation: dict, lineage: str, live_lineage: str | None, failed: list[str]
) -> None:
    assert _failed(tmp_path, evaluation, lineage, live_lineage) == failed


def test_few_clicks_are_reported_not_gated(tmp_path: Path) -> None:
    assert _failed(tmp_path, _evaluation(auc=0.50, live_auc=0.80, clicks=5, calibration=3.0)) == []

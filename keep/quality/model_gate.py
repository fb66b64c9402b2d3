"""The model gate: may a candidate downstream model replace the live version?

Checks, on the held-out rows of the newest labelled day (models/downstream/candidate.py):

* ``finite`` -- every score of the candidate is a probability (no NaN, no inf);
* ``auc_vs_live`` -- its AUC is at most ``downstream.gate_auc_margin`` below the live
  version's on the same impressions (passes when there is no live version to compare);
* ``calibration`` -- predicted / observed clicks within ``downstream.gate_calibration_bounds``;
* ``lineage`` -- the knowledge lineage the registered file is pinned to is the lineage live
  in the online store, so it will never be served knowledge of another lineage.

With fewer than ``downstream.gate_min_clicks`` clicks in the holdout, AUC and calibration
are reported but not gated: on a handful of clicks their noise, not the model, would decide.
A failed gate is deterministic: the DAG fails the task at once, without retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from keep.core.config import Settings


@dataclass
class Check:
    name: str
    success: bool
    detail: str


@dataclass
class ModelGateReport:
    subject: str
    checks: list[Check] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks)

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.success]
        if not failed:
            return f"model gate passed for {self.subject} ({len(self.checks)} checks)"
        return f"model gate FAILED for {self.subject}: " + "; ".join(
            f"{c.name}: {c.detail}" for c in failed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "success": self.success,
            "summary": self.summary(),
            "checks": [c.__dict__ for c in self.checks],
        }


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def check_candidate(
    settings: Settings,
    evaluation: dict[str, Any],
    *,
    subject: str,
    candidate_lineage: str,
    live_knowledge_lineage: str | None,
) -> ModelGateReport:
    """Gate ``evaluation`` (:func:`models.downstream.candidate.evaluate_candidate`'s result)."""
    d = settings.downstream
    report = ModelGateReport(subject)
    cand = evaluation["candidate"]
    live = evaluation.get("live")
    report.checks.append(
        Check(
            "finite",
            bool(cand.get("finite")),
            "every score is a probability" if cand.get("finite") else "NaN, inf or out of [0, 1]",
        )
    )
    clicks = _num(cand.get("clicks"))
    enough = clicks >= d.gate_min_clicks
    auc = _num(cand.get("auc"))
    if live is None:
        report.checks.append(
            Check("auc_vs_live", True, f"AUC {auc:.4f}; {evaluation.get('live_note', 'no live')}")
        )
    else:
        live_auc = _num(live.get("auc"))
        ok = auc >= live_auc - d.gate_auc_margin
        detail = f"AUC {auc:.4f} vs live {live_auc:.4f} (margin {d.gate_auc_margin})"
        if not enough:
            ok, detail = True, f"{detail}; not gated: {clicks:.0f} clicks < {d.gate_min_clicks}"
        report.checks.append(Check("auc_vs_live", bool(ok), detail))
    calib = _num(cand.get("calibration"))
    low, high = d.gate_calibration_bounds
    ok = low <= calib <= high
    detail = f"predicted/observed {calib:.3f}, bounds [{low}, {high}]"
    if not enough:
        ok, detail = True, f"{detail}; not gated: {clicks:.0f} clicks < {d.gate_min_clicks}"
    report.checks.append(Check("calibration", bool(ok), detail))
    same = live_knowledge_lineage is not None and candidate_lineage == live_knowledge_lineage
    report.checks.append(
        Check(
            "lineage",
            same,
            f"pinned to {candidate_lineage}; live knowledge lineage {live_knowledge_lineage}",
        )
    )
    return report

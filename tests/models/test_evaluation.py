"""Quality metrics and the quality report, against hand-computed values and pair counting."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math

import numpy as np
import pytest

from models.evaluation import (
    auc,
    calibration,
    gap_closed,
    gauc,
    logloss,
    mean_ci95,
    relaimpr,
    summarise_arms,
)

# Student t quantiles t(0.975, df) from a printed table.
T975 = {1: 12.7062, 2: 4.3027}


def brute_auc(y: list[int], s: list[float], w: list[float] | None = None) -> float:
    """Weighted share of (click, non-click) pairs ordered right; a tie counts one half."""
    w = w or [1.0] * len(y)
    won = total = 0.0
    for i, j in itertools.product(range(len(y)), repeat=2):
        if y[i] == 1 and y[j] == 0:
            pair = w[i] * w[j]
            total += pair
            won += pair * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return won / total


def brute_gauc(u: list[str], y: list[int], s: list[float], w: list[float] | None = None) -> float:
    w = w or [1.0] * len(y)
    num = den = 0.0
    for user in sorted(set(u)):
        idx = [k for k in range(len(u)) if u[k] == user]
        labels = [y[k] for k in idx]
        if len(set(labels)) < 2:
            continue
        weight = sum(w[k] for k in idx)
        num += weight * brute_auc(labels, [s[k] for k in idx], [w[k] for k in idx])
        den += weight
    return num / den


def test_auc_hand_computed() -> None:
    # Pairs (click, non-click): (.9,.8) right, (.9,.1) right, (.3,.8) wrong, (.3,.1) right.
    assert auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(3 / 4)
    # Weights 2 on the first click: right pairs weigh 2 + 2 + 1 out of 2 + 2 + 1 + 1.
    assert auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1], [2, 1, 1, 1]) == pytest.approx(5 / 6)
    assert math.isnan(auc([0, 0, 0], [0.1, 0.2, 0.3]))


def test_auc_matches_pair_counting_with_ties_and_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60).tolist()
    s = (rng.integers(0, 5, 60) / 4).tolist()  # many ties
    w = rng.uniform(0.5, 2.0, 60).tolist()
    assert auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert auc(y, s, w) == pytest.approx(brute_auc(y, s, w), abs=1e-12)


def test_gauc_hand_computed() -> None:
    users = ["a", "a", "b", "b", "b", "c", "c"]
    y = [1, 0, 1, 0, 0, 0, 0]
    p = [0.6, 0.4, 0.2, 0.5, 0.1, 0.9, 0.3]
    # a: AUC 1 over 2 impressions; b: (.2 < .5) wrong, (.2 > .1) right -> 0.5 over 3;
    # c has no click and is left out.
    assert gauc(users, y, p) == pytest.approx((2 * 1.0 + 3 * 0.5) / 5)
    assert math.isnan(gauc(["a", "b"], [1, 0], [0.5, 0.5]))


def test_gauc_matches_pair_counting_per_user() -> None:
    rng = np.random.default_rng(7)
    n = 150
    u = [f"u{k}" for k in rng.integers(0, 12, n)]
    y = rng.integers(0, 2, n).tolist()
    s = (rng.integers(0, 4, n) / 3).tolist()
    w = rng.uniform(0.5, 2.0, n).tolist()
    assert gauc(u, y, s) == pytest.approx(brute_gauc(u, y, s), abs=1e-12)
    assert gauc(u, y, s, w) == pytest.approx(brute_gauc(u, y, s, w), abs=1e-12)
    # One user alone: GAUC is that user's AUC.
    assert gauc(["x"] * n, y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)


def test_logloss_weighted_and_clipped() -> None:
    assert logloss([1, 0], [0.8, 0.4], [1.0, 3.0]) == pytest.approx(
        (-math.log(0.8) - 3 * math.log(0.6)) / 4
    )
    assert logloss([1, 1], [0.0, 1.0]) == pytest.approx(-math.log(1e-7) / 2)


def test_calibration() -> None:
    assert calibration([1, 0, 0, 0], [0.5, 0.25, 0.25, 0.0]) == pytest.approx(1.0)
    assert calibration([1, 0, 0, 0], [0.5] * 4) == pytest.approx(2.0)  # 0.5 vs CTR 0.25
    # Weighted: predicted (0.3 + 3 * 0.1) / 4 = 0.15, observed 1 / 4.
    assert calibration([1, 0], [0.3, 0.1], [1, 3]) == pytest.approx(0.6)
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))


def test_relaimpr_and_gap_closed() -> None:
    assert relaimpr(0.75, 0.70) == pytest.approx(0.25)
    assert relaimpr(0.70, 0.70) == 0.0
    assert gap_closed(0.72, 0.70, 0.80) == pytest.approx(0.2)


def test_mean_ci95_student_t() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # sd 1, n 3
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(T975[2] / math.sqrt(3), rel=1e-4)
    mean, half = mean_ci95([0.0, 2.0])  # sd sqrt(2), sem 1
    assert (mean, half) == (pytest.approx(1.0), pytest.approx(T975[1], rel=1e-4))
    mean, half = mean_ci95([0.5])
    assert mean == 0.5 and math.isnan(half)


DAYS = ["2026-01-02", "2026-01-03", "2026-01-04"]


def _runs(aucs: dict[int, list[float]], calib: dict[int, float]) -> dict:
    return {
        seed: {
            day: {"auc": a, "gauc": a - 0.05, "logloss": 0.3, "calibration": calib[seed]}
            for day, a in zip(DAYS, values, strict=True)
        }
        for seed, values in aucs.items()
    }


def _per_seed() -> dict:
    return {
        "base": _runs({0: [0.60, 0.62, 0.64], 1: [0.62, 0.62, 0.62]}, {0: 1.0, 1: 1.0}),
        "keep": _runs({0: [0.66, 0.68, 0.70], 1: [0.70, 0.70, 0.70]}, {0: 1.0, 1: 1.2}),
    }


ORACLE = {"2026-01-02": 0.80, "2026-01-03": 0.80, "2026-01-04": 0.83}


def test_summarise_arms_hand_computed() -> None:
    report = summarise_arms(
        _per_seed(),
        ORACLE,
        switch_ds="2026-01-03",
        noop_at_init_max_abs_diff=0.0,
        grid={"lr": [1e-3, 3e-3]},
    )
    json.dumps(report, allow_nan=False)  # valid JSON: no NaN anywhere
    assert report["days"] == DAYS and report["seeds"] == [0, 1]
    assert report["switch_ds"] == "2026-01-03"
    base, keep = report["arms"]["base"], report["arms"]["keep"]
    # Seed means: base .62 / .62, keep .68 / .70; oracle mean .81.
    assert base["auc"] == pytest.approx(0.62) and base["auc_ci95"] == pytest.approx(0.0)
    assert keep["auc"] == pytest.approx(0.69)
    assert keep["auc_ci95"] == pytest.approx(T975[1] * 0.01, rel=1e-4)  # sem of (.68, .70)
    assert keep["gauc"] == pytest.approx(0.64)
    assert keep["logloss"] == pytest.approx(0.3)
    assert keep["calibration"] == pytest.approx(1.1)
    assert keep["relaimpr"] == pytest.approx(0.19 / 0.12 - 1)
    assert base["relaimpr"] == 0.0
    day = keep["by_day"]["2026-01-02"]
    assert day["auc"] == pytest.approx(0.68)
    assert day["auc_ci95"] == pytest.approx(T975[1] * 0.02, rel=1e-4)
    assert day["gauc"] == pytest.approx(0.63)
    assert day["calibration"] == pytest.approx(1.1)
    assert report["oracle"]["auc"] == pytest.approx(0.81)
    assert report["oracle"]["by_day"]["2026-01-04"] == {"auc": 0.83}
    # Per seed: (.68 - .62) / .19 and (.70 - .62) / .19.
    assert report["gap_closed"] == pytest.approx(0.07 / 0.19)
    assert report["gap_closed_ci95"] == pytest.approx(T975[1] * 0.01 / 0.19, rel=1e-4)
    # Only 2026-01-04 is after the switch.
    assert report["after_switch"] == {
        "base": pytest.approx(0.63),
        "keep": pytest.approx(0.70),
    }
    assert report["noop_at_init_max_abs_diff"] == 0.0
    assert report["grid"] == {"lr": [1e-3, 3e-3]}
    assert report["pretrain_vs_references"] is None


def test_summarise_arms_one_seed_no_switch_date_keys() -> None:
    per_seed = {
        arm: {0: {dt.date.fromisoformat(d): m for d, m in runs[0].items()}}
        for arm, runs in _per_seed().items()
    }
    report = summarise_arms(per_seed, {dt.date.fromisoformat(d): v for d, v in ORACLE.items()})
    assert report["days"] == DAYS and report["switch_ds"] is None
    assert report["after_switch"] == {}
    assert report["arms"]["keep"]["auc_ci95"] is None  # one seed: no interval
    assert report["gap_closed"] == pytest.approx(0.06 / 0.19)
    assert report["gap_closed_ci95"] is None
    json.dumps(report, allow_nan=False)


def test_summarise_arms_refuses_unequal_protocols() -> None:
    per_seed = _per_seed()
    del per_seed["keep"][1]["2026-01-04"]
    with pytest.raises(ValueError, match="does not cover the days"):
        summarise_arms(per_seed, ORACLE)
    per_seed = _per_seed()
    del per_seed["keep"][1]
    with pytest.raises(ValueError, match="seeds"):
        summarise_arms(per_seed, ORACLE)
    with pytest.raises(ValueError, match="no oracle"):
        summarise_arms(_per_seed(), {"2026-01-02": 0.8})

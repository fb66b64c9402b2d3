"""Offline quality of the downstream arms: metrics, intervals over seeds, the quality report.

The comparison protocol (docs: DESIGN.md, "Honest comparison") scores every arm with
progressive validation: each day is scored by the model trained through the day before,
once per seed. This module turns those scores into the numbers the report shows:

- per-impression metrics of one day: ``auc``, ``gauc`` (per-user AUC, the paper's metric
  for a feed where users differ in base rate), ``logloss`` and ``calibration``;
- comparisons of arms: ``relaimpr`` (the paper's RelaImpr) and ``gap_closed`` (the share of
  the base → oracle AUC gap an arm closes; the oracle is the generator's true probability);
- ``mean_ci95``: mean and 95% half-width over seeds (Student t);
- ``summarise_arms``: the whole quality report (``reports/bench/quality.json``), rendered to
  HTML by ``keep report``.

Torch-free on purpose (numpy, scipy, scikit-learn): the report can be rebuilt anywhere.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import log_loss, roc_auc_score

# Probabilities are clipped before the log so one confident mistake costs a bounded loss.
LOGLOSS_EPS = 1e-7
# The per-day metrics a scored arm provides for each (seed, day).
DAY_METRICS = ("auc", "gauc", "logloss", "calibration")

Day = str | dt.date
PerSeed = Mapping[str, Mapping[int, Mapping[Day, Mapping[str, float]]]]


def _arrays(y: Any, p: Any, w: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    labels = np.asarray(y, dtype=np.float64).ravel()
    scores = np.asarray(p, dtype=np.float64).ravel()
    weights = None if w is None else np.asarray(w, dtype=np.float64).ravel()
    if len(labels) != len(scores) or (weights is not None and len(weights) != len(labels)):
        raise ValueError("labels, scores and weights must have the same length")
    return (labels > 0.5).astype(np.int8), scores, weights


def auc(y: Any, p: Any, w: Any | None = None) -> float:
    """Area under the ROC curve (ties count one half), optionally sample-weighted.

    NaN when only one class is present: AUC is undefined there.
    """
    labels, scores, weights = _arrays(y, p, w)
    if labels.min(initial=1) == labels.max(initial=0):
        return math.nan
    return float(roc_auc_score(labels, scores, sample_weight=weights))


def gauc(users: Any, y: Any, p: Any, w: Any | None = None) -> float:
    """Group AUC: each user's AUC, averaged with the user's impression count as weight.

    With sample weights a user's weight is the sum of its impressions' weights. Users with
    only clicks or only non-clicks have no AUC and are left out. NaN when no user has both.

    Vectorised (one sort, no loop over users): a day has far more users than a per-user
    ``roc_auc_score`` call (about 1 ms each) can afford. Each user's AUC is the weighted
    Mann-Whitney statistic: for every click, the non-click weight scored below it, plus half
    the non-click weight tied with it, over (click weight x non-click weight).
    """
    labels, scores, weights = _arrays(y, p, w)
    keys = np.asarray(users).ravel()
    if len(keys) != len(labels):
        raise ValueError("users and labels must have the same length")
    if len(keys) == 0:
        return math.nan
    ww = np.ones_like(scores) if weights is None else weights
    _, user = np.unique(keys, return_inverse=True)
    order = np.lexsort((scores, user))  # by user, then by score
    u, s = user[order], scores[order]
    pos_w = (ww * labels)[order]
    neg_w = (ww * (1 - labels))[order]
    # Blocks of equal (user, score): ties inside a block count one half.
    block = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (s[1:] != s[:-1])])
    block_user = u[block]
    block_pos = np.add.reduceat(pos_w, block)
    block_neg = np.add.reduceat(neg_w, block)
    # Non-click weight of the same user in the blocks below: a cumulative sum restarted
    # at each user's first block.
    cum_neg = np.cumsum(block_neg)
    first = np.flatnonzero(np.r_[True, block_user[1:] != block_user[:-1]])
    before_user = np.repeat(np.r_[0.0, cum_neg[first[1:] - 1]], np.diff(np.r_[first, len(block)]))
    neg_below = cum_neg - block_neg - before_user
    wins = np.add.reduceat(block_pos * (neg_below + 0.5 * block_neg), first)
    user_pos = np.add.reduceat(block_pos, first)
    user_neg = np.add.reduceat(block_neg, first)
    both = (user_pos > 0) & (user_neg > 0)
    if not both.any():
        return math.nan
    user_auc = wins[both] / (user_pos[both] * user_neg[both])
    impressions = (user_pos + user_neg)[both]
    return float((user_auc * impressions).sum() / impressions.sum())


def logloss(y: Any, p: Any, w: Any | None = None) -> float:
    """(Weighted) mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    labels, scores, weights = _arrays(y, p, w)
    if len(labels) == 0:
        return math.nan
    clipped = np.clip(scores, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    return float(log_loss(labels, clipped, sample_weight=weights, labels=[0, 1]))


def calibration(y: Any, p: Any, w: Any | None = None) -> float:
    """Predicted CTR / observed CTR (1 is calibrated, > 1 over-predicts clicks).

    NaN when nothing was clicked (the observed CTR is zero).
    """
    labels, scores, weights = _arrays(y, p, w)
    ww = np.ones_like(scores) if weights is None else weights
    observed = float((labels * ww).sum())
    if observed <= 0:
        return math.nan
    return float((scores * ww).sum()) / observed


def relaimpr(auc_model: float, auc_base: float) -> float:
    """RelaImpr (the paper's metric): relative improvement of AUC above random (0.5)."""
    return (auc_model - 0.5) / (auc_base - 0.5) - 1.0


def gap_closed(auc_arm: float, auc_base: float, auc_oracle: float) -> float:
    """Share of the gap from the base arm to the oracle that an arm closes (1 = oracle)."""
    return (auc_arm - auc_base) / (auc_oracle - auc_base)


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (Student t, n - 1 degrees of freedom).

    The half-width is NaN for fewer than two values: one seed says nothing about spread.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, float(stats.t.ppf(0.975, len(x) - 1)) * sem


def _iso(day: Day) -> str:
    return day.isoformat() if isinstance(day, dt.date) else dt.date.fromisoformat(day).isoformat()


def _json_number(x: float | None) -> float | None:
    """JSON has no NaN: an undefined number (one seed's interval, no clicks) is null."""
    return None if x is None or not math.isfinite(x) else float(x)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def summarise_arms(
    per_seed: PerSeed,
    oracle_by_day: Mapping[Day, float],
    base_arm: str = "base",
    switch_ds: Day | None = None,
    *,
    keep_arm: str = "keep",
    noop_at_init_max_abs_diff: float | None = None,
    pretrain_vs_references: Any = None,
    grid: Any = None,
) -> dict[str, Any]:
    """The quality report (``reports/bench/quality.json``) from every arm's daily scores.

    ``per_seed[arm][seed][day]`` holds that day's ``auc``, ``gauc``, ``logloss`` and
    ``calibration``; every arm must cover the same seeds and days (same protocol for all).
    ``oracle_by_day[day]`` is the oracle AUC of that day. Means are over days and seeds;
    intervals are over seeds (each seed's mean over days, or that day's value per seed).
    ``after_switch`` averages the days strictly after ``switch_ds`` (the lineage switch).
    The last three arguments are passed through. Undefined numbers are ``None``.
    """
    if base_arm not in per_seed:
        raise ValueError(f"base arm {base_arm!r} not among the arms {sorted(per_seed)}")
    seeds = sorted(per_seed[base_arm])
    days = sorted({_iso(d) for runs in per_seed[base_arm].values() for d in runs})
    if not seeds or not days:
        raise ValueError("the base arm has no scored seed or day")
    # table[arm][seed][day][metric], days as ISO strings; checks the protocol is shared.
    table: dict[str, dict[int, dict[str, Mapping[str, float]]]] = {}
    for arm, runs in per_seed.items():
        if sorted(runs) != seeds:
            raise ValueError(f"arm {arm!r} has seeds {sorted(runs)}, the base arm {seeds}")
        table[arm] = {}
        for seed, seed_days in runs.items():
            scored = {_iso(d): metrics for d, metrics in seed_days.items()}
            if sorted(scored) != days:
                raise ValueError(f"arm {arm!r} seed {seed} does not cover the days {days}")
            for day, metrics in scored.items():
                missing = [m for m in DAY_METRICS if m not in metrics]
                if missing:
                    raise ValueError(f"arm {arm!r} seed {seed} day {day} lacks {missing}")
            table[arm][seed] = scored
    oracle = {_iso(d): float(v) for d, v in oracle_by_day.items()}
    if missing_days := [d for d in days if d not in oracle]:
        raise ValueError(f"no oracle AUC for {missing_days}")
    oracle_auc = _mean([oracle[d] for d in days])

    def seed_mean(arm: str, seed: int, metric: str) -> float:
        return _mean([table[arm][seed][d][metric] for d in days])

    arms: dict[str, dict[str, Any]] = {}
    for arm in table:
        auc_mean, auc_ci = mean_ci95([seed_mean(arm, s, "auc") for s in seeds])
        summary: dict[str, Any] = {"auc": auc_mean, "auc_ci95": auc_ci}
        for metric in DAY_METRICS[1:]:
            summary[metric] = _mean([seed_mean(arm, s, metric) for s in seeds])
        by_day: dict[str, dict[str, float | None]] = {}
        for d in days:
            day_auc, day_ci = mean_ci95([table[arm][s][d]["auc"] for s in seeds])
            row = {"auc": day_auc, "auc_ci95": day_ci}
            for metric in DAY_METRICS[1:]:
                row[metric] = _mean([table[arm][s][d][metric] for s in seeds])
            by_day[d] = {k: _json_number(v) for k, v in row.items()}
        summary = {k: _json_number(v) for k, v in summary.items()}
        summary["by_day"] = by_day
        arms[arm] = summary
    base_auc = arms[base_arm]["auc"]
    for summary in arms.values():
        defined = summary["auc"] is not None and base_auc is not None
        summary["relaimpr"] = _json_number(relaimpr(summary["auc"], base_auc) if defined else None)

    gap: tuple[float | None, float | None] = (None, None)
    if keep_arm in table:
        per_seed_gap = [
            gap_closed(seed_mean(keep_arm, s, "auc"), seed_mean(base_arm, s, "auc"), oracle_auc)
            for s in seeds
        ]
        gap_mean, gap_ci = mean_ci95(per_seed_gap)
        gap = (_json_number(gap_mean), _json_number(gap_ci))

    after_switch: dict[str, float | None] = {}
    switch = None if switch_ds is None else _iso(switch_ds)
    if switch is not None:
        later = [d for d in days if d > switch]
        for arm in table:
            values = [table[arm][s][d]["auc"] for s in seeds for d in later]
            after_switch[arm] = _json_number(_mean(values))

    return {
        "days": days,
        "seeds": seeds,
        "switch_ds": switch,
        "arms": arms,
        "oracle": {
            "auc": _json_number(oracle_auc),
            "by_day": {d: {"auc": _json_number(oracle[d])} for d in days},
        },
        "gap_closed": gap[0],
        "gap_closed_ci95": gap[1],
        "after_switch": after_switch,
        "noop_at_init_max_abs_diff": _json_number(noop_at_init_max_abs_diff),
        "pretrain_vs_references": pretrain_vs_references,
        "grid": grid,
    }

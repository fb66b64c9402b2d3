"""Simple references for the pre-training model's held-out click AUC (docs/pretrain.md).

Pre-training is worth plugging only if it learns more than simple counts. Two references
score day ``d``'s samples from what was known before ``d`` (the samples' counters are the
state as of the end of ``d - 1``; fitting uses only earlier days' samples):

* :func:`smoothed_rate_scores` -- the user's and the item's smoothed click rates over the
  longest counter window, combined as independent evidence:
  ``logit(user rate) + logit(item rate) - logit(prior)``. The prior is *fitted*: the
  weighted click rate of the training days (a fixed prior distorts every world whose base
  rate is far from it), with the aggregation's ``prior_strength`` as pseudo-impressions.
* :func:`counter_logreg_scores` -- a logistic regression (scikit-learn) on the same inputs
  the model gets besides ids and sequences: every user / item / user x category counter
  (``log1p``), the smoothed rates recomputed with the fitted prior (logit), the subsystem
  (one-hot) and the position (``log1p``), fitted on the training days.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keep.core.tables import COUNTERS, STAT_PREFIX

_EPS = 1e-6


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(
        pc.fill_null(table.column(name), 0).to_numpy(zero_copy_only=False), dtype=np.float64
    )


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


def fitted_prior(train: pa.Table) -> float:
    """The weighted click rate of the training rows (the smoothing prior)."""
    clicks, weights = _column(train, "click"), _column(train, "weight")
    return float(np.clip((clicks * weights).sum() / max(weights.sum(), _EPS), _EPS, 1 - _EPS))


def smoothed_rate(
    table: pa.Table, entity: str, window: int, prior: float, strength: float
) -> np.ndarray:
    """(clicks + strength * prior) / (impressions + strength) of ``entity`` over ``window``."""
    p = STAT_PREFIX[entity]
    clicks = _column(table, f"{p}clicks_{window}d")
    impressions = _column(table, f"{p}impressions_{window}d")
    return (clicks + strength * prior) / (impressions + strength)


def smoothed_rate_scores(
    train: pa.Table, test: pa.Table, *, windows: Sequence[int], strength: float
) -> np.ndarray:
    """Scores of ``test`` rows: user and item smoothed rates (longest window), fitted prior."""
    prior = fitted_prior(train)
    w = max(windows)
    user = smoothed_rate(test, "user", w, prior, strength)
    item = smoothed_rate(test, "item", w, prior, strength)
    return _logit(user) + _logit(item) - _logit(np.array(prior))


def counter_features(
    table: pa.Table, *, windows: Sequence[int], prior: float, strength: float, scenarios: list[str]
) -> np.ndarray:
    """The logistic regression's design matrix (rows of ``table``, columns documented above)."""
    columns: list[np.ndarray] = []
    for entity, p in STAT_PREFIX.items():
        for w in windows:
            columns += [np.log1p(_column(table, f"{p}{c}_{w}d")) for c in COUNTERS]
            columns.append(_logit(smoothed_rate(table, entity, w, prior, strength)))
    scenario = np.asarray(table.column("scenario").to_pylist(), dtype=object)
    columns += [(scenario == s).astype(np.float64) for s in scenarios]
    columns.append(np.log1p(_column(table, "position")))
    return np.stack(columns, axis=1)


def counter_logreg_scores(
    train: pa.Table, test: pa.Table, *, windows: Sequence[int], strength: float, seed: int = 0
) -> np.ndarray:
    """Scores of ``test`` rows by a logistic regression fitted on ``train`` (weighted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    prior = fitted_prior(train)
    scenarios = sorted(set(train.column("scenario").to_pylist()))
    x_train = counter_features(
        train, windows=windows, prior=prior, strength=strength, scenarios=scenarios
    )
    x_test = counter_features(
        test, windows=windows, prior=prior, strength=strength, scenarios=scenarios
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    model.fit(
        x_train,
        _column(train, "click").astype(np.int64),
        logisticregression__sample_weight=_column(train, "weight"),
    )
    return np.asarray(model.decision_function(x_test))

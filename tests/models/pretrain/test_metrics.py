"""AUC and log loss against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models.pretrain.metrics import auc, logloss


def brute_auc(y: list[int], s: list[float]) -> float:
    pairs = [(p, n) for p, n in itertools.product(range(len(y)), repeat=2) if y[p] and not y[n]]
    return sum(1.0 if s[p] > s[n] else 0.5 if s[p] == s[n] else 0.0 for p, n in pairs) / len(pairs)


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80).tolist()
    s = rng.integers(0, 6, 80).astype(float).tolist()  # many ties
    # scikit-learn integrates the ROC curve: equal to the pair count up to rounding.
    assert auc(np.array(y), np.array(s)) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert math.isnan(auc(np.zeros(4), np.arange(4.0)))


def test_logloss_weighted() -> None:
    y, p, w = np.array([1, 0]), np.array([0.8, 0.4]), np.array([1.0, 3.0])
    expected = (-math.log(0.8) - 3 * math.log(0.6)) / 4
    assert abs(logloss(y, p, w) - expected) < 1e-12

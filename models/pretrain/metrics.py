"""Offline metrics of the funnel heads: AUC (tie-aware) and weighted log loss.

Thin names over ``models.evaluation`` (scikit-learn underneath), kept so the pre-training
code reads ``auc(labels, scores)`` / ``logloss(labels, probs, weights)`` as before.
"""

from __future__ import annotations

import numpy as np

from models import evaluation


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present."""
    return evaluation.auc(labels, scores)


def logloss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]."""
    return evaluation.logloss(labels, probs, weights)

from __future__ import annotations

import numpy as np
import pyarrow as pa
from sklearn.metrics import roc_auc_score

from models.pretrain.references import (
    counter_logreg_scores,
    fitted_prior,
    smoothed_rate,
    smoothed_rate_scores,
)

WINDOWS = [1, 7]


def _table(
    clicks_user: list[int],
    imps_user: list[int],
    clicks_item: list[int],
    imps_item: list[int],
    click: list[int],
    weight: list[float] | None = None,
    scenario: list[str] | None = None,
) -> pa.Table:
    n = len(click)
    cols: dict[str, list[object]] = {
        "click": list(click),
        "weight": list(weight or [1.0] * n),
        "scenario": list(scenario or ["ads"] * n),
        "position": [0] * n,
    }
    for prefix, clicks, imps in (
        ("u_", clicks_user, imps_user),
        ("i_", clicks_item, imps_item),
        ("uc_", clicks_user, imps_user),
    ):
        for w in WINDOWS:
            cols[f"{prefix}impressions_{w}d"] = list(imps)
            cols[f"{prefix}clicks_{w}d"] = list(clicks)
            cols[f"{prefix}carts_{w}d"] = [0] * n
            cols[f"{prefix}purchases_{w}d"] = [0] * n
    return pa.table(cols)


def test_prior_is_the_weighted_click_rate_of_the_training_rows() -> None:
    train = _table([0] * 4, [0] * 4, [0] * 4, [0] * 4, [1, 0, 0, 0], [3.0, 1.0, 1.0, 1.0])
    assert fitted_prior(train) == 3.0 / 6.0


def test_smoothed_rate_and_scores_by_hand() -> None:
    table = _table([2, 0], [10, 0], [1, 5], [4, 5], [1, 0])
    prior, strength = 0.5, 2.0
    assert np.allclose(smoothed_rate(table, "user", 7, prior, strength), [3 / 12, 1 / 2])
    train = _table([0, 0], [0, 0], [0, 0], [0, 0], [1, 0])  # prior 0.5
    scores = smoothed_rate_scores(train, table, windows=WINDOWS, strength=strength)
    user = np.array([3 / 12, 1 / 2])
    item = np.array([(1 + 1) / 6, (5 + 1) / 7])

    def logit(p: np.ndarray) -> np.ndarray:
        return np.log(p / (1 - p))

    assert np.allclose(scores, logit(user) + logit(item) - 0.0)


def test_logreg_learns_what_the_counters_say() -> None:
    rng = np.random.default_rng(0)
    n = 4_000
    imps = rng.integers(0, 50, n)
    rate = rng.random(n)
    clicks = (imps * rate).astype(int)
    p = 1 / (1 + np.exp(-(4 * rate - 2)))
    click = (rng.random(n) < p).astype(int)
    table = _table(clicks.tolist(), imps.tolist(), [0] * n, [0] * n, click.tolist())
    train, test = table.slice(0, 3_000), table.slice(3_000)
    scores = counter_logreg_scores(train, test, windows=WINDOWS, strength=1.0)
    auc = roc_auc_score(test.column("click").to_numpy(), scores)
    oracle = roc_auc_score(test.column("click").to_numpy(), p[3_000:])
    assert auc > 0.5 + 0.8 * (oracle - 0.5)

"""Downstream-only counters: the subsystem's own impressions, clicks and click rates.

The counters in ``gold.downstream_training_set`` (``u_*``, ``i_*``, ``uc_*``) count the
whole super-domain; a downstream model that "trains on its own feedback" (DESIGN.md, the
plugging half) may not read them. Its counters are derived here, from the downstream rows
themselves:

* per user (``du_*``) and per item (``di_*``), for each window ``w`` of
  ``DownstreamSettings.counter_windows``: ``impressions_{w}d`` and ``clicks_{w}d`` over the
  days ``[d - w, d - 1]`` — days strictly before ``d``, so a row of day ``d`` never sees its
  own day's labels (point in time) — and ``ctr_{w}d``, the smoothed click rate
  ``(clicks + m * prior) / (impressions + m)`` with ``m = prior_strength``;
* the prior is **fitted** to the history: the weighted mean click rate of every history row
  used (days ``[d - max(windows), d - 1]``), so an unseen key gets the subsystem's own base
  rate, not a super-domain constant. With no history at all it falls back to
  ``fallback_prior``.

Counts are weighted by the ``weight`` column (which undoes negative down-sampling), so they
estimate the impressions and clicks that happened. Unseen keys get 0 / 0 / prior.

The history is any table with ``user_id``, ``item_id``, ``click``, ``ds`` (and ``weight``,
``scenario`` when present): earlier days of the training set or of
``gold.downstream_samples``. Rows of other scenarios are ignored. Pure pyarrow / numpy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keep.core.errors import InputError

USER_PREFIX = "du_"
ITEM_PREFIX = "di_"
# Entity -> (key column, column prefix).
KEYS: dict[str, tuple[str, str]] = {
    "user": ("user_id", USER_PREFIX),
    "item": ("item_id", ITEM_PREFIX),
}
COUNTS: tuple[str, ...] = ("impressions", "clicks")


def downstream_counter_columns(windows: Sequence[int]) -> list[str]:
    """The columns :func:`add_downstream_counters` adds, in model order (entity, window, counter)."""
    return [
        f"{prefix}{c}_{w}d"
        for _, prefix in KEYS.values()
        for w in windows
        for c in (*COUNTS, "ctr")
    ]


def _ints(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(), dtype=np.int64)


def _floats(table: pa.Table, name: str, default: float) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, default)
    col = table.column(name).cast(pa.float64()).fill_null(default)
    return np.asarray(col.to_numpy(), dtype=np.float64)


def _history_days(history: pa.Table) -> np.ndarray:
    """``ds`` of every history row as days since the epoch (int)."""
    col = history.column("ds")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.cast(pc.strptime(col, format="%Y-%m-%d", unit="s"), pa.date32())
    return np.asarray(col.cast(pa.date32()).cast(pa.int32()).to_numpy(), dtype=np.int64)


def fit_prior_ctr(clicks: np.ndarray, impressions: np.ndarray, fallback: float) -> float:
    """The history's (weighted) mean click rate; ``fallback`` when it has no impressions."""
    total = float(impressions.sum())
    if total <= 0:
        return fallback
    return float(np.clip(clicks.sum() / total, 1e-6, 1 - 1e-6))


def _sum_by_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=values, minlength=len(uniq))


def _lookup(uniq: np.ndarray, sums: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``sums`` of each ``query`` key (0 for keys not in ``uniq``), in query order."""
    if len(uniq) == 0:
        return np.zeros(len(query))
    at = np.clip(np.searchsorted(uniq, query), 0, len(uniq) - 1)
    return np.where(uniq[at] == query, sums[at], 0.0)


def add_downstream_counters(
    day: pa.Table,
    history: pa.Table,
    *,
    ds: dt.date,
    windows: Sequence[int],
    scenario: str,
    prior_strength: float,
    fallback_prior: float = 0.05,
) -> pa.Table:
    """``day`` (rows of day ``ds``) with the ``du_*`` / ``di_*`` columns of
    :func:`downstream_counter_columns` appended, computed from ``history`` rows of days
    ``< ds`` only (rows of ``ds`` or later in ``history`` are ignored). Row order is kept."""
    if not windows:
        return day
    if prior_strength <= 0:
        raise ValueError("prior_strength must be > 0 (unseen keys get the prior click rate)")
    for name in ("user_id", "item_id", "click", "ds"):
        if name not in history.column_names:
            raise InputError(
                f"the downstream counters' history needs column {name!r}; got "
                f"{history.column_names[:10]}...: pass earlier days of the training set "
                "or of gold.downstream_samples."
            )
    today = (ds - dt.date(1970, 1, 1)).days
    h_day = _history_days(history)
    in_scope = (h_day < today) & (h_day >= today - max(windows))
    if "scenario" in history.column_names:
        same = pc.equal(history.column("scenario"), scenario).fill_null(False)
        in_scope &= np.asarray(same.to_numpy(), dtype=bool)
    weight = _floats(history, "weight", 1.0)
    impressions = np.where(in_scope, weight, 0.0)
    clicks = impressions * _floats(history, "click", 0.0)
    prior = fit_prior_ctr(clicks, impressions, fallback_prior)

    out = day
    for key, prefix in KEYS.values():
        h_keys, d_keys = _ints(history, key), _ints(day, key)
        for w in windows:
            window = in_scope & (h_day >= today - w)
            uniq, imp = _sum_by_key(h_keys[window], impressions[window])
            _, clk = _sum_by_key(h_keys[window], clicks[window])
            n = _lookup(uniq, imp, d_keys)
            c = _lookup(uniq, clk, d_keys)
            ctr = (c + prior_strength * prior) / (n + prior_strength)
            out = out.append_column(f"{prefix}impressions_{w}d", pa.array(n, pa.float64()))
            out = out.append_column(f"{prefix}clicks_{w}d", pa.array(c, pa.float64()))
            out = out.append_column(f"{prefix}ctr_{w}d", pa.array(ctr, pa.float64()))
    return out

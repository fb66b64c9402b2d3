"""The downstream DAG's model work: train a candidate version, then measure it for the gate.

A run of ``dags/keep_downstream_ctr.py`` is about one knowledge snapshot ``(L, S)``. It
trains the ``keep`` model on the labelled days after the live version's last one, through
``S`` (usually just ``S``), warm-started from the live version, and the ``base`` arm beside
it as a control (its own daily checkpoints). Every day's rows come from the point-in-time
training set: the knowledge served on that day (the gated snapshot of the day before, of the
lineage then served).

* **Progressive validation**: before training on ``S``, each arm (trained through the day
  before) is evaluated on all of ``S``'s rows -- the figure ``keep run`` reports per day.
* **Holdout for the gate**: a fixed share of ``S``'s impressions (by a hash of the
  impression id, ``downstream.gate_holdout_fraction``) is never trained on; the candidate, the
  live version and the control are scored on it (:func:`evaluate_candidate`).
* **Lineage switch**: when ``L`` is a new lineage (published beside the one the days were
  served with), the trained candidate is moved to ``L`` by ``downstream.lineage_switch``
  (models/downstream/daily.py) after training. The gate measures the candidate *before*
  the switch, in the space both it and the live version were served; the registered file is
  the switched one, pinned to ``L``.

Files, under ``<downstream.checkpoint_root>/candidates/<L>/<S>/``: ``keep.pt`` (what is
registered), ``keep.trained.pt`` (before a lineage switch; the same model otherwise) and
``candidate.json`` (what :func:`train_candidate` returned).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.files import atomic_write_text
from models.downstream.checkpoint import load_model, model_path, save_model
from models.downstream.daily import Arms, aligned, day_table, metrics_of
from models.downstream.layout import candidate_dir
from models.downstream.trainer import predict

log = logging.getLogger(__name__)

ARM = "keep"
CONTROL = "base"


def holdout_mask(table: pa.Table, fraction: float) -> np.ndarray:
    """True for the rows held out of training: a stable hash of the impression id."""
    ids = table.column("impression_id").to_pylist()
    cut = int(fraction * 10_000)
    return np.fromiter(
        (zlib.crc32(str(i).encode()) % 10_000 < cut for i in ids), dtype=bool, count=len(ids)
    )


def train_candidate(
    settings: Settings,
    *,
    lineage: str,
    snapshot_ds: str,
    days: list[dict[str, Any]],
    live_checkpoint: str | None,
) -> dict[str, Any]:
    """Train the candidate of knowledge snapshot ``(lineage, snapshot_ds)``.

    ``days``: ``[{"ds", "lineage", "snapshot"}]`` in order, the last one the snapshot's day:
    each day's training-set lineage and the snapshot it served (None: none yet).
    """
    if not days:
        raise InputError(f"nothing to train for knowledge snapshot {lineage}/{snapshot_ds}")
    seed = settings.downstream.seeds[0]
    torch.set_num_threads(settings.downstream.threads)
    arms = Arms(settings, [ARM, CONTROL], [seed])
    first = dt.date.fromisoformat(days[0]["ds"])
    if live_checkpoint is not None:
        arms.load(ARM, seed, Path(live_checkpoint))
    control = arms.newest_checkpoint(CONTROL, seed, first)
    if control is not None:
        arms.load(CONTROL, seed, control)
    progressive: dict[str, Any] = {}
    holdout_rows = 0
    for i, day in enumerate(days):
        ds = dt.date.fromisoformat(day["ds"])
        served = dt.date.fromisoformat(day["snapshot"]) if day.get("snapshot") else ds
        table = day_table(settings, ds, day["lineage"])
        last = i == len(days) - 1
        train_table = None
        if last:
            held = holdout_mask(table, settings.downstream.gate_holdout_fraction)
            holdout_rows = int(held.sum())
            train_table = table.filter(pa.array(~held))
        outcomes = arms.step(ds, table, day["lineage"], served, train_table=train_table)
        if last:
            progressive = {
                o.arm: {**(o.metrics or {}), "held_out": o.metrics is not None} for o in outcomes
            }
    out = candidate_dir(settings, lineage, snapshot_ds)
    trained = out / "keep.trained.pt"
    keep = arms.states[(ARM, seed)]
    save_model(keep.model, keep.meta, trained, keep.optimizer)
    switched = None
    if keep.meta.knowledge_lineage != lineage:
        switched = arms.switch(ARM, seed, lineage, dt.date.fromisoformat(snapshot_ds))
    save_model(keep.model, keep.meta, out / "keep.pt", keep.optimizer)
    base = arms.states[(CONTROL, seed)]
    last_ds = dt.date.fromisoformat(days[-1]["ds"])
    save_model(base.model, base.meta, model_path(settings, CONTROL, seed, last_ds), base.optimizer)
    arms.arms = [CONTROL]
    arms.prune(settings.downstream.checkpoint_days_kept)
    result = {
        "lineage": lineage,
        "snapshot_ds": snapshot_ds,
        "train_days": [d["ds"] for d in days],
        "train_lineage": days[-1]["lineage"],
        "lineage_switch": switched,
        "checkpoint": str(out / "keep.pt"),
        "trained_checkpoint": str(trained),
        "control_checkpoint": str(model_path(settings, CONTROL, seed, last_ds)),
        "holdout_rows": holdout_rows,
        "progressive": progressive,
    }
    atomic_write_text(out / "candidate.json", json.dumps(result, indent=2) + "\n")
    return result


def _holdout_metrics(path: str, table: pa.Table) -> dict[str, Any]:
    loaded = load_model(Path(path))
    rows = aligned(table, loaded.meta.alignment)
    scores = predict(loaded.model, rows)
    finite = bool(np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all())
    clicks = float(np.asarray(table.column("click").to_numpy(zero_copy_only=False)).sum())
    metrics = metrics_of(table, scores) if finite and table.num_rows else {}
    return {**metrics, "finite": finite, "clicks": clicks, "rows": float(table.num_rows)}


def evaluate_candidate(
    settings: Settings,
    trained: dict[str, Any],
    *,
    live_checkpoint: str | None,
    live_lineage: str | None,
) -> dict[str, Any]:
    """The candidate (before any lineage switch), the live version and the ``base``
    control, scored on the held-out rows of the newest day. The live version reads the
    training set of its own lineage (same impressions); when it has none for the day, it is
    not compared (``live`` is None and ``live_note`` says why)."""
    ds = dt.date.fromisoformat(trained["train_days"][-1])
    fraction = settings.downstream.gate_holdout_fraction
    table = day_table(settings, ds, trained["train_lineage"])
    holdout = table.filter(pa.array(holdout_mask(table, fraction)))
    result: dict[str, Any] = {
        "candidate": _holdout_metrics(trained["trained_checkpoint"], holdout),
        "base": _holdout_metrics(trained["control_checkpoint"], holdout),
        "live": None,
        "live_note": "no live version yet",
    }
    if live_checkpoint is not None and live_lineage is not None:
        try:
            own = day_table(settings, ds, live_lineage)
        except InputError as exc:
            result["live_note"] = f"the live version's lineage has no training set for {ds}: {exc}"
        else:
            result["live"] = _holdout_metrics(
                live_checkpoint, own.filter(pa.array(holdout_mask(own, fraction)))
            )
            result["live_note"] = f"live version scored with lineage {live_lineage}"
    return result

"""The downstream subsystem's daily model refresh, one function per task of
``dags/keep_downstream_ctr.py`` (and what ``keep run`` calls after each publication).

A run is about one **knowledge event**: what the publication of a gated snapshot announced
on the ``keep_knowledge`` Asset (``{"lineage": L, "snapshot_ds": S, ...}``). Airflow runs
triggered by an Asset have no logical date, so everything a run does is derived from the
event, never from a date:

1. :func:`plan` -- which days to train (the labelled days after the live version's last
   one, through ``S``; at most ``downstream.max_catchup_days``) and each day's knowledge
   as it was served (point in time). Returns None -- the DAG skips the rest -- when a
   version for ``(L, S)`` is already registered, the candidate of ``(L, S)`` was already
   rejected by the gate (``force`` retrains it), or the live version is already newer: a
   re-publication of the same snapshot never trains twice.
2. :func:`build_training_sets` -- ``gold.downstream_training_set`` of those days (Feast,
   point in time), and of the newest day in the live version's lineage when it differs.
3. :func:`train` -- the ``keep`` candidate, warm-started from the live version, and the
   ``base`` control (models/downstream/candidate.py).
4. :func:`evaluate` -- candidate, live version and control on the newest day's holdout.
5. :func:`gate` -- the model gate (keep/quality/model_gate.py); raises
   :class:`~keep.core.errors.GateFailed` and records the rejection.
6. :func:`register` -- the model's own online features of ``S``
   (:func:`publish_serving_features`, read by the scoring service), then the next version
   in the model registry, made live; returns what the ``keep_downstream_model`` Asset
   event carries.

Every step is idempotent: re-running one after a crash recomputes the same files.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

from keep.core.config import Settings
from keep.core.errors import GateFailed, InputError
from keep.core.files import atomic_write_text
from keep.core.tables import DOWNSTREAM_SAMPLES, samples_spec
from keep.core.time import days as day_range
from keep.lake import delta

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: task results travel as strict JSON (XCom)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def subsystem(settings: Settings) -> str:
    return settings.downstream.scenario


def newest_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The event naming the newest snapshot (a run can carry several queued events)."""
    usable = [e for e in events if e and e.get("lineage") and e.get("snapshot_ds")]
    if not usable:
        raise InputError(
            "no knowledge event to process: the run needs a triggering keep_knowledge Asset "
            'event, or a conf {"lineage": ..., "snapshot_ds": "YYYY-MM-DD"} when triggered by hand'
        )
    return max(usable, key=lambda e: (e["snapshot_ds"], e.get("published_at") or ""))


def plan(
    settings: Settings, events: list[dict[str, Any]], *, force: bool = False
) -> dict[str, Any] | None:
    """What this run trains, or None when there is nothing to do (logged with the reason)."""
    from keep.lake.knowledge import served_knowledge
    from keep.store import model_registry as registry

    event = newest_event(events)
    name, lineage, snapshot = subsystem(settings), event["lineage"], event["snapshot_ds"]
    done = registry.find(settings, name, lineage, snapshot)
    if done is not None:
        log.info(
            "%s: %s already registered for %s/%s; nothing to do", name, done.name, lineage, snapshot
        )
        return None
    attempt = registry.read_attempt(settings, name, lineage, snapshot)
    if attempt and attempt.get("status") == "rejected" and not force:
        log.info(
            "%s: the candidate of %s/%s was rejected by the model gate (%s); trigger with "
            'conf {"force": true} to retrain it',
            name,
            lineage,
            snapshot,
            attempt.get("gate", {}).get("summary"),
        )
        return None
    live = registry.live(settings, name)
    last_day = dt.date.fromisoformat(snapshot)
    first = last_day
    if live is not None and live.train_days:
        trained_through = dt.date.fromisoformat(max(live.train_days))
        if trained_through >= last_day:
            log.info("%s: live %s is trained through %s already", name, live.name, trained_through)
            return None
        first = max(
            trained_through, last_day - dt.timedelta(days=settings.downstream.max_catchup_days)
        ) + dt.timedelta(days=1)
    spec = samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows)
    if delta.partition_rows(settings, spec, last_day) == 0:
        raise InputError(
            f"{DOWNSTREAM_SAMPLES} has no rows for {last_day}: the daily refresh of that day "
            "must have built its samples before its knowledge is published"
        )
    plan_days = []
    for ds in day_range(first, last_day):
        if ds != last_day and delta.partition_rows(settings, spec, ds) == 0:
            continue
        served = served_knowledge(settings, ds)
        plan_days.append(
            {
                "ds": ds.isoformat(),
                "lineage": served[0] if served else lineage,
                "snapshot": served[1].isoformat() if served else None,
            }
        )
    return {
        "subsystem": name,
        "lineage": lineage,
        "snapshot_ds": snapshot,
        "days": plan_days,
        "live_version": live.version if live else None,
        "live_checkpoint": live.checkpoint if live else None,
        "live_lineage": live.knowledge_lineage if live else None,
    }


def build_training_sets(settings: Settings, run: dict[str, Any]) -> dict[str, int]:
    """The point-in-time training set of every planned day (rows per lineage/day)."""
    from keep.store.training_sets import write_training_set

    rows: dict[str, int] = {}
    wanted = [(d["lineage"], d["ds"]) for d in run["days"]]
    newest = run["days"][-1]["ds"]
    if run.get("live_lineage") and run["live_lineage"] != run["days"][-1]["lineage"]:
        wanted.append((run["live_lineage"], newest))  # the live version's own knowledge
    for lineage, day in wanted:
        ds = dt.date.fromisoformat(day)
        written = write_training_set(settings, ds, ds, lineage=lineage)
        rows[f"{lineage}/{day}"] = sum(written.values())
    return rows


def train(settings: Settings, run: dict[str, Any]) -> dict[str, Any]:
    """Train the candidate (and the control); its files and progressive metrics."""
    from models.downstream.candidate import train_candidate

    return json_safe(
        train_candidate(
            settings,
            lineage=run["lineage"],
            snapshot_ds=run["snapshot_ds"],
            days=run["days"],
            live_checkpoint=run.get("live_checkpoint"),
        )
    )


def evaluate(settings: Settings, run: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """Holdout metrics of candidate, live version and control; also records the newest day's
    progressive metrics where ``keep run``'s summary reads them."""
    from models.downstream.candidate import evaluate_candidate
    from models.downstream.daily import day_metrics_path

    holdout = evaluate_candidate(
        settings,
        trained,
        live_checkpoint=run.get("live_checkpoint"),
        live_lineage=run.get("live_lineage"),
    )
    newest = run["days"][-1]
    day = {
        "ds": newest["ds"],
        "lineage": newest["lineage"],
        "snapshot_ds": newest["snapshot"],
        "arms": trained["progressive"],
        "holdout": holdout,
    }
    path = day_metrics_path(settings, dt.date.fromisoformat(newest["ds"]))
    atomic_write_text(path, json.dumps(day, indent=2) + "\n")
    return json_safe({**trained, "holdout": holdout, "subsystem": run["subsystem"]})


def gate(settings: Settings, evaluation: dict[str, Any]) -> dict[str, Any]:
    """The model gate; a failure is recorded (the snapshot is not retried) and raised."""
    from keep.quality.model_gate import check_candidate
    from keep.store import model_registry as registry
    from keep.store.publication import live_snapshot

    live = live_snapshot(settings)
    report = check_candidate(
        settings,
        evaluation["holdout"],
        subject=f"{evaluation['subsystem']} candidate {evaluation['lineage']}/{evaluation['snapshot_ds']}",
        candidate_lineage=_pinned_lineage(evaluation["checkpoint"]),
        live_knowledge_lineage=live["lineage"] if live else None,
    ).to_dict()
    if not report["success"]:
        registry.record_attempt(
            settings,
            evaluation["subsystem"],
            evaluation["lineage"],
            evaluation["snapshot_ds"],
            {"status": "rejected", "gate": report, "holdout": evaluation["holdout"]},
        )
        raise GateFailed(report["summary"])
    return json_safe(report)


def _pinned_lineage(checkpoint: str) -> str:
    from models.downstream.checkpoint import load_model

    return load_model(Path(checkpoint)).meta.knowledge_lineage or ""


def publish_serving_features(settings: Settings, name: str, snapshot_ds: str) -> dict[str, Any]:
    """Build the downstream model's own online features of the end of ``snapshot_ds`` and
    write them to the lake and the online store (idempotent)."""
    from keep.store.serving_features import read_sources, write_serving_features
    from models.downstream.serving_features import build_item_features, build_user_features

    ds = dt.date.fromisoformat(snapshot_ds)
    ds_settings = settings.downstream
    sources = read_sources(settings, ds)
    users = build_user_features(
        sources.dim_users,
        sources.user_behavior,
        sources.history,
        ds=ds,
        scenario=ds_settings.scenario,
        counter_windows=ds_settings.counter_windows,
        max_seq_len=ds_settings.max_seq_len,
        prior_strength=ds_settings.prior_strength,
    )
    items = build_item_features(
        sources.dim_items,
        sources.history,
        ds=ds,
        scenario=ds_settings.scenario,
        counter_windows=ds_settings.counter_windows,
        prior_strength=ds_settings.prior_strength,
    )
    return write_serving_features(settings, name, ds, {"user": users, "item": items})


def register(
    settings: Settings, evaluation: dict[str, Any], report: dict[str, Any]
) -> dict[str, Any]:
    """Register the gated candidate as the next live version; the Asset event's extra."""
    from keep.store import model_registry as registry

    # The model's own online features of the snapshot day go online before the version
    # goes live, so the scoring service never loads a version without them.
    publish_serving_features(settings, evaluation["subsystem"], evaluation["snapshot_ds"])
    version = registry.register(
        settings,
        evaluation["subsystem"],
        Path(evaluation["checkpoint"]),
        arm="keep",
        lineage=evaluation["lineage"],
        snapshot_ds=evaluation["snapshot_ds"],
        train_days=evaluation["train_days"],
        metrics={"holdout": evaluation["holdout"], "progressive": evaluation["progressive"]},
        gate=report,
    )
    registry.record_attempt(
        settings,
        evaluation["subsystem"],
        evaluation["lineage"],
        evaluation["snapshot_ds"],
        {"status": "registered", "version": version.version, "gate": report},
    )
    return {
        "subsystem": version.subsystem,
        "version": version.version,
        "name": version.name,
        "knowledge_lineage": version.knowledge_lineage,
        "snapshot_ds": version.snapshot_ds,
        "train_days": version.train_days,
        "checkpoint": version.checkpoint,
    }


def run_event(
    settings: Settings, events: list[dict[str, Any]], *, force: bool = False
) -> dict[str, Any]:
    """Every step for one knowledge event, in this process (``keep run``'s local path).

    Returns ``{"status": "skipped" | "registered" | "rejected", ...}``; a rejection by the
    model gate is an outcome, not an error (the live version stays)."""
    run = plan(settings, events, force=force)
    if run is None:
        return {"status": "skipped", "event": newest_event(events)}
    build_training_sets(settings, run)
    trained = train(settings, run)
    evaluation = evaluate(settings, run, trained)
    try:
        report = gate(settings, evaluation)
    except GateFailed as failed:
        return {"status": "rejected", "reason": str(failed), "evaluation": evaluation}
    return {"status": "registered", **register(settings, evaluation, report)}


def knowledge_event(settings: Settings) -> dict[str, Any] | None:
    """The live knowledge snapshot as an event (what the last publication announced)."""
    from keep.store.publication import live_snapshot

    live = live_snapshot(settings)
    if live is None:
        return None
    return {"lineage": live["lineage"], "snapshot_ds": live["snapshot_ds"], "slot": live["slot"]}

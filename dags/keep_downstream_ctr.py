"""
### keep_downstream_ctr

The downstream subsystem's CTR model (`downstream.scenario`, "ads" by default), refreshed each
time new knowledge goes live. Scheduled on the `keep_knowledge` Asset: the daily refresh's
`publish_knowledge` triggers it.

A run triggered by an Asset has **no logical date**: every task works on the knowledge
event that triggered the run (its `extra`: lineage, snapshot day, tables), read from
`triggering_asset_events`; when several events were queued, the newest snapshot. A run
triggered by hand takes the same fields from its conf: `{"lineage": "...", "snapshot_ds":
"YYYY-MM-DD"}` (add `"force": true` to retrain a snapshot whose candidate the gate rejected).

| task | what it does |
| --- | --- |
| `plan` | which days to train and with which knowledge (point in time); skips the whole run when a version for this lineage and snapshot is registered or was rejected, or the live version is newer: a re-publication never trains twice |
| `training_set` | `gold.downstream_training_set` of those days through Feast (point in time) |
| `train` | the `keep` model warm-started from the live version, and the `base` control |
| `evaluate` | candidate, live version and control on the newest day's held-out impressions |
| `model_gate` | finite scores, AUC not below the live version's by more than `downstream.gate_auc_margin`, calibration within bounds, pinned to the live knowledge lineage |
| `register` | the next version in the model registry, made live; emits the `keep_downstream_model` Asset event naming it |

A failed gate fails `model_gate` at once (no retries); the live version stays.
Each task is one call of a function of `keep.flows.downstream`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import dag, get_current_context, task

from keep.core.config import load_settings
from keep.flows import downstream
from keep.flows.assets import DOWNSTREAM_MODEL, KNOWLEDGE
from keep.flows.dag_support import default_args, no_retry_on_deterministic

_settings = load_settings()


def _events() -> tuple[list[dict[str, Any]], bool]:
    """The knowledge events of this run (Asset events, or the conf of a manual run)."""
    context = get_current_context()
    triggering = context.get("triggering_asset_events") or {}
    events = [dict(e.extra or {}) for e in (triggering.get(KNOWLEDGE) or [])]
    conf = dict(getattr(context.get("dag_run"), "conf", None) or {})
    if not events and conf.get("lineage"):
        events = [conf]
    return events, bool(conf.get("force"))


@dag(
    doc_md=__doc__,
    schedule=[KNOWLEDGE],
    start_date=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(_settings),
    tags=["keep", "downstream"],
)
def keep_downstream_ctr() -> None:
    @task.short_circuit(task_id="plan")
    def plan() -> dict[str, Any] | None:
        events, force = _events()
        with no_retry_on_deterministic():
            return downstream.plan(load_settings(), events, force=force)

    @task(task_id="training_set")
    def training_set(run: Any) -> dict[str, int]:
        with no_retry_on_deterministic():
            return downstream.build_training_sets(load_settings(), run)

    @task(task_id="train")
    def train(run: Any, _rows: Any) -> dict[str, Any]:
        with no_retry_on_deterministic():
            return downstream.train(load_settings(), run)

    @task(task_id="evaluate")
    def evaluate(run: Any, trained: Any) -> dict[str, Any]:
        with no_retry_on_deterministic():
            return downstream.evaluate(load_settings(), run, trained)

    @task(task_id="model_gate")
    def model_gate(evaluation: Any) -> dict[str, Any]:
        with no_retry_on_deterministic():
            return downstream.gate(load_settings(), evaluation)

    @task(task_id="register", outlets=[DOWNSTREAM_MODEL])
    def register(evaluation: Any, report: Any) -> dict[str, Any]:
        with no_retry_on_deterministic():
            version = downstream.register(load_settings(), evaluation, report)
        get_current_context()["outlet_events"][DOWNSTREAM_MODEL].extra = version
        return version

    # TaskFlow passes each task's XCom to the next (typed Any: Airflow hands in XComArgs).
    run = plan()
    trained = train(run, training_set(run))
    evaluation = evaluate(run, trained)
    register(evaluation, model_gate(evaluation))


keep_downstream_ctr()

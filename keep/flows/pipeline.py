"""The daily pipeline's steps, as plain functions, and :data:`STEPS`: step name -> function.

Both the Airflow DAG (``dags/keep_daily_refresh.py``, one task per entry of :data:`STEPS`)
and ``keep run`` call exactly these functions, so a day run by hand and a day run by
Airflow are the same thing. Each step takes the settings and the logical day ``ds`` and
is idempotent per day.

Importing this module is cheap (Airflow parses the DAG file often): each step imports the
job, gate or model it runs (Spark, Great Expectations, torch, Feast) when it runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keep.core.config import Settings
from keep.core.errors import GateFailed, InputError
from keep.core.tables import INGEST_AUDIT, PRETRAIN_SAMPLES, SourceCounts, sample_specs
from keep.core.time import days
from keep.lake import delta, raw_format

if TYPE_CHECKING:
    from keep.quality.ge import GateReport

log = logging.getLogger(__name__)


def land_raw(settings: Settings, ds: dt.date) -> dict[str, Path]:
    """Demo mode (``airflow.demo_mode``, off by default): write the day's raw files with the
    generator -- refused when the day's raw folders already hold files it did not write.

    Otherwise the files come from the logging systems: check that they have landed (one
    clear error when they have not; nothing is written).
    """
    if settings.airflow.demo_mode:
        from keep.sources import generator

        foreign = generator.foreign_files(settings, ds)
        if foreign:
            raise InputError(
                f"demo_mode is on but {foreign[0].parent} holds raw files the generator did "
                f"not write ({', '.join(p.name for p in foreign)}): refusing to write synthetic "
                "files beside them; turn demo mode off (airflow.demo_mode) for a real landing "
                "zone, or remove them."
            )
        return generator.write_day(settings, ds)
    landed = raw_format.day_files(settings, "impressions", ds)
    if not landed:
        raise InputError(
            f"No raw impression files for {ds} in "
            f"{raw_format.day_dir(settings, 'impressions', ds)} (demo_mode is off)."
        )
    return {f"impressions/{p.name}": p for p in landed}


def ingest(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """Raw files of ``ds`` -> bronze / dim Delta partitions of ``ds`` (+ quarantine, audit)."""
    from keep.core.tables import RAW_FIELDS
    from keep.lake.spark import get_spark
    from spark_jobs.ingest import run_ingest

    # Files that cannot be read as a whole are refused before Spark starts: one clear
    # line, nothing written.
    raw_format.check_day(settings, ds, tuple(RAW_FIELDS))
    return run_ingest(get_spark(settings), settings, ds)


def _gate(report: GateReport) -> GateReport:
    if not report.success:
        raise GateFailed(report.summary())
    return report


def validate(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the day's bronze partition and dimensions; raises GateFailed with a summary."""
    from keep.lake.spark import get_spark
    from keep.quality.lake_gates import validate_ingest

    return _gate(validate_ingest(get_spark(settings), settings, ds))


def aggregate(settings: Settings, ds: dt.date) -> dict[str, int]:
    """Silver state as of the end of ``ds`` from the state of ``ds - 1`` plus bronze ``ds``."""
    from keep.lake.spark import get_spark
    from spark_jobs.aggregate import check_order, run_aggregate

    check_order(settings, ds)  # refused before Spark starts (run_aggregate checks it too)
    return run_aggregate(get_spark(settings), settings, ds)


def validate_state(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the silver state of ``ds``; raises GateFailed with a summary."""
    from keep.lake.spark import get_spark
    from keep.quality.lake_gates import validate_state as gate

    return _gate(gate(get_spark(settings), settings, ds))


def samples(settings: Settings, ds: dt.date) -> dict[str, int]:
    """Gold samples of ``ds``: its impressions with the state as of the end of ``ds - 1``."""
    from keep.lake.spark import get_spark
    from spark_jobs.samples import check_inputs, run_samples

    check_inputs(settings, ds)  # refused before Spark starts
    return run_samples(get_spark(settings), settings, ds)


def validate_samples(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the gold samples of ``ds``; raises GateFailed with a summary."""
    from keep.lake.spark import get_spark
    from keep.quality.lake_gates import validate_samples as gate

    return _gate(gate(get_spark(settings), settings, ds))


def pretrain(settings: Settings, ds: dt.date) -> Any:
    """Pre-train on the samples of ``ds``, warm-started from the checkpoint of ``ds - 1``
    (a new lineage from scratch when there is none, or when ``ds`` is listed in
    ``pretrain.full_retrain_on``); evaluates on ``ds`` before training."""
    from models.pretrain.train import pretrain_day

    full_retrain = ds in settings.pretrain.full_retrain_on
    return pretrain_day(settings, ds, full_retrain=full_retrain, progress=False)


def export_knowledge(settings: Settings, ds: dt.date) -> Any:
    """Knowledge snapshot of ``ds`` (user, item, user x category) from its checkpoint."""
    from models.pretrain.export import export_knowledge as export

    return export(settings, ds)


def _snapshot_lineage(settings: Settings, ds: dt.date) -> str:
    from models.pretrain.checkpoint import load_checkpoint

    return load_checkpoint(settings, ds).lineage


def validate_knowledge(settings: Settings, ds: dt.date) -> GateReport:
    """Gate on the knowledge snapshot of ``ds``; its report is recorded in the snapshot's
    manifest (publication reads it there); raises GateFailed with a summary."""
    from keep.lake import knowledge
    from keep.quality.knowledge_gate import validate_knowledge as gate

    lineage = _snapshot_lineage(settings, ds)
    report = gate(settings, ds, lineage)
    manifest = knowledge.read_manifest(settings, lineage, ds)
    if manifest is None:
        raise InputError(f"no manifest for knowledge snapshot {lineage}/{ds}: export it first")
    knowledge.write_manifest(settings, lineage, ds, {**manifest, "gate": report.to_dict()})
    return _gate(report)


def publish_knowledge(settings: Settings, ds: dt.date) -> dict[str, Any]:
    """Publish the gated snapshot of ``ds`` to Feast's online store (non-live blue/green
    slot, then one pointer switch); returns what the knowledge Asset event carries.

    Refuses a snapshot whose manifest holds no passed gate report (a re-export after the
    gate rewrites the manifest without one)."""
    from keep.lake import knowledge
    from keep.store.feast_repo import apply_repo
    from keep.store.publication import publish_knowledge as publish

    lineage = _snapshot_lineage(settings, ds)
    manifest = knowledge.read_manifest(settings, lineage, ds) or {}
    gate_report = manifest.get("gate") or {"success": False, "ds": ds.isoformat()}
    # `feast apply` is idempotent: the registry follows feature_repo/ at every publication.
    store = apply_repo(settings)
    return publish(settings, ds, lineage, gate=gate_report, store=store)


def maintain(settings: Settings, ds: dt.date) -> dict[str, Any]:
    """Lake maintenance after the day's publication: retention, compaction, VACUUM, old
    checkpoints, lineages nothing uses (keep.flows.maintenance; settings.maintenance)."""
    from keep.flows.maintenance import maintain as run

    return run(settings, ds)


def train_downstream(
    settings: Settings, ds: dt.date, *, arms: list[str] | None = None, train: bool = True
) -> dict[str, Any]:
    """The downstream CTR models of ``ds`` (``arms``, default ``downstream.daily_arms``:
    ``base`` and ``keep``): the day's point-in-time training set through Feast with the
    knowledge served that day (the gated snapshot of ``ds - 1``), then each arm evaluated
    on ``ds`` (trained through ``ds - 1``) and trained on it (``train=False``: evaluated
    only). Skipped before the first knowledge snapshot."""
    from keep.lake import knowledge
    from keep.store.training_sets import write_training_set
    from models.downstream.daily import run_day

    served = knowledge.served_knowledge(settings, ds)
    if served is None:
        return {
            "ds": ds.isoformat(),
            "skipped": f"no gated knowledge snapshot of {ds - dt.timedelta(days=1)}",
        }
    lineage, snapshot = served
    write_training_set(settings, ds, ds, lineage=lineage)
    return run_day(
        settings,
        ds,
        lineage=lineage,
        snapshot=snapshot,
        arms=arms or settings.downstream.daily_arms,
        train=train,
    )


Step = Callable[[Settings, dt.date], Any]

# The daily pipeline, in order: the Airflow DAG has one task per entry (its task id is the
# name), ``keep run`` calls them one after the other. Each gate (validate*) stops
# everything after it. The publication triggers the downstream model refresh
# (keep.flows.downstream, dags/keep_downstream_ctr.py).
STEPS: dict[str, Step] = {
    "land_raw": land_raw,
    "ingest": ingest,
    "validate": validate,
    "aggregate": aggregate,
    "validate_state": validate_state,
    "samples": samples,
    "validate_samples": validate_samples,
    "pretrain": pretrain,
    "export_knowledge": export_knowledge,
    "validate_knowledge": validate_knowledge,
    "publish_knowledge": publish_knowledge,
    "maintain": maintain,
}


def run_step(settings: Settings, name: str, ds: dt.date) -> dict[str, Any]:
    """Run step ``name`` of :data:`STEPS` for ``ds``; its result as JSON-ready data
    (what an Airflow task returns as its XCom)."""
    if name not in STEPS:
        raise InputError(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    return {"ds": ds.isoformat(), "step": name, "result": to_json(STEPS[name](settings, ds))}


def to_json(value: Any) -> Any:
    """Dataclasses, reports, dates and paths as plain JSON values."""
    if hasattr(value, "to_dict"):
        return to_json(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_json(v) for v in value]
    if isinstance(value, dt.date | Path):
        return str(value)
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


def check_backfill(settings: Settings, start: dt.date, end: dt.date) -> None:
    """Refuse a backfill that cannot run, before anything runs: a reversed range, or a first
    day without bronze or without the state of the day before it."""
    from spark_jobs.aggregate import check_order

    days(start, end)
    check_order(settings, start)


def backfill(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    on_day: Callable[[dt.date], None] | None = None,
    *,
    gates_on: bool = True,
) -> list[dt.date]:
    """Recompute state and samples from ``start`` through ``end`` and every later day that
    depends on them (up to the last day that has state), in order, gates included; returns
    those days.

    Use it after re-ingesting past days: ``keep ingest --ds D`` then
    ``keep backfill --start D --end D``. ``gates_on=False`` skips the state and samples
    gates (tests of the recomputation itself; the gates have their own tests).
    :func:`backfill_knowledge` from ``start`` then recomputes what the pre-training derived
    from them (``keep backfill --through-knowledge`` runs both).
    """
    from spark_jobs.aggregate import state_days

    check_backfill(settings, start, end)
    last = max([end, *state_days(settings)])
    span = days(start, last)
    for ds in span:
        if on_day is not None:
            on_day(ds)
        aggregate(settings, ds)
        if gates_on:
            validate_state(settings, ds)
        samples(settings, ds)
        if gates_on:
            validate_samples(settings, ds)
    return span


@dataclass
class KnowledgeBackfill:
    """What :func:`backfill_knowledge` recomputed, in order, and what it republished."""

    # (lineage, day) of every recomputed checkpoint and knowledge snapshot (gate passed).
    snapshots: list[tuple[str, dt.date]] = field(default_factory=list)
    # The live snapshot before the backfill (None: nothing was published).
    live_before: dict[str, Any] | None = None
    # publish_knowledge's result for the republished snapshot; None: nothing republished
    # (the live snapshot was not among the recomputed ones).
    published: dict[str, Any] | None = None


def backfill_knowledge(
    settings: Settings,
    start: dt.date,
    on_snapshot: Callable[[str, dt.date], None] | None = None,
) -> KnowledgeBackfill:
    """Recompute what the pre-training derived from the samples of ``start`` and later.

    For every day from ``start`` on that has a pre-training checkpoint, in order, in the
    lineage that holds it: :func:`pretrain` (warm start from the day before's checkpoint of
    that lineage; on a lineage's first day, or a day of ``pretrain.full_retrain_on``, from
    scratch as the daily step does -- a lineage id is deterministic, so it is kept),
    :func:`export_knowledge`, and :func:`validate_knowledge` (its report recorded in the
    snapshot's manifest). ``CURRENT.json`` names that lineage while the day runs (the steps
    follow it) and, at the end, the lineage the daily step extended before.

    Then only the snapshot that was live before is republished (:func:`publish_knowledge`,
    as soon as it is recomputed and its gate passed), if it is among the recomputed ones:
    every publication moves the live pointer, so publishing the recomputed snapshots one
    after another would move it backwards in time. A failed gate stops the backfill
    (``GateFailed``), as it stops a daily run; the days before it stay recomputed.

    Run it after :func:`backfill` of the same days: the pre-training reads their samples.
    Downstream models and their training sets are not retrained.
    """
    from keep.store.publication import live_snapshot
    from models.pretrain.checkpoint import (
        checkpoint_days,
        current_lineage,
        lineages,
        set_current_lineage,
    )

    todo = sorted(
        (
            (ds, lineage)
            for lineage in lineages(settings)
            for ds in checkpoint_days(settings, lineage)
            if ds >= start
        ),
        key=lambda item: item[0],  # stable: the lineages of one day stay oldest first
    )
    result = KnowledgeBackfill()
    if not todo:
        return result
    result.live_before = live_snapshot(settings)
    live = result.live_before or {}
    extended = current_lineage(settings)
    renamed: dict[str, str] = {}  # old lineage -> the lineage its recomputation produced
    try:
        for ds, old in todo:
            if on_snapshot is not None:
                on_snapshot(old, ds)
            set_current_lineage(settings, renamed.get(old, old))
            lineage = str(pretrain(settings, ds).lineage)
            renamed[old] = lineage
            export_knowledge(settings, ds)
            try:
                validate_knowledge(settings, ds)
            except GateFailed as failed:
                online = (
                    "the live snapshot was republished before it"
                    if result.published is not None
                    else "the online store is unchanged"
                )
                raise GateFailed(
                    f"backfill stopped at knowledge snapshot {lineage}/{ds}, whose gate failed "
                    f"(later days not recomputed; {online}):\n{failed}"
                ) from failed
            result.snapshots.append((lineage, ds))
            if (live.get("lineage"), live.get("snapshot_ds")) == (old, ds.isoformat()):
                result.published = publish_knowledge(settings, ds)
    finally:
        if extended is not None:
            set_current_lineage(settings, renamed.get(extended, extended))
    return result


@dataclass
class DayResult:
    """What one day's run did (the rows of ``keep run``'s summary table)."""

    ds: dt.date
    counts: dict[str, SourceCounts] = field(default_factory=dict)
    samples: int | None = None
    lineage: str | None = None
    # Held-out click AUC: yesterday's model on this day's samples, before training on them.
    click_auc: float | None = None
    # The downstream arms' held-out click AUC on the day (arm -> AUC, None on a first day)
    # and the generator's oracle on the same impressions (synthetic worlds only).
    downstream_auc: dict[str, float | None] = field(default_factory=dict)
    downstream_oracle_auc: float | None = None
    # What the downstream refresh did after the publication: "registered <name>",
    # "rejected: <gate summary>" or "skipped".
    downstream_model: str = ""
    gate_passed: bool = False
    gate_summary: str = ""

    @property
    def ok(self) -> bool:
        return self.gate_passed


def with_demo_mode(settings: Settings, on: bool) -> Settings:
    """``settings`` with ``airflow.demo_mode`` set to ``on`` (``keep run --land/--no-land``)."""
    return settings.model_copy(
        update={"airflow": settings.airflow.model_copy(update={"demo_mode": on})}
    )


def run_day(settings: Settings, ds: dt.date, *, land: bool | None = None) -> DayResult:
    """Run every step for ``ds`` in this process, in order (what the DAG's tasks do).

    ``land`` overrides ``airflow.demo_mode`` for the day: True generates the day's raw
    files (the synthetic world), False only checks that they have landed; None (default)
    follows the settings.
    """
    if land is not None:
        settings = with_demo_mode(settings, land)
    result = DayResult(ds=ds)
    try:
        for name in STEPS:
            outcome = run_step(settings, name, ds)["result"]
            if name == "ingest":
                result.counts = ingest_counts(outcome)
            elif name == "samples":
                result.samples = outcome[PRETRAIN_SAMPLES]
            elif name == "pretrain":
                result.click_auc = outcome.get("metrics", {}).get("click_auc")
                result.lineage = outcome.get("lineage")
            elif name == "publish_knowledge":
                from keep.flows import downstream

                refreshed = downstream.run_event(settings, [outcome])
                result.downstream_model = _model_outcome(refreshed)
    except GateFailed as failed:
        result.gate_summary = str(failed)
        return result
    from models.downstream.daily import read_day_metrics

    result.downstream_auc = downstream_aucs(read_day_metrics(settings, ds) or {})
    result.downstream_oracle_auc = downstream_oracle_auc(settings, ds)
    result.gate_passed = True
    result.gate_summary = f"all gates passed for {ds}"
    return result


def _model_outcome(refreshed: dict[str, Any]) -> str:
    if refreshed["status"] == "registered":
        return f"registered {refreshed['name']}"
    if refreshed["status"] == "rejected":
        return f"rejected: {refreshed['reason']}"
    return "skipped"


def ingest_counts(outcome: dict[str, Any]) -> dict[str, SourceCounts]:
    names = SourceCounts.__dataclass_fields__
    return {src: SourceCounts(**{k: c[k] for k in names}) for src, c in outcome.items()}


def run_day_airflow(settings: Settings, ds: dt.date) -> DayResult:
    """Run ``ds`` through the real DAGs (``airflow dags test``): the daily refresh, then the
    downstream model refresh on the knowledge it published (what the Asset event triggers
    under a running scheduler; ``dags test`` passes the event as the run's conf). Then read
    back the day's audit and metrics."""
    from keep.flows import downstream
    from keep.flows.airflow_env import (
        DOWNSTREAM_DAG_ID,
        AirflowCommandError,
        dags_test,
        task_states,
    )

    try:
        dags_test(settings, ds, fail_fast=True)
    except AirflowCommandError as exc:
        return DayResult(ds=ds, counts=audit_counts(settings, ds), gate_summary=str(exc))
    states = task_states(settings, ds)
    passed = all(states.get(step) == "success" for step in STEPS)
    model = ""
    event = downstream.knowledge_event(settings) if passed else None
    if event is not None and event["snapshot_ds"] == ds.isoformat():
        try:
            dags_test(settings, None, dag_id=DOWNSTREAM_DAG_ID, conf=event, fail_fast=True)
            from keep.store import model_registry

            live = model_registry.live(settings, downstream.subsystem(settings))
            model = f"live {live.name}" if live else "no live version"
        except AirflowCommandError as exc:
            model = f"downstream DAG failed: {str(exc).splitlines()[0]}"
    lineage, click_auc = held_out_click_auc(settings, ds)
    from models.downstream.daily import read_day_metrics

    return DayResult(
        ds=ds,
        counts=audit_counts(settings, ds),
        samples=delta.partition_rows(settings, sample_specs(settings.aggregate.windows)[0], ds),
        lineage=lineage,
        click_auc=click_auc,
        downstream_auc=downstream_aucs(read_day_metrics(settings, ds) or {}),
        downstream_oracle_auc=downstream_oracle_auc(settings, ds),
        downstream_model=model,
        gate_passed=passed,
        gate_summary=f"Airflow task states for {ds}: {states}",
    )


def held_out_click_auc(settings: Settings, ds: dt.date) -> tuple[str | None, float | None]:
    """The current lineage and its held-out click AUC on ``ds`` (from the day's metrics file)."""
    from models.pretrain.checkpoint import current_lineage, metrics_path

    lineage = current_lineage(settings)
    if lineage is None:
        return None, None
    path = metrics_path(settings, lineage, ds)
    if not path.is_file():
        return lineage, None
    held_out = json.loads(path.read_text()).get("eval") or {}
    auc = held_out.get("click_auc")
    return lineage, float(auc) if auc is not None else None


def downstream_aucs(outcome: dict[str, Any]) -> dict[str, float | None]:
    """Arm -> held-out click AUC from a ``train_downstream`` result (None: not evaluated)."""
    return {
        arm: (m.get("auc") if m.get("held_out") else None)
        for arm, m in (outcome.get("arms") or {}).items()
    }


def downstream_oracle_auc(settings: Settings, ds: dt.date) -> float | None:
    """The generator's oracle click AUC on the day's downstream samples, when the world is
    synthetic (its truth is read here, for the summary only: never by the pipeline)."""
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    from keep.core.tables import DOWNSTREAM_SAMPLES, samples_spec
    from keep.sources.generator import truth_dir
    from models.evaluation import auc

    truth = truth_dir(settings, "oracle", ds)
    spec = samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows)
    if not truth.is_dir() or not delta.table_exists(settings, spec):
        return None
    samples = DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_table(
        columns=["impression_id", "click", "weight"], filters=[("ds", "=", ds.isoformat())]
    )
    oracle = pads.dataset(str(truth), format="parquet").to_table(
        columns=["impression_id", "p_click"]
    )
    joined = samples.join(oracle, "impression_id", join_type="inner")
    if joined.num_rows == 0:
        return None
    return auc(
        joined.column("click").to_numpy(),
        joined.column("p_click").to_numpy(),
        joined.column("weight").to_numpy(),
    )


def audit_counts(settings: Settings, ds: dt.date) -> dict[str, SourceCounts]:
    """The day's rows of bronze.ingest_audit, read with delta-rs (no JVM)."""
    from deltalake import DeltaTable

    if not delta.table_exists(settings, INGEST_AUDIT):
        return {}
    table = DeltaTable(str(delta.table_path(settings, INGEST_AUDIT)))
    rows = table.to_pyarrow_table(filters=[("ds", "=", ds.isoformat())]).to_pylist()
    names = SourceCounts.__dataclass_fields__
    return {r["source"]: SourceCounts(**{k: r[k] for k in names}) for r in rows}

"""Daily incremental training of the downstream arms, with progressive validation.

For each day ``d`` every arm is first *evaluated* on ``d`` -- the model trained through
``d - 1``, the knowledge snapshot of ``d - 1`` as it was served that day (the training set's
point-in-time join) -- and then *warm-started and trained* on ``d``. So every reported
figure is out of sample: test days come strictly after the last day the model or the
knowledge saw.

What a day's rows are (:func:`day_table`): the rows of ``gold.downstream_training_set`` of
``(lineage, d)`` plus the downstream-only counters (``models.downstream.counters``) from the
earlier days of ``gold.downstream_samples``.

**When the knowledge lineage changes** (the pre-training was retrained from scratch), a
model that reads knowledge (``keep``, ``concat``) was trained in the old lineage's space.
``downstream.lineage_switch`` says what happens (chosen by measurement, docs/downstream.md):

* ``procrustes`` -- the new lineage's vectors are mapped into the space the model was
  trained in by an orthogonal matrix fitted on the keys both snapshots share (orthogonal
  Procrustes, per entity); the model then trains on on the mapped vectors;
* ``reinit`` -- the plug-in's last layers (``concat``: the knowledge inputs' weights) are
  zeroed again: the model restarts from its own base behaviour and learns the new space;
* ``none`` -- the new vectors are fed as they are.

The ``finetune`` arm restarts from the new lineage's pre-trained weights (the paper's
comparison: a fine-tuned model has to start over when pre-training changes).

:func:`run_day` is the pipeline's entry point (checkpoints per arm, seed and day);
:class:`Arms` holds arms in memory for benchmarks that run many days and seeds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.files import atomic_write_text
from keep.core.tables import (
    DOWNSTREAM_SAMPLES,
    ENTITIES,
    KNOWLEDGE_ENTITIES,
    LINEAGE,
    TRAINING_SET,
    samples_spec,
    training_set_spec,
)
from keep.lake import delta
from keep.lake import knowledge as kn
from models.downstream.checkpoint import DownstreamMeta, load_model, model_path, save_model
from models.downstream.counters import add_downstream_counters
from models.downstream.finetune import FinetuneModel, finetune_from_pretrain
from models.downstream.model import DownstreamConfig, DownstreamModel, build_model, plug_into
from models.downstream.trainer import predict, train_on
from models.evaluation import auc, calibration, gauc, logloss
from models.pretrain.optim import PretrainOptimizer

log = logging.getLogger(__name__)

ALL_ARMS: tuple[str, ...] = ("base", "keep", "concat", "finetune", "superdomain_features")
KNOWLEDGE_ARMS = frozenset({"keep", "concat"})
SWITCH_RULES = ("procrustes", "reinit", "none")


# --------------------------------------------------------------------------- data


def _read(settings: Settings, spec_name: str, path: Any, filters: list[Any]) -> pa.Table:
    from deltalake import DeltaTable

    if not delta.has_commit(path):
        raise InputError(f"{spec_name} does not exist at {path}: build it first")
    return DeltaTable(str(path)).to_pyarrow_table(filters=filters)


def history_table(settings: Settings, ds: dt.date) -> pa.Table:
    """Downstream samples of the days the downstream counters look back on (before ``ds``)."""
    spec = samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows)
    first = ds - dt.timedelta(days=max(settings.downstream.counter_windows))
    columns = ["user_id", "item_id", "click", "weight", "scenario", "ds"]
    from deltalake import DeltaTable

    path = delta.table_path(settings, spec)
    if not delta.table_exists(settings, spec):
        return pa.table(
            {
                c: pa.array([], pa.string() if c in ("scenario", "ds") else pa.float64())
                for c in columns
            }
        )
    return DeltaTable(str(path)).to_pyarrow_table(
        columns=columns,
        filters=[("ds", ">=", first.isoformat()), ("ds", "<", ds.isoformat())],
    )


def day_table(settings: Settings, ds: dt.date, lineage: str) -> pa.Table:
    """The training-set rows of ``(lineage, ds)`` with the downstream-only counters."""
    spec = training_set_spec(settings.aggregate.windows)
    rows = _read(
        settings,
        TRAINING_SET,
        delta.table_path(settings, spec),
        [(LINEAGE, "=", lineage), ("ds", "=", ds.isoformat())],
    )
    if rows.num_rows == 0:
        raise InputError(
            f"{TRAINING_SET} has no rows for lineage {lineage!r} and day {ds}: build them "
            f"with `keep training-set --start {ds} --end {ds}`."
        )
    d = settings.downstream
    return add_downstream_counters(
        rows,
        history_table(settings, ds),
        ds=ds,
        windows=d.counter_windows,
        scenario=d.scenario,
        prior_strength=d.prior_strength,
    )


# --------------------------------------------------------------------------- lineage switch


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` minimising ``|source @ R - target|`` (rows: the same keys)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    return np.asarray(u @ vt, dtype=np.float32)


def _snapshot_vectors(
    settings: Settings, entity: str, lineage: str, ds: dt.date, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Key hashes and vectors of a deterministic sample of one snapshot's keys."""
    threshold = kn.sample_threshold(min(1.0, limit / max(1, _rows(settings, entity, lineage, ds))))
    keys: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    columns = [*ENTITIES[entity], "vector"]
    batch_rows = settings.knowledge.export_batch_rows
    for batch in kn.snapshot_batches(settings, entity, lineage, ds, columns, batch_rows):
        h = kn.key_hash(entity, batch)
        take = h <= threshold
        if take.any():
            keys.append(h[take])
            vec = kn.vectors_matrix(batch.column("vector"), _dim(batch))
            vectors.append(vec[take])
    if not keys:
        return np.zeros(0, np.uint64), np.zeros((0, 0), np.float32)
    return np.concatenate(keys), np.concatenate(vectors)


def _rows(settings: Settings, entity: str, lineage: str, ds: dt.date) -> int:
    return kn.snapshot_rows(settings, entity).get((lineage, ds.isoformat()), 0)


def _dim(batch: pa.RecordBatch) -> int:
    lengths = pc.list_value_length(batch.column("vector"))
    return int(pc.max(lengths).as_py() or 0)


def fit_alignment(
    settings: Settings,
    old: tuple[str, dt.date],
    new: tuple[str, dt.date],
    *,
    limit: int = 20_000,
) -> dict[str, list[list[float]]] | None:
    """Per entity, the orthogonal map from the ``new`` snapshot's space to the ``old`` one's,
    fitted on their shared keys; None when the dimensions differ or keys are too few."""
    out: dict[str, list[list[float]]] = {}
    for entity in KNOWLEDGE_ENTITIES:
        k_old, v_old = _snapshot_vectors(settings, entity, *old, limit)
        k_new, v_new = _snapshot_vectors(settings, entity, *new, limit)
        shared, i_old, i_new = np.intersect1d(k_old, k_new, return_indices=True)
        if v_old.shape[1:] != v_new.shape[1:] or len(shared) < 2 * max(1, v_old.shape[1]):
            return None
        out[entity] = procrustes(v_new[i_new], v_old[i_old]).tolist()
    return out


def aligned(table: pa.Table, alignment: dict[str, list[list[float]]] | None) -> pa.Table:
    """``table`` with each knowledge vector column mapped by its entity's matrix."""
    if not alignment:
        return table
    for entity, matrix in alignment.items():
        name = f"{entity}_vector"
        col = table.column(name).combine_chunks()
        r = np.asarray(matrix, dtype=np.float32)
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        lengths = np.asarray(pc.list_value_length(col).fill_null(0).to_numpy(), dtype=np.int64)
        full = lengths == r.shape[0]
        values = np.zeros((table.num_rows, r.shape[0]), dtype=np.float32)
        values[full] = flat.reshape(-1, r.shape[0]) @ r if flat.size else values[full]
        offsets = pa.array(np.arange(table.num_rows + 1, dtype=np.int32) * r.shape[0], pa.int32())
        mapped = pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), pa.float32()))
        table = table.set_column(table.schema.get_field_index(name), name, mapped.cast(col.type))
    return table


def _zero_knowledge_inputs(model: DownstreamModel) -> None:
    """``reinit``: the plug-in's last layers (``concat``: the knowledge columns of the first
    layer) back to zero, so the model computes its base output again."""
    with torch.no_grad():
        if model.plugin is not None:
            for proj in model.plugin.projections:
                last = proj[-1]  # type: ignore[index]
                last.weight.zero_()
                last.bias.zero_()
        if model.arm == "concat":
            first = model.tower.layers[0]
            width = model.inputs.width
            assert isinstance(first, torch.nn.Linear)
            first.weight[:, width:].zero_()


# --------------------------------------------------------------------------- arms


@dataclass
class ArmState:
    """One arm and seed between days: the model, its optimizer and what it was trained on."""

    model: DownstreamModel | FinetuneModel
    optimizer: PretrainOptimizer | None
    meta: DownstreamMeta


@dataclass
class DayOutcome:
    """Held-out metrics of one arm and seed on one day (None: nothing trained yet)."""

    arm: str
    seed: int
    metrics: dict[str, float] | None
    switched: str | None = None  # the lineage-switch rule applied before this day
    scores: np.ndarray | None = field(default=None, repr=False)


def metrics_of(table: pa.Table, scores: np.ndarray) -> dict[str, float]:
    """AUC, GAUC, log loss and calibration of ``scores`` on ``table``'s clicks."""
    y = np.asarray(table.column("click").to_numpy(zero_copy_only=False), dtype=np.float64)
    w = np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64)
    users = np.asarray(table.column("user_id").to_numpy(zero_copy_only=False))
    return {
        "auc": auc(y, scores, w),
        "gauc": gauc(users, y, scores, w),
        "logloss": logloss(y, scores, w),
        "calibration": calibration(y, scores, w),
        "rows": float(table.num_rows),
    }


class Arms:
    """Every (arm, seed) of a run, trained day after day in memory."""

    def __init__(self, settings: Settings, arms: Iterable[str], seeds: Iterable[int]) -> None:
        unknown = sorted(set(arms) - set(ALL_ARMS))
        if unknown:
            raise InputError(f"unknown arm(s) {unknown}: use {', '.join(ALL_ARMS)}")
        if settings.downstream.lineage_switch not in SWITCH_RULES:
            raise InputError(
                f"downstream.lineage_switch is {settings.downstream.lineage_switch!r}: use one "
                f"of {', '.join(SWITCH_RULES)}"
            )
        self.settings = settings
        self.arms = list(arms)
        self.seeds = list(seeds)
        self.config = DownstreamConfig.from_settings(settings)
        self.states: dict[tuple[str, int], ArmState] = {}
        self.noop_at_init_max_abs_diff: float | None = None

    # -- creation --------------------------------------------------------------------

    def _new(
        self, arm: str, seed: int, table: pa.Table, lineage: str, snapshot: dt.date
    ) -> ArmState:
        if arm == "finetune":
            # A knowledge lineage is named after the pre-training lineage that exported it.
            model: DownstreamModel | FinetuneModel = finetune_from_pretrain(
                self.settings, snapshot, lineage
            )
            meta = DownstreamMeta(
                arm=arm, config=model.config.to_json(), seed=seed, pretrain_lineage=lineage
            )
            return ArmState(model, None, meta)
        base = build_model(self.config, "base", seed=seed)
        _start_at_base_rate(base, table)
        if arm == "keep":
            model = plug_into(base, seed=seed)
            self._check_noop(base, model, table)
        elif arm == "base":
            model = base
        else:
            model = build_model(self.config, arm, seed=seed)
            _start_at_base_rate(model, table)
        meta = DownstreamMeta(arm=arm, config=self.config.to_json(), seed=seed)
        return ArmState(model, None, meta)

    def _check_noop(self, base: DownstreamModel, keep: DownstreamModel, table: pa.Table) -> None:
        """The plugged model at initialisation computes exactly the base model's output."""
        with torch.inference_mode():
            diff = float((keep(keep.batch(table)) - base(base.batch(table))).abs().max())
        self.noop_at_init_max_abs_diff = max(self.noop_at_init_max_abs_diff or 0.0, diff)

    # -- one day ---------------------------------------------------------------------

    def _switch(self, state: ArmState, lineage: str, snapshot: dt.date) -> str | None:
        """Apply the lineage-switch rule when the day's knowledge is of another lineage."""
        meta = state.meta
        if state.model.arm not in KNOWLEDGE_ARMS or meta.knowledge_lineage in (None, lineage):
            return None
        rule = self.settings.downstream.lineage_switch
        model = state.model
        assert isinstance(model, DownstreamModel)
        if rule == "procrustes":
            assert meta.snapshot_ds is not None
            alignment = fit_alignment(
                self.settings,
                (meta.knowledge_lineage, dt.date.fromisoformat(meta.snapshot_ds)),
                (lineage, snapshot),
            )
            if alignment is None:
                rule = "reinit"  # dimensions differ or too few shared keys: nothing to map
            else:
                meta.alignment = _compose(alignment, meta.alignment)
        if rule == "reinit":
            _zero_knowledge_inputs(model)
            meta.alignment = None
        log.info(
            "%s seed %d: knowledge lineage %s -> %s (%s)",
            model.arm,
            meta.seed,
            meta.knowledge_lineage,
            lineage,
            rule,
        )
        meta.knowledge_lineage = lineage
        return rule

    def step(
        self,
        ds: dt.date,
        table: pa.Table,
        lineage: str,
        snapshot: dt.date,
        *,
        train: bool = True,
        train_table: pa.Table | None = None,
    ) -> list[DayOutcome]:
        """Evaluate every arm and seed on day ``ds`` (models trained through ``ds - 1``),
        then train them on it (on ``train_table`` when given: a subset of ``table``'s rows,
        e.g. without a holdout)."""
        outcomes = []
        for arm in self.arms:
            for seed in self.seeds:
                key = (arm, seed)
                state = self.states.get(key)
                switched = None
                if state is None:
                    state = self._new(arm, seed, table, lineage, snapshot)
                    outcome = DayOutcome(arm, seed, None)
                else:
                    if arm == "finetune" and state.meta.pretrain_lineage != lineage:
                        # Fine-tuning cannot carry over: start from the new pre-training.
                        state, switched = self._new(arm, seed, table, lineage, snapshot), "restart"
                    else:
                        switched = self._switch(state, lineage, snapshot)
                    scores = predict(state.model, aligned(table, state.meta.alignment))
                    outcome = DayOutcome(arm, seed, metrics_of(table, scores), switched, scores)
                if train:
                    rows = aligned(
                        table if train_table is None else train_table, state.meta.alignment
                    )
                    report = train_on(
                        state.model,
                        rows,
                        self.settings.downstream,
                        seed=seed * 100_003 + ds.toordinal(),
                        optimizer=state.optimizer,
                    )
                    state.optimizer = report.optimizer
                    state.meta.train_days.append(ds.isoformat())
                    if state.model.arm in KNOWLEDGE_ARMS:
                        state.meta.knowledge_lineage = lineage
                        state.meta.snapshot_ds = snapshot.isoformat()
                self.states[key] = state
                outcomes.append(outcome)
        return outcomes

    # -- checkpoints -----------------------------------------------------------------

    def save(self, ds: dt.date) -> None:
        for (arm, seed), state in self.states.items():
            save_model(
                state.model, state.meta, model_path(self.settings, arm, seed, ds), state.optimizer
            )

    def load(self, arm: str, seed: int, path: Path) -> None:
        """Warm start ``(arm, seed)`` from the checkpoint at ``path`` (weights, optimizer)."""
        loaded = load_model(path)
        optimizer = PretrainOptimizer(loaded.model, self.settings.downstream)
        if loaded.optimizer_state:
            optimizer.load_state_dict(loaded.optimizer_state)
        loaded.model.train()
        self.states[(arm, seed)] = ArmState(loaded.model, optimizer, loaded.meta)

    def switch(self, arm: str, seed: int, lineage: str, snapshot: dt.date) -> str | None:
        """Apply the lineage-switch rule to ``(arm, seed)`` now (see :meth:`_switch`)."""
        return self._switch(self.states[(arm, seed)], lineage, snapshot)

    def newest_checkpoint(self, arm: str, seed: int, before: dt.date) -> Path | None:
        """``(arm, seed)``'s newest daily checkpoint of a day before ``before``."""
        folder = model_path(self.settings, arm, seed, before).parent
        if not folder.is_dir():
            return None
        found = sorted(
            d
            for d in (
                dt.date.fromisoformat(p.stem.removeprefix("ds=")) for p in folder.glob("ds=*.pt")
            )
            if d < before
        )
        return model_path(self.settings, arm, seed, found[-1]) if found else None

    def load_latest(self, before: dt.date) -> None:
        """Warm start: each arm's and seed's newest checkpoint of a day before ``before``."""
        for arm in self.arms:
            for seed in self.seeds:
                path = self.newest_checkpoint(arm, seed, before)
                if path is not None:
                    self.load(arm, seed, path)

    def prune(self, keep_days: int) -> None:
        """Delete each arm's checkpoints but the newest ``keep_days``."""
        for arm in self.arms:
            for seed in self.seeds:
                folder = model_path(self.settings, arm, seed, dt.date.today()).parent
                if folder.is_dir():
                    for old in sorted(folder.glob("ds=*.pt"))[:-keep_days]:
                        old.unlink()


def _start_at_base_rate(model: DownstreamModel, table: pa.Table) -> None:
    """Set the click head's bias to the logit of the day's (weighted) click rate: a new model
    starts calibrated instead of at 50 %, which matters when a sparse subsystem gives only a
    few hundred steps a day."""
    y = np.asarray(table.column("click").to_numpy(zero_copy_only=False), dtype=np.float64)
    w = np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64)
    rate = float(np.clip((y * w).sum() / max(w.sum(), 1e-12), 1e-4, 1 - 1e-4))
    with torch.no_grad():
        model.tower.head.bias.fill_(float(np.log(rate / (1 - rate))))


def _compose(
    new: dict[str, list[list[float]]], old: dict[str, list[list[float]]] | None
) -> dict[str, list[list[float]]]:
    """Map new -> previous lineage, then previous -> the model's space."""
    if not old:
        return new
    return {e: (np.asarray(new[e]) @ np.asarray(old[e])).tolist() for e in new}


# --------------------------------------------------------------------------- pipeline step


def run_day(
    settings: Settings,
    ds: dt.date,
    *,
    lineage: str,
    snapshot: dt.date,
    arms: Iterable[str],
    train: bool = True,
) -> dict[str, Any]:
    """The pipeline's downstream step for ``ds``: each arm (first seed) evaluated on ``ds``
    from its newest checkpoint of a day before, then trained on ``ds`` and checkpointed; the
    result is also recorded in :func:`day_metrics_path`. ``train=False`` only evaluates
    (nothing is written)."""
    seeds = settings.downstream.seeds[:1]
    run = Arms(settings, arms, seeds)
    run.load_latest(ds)
    table = day_table(settings, ds, lineage)
    torch.set_num_threads(settings.downstream.threads)
    outcomes = run.step(ds, table, lineage, snapshot, train=train)
    result = {
        "ds": ds.isoformat(),
        "lineage": lineage,
        "snapshot_ds": snapshot.isoformat(),
        "rows": table.num_rows,
        "arms": {
            o.arm: {
                **(o.metrics or {}),
                "held_out": o.metrics is not None,
                "lineage_switch": o.switched,
            }
            for o in outcomes
        },
    }
    if train:
        run.save(ds)
        run.prune(settings.downstream.checkpoint_days_kept)
        atomic_write_text(day_metrics_path(settings, ds), json.dumps(result, indent=2) + "\n")
    return result


def day_metrics_path(settings: Settings, ds: dt.date) -> Path:
    """Where :func:`run_day` records what it measured for ``ds``."""
    return settings.downstream.checkpoint_root / "metrics" / f"ds={ds.isoformat()}.json"


def read_day_metrics(settings: Settings, ds: dt.date) -> dict[str, Any] | None:
    path = day_metrics_path(settings, ds)
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data

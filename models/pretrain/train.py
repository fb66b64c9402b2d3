"""Pre-training of KEEP's multi-task model: the typed training loop and the daily step.

* :func:`train` — the low-level loop: a model, an optimizer and a :class:`SampleReader`;
  checkpoints through a callback every ``checkpoint_every_steps``; exact resume from a
  :class:`ReaderPosition`.
* :func:`evaluate` — per-head AUC and log loss of a model on one day's samples.
* :func:`pretrain_day` — the daily pipeline step for day ``ds``:

  - **warm start** (default): the current lineage has a checkpoint for ``ds - 1`` with the
    same model config: load its weights and optimizer, evaluate it on day ``ds`` (the
    progressive, next-day evaluation: the model has never seen ``ds``), then train on
    ``ds``'s samples and write ``<lineage>/ds=<ds>.pt``.
  - **full retrain / new lineage** (``full_retrain=True``, or no ``ds - 1`` checkpoint, or a
    changed config): train from scratch on the available days of
    ``[ds - full_retrain_days + 1, ds - 1]``, evaluate on ``ds`` (held out), then train on
    ``ds`` too, so the day's checkpoint has seen every day up to ``ds``. With no earlier
    day available the run trains on ``ds`` alone and reports no held-out metrics.

  Under ``torchrun`` (a process group is initialised, see models/pretrain/ddp.py) every rank
  trains on its own shard with the same number of steps, gradients are averaged by DDP,
  and rank 0 evaluates and writes the checkpoints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.files import atomic_write_text
from models.pretrain.checkpoint import (
    TrainingSnapshot,
    checkpoint_days,
    checkpoint_path,
    current_lineage,
    lineage_dir,
    lineage_id,
    metrics_path,
    model_from_snapshot,
    partial_path,
    read_snapshot,
    save_snapshot,
    set_current_lineage,
)
from models.pretrain.features import SampleBatch, sample_columns
from models.pretrain.losses import FunnelLoss, funnel_probabilities
from models.pretrain.metrics import auc, logloss
from models.pretrain.multitask import ModelConfig, MultiTaskModel
from models.pretrain.optim import PretrainOptimizer
from models.pretrain.reader import ReaderPosition, SampleReader, available_days

log = logging.getLogger("keep.pretrain")
_log = log
# Non-zero ranks log the plan to a silenced child logger (rank 0 says it once).
logging.getLogger("keep.pretrain.quiet").disabled = True

HEADS: tuple[str, ...] = ("click", "cart", "purchase")
EVAL_BATCH_ROWS = 4096


class TrainingInterrupted(RuntimeError):
    """Raised when ``stop_after_steps`` ends a run early (simulates a crash in tests)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_context() -> DistContext:
    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world=dist.get_world_size())
    return DistContext()


@dataclass
class TrainOutcome:
    """What one call of :func:`train` did."""

    steps: int
    samples: int
    mean_loss: float
    seconds: float
    position: ReaderPosition
    completed: bool


def train(
    model: MultiTaskModel,
    optimizer: PretrainOptimizer,
    reader: SampleReader,
    *,
    epochs: int,
    start: ReaderPosition | None = None,
    checkpoint_every_steps: int = 0,
    on_checkpoint: Callable[[ReaderPosition], None] | None = None,
    stop_after_steps: int | None = None,
    progress: bool = False,
    ddp_model: nn.Module | None = None,
    loss_fn: FunnelLoss | None = None,
) -> TrainOutcome:
    """Train ``model`` on ``reader``'s batches for ``epochs`` epochs from ``start``.

    ``on_checkpoint(position)`` is called every ``checkpoint_every_steps`` steps with the
    position of the next batch; ``stop_after_steps`` stops after that many steps of this
    call (``completed=False``). ``ddp_model`` (a DDP wrapper of ``model``) is used for the
    forward pass when given.
    """
    from tqdm import tqdm

    pos = start or ReaderPosition()
    loss_fn = loss_fn or FunnelLoss()
    net: nn.Module = ddp_model if ddp_model is not None else model
    model.train()
    total_steps = sum(reader.steps_per_epoch(e) for e in range(pos.epoch, epochs)) - pos.step
    bar = tqdm(total=max(total_steps, 0), disable=not progress, unit="step", leave=False)
    steps = samples = 0
    loss_sum = 0.0
    began = time.perf_counter()
    try:
        for epoch in range(pos.epoch, epochs):
            step = pos.step if epoch == pos.epoch else 0
            for batch in reader.batches(ReaderPosition(epoch, step)):
                logits = net(batch)
                losses = loss_fn(logits, batch.labels)
                optimizer.zero_grad(set_to_none=True)
                losses.total.backward()
                optimizer.step()
                step += 1
                steps += 1
                samples += len(batch)
                loss_sum += float(losses.total.detach())
                bar.update(1)
                if steps % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum / steps:.4f}")
                here = ReaderPosition(epoch, step)
                if checkpoint_every_steps and on_checkpoint and steps % checkpoint_every_steps == 0:
                    on_checkpoint(here)
                if stop_after_steps is not None and steps >= stop_after_steps:
                    return TrainOutcome(
                        steps,
                        samples,
                        loss_sum / max(steps, 1),
                        time.perf_counter() - began,
                        here,
                        completed=False,
                    )
    finally:
        bar.close()
    return TrainOutcome(
        steps,
        samples,
        loss_sum / max(steps, 1),
        time.perf_counter() - began,
        ReaderPosition(epochs, 0),
        completed=True,
    )


@torch.no_grad()
def predict(model: MultiTaskModel, batch: SampleBatch) -> torch.Tensor:
    """``[B, 3]`` unconditional probabilities P(click), P(click, cart), P(click, purchase)."""
    return funnel_probabilities(model(batch))


def evaluate(
    model: MultiTaskModel,
    table_uri: str | Path,
    day: dt.date,
    *,
    columns: list[str],
    max_seq_len: int = 50,
    max_rows: int | None = None,
) -> dict[str, Any]:
    """AUC and weighted log loss of each head on the samples of ``day``: all of them, or a
    uniform sample of about ``max_rows`` (fixed seed: the same rows for every model scored
    on that table version) when the day has more.

    Cart and purchase are scored with the funnel products (P(click, cart), P(click,
    purchase)) over all impressions, the same quantities their losses train.
    """
    was_training = model.training
    model.eval()
    reader = SampleReader(
        table_uri,
        [day],
        columns=columns,
        batch_size=EVAL_BATCH_ROWS,
        shuffle_buffer=EVAL_BATCH_ROWS * 4,
        seed=0,
        max_seq_len=max_seq_len,
    )
    share = 1.0 if not max_rows or reader.rows <= max_rows else max_rows / reader.rows
    probs, labels, weights = [], [], []
    for index, batch in enumerate(reader.batches(ReaderPosition())):
        if share < 1.0:
            keep = np.random.default_rng([0, index]).random(len(batch)) < share
            batch = batch.take(torch.from_numpy(np.flatnonzero(keep)))
        probs.append(predict(model, batch).numpy())
        lb = batch.labels
        labels.append(torch.stack([lb.click, lb.cart, lb.purchase], dim=-1).numpy())
        weights.append(lb.weight.numpy())
    model.train(was_training)
    p, y, w = np.concatenate(probs), np.concatenate(labels), np.concatenate(weights)
    out: dict[str, Any] = {"eval_ds": day.isoformat(), "eval_rows": len(w)}
    for i, head in enumerate(HEADS):
        value = auc(y[:, i], p[:, i])
        out[f"{head}_auc"] = None if math.isnan(value) else value
        out[f"{head}_logloss"] = logloss(y[:, i], p[:, i], w)
        out[f"{head}_rate"] = float((y[:, i] * w).sum() / w.sum())
    return out


# --------------------------------------------------------------------------- daily step


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain_day`."""

    lineage: str
    ds: dt.date
    checkpoint_path: Path
    metrics: dict[str, Any]
    mode: str  # "warm_start" | "full_retrain"
    new_lineage: bool
    train_days: list[dt.date] = field(default_factory=list)


def samples_table_uri(settings: Settings) -> Path:
    from keep.core.tables import PRETRAIN_SAMPLES, samples_spec
    from keep.lake.delta import table_path

    return table_path(settings, samples_spec(PRETRAIN_SAMPLES, settings.aggregate.windows))


def model_config(settings: Settings) -> ModelConfig:
    return ModelConfig.from_settings(
        settings.pretrain, settings.aggregate.windows, settings.aggregate.sequence_length
    )


def _set_seeds(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plan(
    settings: Settings,
    ds: dt.date,
    full_retrain: bool,
    cfg: ModelConfig,
    days: list[dt.date],
    quiet: bool = False,
) -> tuple[str, str, dt.date | None, list[list[dt.date]], int | None]:
    """(mode, lineage, parent day, training phases, index of the phase evaluation precedes)."""
    log = _log if not quiet else logging.getLogger("keep.pretrain.quiet")
    lineage = current_lineage(settings)
    parent = ds - dt.timedelta(days=1)
    if not full_retrain and lineage is not None:
        ck = checkpoint_path(settings, lineage, parent)
        if ck.exists():
            parent_cfg = ModelConfig.from_json(read_snapshot(ck).meta["config"])
            if parent_cfg.fingerprint() == cfg.fingerprint():
                # A sliding window: the day and the days before it, shuffled together.
                since = ds - dt.timedelta(days=settings.pretrain.warm_start_days - 1)
                window = [d for d in days if since <= d <= ds]
                return "warm_start", lineage, parent, [window], 0
            log.warning(
                "model config changed since lineage %s (%s -> %s): starting a new lineage",
                lineage,
                parent_cfg.fingerprint(),
                cfg.fingerprint(),
            )
        else:
            log.warning(
                "no checkpoint for %s in lineage %s: starting a new lineage "
                "(full retrain over the last %d days)",
                parent.isoformat(),
                lineage,
                settings.pretrain.full_retrain_days,
            )
    elif not full_retrain:
        log.warning(
            "no pre-training lineage yet: starting one (full retrain over the last %d days)",
            settings.pretrain.full_retrain_days,
        )
    first = ds - dt.timedelta(days=settings.pretrain.full_retrain_days - 1)
    history = [d for d in days if first <= d < ds]
    new = lineage_id(cfg, history[0] if history else ds, ds)
    if history:
        return "full_retrain", new, None, [history, [ds]], 1
    log.warning("no day before %s to hold out: training on it alone, no held-out metrics", ds)
    return "full_retrain", new, None, [[ds]], None


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names and exact bytes)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pretrain_day(
    settings: Settings,
    ds: dt.date,
    *,
    full_retrain: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> PretrainResult:
    """Pre-train day ``ds``: warm start from ``ds - 1`` or a new lineage (module docstring).

    Re-running a completed day retrains it from ``ds - 1`` and overwrites it; a run that
    died mid-day resumes from its ``.partial.pt`` checkpoint (same weights as if it had
    never stopped). ``stop_after_steps`` aborts with :class:`TrainingInterrupted` after that
    many steps (for tests of resume).
    """
    cfg_p = settings.pretrain
    ctx = dist_context()
    torch.set_num_threads(max(1, cfg_p.threads // ctx.world))
    uri = samples_table_uri(settings)
    days = available_days(uri)
    if ds not in days:
        raise InputError(
            f"gold.pretrain_samples has no partition ds={ds.isoformat()} at {uri}: "
            "build the day's samples first (`keep samples`)."
        )
    cfg = model_config(settings)
    mode, lineage, parent, phases, eval_before = _plan(
        settings, ds, full_retrain, cfg, days, quiet=not ctx.is_main
    )
    columns = sample_columns(settings.aggregate.windows)
    identity = {
        "lineage": lineage,
        "ds": ds.isoformat(),
        "mode": mode,
        "parent_ds": parent.isoformat() if parent else None,
        "phases": [[d.isoformat() for d in p] for p in phases],
        "config": cfg.to_json(),
        "world": ctx.world,
    }
    if ctx.is_main:
        log.info(
            "pre-training %s: %s, lineage %s, phases %s", ds, mode, lineage, identity["phases"]
        )

    # Starting point: a matching partial checkpoint of this very run, the parent, or scratch.
    _set_seeds(cfg_p.seed)
    model = MultiTaskModel(cfg)
    optimizer = PretrainOptimizer(model, cfg_p)
    phase, position, metrics = 0, ReaderPosition(), None
    partial = partial_path(settings, lineage, ds)
    resumed = False
    if partial.exists():
        snap = read_snapshot(partial)
        if all(snap.meta.get(k) == v for k, v in identity.items()):
            model.load_state_dict(snap.model_state)
            optimizer.load_state_dict(snap.optimizer_state)
            torch.set_rng_state(snap.torch_rng)
            phase = int(snap.meta["phase"])
            position = ReaderPosition.from_json(snap.meta["position"])
            metrics = snap.meta.get("eval")
            resumed = True
            if ctx.is_main:
                log.info("resuming %s from %s (phase %d, %s)", ds, partial, phase, position)
        elif ctx.is_main:
            log.warning("ignoring %s: it belongs to another run configuration", partial)
    if not resumed and parent is not None:
        snap = read_snapshot(checkpoint_path(settings, lineage, parent))
        model.load_state_dict(snap.model_state)
        optimizer.load_state_dict(snap.optimizer_state)
        torch.set_rng_state(snap.torch_rng)

    ddp_model: nn.Module | None = None
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model)

    def snapshot(meta: dict[str, Any]) -> TrainingSnapshot:
        return TrainingSnapshot(
            model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
            optimizer_state=optimizer.state_dict(),
            torch_rng=torch.get_rng_state(),
            meta={**identity, **meta},
        )

    train_stats: dict[str, float] = {"steps": 0, "samples": 0, "seconds": 0.0, "loss_sum": 0.0}
    budget = stop_after_steps
    for index in range(phase, len(phases)):
        if index == eval_before and metrics is None:
            if ctx.is_main:
                metrics = evaluate(
                    model,
                    uri,
                    ds,
                    columns=columns,
                    max_seq_len=settings.aggregate.sequence_length,
                    max_rows=cfg_p.eval_max_rows,
                )
                metrics["model_trained_through"] = (ds - dt.timedelta(days=1)).isoformat()
                log.info("held-out %s: click AUC %s", ds, metrics.get("click_auc"))
            if ctx.world > 1:
                dist.barrier()
        reader = SampleReader(
            uri,
            phases[index],
            columns=columns,
            batch_size=cfg_p.batch_size,
            shuffle_buffer=cfg_p.shuffle_buffer,
            seed=cfg_p.seed + 1_000 * index + _day_seed(ds),
            rank=ctx.rank,
            world=ctx.world,
            workers=cfg_p.reader_workers,
            max_seq_len=settings.aggregate.sequence_length,
        )

        def on_checkpoint(pos: ReaderPosition, index: int = index, held_out: Any = metrics) -> None:
            if ctx.is_main:
                meta = {"phase": index, "position": pos.to_json(), "eval": held_out}
                save_snapshot(snapshot(meta), partial)

        outcome = train(
            model,
            optimizer,
            reader,
            epochs=cfg_p.epochs,
            start=position if index == phase else None,
            checkpoint_every_steps=cfg_p.checkpoint_every_steps,
            on_checkpoint=on_checkpoint,
            stop_after_steps=budget,
            progress=progress and ctx.is_main,
            ddp_model=ddp_model,
        )
        train_stats["steps"] += outcome.steps
        train_stats["samples"] += outcome.samples
        train_stats["seconds"] += outcome.seconds
        train_stats["loss_sum"] += outcome.mean_loss * outcome.steps
        if not outcome.completed:
            raise TrainingInterrupted(
                f"stopped after {stop_after_steps} steps at {outcome.position}"
            )
        if budget is not None:
            budget -= outcome.steps
        if index + 1 < len(phases) and ctx.is_main:
            # Phase boundary: a resume must not redo the phase (or the evaluation after it).
            save_snapshot(
                snapshot(
                    {"phase": index + 1, "position": ReaderPosition().to_json(), "eval": metrics}
                ),
                partial,
            )

    # Every rank's parameters after the day, as a digest: under DDP they must be identical
    # (the gradients are all-reduced every step); recorded so a run can be checked.
    digests = [parameter_digest(model)]
    if ctx.world > 1:
        gathered: list[Any] = [None] * ctx.world
        dist.all_gather_object(gathered, digests[0])
        digests = [str(d) for d in gathered]
    final = checkpoint_path(settings, lineage, ds)
    steps = int(train_stats["steps"])
    result_metrics: dict[str, Any] = {
        "lineage": lineage,
        "ds": ds.isoformat(),
        "mode": mode,
        "parent_ds": identity["parent_ds"],
        "train_days": [d.isoformat() for p in phases for d in p],
        "eval": metrics,
        "train": {
            "steps": steps,
            "samples_per_rank": int(train_stats["samples"]),
            "world": ctx.world,
            "parameter_digest_by_rank": digests,
            "seconds": round(train_stats["seconds"], 3),
            "mean_loss": train_stats["loss_sum"] / steps if steps else None,
            "resumed": resumed,
        },
    }
    if ctx.is_main:
        lineage_file = lineage_dir(settings, lineage) / "lineage.json"
        if not lineage_file.exists():
            atomic_write_text(
                lineage_file,
                json_dumps(
                    {
                        "lineage": lineage,
                        "first_day": phases[0][0].isoformat(),
                        "config": cfg.to_json(),
                        "created_by_ds": ds.isoformat(),
                    }
                ),
            )
        end = {"phase": len(phases), "position": ReaderPosition(cfg_p.epochs, 0).to_json()}
        save_snapshot(snapshot({**end, "eval": metrics, "complete": True}), final)
        atomic_write_text(metrics_path(settings, lineage, ds), json_dumps(result_metrics))
        partial.unlink(missing_ok=True)
        latest = checkpoint_days(settings, current_lineage(settings) or lineage)
        if mode == "full_retrain" or not latest or ds >= latest[-1]:
            set_current_lineage(settings, lineage)
    if ctx.world > 1:
        dist.barrier()
    flat = dict(metrics or {})
    flat.update({"mode": mode, "train_steps": steps})
    return PretrainResult(
        lineage=lineage,
        ds=ds,
        checkpoint_path=final,
        metrics=flat,
        mode=mode,
        new_lineage=mode == "full_retrain",
        train_days=[d for p in phases for d in p],
    )


def _day_seed(ds: dt.date) -> int:
    """Each day gets its own shuffle order (a warm-started lineage sees a fresh order daily)."""
    return ds.toordinal()


def json_dumps(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"


__all__ = [
    "PretrainResult",
    "TrainOutcome",
    "TrainingInterrupted",
    "evaluate",
    "model_from_snapshot",
    "pretrain_day",
    "train",
]

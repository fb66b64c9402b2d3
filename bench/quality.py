"""Benchmark: does plugged knowledge make the sparse subsystem's click model better?

    .venv/bin/python bench/quality.py                        # defaults (see --help for time)
    .venv/bin/python bench/quality.py --days 6 --switch-day 4 --impressions 20000   # quick

In a fresh KEEP home (removed afterwards unless ``--keep-home``), with the real pipeline:

1. **default world** (the generator's defaults, ``--impressions`` a day): every day runs
   every daily step in this process (``keep.flows.pipeline.run_day``: ingest, gates,
   aggregation, samples, pre-training, knowledge export, knowledge gate, publication to
   Feast), then the downstream step (``keep.flows.pipeline.train_downstream``): the day's
   point-in-time training set through Feast, and every arm evaluated on the day (trained
   through the day before, knowledge as served that day) and then trained on it. On
   ``--switch-day`` the pre-training starts a new lineage (``pretrain.full_retrain_on``).
2. **pretrain_vs_references**: per day, the pre-training model's held-out click AUC (model of
   d - 1 on day d, from its checkpoint metrics) beside two references computed on the same
   samples (``models.pretrain.references``: smoothed user and item click rates with a
   fitted prior; a logistic regression on the same counters), and the oracle's AUC.
3. **second world** (``--second-world-days``, 0 to skip): a world unlike the default -- base
   click rate near 50 %, dense interactions (few users and items), no position effect --
   through the pipeline up to pre-training, for the same table.

Writes reports/bench/quality.json (keys: ``days``, ``seeds``, ``switch_ds``, ``arms`` (per arm
``auc``, ``auc_ci95``, ``gauc``, ``logloss``, ``relaimpr``, ``by_day``), ``gap_closed``,
``gap_closed_ci95``, ``noop_at_init_max_abs_diff``, ``after_switch``,
``pretrain_vs_references``, timings) and the report ``reports/quality/index.html``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, write_report

sys.path.insert(0, str(REPO))

EPOCH = dt.date(2026, 1, 1)


def _days(n: int) -> list[dt.date]:
    return [EPOCH + dt.timedelta(days=i) for i in range(n)]


def default_world(home: Path, args: argparse.Namespace, switch: dt.date | None) -> Any:
    from keep.core.config import load_settings

    return load_settings(
        home=home,
        generator={
            "impressions_per_day": args.impressions,
            "n_users": args.users,
            "n_items": args.items,
        },
        pretrain={"full_retrain_on": [switch] if switch else []},
        pipeline={"start_ds": EPOCH, "end_ds": _days(args.days)[-1]},
        airflow={"demo_mode": True},  # land_raw generates the world's raw files
    )


def second_world(home: Path, args: argparse.Namespace) -> Any:
    """Unlike the default: base click rate near 50 %, dense (few users and items, many
    impressions each), no position effect, other subsystem shares."""
    from keep.core.config import load_settings

    scenarios = [
        {"name": "search", "traffic_share": 0.25, "base_logit": 0.2, "position_decay": 0.0},
        {"name": "feed", "traffic_share": 0.45, "base_logit": -0.2, "position_decay": 0.0},
        {"name": "ads", "traffic_share": 0.30, "base_logit": 0.0, "position_decay": 0.0},
    ]
    return load_settings(
        home=home,
        generator={
            "seed": 11,
            "impressions_per_day": args.impressions,
            "n_users": max(200, args.users // 10),
            "n_items": max(100, args.items // 10),
            "new_users_per_day": 2,
            "new_items_per_day": 1,
            "scenarios": scenarios,
        },
        pipeline={"start_ds": EPOCH, "end_ds": _days(args.second_world_days)[-1]},
        airflow={"demo_mode": True},  # land_raw generates the world's raw files
    )


# --------------------------------------------------------------------------- references


def _samples(settings: Any, ds: dt.date) -> Any:
    from deltalake import DeltaTable

    from keep.core.tables import PRETRAIN_SAMPLES, samples_spec
    from keep.lake import delta

    spec = samples_spec(PRETRAIN_SAMPLES, settings.aggregate.windows)
    return DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_table(
        filters=[("ds", "=", ds.isoformat())]
    )


def _oracle(settings: Any, table: Any, ds: dt.date) -> np.ndarray | None:
    import pyarrow.dataset as pads

    truth = Path(settings.generator.truth_root) / "oracle" / f"ds={ds.isoformat()}"
    if not truth.is_dir():
        return None
    oracle = pads.dataset(str(truth), format="parquet").to_table(
        columns=["impression_id", "p_click"]
    )
    joined = table.select(["impression_id"]).join(oracle, "impression_id", join_type="left outer")
    by_id = dict(
        zip(
            joined.column("impression_id").to_pylist(),
            joined.column("p_click").to_pylist(),
            strict=True,
        )
    )
    return np.array([by_id[i] for i in table.column("impression_id").to_pylist()], dtype=float)


def _pretrain_held_out(settings: Any, ds: dt.date, lineages: list[str]) -> float | None:
    """Click AUC on day ``ds`` of the pre-training model after ``ds - 1``: the lineage whose
    snapshot of ``ds - 1`` was served on ``ds`` (else the lineage that has that day)."""
    from keep.core.tables import PRETRAIN_SAMPLES, samples_spec
    from keep.lake import delta
    from keep.lake.knowledge import served_knowledge
    from models.pretrain.checkpoint import checkpoint_days, load_checkpoint
    from models.pretrain.features import sample_columns
    from models.pretrain.train import evaluate

    previous = ds - dt.timedelta(days=1)
    served = served_knowledge(settings, ds)
    candidates = [served[0]] if served else lineages
    for lineage in candidates:
        if previous in checkpoint_days(settings, lineage):
            model = load_checkpoint(settings, previous, lineage).model
            uri = delta.table_path(
                settings, samples_spec(PRETRAIN_SAMPLES, settings.aggregate.windows)
            )
            metrics = evaluate(
                model,
                uri,
                ds,
                columns=sample_columns(settings.aggregate.windows),
                max_seq_len=settings.aggregate.sequence_length,
            )
            value = metrics.get("click_auc")
            return None if value is None else float(value)
    return None


def pretrain_vs_references(
    settings: Any, days: list[dt.date], history_days: int = 7
) -> list[dict[str, Any]]:
    """Per day: the pre-training model's held-out click AUC and the two references."""
    import pyarrow as pa

    from models.evaluation import auc
    from models.pretrain.references import counter_logreg_scores, smoothed_rate_scores

    rows = []
    lineages = sorted(p.name for p in settings.pretrain.checkpoint_root.iterdir() if p.is_dir())
    for i, ds in enumerate(days):
        if i == 0:
            continue
        test = _samples(settings, ds)
        train = pa.concat_tables(
            [_samples(settings, d) for d in days[max(0, i - history_days) : i]]
        )
        y, w = test.column("click").to_numpy(), test.column("weight").to_numpy()
        held_out = _pretrain_held_out(settings, ds, lineages)
        windows, strength = settings.aggregate.windows, settings.aggregate.prior_strength
        rates = smoothed_rate_scores(train, test, windows=windows, strength=strength)
        logreg = counter_logreg_scores(train, test, windows=windows, strength=strength)
        oracle = _oracle(settings, test, ds)
        rows.append(
            {
                "ds": ds.isoformat(),
                "pretrain_auc": held_out,
                "smoothed_rates_auc": auc(y, rates, w),
                "logreg_auc": auc(y, logreg, w),
                "oracle_auc": None if oracle is None else auc(y, oracle, w),
                "base_rate": float((y * w).sum() / w.sum()),
            }
        )
        print(f"  references {ds}: {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------- worlds


def build_world(
    settings: Any, days: list[dt.date], *, until_step: str, after_day: Any = None
) -> list[float]:
    """Every daily step up to ``until_step`` for every day, in this process (then
    ``after_day(ds)``); seconds per day."""
    from keep.flows import pipeline

    names = list(pipeline.STEPS)
    steps = names[: names.index(until_step) + 1]
    seconds = []
    for ds in days:
        began = time.perf_counter()
        for name in steps:
            pipeline.run_step(settings, name, ds)
        if after_day is not None:
            after_day(ds)
        seconds.append(time.perf_counter() - began)
        print(f"  day {ds}: {seconds[-1]:.0f} s", flush=True)
    return seconds


# --------------------------------------------------------------------------- arms

ARMS = ("base", "keep", "concat", "finetune", "superdomain_features")
SWITCH_VARIANTS = ("reinit", "none")  # extra keep arms: the other lineage-switch rules


class ArmsRun:
    """Every arm and seed through the daily protocol of models/downstream/daily.py."""

    def __init__(self, settings: Any, seeds: list[int]) -> None:
        from models.downstream.daily import Arms

        self.settings = settings
        self.runs = {"main": Arms(settings, ARMS, seeds)}
        for rule in SWITCH_VARIANTS:
            down = settings.downstream.model_copy(update={"lineage_switch": rule})
            self.runs[rule] = Arms(
                settings.model_copy(update={"downstream": down}), ["keep"], seeds
            )
        self.per_seed: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
        self.oracle: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self.seconds = 0.0

    def day(self, ds: dt.date) -> None:
        """Write the day's training set, then evaluate and train every arm on it."""
        from keep.lake.knowledge import served_knowledge
        from keep.store.training_sets import write_training_set
        from models.downstream.daily import day_table
        from models.evaluation import auc

        served = served_knowledge(self.settings, ds)
        if served is None:
            return
        began = time.perf_counter()
        lineage, snapshot = served
        write_training_set(self.settings, ds, ds, lineage=lineage)
        table = day_table(self.settings, ds, lineage)
        day = ds.isoformat()
        for name, run in self.runs.items():
            for o in run.step(ds, table, lineage, snapshot):
                if o.metrics is not None:
                    arm = o.arm if name == "main" else f"keep_{name}"
                    self.per_seed.setdefault(arm, {}).setdefault(o.seed, {})[day] = o.metrics
        self.rows[day] = table.num_rows
        self.seconds += time.perf_counter() - began
        if "base" not in self.per_seed:
            return  # the first day: arms were only trained
        oracle = _oracle(self.settings, table, ds)
        if oracle is not None:
            y, w = table.column("click").to_numpy(), table.column("weight").to_numpy()
            self.oracle[day] = auc(y, oracle, w)
        seed = min(self.per_seed["base"])
        line = " ".join(
            f"{arm} {self.per_seed[arm][seed][day]['auc']:.4f}" for arm in self.per_seed
        )
        print(f"    {day} ({lineage}): {line} oracle {self.oracle.get(day, float('nan')):.4f}")

    def summary(self, switch: dt.date | None, extra: dict[str, Any]) -> dict[str, Any]:
        from models.evaluation import summarise_arms

        noop = max(r.noop_at_init_max_abs_diff or 0.0 for r in self.runs.values())
        return summarise_arms(
            self.per_seed,
            self.oracle,
            switch_ds=switch.isoformat() if switch else None,
            noop_at_init_max_abs_diff=noop,
            **extra,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=14, help="days of the default world")
    parser.add_argument(
        "--switch-day", type=int, default=9, help="day index of the new lineage (0: none)"
    )
    parser.add_argument("--impressions", type=int, default=50_000, help="impressions a day")
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--second-world-days", type=int, default=8, help="0 skips it")
    parser.add_argument("--keep-home", action="store_true", help="keep the KEEP homes")
    args = parser.parse_args()

    began = time.perf_counter()
    report: dict[str, Any] = {"sizes": vars(args).copy()}
    days = _days(args.days)
    switch = days[args.switch_day] if args.switch_day else None
    root = Path(tempfile.mkdtemp(prefix="keep-quality-"))
    try:
        settings = default_world(root / "default", args, switch)
        print(f"default world in {settings.home}", flush=True)
        arms = ArmsRun(settings, args.seeds)
        day_seconds = build_world(
            settings, days, until_step="publish_knowledge", after_day=arms.day
        )
        references = {"default": pretrain_vs_references(settings, days)}
        if args.second_world_days:
            other = second_world(root / "second", args)
            print(f"second world in {other.home}", flush=True)
            other_days = _days(args.second_world_days)
            build_world(other, other_days, until_step="pretrain")
            references["second"] = pretrain_vs_references(other, other_days)
        d = settings.downstream
        grid = {
            "every_arm": {
                "learning_rate": d.learning_rate,
                "batch_size": d.batch_size,
                "epochs_per_day": d.epochs,
                "hidden_dims": d.hidden_dims,
                "embedding_dim": d.embedding_dim,
            },
            "tuned": "none: every arm runs the defaults of DownstreamSettings",
            "lineage_switch_rule": d.lineage_switch,
            "switch_variants": [f"keep_{r}" for r in SWITCH_VARIANTS],
        }
        report.update(arms.summary(switch, {"pretrain_vs_references": references, "grid": grid}))
        report["day_seconds"] = day_seconds
        report["arms_seconds"] = arms.seconds
        report["rows_by_day"] = arms.rows
    finally:
        if not args.keep_home:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"homes kept in {root}")
    report["wall_s"] = time.perf_counter() - began
    path = write_report("quality", report)
    from keep.flows.report import write_report as write_html

    files = write_html(path, REPO / "reports" / "quality")
    print(f"report: {files.index}")


if __name__ == "__main__":
    main()

"""Benchmark: a year of daily runs on one disk, with the daily maintenance step.

    .venv/bin/python bench/year.py                 # defaults: 365 days (~10-20 min on 2 cores)
    .venv/bin/python bench/year.py --days 30       # a quick check
    .venv/bin/python bench/year.py --new-users 0 --new-items 0 --report year_fixed_world
    .venv/bin/python bench/year.py --help          # every option

In a fresh temporary KEEP_HOME (removed afterwards unless ``--keep-home``), every simulated
day writes what a real daily run (and the downstream DAG it triggers) leaves on disk, in
the real layout, with the real writers where they are not Spark or training:

* landed raw files of the day (``--impressions`` rows as JSON lines);
* Delta (delta-rs, the schemas of ``keep.core.tables``; rows of random values of each
  column's type): bronze.impressions, bronze.ingest_audit, dim.users / dim.items (the
  day's changes), silver daily counts and per-entity stats / sequences (full daily
  snapshots, the aggregation's own retention: the same ``replaceWhere`` of today plus
  every snapshot older than ``aggregate.snapshot_retention_days``), gold pre-training and
  downstream samples, knowledge snapshots of the three entities (every known key, a
  vector of ``pretrain.knowledge_dim``; the users and items grow daily), the downstream
  training set and serving features;
* files: the day's pre-training checkpoint (the weights of the model at the default
  settings plus two Adam moments: the size of a real one), its metrics and the knowledge
  manifest, the downstream arms' checkpoints (pruned to ``downstream.checkpoint_days_kept``
  as the downstream step does) and candidate folder, and one registered, promoted model
  version a day (``keep.store.model_registry.register``);
* a new pre-training lineage every ``--lineage-every`` days (a planned full retrain), so
  lineages go out of use.

Then the real maintenance step, ``keep.flows.maintenance.maintain`` (without the online
store: the Feast slots hold two snapshots whatever the history, and are exercised by the
tests), with the default ``maintenance`` settings. Two retentions count wall-clock time,
not pipeline days, and simulated days pass in seconds: Delta's VACUUM retention
(``maintenance.vacuum_retention_hours``, 168 h) and its log retention
(``delta.logRetentionDuration``, 30 days). The simulation runs both at 0 and adds back what
the defaults would still hold: the bytes each day's VACUUM freed, for 7 days, and the Delta
log files written in the last 30 days (``disk_mb_by_day`` is that projection;
``disk_mb_by_day_vacuum_0h`` the measured disk).

Writes ``reports/bench/year.json``: ``disk_mb_by_day``, the same per part of the home
(``parts_mb_by_day``), the growth per day over the first and the last 30 days, and
``reports/bench/year.png`` (disk by day, stacked by part). Bronze is the history the
platform exists to keep (``maintenance.bronze_days_kept`` unset by default): it grows
linearly, by the day's compressed impressions; everything else levels off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import cpu_probe, write_report  # noqa: E402

START = dt.date(2026, 1, 1)


def fake_array(field_type: pa.DataType, n: int, rng: np.random.Generator, name: str) -> pa.Array:
    """``n`` random values of ``field_type`` (nested types recursively)."""
    t = field_type
    if pa.types.is_integer(t):
        return pa.array(rng.integers(0, 1_000_000, n), t)
    if pa.types.is_floating(t):
        return pa.array(rng.random(n).astype(np.float32 if t == pa.float32() else np.float64), t)
    if pa.types.is_boolean(t):
        return pa.array(rng.random(n) < 0.5, t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array(np.char.add(f"{name}-", rng.integers(0, 1_000_000, n).astype(str)), t)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        raw = pa.py_buffer(rng.bytes(64 * n))
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(64), n, [None, raw]).cast(t)
    if pa.types.is_timestamp(t):
        return pa.array(np.full(n, 1_767_225_600_000_000, dtype=np.int64), pa.int64()).cast(t)
    if pa.types.is_date(t):
        return pa.array(np.full(n, 20_454, dtype=np.int32), pa.int32()).cast(t)
    if pa.types.is_fixed_size_list(t):
        values = fake_array(t.value_type, n * t.list_size, rng, name)
        return pa.FixedSizeListArray.from_arrays(values, t.list_size)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        lengths = rng.integers(0, 8, n)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        values = fake_array(t.value_type, int(lengths.sum()), rng, name)
        return pa.ListArray.from_arrays(offsets, values).cast(t)
    if pa.types.is_struct(t):
        children = [fake_array(f.type, n, rng, f.name) for f in t]
        return pa.StructArray.from_arrays(children, fields=list(t))
    raise TypeError(f"{name}: no fake values for {t}")


def fake_table(schema: pa.Schema, n: int, rng: np.random.Generator, **fixed: Any) -> pa.Table:
    """A table of ``schema`` with ``n`` random rows; ``fixed`` columns take one value, or
    cycle through a list of values (a partition column)."""
    columns = []
    for f in schema:
        if isinstance(fixed.get(f.name), list):
            values = fixed[f.name]
            columns.append(pa.array(np.resize(np.array(values), n), f.type))
        elif f.name in fixed:
            columns.append(pa.array([fixed[f.name]] * n, f.type))
        else:
            columns.append(fake_array(f.type, n, rng, f.name))
    return pa.table(columns, schema=schema)


class Day:
    """Writes one simulated day's outputs into the home of ``settings``."""

    def __init__(self, settings: Any, args: argparse.Namespace, blobs: dict[str, bytes]) -> None:
        self.s = settings
        self.args = args
        self.blobs = blobs

    def write(self, spec: Any, table: pa.Table, predicate: str) -> None:
        from deltalake import write_deltalake

        from keep.lake.delta import table_exists, table_path

        path = str(table_path(self.s, spec))
        if table_exists(self.s, spec):
            write_deltalake(path, table, mode="overwrite", predicate=predicate)
        else:
            # Delta's log retention counts wall-clock time too: expire at once here, and
            # add the last 30 days of log back in the projection (see main).
            write_deltalake(
                path,
                table,
                mode="overwrite",
                partition_by=list(spec.partition_by),
                configuration={"delta.logRetentionDuration": "interval 0 seconds"},
            )

    def run(self, i: int, ds: dt.date, lineage: str, rng: np.random.Generator) -> None:
        from keep.core import tables as T
        from keep.flows import maintenance  # noqa: F401  (import cost outside the timings)
        from keep.lake.knowledge import write_manifest
        from keep.store import model_registry
        from spark_jobs.aggregate import daily_cut, snapshot_cut

        s, a, d = self.s, self.args, ds.isoformat()
        day = f"ds = '{d}'"
        n_users = a.users + a.new_users * i
        n_items = a.items + a.new_items * i
        n_uc = n_users * 4
        # Raw landing files.
        raw = s.lake.raw_root / "impressions" / f"ds={d}"
        raw.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"impression_id": "x" * 24, "user_id": 1, "item_id": 2, "click": 0})
        (raw / "part-00000.jsonl").write_text((line + "\n") * a.impressions)
        # Bronze, dimensions.
        self.write(T.IMPRESSIONS, fake_table(T.IMPRESSIONS.schema, a.impressions, rng, ds=d), day)
        self.write(T.INGEST_AUDIT, fake_table(T.INGEST_AUDIT.schema, 5, rng, ds=d), day)
        self.write(T.DIM_USERS, fake_table(T.DIM_USERS.schema, a.new_users * 4, rng, ds=d), day)
        self.write(T.DIM_ITEMS, fake_table(T.DIM_ITEMS.schema, a.new_items * 4, rng, ds=d), day)
        # Silver: the aggregation's own retention in the same commit.
        windows = s.aggregate.windows
        keep_snap = f"{day} OR ds < '{snapshot_cut(s.aggregate, ds).isoformat()}'"
        keep_daily = f"{day} OR ds < '{daily_cut(s.aggregate, ds).isoformat()}'"
        active = min(n_users, a.impressions // 5)
        self.write(
            T.DAILY_COUNTS,
            fake_table(T.DAILY_COUNTS.schema, active * 3, rng, ds=d, entity=list(T.ENTITIES)),
            keep_daily,
        )
        for entity, rows in (("user", n_users), ("item", n_items), ("user_category", n_uc)):
            spec = T.stats_spec(entity, windows)
            self.write(spec, fake_table(spec.schema, rows, rng, ds=d), keep_snap)
        self.write(
            T.USER_BEHAVIOR, fake_table(T.USER_BEHAVIOR.schema, n_users, rng, ds=d), keep_snap
        )
        # Gold samples.
        pre, down = T.sample_specs(windows)
        self.write(pre, fake_table(pre.schema, a.impressions, rng, ds=d), day)
        self.write(down, fake_table(down.schema, a.impressions // 10, rng, ds=d), day)
        # Pre-training checkpoint + metrics, knowledge snapshot + manifest.
        folder = s.pretrain.checkpoint_root / lineage
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "lineage.json").is_file():
            (folder / "lineage.json").write_text(json.dumps({"created_by_ds": d}))
        (folder / f"ds={d}.pt").write_bytes(self.blobs["pretrain"])
        (folder / f"ds={d}.json").write_text(json.dumps({"ds": d, "auc": 0.7}))
        (s.pretrain.checkpoint_root / "CURRENT.json").write_text(json.dumps({"lineage": lineage}))
        snap = f"knowledge_lineage = '{lineage}' AND snapshot_ds = '{d}'"
        for entity, rows in (("user", n_users), ("item", n_items), ("user_category", n_uc)):
            spec = T.knowledge_spec(entity)
            fixed = {"knowledge_lineage": lineage, "snapshot_ds": d}
            self.write(spec, fake_table(spec.schema, rows, rng, **fixed), snap)
        write_manifest(s, lineage, ds, {"ds": d, "gate": {"success": True}})
        # Downstream: training set, serving features, arm checkpoints, candidate, registry.
        ts = T.training_set_spec(windows)
        fixed = {"knowledge_lineage": lineage, "ds": d}
        self.write(
            ts,
            fake_table(ts.schema, a.impressions // 10, rng, **fixed),
            f"{snap.split(' AND')[0]} AND {day}",
        )
        for entity, rows in (("user", n_users), ("item", n_items)):
            spec = T.serving_features_spec(entity)
            table = fake_table(spec.schema, rows, rng, subsystem="ads", ds=d)
            self.write(spec, table, f"subsystem = 'ads' AND {day}")
        down_root = s.downstream.checkpoint_root
        for arm in ("base", "keep"):
            arm_dir = down_root / arm / "seed=0"
            arm_dir.mkdir(parents=True, exist_ok=True)
            (arm_dir / f"ds={d}.pt").write_bytes(self.blobs["downstream"])
            for old in sorted(arm_dir.glob("ds=*.pt"))[: -s.downstream.checkpoint_days_kept]:
                old.unlink()  # the downstream step's own pruning (models/downstream/daily.py)
        cand = down_root / "candidates" / lineage / d
        cand.mkdir(parents=True, exist_ok=True)
        for name in ("keep.pt", "keep.trained.pt"):
            (cand / name).write_bytes(self.blobs["downstream"])
        (cand / "candidate.json").write_text("{}")
        model_registry.register(
            s, "ads", cand / "keep.pt", arm="keep", lineage=lineage, snapshot_ds=d,
            train_days=[d], metrics={}, gate={"success": True},
        )  # fmt: skip
        if i == 0:  # the registry table is created by the registry: same log retention as above
            from deltalake import DeltaTable

            from keep.lake.delta import table_path

            registry = DeltaTable(str(table_path(s, T.MODEL_REGISTRY)))
            registry.alter.set_table_properties(
                {"delta.logRetentionDuration": "interval 0 seconds"}
            )


def model_blobs(settings: Any) -> dict[str, bytes]:
    """Checkpoint-sized bytes: the weights of the default models plus two Adam moments."""
    import io

    import torch

    from models.downstream.model import DownstreamConfig, build_model
    from models.pretrain.multitask import MultiTaskModel
    from models.pretrain.train import model_config

    out = {}
    models = {
        "pretrain": MultiTaskModel(model_config(settings)),
        "downstream": build_model(DownstreamConfig.from_settings(settings), "keep", seed=0),
    }
    for name, model in models.items():
        state = model.state_dict()
        buf = io.BytesIO()
        torch.save({"model": state, "exp_avg": state, "exp_avg_sq": state}, buf)
        out[name] = buf.getvalue()
    return out


def delta_logs(lake: Path) -> dict[str, int]:
    """Size of every file in every table's ``_delta_log`` folder."""
    return {str(p): p.stat().st_size for p in lake.glob("*/*/_delta_log/*") if p.is_file()}


def slope(series: list[float], first: bool, days: int = 30) -> float:
    part = series[:days] if first else series[-days:]
    return (part[-1] - part[0]) / max(len(part) - 1, 1)


def plot(parts: dict[str, list[float]], total: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    days = np.arange(1, len(total) + 1)
    names = [n for n in parts if max(parts[n]) > 0.5]
    ax.stackplot(days, *[parts[n] for n in names], labels=names, alpha=0.85)
    label = "total, with Delta's 168 h VACUUM and 30-day log retentions"
    ax.plot(days, total, color="black", lw=1.5, label=label)
    ax.set_xlabel("day")
    ax.set_ylabel("MB on disk")
    ax.set_title("KEEP home on disk, a year of daily runs with daily maintenance")
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=365, help="days simulated (default 365)")
    parser.add_argument("--impressions", type=int, default=5_000, help="impressions a day")
    parser.add_argument("--users", type=int, default=2_000, help="users on day 1")
    parser.add_argument("--items", type=int, default=1_000, help="items on day 1")
    parser.add_argument("--new-users", type=int, default=10, help="new users a day")
    parser.add_argument("--new-items", type=int, default=5, help="new items a day")
    parser.add_argument(
        "--lineage-every", type=int, default=90, help="a new pre-training lineage every N days"
    )
    parser.add_argument(
        "--report", default="year", help="report name: reports/bench/<name>.json and .png"
    )
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary KEEP_HOME")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="keep-bench-year-"))
    os.environ["KEEP_HOME"] = str(home)
    logging.basicConfig(level=logging.WARNING)
    from keep.core.config import load_settings
    from keep.flows.maintenance import disk_usage, maintain

    settings = load_settings(maintenance={"vacuum_retention_hours": 0})
    retention_days = load_settings().maintenance.vacuum_retention_hours // 24
    began = time.perf_counter()
    probe = cpu_probe()
    blobs = model_blobs(settings)
    writer = Day(settings, args, blobs)
    rng = np.random.default_rng(0)
    measured: list[float] = []
    freed: list[float] = []
    log_added: list[float] = []  # MB of Delta log files written each day
    log_now: list[float] = []  # MB of Delta log files on disk after each day
    seen_logs: dict[str, int] = {}
    parts: dict[str, list[float]] = {}
    lineages: list[str] = []
    try:
        for i in range(args.days):
            ds = START + dt.timedelta(days=i)
            lineage = (
                f"L{i // args.lineage_every + 1:02d}-{ds:%Y%m%d}"
                if i % args.lineage_every == 0
                else lineages[-1]
            )
            if not lineages or lineages[-1] != lineage:
                lineages.append(lineage)
            writer.run(i, ds, lineage, rng)
            before = disk_usage(settings)
            result = maintain(settings, ds, online=False)
            after = result["disk_bytes"]
            lake = [k for k in after if k.startswith("lake/")]
            freed.append(max(0, sum(before[k] - after[k] for k in lake)) / 2**20)
            measured.append(after["total"] / 2**20)
            logs = delta_logs(settings.lake.root)
            log_added.append(sum(v for k, v in logs.items() if k not in seen_logs) / 2**20)
            log_now.append(sum(logs.values()) / 2**20)
            seen_logs = logs
            for name, value in after.items():
                if name != "total":
                    parts.setdefault(name, []).append(round(value / 2**20, 2))
            if i % 10 == 0 or i == args.days - 1:
                print(
                    f"day {i + 1}/{args.days} {ds}: {measured[-1]:,.1f} MB "
                    f"({time.perf_counter() - began:,.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        # What the default retentions (wall-clock) would still hold: the files each day's
        # VACUUM freed, for vacuum_retention_hours; the Delta log of the last 30 days.
        log_days = 30
        projected = [
            round(
                m
                + sum(freed[max(0, k - retention_days + 1) : k + 1])
                - log_now[k]
                + max(log_now[k], sum(log_added[max(0, k - log_days + 1) : k + 1])),
                2,
            )
            for k, m in enumerate(measured)
        ]
        out_png = REPO / "reports" / "bench" / f"{args.report}.png"
        out_png.parent.mkdir(parents=True, exist_ok=True)
        plot(parts, projected, out_png)
        history = [a + b for a, b in zip(parts["lake/bronze"], parts["lake/dim"], strict=True)]
        without_history = [round(t - h, 2) for t, h in zip(projected, history, strict=True)]
        figures = {
            "days": args.days,
            "world": {
                "impressions_per_day": args.impressions,
                "users": [args.users, args.users + args.new_users * (args.days - 1)],
                "items": [args.items, args.items + args.new_items * (args.days - 1)],
                "lineages": lineages,
            },
            "disk_mb_by_day": projected,
            "disk_mb_by_day_vacuum_0h": [round(m, 2) for m in measured],
            "delta_log_mb_added_by_day": [round(v, 3) for v in log_added],
            "disk_mb_by_day_without_bronze_and_dims": without_history,
            "parts_mb_by_day": parts,
            "growth_mb_per_day": {
                "first_30_days": round(slope(projected, True), 3),
                "last_30_days": round(slope(projected, False), 3),
                "last_30_days_bronze_and_dims": round(slope(history, False), 3),
                "last_30_days_without_bronze_and_dims": round(slope(without_history, False), 3),
            },
            "max_mb": max(projected),
            "final_mb": projected[-1],
            "settings": settings.maintenance.model_dump() | {"vacuum_retention_hours": 168},
            "wall_s": round(time.perf_counter() - began, 1),
            "cpu_probe_s": probe,
            "plot": str(out_png.relative_to(REPO)),
        }
        write_report(args.report, figures)
    finally:
        if args.keep_home:
            print(f"KEEP_HOME kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: knowledge export throughput and peak memory at several entity counts.

    .venv/bin/python bench/export.py                          # 100 k and 1 M users (defaults)
    .venv/bin/python bench/export.py --sizes 20000 200000     # any sizes

For each size, in a fresh temporary KEEP_HOME: a ``setup`` process writes one day of
synthetic silver state with delta-rs (``users`` users with behaviour sequences of 0 to
``--seq-len`` behaviours, counters and attributes; ``users / 10`` items; 2 categories per
user) and a freshly initialised checkpoint (a new lineage: every key is recomputed, the
export's worst case); then an ``export`` process runs ``models.pretrain.export.export_knowledge``
and is measured alone (wall time, peak RSS of its process tree, bench/_common.py).
Rows = user + item + user x category vectors written. Writes reports/bench/export.json with
keys ``sizes`` (users), ``rows``, ``rows_per_s``, ``peak_rss_mb``, ``export_s``,
``batch_rows``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import PYTHON, REPO, run_measured, write_report

sys.path.insert(0, str(REPO))

DAY = dt.date(2026, 1, 1)
CHUNK = 100_000  # rows per synthetic write (the set-up's own memory bound)


def bench_settings(home: Path, seq_len: int, batch_rows: int):  # type: ignore[no-untyped-def]
    from keep.core.config import load_settings

    return load_settings(
        home=home,
        aggregate={"sequence_length": seq_len},
        knowledge={"export_batch_rows": batch_rows},
    )


def setup(home: Path, users: int, seq_len: int, batch_rows: int) -> None:
    """Synthetic silver state of DAY and an untrained checkpoint, written chunk by chunk."""
    import numpy as np
    import pyarrow as pa
    import torch
    from deltalake import write_deltalake

    from keep.core.tables import (
        DAILY_COUNTS,
        DIM_ITEMS,
        DIM_USERS,
        USER_BEHAVIOR,
        stats_spec,
        window_columns,
    )
    from keep.lake import delta
    from models.pretrain.checkpoint import (
        TrainingSnapshot,
        checkpoint_path,
        save_snapshot,
        set_current_lineage,
    )
    from models.pretrain.multitask import MultiTaskModel
    from models.pretrain.train import model_config

    settings = bench_settings(home, seq_len, batch_rows)
    windows = settings.aggregate.windows
    items = max(users // 10, 1)
    day = DAY.isoformat()
    eod = dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    rng = np.random.default_rng(0)

    def write(spec, columns: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
        schema = spec.schema
        n = len(next(iter(columns.values())))  # type: ignore[arg-type]
        columns = {**columns, "ds": [day] * n}
        if "event_timestamp" in schema.names:
            columns["event_timestamp"] = pa.array([eod] * n, schema.field("event_timestamp").type)
        table = pa.table({f.name: columns[f.name] for f in schema}, schema=schema)
        write_deltalake(
            str(delta.table_path(settings, spec)),
            table,
            partition_by=list(spec.partition_by),
            mode="append",
        )

    def counts_of(entity: str, n: int) -> dict[str, object]:
        """silver.daily_counts' entity column, and its key columns all null (set by the caller)."""
        return {
            "entity": [entity] * n,
            **{k: pa.nulls(n, pa.int64()) for k in ("user_id", "item_id", "category_id")},
        }

    def counters(n: int) -> dict[str, object]:
        out: dict[str, object] = {}
        for col in window_columns(windows):
            if col.startswith("ctr_"):
                out[col] = rng.uniform(0.01, 0.2, n)
            else:
                out[col] = rng.integers(0, 50, n)
        return out

    behavior_type = USER_BEHAVIOR.schema.field("behaviors").type
    struct_type = behavior_type.value_type
    for start in range(0, users, CHUNK):
        ids = np.arange(start, min(start + CHUNK, users), dtype=np.int64)
        n = len(ids)
        lengths = rng.integers(0, seq_len + 1, n)
        total = int(lengths.sum())
        item = rng.integers(0, items, total)
        struct = pa.StructArray.from_arrays(
            [
                pa.array(
                    np.full(total, int(eod.timestamp() * 1e6) - 3_600_000_000), pa.int64()
                ).cast(pa.timestamp("us", tz="UTC")),
                pa.array(item),
                pa.array(item % 40),
                pa.array(item % 400),
                pa.array(np.array(["feed", "search", "ads"])[item % 3]),
                pa.array(np.array(["click", "cart", "purchase"])[(item // 7) % 3]),
            ],
            fields=[struct_type.field(i) for i in range(struct_type.num_fields)],
        )
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        behaviors = pa.ListArray.from_arrays(offsets, struct).cast(behavior_type)
        write(
            USER_BEHAVIOR,
            {"user_id": ids, "behaviors": behaviors, "seq_len": lengths.astype(np.int32)},
        )
        write(stats_spec("user", windows), {"user_id": ids, **counters(n)})
        activity = {
            "impressions": rng.integers(1, 20, n),
            "clicks": rng.integers(0, 2, n),
            "carts": np.zeros(n, np.int64),
            "purchases": np.zeros(n, np.int64),
        }
        write(DAILY_COUNTS, {**counts_of("user", n), "user_id": ids, **activity})
        write(
            DIM_USERS,
            {
                "user_id": ids,
                "gender": np.array(["F", "M", "U"])[ids % 3],
                "age_level": (ids % 7).astype(np.int32),
                "purchase_power": (ids % 4).astype(np.int32),
            },
        )
        uc_users = np.repeat(ids, 2)
        uc_cats = (uc_users + np.tile([0, 1], n)) % 40
        write(
            stats_spec("user_category", windows),
            {"user_id": uc_users, "category_id": uc_cats, **counters(2 * n)},
        )
        activity2 = {k: np.repeat(v, 2) for k, v in activity.items()}
        write(
            DAILY_COUNTS,
            {
                **counts_of("user_category", 2 * n),
                "user_id": uc_users,
                "category_id": uc_cats,
                **activity2,
            },
        )
    for start in range(0, items, CHUNK):
        ids = np.arange(start, min(start + CHUNK, items), dtype=np.int64)
        n = len(ids)
        write(stats_spec("item", windows), {"item_id": ids, **counters(n)})
        activity = {
            "impressions": rng.integers(1, 20, n),
            "clicks": rng.integers(0, 2, n),
            "carts": np.zeros(n, np.int64),
            "purchases": np.zeros(n, np.int64),
        }
        write(DAILY_COUNTS, {**counts_of("item", n), "item_id": ids, **activity})
        write(
            DIM_ITEMS,
            {
                "item_id": ids,
                "category_id": ids % 40,
                "brand_id": ids % 400,
                "price": rng.uniform(1, 100, n),
            },
        )

    cfg = model_config(settings)
    torch.manual_seed(0)
    model = MultiTaskModel(cfg)
    lineage = "bench-untrained"
    meta = {"config": cfg.to_json(), "lineage": lineage, "ds": day, "phases": [[day]]}
    snap = TrainingSnapshot(model.state_dict(), {}, torch.get_rng_state(), meta)
    save_snapshot(snap, checkpoint_path(settings, lineage, DAY))
    set_current_lineage(settings, lineage)


def export(home: Path, seq_len: int, batch_rows: int) -> None:
    from models.pretrain.export import export_knowledge

    result = export_knowledge(bench_settings(home, seq_len, batch_rows), DAY)
    print(
        "RESULT "
        + json.dumps({"rows": result.rows, "seconds": result.seconds, "buckets": result.buckets})
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", nargs="?", choices=["setup", "export"], help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    args = parser.parse_args()
    if args.stage == "setup":
        setup(args.home, args.users, args.seq_len, args.batch_rows)
        return
    if args.stage == "export":
        export(args.home, args.seq_len, args.batch_rows)
        return

    figures: dict[str, list[float]] = {
        "sizes": [],
        "rows": [],
        "rows_per_s": [],
        "peak_rss_mb": [],
        "export_s": [],
        "setup_s": [],
        "batch_rows": [],
    }
    script = str(Path(__file__).resolve())
    for users in args.sizes:
        home = Path(tempfile.mkdtemp(prefix="keep-bench-export-"))
        common = [
            "--home",
            str(home),
            "--seq-len",
            str(args.seq_len),
            "--batch-rows",
            str(args.batch_rows),
        ]
        try:
            made = run_measured([PYTHON, script, "setup", "--users", str(users), *common])
            ran = run_measured([PYTHON, script, "export", *common])
        finally:
            shutil.rmtree(home, ignore_errors=True)
        line = next(x for x in ran.output.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT ") :])
        rows = sum(result["rows"].values())
        figures["sizes"].append(users)
        figures["rows"].append(rows)
        figures["rows_per_s"].append(round(rows / ran.wall_s))
        figures["peak_rss_mb"].append(round(ran.peak_pss_mb))
        figures["export_s"].append(round(ran.wall_s, 1))
        figures["setup_s"].append(round(made.wall_s, 1))
        figures["batch_rows"].append(args.batch_rows)
        print(
            f"{users:>10,} users: {rows:,} vectors in {ran.wall_s:.1f} s "
            f"({rows / ran.wall_s:,.0f} rows/s), peak RSS {ran.peak_pss_mb:.0f} MB "
            f"(set-up {made.wall_s:.1f} s; buckets {result['buckets']})",
            flush=True,
        )
    write_report("export", figures)


if __name__ == "__main__":
    main()

"""torchrun entry point: the daily pre-training step on several processes (DDP, gloo on CPU).

Run (2 processes on one machine; each rank reads a disjoint shard of the day's row groups,
all ranks take the same number of steps, rank 0 evaluates and writes the checkpoint)::

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        -m models.pretrain.ddp --ds 2026-01-02 [--home DIR] [--full-retrain]

Settings come from the usual sources (keep.yaml / KEEP_* environment); ``--home`` sets
``KEEP_HOME``. Threads per rank: ``settings.pretrain.threads // world`` (at least 1).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

import torch.distributed as dist

from keep.core.config import load_settings
from models.pretrain.train import pretrain_day


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="models.pretrain.ddp", description=__doc__)
    parser.add_argument("--ds", required=True, type=dt.date.fromisoformat, help="day to train")
    parser.add_argument("--home", default=None, help="KEEP home (default: KEEP_HOME / cwd)")
    parser.add_argument("--full-retrain", action="store_true", help="start a new lineage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(rank)s %(message)s")
    if "RANK" not in os.environ:
        print(
            "run this module under torchrun (python -m torch.distributed.run ...)", file=sys.stderr
        )
        return 2
    dist.init_process_group(backend="gloo")
    rank = dist.get_rank()
    old_factory = logging.getLogRecordFactory()

    def factory(*a: object, **k: object) -> logging.LogRecord:
        record = old_factory(*a, **k)  # type: ignore[arg-type]
        record.rank = rank
        return record

    logging.setLogRecordFactory(factory)
    try:
        overrides: dict[str, object] = {"home": args.home} if args.home else {}
        settings = load_settings(**overrides)
        result = pretrain_day(settings, args.ds, full_retrain=args.full_retrain)
        if rank == 0:
            summary = {
                "lineage": result.lineage,
                "ds": result.ds.isoformat(),
                "checkpoint": str(result.checkpoint_path),
                "mode": result.mode,
                "metrics": result.metrics,
            }
            print(json.dumps(summary, default=str))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(run())

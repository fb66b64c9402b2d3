"""Benchmark: pre-training throughput end to end (Delta reader + training) vs compute only.

    .venv/bin/python bench/pretrain.py                       # the repo's lake (var/lake)
    .venv/bin/python bench/pretrain.py --home DIR --days 2026-01-01 2026-01-02 --steps 300

Two arms, each its own process (so each one's peak memory is measured alone, process tree
included, i.e. the reader's worker processes), with the same model, batch size and torch
thread count (``settings.pretrain.threads`` unless ``--threads``):

* ``e2e``: :class:`models.pretrain.reader.SampleReader` streams gold.pretrain_samples of the days
  (delta-rs + pyarrow, shuffle windows, ``reader_workers`` worker processes) into
  :func:`models.pretrain.train.train` for ``--steps`` steps; the clock covers the reader's start-up,
  every read, decode, shuffle and tensor conversion, and every training step.
* ``compute``: the same number of steps over batches built beforehand in memory (the first
  ``--cached-batches`` batches of the same reader, cycled): model compute only.

Writes reports/bench/pretrain.json: ``e2e_samples_per_s``, ``compute_only_samples_per_s``,
``ratio`` (goal >= 0.85: the input pipeline is not the bottleneck) and ``peak_rss_mb`` (the
end-to-end arm), plus the settings used. The machine is shared: rerun if figures look off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import sys
import time
from pathlib import Path

from _common import PYTHON, REPO, run_measured, write_report


def arm(args: argparse.Namespace) -> None:
    import torch

    from keep.core.config import load_settings
    from models.pretrain.features import sample_columns
    from models.pretrain.multitask import MultiTaskModel
    from models.pretrain.optim import PretrainOptimizer
    from models.pretrain.reader import ReaderPosition, SampleReader
    from models.pretrain.train import model_config, samples_table_uri, train

    settings = load_settings(home=args.home) if args.home else load_settings()
    p = settings.pretrain
    threads = args.threads or p.threads
    torch.set_num_threads(threads)
    days = [dt.date.fromisoformat(d) for d in args.days]
    reader = SampleReader(
        samples_table_uri(settings),
        days,
        columns=sample_columns(settings.aggregate.windows),
        batch_size=p.batch_size,
        shuffle_buffer=p.shuffle_buffer,
        seed=p.seed,
        workers=p.reader_workers if args.workers is None else args.workers,
        max_seq_len=settings.aggregate.sequence_length,
    )
    torch.manual_seed(p.seed)
    model = MultiTaskModel(model_config(settings))
    optimizer = PretrainOptimizer(model, p)
    epochs = -(-args.steps // reader.steps_per_epoch())
    if args.arm == "e2e":
        out = train(model, optimizer, reader, epochs=epochs, stop_after_steps=args.steps)
        samples, seconds = out.samples, out.seconds
    else:
        cached = list(itertools.islice(reader.batches(ReaderPosition()), args.cached_batches))

        class Cached:
            """A reader stand-in that cycles through batches already in memory."""

            def steps_per_epoch(self, epoch: int = 0) -> int:
                return args.steps

            def batches(self, position: ReaderPosition):  # type: ignore[no-untyped-def]
                return itertools.islice(itertools.cycle(cached), args.steps - position.step)

        out = train(model, optimizer, Cached(), epochs=1)  # type: ignore[arg-type]
        samples, seconds = out.samples, out.seconds
    print(
        "RESULT "
        + json.dumps(
            {
                "samples": samples,
                "seconds": seconds,
                "threads": threads,
                "batch_size": p.batch_size,
                "reader_workers": reader.workers,
                "rows": reader.rows,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", default=str(REPO), help="KEEP home whose lake has the samples")
    parser.add_argument("--days", nargs="+", default=["2026-01-01", "2026-01-02"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cached-batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: settings)")
    parser.add_argument("--workers", type=int, default=None, help="reader workers (settings)")
    parser.add_argument("--arm", choices=["e2e", "compute"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        arm(args)
        return
    common = [
        "--home", args.home, "--steps", str(args.steps), "--threads", str(args.threads),
        "--cached-batches", str(args.cached_batches), "--days", *args.days,
    ]  # fmt: skip
    if args.workers is not None:
        common += ["--workers", str(args.workers)]
    script = str(Path(__file__).resolve())
    results = {}
    for name in ("compute", "e2e"):
        measured = run_measured([PYTHON, script, "--arm", name, *common])
        line = next(x for x in measured.output.splitlines() if x.startswith("RESULT "))
        result = json.loads(line[len("RESULT ") :])
        result["peak_rss_mb"] = measured.peak_pss_mb
        results[name] = result
        rate = result["samples"] / result["seconds"]
        print(f"{name}: {rate:,.0f} samples/s, peak {measured.peak_pss_mb:,.0f} MB", flush=True)
    e2e = results["e2e"]["samples"] / results["e2e"]["seconds"]
    compute = results["compute"]["samples"] / results["compute"]["seconds"]
    write_report(
        "pretrain",
        {
            "e2e_samples_per_s": round(e2e, 1),
            "compute_only_samples_per_s": round(compute, 1),
            "ratio": round(e2e / compute, 3),
            "peak_rss_mb": round(results["e2e"]["peak_rss_mb"]),
            "compute_peak_rss_mb": round(results["compute"]["peak_rss_mb"]),
            "steps": args.steps,
            "threads": results["e2e"]["threads"],
            "batch_size": results["e2e"]["batch_size"],
            "reader_workers": results["e2e"]["reader_workers"],
            "table_rows": results["e2e"]["rows"],
            "days": args.days,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


if __name__ == "__main__":
    sys.exit(main())

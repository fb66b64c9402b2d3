"""Benchmark: how much of the generator's latent user interests the user knowledge encodes.

    .venv/bin/python bench/knowledge_probe.py --home /path/to/keep-home --ds 2026-01-03
    .venv/bin/python bench/knowledge_probe.py --home H --ds D --lineage L   # a given lineage

Reads the user vectors of snapshot ``ds`` (``knowledge.user``, lineage: ``--lineage`` or the
lineage with the most rows on that day) and the synthetic world's truth for that day
(``<truth_root>/user_latent/ds=<ds>/*.parquet``: ``user_id``, ``latent``, written by
keep/sources/generator.py; never read by the pipeline). A linear probe (ridge regression, closed
form in numpy, features standardised on the training users, ridge strength chosen on a
validation split of them) maps a user's vector to its latent interests. Users are split
80/20 by a hash of ``user_id``; the figure is the held-out R^2 (variance-weighted over the
latent dimensions: 1 - total squared error / total variance).

The control probe does the same from random Gaussian vectors of the same shape: its R^2
(about 0, slightly negative) is what a probe gets from dimensions alone. Writes
reports/bench/knowledge_probe.json with ``r2``, ``control_r2`` and the sizes, and prints them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from _common import REPO, write_report

sys.path.insert(0, str(REPO))

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on centred data: weights [K, D] and intercept [D]."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return w, my - mx @ w


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Variance-weighted R^2 over all output dimensions."""
    return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean(axis=0)) ** 2))


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, fit: np.ndarray) -> tuple[float, float]:
    """Held-out R^2 of a ridge probe; alpha picked on the ``fit`` / rest split of ``train``."""
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    z = (x - mean) / std
    tr, va = train & fit, train & ~fit

    def score(fit_rows: np.ndarray, eval_rows: np.ndarray, alpha: float) -> float:
        w, b = ridge_fit(z[fit_rows], y[fit_rows], alpha)
        return r2(y[eval_rows], z[eval_rows] @ w + b)

    best = max(ALPHAS, key=lambda a: score(tr, va, a))
    return score(train, ~train, best), best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, required=True, help="KEEP home (lake + truth)")
    parser.add_argument("--ds", type=dt.date.fromisoformat, required=True, help="snapshot day")
    parser.add_argument("--lineage", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from keep.core.config import load_settings
    from keep.lake import knowledge as kn

    settings = load_settings(home=args.home)
    rows = {
        lin: n
        for (lin, day), n in kn.snapshot_rows(settings, "user").items()
        if day == args.ds.isoformat()
    }
    if not rows:
        sys.exit(
            f"knowledge.user has no snapshot for {args.ds} under {settings.lake.root}: export it first"
        )
    lineage = args.lineage or max(rows, key=lambda lin: rows[lin])
    if lineage not in rows:
        sys.exit(f"lineage {lineage!r} has no snapshot for {args.ds}; it has {sorted(rows)}")

    keys, vectors = [], []
    for batch in kn.snapshot_batches(
        settings, "user", lineage, args.ds, ["user_id", "vector"], 100_000
    ):
        keys.append(batch.column("user_id").to_numpy())
        vectors.append(kn.vectors_matrix(batch.column("vector"), len(batch.column("vector")[0])))
    user_ids, x = np.concatenate(keys), np.concatenate(vectors).astype(np.float64)

    truth = settings.generator.truth_root / "user_latent" / f"ds={args.ds.isoformat()}"
    if not truth.is_dir():
        sys.exit(
            f"no latent truth at {truth}: the probe needs a world made by keep/sources/generator.py"
        )
    latent = pads.dataset(truth, format="parquet").to_table(columns=["user_id", "latent"])
    t_ids = latent.column("user_id").to_numpy()
    lat = latent.column("latent").combine_chunks()
    y_all = np.asarray(pa.compute.list_flatten(lat).to_numpy(), np.float64).reshape(len(t_ids), -1)
    order = np.argsort(t_ids)
    pos = np.searchsorted(t_ids[order], user_ids)
    pos = np.clip(pos, 0, len(order) - 1)
    found = t_ids[order][pos] == user_ids
    x, y, user_ids = x[found], y_all[order][pos[found]], user_ids[found]
    if len(user_ids) < 50:
        sys.exit(f"only {len(user_ids)} users with both a vector and a latent: too few to probe")

    h = kn.mix64(user_ids)
    train = (h % np.uint64(10)) < np.uint64(8)  # 80 % train, 20 % held-out users
    fit = (h // np.uint64(10) % np.uint64(4)) != np.uint64(0)  # of train: 75 % fit, 25 % alpha
    score, alpha = probe(x, y, train, fit)
    control = np.random.default_rng(args.seed).normal(0, 1, x.shape)
    control_score, control_alpha = probe(control, y, train, fit)
    figures = {
        "home": str(args.home),
        "ds": args.ds.isoformat(),
        "lineage": lineage,
        "users": int(len(user_ids)),
        "train_users": int(train.sum()),
        "test_users": int((~train).sum()),
        "knowledge_dim": int(x.shape[1]),
        "latent_dim": int(y.shape[1]),
        "r2": round(score, 4),
        "control_r2": round(control_score, 4),
        "alpha": alpha,
        "control_alpha": control_alpha,
    }
    print(
        f"held-out R^2 of the linear probe: knowledge {score:.4f}, random control {control_score:.4f}"
    )
    write_report("knowledge_probe", figures)


if __name__ == "__main__":
    main()

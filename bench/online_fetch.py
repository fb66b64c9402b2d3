"""Online knowledge fetch for one scoring request: KnowledgeRetriever vs the plain Feast SDK.

A world of users, items and user x category keys with 64-float vectors is written as one
knowledge snapshot into the lake's Delta tables and published with
keep.store.publication.publish_knowledge (SQLite, then a private redis-server started for
the run). Then, in one process, every request -- one random user, 100 random candidate
items and their categories -- is fetched by both paths, interleaved request by request
(A then B, B then A, ...) after a warm-up:

* project: ``KnowledgeRetriever.fetch(user, items, categories)`` (serving/retrieval.py):
  the publication pointer and every key in one read transaction / one Redis MULTI/EXEC;
* plain:   two ``FeatureStore.get_online_features`` calls on the live slot views (one for
  the user, one for the items and user x category pairs), converted to numpy arrays the
  way a scorer needs them (zeros for missing keys).

Every request's vectors and missing flags must be equal on both paths (checked, the run
fails otherwise). Writes reports/bench/online_fetch.json: p50 / p99 latency of both paths
per store and ``p99_ratio`` = project p99 / plain p99 (goal: at most 0.6).

    .venv/bin/python bench/online_fetch.py                      # defaults (about a minute)
    .venv/bin/python bench/online_fetch.py --quick              # small world, 100 requests
    .venv/bin/python bench/online_fetch.py --stores sqlite --requests 1000
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_report  # noqa: E402

DS = dt.date(2026, 1, 1)
LINEAGE = "bench"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class World:
    """Keys of the benchmark world: users, items with a category, user x category pairs."""

    def __init__(self, users: int, items: int, categories: int, per_user: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.user_ids = np.arange(1, users + 1, dtype=np.int64)
        self.item_ids = np.arange(1, items + 1, dtype=np.int64)
        self.item_category = rng.integers(0, categories, items).astype(np.int64)
        # Each user has vectors for ``per_user`` of the categories (the others are cold pairs).
        picks = np.argsort(rng.random((users, categories)), axis=1)[:, :per_user]
        self.uc_user = np.repeat(self.user_ids, per_user)
        self.uc_category = picks.ravel().astype(np.int64)

    def keys(self, entity: str) -> dict[str, np.ndarray]:
        if entity == "user":
            return {"user_id": self.user_ids}
        if entity == "item":
            return {"item_id": self.item_ids}
        return {"user_id": self.uc_user, "category_id": self.uc_category}


def write_lake(settings: Any, world: World, seed: int, chunk: int = 100_000) -> dict[str, int]:
    """The knowledge snapshot (random float32 vectors) and empty stats tables, with delta-rs."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from keep.core.tables import knowledge_spec, stats_spec
    from keep.lake.delta import table_path

    dim = settings.pretrain.knowledge_dim
    stamp = dt.datetime.combine(DS + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    rows = {}
    for n_entity, entity in enumerate(("user", "item", "user_category")):
        spec = knowledge_spec(entity)
        schema = spec.schema
        keys = world.keys(entity)
        n = len(next(iter(keys.values())))
        rows[entity] = n
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            rng = np.random.default_rng([seed, n_entity, start])
            vectors = rng.standard_normal((m, dim)).astype(np.float32)
            columns = {k: pa.array(v[start : start + m]) for k, v in keys.items()}
            columns["vector"] = pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.ravel()), dim
            ).cast(schema.field("vector").type)
            columns["recomputed"] = pa.array(np.ones(m, bool))
            columns["event_timestamp"] = pa.array([stamp] * m, schema.field("event_timestamp").type)
            columns["knowledge_lineage"] = pa.array([LINEAGE] * m)
            columns["snapshot_ds"] = pa.array([DS.isoformat()] * m)
            write_deltalake(
                str(table_path(settings, spec)),
                pa.table([columns[f.name] for f in schema], schema=schema),
                mode="append",
                partition_by=list(spec.partition_by),
            )
    for entity in ("user", "item", "user_category"):
        spec = stats_spec(entity, settings.aggregate.windows)
        write_deltalake(
            str(table_path(settings, spec)),
            spec.schema.empty_table(),
            mode="append",
            partition_by=list(spec.partition_by),
        )
    return rows


def _as_array(values: list[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(values), dim), np.float32)
    missing = np.ones(len(values), bool)
    for i, v in enumerate(values):
        if v is not None:
            out[i] = v
            missing[i] = False
    return out, missing


class PlainFetch:
    """The plain Feast SDK path: two get_online_features calls on the live slot views."""

    def __init__(self, store: Any, slot: str, dim: int) -> None:
        from keep.core.feast_names import slot_view_name, vector_feature

        self.store = store
        self.dim = dim
        self.user_features = [f"{slot_view_name('user', slot)}:{vector_feature('user')}"]
        self.rest_features = [
            f"{slot_view_name('item', slot)}:{vector_feature('item')}",
            f"{slot_view_name('user_category', slot)}:{vector_feature('user_category')}",
        ]
        self.names = [vector_feature(e) for e in ("user", "item", "user_category")]

    def __call__(self, user: int, items: list[int], categories: list[int]) -> dict[str, Any]:
        got_user = self.store.get_online_features(
            features=self.user_features, entity_rows=[{"user_id": user}]
        ).to_dict()
        got_rest = self.store.get_online_features(
            features=self.rest_features,
            entity_rows=[
                {"item_id": i, "user_id": user, "category_id": c}
                for i, c in zip(items, categories, strict=True)
            ],
        ).to_dict()
        user_vec, user_missing = _as_array(got_user[self.names[0]], self.dim)
        item_vecs, item_missing = _as_array(got_rest[self.names[1]], self.dim)
        uc_vecs, uc_missing = _as_array(got_rest[self.names[2]], self.dim)
        return {
            "user": user_vec[0],
            "user_missing": bool(user_missing[0]),
            "items": item_vecs,
            "items_missing": item_missing,
            "user_category": uc_vecs,
            "user_category_missing": uc_missing,
        }


def _project_arrays(batch: Any) -> dict[str, Any]:
    return {
        "user": batch.user,
        "user_missing": bool(batch.user_missing),
        "items": batch.items,
        "items_missing": batch.items_missing,
        "user_category": batch.user_category,
        "user_category_missing": batch.user_category_missing,
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def measure(
    settings: Any, world: World, requests: int, warmup: int, candidates: int, seed: int
) -> dict[str, Any]:
    """Publish, then time both paths on the same requests, interleaved."""
    from keep.store.feast_repo import apply_repo, get_store
    from keep.store.publication import live_snapshot, publish_knowledge
    from serving.retrieval import KnowledgeRetriever

    rows = write_lake(settings, world, seed)
    log(f"  lake written: {rows}")
    apply_repo(settings)
    began = time.perf_counter()
    info = publish_knowledge(settings, DS, LINEAGE, gate=True)
    publish_s = time.perf_counter() - began
    log(f"  published to slot {info['slot']} in {publish_s:.1f} s")

    live = live_snapshot(settings)
    assert live is not None
    dim = settings.pretrain.knowledge_dim
    retriever = KnowledgeRetriever(settings)
    plain = PlainFetch(get_store(settings), live["slot"], dim)

    def project(user: int, items: list[int], categories: list[int]) -> dict[str, Any]:
        return _project_arrays(retriever.fetch(user, items, categories))

    rng = np.random.default_rng(seed + 1)
    plan = []
    for _ in range(warmup + requests):
        user = int(rng.choice(world.user_ids))
        picks = rng.choice(len(world.item_ids), size=candidates, replace=False)
        plan.append((user, world.item_ids[picks].tolist(), world.item_category[picks].tolist()))
    timings: dict[str, list[float]] = {"project": [], "plain": []}
    paths: dict[str, Callable[[int, list[int], list[int]], dict[str, Any]]] = {
        "project": project,
        "plain": plain,
    }
    uc_found = 0
    gc.collect()
    for n, request in enumerate(plan):
        order = ("project", "plain") if n % 2 == 0 else ("plain", "project")
        results = {}
        for name in order:
            t0 = time.perf_counter()
            results[name] = paths[name](*request)
            elapsed = time.perf_counter() - t0
            if n >= warmup:
                timings[name].append(elapsed * 1000)
        if not _same(results["project"], results["plain"]):
            raise SystemExit(f"request {n} {request[0]}: the two paths returned different vectors")
        uc_found += int((~results["project"]["user_category_missing"]).sum())
        if n and n % 100 == 0:
            log(f"  {n}/{len(plan)} requests")

    def pct(name: str, q: float) -> float:
        return round(float(np.percentile(timings[name], q)), 3)

    figures: dict[str, Any] = {
        "project_p50_ms": pct("project", 50),
        "project_p99_ms": pct("project", 99),
        "plain_p50_ms": pct("plain", 50),
        "plain_p99_ms": pct("plain", 99),
        "project_mean_ms": round(float(np.mean(timings["project"])), 3),
        "plain_mean_ms": round(float(np.mean(timings["plain"])), 3),
    }
    figures["p99_ratio"] = round(figures["project_p99_ms"] / figures["plain_p99_ms"], 3)
    figures["p50_ratio"] = round(figures["project_p50_ms"] / figures["plain_p50_ms"], 3)
    figures["same_vectors"] = True
    figures["user_category_found_share"] = round(uc_found / (len(plan) * candidates), 3)
    figures["publish_s"] = round(publish_s, 2)
    figures["rows"] = rows
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=100_000, help="users (default 100000)")
    ap.add_argument("--items", type=int, default=20_000, help="items (default 20000)")
    ap.add_argument("--categories", type=int, default=8, help="item categories (default 8)")
    ap.add_argument(
        "--categories-per-user",
        type=int,
        default=4,
        help="user x category keys per user (default 4: 400000 pairs at the default size)",
    )
    ap.add_argument("--dim", type=int, default=64, help="knowledge dimension (default 64)")
    ap.add_argument("--requests", type=int, default=500, help="measured requests (default 500)")
    ap.add_argument("--warmup", type=int, default=50, help="unmeasured first requests (default 50)")
    ap.add_argument("--candidates", type=int, default=100, help="items per request (default 100)")
    ap.add_argument("--stores", nargs="+", choices=["sqlite", "redis"], default=["sqlite", "redis"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a small world (20000 users, 5000 items) and 100 requests: a smoke run",
    )
    ap.add_argument(
        "--report", default="online_fetch", help="report name under reports/bench/ (no .json)"
    )
    args = ap.parse_args()
    if args.quick:
        args.users, args.items, args.requests, args.warmup = 20_000, 5_000, 100, 20
    if args.categories_per_user > args.categories:
        ap.error("--categories-per-user cannot exceed --categories")

    from keep.core.config import load_settings
    from keep.store import redis_server

    world = World(args.users, args.items, args.categories, args.categories_per_user, args.seed)
    report: dict[str, Any] = {
        "users": args.users,
        "items": args.items,
        "user_category_keys": len(world.uc_user),
        "categories": args.categories,
        "dim": args.dim,
        "candidates_per_request": args.candidates,
        "requests": args.requests,
        "warmup_requests": args.warmup,
        "cpu_count": os.cpu_count(),
    }
    for store in args.stores:
        root = Path(tempfile.mkdtemp(prefix=f"keep-bench-online-{store}-"))
        server = None
        try:
            feast: dict[str, Any] = {"online_store": store}
            if store == "redis":
                server = redis_server.start(root / "redis")
                feast["redis_connection"] = server.address
            settings = load_settings(
                home=root / "home", feast=feast, pretrain={"knowledge_dim": args.dim}
            )
            log(f"{store}: {args.users} users, {args.items} items, {len(world.uc_user)} pairs")
            report[store] = measure(
                settings, world, args.requests, args.warmup, args.candidates, args.seed
            )
            r = report[store]
            log(
                f"{store}: project p50 {r['project_p50_ms']} ms p99 {r['project_p99_ms']} ms | "
                f"plain p50 {r['plain_p50_ms']} ms p99 {r['plain_p99_ms']} ms | "
                f"p99 ratio {r['p99_ratio']}"
            )
        finally:
            if server is not None:
                redis_server.stop(server)
            shutil.rmtree(root, ignore_errors=True)
    write_report(args.report, report)


if __name__ == "__main__":
    main()

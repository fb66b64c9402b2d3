"""A synthetic serving world, written with delta-rs (no Spark): dims, behaviours and
downstream samples of one day, knowledge snapshots, and a registered model whose weights
are randomised (so every input, knowledge included, moves the scores).

Used by the scoring service's tests (tiny: :data:`TINY`) and by bench/serve.py (sizes
from its command line). Keys: users ``1..users``, items ``1000..1000+items-1``, the
category of item ``i`` is ``100 + i % categories``; the last few users and items have no
dims / knowledge, so every request path meets unknown keys."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from deltalake import write_deltalake

from keep.core.config import Settings
from keep.core.tables import (
    BEHAVIOR,
    DIM_ITEMS,
    DIM_USERS,
    DOWNSTREAM_SAMPLES,
    USER_BEHAVIOR,
    TableSpec,
    knowledge_spec,
    samples_spec,
)
from keep.flows.downstream import publish_serving_features
from keep.lake.delta import table_path
from keep.store import model_registry as registry
from keep.store.publication import publish_knowledge
from models.downstream.checkpoint import DownstreamMeta, save_model
from models.downstream.model import DownstreamConfig, build_model

D1 = dt.date(2026, 1, 3)
SUBSYSTEM = "ads"
FIRST_ITEM = 1000


@dataclass(frozen=True)
class Sizes:
    users: int = 60  # user ids 1..users; dims for all but the last 5
    items: int = 40  # item ids 1000..; knowledge for all but the last 3
    categories: int = 4
    uc_users: int = 50  # (user, category) knowledge of users 1..uc_users only
    samples: int = 1_500  # downstream samples over the 3 days ending with D1
    max_behaviors: int = 70  # behaviours per user: uniform in [0, max)


TINY = Sizes()
USERS, ITEMS, CATEGORIES = TINY.users, TINY.items, TINY.categories


def item_category(item: int, categories: int = CATEGORIES) -> int:
    return 100 + item % categories


def _fill(spec: TableSpec, columns: dict[str, Any], n: int) -> pa.Table:
    """``columns`` plus every other column of ``spec``: null, or a zero of its type."""
    out = []
    for f in spec.schema:
        if f.name in columns:
            out.append(pa.array(columns[f.name], f.type))
        elif f.nullable:
            out.append(pa.nulls(n, f.type))
        elif pa.types.is_string(f.type):
            out.append(pa.array([""] * n, f.type))
        elif pa.types.is_list(f.type):
            out.append(pa.array([[]] * n, f.type))
        elif pa.types.is_timestamp(f.type):
            out.append(pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.UTC)] * n, f.type))
        else:
            out.append(pa.array(np.zeros(n), pa.float64()).cast(f.type))
    return pa.table(out, schema=spec.schema)


def _write(settings: Settings, spec: TableSpec, table: pa.Table) -> None:
    write_deltalake(
        str(table_path(settings, spec)),
        table,
        mode="overwrite",
        partition_by=list(spec.partition_by) or None,
    )


def end_of(ds: dt.date) -> dt.datetime:
    return dt.datetime.combine(ds + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


def write_lake(settings: Settings, sizes: Sizes = TINY, ds: dt.date = D1, seed: int = 0) -> None:
    """Dims, behaviours of ``ds`` and three days of downstream samples ending with ``ds``."""
    rng = np.random.default_rng(seed)
    users = np.arange(1, sizes.users - 4, dtype=np.int64)
    genders = rng.choice(np.array(["F", "M", "U", None], dtype=object), len(users))
    _write(
        settings,
        DIM_USERS,
        _fill(
            DIM_USERS,
            {
                "user_id": users,
                "gender": list(genders),
                "age_level": pa.array(users % 6, pa.int32(), mask=users % 7 == 0),
                "purchase_power": (users % 4).astype(np.int32),
                "ds": [ds.isoformat()] * len(users),
            },
            len(users),
        ),
    )
    items = np.arange(FIRST_ITEM, FIRST_ITEM + sizes.items, dtype=np.int64)
    categories = 100 + items % sizes.categories
    _write(
        settings,
        DIM_ITEMS,
        _fill(
            DIM_ITEMS,
            {
                "item_id": items,
                "category_id": categories,
                "brand_id": pa.array(items % 9, pa.int64(), mask=items % 5 == 0),
                "price": rng.uniform(1, 200, len(items)),
                "ds": [ds.isoformat()] * len(items),
            },
            len(items),
        ),
    )
    # Behaviours: built column-wise (a list of structs per user).
    lengths = rng.integers(0, sizes.max_behaviors, sizes.users)
    total = int(lengths.sum())
    b_items = rng.integers(FIRST_ITEM, FIRST_ITEM + sizes.items, total)
    slot = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    behavior = pa.StructArray.from_arrays(
        [
            pa.array(
                np.datetime64(end_of(ds - dt.timedelta(days=2)).replace(tzinfo=None), "us")
                + slot.astype("timedelta64[m]"),
                BEHAVIOR.field("event_time").type,
            ),
            pa.array(b_items, pa.int64()),
            pa.array(100 + b_items % sizes.categories, pa.int64()),
            pa.array(b_items % 9, pa.int64(), mask=slot % 6 == 0),
            pa.array(rng.choice(["ads", "search", "feed"], total), pa.string()),
            pa.array(rng.choice(["click", "cart", "purchase"], total), pa.string()),
        ],
        fields=list(BEHAVIOR),
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    _write(
        settings,
        USER_BEHAVIOR,
        _fill(
            USER_BEHAVIOR,
            {
                "user_id": np.arange(1, sizes.users + 1, dtype=np.int64),
                "behaviors": pa.ListArray.from_arrays(pa.array(offsets), behavior),
                "seq_len": lengths.astype(np.int32),
                "event_timestamp": [end_of(ds)] * sizes.users,
                "ds": [ds.isoformat()] * sizes.users,
            },
            sizes.users,
        ),
    )
    spec = samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows)
    n = sizes.samples
    days = [(ds - dt.timedelta(days=int(k))).isoformat() for k in rng.integers(0, 3, n)]
    _write(
        settings,
        spec,
        _fill(
            spec,
            {
                "impression_id": [f"i{k}" for k in range(n)],
                "user_id": rng.integers(1, sizes.users + 1, n),
                "item_id": rng.integers(FIRST_ITEM, FIRST_ITEM + sizes.items, n),
                "scenario": rng.choice(["ads", "ads", "search"], n),
                "click": (rng.random(n) < 0.2).astype(np.int32),
                "weight": rng.choice([1.0, 2.0], n),
                "ds": days,
            },
            n,
        ),
    )


def _write_knowledge(
    settings: Settings,
    entity: str,
    lineage: str,
    ds: dt.date,
    keys: dict[str, np.ndarray],
    salt: str,
) -> None:
    spec = knowledge_spec(entity)
    n = len(next(iter(keys.values())))
    dim = settings.pretrain.knowledge_dim
    seed = int(hashlib.sha256(f"{entity}|{lineage}|{ds}|{salt}".encode()).hexdigest()[:8], 16)
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    schema = spec.schema
    columns: dict[str, Any] = {k: pa.array(v, pa.int64()) for k, v in keys.items()}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim).cast(
        schema.field("vector").type
    )
    columns["recomputed"] = pa.array(np.ones(n, bool))
    columns["event_timestamp"] = pa.array([end_of(ds)] * n, schema.field("event_timestamp").type)
    columns["knowledge_lineage"] = pa.array([lineage] * n)
    columns["snapshot_ds"] = pa.array([ds.isoformat()] * n)
    write_deltalake(
        str(table_path(settings, spec)),
        pa.table([columns[f.name] for f in schema], schema=schema),
        mode="overwrite",
        partition_by=list(spec.partition_by),
        predicate=f"knowledge_lineage = '{lineage}' AND snapshot_ds = '{ds.isoformat()}'",
    )


def write_knowledge_snapshot(
    settings: Settings, lineage: str, sizes: Sizes = TINY, ds: dt.date = D1, salt: str = ""
) -> None:
    """Knowledge of all but the last 5 users and 3 items, and of every (user, category) of
    users ``1..uc_users``: some keys of every entity stay unknown."""
    users = np.arange(1, sizes.users - 4, dtype=np.int64)
    items = np.arange(FIRST_ITEM, FIRST_ITEM + sizes.items - 3, dtype=np.int64)
    uc_users = np.repeat(np.arange(1, sizes.uc_users + 1, dtype=np.int64), sizes.categories)
    uc_cats = np.tile(np.arange(100, 100 + sizes.categories, dtype=np.int64), sizes.uc_users)
    _write_knowledge(settings, "user", lineage, ds, {"user_id": users}, salt)
    _write_knowledge(settings, "item", lineage, ds, {"item_id": items}, salt)
    _write_knowledge(
        settings, "user_category", lineage, ds, {"user_id": uc_users, "category_id": uc_cats}, salt
    )


def write_model(settings: Settings, lineage: str, ds: dt.date, seed: int) -> Path:
    """A keep-arm checkpoint with a randomised plug-in (knowledge moves its scores)."""
    cfg = DownstreamConfig.from_settings(settings)
    model = build_model(cfg, "keep", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    path = settings.home / "models" / f"{lineage}-{ds}-{seed}.pt"
    meta = DownstreamMeta(
        arm="keep",
        config=cfg.to_json(),
        seed=seed,
        train_days=[ds.isoformat()],
        knowledge_lineage=lineage,
        snapshot_ds=ds.isoformat(),
    )
    save_model(model, meta, path)
    return path


def register_model(
    settings: Settings,
    lineage: str,
    ds: dt.date = D1,
    seed: int = 0,
    snapshot_ds: str | None = None,
) -> int:
    """Serving features of ``ds`` online, then a new live version pinned to ``lineage``
    (registered for ``snapshot_ds``, default ``ds``: one version per lineage and snapshot)."""
    publish_serving_features(settings, SUBSYSTEM, ds.isoformat())
    version = registry.register(
        settings,
        SUBSYSTEM,
        write_model(settings, lineage, ds, seed),
        arm="keep",
        lineage=lineage,
        snapshot_ds=snapshot_ds or ds.isoformat(),
        train_days=[ds.isoformat()],
        metrics={},
        gate={"success": True},
    )
    return version.version


def serving_world(settings: Settings, lineage: str = "L1", sizes: Sizes = TINY) -> None:
    """Lake, published knowledge of ``lineage`` and a registered model pinned to it."""
    from keep.store.feast_repo import apply_repo

    write_lake(settings, sizes)
    write_knowledge_snapshot(settings, lineage, sizes)
    apply_repo(settings)
    publish_knowledge(settings, D1, lineage, gate=True)
    register_model(settings, lineage)

"""Small gold.pretrain_samples tables with a planted, learnable signal (no Spark).

Every user has a favourite category (``user_id % N_CATEGORIES``); most of their past
behaviours are in it, and an impression is clicked with probability
``sigmoid(-2.2 + 2.6 * [candidate category == favourite])``. A model that reads the behaviour
sequence (or the user id) can therefore beat AUC 0.5 on a later day by a wide margin.
Carts and purchases follow clicks (cart: 40 % of clicks, purchase: 30 % of clicks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from keep.core.config import Settings
from keep.core.tables import PRETRAIN_SAMPLES, samples_spec
from keep.lake.delta import table_path
from tests.conftest import make_settings

N_USERS = 200
N_CATEGORIES = 8
ITEMS_PER_CATEGORY = 25
SCENARIOS = ("search", "feed", "video", "ads")


def tiny_settings(home: Path, **pretrain: object) -> Settings:
    """Settings with a small, fast model (1 thread, small buckets) rooted at ``home``."""
    base: dict[str, object] = {
        "user_buckets": 503,
        "item_buckets": 401,
        "category_buckets": 31,
        "brand_buckets": 101,
        "scenario_buckets": 7,
        "embedding_dim": 8,
        "knowledge_dim": 16,
        "hidden_dims": [32, 16],
        "batch_size": 128,
        "learning_rate": 0.01,
        "threads": 1,
        "reader_workers": 0,
        "shuffle_buffer": 700,
        "checkpoint_every_steps": 5,
        "full_retrain_days": 3,
    }
    base.update(pretrain)
    return make_settings(home, pretrain=base)


def favourite(user: np.ndarray) -> np.ndarray:
    return user % N_CATEGORIES


def make_day(settings: Settings, ds: dt.date, rows: int, seed: int) -> pa.Table:
    """One day's samples with the planted signal, in the exact gold schema."""
    spec = samples_spec(PRETRAIN_SAMPLES, settings.aggregate.windows)
    schema = spec.schema
    rng = np.random.default_rng([seed, ds.toordinal()])
    user = rng.integers(0, N_USERS, rows)
    fav = favourite(user)
    # Half the impressions show the favourite category, half a random one.
    cat = np.where(rng.random(rows) < 0.5, fav, rng.integers(0, N_CATEGORIES, rows))
    item = cat * ITEMS_PER_CATEGORY + rng.integers(0, ITEMS_PER_CATEGORY, rows)
    logit = -2.2 + 2.6 * (cat == fav)
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int32)
    cart = (click & (rng.random(rows) < 0.4)).astype(np.int32)
    purchase = (click & (rng.random(rows) < 0.3)).astype(np.int32)
    day_start = dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC)
    behaviors = []
    seq_len = rng.integers(0, 12, rows)
    for u_fav, n in zip(fav, seq_len, strict=True):
        seq = []
        for k in range(int(n)):
            c = int(u_fav) if rng.random() < 0.8 else int(rng.integers(0, N_CATEGORIES))
            it = c * ITEMS_PER_CATEGORY + int(rng.integers(0, ITEMS_PER_CATEGORY))
            seq.append(
                {
                    "event_time": day_start - dt.timedelta(hours=int(n) - k),
                    "item_id": it,
                    "category_id": c,
                    "brand_id": it % 37,
                    "scenario": SCENARIOS[int(rng.integers(0, 4))],
                    "behavior_type": ("click", "cart", "purchase")[int(rng.integers(0, 3))],
                }
            )
        behaviors.append(seq)
    data: dict[str, object] = {
        "impression_id": [f"{ds:%Y%m%d}-{i:09d}" for i in range(rows)],
        "user_id": user,
        "item_id": item,
        "event_time": [
            day_start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 86400, rows)
        ],
        "scenario": [SCENARIOS[i] for i in rng.integers(0, 4, rows)],
        "position": rng.integers(0, 30, rows).astype(np.int32),
        "click": click,
        "cart": cart,
        "purchase": purchase,
        "weight": np.ones(rows),
        "gender": [("F", "M", None)[i] for i in rng.integers(0, 3, rows)],
        "age_level": rng.integers(0, 7, rows).astype(np.int32),
        "purchase_power": rng.integers(0, 4, rows).astype(np.int32),
        "category_id": cat,
        "brand_id": item % 37,
        "price": rng.uniform(1, 200, rows).round(2),
        "behaviors": behaviors,
        "seq_len": seq_len.astype(np.int32),
    }
    for field in schema:
        if field.name in data:
            continue
        if field.name in ("state_ds",):
            data[field.name] = [(ds - dt.timedelta(days=1)).isoformat()] * rows
        elif field.name == "ds":
            data[field.name] = [ds.isoformat()] * rows
        elif "_ctr_" in field.name:
            data[field.name] = rng.uniform(0.02, 0.3, rows)
        else:
            data[field.name] = rng.integers(0, 50, rows)
    return pa.Table.from_pydict(data, schema=schema)


def write_days(
    settings: Settings,
    days: Sequence[dt.date],
    rows: int = 1200,
    files_per_day: int = 4,
    seed: int = 1,
) -> Path:
    """Write the days into gold.pretrain_samples (``files_per_day`` files each); its path."""
    spec = samples_spec(PRETRAIN_SAMPLES, settings.aggregate.windows)
    path = table_path(settings, spec)
    for ds in days:
        table = make_day(settings, ds, rows, seed)
        chunk = -(-rows // files_per_day)
        for i in range(files_per_day):
            part = table.slice(i * chunk, chunk)
            if part.num_rows:
                write_deltalake(str(path), part, partition_by=["ds"], mode="append")
    return path

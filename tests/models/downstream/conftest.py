"""Small gold.downstream_training_set tables (no Spark), built on the pre-training fakes.

:func:`make_training_day` takes a day of :func:`tests.models.pretrain.conftest.make_day`
(the planted signal: users click their favourite category), makes every impression a
downstream (``ads``) one, and adds knowledge of one lineage: the user vector is a noisy
one-hot of the favourite category, the item vector a one-hot of the item's category, the
user x category vector their match; every 7th user and every 5th item is a cold key (zero
vector + missing flag). :func:`with_counters` adds the downstream-only counters from the
previous days' tables.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from keep.core.config import Settings
from keep.core.tables import training_set_spec
from models.downstream.counters import add_downstream_counters
from tests.models.pretrain.conftest import N_CATEGORIES, favourite, make_day, tiny_settings

LINEAGE = "20260101-20260105-abc"
SNAPSHOT = dt.date(2026, 1, 9)


def downstream_settings(home: Path, **downstream: object) -> Settings:
    """Tiny pre-training and downstream models (small buckets, 1 thread) rooted at ``home``."""
    base: dict[str, object] = {
        "user_buckets": 211,
        "item_buckets": 307,
        "category_buckets": 17,
        "brand_buckets": 41,
        "embedding_dim": 4,
        "hidden_dims": [16, 8],
        "plugin_hidden": 8,
        "batch_size": 64,
        "learning_rate": 0.01,
        "counter_windows": [1, 3],
        "prior_strength": 5.0,
        "seeds": [0],
    }
    base.update(downstream)
    settings = tiny_settings(home, knowledge_dim=8)
    return settings.model_copy(update={"downstream": settings.downstream.model_copy(update=base)})


def make_training_day(
    settings: Settings, ds: dt.date, rows: int, seed: int = 3, lineage: str = LINEAGE
) -> pa.Table:
    """One day of the training set in the exact gold schema (see the module docstring)."""
    day = make_day(settings, ds, rows, seed)
    spec = training_set_spec(settings.aggregate.windows)
    k = settings.pretrain.knowledge_dim
    rng = np.random.default_rng([seed, ds.toordinal(), 1])
    user = np.asarray(day.column("user_id").to_numpy())
    item = np.asarray(day.column("item_id").to_numpy())
    cat = np.asarray(day.column("category_id").to_numpy())
    fav = favourite(user)
    user_vec = np.zeros((rows, k), dtype=np.float32)
    user_vec[np.arange(rows), fav % k] = 1.0
    user_vec += rng.normal(0, 0.1, (rows, k)).astype(np.float32)
    item_vec = np.zeros((rows, k), dtype=np.float32)
    item_vec[np.arange(rows), cat % k] = 1.0
    uc_vec = np.zeros((rows, k), dtype=np.float32)
    uc_vec[:, 0] = (cat == fav).astype(np.float32)
    missing = {"user": user % 7 == 0, "item": item % 5 == 0}
    missing["user_category"] = missing["user"]
    vectors = {"user": user_vec, "item": item_vec, "user_category": uc_vec}
    data = {name: day.column(name) for name in day.column_names if name != "ds"}
    data["scenario"] = pa.array(["ads"] * rows)
    for entity, vec in vectors.items():
        vec[missing[entity]] = 0.0
        data[f"{entity}_vector"] = pa.array(list(vec), pa.list_(pa.float32()))
        data[f"{entity}_knowledge_missing"] = pa.array(missing[entity])
        data[f"{entity}_stats_missing"] = pa.array(np.zeros(rows, dtype=bool))
    data["knowledge_lineage"] = pa.array([lineage] * rows)
    data["ds"] = pa.array([ds.isoformat()] * rows)
    assert k >= N_CATEGORIES
    return pa.Table.from_pydict(data, schema=spec.schema)


def with_counters(
    settings: Settings, ds: dt.date, rows: int, history_days: int = 3, seed: int = 3
) -> pa.Table:
    """Day ``ds`` with ``du_*``/``di_*`` counters from the ``history_days`` days before it."""
    history = pa.concat_tables(
        make_training_day(settings, ds - dt.timedelta(days=i), rows, seed)
        for i in range(1, history_days + 1)
    )
    down = settings.downstream
    return add_downstream_counters(
        make_training_day(settings, ds, rows, seed),
        history,
        ds=ds,
        windows=down.counter_windows,
        scenario=down.scenario,
        prior_strength=down.prior_strength,
    )

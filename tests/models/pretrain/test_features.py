"""Batch builders: padding/truncation, hashing, counters, per-side column needs."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from keep.core.errors import InputError
from models.pretrain.features import (
    BEHAVIOR_TYPES,
    counter_columns,
    hash_ids,
    item_batch,
    sample_batch,
    user_batch,
    user_category_batch,
)
from tests.models.pretrain.conftest import make_day, tiny_settings

DAY = dt.date(2026, 1, 5)


@pytest.fixture
def day(tmp_path: Path) -> pa.Table:
    return make_day(tiny_settings(tmp_path), DAY, rows=60, seed=3)


def test_sequence_keeps_newest_behaviours_oldest_first(day: pa.Table) -> None:
    max_len = 5
    batch = user_batch(day, max_len=max_len)
    rows = day.column("behaviors").to_pylist()
    width = max(min(len(r), max_len) for r in rows)
    assert batch.seq.item.shape == (len(rows), width)
    for i, seq in enumerate(rows):
        kept = seq[-max_len:]
        expected_types = [BEHAVIOR_TYPES[b["behavior_type"]] for b in kept]
        assert batch.seq.behavior[i, : len(kept)].tolist() == expected_types
        assert batch.seq.mask[i].tolist() == [True] * len(kept) + [False] * (width - len(kept))
        assert batch.seq.item[i, len(kept) :].eq(0).all()
        ids = np.array([b["item_id"] for b in kept], dtype=np.int64)
        assert (
            batch.seq.item[i, : len(kept)].tolist()
            == hash_ids(ids, np.ones(len(ids), bool), "item").tolist()
        )


def test_hash_is_stable_salted_and_reserves_zero() -> None:
    ids = np.array([0, 1, 2, 1 << 40, -5], dtype=np.int64)
    valid = np.array([True, True, True, True, False])
    a = hash_ids(ids, valid, "item")
    assert a.tolist() == hash_ids(ids.copy(), valid, "item").tolist()
    assert a[-1] == 0 and (a[:-1] > 0).all()
    # Same id, other field: another hash (user 7 and item 7 do not share a row by design).
    assert hash_ids(ids, valid, "user")[1] != a[1]
    # Pinned values (splitmix64 of id + item salt, written out independently): changing the
    # function would silently remap every trained embedding row.
    pinned = hash_ids(np.array([0, 12345]), np.array([True, True]), "item").tolist()
    assert pinned == [1526461827928409233, 8642258719320623303]


def test_counters_are_transformed_in_window_order(tmp_path: Path, day: pa.Table) -> None:
    settings = tiny_settings(tmp_path)
    shuffled = day.select(list(reversed(day.column_names)))
    batch = item_batch(shuffled)
    names = counter_columns("i_", settings.aggregate.windows)
    assert batch.counter_names == tuple(names)
    row = 7
    for j, name in enumerate(names):
        v = float(day.column(name)[row].as_py())
        expected = math.log(v / (1 - v)) if "_ctr_" in name else math.log1p(v)
        assert batch.counters[row, j].item() == pytest.approx(expected, rel=1e-5)


def test_each_side_needs_only_its_own_columns(tmp_path: Path, day: pa.Table) -> None:
    windows = tiny_settings(tmp_path).aggregate.windows
    user_cols = ["user_id", "behaviors", "seq_len", "gender", "age_level", "purchase_power"]
    item_cols = ["item_id", "category_id", "brand_id", "price"]
    uc_cols = ["user_id", "behaviors", "seq_len", "category_id"]
    u = user_batch(day.select(user_cols + counter_columns("u_", windows)))
    i = item_batch(day.select(item_cols + counter_columns("i_", windows)))
    uc = user_category_batch(day.select(uc_cols + counter_columns("uc_", windows)))
    full = sample_batch(day)
    assert torch.equal(u.seq.category, full.user.seq.category)
    assert torch.equal(u.counters, full.user.counters)
    assert torch.equal(i.counters, full.item.counters)
    assert torch.equal(uc.category, full.user_category.category)
    assert torch.equal(uc.counters, full.user_category.counters)
    with pytest.raises(InputError, match="behaviors"):
        user_batch(day.select(["user_id", "gender"]))


def test_nulls_map_to_missing(day: pa.Table) -> None:
    table = day.slice(0, 3)
    nulls = pa.nulls(3, pa.int64())
    table = table.set_column(table.schema.get_field_index("category_id"), "category_id", nulls)
    batch = item_batch(table)
    assert batch.category.tolist() == [0, 0, 0]
    genders = day.column("gender").to_pylist()
    g = user_batch(day).gender.tolist()
    assert all((code == 0) == (name is None) for code, name in zip(g, genders, strict=True))

"""Downstream batches: only in-scenario behaviours, cold keys, what each arm carries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from keep.core.tables import training_set_spec
from models.downstream.features import downstream_batch, filter_behaviors
from models.pretrain.features import hash_ids
from tests.models.downstream.conftest import downstream_settings, with_counters

DS = dt.date(2026, 1, 10)


def _behaviors(*items: tuple[int, str]) -> list[dict[str, object]]:
    t = dt.datetime(2026, 1, 9, tzinfo=dt.UTC)
    return [
        {
            "event_time": t + dt.timedelta(minutes=i),
            "item_id": item,
            "category_id": item + 100,
            "brand_id": item + 200,
            "scenario": scenario,
            "behavior_type": "click",
        }
        for i, (item, scenario) in enumerate(items)
    ]


def test_filter_keeps_only_the_subsystems_behaviours(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    base = with_counters(settings, DS, rows=3)
    behavior_type = training_set_spec(settings.aggregate.windows).schema.field("behaviors").type
    seqs = [
        _behaviors((1, "ads"), (2, "search"), (3, "ads"), (4, "feed")),
        _behaviors((5, "feed")),
        [],
    ]
    table = base.set_column(
        base.schema.get_field_index("behaviors"), "behaviors", pa.array(seqs, behavior_type)
    )
    filtered = filter_behaviors(table, "ads")
    assert [[b["item_id"] for b in s] for s in filtered.column("behaviors").to_pylist()] == [
        [1, 3],
        [],
        [],
    ]
    assert filtered.column("seq_len").to_pylist() == [2, 0, 0]

    seq = downstream_batch(table, scenario="ads", counter_windows=[1, 3]).seq
    ids = np.array([[1, 3], [0, 0], [0, 0]])
    valid = np.array([[True, True], [False, False], [False, False]])
    assert torch.equal(seq.mask, torch.from_numpy(valid))
    assert torch.equal(seq.item, torch.from_numpy(hash_ids(ids, valid, "item")))
    assert torch.equal(seq.category, torch.from_numpy(hash_ids(ids + 100, valid, "category")))


def test_batch_shapes_and_what_each_arm_carries(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    table = with_counters(settings, DS, rows=50)
    # A cold key's vector is zeroed by the batch whatever the table holds.
    ones = pa.array([[1.0] * 8] * 50, table.schema.field("user_vector").type)
    table = table.set_column(table.schema.get_field_index("user_vector"), "user_vector", ones)
    base = downstream_batch(table, scenario="ads", counter_windows=[1, 3])
    assert base.knowledge is None and base.superdomain is None
    assert base.counters.shape == (50, 12)  # 2 entities x 2 windows x 3 counters
    assert base.user.shape == base.position.shape == base.labels.click.shape == (50,)
    # The base sequence is shorter than the super-domain one wherever other scenarios occur.
    full = downstream_batch(
        table,
        scenario="ads",
        counter_windows=[1, 3],
        knowledge_dim=8,
        superdomain_windows=settings.aggregate.windows,
    )
    assert full.superdomain is not None and full.knowledge is not None
    assert int(base.seq.mask.sum()) < int(full.superdomain.seq.mask.sum())
    assert full.superdomain.counters.shape == (50, 3 * 5 * len(settings.aggregate.windows))
    k = full.knowledge
    assert k.user.shape == k.item.shape == k.user_category.shape == (50, 8)
    assert k.missing.shape == (50, 3)
    user_missing = np.asarray(table.column("user_knowledge_missing").to_numpy(), dtype=bool)
    assert torch.equal(k.missing[:, 0].bool(), torch.from_numpy(user_missing))
    assert k.user[torch.from_numpy(user_missing)].abs().sum() == 0  # cold key: zeros
    assert k.user[torch.from_numpy(~user_missing)].abs().sum() > 0

"""Online retrieval: equal to Feast's get_online_features on the live slot, explicit fallbacks."""

from __future__ import annotations

import datetime as dt

import numpy as np

from keep.core.config import Settings
from keep.core.feast_names import slot_view_name, vector_feature
from keep.store.feast_repo import apply_repo
from keep.store.publication import publish_knowledge
from serving.retrieval import KnowledgeRetriever
from tests.keep.store.feast_data import write_all_stats, write_snapshot

D1 = dt.date(2026, 1, 1)


def test_retrieval_equals_get_online_features(feast_settings: Settings) -> None:
    s = feast_settings
    snap = write_snapshot(s, "L7", D1, n=24)
    write_all_stats(s, D1)
    store = apply_repo(s)
    retriever = KnowledgeRetriever(s)

    nothing = retriever.fetch(1, [1000, 1001], [100, 101])
    assert nothing.lineage is None and nothing.items_missing.all() and not nothing.items.any()

    publish_knowledge(s, D1, "L7", gate=True)
    user, items, categories = 2, [1000, 1005, 999_999, 1005], [100, 101, 100, 555]
    batch = retriever.fetch(user, items, categories)
    assert (batch.lineage, batch.snapshot_ds, batch.slot) == ("L7", "2026-01-01", "blue")

    slot = batch.slot
    online = store.get_online_features(
        features=[
            f"{slot_view_name('item', slot)}:{vector_feature('item')}",
            f"{slot_view_name('user_category', slot)}:{vector_feature('user_category')}",
        ],
        entity_rows=[
            {"item_id": i, "user_id": user, "category_id": c}
            for i, c in zip(items, categories, strict=True)
        ],
    ).to_dict()
    user_online = store.get_online_features(
        features=[f"{slot_view_name('user', slot)}:{vector_feature('user')}"],
        entity_rows=[{"user_id": user}],
    ).to_dict()

    def as_array(values: list) -> tuple[np.ndarray, np.ndarray]:
        missing = np.array([v is None for v in values])
        dim = s.pretrain.knowledge_dim
        return np.array([v if v is not None else [0.0] * dim for v in values], np.float32), missing

    exp_items, exp_items_missing = as_array(online["i_knowledge"])
    exp_uc, exp_uc_missing = as_array(online["uc_knowledge"])
    np.testing.assert_array_equal(batch.items, exp_items)
    np.testing.assert_array_equal(batch.items_missing, exp_items_missing)
    np.testing.assert_array_equal(batch.user_category, exp_uc)
    np.testing.assert_array_equal(batch.user_category_missing, exp_uc_missing)
    np.testing.assert_array_equal(batch.user, np.asarray(user_online["u_knowledge"][0], np.float32))

    # ... and both equal what was written to the lake (item 999999, category 555: unknown).
    item_rows = [0, 5, None, 5]
    for row, got, missing in zip(item_rows, batch.items, batch.items_missing, strict=True):
        if row is None:
            assert missing and not got.any()
        else:
            np.testing.assert_array_equal(got, snap["item"][1][row])
    # user 2 x category 100 is user_category row 4 (keys: user = row // 4 + 1, cat = row % 4 + 100)
    np.testing.assert_array_equal(batch.user_category[0], snap["user_category"][1][4])
    np.testing.assert_array_equal(batch.user_category[1], snap["user_category"][1][5])
    assert batch.user_category_missing.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(batch.user, snap["user"][1][1])

    tensors = batch.as_torch()
    assert tuple(tensors["items"].shape) == (4, s.pretrain.knowledge_dim)
    assert tuple(tensors["user"].shape) == (1, s.pretrain.knowledge_dim)
    assert tensors["items_missing"].tolist() == [False, False, True, False]

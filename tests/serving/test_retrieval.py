"""Online retrieval: equal to Feast's get_online_features and to the lake, pinned lineages,
serving features, categories from the item values, and store failures as errors."""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from keep.core.config import Settings
from keep.core.errors import InputError, StoreUnavailable
from keep.core.feast_names import slot_view_name, vector_feature
from keep.store.feast_repo import apply_repo
from keep.store.publication import Pointer, publish_knowledge
from keep.store.redis_server import start as start_redis
from keep.store.redis_server import stop as stop_redis
from serving.retrieval import KnowledgeBatch, KnowledgeRetriever
from tests.keep.store.feast_data import (
    Snapshot,
    write_all_stats,
    write_serving_online,
    write_snapshot,
)

D1 = dt.date(2026, 1, 1)
D2 = dt.date(2026, 1, 2)


def published(s: Settings, lineage: str = "L7", ds: dt.date = D1, salt: str = "") -> Snapshot:
    """Snapshot ``lineage``/``ds`` (24 keys per entity) in the lake, applied and published."""
    snap = write_snapshot(s, lineage, ds, n=24, salt=salt)
    write_all_stats(s, ds)
    apply_repo(s)
    publish_knowledge(s, ds, lineage, gate=True)
    return snap


def assert_nothing(batch: KnowledgeBatch) -> None:
    assert batch.user_missing and batch.items_missing.all() and batch.user_category_missing.all()
    assert not batch.user.any() and not batch.items.any() and not batch.user_category.any()


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
    assert batch.category_ids == categories and not batch.pinned_unavailable
    assert batch.user_features is None and batch.item_features == []

    slot = batch.slot
    assert slot is not None
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

    if s.feast.online_store == "redis":
        # A server that refuses scripts (an ACL without @scripting) is read with MULTI/EXEC.
        import redis

        def refuse(*args: object, **kwargs: object) -> None:
            raise redis.exceptions.ResponseError("NOPERM no permission to run 'evalsha'")

        no_scripts = KnowledgeRetriever(s)
        no_scripts._script_read = refuse  # type: ignore[method-assign]
        assert no_scripts.fetch(user, [], []).lineage == "L7" and not no_scripts._use_script
        for _ in range(2):
            again = no_scripts.fetch(user, items, categories)
            for name in ("user", "items", "items_missing", "user_category"):
                np.testing.assert_array_equal(getattr(again, name), getattr(batch, name))
            assert again.user_category_missing.tolist() == [False, False, False, True]

    with pytest.raises(InputError, match="categories"):
        retriever.fetch(user, items, categories[:2])


def test_pinned_lineage_reads_the_other_slot(feast_settings: Settings) -> None:
    s = feast_settings
    write_snapshot(s, "L7", D1, n=24)
    write_all_stats(s, D1)
    apply_repo(s)
    retriever = KnowledgeRetriever(s)
    before = retriever.fetch(2, [1000], [100], lineage="L7")
    assert before.pinned_unavailable and before.lineage is None and before.slot is None
    assert_nothing(before)

    snap7 = published(s, "L7", D1)
    snap8 = published(s, "L8", D2, salt="retrained")  # a new lineage goes live in green
    user, items, categories = 2, [1000, 1003, 999_999], [100, 101, 100]
    live = retriever.fetch(user, items, categories)
    pinned = retriever.fetch(user, items, categories, lineage="L7")
    assert (live.lineage, live.snapshot_ds, live.slot) == ("L8", "2026-01-02", "green")
    assert (pinned.lineage, pinned.snapshot_ds, pinned.slot) == ("L7", "2026-01-01", "blue")
    assert not pinned.pinned_unavailable and not live.pinned_unavailable
    assert retriever.fetch(user, items, categories, lineage="L8").slot == "green"

    # Values are the lake's vectors of each lineage (user 2 is row 1; user 2 x category
    # 100 / 101 are user_category rows 4 / 5; item 999999 is unknown).
    for batch, snap in ((pinned, snap7), (live, snap8)):
        np.testing.assert_array_equal(batch.user, snap["user"][1][1])
        np.testing.assert_array_equal(batch.items[:2], snap["item"][1][[0, 3]])
        assert batch.items_missing.tolist() == [False, False, True] and not batch.items[2].any()
        np.testing.assert_array_equal(batch.user_category, snap["user_category"][1][[4, 5, 4]])
        assert not batch.user_category_missing.any()
    assert not np.array_equal(snap7["user"][1][1], snap8["user"][1][1])


def test_reads_during_a_publication_see_one_snapshot(feast_settings: Settings) -> None:
    """While another thread publishes a new lineage and switches it live, every read is the
    old snapshot or the new one, never a mix; a pin to the old lineage keeps reading it."""
    s = feast_settings
    snap7 = published(s, "L7", D1)
    snap8 = write_snapshot(s, "L8", D2, n=24, salt="retrained")
    write_all_stats(s, D2)
    expected = {"L7": snap7, "L8": snap8}
    retriever = KnowledgeRetriever(s)
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            publish_knowledge(s, D2, "L8", gate=True)
        except BaseException as e:  # reported by the reading loop below
            failures.append(e)

    publisher = threading.Thread(target=publish)
    publisher.start()
    # user 5 is user row 4; user 5 x categories 100..102 are user_category rows 16..18
    items, categories = [1000, 1010, 1020], [100, 101, 102]
    live_seen: list[str] = []
    deadline = time.monotonic() + 120
    reads = 0
    while publisher.is_alive() or not live_seen or live_seen[-1] != "L8":
        assert not failures and time.monotonic() < deadline
        pinned = reads % 3 == 2
        reads += 1
        batch = retriever.fetch(5, items, categories, lineage="L7" if pinned else None)
        assert (batch.lineage == "L7") if pinned else (batch.lineage in expected)
        assert batch.lineage is not None
        snap = expected[batch.lineage]
        np.testing.assert_array_equal(batch.user, snap["user"][1][4])
        np.testing.assert_array_equal(batch.items, snap["item"][1][[0, 10, 20]])
        np.testing.assert_array_equal(batch.user_category, snap["user_category"][1][[16, 17, 18]])
        if not pinned:
            live_seen.append(batch.lineage)
    publisher.join()
    assert not failures
    assert "L7" in live_seen  # some reads did overlap the publication
    assert retriever.fetch(5, items, categories, lineage="L7").lineage == "L7"


def test_pinned_lineage_unavailable(feast_settings: Settings) -> None:
    s = feast_settings
    published(s, "L7", D1)
    retriever = KnowledgeRetriever(s)
    unknown = retriever.fetch(2, [1000, 1001], [100, 101], lineage="L0")
    assert unknown.pinned_unavailable
    assert (unknown.lineage, unknown.snapshot_ds, unknown.slot) == (None, None, None)
    assert_nothing(unknown)

    # A slot whose publication is under way is never served, even if it names the lineage.
    published(s, "L8", D2)
    store = apply_repo(s)
    pointer = Pointer(s, store)
    state = pointer.read()
    state["slots"]["blue"]["status"] = "writing"
    pointer.write(state)
    writing = retriever.fetch(2, [1000], [100], lineage="L7")
    assert writing.pinned_unavailable and writing.lineage is None
    assert_nothing(writing)
    assert retriever.fetch(2, [1000], [100], lineage="L8").slot == "green"


def _pack(category: int, rest: bytes) -> bytes:
    return struct.pack("<q", category) + rest


def _category_of(blob: bytes) -> int | None:
    category = struct.unpack_from("<q", blob)[0]
    return None if category < 0 else int(category)


def test_serving_features_and_categories_from_items(feast_settings: Settings) -> None:
    s = feast_settings
    snap = published(s, "L7", D1)
    store = apply_repo(s)
    # Items 1000 / 1001 in categories 100 / 101; 1002 in 555 (no user x category vector);
    # 1003's value holds no category; 4242 has no value at all.
    item_blobs = {
        1000: _pack(100, b"a"),
        1001: _pack(101, b"\x00bb"),
        1002: _pack(555, b""),
        1003: _pack(-1, b"c"),
    }
    write_serving_online(store, "item", list(item_blobs), list(item_blobs.values()), D1)
    write_serving_online(store, "user", [2], [b"\x00user 2\xff"], D1)

    retriever = KnowledgeRetriever(s, category_of=_category_of)
    items = [1001, 1000, 1002, 1003, 4242]
    batch = retriever.fetch(2, items, serving=True)
    assert batch.user_features == b"\x00user 2\xff"
    assert batch.item_features == [
        item_blobs[1001],
        item_blobs[1000],
        item_blobs[1002],
        item_blobs[1003],
        None,
    ]
    assert batch.category_ids == [101, 100, 555, None, None]
    np.testing.assert_array_equal(batch.user_category[:2], snap["user_category"][1][[5, 4]])
    assert batch.user_category_missing.tolist() == [False, False, True, True, True]
    assert not batch.user_category[2:].any()
    np.testing.assert_array_equal(batch.items[:4], snap["item"][1][[1, 0, 2, 3]])
    assert batch.items_missing.tolist() == [False, False, False, False, True]
    np.testing.assert_array_equal(batch.user, snap["user"][1][1])

    # Categories read from the items imply reading the serving features.
    implied = retriever.fetch(2, items)
    assert implied.item_features == batch.item_features and implied.category_ids == [
        101,
        100,
        555,
        None,
        None,
    ]
    # Given categories win; serving features only when asked for.
    given = retriever.fetch(2, items, [100] * 5, serving=True)
    assert given.category_ids == [100] * 5 and given.item_features == batch.item_features
    np.testing.assert_array_equal(given.user_category, snap["user_category"][1][[4] * 5])
    plain = retriever.fetch(2, items, [100] * 5)
    assert plain.user_features is None and plain.item_features == []
    stranger = retriever.fetch(3, [], serving=True)
    assert stranger.user_features is None and stranger.item_features == []
    assert stranger.items.shape == (0, s.pretrain.knowledge_dim)

    # Pinned to a lineage nobody holds: the serving features still come, knowledge does not.
    gone = retriever.fetch(2, items, lineage="L0")
    assert gone.pinned_unavailable and gone.item_features == batch.item_features
    assert gone.category_ids == batch.category_ids
    assert_nothing(gone)

    with pytest.raises(InputError, match="category_of"):
        KnowledgeRetriever(s).fetch(2, items)


def test_store_unavailable_is_an_error(feast_settings: Settings, tmp_path: Path) -> None:
    s = feast_settings
    if s.feast.online_store == "redis":
        server = start_redis(tmp_path / "own-redis", password="own pass")  # this test stops it
        s.feast.redis_connection = server.address
        s.feast.redis_password = SecretStr("own pass")
        s.feast.redis_user = server.user
        try:
            published(s)
            retriever = KnowledgeRetriever(s, timeout_s=1.0)
            assert retriever.fetch(2, [1000], [100]).lineage == "L7"
        finally:
            stop_redis(server)
        began = time.monotonic()
        with pytest.raises(
            StoreUnavailable, match=f"redis {server.host}:{server.port} unreachable"
        ):
            retriever.fetch(2, [1000], [100])
        assert time.monotonic() - began < 5
        with pytest.raises(StoreUnavailable):
            KnowledgeRetriever(s, timeout_s=1.0).fetch(2, [1000], [100], serving=True)
        return

    published(s)
    path = s.feast.store_root / "online.db"
    retriever = KnowledgeRetriever(s, timeout_s=0.2)
    assert retriever.fetch(2, [1000], [100]).lineage == "L7"
    # Locked by a writer beyond the timeout.
    writer = sqlite3.connect(path)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="database is locked"):
            retriever.fetch(2, [1000], [100])
    finally:
        writer.rollback()
        writer.close()
    assert retriever.fetch(2, [1000], [100]).lineage == "L7"  # readable again
    retriever.close()

    # A file that cannot be opened, or is not a database.
    path.rename(path.with_suffix(".moved"))
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        KnowledgeRetriever(s).fetch(2, [1000], [100])
    path.write_bytes(b"not a database " * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        KnowledgeRetriever(s).fetch(2, [1000], [100])


@pytest.mark.parametrize("feast_settings", ["redis"], indirect=True)
def test_slot_reused_between_the_two_reads_is_read_again(feast_settings: Settings) -> None:
    """Categories from the item values take two Redis reads. If, between them, the slot
    read first is given to a new publication (two publications in a row), the second read
    must notice it from the pointer it re-reads and read the whole request again: the
    batch is then one snapshot (the newest), never the first read's user and items with
    the new snapshot's user x category vectors."""
    s = feast_settings
    published(s, "L7", D1)
    store = apply_repo(s)
    write_serving_online(store, "item", [1000, 1001], [_pack(100, b"a"), _pack(101, b"b")], D1)
    d3 = D2 + dt.timedelta(days=1)
    snap8 = write_snapshot(s, "L8", D2, n=24, salt="eight")
    snap9 = write_snapshot(s, "L9", d3, n=24, salt="nine")
    write_all_stats(s, D2)
    write_all_stats(s, d3)

    retriever = KnowledgeRetriever(s, category_of=_category_of)
    first_read = retriever._transaction  # the method under test's own two reads
    calls = 0

    def read_then_republish(groups: Any) -> Any:
        nonlocal calls
        calls += 1
        result = first_read(groups)
        if calls == 1:  # between the first and the second read: green, then blue again
            assert publish_knowledge(s, D2, "L8", gate=True)["slot"] == "green"
            assert publish_knowledge(s, d3, "L9", gate=True)["slot"] == "blue"
        return result

    retriever._transaction = read_then_republish  # type: ignore[method-assign]
    batch = retriever.fetch(2, [1000, 1001], serving=True)
    assert calls >= 3  # first read, second read (slot changed), the request read again
    assert (batch.lineage, batch.snapshot_ds, batch.slot) == ("L9", d3.isoformat(), "blue")
    np.testing.assert_array_equal(batch.user, snap9["user"][1][1])
    np.testing.assert_array_equal(batch.items, snap9["item"][1][[0, 1]])
    np.testing.assert_array_equal(batch.user_category, snap9["user_category"][1][[4, 5]])
    assert not np.array_equal(snap8["user"][1][1], snap9["user"][1][1])

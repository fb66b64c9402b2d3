"""Atomic blue/green publication of knowledge snapshots, on SQLite and on a real Redis.

Every test checks the invariant that matters to serving: after any sequence of
publications, crashes and rollbacks, the online store serves exactly one complete,
validated snapshot -- every key of it with its exact vector, no key of any other snapshot.
Expected values come from the vectors the test itself wrote to the lake.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal

import numpy as np
import pytest

from keep.core.config import Settings
from keep.core.errors import GateFailed, InputError, KeepError
from keep.core.feast_names import slot_view_name
from keep.core.tables import ENTITIES, KNOWLEDGE_ENTITIES, knowledge_spec
from keep.lake.knowledge import table_version
from keep.store.feast_repo import apply_repo, get_store
from keep.store.publication import live_snapshot, publish_knowledge, read_pointer, rollback
from serving.retrieval import KnowledgeRetriever
from tests.keep.store.feast_data import Snapshot, knowledge_keys, write_all_stats, write_snapshot

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)


def assert_serves(settings: Settings, snapshot: Snapshot, ds: dt.date, extra_keys: int = 0) -> None:
    """Every key of ``snapshot`` is served with its exact vector; keys beyond it are missing."""
    live = live_snapshot(settings)
    assert live is not None and live["snapshot_ds"] == ds.isoformat()
    retriever = KnowledgeRetriever(settings)
    n = len(snapshot["item"][1])
    total = n + extra_keys
    items = knowledge_keys("item", total)["item_id"]
    uc = knowledge_keys("user_category", total)
    # One request per user covers every user and every user x category key.
    for user in np.unique(uc["user_id"]):
        rows = np.flatnonzero(uc["user_id"] == user)
        batch = retriever.fetch(int(user), items[rows].tolist(), uc["category_id"][rows].tolist())
        assert batch.snapshot_ds == ds.isoformat() and batch.lineage == live["lineage"]
        known = rows < n
        np.testing.assert_array_equal(batch.items[known], snapshot["item"][1][rows[known]])
        np.testing.assert_array_equal(
            batch.user_category[known], snapshot["user_category"][1][rows[known]]
        )
        assert not batch.items_missing[known].any() and not batch.user_category_missing[known].any()
        assert batch.items_missing[~known].all() and batch.user_category_missing[~known].all()
        assert not batch.items[~known].any()
        user_row = int(user) - 1  # user keys are 1..n
        if user_row < n:
            np.testing.assert_array_equal(batch.user, snapshot["user"][1][user_row])
            assert not batch.user_missing
        else:
            assert batch.user_missing and not batch.user.any()


def test_publish_rollback_and_same_day_republication(feast_settings: Settings) -> None:
    s = feast_settings
    first = write_snapshot(s, "L1", D1, n=40)
    write_all_stats(s, D1)
    apply_repo(s)
    assert live_snapshot(s) is None

    info = publish_knowledge(s, D1, "L1", gate=True)
    assert info["slot"] == "blue" and info["rows"] == {e: 40 for e in ENTITIES}
    assert info["tables"] == ["knowledge.user", "knowledge.item", "knowledge.user_category"]
    assert info["previous"] is None
    assert_serves(s, first, D1)

    # Day 2 has fewer keys: keys only in day 1 must not be served from day 2's slot.
    second = write_snapshot(s, "L1", D2, n=30)
    info = publish_knowledge(s, D2, "L1", gate={"success": True, "ds": D2.isoformat()})
    assert info["slot"] == "green" and info["previous"]["snapshot_ds"] == D1.isoformat()
    assert_serves(s, second, D2, extra_keys=10)

    back = rollback(s)
    assert back["slot"] == "blue" and back["snapshot_ds"] == D1.isoformat()
    assert_serves(s, first, D1)

    # Same-day re-publication, twice: the second lands in a slot that holds day 2 with the
    # very same event timestamp -- Redis would skip those writes if the slot were not cleared.
    fixed = write_snapshot(s, "L1", D2, n=30, salt="fix-1")
    assert publish_knowledge(s, D2, "L1", gate=True)["slot"] == "green"
    assert_serves(s, fixed, D2, extra_keys=10)
    fixed_again = write_snapshot(s, "L1", D2, n=30, salt="fix-2")
    assert publish_knowledge(s, D2, "L1", gate=True)["slot"] == "blue"
    assert_serves(s, fixed_again, D2, extra_keys=10)
    state = read_pointer(s)
    assert {state["slots"][slot]["status"] for slot in ("blue", "green")} == {"complete"}


def _publish_and_die(settings: Settings, kill_after_rows: int) -> None:
    """Child process: publish day 2 and SIGKILL itself mid-way (a real crash: no cleanup)."""

    def on_chunk(entity: str, rows: int) -> None:
        if entity == "item" and rows >= kill_after_rows:
            os.kill(os.getpid(), signal.SIGKILL)

    publish_knowledge(settings, D2, "L1", gate=True, on_chunk=on_chunk)


@pytest.mark.slow  # the crashing publisher is a fresh Python process (~15 s to import Feast)
def test_crash_mid_publication_keeps_the_old_snapshot_live(feast_settings: Settings) -> None:
    s = feast_settings
    first = write_snapshot(s, "L1", D1, n=40)
    write_all_stats(s, D1)
    apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)
    write_snapshot(s, "L1", D2, n=40, salt="never-live")
    publish_knowledge(s, D2, "L1", gate=True)  # green: D2
    rollback(s)  # blue: D1 live, green holds a complete D2

    # A new D2 is published into green; the publisher dies after 2 of its 3 item chunks.
    second = write_snapshot(s, "L1", D2, n=40)
    # spawn, not fork: delta-rs' runtime refuses to run in a forked child.
    child = multiprocessing.get_context("spawn").Process(target=_publish_and_die, args=(s, 32))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL

    state = read_pointer(s)
    assert state["live"] == "blue" and state["slots"]["green"]["status"] == "writing"
    assert_serves(s, first, D1)
    # The interrupted slot is no longer a rollback target.
    with pytest.raises(KeepError, match="no complete snapshot"):
        rollback(s)

    info = publish_knowledge(s, D2, "L1", gate=True)
    assert info["slot"] == "green" and info["rows"]["item"] == 40
    assert_serves(s, second, D2)


def test_ungated_or_broken_snapshots_are_refused(feast_settings: Settings) -> None:
    s = feast_settings
    first = write_snapshot(s, "L1", D1, n=20)
    write_all_stats(s, D1)
    apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)
    write_snapshot(s, "L1", D2, n=20)

    with pytest.raises(GateFailed, match="has not passed the knowledge gate"):
        publish_knowledge(s, D2, "L1", gate=False)
    with pytest.raises(GateFailed, match="not for the snapshot"):
        publish_knowledge(s, D2, "L1", gate={"success": True, "ds": D1.isoformat()})
    with pytest.raises(InputError, match="no rows"):
        publish_knowledge(s, D2, "L2", gate=True)
    # A snapshot whose vectors have the wrong dimension fails before the switch.
    write_snapshot(s, "L1", D2, n=20)
    from tests.keep.store.feast_data import write_knowledge

    write_knowledge(s, "item", "L1", D2, 20, dim=s.pretrain.knowledge_dim + 1)
    with pytest.raises(InputError, match="knowledge_dim"):
        publish_knowledge(s, D2, "L1", gate=True)
    assert_serves(s, first, D1)


def test_materialize_cannot_bypass_publication(feast_settings: Settings) -> None:
    """Plain `feast materialize` refuses the slots by name and leaves them alone otherwise."""
    s = feast_settings
    first = write_snapshot(s, "L1", D1, n=20)
    write_all_stats(s, D1)
    store = apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)
    write_snapshot(s, "L1", D2, n=20, salt="ungated")  # exported, never gated

    start, end = dt.datetime(2025, 12, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="not configured to be served online"):
        store.materialize(start, end, feature_views=[slot_view_name("user", "blue")])
    store = get_store(s)
    # Every online view over the whole range (`feast materialize START END`): the counters,
    # not the slots. (materialize-incremental selects the same views.)
    store.materialize(start, end)
    assert_serves(s, first, D1)
    counters = store.get_online_features(
        features=["user_stats_fv:u_clicks_7d", "item_stats_fv:i_ctr_30d"],
        entity_rows=[{"user_id": 3, "item_id": 1002}],
    ).to_dict()
    from tests.keep.store.feast_data import write_stats

    user_stats = write_stats(s, "user", D1).to_pydict()
    item_stats = write_stats(s, "item", D1).to_pydict()
    assert counters["u_clicks_7d"] == [user_stats["clicks_7d"][2]]
    assert counters["i_ctr_30d"] == [item_stats["ctr_30d"][2]]


def test_batched_encodings_equal_feasts() -> None:
    """The SQLite fast path stores exactly Feast's bytes (entity keys and vector values)."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import FloatList, Value

    from keep.store.publication import _entity_key_blobs, _value_blobs

    rng = np.random.default_rng(3)
    users = rng.integers(-(2**62), 2**62, 50)
    cats = rng.integers(0, 10**6, 50)
    got = _entity_key_blobs("user_category", [users, cats], 3)
    for u, c, blob in zip(users, cats, got, strict=True):
        ek = EntityKey(
            join_keys=["user_id", "category_id"],
            entity_values=[Value(int64_val=int(u)), Value(int64_val=int(c))],
        )
        assert blob == serialize_entity_key(ek, entity_key_serialization_version=3)
    vectors = rng.standard_normal((5, 7)).astype(np.float32)
    vectors[0, 0] = -0.0
    blob, width = _value_blobs(vectors)
    for i, row in enumerate(vectors):
        expected = Value(float_list_val=FloatList(val=row.tolist())).SerializeToString()
        assert blob[i * width : (i + 1) * width] == expected


def test_publication_publishes_the_table_versions_the_gate_read(feast_settings: Settings) -> None:
    """A write after the gate (a re-export of the same snapshot) must not slip through: the
    gate report names the Delta versions it validated, and exactly those are published."""
    s = feast_settings
    gated = write_snapshot(s, "L1", D1, n=40)
    write_all_stats(s, D1)
    apply_repo(s)
    versions = {knowledge_spec(e).name: table_version(s, e) for e in KNOWLEDGE_ENTITIES}
    report = {"success": True, "ds": D1.isoformat(), "table_versions": versions}
    later = write_snapshot(s, "L1", D1, n=40, salt="re-exported after the gate")
    info = publish_knowledge(s, D1, "L1", gate=report)
    assert info["table_versions"] == versions
    assert_serves(s, gated, D1)
    # A bare True (no report) publishes the latest versions.
    publish_knowledge(s, D1, "L1", gate=True)
    assert_serves(s, later, D1)


def test_maintenance_empties_the_slot_of_a_lineage_nothing_uses(feast_settings: Settings) -> None:
    from keep.store.publication import Pointer, _count_sqlite_rows, clear_dead_slot

    s = feast_settings
    write_snapshot(s, "L1", D1, n=40)
    write_all_stats(s, D1)
    store = apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)
    second = write_snapshot(s, "L2", D2, n=30)
    publish_knowledge(s, D2, "L2", gate=True)  # blue: L1 (rollback target), green: L2 live

    assert clear_dead_slot(s, {"L1", "L2"}) is None  # L1 still in use: nothing cleared
    assert read_pointer(s)["slots"]["blue"]["status"] == "complete"

    cleared = clear_dead_slot(s, {"L2"})
    assert cleared == {"slot": "blue", "lineage": "L1", "snapshot_ds": D1.isoformat()}
    state = read_pointer(s)
    assert state["live"] == "green" and state["slots"]["blue"]["status"] == "empty"
    views = [store.get_feature_view(slot_view_name(e, "blue")) for e in ENTITIES]
    if s.feast.online_store == "sqlite":
        assert [_count_sqlite_rows(store, v) for v in views] == [0, 0, 0]
    else:
        client = Pointer(s, store)._redis()
        fields = {f for key in client.scan_iter() if client.type(key) == b"hash"
                  for f in client.hkeys(key)}  # fmt: skip
        assert fields and not {f"_ts:{v.name}".encode() for v in views} & fields
    with pytest.raises(KeepError, match="no complete snapshot"):
        rollback(s)
    assert_serves(s, second, D2)
    assert clear_dead_slot(s, {"L2"}) is None  # idempotent

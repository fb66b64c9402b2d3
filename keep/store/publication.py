"""Knowledge publication into Feast's online store: blue/green slots behind one pointer.

:func:`publish_knowledge` / :func:`rollback` / :func:`live_snapshot` -- atomic blue/green
publication of a validated knowledge snapshot into the online store (docs/feast.md).

Publication in one paragraph: knowledge lives online in two slots (``blue``/``green``
feature views per entity). A pointer record in the online store backend itself (one
SQLite row / one Redis key) names the live slot and describes both slots. Publishing marks
the non-live slot ``writing``, clears it, streams the snapshot from Delta into it in
chunks through the online store's ``online_write_batch``, reads a sample back, and then
switches the pointer with one atomic write. Readers follow the pointer, so they see the
old snapshot or the new one, never a mix; a crash before the switch leaves the old one live.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from keep.core.config import Settings
from keep.core.errors import GateFailed, InputError, KeepError
from keep.core.feast_names import SLOTS, slot_view_name, vector_feature
from keep.core.tables import (
    ENTITIES,
    KNOWLEDGE_ENTITIES,
    knowledge_spec,
)
from keep.lake.delta import has_commit
from keep.store.feast_repo import get_store

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pointer


class Pointer:
    """The publication record: live slot + state of both slots, one atomic value.

    It lives in the online store's own backend -- the only thing every reader of the
    features can also reach -- and is written with one atomic operation (a single-row
    UPSERT in SQLite's transaction, a single Redis SET), so a reader sees the old record
    or the new one, never a mix.
    """

    def __init__(self, settings: Settings, store: FeatureStore) -> None:
        self.kind = settings.feast.online_store
        self.project = settings.feast.project
        self.store = store
        self.sqlite_path = settings.feast.store_root / "online.db"
        self.redis_key = f"keep:publication:{self.project}"

    def _redis(self) -> Any:
        online: Any = self.store._get_provider().online_store
        return online._get_client(self.store.config.online_store)

    def _sqlite(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.sqlite_path, timeout=30)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS keep_publication (project TEXT PRIMARY KEY, state TEXT)"
        )
        return conn

    def read(self) -> dict[str, Any]:
        raw: str | bytes | None
        if self.kind == "redis":
            raw = self._redis().get(self.redis_key)
        else:
            conn = self._sqlite()
            try:
                row = conn.execute(
                    "SELECT state FROM keep_publication WHERE project = ?", (self.project,)
                ).fetchone()
            finally:
                conn.close()
            raw = row[0] if row else None
        if raw is None:
            return {"live": None, "seq": 0, "slots": {s: {"status": "empty"} for s in SLOTS}}
        return dict(json.loads(raw))

    def write(self, state: dict[str, Any]) -> dict[str, Any]:
        """Compare-and-set: write ``state`` (with ``seq`` + 1) only if the stored record still
        has ``state["seq"]``, in one transaction (SQLite ``BEGIN IMMEDIATE``; Redis
        ``WATCH``/``MULTI``). Another writer in between -- a publisher or a rollback on
        another host -- raises :class:`PublicationConflict`. Returns the state written."""
        expected = int(state.get("seq", 0))
        new = {**state, "seq": expected + 1}
        blob = json.dumps(new, sort_keys=True)
        if self.kind == "redis":
            from redis.exceptions import WatchError

            with self._redis().pipeline() as pipe:
                try:
                    pipe.watch(self.redis_key)
                    raw = pipe.get(self.redis_key)
                    self._check_seq(raw, expected)
                    pipe.multi()
                    pipe.set(self.redis_key, blob)
                    pipe.execute()
                except WatchError:
                    raise self._conflict(expected, None) from None
            return new
        conn = self._sqlite()
        conn.isolation_level = None  # explicit transaction below
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT state FROM keep_publication WHERE project = ?", (self.project,)
                ).fetchone()
                self._check_seq(row[0] if row else None, expected)
                conn.execute(
                    "INSERT INTO keep_publication (project, state) VALUES (?, ?) "
                    "ON CONFLICT(project) DO UPDATE SET state = excluded.state",
                    (self.project, blob),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
        return new

    def _check_seq(self, raw: str | bytes | None, expected: int) -> None:
        stored = dict(json.loads(raw)) if raw is not None else None
        seq = int(stored.get("seq", 0)) if stored else 0
        if seq != expected:
            raise self._conflict(expected, stored)

    def _conflict(self, expected: int, stored: dict[str, Any] | None) -> PublicationConflict:
        now = f" (now: live {stored.get('live')!r}, record {stored.get('seq')})" if stored else ""
        return PublicationConflict(
            f"the publication record of project {self.project!r} changed since it was read "
            f"(record {expected}){now}: another publisher or rollback on another host got "
            "there first; nothing of this one went live -- check `keep` on that host, then "
            "publish again if still needed"
        )


class PublicationConflict(KeepError):
    """Another publisher (or a rollback) changed the publication record first."""


def read_pointer(settings: Settings, store: FeatureStore | None = None) -> dict[str, Any]:
    """The whole publication record (live slot, both slots' lineage/snapshot/status)."""
    return Pointer(settings, store or get_store(settings)).read()


def live_snapshot(settings: Settings, store: FeatureStore | None = None) -> dict[str, Any] | None:
    """What is live online: slot, lineage, snapshot_ds, rows, published_at; None if nothing."""
    return live_from_state(read_pointer(settings, store))


def other_slot(live: str | None) -> str:
    """The slot that is not ``live`` (the first one while nothing is live)."""
    return SLOTS[1] if live == SLOTS[0] else SLOTS[0]


def live_from_state(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The live snapshot described by a pointer record (None before the first publication)."""
    live = state.get("live")
    if live is None:
        return None
    return {"slot": live, **state["slots"][live]}


# --------------------------------------------------------------------------- publication


def _require_gate(gate: object, ds: dt.date, lineage: str) -> None:
    """Accept True, or a report whose ``success`` is true (and whose ds, if any, is ``ds``)."""
    if isinstance(gate, bool):
        passed, report_ds = gate, None
    elif isinstance(gate, Mapping):
        passed, report_ds = bool(gate.get("success")), gate.get("ds")
    elif hasattr(gate, "success"):
        passed, report_ds = bool(gate.success), getattr(gate, "ds", None)
    else:
        raise TypeError(f"gate must be a bool or a gate report, not {type(gate).__name__}")
    if not passed:
        raise GateFailed(
            f"knowledge snapshot {lineage}/{ds} has not passed the knowledge gate; it cannot "
            "be published. Fix the export and re-run the gate (live knowledge is unchanged)."
        )
    if report_ds is not None and str(report_ds) != ds.isoformat():
        raise GateFailed(
            f"the gate report given is for {report_ds}, not for the snapshot {ds}: pass the "
            "report of this snapshot's gate"
        )


def gated_versions(gate: object) -> dict[str, int]:
    """The Delta version of each knowledge table the gate read (its report's
    ``table_versions``); empty for a bare ``True`` (then the latest versions are read)."""
    found = gate.get("table_versions") if isinstance(gate, Mapping) else None
    if found is None and not isinstance(gate, (bool, Mapping)):
        found = getattr(gate, "table_versions", None)
    return {str(k): int(v) for k, v in (found or {}).items()}


def _snapshot_dataset(
    settings: Settings, entity: str, ds: dt.date, lineage: str, version: int | None
) -> Any:
    from deltalake import DeltaTable

    spec = knowledge_spec(entity)
    path = settings.lake.root / spec.layer / spec.table
    if not has_commit(path):
        raise InputError(f"{spec.name} does not exist at {path}: run the knowledge export first")
    table = DeltaTable(str(path), version=version)
    return table.to_pyarrow_dataset(
        file_pruning_predicate=[
            ("knowledge_lineage", "=", lineage),
            ("snapshot_ds", "=", ds.isoformat()),
        ]
    )


def _snapshot_rows(dataset: Any) -> int:
    return int(dataset.count_rows())


@dataclass
class _Chunk:
    """One chunk of a snapshot, decoded from Arrow."""

    vectors: np.ndarray  # rows x dim float32
    key_columns: list[np.ndarray]  # one int64 array per join key (ENTITIES order)
    key_tuples: list[tuple[int, ...]]
    stamps: list[dt.datetime]  # event time per row (tz-aware UTC)


def _decode_chunk(batch: pa.RecordBatch, entity: str, dim: int, what: str) -> _Chunk:
    n = batch.num_rows
    vectors_col = batch.column("vector")
    lengths = np.asarray(vectors_col.value_lengths().to_numpy(zero_copy_only=False))
    if n and (lengths.min() != dim or lengths.max() != dim):
        bad = int(np.flatnonzero(lengths != dim)[0])
        raise InputError(
            f"{what}: a vector has {int(lengths[bad])} floats, settings.pretrain.knowledge_dim is "
            f"{dim}; re-export the snapshot (live knowledge is unchanged)"
        )
    flat = vectors_col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    key_columns = [
        np.asarray(batch.column(k).to_numpy(zero_copy_only=False), np.int64)
        for k in ENTITIES[entity]
    ]
    ts_col = batch.column("event_timestamp")
    distinct = ts_col.unique()
    # The usual case: a snapshot has one event time (one datetime object for all rows).
    stamps = [distinct[0].as_py()] * n if len(distinct) == 1 else ts_col.to_pylist()
    return _Chunk(
        vectors=flat.reshape(n, dim),
        key_columns=key_columns,
        key_tuples=list(zip(*(c.tolist() for c in key_columns), strict=True)),
        stamps=stamps,
    )


def _chunk_to_protos(chunk: _Chunk, entity: str, feature: str) -> list[Any]:
    """(EntityKeyProto, {feature: ValueProto}, event_ts, None) per row: Feast's write input."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    blob, width = _value_blobs(chunk.vectors)
    parse = ValueProto.FromString
    join_keys = list(ENTITIES[entity])
    data = []
    for i, key in enumerate(chunk.key_tuples):
        ek = EntityKeyProto(
            join_keys=join_keys, entity_values=[ValueProto(int64_val=v) for v in key]
        )
        data.append(
            (ek, {feature: parse(blob[i * width : (i + 1) * width])}, chunk.stamps[i], None)
        )
    return data


def _value_blobs(vectors: np.ndarray) -> tuple[bytes, int]:
    """Serialized ``Value(float_list_val=...)`` of every row, back to back, and their width.

    A Value holding a packed float list of fixed length serializes as a constant prefix
    followed by the floats' little-endian bytes, so all rows are built with numpy.
    """
    from feast.protos.feast.types.Value_pb2 import FloatList
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    n, dim = vectors.shape
    probe = ValueProto(float_list_val=FloatList(val=[1.0] * dim)).SerializeToString()
    prefix = probe[: len(probe) - 4 * dim]
    if probe[len(prefix) :] != np.ones(dim, "<f4").tobytes():
        raise KeepError("unexpected protobuf encoding of a float list (Feast/protobuf changed?)")
    width = len(prefix) + 4 * dim
    packed = np.empty((n, width), np.uint8)
    packed[:, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    packed[:, len(prefix) :] = vectors.astype("<f4", copy=False).view(np.uint8).reshape(n, 4 * dim)
    return packed.tobytes(), width


def _entity_key_blobs(entity: str, key_columns: list[np.ndarray], version: int) -> list[bytes]:
    """Feast's ``serialize_entity_key`` of int64 keys, for a whole chunk at once.

    For int64 join keys the serialization (v3) is a header that depends only on the join
    key names, then per key (sorted by name) type, length 8 and the little-endian value.
    The first row is checked against Feast's own function.
    """
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto
    from feast.value_type import ValueType

    names = list(ENTITIES[entity])
    n = len(key_columns[0])
    probe = serialize_entity_key(
        EntityKeyProto(join_keys=names, entity_values=[ValueProto(int64_val=0) for _ in names]),
        entity_key_serialization_version=version,
    )
    header = probe[: len(probe) - 16 * len(names)]
    fields: list[tuple[str, str]] = [("header", f"V{len(header)}")] if header else []
    order = sorted(range(len(names)), key=lambda i: names[i])
    for j in range(len(names)):
        fields += [(f"type{j}", "<u4"), (f"len{j}", "<u4"), (f"value{j}", "<i8")]
    rows = np.zeros(n, np.dtype(fields))
    if header:
        rows["header"] = np.void(header)
    for j, i in enumerate(order):
        rows[f"type{j}"] = ValueType.INT64.value
        rows[f"len{j}"] = 8
        rows[f"value{j}"] = key_columns[i]
    blob, width = rows.tobytes(), rows.dtype.itemsize
    out = [blob[k * width : (k + 1) * width] for k in range(n)]
    if n:
        first = EntityKeyProto(
            join_keys=names, entity_values=[ValueProto(int64_val=int(c[0])) for c in key_columns]
        )
        if out[0] != serialize_entity_key(first, entity_key_serialization_version=version):
            raise KeepError("entity key encoding differs from Feast's (Feast changed?)")
    return out


def _sqlite_fast_path(store: FeatureStore) -> bool:
    """Direct batched SQLite writes apply when the table has Feast's plain layout."""
    cfg = store.config.online_store
    return (
        cfg.type == "sqlite"
        and not getattr(cfg, "vector_enabled", False)
        and not getattr(cfg, "enable_openai_compatible_store", False)
        and not store.config.registry.enable_online_feature_view_versioning
    )


def _sqlite_entity_index(store: FeatureStore, view: FeatureView, *, present: bool) -> None:
    """Drop or (re)create Feast's ``<table>_ek`` index of a slot table."""
    from feast.infra.online_stores.helpers import compute_table_id

    online: Any = store._get_provider().online_store
    conn = online._get_conn(store.config)
    table = compute_table_id(store.config.project, view)
    with conn:
        if present:
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{table}_ek" ON "{table}" (entity_key)')
        else:
            conn.execute(f'DROP INDEX IF EXISTS "{table}_ek"')


def _sqlite_write_chunk(
    store: FeatureStore,
    view: FeatureView,
    feature: str,
    keys: list[bytes],
    values: bytes,
    width: int,
    stamps: list[dt.datetime],
) -> None:
    """One chunk into a slot table in ONE transaction (``executemany``).

    Rows are exactly what Feast's SqliteOnlineStore.online_write_batch stores (same
    columns, entity key and value encodings, naive-UTC event time through Feast's own
    sqlite adapter); Feast's version runs a Python loop with one ``execute`` per row.
    """
    from feast.infra.online_stores.helpers import compute_table_id
    from feast.utils import to_naive_utc

    online: Any = store._get_provider().online_store
    conn = online._get_conn(store.config)
    table = compute_table_id(store.config.project, view)
    upsert = (
        f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
        "VALUES (?, ?, ?, NULL, ?, NULL) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
        "value = excluded.value, value_text = excluded.value_text, "
        "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
    )
    naive = {id(t): to_naive_utc(t) for t in set(stamps)} if len(set(stamps)) < 16 else None
    # Insert in primary-key order: the B-tree then grows at its right edge instead of
    # splitting pages all over (about twice as fast as the lake's order).
    order = sorted(range(len(keys)), key=keys.__getitem__)
    rows = (
        (
            keys[i],
            feature,
            values[i * width : (i + 1) * width],
            naive[id(stamps[i])] if naive is not None else to_naive_utc(stamps[i]),
        )
        for i in order
    )
    with conn:
        conn.executemany(upsert, rows)


def _clear_slot_view(store: FeatureStore, view: FeatureView) -> None:
    """Delete every row of ``view`` from the online store (both backends)."""
    online: Any = store._get_provider().online_store
    # Slot views are online=False (see feature_repo/features.py), so `feast apply` may not
    # have created their online tables: create them (idempotent; a no-op for Redis).
    online.update(
        config=store.config,
        tables_to_delete=[],
        tables_to_keep=[view],
        entities_to_delete=[],
        entities_to_keep=[],
        partial=True,
    )
    kind = store.config.online_store.type
    if kind == "redis":
        online.delete_table(store.config, view)
        return
    from feast.infra.online_stores.helpers import compute_table_id

    conn = online._get_conn(store.config)
    table = compute_table_id(store.config.project, view)
    with conn:
        conn.execute(f'DELETE FROM "{table}"')


def _count_sqlite_rows(store: FeatureStore, view: FeatureView) -> int:
    from feast.infra.online_stores.helpers import compute_table_id

    online: Any = store._get_provider().online_store
    conn = online._get_conn(store.config)
    table = compute_table_id(store.config.project, view)
    return int(conn.execute(f'SELECT COUNT(DISTINCT entity_key) FROM "{table}"').fetchone()[0])


def _check_read_back(
    store: FeatureStore,
    view: FeatureView,
    entity: str,
    written: list[tuple[tuple[int, ...], np.ndarray]],
) -> None:
    """Read a sample of written keys back from the slot and compare them exactly."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    keys = list(ENTITIES[entity])
    feature = vector_feature(entity)
    protos = [
        EntityKeyProto(join_keys=keys, entity_values=[ValueProto(int64_val=v) for v in key])
        for key, _ in written
    ]
    result = store._get_provider().online_read(store.config, view, protos, [feature])
    for (key, expected), (_, values) in zip(written, result, strict=True):
        got = None if not values else values.get(feature)
        if got is None or not np.array_equal(
            np.asarray(got.float_list_val.val, np.float32), expected
        ):
            raise KeepError(
                f"read-back check failed for {view.name} key {key}: the online store does not "
                "hold what was written; the slot stays non-live, re-run the publication"
            )


@contextlib.contextmanager
def _publication_lock(settings: Settings) -> Iterator[None]:
    """One publisher at a time per store root (a second one fails fast with a clear error)."""
    settings.feast.store_root.mkdir(parents=True, exist_ok=True)
    with open(settings.feast.store_root / "publish.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise KeepError(
                "another publication or rollback is running on this store; wait for it to end"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _keep_pinned_readable(
    settings: Settings, state: Mapping[str, Any], target: str, lineage: str
) -> None:
    """Refuse to overwrite the last online snapshot of a lineage a live downstream model is
    pinned to (a model never scores with knowledge of another lineage).

    After a new lineage is published, the previous lineage's snapshot stays in the other
    slot; the scoring service keeps reading it until a model trained on the new lineage is
    registered. Publishing again before that would overwrite it.
    """
    from keep.store.model_registry import pinned_lineages

    held = state["slots"].get(target, {})
    old = held.get("lineage")
    if held.get("status") != "complete" or old is None or old == lineage:
        return
    others = [
        s
        for s in SLOTS
        if s != target
        and state["slots"].get(s, {}).get("status") == "complete"
        and state["slots"][s].get("lineage") == old
    ]
    pinned = sorted(sub for sub, pin in pinned_lineages(settings).items() if pin == old)
    if pinned and not others:
        raise GateFailed(
            f"slot '{target}' holds the last online snapshot of lineage {old} "
            f"({held.get('snapshot_ds')}), which the live model of {', '.join(pinned)} is "
            f"pinned to: register a model trained on {lineage} first (the downstream DAG "
            "does after each publication), then publish again (live knowledge is unchanged)"
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _after(seconds: int) -> str:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return later.isoformat(timespec="microseconds")


def _refuse_running_publication(settings: Settings, state: Mapping[str, Any], target: str) -> None:
    """Refuse a slot that another publisher is writing: one on another host (or another
    store root) whose lease has not run out. On this store root the publication lock is
    ours, so a ``writing`` record of it is a crashed publication: taken over at once."""
    held = state["slots"].get(target, {})
    if held.get("status") != "writing" or "lease_until" not in held:
        return
    same_root = held.get("host") == socket.gethostname() and held.get("store_root") == str(
        settings.feast.store_root
    )
    if same_root or dt.datetime.fromisoformat(held["lease_until"]) <= dt.datetime.now(dt.UTC):
        return
    raise PublicationConflict(
        f"slot '{target}' is being written by another publication ({held.get('lineage')}/"
        f"{held.get('snapshot_ds')}, host {held.get('host')}, started {held.get('started_at')}, "
        f"lease until {held['lease_until']}): wait for it to finish; if that publisher died, "
        "its claim expires at the lease's end (feast.publish_lease_s)"
    )


def publish_knowledge(
    settings: Settings,
    ds: dt.date,
    lineage: str,
    *,
    gate: object,
    store: FeatureStore | None = None,
    on_chunk: Callable[[str, int], None] | None = None,
    sample_per_chunk: int = 4,
) -> dict[str, Any]:
    """Publish knowledge snapshot ``lineage``/``ds`` (all three entities) and make it live.

    ``gate`` is the knowledge gate's report (anything with a true ``success``; a bool is
    accepted): an ungated or failed snapshot is refused with :class:`GateFailed`. Rows are
    streamed from the Delta partitions in chunks of ``settings.feast.publish_chunk_rows``,
    each chunk written in one online-store batch (memory is flat in the row count). The
    snapshot goes to the non-live slot, which is cleared first; after a read-back check the
    pointer is switched in one atomic write. ``on_chunk(entity, rows)`` is called after each
    chunk (progress; also how the crash test kills a publication mid-way).

    Returns what the pipeline's Airflow Asset event carries: lineage, snapshot, slot,
    tables and row counts, the previous live snapshot.
    """
    _require_gate(gate, ds, lineage)
    store = store or get_store(settings)
    dim = settings.pretrain.knowledge_dim
    chunk = settings.feast.publish_chunk_rows
    # Exactly the table versions the gate validated: a write after the gate (a re-export)
    # does not slip into the online store unchecked.
    versions = gated_versions(gate)
    datasets = {
        e: _snapshot_dataset(settings, e, ds, lineage, versions.get(knowledge_spec(e).name))
        for e in KNOWLEDGE_ENTITIES
    }
    expected_rows = {e: _snapshot_rows(d) for e, d in datasets.items()}
    empty = [e for e, n in expected_rows.items() if n == 0]
    if empty:
        names = ", ".join(knowledge_spec(e).name for e in empty)
        raise InputError(
            f"snapshot {lineage}/{ds} has no rows in {names}: export the knowledge of {ds} "
            "first (nothing was published)"
        )
    # Writes go to a cleared slot, so Redis' "skip unless newer" check has nothing to
    # protect: skip_dedup writes each chunk in one pipeline instead of two.
    write_store = (
        get_store(settings, skip_dedup=True) if settings.feast.online_store == "redis" else store
    )
    fast_sqlite = _sqlite_fast_path(store)
    key_version = store.config.entity_key_serialization_version
    pointer = Pointer(settings, store)
    with _publication_lock(settings):
        state = pointer.read()
        previous = live_from_state(state)
        target = other_slot(state["live"])
        _refuse_running_publication(settings, state, target)
        _keep_pinned_readable(settings, state, target, lineage)
        claim = {
            "status": "writing",
            "lineage": lineage,
            "snapshot_ds": ds.isoformat(),
            "started_at": _now(),
            "host": socket.gethostname(),
            "store_root": str(settings.feast.store_root),
        }
        lease = settings.feast.publish_lease_s

        def hold() -> None:
            """Claim the slot, or renew the claim: one compare-and-set of the record."""
            nonlocal state
            state["slots"][target] = {**claim, "lease_until": _after(lease)}
            state = pointer.write(state)

        hold()  # the slot is no longer a rollback target from here on
        rng = np.random.default_rng(0)
        written_rows: dict[str, int] = {}
        for entity in KNOWLEDGE_ENTITIES:
            view = store.get_feature_view(slot_view_name(entity, target))
            _clear_slot_view(store, view)
            if fast_sqlite:
                # Feast's secondary index on entity_key duplicates the primary key's prefix;
                # building it once after the load is far cheaper than maintaining it per row.
                _sqlite_entity_index(store, view, present=False)
            feature = vector_feature(entity)
            provider = write_store._get_provider()
            columns = [*ENTITIES[entity], "vector", "event_timestamp"]
            n_written = 0
            sample: list[tuple[tuple[int, ...], np.ndarray]] = []
            what = f"{knowledge_spec(entity).name} {lineage}/{ds}"
            # Read ahead one batch only: memory stays at a few chunks whatever the table size.
            batches = datasets[entity].to_batches(
                columns=columns, batch_size=chunk, batch_readahead=1, fragment_readahead=1
            )
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                rows = _decode_chunk(batch, entity, dim, what)
                if fast_sqlite:
                    blob, width = _value_blobs(rows.vectors)
                    ek_blobs = _entity_key_blobs(entity, rows.key_columns, key_version)
                    _sqlite_write_chunk(store, view, feature, ek_blobs, blob, width, rows.stamps)
                else:
                    data = _chunk_to_protos(rows, entity, feature)
                    provider.online_write_batch(write_store.config, view, data, None)
                n_written += batch.num_rows
                hold()  # renew the lease; a claim taken over stops here
                picks = rng.choice(
                    batch.num_rows, size=min(sample_per_chunk, batch.num_rows), replace=False
                )
                sample += [(rows.key_tuples[i], rows.vectors[i].copy()) for i in picks]
                if on_chunk is not None:
                    on_chunk(entity, n_written)
            if fast_sqlite:
                _sqlite_entity_index(store, view, present=True)
            if n_written != expected_rows[entity]:
                raise KeepError(
                    f"{what}: wrote {n_written} rows, the Delta log says {expected_rows[entity]}; "
                    "the table changed during publication -- re-run it (live knowledge unchanged)"
                )
            if settings.feast.online_store == "sqlite":
                stored = _count_sqlite_rows(store, view)
                if stored != n_written:
                    raise KeepError(
                        f"{what}: {n_written} rows written but {stored} distinct keys stored "
                        "(duplicate keys in the snapshot?); the slot stays non-live"
                    )
            _check_read_back(store, view, entity, sample)
            written_rows[entity] = n_written
        published_at = _now()
        state["slots"][target] = {
            "status": "complete",
            "lineage": lineage,
            "snapshot_ds": ds.isoformat(),
            "rows": written_rows,
            "published_at": published_at,
        }
        state["live"] = target
        # How often the live slot changed (publications and rollbacks); ``seq`` counts
        # every write of the record (claims and lease renewals too).
        state["switches"] = int(state.get("switches", 0)) + 1
        state = pointer.write(state)  # THE switch: one atomic compare-and-set
    return {
        "lineage": lineage,
        "snapshot_ds": ds.isoformat(),
        "slot": target,
        "online_store": settings.feast.online_store,
        "project": settings.feast.project,
        "tables": [knowledge_spec(e).name for e in KNOWLEDGE_ENTITIES],
        "views": [slot_view_name(e, target) for e in KNOWLEDGE_ENTITIES],
        "rows": written_rows,
        "table_versions": {
            knowledge_spec(e).name: versions.get(knowledge_spec(e).name) for e in KNOWLEDGE_ENTITIES
        },
        "published_at": published_at,
        "previous": previous,
    }


def rollback(settings: Settings, store: FeatureStore | None = None) -> dict[str, Any]:
    """Make the previous snapshot (the other slot) live again; returns the new live snapshot.

    Refused if the other slot does not hold a complete snapshot (never published, or a
    publication into it was interrupted): then there is nothing valid to roll back to.
    """
    store = store or get_store(settings)
    pointer = Pointer(settings, store)
    with _publication_lock(settings):
        state = pointer.read()
        live = state.get("live")
        if live is None:
            raise KeepError("nothing has been published to this online store: no rollback")
        other = other_slot(live)
        if state["slots"][other].get("status") != "complete":
            raise KeepError(
                f"the previous slot '{other}' holds no complete snapshot "
                f"(status {state['slots'][other].get('status')!r}): nothing to roll back to; "
                "publish a validated snapshot instead"
            )
        state["live"] = other
        state["switches"] = int(state.get("switches", 0)) + 1
        state["slots"][other]["rolled_back_at"] = _now()
        state = pointer.write(state)
    live_now = live_from_state(state)
    assert live_now is not None
    return live_now


def clear_dead_slot(
    settings: Settings, in_use: set[str], store: FeatureStore | None = None
) -> dict[str, Any] | None:
    """Empty the non-live slot when it holds a snapshot of a lineage nothing uses any more
    (``in_use``: the live lineage, the lineages the live downstream models and those they
    can be rolled back to were trained on, the pre-training lineage). Such a snapshot can
    never be rolled back to usefully, and it holds a whole snapshot of online memory.
    Returns what was cleared (None: nothing). A slot being written is left alone."""
    store = store or get_store(settings)
    pointer = Pointer(settings, store)
    with _publication_lock(settings):
        state = pointer.read()
        live = state.get("live")
        if live is None:
            return None
        other = other_slot(live)
        held = dict(state["slots"].get(other, {}))
        if held.get("status") != "complete" or held.get("lineage") in in_use:
            return None
        # Mark it empty first: from here it is no rollback target, then free its rows.
        state["slots"][other] = {
            "status": "empty",
            "cleared_at": _now(),
            "cleared": {"lineage": held.get("lineage"), "snapshot_ds": held.get("snapshot_ds")},
        }
        pointer.write(state)
        for entity in KNOWLEDGE_ENTITIES:
            _clear_slot_view(store, store.get_feature_view(slot_view_name(entity, other)))
    return {"slot": other, "lineage": held.get("lineage"), "snapshot_ds": held.get("snapshot_ds")}

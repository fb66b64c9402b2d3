"""Online knowledge retrieval for a scorer: one user and its candidate items in one read.

A request is one user, N candidate items and, when the caller knows them, the N categories
of those items (the user x category keys are ``(user, category_i)``). The retriever follows
the publication pointer (keep.store.publication) to a slot and returns numpy arrays ready
for a model (``KnowledgeBatch.as_torch()`` for tensors):

    retriever = KnowledgeRetriever(settings)
    batch = retriever.fetch(user_id=7, item_ids=[11, 12], category_ids=[3, 3])
    batch.user            # (D,)     float32
    batch.items           # (N, D)   float32
    batch.user_category   # (N, D)   float32
    batch.items_missing   # (N,)     bool: key not in the snapshot -> zero vector
    batch.lineage, batch.snapshot_ds, batch.slot   # what was served
    batch.category_ids    # the categories used for the user x category keys

Which snapshot. ``lineage=None`` reads the live slot. ``lineage="L"`` pins a lineage (a
model trained on L's vectors must keep reading L's vectors, also after a new lineage went
live): the live slot if it holds L, else the other slot if it holds a complete snapshot of
L. When no slot holds L every vector is missing, ``lineage`` is None and
``pinned_unavailable`` is True. Before any publication everything is missing and
``lineage`` is None.

The downstream model's own features. ``serving=True`` also reads the packed values of
``downstream_user_fv`` for the user and ``downstream_item_fv`` for every candidate
(``user_features``, ``item_features``; None where a key has no value), in the same read.
Without ``category_ids``, the categories come from those item values through the
``category_of`` decoder given to the retriever (reading them implies ``serving=True``);
a second read then fetches the user x category keys, and a candidate whose category is
unknown gets a missing user x category vector.

Unknown keys never raise: they get a zero vector and a ``missing`` flag (the plug-in
network was trained with zero knowledge for cold keys). A store that cannot be reached or
read raises :class:`~keep.core.errors.StoreUnavailable`; a failure is never served as zeros.

Reads. Redis: one atomic read -- a read-only Lua script (or, where the server refuses
scripts, a MULTI/EXEC transaction) holding the pointer ``GET`` and, per key, one ``HMGET``
of both slots' fields (both slots of an entity, and its serving view, share Feast's hash
per key). The slot is chosen after the reply; the read is atomic, so a pointer switch
cannot fall between the pointer and the vectors. When the categories come from the item
values, the second read re-reads the pointer, and the whole request is read again in the
rare case that the slot read first has meanwhile been given to a new publication.
SQLite: one read transaction (a consistent snapshot of the file) on a per-thread
read-only connection, holding the pointer ``SELECT`` and one
``SELECT ... WHERE entity_key IN (...)`` per view; only bound parameters carry request
values. Entity keys are encoded and vectors decoded with numpy in Feast's own formats,
checked against Feast's encoders when the retriever is built. Results equal
``FeatureStore.get_online_features`` on the slot views (tests/serving/test_retrieval.py);
bench/online_fetch.py compares the latencies of both (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keep.core.config import Settings
from keep.core.errors import InputError, KeepError, StoreUnavailable
from keep.core.feast_names import (
    SLOTS,
    serving_feature,
    serving_view_name,
    slot_view_name,
    vector_feature,
)
from keep.core.tables import ENTITIES
from keep.store.feast_repo import get_store
from keep.store.publication import Pointer, live_from_state

if TYPE_CHECKING:
    import torch
    from feast import FeatureStore

log = logging.getLogger(__name__)

KNOWLEDGE_ENTITIES = ("user", "item", "user_category")
# SQLite allows 32,766 bound parameters per statement; longer key lists are split.
_SQLITE_KEYS_PER_QUERY = 10_000
# Redis with categories from the item values: full reads started again at most this often.
_REDIS_ATTEMPTS = 5

# One atomic Redis read of a request: the publication pointer (KEYS[1]), then HMGET of the
# group's fields for every hash key of every group. ARGV: the number of groups, then per
# group its number of keys, its number of fields and the fields. Reads only.
_READ_SCRIPT = """
local out = {redis.call('GET', KEYS[1])}
local k, a = 2, 2
for _ = 1, tonumber(ARGV[1]) do
  local n_keys, n_fields = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local fields = {}
  for f = 1, n_fields do fields[f] = ARGV[a + 1 + f] end
  a = a + 2 + n_fields
  for _ = 1, n_keys do
    out[#out + 1] = redis.call('HMGET', KEYS[k], unpack(fields))
    k = k + 1
  end
end
return out
"""


@dataclass
class KnowledgeBatch:
    """Knowledge of one request (shapes in the field comments; D = knowledge_dim)."""

    user: np.ndarray  # (D,)
    user_missing: bool
    items: np.ndarray  # (N, D)
    items_missing: np.ndarray  # (N,) bool
    user_category: np.ndarray  # (N, D)
    user_category_missing: np.ndarray  # (N,) bool
    lineage: str | None
    snapshot_ds: str | None
    slot: str | None
    # The category of each candidate used for the user x category keys (None: unknown).
    category_ids: list[int | None] = field(default_factory=list)
    # A lineage was asked for and no slot holds a complete snapshot of it.
    pinned_unavailable: bool = False
    # Packed downstream features (serving=True, or categories read from the items; else
    # None and []): None where the key has no value.
    user_features: bytes | None = None
    item_features: list[bytes | None] = field(default_factory=list)  # (N,)

    def as_torch(self) -> dict[str, torch.Tensor]:
        """Tensors for the downstream model: user 1 x D, items / user_category N x D, masks."""
        import torch

        return {
            "user": torch.from_numpy(self.user).unsqueeze(0),
            "user_missing": torch.tensor([self.user_missing]),
            "items": torch.from_numpy(self.items),
            "items_missing": torch.from_numpy(self.items_missing),
            "user_category": torch.from_numpy(self.user_category),
            "user_category_missing": torch.from_numpy(self.user_category_missing),
        }


# --------------------------------------------------------------------------- encodings


def _entity_key_proto(names: Sequence[str], values: Sequence[int]) -> Any:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    return EntityKeyProto(
        join_keys=list(names), entity_values=[ValueProto(int64_val=int(v)) for v in values]
    )


class _KeyEncoder:
    """Feast's serialized entity key of int64 join keys, for many keys at once.

    The serialization (version 3) is a header that depends only on the join key names, then
    per key, in name order, the value type, the length 8 and the little-endian value; a
    Redis key appends the project name. Keys are built as one numpy structured array (the
    layout of keep.store.publication's writer) and checked against Feast's own function.
    """

    def __init__(self, entity: str, version: int, suffix: bytes = b"") -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.value_type import ValueType

        names = ENTITIES[entity]
        probe = serialize_entity_key(
            _entity_key_proto(names, [0] * len(names)), entity_key_serialization_version=version
        )
        header = probe[: len(probe) - 16 * len(names)]
        fields: list[tuple[str, str]] = [("header", f"V{len(header)}")] if header else []
        # Column j of the key holds join key order[j] (Feast sorts the join keys by name).
        self.order = sorted(range(len(names)), key=lambda i: names[i])
        for j in range(len(names)):
            fields += [(f"type{j}", "<u4"), (f"len{j}", "<u4"), (f"value{j}", "<i8")]
        if suffix:
            fields.append(("suffix", f"V{len(suffix)}"))
        self.template = np.zeros(1, np.dtype(fields))
        if header:
            self.template["header"] = np.void(header)
        for j in range(len(names)):
            self.template[f"type{j}"] = ValueType.INT64.value
            self.template[f"len{j}"] = 8
        if suffix:
            self.template["suffix"] = np.void(suffix)
        self.width = self.template.dtype.itemsize
        for values in ([0] * len(names), [2**62 + 5, -3][: len(names)], [-1, 7][: len(names)]):
            expected = (
                serialize_entity_key(
                    _entity_key_proto(names, values), entity_key_serialization_version=version
                )
                + suffix
            )
            got = self.encode([np.array([v], np.int64) for v in values])[0]
            if got != expected:
                raise KeepError(
                    f"{entity} entity key encoding differs from Feast's (Feast changed?): "
                    f"{got!r} != {expected!r}"
                )

    def encode(self, columns: Sequence[np.ndarray]) -> list[bytes]:
        """One key per row; ``columns`` are the join keys' int64 values in ENTITIES order."""
        n = len(columns[0])
        rows = np.repeat(self.template, n)
        for j, i in enumerate(self.order):
            rows[f"value{j}"] = columns[i]
        blob, width = rows.tobytes(), self.width
        return [blob[k * width : (k + 1) * width] for k in range(n)]


class _VectorDecoder:
    """Serialized ``Value(float_list_val=...)`` of D floats -> float32 rows.

    Such a Value is a constant prefix followed by the floats' little-endian bytes, so every
    value of the expected length and prefix is decoded in one numpy operation; any other
    value is parsed as a protobuf (and is missing unless it holds exactly D floats, as in
    Feast's own reads).
    """

    def __init__(self, dim: int) -> None:
        from feast.protos.feast.types.Value_pb2 import FloatList
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto

        probe = ValueProto(float_list_val=FloatList(val=[1.0] * dim)).SerializeToString()
        prefix = probe[: len(probe) - 4 * dim]
        if probe[len(prefix) :] != np.ones(dim, "<f4").tobytes():
            raise KeepError(
                "unexpected protobuf encoding of a float list (Feast/protobuf changed?)"
            )
        self.dim = dim
        self.width = len(probe)
        self.skip = len(prefix)
        self.prefix = np.frombuffer(prefix, np.uint8)

    def __call__(self, values: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
        """(N x D vectors, N missing flags); None or an unusable value is a zero vector."""
        n = len(values)
        out = np.zeros((n, self.dim), np.float32)
        missing = np.ones(n, bool)
        rows: list[int] = []
        blobs: list[bytes] = []
        for i, v in enumerate(values):
            if v is not None and len(v) == self.width:
                rows.append(i)
                blobs.append(v)
        if rows:
            raw = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(rows), self.width)
            ok = (raw[:, : self.skip] == self.prefix).all(axis=1)
            at = np.asarray(rows)[ok]
            out[at] = raw[ok, self.skip :].view("<f4")
            missing[at] = False
        for i, v in enumerate(values):
            if v is not None and missing[i]:
                vec = np.asarray(_parse_value(v).float_list_val.val, np.float32)
                if vec.shape == (self.dim,):
                    out[i] = vec
                    missing[i] = False
        return out, missing


def _parse_value(raw: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    return ValueProto.FromString(raw)


def _bytes_values(values: Sequence[bytes | None]) -> list[bytes | None]:
    """Serialized ``Value(bytes_val=...)`` -> the bytes (None for no value or a null)."""
    out: list[bytes | None] = []
    for raw in values:
        if raw is None:
            out.append(None)
            continue
        value = _parse_value(raw)
        out.append(value.bytes_val if value.WhichOneof("val") == "bytes_val" else None)
    return out


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# --------------------------------------------------------------------------- slot choice


def choose_slot(state: dict[str, Any] | None, lineage: str | None) -> dict[str, Any] | None:
    """The slot a request reads (``{"slot": ..., **its record}``), or None.

    ``lineage`` None: the live slot. Otherwise the live slot if it holds ``lineage``, else
    the other slot if it holds a complete snapshot of ``lineage``.
    """
    if state is None:
        return None
    live = live_from_state(state)
    if lineage is None or (live is not None and live.get("lineage") == lineage):
        return live
    for slot in SLOTS:
        record = state.get("slots", {}).get(slot) or {}
        if (
            slot != state.get("live")
            and record.get("status") == "complete"
            and record.get("lineage") == lineage
        ):
            return {"slot": slot, **record}
    return None


@dataclass
class _Request:
    user: int
    items: np.ndarray  # (N,) int64
    categories: list[int | None] | None  # None: read from the item values
    lineage: str | None
    serving: bool


@dataclass
class _Read:
    """Raw values of one request, aligned with the request's keys."""

    chosen: dict[str, Any] | None
    user: list[bytes | None]
    items: list[bytes | None]
    user_category: list[bytes | None]
    categories: list[int | None]
    user_features: bytes | None = None
    item_features: list[bytes | None] = field(default_factory=list)


# --------------------------------------------------------------------------- retriever


class KnowledgeRetriever:
    """Reads published knowledge for scoring requests; holds one store and its connections.

    ``category_of`` decodes one packed item value (``downstream_item_fv``) to its category
    id, for requests that give no categories. ``timeout_s`` bounds waiting for the store:
    SQLite's lock wait and Redis' connect and socket timeouts (unless the connection string
    sets its own), after which :class:`~keep.core.errors.StoreUnavailable` is raised.
    Thread-safe: each thread reads SQLite through its own connection.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None = None,
        *,
        category_of: Callable[[bytes], int | None] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.store = store or get_store(settings)
        self.dim = settings.pretrain.knowledge_dim
        self.kind = settings.feast.online_store
        self.category_of = category_of
        self.timeout_s = timeout_s
        self._pointer = Pointer(settings, self.store)
        config = self.store.config
        self._project: str = config.project
        self._versioning = bool(
            getattr(config.registry, "enable_online_feature_view_versioning", False)
        )
        version = config.entity_key_serialization_version
        suffix = self._project.encode() if self.kind == "redis" else b""
        self._keys = {e: _KeyEncoder(e, version, suffix) for e in KNOWLEDGE_ENTITIES}
        self._vectors = _VectorDecoder(self.dim)
        self._names: dict[str, str] = {}
        self._tables: dict[str, str] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sqlite_connections: list[sqlite3.Connection] = []
        self._redis_client: Any = None
        self._use_script = True
        self._script: Any = None
        if self.kind == "sqlite":
            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            self._sqlite_path = Path(SqliteOnlineStore._get_db_path(config)).resolve()
        else:
            self._redis_address = str(config.online_store.connection_string).split(",")[0]

    # ------------------------------------------------------------------ public API

    def fetch(
        self,
        user_id: int,
        item_ids: Sequence[int],
        category_ids: Sequence[int] | None = None,
        *,
        lineage: str | None = None,
        serving: bool = False,
    ) -> KnowledgeBatch:
        """Knowledge of ``user_id``, of each item and of each (user, category) pair.

        ``category_ids``: the category of every candidate (same order), or None to read
        them from the item values (needs ``category_of``). ``lineage``: read that lineage's
        snapshot instead of the live one. ``serving``: also return the packed downstream
        features of the user and of every item.
        """
        if category_ids is None:
            if self.category_of is None:
                raise InputError(
                    "no category_ids given and the retriever has no category_of: pass the "
                    "candidates' categories, or build KnowledgeRetriever(settings, "
                    "category_of=...) to read them from the item features"
                )
            categories: list[int | None] | None = None
        else:
            if len(item_ids) != len(category_ids):
                raise InputError(
                    f"{len(item_ids)} candidate items but {len(category_ids)} categories: pass "
                    "the category of every candidate item (same order)"
                )
            categories = [int(c) for c in category_ids]
        request = _Request(
            user=int(user_id),
            items=np.asarray(item_ids, np.int64).reshape(-1),
            categories=categories,
            lineage=lineage,
            serving=serving or categories is None,
        )
        read = self._read_redis(request) if self.kind == "redis" else self._read_sqlite(request)
        return self._batch(request, read)

    def close(self) -> None:
        """Close the store connections (a later fetch opens new ones)."""
        with self._lock:
            connections, self._sqlite_connections = self._sqlite_connections, []
            client, self._redis_client = self._redis_client, None
        for conn in connections:
            conn.close()
        self._local = threading.local()
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ shared

    def _name(self, view: str) -> str:
        """The view as Feast names it online (a version suffix when versioning is on)."""
        if view not in self._names:
            from feast.infra.online_stores.helpers import compute_versioned_name

            named = self.store.get_feature_view(view) if self._versioning else None
            self._names[view] = str(
                compute_versioned_name(named or types.SimpleNamespace(name=view), self._versioning)
            )
        return self._names[view]

    def _categories_from(self, item_features: list[bytes | None]) -> list[int | None]:
        assert self.category_of is not None
        out: list[int | None] = []
        for blob in item_features:
            category = None if blob is None else self.category_of(blob)
            out.append(None if category is None else int(category))
        return out

    def _uc_keys(
        self, user: int, categories: list[int | None], encoder: _KeyEncoder
    ) -> tuple[list[int], list[bytes]]:
        """(positions with a known category, their user x category keys)."""
        at = [i for i, c in enumerate(categories) if c is not None]
        known = np.array([categories[i] for i in at], np.int64)
        return at, encoder.encode([np.full(len(at), user, np.int64), known])

    def _batch(self, request: _Request, read: _Read) -> KnowledgeBatch:
        user, user_missing = self._vectors(read.user)
        items, items_missing = self._vectors(read.items)
        uc, uc_missing = self._vectors(read.user_category)
        chosen = read.chosen
        return KnowledgeBatch(
            user=user[0],
            user_missing=bool(user_missing[0]),
            items=items,
            items_missing=items_missing,
            user_category=uc,
            user_category_missing=uc_missing,
            lineage=chosen.get("lineage") if chosen else None,
            snapshot_ds=chosen.get("snapshot_ds") if chosen else None,
            slot=chosen["slot"] if chosen else None,
            category_ids=read.categories,
            pinned_unavailable=request.lineage is not None and chosen is None,
            user_features=read.user_features,
            item_features=read.item_features,
        )

    # ------------------------------------------------------------------ SQLite

    def _sqlite(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid != os.getpid():
            conn = None  # a forked process: never use the parent's SQLite connection
        if conn is None:
            # Read-only (never creates or changes the file); autocommit mode, so that the
            # explicit BEGIN ... COMMIT below is the one read transaction of a request.
            conn = sqlite3.connect(
                f"{self._sqlite_path.as_uri()}?mode=ro",
                uri=True,
                timeout=self.timeout_s,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._sqlite_connections.append(conn)
        return conn

    def _forget_sqlite(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._sqlite_connections:
                    self._sqlite_connections.remove(conn)
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _read_sqlite(self, request: _Request) -> _Read:
        try:
            conn = self._sqlite()
            conn.execute("BEGIN")
            read = self._sqlite_reads(conn, request)
            conn.execute("COMMIT")
            return read
        # On any failure the connection is closed (ending its transaction) and reopened by
        # the next request.
        except sqlite3.DatabaseError as e:
            self._forget_sqlite()
            if isinstance(e, sqlite3.ProgrammingError | sqlite3.IntegrityError):
                raise
            raise StoreUnavailable(
                f"online store sqlite {self._sqlite_path} cannot be read: {e}"
            ) from e
        except BaseException:
            self._forget_sqlite()
            raise

    def _select(
        self,
        conn: sqlite3.Connection,
        view: str,
        feature: str,
        keys: list[bytes],
        *,
        optional: bool = False,
    ) -> list[bytes | None]:
        """Values of ``feature`` for ``keys`` (None: no row); ``optional``: no table = no rows."""
        if not keys:
            return []
        table = self._tables.get(view)
        if table is None:
            from feast.infra.online_stores.helpers import compute_table_id

            named = types.SimpleNamespace(name=self._name(view))
            table = self._tables[view] = _quote(compute_table_id(self._project, named))
        unique = list(dict.fromkeys(keys))
        found: dict[bytes, bytes] = {}
        for start in range(0, len(unique), _SQLITE_KEYS_PER_QUERY):
            part = unique[start : start + _SQLITE_KEYS_PER_QUERY]
            sql = (
                f"SELECT entity_key, value FROM {table} "
                f"WHERE feature_name = ? AND entity_key IN ({','.join('?' * len(part))})"
            )
            try:
                found.update(conn.execute(sql, (feature, *part)).fetchall())
            except sqlite3.OperationalError as e:
                if optional and str(e).startswith("no such table"):
                    return [None] * len(keys)
                raise
        return [found.get(k) for k in keys]

    def _sqlite_reads(self, conn: sqlite3.Connection, request: _Request) -> _Read:
        try:
            row = conn.execute(
                "SELECT state FROM keep_publication WHERE project = ?", (self._project,)
            ).fetchone()
        except sqlite3.OperationalError as e:
            if not str(e).startswith("no such table"):
                raise
            row = None  # nothing has ever been published to this store
        chosen = choose_slot(None if row is None else json.loads(row[0]), request.lineage)
        user_key = self._keys["user"].encode([np.array([request.user], np.int64)])
        item_keys = self._keys["item"].encode([request.items])
        n = len(item_keys)
        read = _Read(chosen=chosen, user=[None], items=[None] * n, user_category=[], categories=[])
        if request.serving:
            features = self._select(
                conn, serving_view_name("user"), serving_feature("user"), user_key, optional=True
            )
            read.user_features = _bytes_values(features)[0]
            read.item_features = _bytes_values(
                self._select(
                    conn,
                    serving_view_name("item"),
                    serving_feature("item"),
                    item_keys,
                    optional=True,
                )
            )
        read.categories = (
            request.categories
            if request.categories is not None
            else self._categories_from(read.item_features)
        )
        read.user_category = [None] * n
        if chosen is None:
            return read
        slot = chosen["slot"]
        read.user = self._select(
            conn, slot_view_name("user", slot), vector_feature("user"), user_key
        )
        read.items = self._select(
            conn, slot_view_name("item", slot), vector_feature("item"), item_keys
        )
        at, uc_keys = self._uc_keys(request.user, read.categories, self._keys["user_category"])
        values = self._select(
            conn, slot_view_name("user_category", slot), vector_feature("user_category"), uc_keys
        )
        for i, value in zip(at, values, strict=True):
            read.user_category[i] = value
        return read

    # ------------------------------------------------------------------ Redis

    def _redis(self) -> Any:
        """Feast's Redis client for this store, failing fast: this retriever's timeouts
        (unless the connection string sets them) and one immediate retry."""
        if self._redis_client is None:
            import redis

            base = self._pointer._redis()
            pool = getattr(base, "connection_pool", None)
            client = base
            if type(pool) is redis.ConnectionPool and isinstance(base, redis.Redis):
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                kwargs = dict(pool.connection_kwargs)
                for name in ("socket_timeout", "socket_connect_timeout"):
                    if kwargs.get(name) is None:
                        kwargs[name] = self.timeout_s
                # Fail fast: one immediate retry (for a pooled connection that a server
                # restart has closed), instead of redis-py's retries with seconds of backoff.
                kwargs["retry"] = Retry(NoBackoff(), 1)
                client = redis.Redis(
                    connection_pool=redis.ConnectionPool(
                        connection_class=pool.connection_class, **kwargs
                    )
                )
            with self._lock:
                if self._redis_client is None:
                    self._redis_client = client
        return self._redis_client

    def _field(self, view: str, feature: str) -> bytes:
        from feast.infra.online_stores.helpers import _mmh3

        return bytes(_mmh3(f"{self._name(view)}:{feature}"))

    def _transaction(self, groups: list[tuple[list[bytes], list[bytes]]]) -> tuple[Any, list[Any]]:
        """The pointer and, for every key of every (keys, fields) group, the fields' values.

        One atomic read: the read-only Lua script :data:`_READ_SCRIPT` (one command, one
        reply), or -- where the server refuses scripts -- a MULTI/EXEC transaction of the
        pointer GET and one HMGET per key.
        """
        import redis

        client = self._redis()
        try:
            if self._use_script:
                try:
                    replies = self._script_read(client, groups)
                except redis.exceptions.ResponseError as e:
                    log.warning("Redis refused the read script (%s); reading with MULTI/EXEC", e)
                    self._use_script = False
            if not self._use_script:
                with client.pipeline(transaction=True) as pipe:
                    pipe.get(self._pointer.redis_key)
                    for keys, fields in groups:
                        for key in keys:
                            pipe.hmget(key, fields)
                    replies = pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise StoreUnavailable(
                f"online store redis {self._redis_address} unreachable: {e}"
            ) from e
        state = None if replies[0] is None else json.loads(replies[0])
        return state, replies[1:]

    def _script_read(self, client: Any, groups: list[tuple[list[bytes], list[bytes]]]) -> Any:
        if self._script is None:
            self._script = client.register_script(_READ_SCRIPT)
        keys: list[bytes | str] = [self._pointer.redis_key]
        args: list[bytes | int] = [len(groups)]
        for group_keys, fields in groups:
            keys += group_keys
            args += [len(group_keys), len(fields), *fields]
        return self._script(keys=keys, args=args, client=client)

    def _read_redis(self, request: _Request) -> _Read:
        for _ in range(_REDIS_ATTEMPTS):
            read = self._redis_attempt(request)
            if read is not None:
                return read
        raise StoreUnavailable(
            f"online store redis {self._redis_address}: the slot being read was taken by a new "
            f"publication {_REDIS_ATTEMPTS} times in a row during one request; retry"
        )

    def _redis_attempt(self, request: _Request) -> _Read | None:
        slot_fields = {
            e: [self._field(slot_view_name(e, s), vector_feature(e)) for s in SLOTS]
            for e in KNOWLEDGE_ENTITIES
        }
        user_fields, item_fields = slot_fields["user"], slot_fields["item"]
        if request.serving:
            user_fields = [
                *user_fields,
                self._field(serving_view_name("user"), serving_feature("user")),
            ]
            item_fields = [
                *item_fields,
                self._field(serving_view_name("item"), serving_feature("item")),
            ]
        user_key = self._keys["user"].encode([np.array([request.user], np.int64)])
        item_keys = self._keys["item"].encode([request.items])
        n = len(item_keys)
        groups = [(user_key, user_fields), (item_keys, item_fields)]
        at: list[int] = []
        if request.categories is not None:
            at, uc_keys = self._uc_keys(
                request.user, request.categories, self._keys["user_category"]
            )
            groups.append((uc_keys, slot_fields["user_category"]))
        state, replies = self._transaction(groups)
        chosen = choose_slot(state, request.lineage)
        read = _Read(
            chosen=chosen,
            user=[None],
            items=[None] * n,
            user_category=[None] * n,
            categories=[],
        )
        if request.serving:
            read.user_features = _bytes_values([replies[0][-1]])[0]
            read.item_features = _bytes_values([r[-1] for r in replies[1 : 1 + n]])
        read.categories = (
            request.categories
            if request.categories is not None
            else self._categories_from(read.item_features)
        )
        if chosen is None:
            return read
        column = SLOTS.index(chosen["slot"])
        read.user = [replies[0][column]]
        read.items = [r[column] for r in replies[1 : 1 + n]]
        if request.categories is not None:
            uc_replies = replies[1 + n :]
        else:
            at, uc_keys = self._uc_keys(request.user, read.categories, self._keys["user_category"])
            if not uc_keys:
                return read
            state, uc_replies = self._transaction([(uc_keys, slot_fields["user_category"])])
            # The slot must still hold what the first read found; else read again.
            slot = chosen["slot"]
            now = (state or {}).get("slots", {}).get(slot)
            if now is None or {"slot": slot, **now} != chosen:
                return None
        for i, reply in zip(at, uc_replies, strict=True):
            read.user_category[i] = reply[column]
        return read

"""Online knowledge retrieval for a scorer: one user, its candidate items, in few round trips.

A request is one user, N candidate items and the N categories of those items (so the
user x category keys are ``(user, category_i)``). The retriever follows the publication
pointer (keep.store.publication) to the live slot and returns numpy arrays ready for a model
(``KnowledgeBatch.as_torch()`` for tensors):

    retriever = KnowledgeRetriever(settings)
    batch = retriever.fetch(user_id=7, item_ids=[11, 12], category_ids=[3, 3])
    batch.user            # (D,)     float32
    batch.items           # (N, D)   float32
    batch.user_category   # (N, D)   float32
    batch.items_missing   # (N,)     bool: key not in the live snapshot -> zero vector
    batch.lineage, batch.snapshot_ds, batch.slot   # what was served

Unknown keys never raise: they get a zero vector and a ``missing`` flag (the plug-in
network was trained with zero knowledge for cold keys). When nothing has been published,
everything is missing and ``lineage`` is None.

Round trips. Redis: ONE round trip -- a MULTI/EXEC transaction holding the pointer ``GET``
and, for every key, ``HMGET`` of both slots' fields (the two slots of an entity share
Feast's hash per key); the live slot is picked after the reply. The transaction is atomic,
so a pointer switch cannot fall between the pointer read and the feature reads.
SQLite (in-process, no network): the pointer, one query per entity view through Feast's
``online_read``, and the pointer again -- if a switch happened meanwhile, read again. Results equal ``FeatureStore.get_online_features`` on the
live slot views (tests/serving/test_retrieval.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.feast_names import SLOTS, slot_view_name, vector_feature
from keep.core.tables import ENTITIES
from keep.store.feast_repo import get_store
from keep.store.publication import Pointer, live_from_state

if TYPE_CHECKING:
    import torch
    from feast import FeatureStore


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


def _entity_key(entity: str, values: Sequence[int]) -> Any:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
    from feast.protos.feast.types.Value_pb2 import Value as ValueProto

    return EntityKeyProto(
        join_keys=list(ENTITIES[entity]),
        entity_values=[ValueProto(int64_val=int(v)) for v in values],
    )


class KnowledgeRetriever:
    """Reads live knowledge for scoring requests; holds one store (and its connections)."""

    def __init__(self, settings: Settings, store: FeatureStore | None = None) -> None:
        self.settings = settings
        self.store = store or get_store(settings)
        self.dim = settings.pretrain.knowledge_dim
        self.kind = settings.feast.online_store
        self._pointer = Pointer(settings, self.store)
        self._views: dict[tuple[str, str], Any] = {}

    def _view(self, entity: str, slot: str) -> Any:
        if (entity, slot) not in self._views:
            self._views[entity, slot] = self.store.get_feature_view(slot_view_name(entity, slot))
        return self._views[entity, slot]

    def fetch(
        self, user_id: int, item_ids: Sequence[int], category_ids: Sequence[int]
    ) -> KnowledgeBatch:
        """Knowledge of ``user_id``, of each item and of each (user, category) pair."""
        if len(item_ids) != len(category_ids):
            raise InputError(
                f"{len(item_ids)} candidate items but {len(category_ids)} categories: pass the "
                "category of every candidate item (same order)"
            )
        keys: dict[str, list[tuple[int, ...]]] = {
            "user": [(int(user_id),)],
            "item": [(int(i),) for i in item_ids],
            "user_category": [(int(user_id), int(c)) for c in category_ids],
        }
        if self.kind == "redis":
            live, vectors = self._read_redis(keys)
        else:
            live, vectors = self._read_sqlite(keys)
        return KnowledgeBatch(
            user=vectors["user"][0][0],
            user_missing=bool(vectors["user"][1][0]),
            items=vectors["item"][0],
            items_missing=vectors["item"][1],
            user_category=vectors["user_category"][0],
            user_category_missing=vectors["user_category"][1],
            lineage=live["lineage"] if live else None,
            snapshot_ds=live["snapshot_ds"] if live else None,
            slot=live["slot"] if live else None,
        )

    def _empty(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((n, self.dim), np.float32), np.ones(n, bool)

    def _fill(self, values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """ValueProtos (None = missing) -> (N x D vectors, N missing flags)."""
        out, missing = self._empty(len(values))
        for i, v in enumerate(values):
            if v is None:
                continue
            vec = np.asarray(v.float_list_val.val, np.float32)
            if vec.shape == (self.dim,):
                out[i] = vec
                missing[i] = False
        return out, missing

    def _read_sqlite(
        self, keys: dict[str, list[tuple[int, ...]]]
    ) -> tuple[dict[str, Any] | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
        provider = self.store._get_provider()
        state = self._pointer.read()
        while True:
            live = live_from_state(state)
            if live is None:
                return None, {e: self._empty(len(k)) for e, k in keys.items()}
            vectors = {}
            for entity, entity_keys in keys.items():
                feature = vector_feature(entity)
                rows = provider.online_read(
                    self.store.config,
                    self._view(entity, live["slot"]),
                    [_entity_key(entity, k) for k in entity_keys],
                    [feature],
                )
                vectors[entity] = self._fill([(vals or {}).get(feature) for _, vals in rows])
            after = self._pointer.read()
            if after.get("seq") == state.get("seq"):
                return live, vectors
            state = after  # the pointer moved while reading: read the new live slot

    def _read_redis(
        self, keys: dict[str, list[tuple[int, ...]]]
    ) -> tuple[dict[str, Any] | None, dict[str, tuple[np.ndarray, np.ndarray]]]:
        from feast.infra.online_stores.redis import _mmh3, _redis_key
        from feast.protos.feast.types.Value_pb2 import Value as ValueProto

        config = self.store.config
        client = self._pointer._redis()
        version = config.entity_key_serialization_version
        with client.pipeline(transaction=True) as pipe:
            pipe.get(self._pointer.redis_key)
            for entity, entity_keys in keys.items():
                fields = [
                    _mmh3(f"{slot_view_name(entity, s)}:{vector_feature(entity)}") for s in SLOTS
                ]
                for k in entity_keys:
                    redis_key = _redis_key(
                        config.project,
                        _entity_key(entity, k),
                        entity_key_serialization_version=version,
                    )
                    pipe.hmget(redis_key, fields)
            replies = pipe.execute()
        state_raw, rest = replies[0], replies[1:]
        live = None if state_raw is None else live_from_state(json.loads(state_raw))
        if live is None:
            return None, {e: self._empty(len(k)) for e, k in keys.items()}
        column = SLOTS.index(live["slot"])
        vectors = {}
        pos = 0
        for entity, entity_keys in keys.items():
            values = []
            for reply in rest[pos : pos + len(entity_keys)]:
                raw = reply[column]
                values.append(None if raw is None else ValueProto.FromString(raw))
            pos += len(entity_keys)
            vectors[entity] = self._fill(values)
        return live, vectors

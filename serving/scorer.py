"""Scoring one user's candidate items with the live downstream model (no HTTP here).

:class:`Scorer` holds the live registered version of one subsystem's model
(keep.store.model_registry) and a :class:`~serving.retrieval.KnowledgeRetriever`. A call to
:meth:`Scorer.score`:

1. reads, in one round trip (two when the categories are not given), the knowledge of the
   user, the items and the (user, category) pairs **of the lineage the model was trained
   on** -- the live slot, or the other slot while a newer lineage is live but no model
   trained on it is registered yet -- and the model's own user and item features
   (models/downstream/serving_features.py);
2. turns them into the rows a training set would hold for these candidates and runs the
   model in inference mode; unknown users / items get the unseen key's features and zero
   knowledge (the cold path the model was trained with) and are reported as missing.

Hot swap: :meth:`Scorer.refresh` (called every ``serve.reload_interval_s`` by the service)
loads a newly registered live version next to the running one and swaps one reference; a
request holds the version it started with, so in-flight requests finish on it undisturbed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keep.core.config import Settings
from keep.core.errors import InputError, KeepError
from keep.store import model_registry as registry
from models.downstream.checkpoint import load_model
from models.downstream.features import Knowledge, downstream_batch
from models.downstream.model import DownstreamModel
from models.downstream.serving_features import (
    UNSEEN,
    decode_items,
    decode_user,
    item_category,
    request_table,
)
from serving.retrieval import KnowledgeRetriever

log = logging.getLogger(__name__)

SERVABLE_ARMS = ("base", "keep", "concat")


class NotReady(KeepError):
    """The service cannot score now (no live model, or no knowledge of its lineage online)."""


@dataclass
class LiveModel:
    """One loaded registered version and the unseen keys' features it falls back on."""

    subsystem: str
    version: int
    lineage: str
    snapshot_ds: str
    model: DownstreamModel
    unseen_user: bytes | None = None
    unseen_item: bytes | None = None
    loaded_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.subsystem}/v{self.version}"


@dataclass
class Scores:
    scores: list[float]
    model: LiveModel
    lineage: str
    snapshot_ds: str | None
    slot: str | None
    category_ids: list[int | None]
    missing: dict[str, Any]
    keys: dict[str, int]
    missing_keys: dict[str, int]


def predict(
    model: DownstreamModel,
    *,
    user_id: int,
    item_ids: Sequence[int],
    user_blob: bytes,
    item_blobs: Sequence[bytes],
    knowledge: dict[str, np.ndarray],
    positions: Sequence[int] | None = None,
) -> np.ndarray:
    """Click probabilities of one user's candidates from packed features and knowledge.

    ``knowledge``: ``user`` [K], ``items`` / ``user_category`` [N, K] (zeros where missing)
    and ``missing`` [N, 3] flags (user, item, user x category), as the training set holds
    them (models/downstream/features.py).
    """
    cfg = model.config
    table = request_table(
        user_id=user_id,
        user=decode_user(user_blob),
        item_ids=item_ids,
        items=decode_items(item_blobs),
        positions=positions,
        scenario=cfg.scenario,
        counter_windows=cfg.counter_windows,
    )
    with torch.inference_mode():
        batch = downstream_batch(
            table,
            scenario=cfg.scenario,
            counter_windows=cfg.counter_windows,
            max_len=cfg.max_seq_len,
        )
        if model.uses_knowledge:
            n = len(item_ids)
            batch.knowledge = Knowledge(
                user=torch.from_numpy(knowledge["user"]).unsqueeze(0).expand(n, -1),
                item=torch.from_numpy(knowledge["items"]),
                user_category=torch.from_numpy(knowledge["user_category"]),
                missing=torch.from_numpy(knowledge["missing"]),
            )
        return torch.sigmoid(model(batch)).numpy().astype(np.float64)


class Scorer:
    """The live model of ``settings.serve.subsystem`` (default: the downstream scenario)."""

    def __init__(self, settings: Settings, retriever: KnowledgeRetriever | None = None) -> None:
        self.settings = settings
        self.subsystem = settings.serve.subsystem or settings.downstream.scenario
        self.retriever = retriever or KnowledgeRetriever(settings, category_of=item_category)
        self.live: LiveModel | None = None
        self.last_error: str | None = None
        self._load_lock = threading.Lock()
        torch.set_num_threads(settings.serve.threads)

    # ------------------------------------------------------------------ model lifecycle

    def refresh(self) -> bool:
        """Load the registry's live version if it is not the one serving; True if swapped.

        A failed load leaves the running version serving and is reported in
        :attr:`last_error` (and the log).
        """
        with self._load_lock:
            try:
                record = registry.live_record(self.settings, self.subsystem)
            except (KeepError, OSError, ValueError) as e:
                self.last_error = f"cannot read the model registry: {e}"
                log.warning(self.last_error)
                return False
            if record is None:
                self.last_error = (
                    f"no live model of {self.subsystem} in the registry "
                    f"({self.settings.downstream.registry_root}): the downstream DAG registers one"
                )
                return False
            current = self.live
            if current is not None and current.version == int(record["version"]):
                self._refresh_unseen(current)
                return False
            try:
                loaded = self._load(record)
            except (KeepError, OSError, RuntimeError, ValueError) as e:
                self.last_error = f"cannot load {self.subsystem}/v{record['version']}: {e}"
                log.error(self.last_error)
                return False
            self.live = loaded  # THE swap: requests read self.live once, at their start
            self.last_error = None
            log.info(
                "serving %s (knowledge lineage %s, trained through %s)%s",
                loaded.name,
                loaded.lineage,
                loaded.snapshot_ds,
                f", replacing {current.name}" if current else "",
            )
            return True

    def _load(self, record: dict[str, Any]) -> LiveModel:
        import time

        loaded = load_model(Path(record["checkpoint"]), lineage=record["knowledge_lineage"])
        model = loaded.model
        if not isinstance(model, DownstreamModel) or model.arm not in SERVABLE_ARMS:
            raise InputError(
                f"arm {getattr(model, 'arm', '?')!r} cannot be served online (its inputs are "
                f"not published); servable arms: {', '.join(SERVABLE_ARMS)}"
            )
        model.eval()
        live = LiveModel(
            subsystem=self.subsystem,
            version=int(record["version"]),
            lineage=str(record["knowledge_lineage"]),
            snapshot_ds=str(record["snapshot_ds"]),
            model=model,
            loaded_at=time.time(),
        )
        self._refresh_unseen(live)
        # One warm-up pass, so the first real request does not pay for lazy initialisation.
        if live.unseen_user is not None and live.unseen_item is not None:
            self._forward(live, UNSEEN, [UNSEEN], None, self._cold_knowledge(1), None)
        return live

    def _refresh_unseen(self, live: LiveModel) -> None:
        try:
            batch = self.retriever.fetch(UNSEEN, [UNSEEN], [0], lineage=None, serving=True)
        except KeepError as e:
            log.warning("cannot read the unseen keys' features: %s", e)
            return
        live.unseen_user = batch.user_features
        live.unseen_item = batch.item_features[0] if batch.item_features else None

    # ------------------------------------------------------------------ scoring

    def _cold_knowledge(self, n: int) -> dict[str, np.ndarray]:
        dim = self.settings.pretrain.knowledge_dim
        return {
            "user": np.zeros(dim, np.float32),
            "items": np.zeros((n, dim), np.float32),
            "user_category": np.zeros((n, dim), np.float32),
            "missing": np.ones((n, 3), np.float32),
        }

    def _forward(
        self,
        live: LiveModel,
        user_id: int,
        item_ids: Sequence[int],
        item_blobs: Sequence[bytes] | None,
        knowledge: dict[str, np.ndarray],
        positions: Sequence[int] | None,
        user_blob: bytes | None = None,
    ) -> np.ndarray:
        return predict(
            live.model,
            user_id=user_id,
            item_ids=item_ids,
            user_blob=user_blob or live.unseen_user or b"",
            item_blobs=item_blobs or [live.unseen_item or b""] * len(item_ids),
            knowledge=knowledge,
            positions=positions,
        )

    def score(
        self,
        user_id: int,
        item_ids: Sequence[int],
        category_ids: Sequence[int] | None = None,
        positions: Sequence[int] | None = None,
    ) -> Scores:
        """Click probabilities of ``item_ids`` for ``user_id``, in request order."""
        live = self.live
        if live is None:
            raise NotReady(self.last_error or f"no model of {self.subsystem} loaded yet")
        if live.unseen_user is None or live.unseen_item is None:
            self._refresh_unseen(live)
            if live.unseen_user is None or live.unseen_item is None:
                raise NotReady(
                    f"the serving features of {self.subsystem} are not online: the downstream "
                    "DAG's register task writes them"
                )
        batch = self.retriever.fetch(
            user_id, item_ids, category_ids, lineage=live.lineage, serving=True
        )
        if batch.pinned_unavailable or batch.lineage is None:
            raise NotReady(
                f"no online knowledge snapshot of lineage {live.lineage}, which {live.name} was "
                "trained on: publish one (or register a model of the live lineage)"
            )
        n = len(item_ids)
        user_missing_features = batch.user_features is None
        item_missing_features = [b is None for b in batch.item_features]
        blobs = [b if b is not None else live.unseen_item for b in batch.item_features]  # type: ignore[misc]
        missing_flags = np.stack(
            [
                np.full(n, batch.user_missing, np.float32),
                batch.items_missing.astype(np.float32),
                batch.user_category_missing.astype(np.float32),
            ],
            axis=1,
        )
        scores = self._forward(
            live,
            user_id,
            item_ids,
            blobs,  # type: ignore[arg-type]
            {
                "user": batch.user,
                "items": batch.items,
                "user_category": batch.user_category,
                "missing": missing_flags,
            },
            positions,
            user_blob=batch.user_features,
        )
        items = list(item_ids)
        missing = {
            "user_knowledge": bool(batch.user_missing),
            "user_features": user_missing_features,
            "item_knowledge": [i for i, m in zip(items, batch.items_missing, strict=True) if m],
            "item_features": [i for i, m in zip(items, item_missing_features, strict=True) if m],
            "user_category_knowledge": [
                i for i, m in zip(items, batch.user_category_missing, strict=True) if m
            ],
        }
        return Scores(
            scores=scores.tolist(),
            model=live,
            lineage=live.lineage,
            snapshot_ds=batch.snapshot_ds,
            slot=batch.slot,
            category_ids=list(batch.category_ids),
            missing=missing,
            keys={"user": 1, "item": n, "user_category": n},
            missing_keys={
                "user": int(batch.user_missing),
                "item": int(batch.items_missing.sum()),
                "user_category": int(batch.user_category_missing.sum()),
            },
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): ready when a model is loaded and knowledge of its lineage is
        online (and the store answers)."""
        live = self.live
        if live is None:
            return False, {"status": "degraded", "reason": self.last_error or "no model loaded"}
        try:
            batch = self.retriever.fetch(UNSEEN, [], [], lineage=live.lineage)
        except KeepError as e:
            return False, {"status": "degraded", "reason": str(e), "model": live.name}
        info = {
            "model": live.name,
            "knowledge_lineage": live.lineage,
            "knowledge_snapshot": batch.snapshot_ds,
            "slot": batch.slot,
        }
        if batch.pinned_unavailable or batch.lineage is None:
            return False, {
                "status": "degraded",
                "reason": f"no online knowledge snapshot of lineage {live.lineage}",
                **info,
            }
        if live.unseen_user is None or live.unseen_item is None:
            return False, {"status": "degraded", "reason": "serving features not online", **info}
        return True, {"status": "ready", **info}

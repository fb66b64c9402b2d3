"""The plain path of bench/serve.py: Feast's own feature server (`feast serve`) for the
features and the same model behind a minimal FastAPI endpoint.

    KEEP_HOME=... python bench/_plain_endpoint.py --feast-url http://127.0.0.1:6566 --port 8090

``POST /v1/score`` with the same body as `keep serve` (``user_id``, ``item_ids``,
``category_ids``): two ``/get-online-features`` calls to the feature server (the user's
knowledge and features; then the items' knowledge and features and the user x category
knowledge), decoded from JSON, then the same model code as the service
(serving.scorer.predict). The live slot is read from the publication pointer once, at start.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

from keep.core.config import load_settings
from keep.core.feast_names import serving_feature, serving_view_name, slot_view_name, vector_feature
from keep.store import model_registry as registry
from keep.store.publication import live_snapshot
from models.downstream.checkpoint import load_model
from serving.scorer import predict


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return base64.b64decode(value) if isinstance(value, str) else bytes(value)


def create_app(feast_url: str) -> FastAPI:
    settings = load_settings()
    subsystem = settings.serve.subsystem or settings.downstream.scenario
    record = registry.live_record(settings, subsystem)
    assert record is not None, "no live model"
    model = load_model(Path(record["checkpoint"])).model
    live = live_snapshot(settings)
    assert live is not None, "nothing published"
    slot = live["slot"]
    dim = settings.pretrain.knowledge_dim
    user_features = [
        f"{slot_view_name('user', slot)}:{vector_feature('user')}",
        f"{serving_view_name('user')}:{serving_feature('user')}",
    ]
    item_features = [
        f"{slot_view_name('item', slot)}:{vector_feature('item')}",
        f"{serving_view_name('item')}:{serving_feature('item')}",
        f"{slot_view_name('user_category', slot)}:{vector_feature('user_category')}",
    ]
    client = httpx.Client(base_url=feast_url, timeout=30)

    def online(features: list[str], entities: dict[str, list[int]]) -> list[list[Any]]:
        reply = client.post(
            "/get-online-features", json={"features": features, "entities": entities}
        )
        reply.raise_for_status()
        results = reply.json()["results"]
        # results[0..k-1] are the join keys, then one column per feature, in order
        return [r["values"] for r in results[-len(features) :]]

    def vectors(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(values), dim), np.float32)
        missing = np.ones(len(values), bool)
        for i, v in enumerate(values):
            if v is not None and len(v) == dim:
                out[i] = v
                missing[i] = False
        return out, missing

    app = FastAPI()
    unseen_user = _bytes(online(user_features, {"user_id": [-1]})[1][0])
    unseen_item = _bytes(online(item_features[1:2], {"item_id": [-1]})[0][0])

    @app.post("/v1/score")
    def score(body: dict[str, Any]) -> dict[str, Any]:
        user, items = int(body["user_id"]), [int(i) for i in body["item_ids"]]
        categories = [int(c) for c in body["category_ids"]]
        u_vec, u_blob = online(user_features, {"user_id": [user]})
        i_vec, i_blob, uc_vec = online(
            item_features,
            {"item_id": items, "user_id": [user] * len(items), "category_id": categories},
        )
        u, u_missing = vectors(u_vec)
        it, it_missing = vectors(i_vec)
        uc, uc_missing = vectors(uc_vec)
        blobs = [_bytes(b) or unseen_item for b in i_blob]
        missing = np.stack(
            [np.full(len(items), u_missing[0]), it_missing, uc_missing], axis=1
        ).astype(np.float32)
        scores = predict(
            model,
            user_id=user,
            item_ids=items,
            user_blob=_bytes(u_blob[0]) or unseen_user or b"",
            item_blobs=[b or b"" for b in blobs],
            knowledge={"user": u[0], "items": it, "user_category": uc, "missing": missing},
        )
        return {"scores": scores.tolist(), "model": {"version": record["version"]}}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feast-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.feast_url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()

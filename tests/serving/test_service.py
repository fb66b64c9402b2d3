"""`keep serve`: scores equal the offline model on the same point-in-time features, bad
input gets one line and the right status, lineage pinning across a new lineage, hot swap
under a running request stream, degraded (never zeros) when the store or pointer is gone."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from bench.serving_world import (
    D1,
    ITEMS,
    SUBSYSTEM,
    USERS,
    item_category,
    register_model,
    serving_world,
    write_knowledge_snapshot,
)
from keep.core.config import Settings
from keep.core.errors import GateFailed
from keep.core.tables import (
    DIM_ITEMS,
    DIM_USERS,
    DOWNSTREAM_SAMPLES,
    KNOWLEDGE_ENTITIES,
    USER_BEHAVIOR,
    knowledge_spec,
    samples_spec,
)
from keep.lake.delta import table_path
from keep.store import model_registry as registry
from keep.store.publication import publish_knowledge, read_pointer
from models.downstream.checkpoint import load_model
from models.downstream.counters import add_downstream_counters
from serving.app import create_app
from tests.conftest import make_settings, redis_client


def _settings(tmp_path: Path, **feast: Any) -> Settings:
    return make_settings(
        tmp_path,
        feast={"online_store": "sqlite", **feast},
        pretrain={"knowledge_dim": 8},
        serve={"reload_interval_s": 0.2},
    )


@pytest.fixture
def world(tmp_path: Path) -> Settings:
    settings = _settings(tmp_path)
    serving_world(settings, "L1")
    return settings


@pytest.fixture
def client(world: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(world)) as c:
        yield c


# --------------------------------------------------------------------------- reference


def _lake(settings: Settings, spec: Any, where: pc.Expression | None = None) -> pa.Table:
    return DeltaTable(str(table_path(settings, spec))).to_pyarrow_dataset().to_table(filter=where)


def offline_scores(
    settings: Settings,
    lineage: str,
    requests: list[tuple[int, list[int]]],
    given: list[list[int] | None] | None = None,
) -> list[np.ndarray]:
    """The registered model on training-set rows built from the lake for day D1 + 1: dims
    as of D1, behaviours of D1, counters over days <= D1, knowledge snapshot (lineage, D1).
    ``given``: the categories a request named (they key its user x category knowledge)."""
    live = registry.live(settings, SUBSYSTEM)
    assert live is not None and live.knowledge_lineage == lineage
    model = load_model(Path(live.checkpoint)).model
    day = D1.isoformat()
    users = {r["user_id"]: r for r in _lake(settings, DIM_USERS).to_pylist()}
    items = {r["item_id"]: r for r in _lake(settings, DIM_ITEMS).to_pylist()}
    seqs = {
        r["user_id"]: r["behaviors"]
        for r in _lake(settings, USER_BEHAVIOR, pc.field("ds") == day).to_pylist()
    }
    history = _lake(settings, samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows))
    vectors: dict[str, dict[tuple[int, ...], list[float]]] = {}
    for entity in KNOWLEDGE_ENTITIES:
        spec = knowledge_spec(entity)
        snap = _lake(
            settings,
            spec,
            (pc.field("knowledge_lineage") == lineage) & (pc.field("snapshot_ds") == day),
        )
        keys = [k for k in spec.key if k.endswith("_id")]
        vectors[entity] = {tuple(r[k] for k in keys): r["vector"] for r in snap.to_pylist()}
    rows: list[dict[str, Any]] = []
    for k, (user, item_ids) in enumerate(requests):
        named = given[k] if given else None
        for j, item in enumerate(item_ids):
            u, i = users.get(user, {}), items.get(item, {})
            cat = i.get("category_id")
            uc_cat = named[j] if named else cat
            row = {
                "user_id": user,
                "item_id": item,
                "category_id": cat,
                "brand_id": i.get("brand_id"),
                "price": i.get("price"),
                "gender": u.get("gender"),
                "age_level": u.get("age_level"),
                "purchase_power": u.get("purchase_power"),
                "position": None,
                "behaviors": seqs.get(user, []),
            }
            for entity, key in (
                ("user", (user,)),
                ("item", (item,)),
                ("user_category", (user, uc_cat)),
            ):
                vec = vectors[entity].get(key)
                row[f"{entity}_vector"] = vec or []
                row[f"{entity}_knowledge_missing"] = vec is None
            rows.append(row)
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("user_id", pa.int64()),
                ("item_id", pa.int64()),
                ("category_id", pa.int64()),
                ("brand_id", pa.int64()),
                ("price", pa.float64()),
                ("gender", pa.string()),
                ("age_level", pa.int32()),
                ("purchase_power", pa.int32()),
                ("position", pa.int32()),
                ("behaviors", _lake(settings, USER_BEHAVIOR).schema.field("behaviors").type),
                *[
                    f
                    for e in KNOWLEDGE_ENTITIES
                    for f in (
                        pa.field(f"{e}_vector", pa.list_(pa.float32())),
                        pa.field(f"{e}_knowledge_missing", pa.bool_()),
                    )
                ],
            ]
        ),
    )
    ds = settings.downstream
    table = add_downstream_counters(
        table,
        history,
        ds=D1 + dt.timedelta(days=1),
        windows=ds.counter_windows,
        scenario=ds.scenario,
        prior_strength=ds.prior_strength,
    )
    with torch.inference_mode():
        scores = torch.sigmoid(model(model.batch(table))).numpy()
    out, at = [], 0
    for _, item_ids in requests:
        out.append(scores[at : at + len(item_ids)])
        at += len(item_ids)
    return out


def _random_requests(n: int, seed: int) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(n):
        user = int(rng.integers(1, USERS + 6))  # some unknown users (> USERS)
        k = int(rng.integers(1, 30))
        items = [int(i) for i in rng.integers(1000, 1000 + ITEMS + 4, k)]  # some unknown
        requests.append((user, items))
    return requests


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_scores_equal_the_offline_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    feast: dict[str, Any] = {"online_store": backend}
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        redis_client(server).flushall()
        feast["redis_connection"] = server.address
        feast["redis_password"] = server.password
    settings = _settings(tmp_path, **feast)
    serving_world(settings, "L1")
    requests = _random_requests(1000 if backend == "sqlite" else 300, seed=1)
    # Half the requests name the categories (they key the user x category knowledge, even
    # for items the store does not know); the others let the service look them up.
    given = [[item_category(i) for i in items] if u % 2 == 0 else None for u, items in requests]
    expected = offline_scores(settings, "L1", requests, given)
    with TestClient(create_app(settings)) as client:
        for (user, items), named, want in zip(requests, given, expected, strict=True):
            body: dict[str, Any] = {"user_id": user, "item_ids": items}
            if named:
                body["category_ids"] = named
            reply = client.post("/v1/score", json=body)
            assert reply.status_code == 200, reply.text
            got = reply.json()
            assert got["knowledge"]["lineage"] == "L1"
            np.testing.assert_allclose(got["scores"], want, rtol=0, atol=1e-5)
            unknown = [i for i in items if i >= 1000 + ITEMS - 3]
            assert got["missing"]["item_knowledge"] == unknown
            assert got["missing"]["user_features"] == (user > USERS)
    # The knowledge really reaches the model: without it the scores differ.
    assert not np.allclose(np.concatenate(expected), 0.5)


BAD = [
    ("malformed JSON", b'{"user_id": 1, "item_ids": [1000', 400, "malformed JSON"),
    (
        "user id as a string",
        {"user_id": "7", "item_ids": [1000]},
        422,
        "user_id: Input should be a valid integer",
    ),
    (
        "injection in the user id",
        {"user_id": "1; DROP TABLE x", "item_ids": [1000]},
        422,
        "user_id:",
    ),
    ("float user id", {"user_id": 1.5, "item_ids": [1000]}, 422, "user_id:"),
    (
        "negative user id",
        {"user_id": -1, "item_ids": [1000]},
        422,
        "user_id: Input should be greater than or equal to 0",
    ),
    (
        "negative item id",
        {"user_id": 1, "item_ids": [1000, -5]},
        422,
        "item_ids.1: Input should be greater than or equal to 0",
    ),
    (
        "item ids not a list",
        {"user_id": 1, "item_ids": 1000},
        422,
        "item_ids: Input should be a valid list",
    ),
    ("no item ids", {"user_id": 1}, 422, "item_ids: Field required"),
    (
        "empty candidate list",
        {"user_id": 1, "item_ids": []},
        422,
        "item_ids: List should have at least 1 item",
    ),
    (
        "501 candidates",
        {"user_id": 1, "item_ids": list(range(1000, 1501))},
        422,
        "item_ids: 501 candidates, at most 500 per request",
    ),
    (
        "categories of another length",
        {"user_id": 1, "item_ids": [1000, 1001], "category_ids": [100]},
        422,
        "category_ids: 1 values for 2 item_ids",
    ),
    (
        "unknown field",
        {"user_id": 1, "item_ids": [1000], "path": "/etc/passwd"},
        422,
        "path: Extra inputs are not permitted",
    ),
    ("a JSON list", [1, 2], 422, "body: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("what", "body", "status", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_one_line(
    client: TestClient, what: str, body: Any, status: int, reason: str
) -> None:
    if isinstance(body, bytes):
        reply = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    else:
        reply = client.post("/v1/score", json=body)
    assert reply.status_code == status, reply.text
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert detail.startswith(reason), detail


def test_unknown_keys_are_scored_cold_and_flagged(client: TestClient) -> None:
    reply = client.post("/v1/score", json={"user_id": 10_000, "item_ids": [1000, 99_999]})
    assert reply.status_code == 200
    got = reply.json()
    assert len(got["scores"]) == 2 and all(0 < s < 1 for s in got["scores"])
    assert got["missing"]["user_knowledge"] and got["missing"]["user_features"]
    assert got["missing"]["item_knowledge"] == [99_999]
    assert got["missing"]["item_features"] == [99_999]
    assert got["category_ids"] == [item_category(1000), None]
    metrics = client.get("/metrics").text
    assert 'keep_serve_missing_keys_total{entity="item"} 1.0' in metrics
    assert 'keep_serve_requests_total{status="200"} 1.0' in metrics
    assert "keep_serve_model_version 1.0" in metrics


def test_degraded_without_pointer_never_zeros(world: Settings, client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    import sqlite3

    conn = sqlite3.connect(world.feast.store_root / "online.db")
    with conn:
        conn.execute("DELETE FROM keep_publication")
    conn.close()
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    reply = client.post("/v1/score", json={"user_id": 1, "item_ids": [1000]})
    assert reply.status_code == 503
    assert "no online knowledge snapshot of lineage L1" in reply.json()["detail"]


def test_store_down_is_503(tmp_path: Path) -> None:
    from keep.store.redis_server import start, stop

    server = start(tmp_path / "redis", password="s3cret-pass")
    settings = _settings(
        tmp_path,
        online_store="redis",
        redis_connection=server.address,
        redis_password=server.password,
    )
    try:
        serving_world(settings, "L1")
        with TestClient(create_app(settings)) as client:
            body = {"user_id": 1, "item_ids": [1000, 1001]}
            assert client.post("/v1/score", json=body).status_code == 200
            stop(server)
            reply = client.post("/v1/score", json=body)
            assert reply.status_code == 503
            detail = reply.json()["detail"]
            assert detail.startswith("online store unavailable") and "\n" not in detail
            assert "s3cret-pass" not in detail
            assert client.get("/healthz").status_code == 503
    finally:
        stop(server)


def test_lineage_pinning_across_a_new_lineage(world: Settings, client: TestClient) -> None:
    body = {"user_id": 3, "item_ids": [1000, 1001, 1002]}
    first = client.post("/v1/score", json=body).json()
    assert (first["knowledge"]["lineage"], first["knowledge"]["slot"]) == ("L1", "blue")

    # A new lineage goes live before any model trained on it is registered.
    write_knowledge_snapshot(world, "L2", salt="new space")
    publish_knowledge(world, D1, "L2", gate=True)
    assert read_pointer(world)["live"] == "green"
    pinned = client.post("/v1/score", json=body).json()
    assert pinned["knowledge"] == first["knowledge"]  # still L1, from the other slot
    assert pinned["scores"] == first["scores"]

    # Publishing again would overwrite L1's last snapshot: refused while v1 is live.
    with pytest.raises(GateFailed, match="pinned"):
        publish_knowledge(world, D1, "L2", gate=True)
    assert read_pointer(world)["slots"]["blue"]["lineage"] == "L1"

    # A model trained on L2 is registered: the service swaps to it and reads L2.
    register_model(world, "L2", seed=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = client.post("/v1/score", json=body).json()
        if now["model"]["version"] == 2:
            break
        time.sleep(0.1)
    assert now["model"]["version"] == 2
    assert (now["knowledge"]["lineage"], now["knowledge"]["slot"]) == ("L2", "green")
    publish_knowledge(world, D1, "L2", gate=True)  # L1 is no longer pinned


def test_hot_swap_under_a_request_stream(world: Settings) -> None:
    import httpx
    import uvicorn

    from tests.conftest import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(world), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    results: list[tuple[int, int | None, float]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            rng = np.random.default_rng(5)
            while not stop.is_set():
                body = {
                    "user_id": int(rng.integers(1, USERS)),
                    "item_ids": [int(i) for i in rng.integers(1000, 1000 + ITEMS, 50)],
                }
                t0 = time.perf_counter()
                try:
                    reply = http.post("/v1/score", json=body)
                    version = reply.json().get("model", {}).get("version")
                    results.append((reply.status_code, version, time.perf_counter() - t0))
                except httpx.HTTPError:
                    results.append((0, None, time.perf_counter() - t0))

    client_thread = threading.Thread(target=stream)
    client_thread.start()
    try:
        time.sleep(1.0)
        register_model(world, "L1", seed=7, snapshot_ds="2026-01-04")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(v == 2 for _, v, _ in results):
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        client_thread.join()
        server.should_exit = True
        thread.join(timeout=10)
    statuses = [s for s, _, _ in results]
    versions = [v for _, v, _ in results]
    assert len(results) > 50
    assert statuses.count(200) == len(results), {s: statuses.count(s) for s in set(statuses)}
    assert versions[0] == 1 and versions[-1] == 2
    swapped_at = versions.index(2)
    assert all(v == 2 for v in versions[swapped_at:])  # never back to the old version
    assert max(t for _, _, t in results) < 2.0
    json.dumps(results[:3])

"""`keep serve`: the online scoring service (FastAPI, run by uvicorn).

Endpoints (docs/serving.md):

* ``POST /v1/score`` -- ``{"user_id": 7, "item_ids": [11, 12], "category_ids": [3, 3],
  "positions": [1, 2]}`` (categories and positions optional) → one click probability per
  candidate in request order, the model version, the knowledge lineage and snapshot read,
  and which keys were missing (scored with the cold path).
* ``GET /healthz`` -- 200 when a model and knowledge of its lineage are loaded, else 503
  with the reason ("degraded").
* ``GET /metrics`` -- Prometheus: requests by status, latency histogram, keys read and
  missing by entity, live model version, knowledge snapshot.

Errors are one line in ``{"detail": ...}``: 400 malformed JSON, 422 a request that breaks
a rule (types, negative ids, more than ``serve.max_candidates`` candidates, lists of
different lengths), 503 when the store cannot be read or no model / knowledge is ready --
never a score computed from missing data. Request values only ever reach the stores as
bound parameters or keys, never as SQL text or file paths.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from keep.core.config import Settings, load_settings
from keep.core.errors import InputError, StoreUnavailable
from serving.scorer import NotReady, Scorer

log = logging.getLogger(__name__)

NonNegative = Annotated[int, Field(ge=0)]


class ScoreRequest(BaseModel):
    """One user and its candidate items."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: NonNegative
    item_ids: list[NonNegative] = Field(min_length=1)
    category_ids: list[NonNegative] | None = None
    positions: list[NonNegative] | None = None


class Metrics:
    """The service's Prometheus metrics (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "keep_serve_requests",
            "Scoring requests by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keep_serve_request_seconds",
            "Time to answer a scoring request (server side).",
            buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.keys = Counter(
            "keep_serve_keys",
            "Knowledge keys read, by entity.",
            ["entity"],
            registry=self.registry,
        )
        self.missing = Counter(
            "keep_serve_missing_keys",
            "Knowledge keys not found (scored with the cold path), by entity; the missing-key "
            "rate is this over keep_serve_keys_total.",
            ["entity"],
            registry=self.registry,
        )
        self.version = Gauge(
            "keep_serve_model_version",
            "Registered version of the live model.",
            registry=self.registry,
        )
        self.swaps = Counter(
            "keep_serve_model_swaps", "Model versions swapped in.", registry=self.registry
        )
        self.knowledge = Info(
            "keep_serve_knowledge",
            "Knowledge lineage and snapshot last served.",
            registry=self.registry,
        )


def _one_line(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if not errors:
        return 422, "invalid request"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return 400, f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"{where}: {first.get('msg')}"


def create_app(settings: Settings | None = None, *, scorer: Scorer | None = None) -> FastAPI:
    """The service for ``settings`` (default: keep.yaml + ``KEEP_*``)."""
    settings = settings or load_settings()
    scorer = scorer or Scorer(settings)
    metrics = Metrics()
    stop = threading.Event()
    limit = settings.serve.max_candidates

    def swap_if_new() -> None:
        if scorer.refresh():
            metrics.swaps.inc()
        if scorer.live is not None:
            metrics.version.set(scorer.live.version)

    def reloader() -> None:
        while not stop.wait(settings.serve.reload_interval_s):
            try:
                swap_if_new()
            except Exception:  # the reloader must outlive any one failure
                log.exception("model reload failed; the running version keeps serving")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        swap_if_new()
        thread = threading.Thread(target=reloader, name="keep-model-reloader", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    app = FastAPI(
        title="KEEP scoring service",
        description="Scores a user's candidate items with the live downstream model and "
        "knowledge from the online store.",
        lifespan=lifespan,
    )
    app.state.scorer = scorer
    app.state.metrics = metrics

    def error(status: int, detail: str) -> JSONResponse:
        metrics.requests.labels(str(status)).inc()
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _one_line(exc)
        return error(status, detail)

    @app.post("/v1/score")
    def score(body: ScoreRequest) -> Any:
        start = time.perf_counter()
        n = len(body.item_ids)
        if n > limit:
            return error(422, f"item_ids: {n} candidates, at most {limit} per request")
        for name in ("category_ids", "positions"):
            given = getattr(body, name)
            if given is not None and len(given) != n:
                return error(
                    422, f"{name}: {len(given)} values for {n} item_ids (one per candidate)"
                )
        try:
            result = scorer.score(body.user_id, body.item_ids, body.category_ids, body.positions)
        except StoreUnavailable as e:
            return error(503, f"online store unavailable: {e}")
        except NotReady as e:
            return error(503, f"not ready: {e}")
        except InputError as e:
            return error(422, str(e))
        for entity, count in result.keys.items():
            metrics.keys.labels(entity).inc(count)
            metrics.missing.labels(entity).inc(result.missing_keys[entity])
        metrics.knowledge.info({"lineage": result.lineage, "snapshot_ds": str(result.snapshot_ds)})
        metrics.requests.labels("200").inc()
        metrics.latency.observe(time.perf_counter() - start)
        return {
            "scores": result.scores,
            "model": {"name": result.model.name, "version": result.model.version},
            "knowledge": {
                "lineage": result.lineage,
                "snapshot_ds": result.snapshot_ds,
                "slot": result.slot,
            },
            "category_ids": result.category_ids,
            "missing": result.missing,
        }

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ready, details = scorer.health()
        return JSONResponse(details, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory for multi-worker runs (each worker reads keep.yaml + KEEP_*)."""
    return create_app()


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> None:
    """Serve until interrupted (`keep serve`)."""
    import uvicorn

    host = host or settings.serve.host
    port = port or settings.serve.port
    workers = workers or settings.serve.workers
    log.info("keep serve on http://%s:%d (%d worker(s))", host, port, workers)
    if workers > 1:
        uvicorn.run(
            "serving.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    else:
        uvicorn.run(
            create_app(settings), host=host, port=port, log_level="warning", access_log=False
        )

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
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
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


class _Labelled:
    """A counter by one label, in process."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def labels(self, value: str) -> _Labelled._Child:
        return _Labelled._Child(self, value)

    class _Child:
        def __init__(self, parent: _Labelled, value: str) -> None:
            self.parent, self.value = parent, value

        def inc(self, amount: float = 1.0) -> None:
            values = self.parent.values
            values[self.value] = values.get(self.value, 0.0) + amount


class Metrics:
    """The service's Prometheus metrics, exposed through one custom collector.

    The values are plain in-process numbers: importing feast switches prometheus_client's
    own metric classes to its multiprocess mode for the whole process (feast/metrics.py
    sets ``PROMETHEUS_MULTIPROC_DIR``), where every metric of a name shares one mmap'd
    value across apps and processes. With ``serve.workers`` > 1 each worker reports its own.
    """

    BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 1.0)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = _Labelled()
        self.keys = _Labelled()
        self.missing = _Labelled()
        self.version: int | None = None
        self.swaps = 0
        self.knowledge: dict[str, str] = {}
        self._buckets = [0] * len(self.BUCKETS)
        self._count = 0
        self._sum = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def count(self, what: _Labelled, label: str, amount: float = 1.0) -> None:
        with self._lock:
            what.labels(label).inc(amount)

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._count += 1
            self._sum += seconds
            for i, bound in enumerate(self.BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = CounterMetricFamily(
                "keep_serve_requests", "Scoring requests by HTTP status.", labels=["status"]
            )
            for status, n in sorted(self.requests.values.items()):
                requests.add_metric([status], n)
            yield requests
            buckets = [(str(b), float(n)) for b, n in zip(self.BUCKETS, self._buckets, strict=True)]
            yield HistogramMetricFamily(
                "keep_serve_request_seconds",
                "Time to answer a scoring request (server side).",
                buckets=[*buckets, ("+Inf", float(self._count))],
                sum_value=self._sum,
            )
            for name, help_text, source in (
                ("keep_serve_keys", "Knowledge keys read, by entity.", self.keys),
                (
                    "keep_serve_missing_keys",
                    "Knowledge keys not found (scored with the cold path), by entity; the "
                    "missing-key rate is this over keep_serve_keys_total.",
                    self.missing,
                ),
            ):
                family = CounterMetricFamily(name, help_text, labels=["entity"])
                for entity, n in sorted(source.values.items()):
                    family.add_metric([entity], n)
                yield family
            if self.version is not None:
                yield GaugeMetricFamily(
                    "keep_serve_model_version",
                    "Registered version of the live model.",
                    value=self.version,
                )
            yield CounterMetricFamily(
                "keep_serve_model_swaps", "Model versions swapped in.", value=self.swaps
            )
            if self.knowledge:
                yield InfoMetricFamily(
                    "keep_serve_knowledge",
                    "Knowledge lineage and snapshot last served.",
                    value=self.knowledge,
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


router = APIRouter()


def _error(metrics: Metrics, status: int, detail: str) -> JSONResponse:
    metrics.count(metrics.requests, str(status))
    return JSONResponse({"detail": detail}, status_code=status)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    status, detail = _one_line(exc)
    return _error(request.app.state.metrics, status, detail)


@router.post("/v1/score")
async def score(body: ScoreRequest, request: Request) -> Any:
    """Click probabilities of the candidates, in request order (see the module docstring).

    Scored inline on the event loop, one request at a time per worker: the work is a few
    milliseconds of CPU-bound Python, and a thread pool only adds GIL contention (under
    open-loop load it cut the throughput of one worker from about 190 to 60 requests/s).
    Parallelism comes from worker processes (``serve.workers``).
    """
    state = request.app.state
    metrics: Metrics = state.metrics
    scorer: Scorer = state.scorer
    start = time.perf_counter()
    n = len(body.item_ids)
    if n > state.max_candidates:
        return _error(
            metrics, 422, f"item_ids: {n} candidates, at most {state.max_candidates} per request"
        )
    for name in ("category_ids", "positions"):
        given = getattr(body, name)
        if given is not None and len(given) != n:
            return _error(
                metrics, 422, f"{name}: {len(given)} values for {n} item_ids (one per candidate)"
            )
    try:
        result = scorer.score(body.user_id, body.item_ids, body.category_ids, body.positions)
    except StoreUnavailable as e:
        return _error(metrics, 503, f"online store unavailable: {e}")
    except NotReady as e:
        return _error(metrics, 503, f"not ready: {e}")
    except InputError as e:
        return _error(metrics, 422, str(e))
    for entity, count in result.keys.items():
        metrics.count(metrics.keys, entity, count)
        metrics.count(metrics.missing, entity, result.missing_keys[entity])
    metrics.knowledge = {"lineage": result.lineage, "snapshot_ds": str(result.snapshot_ds)}
    metrics.count(metrics.requests, "200")
    metrics.observe(time.perf_counter() - start)
    # A JSONResponse of plain types: no per-element encoding pass over the score list.
    return JSONResponse(
        {
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
    )


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 when ready to score; 503 with the reason when degraded."""
    ready, details = request.app.state.scorer.health()
    return JSONResponse(details, status_code=200 if ready else 503)


@router.get("/metrics")
def prometheus(request: Request) -> Response:
    """Prometheus text exposition of the service's metrics."""
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: Settings | None = None, *, scorer: Scorer | None = None) -> FastAPI:
    """The service for ``settings`` (default: keep.yaml + ``KEEP_*``)."""
    settings = settings or load_settings()
    live_scorer = scorer or Scorer(settings)
    metrics = Metrics()
    stop = threading.Event()

    def swap_if_new() -> None:
        if live_scorer.refresh():
            metrics.swaps += 1
        if live_scorer.live is not None:
            metrics.version = live_scorer.live.version

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
    app.state.scorer = live_scorer
    app.state.metrics = metrics
    app.state.max_candidates = settings.serve.max_candidates
    app.add_exception_handler(RequestValidationError, _invalid)
    app.include_router(router)
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
    workers = workers or settings.serve.workers or os.cpu_count() or 1
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

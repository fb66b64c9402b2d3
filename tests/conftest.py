"""Shared fixtures: one SparkSession for the whole test session, isolated settings per test."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import shutil
import socket
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from keep.core.config import Settings, load_settings
from keep.lake.spark import get_spark
from keep.store.redis_server import RedisServer
from keep.store.redis_server import start as start_redis
from keep.store.redis_server import stop as stop_redis

REPO = Path(__file__).resolve().parents[1]

# Which xdist worker runs which tests (the in-process Spark tests together): tests/xdist_groups.py
pytest_plugins = ["tests.xdist_groups"]


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings rooted at ``home`` (lake, raw files, GE, Airflow all under it), tiny world,
    demo mode on (land_raw generates the world's raw files; it is off by default)."""
    base: dict[str, object] = {
        "home": home,
        "spark": {"jars_dir": REPO / ".cache" / "jars", "shuffle_partitions": 2},
        "generator": {"n_users": 300, "n_items": 200, "impressions_per_day": 2_000},
        "airflow": {"demo_mode": True},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}  # type: ignore[dict-item]
        else:
            base[key] = value
    return load_settings(**base)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a private server in a test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def let_postgres_in(path: Path) -> None:
    """Let other users through ``path`` and the folders above it (x, not r): as root, the
    private PostgreSQL runs as the postgres user, and pytest's temp folders are 0700."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder every xdist worker of this test session shares."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` across the session's worker processes."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """A folder ``build`` fills once per test session, whichever xdist worker asks first
    (the others wait on a lock in the session's shared temp folder, then reuse it): for
    fixtures that are costly to build and only read by their tests (a lake of many days)."""
    shared = _session_dir(tmp_path_factory)
    folder = shared / name
    with _locked(shared / f"{name}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    settings = make_settings(tmp_path_factory.mktemp("spark-home"))
    session = get_spark(settings)
    yield session
    session.stop()


# The days of the session's shared Spark lake (the tests' default world), and the daily
# steps it ran on each of them (the Spark ones; land_raw is the generator's files).
SPARK_LAKE_DAYS = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(3)]
SPARK_STEPS = ("land_raw", "ingest", "aggregate", "samples")


def run_spark_days(
    spark: SparkSession,
    settings: Settings,
    days: list[dt.date],
    samples_on: Collection[dt.date] | None = None,
) -> None:
    """Land (the generator's files), ingest and aggregate ``days`` in order with the Spark
    jobs; samples on the days of ``samples_on`` (every day when None)."""
    from keep.sources import generator
    from spark_jobs.aggregate import run_aggregate
    from spark_jobs.ingest import run_ingest
    from spark_jobs.samples import run_samples

    for ds in days:
        generator.write_day(settings, ds)
        run_ingest(spark, settings, ds)
        run_aggregate(spark, settings, ds)
        if samples_on is None or ds in samples_on:
            run_samples(spark, settings, ds)


@pytest.fixture(scope="session")
def spark_lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Home of a lake the tests only read: the default tiny world's raw files of
    :data:`SPARK_LAKE_DAYS`, each day ingested, aggregated and sampled in order by the Spark
    jobs (no gates). Built once per test session, whichever worker asks first; the
    SparkSession is asked for only to build it (a worker that finds it built starts none)."""
    return built_once(
        tmp_path_factory,
        "spark-lake",
        lambda home: run_spark_days(
            request.getfixturevalue("spark"), make_settings(home), SPARK_LAKE_DAYS
        ),
    )


@pytest.fixture(scope="session")
def knowledge_lake(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Home of the shared lake's first two days carried through every other daily step in
    this process, day after day, as ``keep run`` runs them: the lake gates, pre-training,
    export, knowledge gate, publication (its Asset event handled as the downstream DAG
    does: one model version per snapshot) and maintenance. Built once per test session
    from a copy of :func:`spark_lake`; tests only read it or copy it."""
    from keep.flows import downstream, pipeline

    def build(home: Path) -> None:
        lake = request.getfixturevalue("spark_lake")
        shutil.copytree(lake, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
        settings = make_settings(home)
        for ds in SPARK_LAKE_DAYS[:2]:
            for name in pipeline.STEPS:
                if name not in SPARK_STEPS:
                    outcome = pipeline.run_step(settings, name, ds)["result"]
                    if name == "publish_knowledge":
                        assert downstream.run_event(settings, [outcome])["status"] == "registered"

    return built_once(tmp_path_factory, "knowledge-lake", build)


@pytest.fixture(scope="session")
def spark_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``spark.remote`` of a Spark server (keep.lake.spark_server) shared by the tests whose
    days run under Airflow as Spark Connect clients: one JVM, warmed by the first of them,
    instead of a cold one per test. Started by the first worker that asks, stopped when the
    last worker that asked is done (each worker signs in under ``users/``)."""
    from keep.lake import spark_server

    shared = _session_dir(tmp_path_factory)
    folder = shared / "spark-server"
    users = folder / "users"
    me = users / os.environ.get("PYTEST_XDIST_WORKER", "main")
    with _locked(shared / "spark-server.lock"):
        users.mkdir(parents=True, exist_ok=True)
        server = spark_server.start(make_settings(shared / "spark-server-home"), folder)
        me.touch()
    yield server.url
    with _locked(shared / "spark-server.lock"):
        me.unlink(missing_ok=True)
        if not any(users.iterdir()):
            spark_server.stop_dir(folder)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


# --------------------------------------------------------------------------- Feast stores


# Every Redis test connects with a password (an ACL user's), as a deployment should; the
# characters a connection string or a config file could trip over are part of it.
REDIS_PASSWORD = 'te st"pw=1\\'


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (127.0.0.1, free port, own dir, password) for the session."""
    server = start_redis(tmp_path_factory.mktemp("redis"), password=REDIS_PASSWORD)
    yield server
    stop_redis(server)


def redis_client(server: RedisServer) -> Any:
    """A redis-py client logged in to ``server``."""
    import redis

    return redis.Redis(
        host=server.host, port=server.port, username=server.user, password=server.password
    )


@pytest.fixture(params=["sqlite", "redis"])
def feast_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a Feast store of each kind; small publish chunks (several per table)."""
    feast: dict[str, object] = {"online_store": request.param, "publish_chunk_rows": 16}
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_client(server).flushall()
        feast["redis_connection"] = server.address
        feast["redis_password"] = server.password
        feast["redis_user"] = server.user
    return make_settings(tmp_path, feast=feast, pretrain={"knowledge_dim": 8})

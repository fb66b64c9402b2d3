"""The private redis-server: password (ACL), persistence across a crash and a restart, and
the password kept out of everything people or other processes can read.

Expected values come from the test itself: the password it chose, the vectors it wrote to
the lake, the snapshot days it published.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from keep.core.config import Settings, display_settings, load_settings, mask_connection_string
from keep.core.errors import SetupError
from keep.flows.airflow_env import airflow_environ, command_environ, redis_password_file
from keep.flows.cli import app
from keep.store.feast_repo import apply_repo, feast_env, repo_config, shell_exports
from keep.store.publication import live_snapshot, publish_knowledge, read_pointer, rollback
from keep.store.redis_server import (
    CONF_FILE,
    RedisServer,
    feast_connection_string,
    restart,
    start,
    stop,
)
from serving.retrieval import KnowledgeRetriever
from tests.conftest import make_settings, redis_client
from tests.keep.store.feast_data import Snapshot, knowledge_keys, write_all_stats, write_snapshot

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
SECRET = "s3cret pass=word\"'\\"


def client_without_retries(server: RedisServer, **credentials: str) -> redis.Redis:
    """A redis-py client that fails at once (redis-py retries a refused login with backoff)."""
    return redis.Redis(
        host=server.host, port=server.port, retry=Retry(NoBackoff(), 0), **credentials
    )


def test_unauthenticated_clients_are_refused(redis_server: RedisServer) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        client_without_retries(redis_server).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        client_without_retries(redis_server, password="not-it").ping()
    client = redis_client(redis_server)
    assert client.ping()
    assert redis_server.password and redis_server.password not in repr(redis_server)
    conf = redis_server.directory / CONF_FILE
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert redis_server.password not in conf.read_text()  # only its SHA-256
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_acl_user_other_than_default(tmp_path: Path) -> None:
    server = start(tmp_path / "redis", password=SECRET, user="keep", appendonly=False)
    try:
        assert redis_client(server).ping()
        # The default user is disabled: its password (the same one) does not work either.
        with pytest.raises(redis.exceptions.AuthenticationError):
            client_without_retries(server, password=SECRET).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            client_without_retries(server).ping()
    finally:
        stop(server)


def test_feast_reads_the_credentials_back_verbatim() -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore

    for password in (SECRET, "123", "true", "null", "ü", '"quoted"'):
        for user in ("default", "keep"):
            nodes, params = RedisOnlineStore._parse_connection_string(
                feast_connection_string("10.0.0.1:6380,db=2", password=password, user=user)
            )
            assert nodes == [{"host": "10.0.0.1", "port": "6380"}]
            expected = {"db": 2, "password": password}
            if user != "default":
                expected["username"] = user
            assert params == expected
    assert feast_connection_string("h:1", password=None) == "h:1"
    with pytest.raises(SetupError, match="must not contain a comma"):
        feast_connection_string("h:1", password="a,b")
    with pytest.raises(SetupError, match="feast.redis_password") as refused:
        feast_connection_string("h:1,password=inline", password=None)
    assert "inline" not in str(refused.value)
    masked = mask_connection_string(feast_connection_string("h:1", password=SECRET) + ",ssl=true")
    assert masked == "h:1,password=***,ssl=true"


# --------------------------------------------------------------------------- persistence


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A private password-protected server for one test, which may restart it: the list
    holds the current one (stopped at the end)."""
    servers = [start(tmp_path / "redis", password=SECRET)]
    yield servers
    stop(servers[-1])


def assert_live(settings: Settings, snapshot: Snapshot, slot: str, ds: dt.date) -> None:
    """The pointer names ``slot`` with lineage L1 and day ``ds``, and a sample of every
    entity's keys is served with exactly the vectors written to the lake."""
    live = live_snapshot(settings)
    assert live is not None
    assert (live["slot"], live["lineage"], live["snapshot_ds"]) == (slot, "L1", ds.isoformat())
    retriever = KnowledgeRetriever(settings)
    n = len(snapshot["item"][1])
    rows = np.arange(0, n, 3)
    uc = knowledge_keys("user_category", n)
    items = knowledge_keys("item", n)["item_id"]
    for row in rows[:6]:
        user = int(uc["user_id"][row])
        batch = retriever.fetch(user, [int(items[row])], [int(uc["category_id"][row])])
        assert batch.lineage == "L1" and batch.snapshot_ds == ds.isoformat()
        np.testing.assert_array_equal(batch.items[0], snapshot["item"][1][row])
        np.testing.assert_array_equal(batch.user_category[0], snapshot["user_category"][1][row])
        np.testing.assert_array_equal(batch.user, snapshot["user"][1][user - 1])
        assert not (batch.user_missing or batch.items_missing[0] or batch.user_category_missing[0])


def test_restart_keeps_the_publication_pointer_and_slots(
    tmp_path: Path, own_server: list[RedisServer]
) -> None:
    server = own_server[0]
    s = make_settings(
        tmp_path / "home",
        feast={
            "online_store": "redis",
            "redis_connection": server.address,
            "redis_password": SECRET,
            "publish_chunk_rows": 16,
        },
        pretrain={"knowledge_dim": 8},
    )
    first = write_snapshot(s, "L1", D1, n=24)
    second = write_snapshot(s, "L1", D2, n=18)
    write_all_stats(s, D1)
    apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)
    publish_knowledge(s, D2, "L1", gate=True)
    before = read_pointer(s)
    assert before["live"] == "green"
    assert before["slots"]["blue"]["snapshot_ds"] == D1.isoformat()
    assert before["slots"]["green"]["snapshot_ds"] == D2.isoformat()

    # A crash: SIGKILL, no shutdown. The append-only file is fsynced once a second, so
    # what was written more than a second ago survives.
    time.sleep(1.5)
    os.kill(server.pid, signal.SIGKILL)
    server = own_server[0] = restart(server)
    assert server.port == int(s.feast.redis_connection.rsplit(":", 1)[1])
    assert read_pointer(s) == before
    assert_live(s, second, "green", D2)
    # The other slot survived too: rolling back serves day 1 again.
    assert rollback(s)["snapshot_ds"] == D1.isoformat()
    assert_live(s, first, "blue", D1)

    # A clean stop (SIGTERM) and start on the same directory and port.
    after_rollback = read_pointer(s)
    server = own_server[0] = restart(server)
    assert read_pointer(s) == after_rollback
    assert_live(s, first, "blue", D1)


def test_start_refuses_a_directory_whose_server_runs(own_server: list[RedisServer]) -> None:
    with pytest.raises(SetupError, match="already runs"):
        start(own_server[0].directory, password=SECRET)


# --------------------------------------------------------------------------- never shown


def test_the_password_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEP_FEAST__REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("KEEP_FEAST__ONLINE_STORE", "redis")
    monkeypatch.setenv("KEEP_CONFIG", str(tmp_path / "no-such-keep.yaml"))
    monkeypatch.setenv("KEEP_HOME", str(tmp_path))
    settings = load_settings()
    assert settings.feast.redis_password is not None
    assert settings.feast.redis_password.get_secret_value() == SECRET

    # `keep config`
    shown = CliRunner().invoke(app, ["config"])
    assert shown.exit_code == 0, shown.output
    assert "redis_password: '**********'" in shown.output
    assert SECRET not in shown.output and SECRET not in json.dumps(display_settings(settings))

    # Feast's variables and shell exports carry no password; the Feast config does.
    assert SECRET not in json.dumps(feast_env(settings)) and SECRET not in shell_exports(settings)
    config = repo_config(settings)
    assert config.online_store.connection_string == feast_connection_string(
        settings.feast.redis_connection, password=SECRET
    )
    # A Feast config error does not quote it.
    with pytest.raises(SetupError) as bad:
        repo_config(settings, key_ttl_seconds="not a number")
    assert SECRET not in str(bad.value) and json.dumps(SECRET) not in str(bad.value)

    # Airflow's task environment: not in clear, in a 0600 file the tasks read it from.
    for env in (
        airflow_environ(settings),
        command_environ(settings),
        airflow_environ(settings, services=True),
    ):
        assert not [k for k, v in env.items() if SECRET in v or json.dumps(SECRET)[1:-1] in v]
        assert "KEEP_FEAST__REDIS_PASSWORD" not in env
    secret_file = redis_password_file(settings)
    assert secret_file.read_text() == SECRET
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    task_env = command_environ(settings)
    assert json.loads(task_env["KEEP_FEAST"])["redis_password_file"] == str(secret_file)
    for name in [k for k in os.environ if k.startswith("KEEP_")]:
        monkeypatch.delenv(name)
    for name, value in task_env.items():
        if name.startswith("KEEP_"):
            monkeypatch.setenv(name, value)
    in_task = load_settings()
    assert in_task.feast.redis_password is not None
    assert in_task.feast.redis_password.get_secret_value() == SECRET

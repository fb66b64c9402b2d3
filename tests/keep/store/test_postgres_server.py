"""The private PostgreSQL server: start (initdb once), connect with the generated password,
idempotent start, stop by PID leaving no process and a free port, restart on the same data."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import psutil
import psycopg2
import pytest
import sqlalchemy

from keep.core.errors import SetupError
from keep.store import postgres_server
from keep.store.postgres_server import start, stop, stop_dir
from tests.conftest import free_port, let_postgres_in


def postmasters(data_dir: Path) -> list[int]:
    """Live processes whose command line names ``data_dir`` (the postmaster)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if str(data_dir) in (proc.info["cmdline"] or []):
            found.append(proc.info["pid"])
    return found


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` and a server could bind it again (as servers
    do, with SO_REUSEADDR: closed connections may linger in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


def test_start_connect_stop(tmp_path: Path) -> None:
    let_postgres_in(tmp_path)
    directory = tmp_path / "pg"
    port = free_port()
    server = start(directory, port=port)
    try:
        assert (server.host, server.port) == ("127.0.0.1", port)
        assert start(directory, port=port) == server  # idempotent: the running one
        password = server.password_file.read_text().strip()
        assert stat.S_IMODE(server.password_file.stat().st_mode) == 0o600
        assert password not in server.display_url and "***" in server.display_url
        assert server.url == (f"postgresql+psycopg2://keep:{password}@127.0.0.1:{port}/airflow")

        engine = sqlalchemy.create_engine(server.url)
        with engine.connect() as con:
            user, database = con.execute(
                sqlalchemy.text("SELECT current_user, current_database()")
            ).one()
        engine.dispose()
        assert (user, database) == ("keep", "airflow")
        # Password authentication, not trust.
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(
                host="127.0.0.1", port=port, user="keep", password="wrong", dbname="airflow"
            )
        assert postmasters(directory / "data") == [server.pid]
    finally:
        assert stop_dir(directory) is True
    assert postmasters(directory / "data") == []
    assert port_is_free(port)
    assert not (directory / postgres_server.PID_FILE).exists()
    assert stop_dir(directory) is False  # idempotent

    # A restart keeps the cluster (no new initdb, same password).
    again = start(directory, port=port)
    try:
        assert again.password_file.read_text().strip() == password
        engine = sqlalchemy.create_engine(again.url)
        with engine.connect() as con:
            assert con.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        engine.dispose()
    finally:
        stop(again)
    assert postmasters(directory / "data") == []
    assert port_is_free(port)


def test_missing_binaries_is_a_setup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_server.shutil, "which", lambda name: None)
    monkeypatch.setattr(postgres_server, "_DEBIAN_ROOT", tmp_path / "nothing")
    with pytest.raises(SetupError, match="setup.sh"):
        start(tmp_path / "pg", port=free_port())
    assert not (tmp_path / "pg").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to the postgres user")
def test_unreachable_folder_is_a_setup_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(SetupError, match="chmod o\\+x"):
        start(tmp_path / "pg", port=free_port())


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    let_postgres_in(tmp_path)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(SetupError) as failed:
            start(tmp_path / "pg", port=port)
    message = str(failed.value)
    assert "\n" not in message
    assert f"port {port} is taken" in message and "postgres.log" in message
    assert postmasters(tmp_path / "pg" / "data") == []
    assert not (tmp_path / "pg" / postgres_server.PID_FILE).exists()

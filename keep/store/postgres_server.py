"""A private PostgreSQL server for one machine: the metadata DB of ``keep airflow up``.

Debian's PostgreSQL (``apt-get install postgresql``; ``scripts/setup.sh`` installs it when
``initdb`` is missing) is run from its binaries, without the Debian cluster tooling:

* ``initdb`` once, a cluster in ``<directory>/data`` with password authentication
  (scram-sha-256) for the role ``keep``, whose generated password is kept in
  ``<directory>/password`` (mode 0600, never printed); a database ``airflow``;
* ``postgres`` in the foreground as a child process in its own session, listening only on
  127.0.0.1 at the given port, its unix socket in ``<directory>``, its output in
  ``<directory>/postgres.log``, its pid in ``<directory>/postgres.pid``.

PostgreSQL refuses to run as root: when this process is root, ``initdb`` and ``postgres``
run as the ``postgres`` system user, which then owns ``<directory>``; the password file
stays root's. The server is stopped by its PID (smart shutdown, then fast, then SIGKILL),
never by name, so other PostgreSQL servers on the machine are left alone.

    server = start(Path("var/airflow/postgres"), port=54329)   # idempotent
    server.url           # postgresql+psycopg2://keep:<password>@127.0.0.1:54329/airflow
    server.display_url   # the same without the password, for logs
    stop(server)         # or stop_dir(Path("var/airflow/postgres")) from another process
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from keep.core.errors import SetupError

PID_FILE = "postgres.pid"
PASSWORD_FILE = "password"
STATE_FILE = "server.json"
LOG_FILE = "postgres.log"
DATA_DIR = "data"
ROLE = "keep"
DATABASE = "airflow"
DEFAULT_PORT = 54329
# The socket's path must fit in sockaddr_un (107 bytes); beyond, TCP on 127.0.0.1 only.
_MAX_SOCKET_PATH = 100
_RUN_AS = "postgres"  # the system user PostgreSQL runs as when this process is root
# Debian's packages install each major version's binaries under <root>/<major>/bin.
_DEBIAN_ROOT = Path("/usr/lib/postgresql")


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server started by :func:`start`."""

    host: str
    port: int
    pid: int
    directory: Path
    user: str = ROLE
    database: str = DATABASE

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE

    @property
    def url(self) -> str:
        """SQLAlchemy URL (with the password: never log it; see :attr:`display_url`)."""
        password = self.password_file.read_text().strip()
        return (
            f"postgresql+psycopg2://{self.user}:{password}@{self.host}:{self.port}/{self.database}"
        )

    @property
    def display_url(self) -> str:
        """:attr:`url` with the password masked."""
        return f"postgresql+psycopg2://{self.user}:***@{self.host}:{self.port}/{self.database}"


def find_binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``: the one of ``initdb`` on PATH, else
    the newest ``/usr/lib/postgresql/<major>/bin``."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(
        _DEBIAN_ROOT.glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise SetupError(
        "PostgreSQL not found (initdb and postgres, on PATH or in /usr/lib/postgresql/*/bin): "
        "run ./scripts/setup.sh or `apt-get install -y postgresql` (Debian package), "
        "or point airflow.database_url at an existing database"
    )


def _run_as() -> dict[str, Any]:
    """``subprocess`` arguments that drop root to the postgres system user (none otherwise)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(_RUN_AS)
    except KeyError:
        raise SetupError(
            "PostgreSQL refuses to run as root and there is no 'postgres' system user: "
            "install Debian's postgresql package (./scripts/setup.sh) or run as another user"
        ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _check_reachable(directory: Path, run_as: dict[str, Any]) -> None:
    """Every folder above ``directory`` must let the postgres user through (x permission)."""
    if not run_as:
        return
    groups = {run_as["group"], *(g.gr_gid for g in grp.getgrall() if _RUN_AS in g.gr_mem)}
    for folder in directory.parents:
        st = folder.stat()
        if st.st_uid == run_as["user"]:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise SetupError(
                f"PostgreSQL runs as the '{_RUN_AS}' user (not as root), which cannot enter "
                f"{folder}: allow it through (`chmod o+x {folder}`) or put airflow.home "
                "somewhere it can reach"
            )


def _chown(path: Path, run_as: dict[str, Any]) -> None:
    if run_as:
        os.chown(path, run_as["user"], run_as["group"])


def _alive(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a running postmaster of ``data_dir`` (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return str(data_dir) in proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def running(directory: Path) -> PostgresServer | None:
    """The server recorded in ``directory`` when it is running, else None."""
    pid_file, state_file = directory / PID_FILE, directory / STATE_FILE
    if not (pid_file.is_file() and state_file.is_file()):
        return None
    pid = int(pid_file.read_text().strip())
    if not _alive(pid, directory / DATA_DIR):
        return None
    state = json.loads(state_file.read_text())
    return PostgresServer(host=state["host"], port=int(state["port"]), pid=pid, directory=directory)


def _log_size(directory: Path) -> int:
    log = directory / LOG_FILE
    return log.stat().st_size if log.is_file() else 0


def _start_failure(directory: Path, since: int, port: int) -> str:
    """The reason PostgreSQL gave in its log (written after offset ``since``), one line."""
    log = directory / LOG_FILE
    with open(log, "rb") as f:
        f.seek(since)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    reasons = [ln for ln in lines if any(w in ln for w in ("FATAL", "ERROR", "PANIC"))]
    reason = (reasons or lines or ["no output"])[-1]
    reason = reason.split("FATAL:", 1)[-1].strip() if "FATAL:" in reason else reason
    if any("Address already in use" in ln for ln in lines):
        reason += f" (port {port} is taken: set airflow.postgres_port, KEEP_AIRFLOW__POSTGRES_PORT)"
    return reason


def _initdb(bin_dir: Path, directory: Path, run_as: dict[str, Any]) -> None:
    """Create the cluster (once): role ``keep`` with a generated password, scram-sha-256."""
    data = directory / DATA_DIR
    password_file = directory / PASSWORD_FILE
    if not password_file.is_file():
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    # initdb reads the password from a file it can open as the postgres user; removed after.
    init_pw = directory / ".initdb-password"
    fd = os.open(init_pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password_file.read_text().strip() + "\n")
    _chown(init_pw, run_as)
    try:
        proc = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                ROLE,
                f"--pwfile={init_pw}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
            ],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            **run_as,
        )
    finally:
        init_pw.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise SetupError(f"initdb failed ({proc.returncode}) in {data}:\n{proc.stderr[-2000:]}")


def _connect(server: PostgresServer, database: str) -> Any:
    import psycopg2

    return psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password_file.read_text().strip(),
        dbname=database,
        connect_timeout=2,
    )


def _ensure_database(server: PostgresServer) -> None:
    con = _connect(server, "postgres")
    try:
        con.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{server.database}"')
    finally:
        con.close()


def start(
    directory: Path,
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    timeout_s: float = 60.0,
) -> PostgresServer:
    """Start (initialising once) the server under ``directory``; when it is already running,
    return the running one (whatever ``port`` says)."""
    directory = directory.resolve()
    current = running(directory)
    if current is not None:
        return current
    bin_dir = find_binaries()
    run_as = _run_as()
    directory.mkdir(parents=True, exist_ok=True)
    _check_reachable(directory, run_as)
    _chown(directory, run_as)  # postgres writes its socket here
    if not (directory / DATA_DIR / "PG_VERSION").is_file():
        _initdb(bin_dir, directory, run_as)
    socket_dir = str(directory) if len(f"{directory}/.s.PGSQL.{port}") <= _MAX_SOCKET_PATH else ""
    log_start = _log_size(directory)
    with open(directory / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(directory / DATA_DIR),
                "-c",
                f"listen_addresses={host}",
                "-c",
                f"port={port}",
                "-c",
                f"unix_socket_directories={socket_dir}",
                # A small private server: Airflow's few processes, a little memory.
                "-c",
                "max_connections=100",
                "-c",
                "shared_buffers=32MB",
            ],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )
    (directory / PID_FILE).write_text(f"{proc.pid}\n")
    (directory / STATE_FILE).write_text(json.dumps({"host": host, "port": port, "pid": proc.pid}))
    server = PostgresServer(host=host, port=port, pid=proc.pid, directory=directory)
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (directory / PID_FILE).unlink(missing_ok=True)
            raise SetupError(
                f"PostgreSQL did not start on {host}:{port}: "
                f"{_start_failure(directory, log_start, port)}; log: {directory / LOG_FILE}"
            )
        try:
            _ensure_database(server)
            return server
        except Exception as exc:  # not accepting connections yet
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            time.sleep(0.2)
    _kill(proc.pid)
    (directory / PID_FILE).unlink(missing_ok=True)
    raise SetupError(
        f"postgres did not accept connections on {host}:{port} within {timeout_s:.0f} s "
        f"({last_error}; log: {directory / LOG_FILE})"
    )


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaping it when it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill(pid: int, *, smart_s: float = 5.0, fast_s: float = 15.0) -> None:
    """SIGTERM (smart shutdown: waits for clients), then SIGINT (fast: disconnects them),
    then SIGKILL of its process group (the postmaster and its backends)."""
    for sig, wait_s in ((signal.SIGTERM, smart_s), (signal.SIGINT, fast_s)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # started with start_new_session: group id = pid
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not _gone(pid):
        time.sleep(0.05)


def stop(server: PostgresServer) -> None:
    """Stop the server by its PID and remove its pid file."""
    if _alive(server.pid, server.directory / DATA_DIR):
        _kill(server.pid)
    (server.directory / PID_FILE).unlink(missing_ok=True)


def stop_dir(directory: Path) -> bool:
    """Stop the server whose pid file is in ``directory``; False if none was running (a
    stale pid file is removed)."""
    directory = directory.resolve()
    pid_file = directory / PID_FILE
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip())
    alive = _alive(pid, directory / DATA_DIR)
    if alive:
        _kill(pid)
    pid_file.unlink(missing_ok=True)
    return alive

"""A private ``redis-server`` for tests, benchmarks and one-machine runs of the Redis store.

Debian's ``redis-server`` (``apt-get install redis-server``; ``scripts/setup.sh`` installs
it when missing) is started in the foreground as a child process: bound to 127.0.0.1 on a
free port, protected mode on, no persistence, its own directory (config, log, pid file).
It is stopped by the PID it was started with, never by name, so other Redis servers on
the machine are left alone.

    server = start(Path("/tmp/keep-redis"))
    settings.feast.redis_connection = server.connection_string
    ...
    stop(server)          # or stop_dir(Path("/tmp/keep-redis")) from another process
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from keep.core.errors import SetupError

PID_FILE = "redis.pid"


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server started by :func:`start`."""

    host: str
    port: int
    pid: int
    directory: Path

    @property
    def connection_string(self) -> str:
        """Feast's ``connection_string`` (host:port)."""
        return f"{self.host}:{self.port}"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start(directory: Path, *, host: str = "127.0.0.1", timeout_s: float = 15.0) -> RedisServer:
    """Start redis-server with its config, log and pid file under ``directory``."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SetupError(
            "redis-server not found: run ./scripts/setup.sh or `apt-get install -y redis-server` "
            "(Debian package), or set settings.feast.online_store to 'sqlite'"
        )
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port(host)
    conf = directory / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                f"bind {host}",
                f"port {port}",
                "protected-mode yes",
                "daemonize no",
                f"dir {directory}",
                f"logfile {directory / 'redis.log'}",
                # No persistence: the online store is rebuilt from the lake by publication.
                'save ""',
                "appendonly no",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen(
        [binary, str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (directory / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (
                (directory / "redis.log").read_text() if (directory / "redis.log").exists() else ""
            )
            raise SetupError(f"redis-server exited at start ({proc.returncode}):\n{log[-2000:]}")
        if _ping(host, port):
            return RedisServer(host=host, port=port, pid=proc.pid, directory=directory)
        time.sleep(0.05)
    _kill(proc.pid)
    raise SetupError(f"redis-server did not answer on {host}:{port} within {timeout_s} s")


def _kill(pid: int, timeout_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: poll for its disappearance instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            done = 0
        if done == pid:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def stop(server: RedisServer) -> None:
    """Stop the server by its PID and remove its pid file."""
    _kill(server.pid)
    (server.directory / PID_FILE).unlink(missing_ok=True)


def stop_dir(directory: Path) -> bool:
    """Stop the server whose pid file is in ``directory``; False if none was recorded."""
    pid_file = directory / PID_FILE
    if not pid_file.exists():
        return False
    _kill(int(pid_file.read_text().strip()))
    pid_file.unlink(missing_ok=True)
    return True

"""A private ``redis-server`` for tests, benchmarks and one-machine runs of the Redis store.

Debian's ``redis-server`` (``apt-get install redis-server``; ``scripts/setup.sh`` installs
it when missing) is started in the foreground as a child process: bound to 127.0.0.1 on a
free port (or the given one), protected mode on, its own directory (config, log, pid file,
append-only file). It is stopped by the PID it was started with, never by name, so other
Redis servers on the machine are left alone.

* **Password**: with ``password``, the ACL user ``user`` (``default``: Redis' own default
  user) gets that password and every other connection is refused (``NOAUTH``). The
  config file stores only its SHA-256 (an ACL ``#<hash>`` rule) and is mode 0600; the
  password is kept out of :class:`RedisServer`'s repr.
* **Persistence**: the append-only file (AOF) is on, fsynced once a second, so a server
  restarted on the same directory (:func:`restart`, or :func:`start` with the same
  ``port``) serves what it held: the publication pointer and both slots' vectors.

    server = start(Path("/tmp/keep-redis"), password=secret)
    settings.feast.redis_connection = server.address       # host:port
    settings.feast.redis_password = secret
    ...
    server = restart(server)   # same directory, port and password: the data is back
    stop(server)               # or stop_dir(Path("/tmp/keep-redis")) from another process
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from keep.core.errors import SetupError

PID_FILE = "redis.pid"
CONF_FILE = "redis.conf"
LOG_FILE = "redis.log"
DEFAULT_USER = "default"
# ACL user names: no spaces or control characters (they end an ACL rule).
_USER_NAME = re.compile(r"[A-Za-z0-9_.:@+-]+")


def feast_connection_string(address: str, *, password: str | None, user: str = DEFAULT_USER) -> str:
    """Feast's Redis ``connection_string``: ``address`` (``host:port[,db=0,...]``) plus the
    credentials, ``,username=...`` (only for a user other than ``default``) and
    ``,password=...``.

    Feast splits the string at commas and JSON-decodes every value, so the values are
    written JSON-quoted (a password such as ``123`` or ``true`` stays a string) and a
    comma in them is refused. The result holds the password: hand it to Feast, never show
    it (``keep.core.config.mask_connection_string`` masks it).
    """
    if re.search(r"(^|,)\s*(password|username)=", address):
        raise SetupError(
            "the Redis connection (feast.redis_connection) must not carry credentials: put "
            "the password in feast.redis_password and the ACL user in feast.redis_user"
        )
    if password is None:
        return address
    if "," in password or "," in user:
        raise SetupError(
            "the Redis password and user must not contain a comma (Feast's connection "
            "string separates its parameters with commas)"
        )
    parts = [address]
    if user != DEFAULT_USER:
        parts.append(f"username={json.dumps(user)}")
    parts.append(f"password={json.dumps(password)}")
    return ",".join(parts)


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server started by :func:`start`."""

    host: str
    port: int
    pid: int
    directory: Path
    user: str = DEFAULT_USER
    appendonly: bool = True
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """``host:port``, the value of ``feast.redis_connection`` (no credentials)."""
        return f"{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        """Feast's ``connection_string``, with the password when there is one: never show
        it (see :func:`feast_connection_string`)."""
        return feast_connection_string(self.address, password=self.password, user=self.user)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _command(*args: str) -> bytes:
    """One command in Redis' protocol (RESP): binary-safe, whatever the password holds."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _ping(host: str, port: int, *, password: str | None = None, user: str = DEFAULT_USER) -> bool:
    """True when the server answers PING (after AUTH when it has a password). While it
    loads its append-only file it answers ``-LOADING``: not ready yet."""
    commands = [_command("PING")]
    if password is not None:
        commands.insert(0, _command("AUTH", user, password))
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"".join(commands))
            reply = b""
            while reply.count(b"\r\n") < len(commands):
                chunk = s.recv(256)
                if not chunk:
                    return False
                reply += chunk
            return reply.split(b"\r\n")[len(commands) - 1] == b"+PONG"
    except OSError:
        return False


def _acl_lines(password: str | None, user: str) -> list[str]:
    """ACL rules of the config: ``user`` with the password (its SHA-256 only) and every
    right; any other user, ``default`` included, disabled. None: Redis' open default."""
    if password is None:
        return []
    if not _USER_NAME.fullmatch(user):
        raise SetupError(f"Redis ACL user name {user!r}: use letters, digits and _ . : @ + - only")
    digest = hashlib.sha256(password.encode()).hexdigest()
    rule = f"on #{digest} ~* &* +@all"
    if user == DEFAULT_USER:
        return [f"user default reset {rule}"]
    return ["user default reset off", f"user {user} reset {rule}"]


def _quoted(path: Path) -> str:
    """``path`` as one argument of redis.conf (double-quoted: spaces and quotes survive)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(
    directory: Path,
    *,
    host: str,
    port: int,
    password: str | None,
    user: str,
    appendonly: bool,
) -> str:
    lines = [
        f"bind {host}",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f"dir {_quoted(directory)}",
        f"logfile {_quoted(directory / LOG_FILE)}",
        # No RDB snapshots: the append-only file is the persistence.
        'save ""',
    ]
    if appendonly:
        lines += [
            "appendonly yes",
            # fsync once a second: a crash loses at most about the last second of writes,
            # without an fsync per write. Publication re-runs are idempotent, so what a
            # crash loses is written again by publishing the same snapshot again; the
            # pointer is switched last, so it never names a slot the AOF lost.
            "appendfsync everysec",
        ]
    else:
        lines.append("appendonly no")
    lines += _acl_lines(password, user)
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (set before any byte is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    """A redis-server with this pid runs (not a zombie, not a reused pid of another program)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):  # no /proc: trust the signal
        title = cmdline.read_bytes()  # empty for a zombie
        return b"redis" in title or b"valkey" in title
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of our child ``pid`` if it has ended (no zombie left)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def start(
    directory: Path,
    *,
    port: int | None = None,
    password: str | None = None,
    user: str = DEFAULT_USER,
    appendonly: bool = True,
    host: str = "127.0.0.1",
    timeout_s: float = 15.0,
) -> RedisServer:
    """Start redis-server with its config, log, pid file and data under ``directory``.

    ``port`` None: a free port. ``password``: connections must authenticate as ``user``.
    ``appendonly``: persistence on (the append-only file in ``directory``, reloaded by a
    server started again on the same directory). Refuses a directory whose server runs.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SetupError(
            "redis-server not found: run ./scripts/setup.sh or `apt-get install -y redis-server` "
            "(Debian package), or set settings.feast.online_store to 'sqlite'"
        )
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_file = directory / PID_FILE
    if pid_file.exists():
        running = int(pid_file.read_text().strip() or 0)
        if running and _alive(running):
            raise SetupError(
                f"a redis-server (pid {running}) already runs for {directory}: stop it first "
                "(keep.store.redis_server.stop_dir / `keep redis stop`)"
            )
    port = _free_port(host) if port is None else port
    conf = directory / CONF_FILE
    _write_private(
        conf,
        _config(
            directory, host=host, port=port, password=password, user=user, appendonly=appendonly
        ),
    )
    log = directory / LOG_FILE
    log_start = log.stat().st_size if log.exists() else 0
    proc = subprocess.Popen(
        [binary, str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            text = log.read_bytes()[log_start:].decode(errors="replace") if log.exists() else ""
            raise SetupError(f"redis-server exited at start ({proc.returncode}):\n{text[-2000:]}")
        if _ping(host, port, password=password, user=user):
            return RedisServer(
                host=host,
                port=port,
                pid=proc.pid,
                directory=directory,
                user=user,
                appendonly=appendonly,
                password=password,
            )
        time.sleep(0.05)
    _kill(proc.pid)
    pid_file.unlink(missing_ok=True)
    raise SetupError(f"redis-server did not answer on {host}:{port} within {timeout_s} s")


def restart(server: RedisServer, *, timeout_s: float = 15.0) -> RedisServer:
    """Stop ``server`` (if it still runs) and start it again on the same directory, host,
    port, user, password and persistence; it reloads its append-only file before answering."""
    stop(server)
    return start(
        server.directory,
        port=server.port,
        password=server.password,
        user=server.user,
        appendonly=server.appendonly,
        host=server.host,
        timeout_s=timeout_s,
    )


def _kill(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the redis-server ``pid``, SIGKILL after ``timeout_s``; nothing when that pid
    is no longer a redis-server (it ended, or the pid now belongs to another program)."""
    if not _alive(pid):
        _reap(pid)
        return
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
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop(server: RedisServer) -> None:
    """Stop the server by its PID and remove its pid file. On SIGTERM Redis writes and
    fsyncs its append-only file before it exits."""
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

"""A long-lived Spark Connect server: one warm JVM for every Spark task of every day.

Without it, each process that runs a Spark step starts a Spark of its own: a JVM start
(~6 s) and a cold JVM whose first queries plan and compile several times slower than later
ones (~10 s more for a day's ingest). Under a scheduler every task is its own process, so a
day pays that six times. With the server, the steps are thin Spark Connect clients
(``settings.spark.remote``) and the server, started once with the same configuration
(``keep.lake.spark.spark_conf``: master, heap, Delta), runs their jobs (docs/airflow.md,
"The Spark server").

    server = start(settings, home / "var" / "spark-server")
    settings = with_remote(settings, server)     # spark.remote = sc://127.0.0.1:<port>
    ...
    stop_dir(home / "var" / "spark-server")      # or server.stop(), or from another process

``keep run --via airflow`` runs its days on one (:func:`serving`). From a shell:
``keep spark-server start`` prints the URL to set as ``KEEP_SPARK__REMOTE``
(or ``spark.remote`` in keep.yaml); ``keep spark-server stop``; ``keep spark-server status``.

The server runs ``spark-submit --class ...SparkConnectServer`` from the pyspark wheel, in
its own process group (its Python workers belong to it), bound to 127.0.0.1, with its log
and pid file in the given folder. It is stopped by that pid (SIGTERM to the group, then
SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from keep.core.config import PROJECT_ROOT, Settings
from keep.core.errors import SetupError
from keep.lake.cluster import HOST, free_port, log_tail
from keep.lake.spark import check_java, spark_conf

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
STATE_FILE = "server.json"
LOG_FILE = "server.log"
READY_LINE = "Spark Connect server started at"


@dataclass(frozen=True)
class SparkServer:
    """A running server: its process group leader's pid, its port and its folder."""

    pid: int
    port: int
    directory: Path

    @property
    def url(self) -> str:
        """What ``spark.remote`` takes (``sc://127.0.0.1:<port>``)."""
        return f"sc://{HOST}:{self.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        _stop_pid(self.pid, timeout_s)
        (self.directory / STATE_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command(settings: Settings, port: int) -> list[str]:
    """The ``spark-submit`` command line of a server with ``settings``' Spark configuration."""
    import pyspark

    submit = Path(pyspark.__file__).resolve().parent / "bin" / "spark-submit"
    conf = spark_conf(settings)
    master = conf.pop("spark.master")
    conf.update(
        {
            "spark.app.name": f"{settings.spark.app_name}-server",
            "spark.connect.grpc.binding.address": HOST,
            "spark.connect.grpc.binding.port": str(port),
        }
    )
    args = ["bash", str(submit), "--master", master, "--class", SERVER_CLASS]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    return [*args, "spark-internal"]


def running(directory: Path) -> SparkServer | None:
    """The server started in ``directory`` if it still runs (its state file and process)."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    server = SparkServer(int(state["pid"]), int(state["port"]), directory)
    return server if _alive(server.pid) else None


def start(
    settings: Settings, directory: Path, *, port: int | None = None, timeout_s: float = 120.0
) -> SparkServer:
    """Start a server in ``directory`` (or return the one already running there); wait
    until it accepts clients."""
    check_java()
    directory.mkdir(parents=True, exist_ok=True)
    current = running(directory)
    if current is not None:
        return current
    port = port or free_port()
    log_path = directory / LOG_FILE
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": HOST,
        "PYSPARK_PYTHON": sys.executable,
        # Python workers (if a job needs them) import the project like the steps do.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command(settings, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=directory,
            start_new_session=True,  # own process group: stop signals the whole group
        )
    server = SparkServer(proc.pid, port, directory)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(
                f"the Spark server exited with status {proc.returncode} while starting "
                f"(log: {log_path}):\n{log_tail(log_path)}"
            )
        if READY_LINE in log_path.read_text(errors="replace"):
            (directory / STATE_FILE).write_text(json.dumps({"pid": proc.pid, "port": port}))
            return server
        time.sleep(0.2)
    _stop_pid(proc.pid, 10.0)
    raise SetupError(
        f"the Spark server did not start within {timeout_s:.0f} s (log: {log_path}):\n"
        f"{log_tail(log_path)}"
    )


def _stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group led by ``pid``, wait, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if not _alive(pid):
            return


def stop_dir(directory: Path, timeout_s: float = 30.0) -> bool:
    """Stop the server started in ``directory``; False if none was running."""
    server = running(directory)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if server is None:
        return False
    server.stop(timeout_s)
    return True


def server_dir(settings: Settings) -> Path:
    """Where ``keep spark-server`` keeps its server (log, state): ``<home>/var/spark-server``."""
    return settings.home / "var" / "spark-server"


def with_remote(settings: Settings, server: SparkServer) -> Settings:
    """``settings`` whose Spark steps run on ``server``."""
    return settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"remote": server.url})}
    )


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[Settings]:
    """``settings`` whose Spark steps run on a Spark server for the duration of the block:
    the one ``spark.remote`` names if set (left running), else one started now in
    :func:`server_dir` (or already running there) and stopped at the end if started here."""
    if settings.spark.remote:
        yield settings
        return
    directory = server_dir(settings)
    already = running(directory)
    server = already or start(settings, directory)
    try:
        yield with_remote(settings, server)
    finally:
        if already is None:
            server.stop()

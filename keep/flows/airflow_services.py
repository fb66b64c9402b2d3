"""A real, running Airflow on one machine: ``keep airflow up | status | down``.

:func:`up` starts, each as its own process in its own session:

1. the metadata DB: ``settings.airflow.database_url``, or else a private PostgreSQL under
   ``<airflow home>/postgres`` (:mod:`keep.store.postgres_server`) on 127.0.0.1;
2. ``airflow db migrate`` against it, once per database, and the ``keep_compute`` pool
   (:func:`keep.flows.airflow_env.init_airflow`);
3. Airflow 3's own processes: ``airflow scheduler`` (LocalExecutor by default),
   ``airflow dag-processor`` and ``airflow api-server`` (UI, REST API v2 and the tasks'
   Execution API; one worker), with the environment of
   :func:`keep.flows.airflow_env.airflow_environ` (``services=True``).

Each process writes ``<airflow home>/logs/<name>.log`` and ``<airflow home>/run/<name>.pid``.
``up`` returns once ``/api/v2/monitor/health`` reports the metadatabase, the scheduler and
the dag processor healthy. :func:`down` stops them by the PIDs in their pid files, with
their children (the whole process group, and the process tree), scheduler first,
PostgreSQL last. :func:`status` reports each process and the health endpoint's answer;
a stale pid file (process gone) is reported and removed. Everything is idempotent.

:func:`api_server` runs only an API server, temporarily, against the SQLite home of
``airflow dags test`` (e.g. to read task instances' try numbers after a test run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from keep.core.config import Settings, mask_password
from keep.core.errors import KeepError
from keep.core.files import write_secret
from keep.flows.airflow_api import AirflowApiError, AirflowClient
from keep.flows.airflow_env import (
    airflow_command,
    api_url,
    command_environ,
    database_url_file,
    init_airflow,
)
from keep.lake import spark_server
from keep.store import postgres_server

log = logging.getLogger(__name__)

# Started in this order, stopped in this order (the scheduler first: no new task starts).
SERVICES = ("scheduler", "dag-processor", "api-server")
# Started first (the tasks' environment names it), stopped after the scheduler.
SPARK_SERVER = "spark-server"
# The API server alone against the SQLite DB of `airflow dags test` (see api_server).
EMBEDDED_API = "api-server-embedded"
_HEALTHY = ("metadatabase", "scheduler", "dag_processor")
_STOP_GRACE_S = 30.0
# A pid file is written right after its process started.
_PID_FILE_SKEW_S = 10.0
_LOG_TAIL_CHARS = 4000
# A log line saying why a process stopped: a structured error record, or a traceback's end.
_ERROR_LINE = re.compile(r"\[(?:error|critical)\s*\]|^[\w.]*(?:Error|Exception)\b|FATAL")
# A structured log record's timestamp and level, and its logger and location.
_RECORD_HEAD = re.compile(r"^\S+\s+\[\w+\s*\]\s*")
_RECORD_TAIL = re.compile(r"\s+\[[\w.]+\]\s+loc=\S+.*$")


class AirflowServiceError(KeepError):
    """An Airflow service did not start, or stopped; the message names its log file."""


@dataclass(frozen=True)
class ProcessStatus:
    """One process of the deployment, as its pid file describes it."""

    name: str
    pid: int | None
    alive: bool
    stale: bool  # a pid file whose process is gone (removed by status())
    log: Path


@dataclass(frozen=True)
class ServicesStatus:
    api_url: str
    database: str  # the metadata DB's URL, password masked
    processes: list[ProcessStatus]
    health: dict[str, Any] | None = None
    health_error: str | None = None
    migrated: bool = False  # `up` ran `airflow db migrate`
    started: list[str] = field(default_factory=list)  # processes `up` started

    @property
    def healthy(self) -> bool:
        """Every process running and the health endpoint reporting the metadatabase, the
        scheduler and the dag processor healthy (a heartbeat stays fresh for a while after
        its process died, hence both)."""
        return (
            self.health is not None
            and all(p.alive for p in self.processes)
            and all((self.health.get(part) or {}).get("status") == "healthy" for part in _HEALTHY)
        )


# --------------------------------------------------------------------------- files


def run_dir(settings: Settings) -> Path:
    return settings.airflow.home / "run"


def pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.airflow.home / "logs" / f"{name}.log"


def spark_dir(settings: Settings) -> Path:
    """The services' Spark server's folder (log, state), when ``airflow.spark_server``."""
    return settings.airflow.home / "spark-server"


def _own_spark_server(settings: Settings) -> bool:
    return settings.airflow.spark_server and not settings.spark.remote


def postgres_dir(settings: Settings) -> Path:
    """The private PostgreSQL's folder (used when ``airflow.database_url`` is None)."""
    return settings.airflow.home / "postgres"


def _command(settings: Settings, name: str) -> list[str]:
    a = settings.airflow
    args = {
        # Task logs are files on this machine: the API server reads them, no log server.
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
        "api-server": ["api-server", "--host", a.api_host, "--port", str(a.api_port)],
    }[name.removesuffix("-embedded")]
    if args[0] == "api-server":
        args += ["--workers", "1"]
    return airflow_command(*args)


def database_display(settings: Settings) -> str:
    """The services' metadata DB, for people: password masked."""
    if settings.airflow.database_url:
        return mask_password(settings.airflow.database_url.get_secret_value())
    server = postgres_server.running(postgres_dir(settings))
    port = server.port if server else settings.airflow.postgres_port
    return (
        f"postgresql+psycopg2://{postgres_server.ROLE}:***@127.0.0.1:{port}/"
        f"{postgres_server.DATABASE} (private, {postgres_dir(settings)})"
    )


# --------------------------------------------------------------------------- processes


def _process(settings: Settings, name: str, pid: int) -> psutil.Process | None:
    """The live process ``pid`` if it is the one whose pid file this is: started (within a
    few seconds) when the pid file was written, so a reused pid is not taken for it.
    (Airflow renames its processes, e.g. ``airflow api_server -- host:...``, so the
    command line cannot tell.)"""
    try:
        written = pid_file(settings, name).stat().st_mtime
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - written) > _PID_FILE_SKEW_S:
            return None
        return proc
    except (FileNotFoundError, psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def _read_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running(settings: Settings, name: str) -> psutil.Process | None:
    pid = _read_pid(settings, name)
    return None if pid is None else _process(settings, name, pid)


def _start(settings: Settings, name: str, *, services: bool) -> int:
    """Start ``airflow <name>`` in its own session; its output appended to its log."""
    log = log_file(settings, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- keep: starting airflow {name} at {time.ctime()} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(
            _command(settings, name),
            env=command_environ(settings, services=services),
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of the process group ``pgid``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _signal(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)


def _stop_process(proc: psutil.Process, *, grace_s: float = _STOP_GRACE_S) -> None:
    """SIGTERM the process (Airflow shuts its own workers down), then SIGTERM and at last
    SIGKILL what is left of its tree and of its process group (it leads its session)."""
    pgid = proc.pid
    try:
        members = {proc, *proc.children(recursive=True), *_group(pgid)}
    except psutil.NoSuchProcess:
        members = set(_group(pgid))
    _signal([proc], signal.SIGTERM)
    psutil.wait_procs([proc], timeout=grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [p for p in {*members, *_group(pgid)} if p.is_running()]
        left = [p for p in left if _not_zombie(p)]
        if not left:
            return
        _signal(left, sig)
        psutil.wait_procs(left, timeout=10.0)


def _not_zombie(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _log_tail(path: Path) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - _LOG_TAIL_CHARS))
        return f.read().decode(errors="replace")


def _reason(settings: Settings, tail: str) -> str:
    """The line of a log's tail that says why a process stopped."""
    text = tail.rsplit("--- keep: starting airflow", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.search(ln)]
    reason = (errors or lines or ["no output"])[-1]
    reason = _RECORD_TAIL.sub("", _RECORD_HEAD.sub("", reason))[:300]
    if "address already in use" in text.lower():
        reason += (
            f" (port {settings.airflow.api_port} is taken: set airflow.api_port, "
            "KEEP_AIRFLOW__API_PORT)"
        )
    return reason


# --------------------------------------------------------------------------- up / down


def _database_url(settings: Settings) -> str:
    """The services' metadata DB URL, starting the private PostgreSQL when it is the one."""
    if settings.airflow.database_url:
        return settings.airflow.database_url.get_secret_value()
    server = postgres_server.start(postgres_dir(settings), port=settings.airflow.postgres_port)
    return server.url


def up(settings: Settings, *, timeout_s: float = 300.0) -> ServicesStatus:
    """Start the metadata DB, migrate it, start the scheduler, the dag processor and the
    API server (those not running yet), and wait until they are healthy.

    Raises :class:`AirflowServiceError` (or the error of the step that failed) naming the
    log file of what failed; what this call started is stopped again then.
    """
    own_db = not settings.airflow.database_url
    db_was_running = own_db and postgres_server.running(postgres_dir(settings)) is not None
    own_spark = _own_spark_server(settings)
    spark_was_running = own_spark and spark_server.running(spark_dir(settings)) is not None
    started: list[str] = []
    try:
        if own_spark:
            server = spark_server.start(settings, spark_dir(settings))
            settings = spark_server.with_remote(settings, server)
            if not spark_was_running:
                started.append(SPARK_SERVER)
        write_secret(database_url_file(settings), _database_url(settings))
        migrated = init_airflow(settings, services=True, timeout=timeout_s)
        for name in SERVICES:
            if _running(settings, name) is None:
                _start(settings, name, services=True)
                started.append(name)
        health = _wait_healthy(settings, SERVICES, timeout_s=timeout_s)
    except BaseException:
        for name in started:
            if name != SPARK_SERVER:
                _stop(settings, name)
        if own_db and not db_was_running:
            postgres_server.stop_dir(postgres_dir(settings))
        if own_spark and not spark_was_running:
            spark_server.stop_dir(spark_dir(settings))
        raise
    return ServicesStatus(
        api_url=api_url(settings),
        database=database_display(settings),
        processes=_statuses(settings, clean=False),
        health=health,
        migrated=migrated,
        started=started,
    )


def _wait_healthy(
    settings: Settings,
    names: tuple[str, ...],
    *,
    timeout_s: float,
    parts: tuple[str, ...] = _HEALTHY,
) -> dict[str, Any]:
    client = AirflowClient.for_settings(settings, timeout_s=5.0)
    deadline = time.monotonic() + timeout_s
    health: dict[str, Any] | None = None
    error = ""
    try:
        while True:
            for name in names:
                if _running(settings, name) is None:
                    log = log_file(settings, name)
                    raise AirflowServiceError(
                        f"airflow {name} exited at start: {_reason(settings, _log_tail(log))}; "
                        f"log: {log}"
                    )
            try:
                health = client.health()
                error = ""
                if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                    return health
            except AirflowApiError as exc:
                error = str(exc)
            if time.monotonic() > deadline:
                break
            time.sleep(2.0)
    finally:
        client.close()
    if health is None:
        log = log_file(settings, names[-1])
        raise AirflowServiceError(
            f"the Airflow API server did not answer at {api_url(settings)} within "
            f"{timeout_s:.0f} s ({error}); log: {log}"
        )
    bad = [p for p in parts if (health.get(p) or {}).get("status") != "healthy"]
    logs = ", ".join(str(_log_of(settings, p)) for p in bad)
    raise AirflowServiceError(
        f"Airflow not healthy within {timeout_s:.0f} s: {', '.join(bad)} "
        f"{[health.get(p) for p in bad]}; log: {logs}"
    )


def _log_of(settings: Settings, part: str) -> Path:
    """The log file that explains a component of the health answer."""
    if part == "metadatabase":
        if settings.airflow.database_url:
            return log_file(settings, "api-server")
        return postgres_dir(settings) / postgres_server.LOG_FILE
    return log_file(settings, part.replace("_", "-"))


def _stop(settings: Settings, name: str, *, grace_s: float = _STOP_GRACE_S) -> bool:
    """Stop ``name`` by its pid file; True when it (or what it left) was running. Removes
    the pid file.

    Each service leads its own session, so its process group id is the recorded pid. When
    the leader is gone (it crashed, or was killed with the test or shell that started it)
    but members of its group live on -- an API server's worker, a task's JVM -- those are
    what is left of the service: they are stopped too."""
    pid = _read_pid(settings, name)
    proc = _running(settings, name)
    orphans = _group(pid) if proc is None and pid is not None else []
    if proc is not None:
        _stop_process(proc, grace_s=grace_s)
    elif orphans and pid is not None:
        log.warning("%s (pid %d) is gone; stopping what is left of its group", name, pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p in _group(pid) if _not_zombie(p)]
            if not left:
                break
            _signal(left, sig)
            psutil.wait_procs(left, timeout=grace_s if sig == signal.SIGTERM else 10.0)
    pid_file(settings, name).unlink(missing_ok=True)
    return proc is not None or bool(orphans)


def down(settings: Settings, *, grace_s: float = _STOP_GRACE_S) -> list[str]:
    """Stop every process :func:`up` started (scheduler, dag processor, API server, then
    the private PostgreSQL), with their children; the names of those that were running.

    Each gets SIGTERM and ``grace_s`` seconds to exit: the scheduler waits that long for
    running tasks to finish; then what is left of its process tree and group (task
    processes, Spark's JVM, ...) is terminated, and killed if need be. A task stopped
    that way is failed by the next scheduler (``airflow.heartbeat_timeout_s``) and retried.
    """
    stopped = [name for name in SERVICES if _stop(settings, name, grace_s=grace_s)]
    if spark_server.stop_dir(spark_dir(settings)):
        stopped.append(SPARK_SERVER)
    if postgres_server.stop_dir(postgres_dir(settings)):
        stopped.append("postgres")
    return stopped


def _statuses(settings: Settings, *, clean: bool) -> list[ProcessStatus]:
    result = []
    for name in SERVICES:
        pid = _read_pid(settings, name)
        alive = pid is not None and _process(settings, name, pid) is not None
        stale = pid is not None and not alive
        if stale and clean:
            pid_file(settings, name).unlink(missing_ok=True)
        result.append(ProcessStatus(name, pid, alive, stale, log_file(settings, name)))
    if _own_spark_server(settings):
        directory = spark_dir(settings)
        state = directory / spark_server.STATE_FILE
        server = spark_server.running(directory)
        stale = server is None and state.is_file()
        if stale and clean:
            state.unlink(missing_ok=True)
        pid = server.pid if server else None
        result.append(
            ProcessStatus(
                SPARK_SERVER, pid, server is not None, stale, directory / spark_server.LOG_FILE
            )
        )
    if not settings.airflow.database_url:
        directory = postgres_dir(settings)
        pg_pid_file = directory / postgres_server.PID_FILE
        pid = int(pg_pid_file.read_text().strip()) if pg_pid_file.is_file() else None
        alive = postgres_server.running(directory) is not None
        stale = pid is not None and not alive
        if stale and clean:
            pg_pid_file.unlink(missing_ok=True)
        result.append(
            ProcessStatus("postgres", pid, alive, stale, directory / postgres_server.LOG_FILE)
        )
    return result


def status(settings: Settings) -> ServicesStatus:
    """Each process (pid, alive; stale pid files are removed) and the health endpoint."""
    processes = _statuses(settings, clean=True)
    health: dict[str, Any] | None = None
    error = None
    client = AirflowClient.for_settings(settings, timeout_s=5.0)
    try:
        health = client.health()
    except AirflowApiError as exc:
        error = str(exc)
    finally:
        client.close()
    return ServicesStatus(
        api_url=api_url(settings),
        database=database_display(settings),
        processes=processes,
        health=health,
        health_error=error,
    )


@contextlib.contextmanager
def api_server(settings: Settings, *, timeout_s: float = 180.0) -> Iterator[AirflowClient]:
    """Only an API server, for the time of the block, against the SQLite DB of
    ``airflow dags test`` (``settings.airflow.home``); yields a client of it.

        dags_test(settings, ds)
        with api_server(settings) as client:
            runs = client.dag_runs(DAG_ID)
    """
    init_airflow(settings)
    if _running(settings, EMBEDDED_API) is None:
        _start(settings, EMBEDDED_API, services=False)
    client = AirflowClient.for_settings(settings)
    try:
        _wait_healthy(settings, (EMBEDDED_API,), timeout_s=timeout_s, parts=("metadatabase",))
        yield client
    finally:
        client.close()
        _stop(settings, EMBEDDED_API)

"""Airflow's configuration, generated from the one :class:`~keep.core.config.Settings` object.

Airflow reads its configuration from ``AIRFLOW_HOME/airflow.cfg`` and ``AIRFLOW__*``
environment variables when it is imported, so the platform never imports Airflow in its
own process: every Airflow command runs as a subprocess with the environment built by
:func:`airflow_environ`:

* ``AIRFLOW_HOME`` = ``settings.airflow.home`` with a SQLite metadata DB inside it,
  the repository's ``dags/`` folder, no example DAGs, parallelism from settings;
* the full KEEP settings as ``KEEP_HOME`` + one JSON value per section
  (``KEEP_SPARK='{"master": ...}'``), so the tasks' ``load_settings()`` rebuilds exactly
  the object the caller holds, wherever it came from (file, environment, test overrides).
  Secrets are not among them: the Redis password (``feast.redis_password``) is written to
  a 0600 file (:func:`redis_password_file`) that the tasks' ``feast.redis_password_file``
  names, so it never appears in a process environment.

The embedded mode runs a day with ``airflow dags test`` (:func:`dags_test`): Airflow 3
parses the DAG, creates a DagRun in the metadata DB and runs each task *in the same
process* through an in-process Execution API, with no scheduler, API server or executor,
so it needs no network, no JWT secret and no ``execution_api_server_url`` (Airflow writes
a random JWT secret and Fernet key into the generated ``airflow.cfg`` on first use, which
a scheduler and API server sharing that home then agree on).

The running services (``keep airflow up``, :mod:`keep.flows.airflow_services`) use the
same function with ``services=True``: the metadata DB is ``settings.airflow.database_url``
or the private PostgreSQL under ``<airflow home>/postgres``, read by Airflow through
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD`` from a 0600 file (:func:`database_url_file`),
so the password is never in a process environment; the executor, the Execution API URL,
the dag processor's refresh interval and the task heartbeat timeout come from
``settings.airflow``. Both modes share ``AIRFLOW_HOME`` (its ``airflow.cfg`` holds the
JWT secret every process must agree on) and the API server's settings: SimpleAuthManager
with every user an admin, on 127.0.0.1 (the one-machine default; ``airflow.auth_manager``
names another; see docs/airflow.md).

The generated values win over the parent environment, so a stray ``AIRFLOW__*`` variable
cannot point a run at another deployment's database; settings that the generated
environment does not fix can still be set by the caller.

Usage::

    from keep.flows.airflow_env import dags_test
    dags_test(load_settings(), datetime.date(2026, 1, 1))   # runs `airflow db migrate` once
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from keep.core.config import Settings
from keep.core.errors import KeepError
from keep.core.files import write_secret

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"
# Airflow's local-settings hook (airflow_local_settings.py): the scheduler preloads the
# tasks' libraries (keep.flows.airflow_preload, airflow.preload_modules).
LOCAL_SETTINGS_FOLDER = REPO_ROOT / "airflow_settings"
DAG_ID = "keep_daily_refresh"
DOWNSTREAM_DAG_ID = "keep_downstream_ctr"

# Sections of Settings passed to Airflow's processes as one JSON value each.
_SECTIONS = tuple(name for name in Settings.model_fields if name != "home")
_MIGRATED_MARKER = ".keep-db-migrated"  # + "-<hash of the database URL>"
# The pool every Spark / torch task runs in: one slot, so they never overlap on a small machine.
COMPUTE_POOL = "keep_compute"
COMPUTE_POOL_SLOTS = 1
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)
# The dag processor looks for new or removed DAG files this often (seconds).
_DAG_REFRESH_S = 20
_LOG_TAIL_LINES = 20
_ABORT_GRACE_S = 3.0
_EXIT_GRACE_S = 20.0
# Log lines of `airflow dags test` that mean a task attempt failed.
_TASK_FAILED = re.compile(r"new_state=(up_for_retry|failed)\b|Task failed with exception")
# The test loop's once-a-second report when no task is runnable, unless one is only waiting.
_BLOCKED = re.compile(
    r"No tasks to run\. unrunnable tasks:"
    r"(?!.*\[(?:up_for_retry|up_for_reschedule|deferred|running|queued|awaiting_input)\])"
)
_BLOCKED_REPORTS = 10
_FIRST_ERROR = re.compile(r"\[error\s*\]|Traceback \(most recent call last\)")
_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")  # a new structured log line
_JAVA_FRAME = re.compile(r"\s+at |\s+\.\.\. \d+ more")
_ERROR_LINES = 16
# Repeated lines left out of error excerpts: py4j's, one per pooled connection when the
# JVM goes away, and the test loop's, once a second while no task can run (see _hint).
_NOISE = re.compile(r"Closing down clientserver connection|No tasks to run\. unrunnable tasks")


class AirflowCommandError(KeepError):
    """An Airflow command exited with an error; the message ends with the tail of its log."""


def airflow_version() -> str:
    """Version of the installed Airflow core (read from package metadata, no import)."""
    return importlib.metadata.version("apache-airflow-core")


def metadata_db(settings: Settings) -> Path:
    """The SQLite metadata DB of ``airflow dags test`` (the embedded mode)."""
    return settings.airflow.home / "airflow.db"


def database_url_file(settings: Settings) -> Path:
    """The 0600 file holding the services' metadata DB URL (written by ``keep airflow up``)."""
    return settings.airflow.home / "run" / "database.url"


def redis_password_file(settings: Settings) -> Path:
    """The 0600 file from which Airflow's tasks read the Redis password (when one is set)."""
    return settings.airflow.home / "run" / "redis.password"


def _feast_for_tasks(settings: Settings) -> str:
    """The feast section as the tasks get it: the password replaced by the file holding it."""
    feast = settings.feast
    if not feast.redis_password:
        return feast.model_dump_json(exclude={"redis_password"})
    path = redis_password_file(settings)
    write_secret(path, feast.redis_password.get_secret_value())
    return feast.model_copy(update={"redis_password_file": path}).model_dump_json(
        exclude={"redis_password"}
    )


def api_url(settings: Settings) -> str:
    """Base URL of the API server (UI, REST API v2, Execution API), without a trailing /."""
    return f"http://{settings.airflow.api_host}:{settings.airflow.api_port}"


def airflow_environ(settings: Settings, *, services: bool = False) -> dict[str, str]:
    """Environment variables that configure Airflow (and the KEEP settings of its tasks).

    ``services=False``: the embedded mode (SQLite DB, ``airflow dags test``);
    ``services=True``: the running services of ``keep airflow up`` (see the module doc).
    Layer it over the parent environment (see :func:`command_environ`); values here win.
    When a Redis password is set, (re)writes :func:`redis_password_file` for the tasks.
    """
    home = settings.airflow.home
    parallelism = str(settings.airflow.parallelism)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__PARALLELISM": parallelism,
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": parallelism,
        # Days of one DAG never overlap (each day's state builds on the day before).
        "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "1",
        "AIRFLOW__API__HOST": settings.airflow.api_host,
        "AIRFLOW__API__PORT": str(settings.airflow.api_port),
        "AIRFLOW__API__BASE_URL": api_url(settings),
        "AIRFLOW__API__WORKERS": "1",
        # The DAG imports `keep`; make it importable even without an installed package.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
        "KEEP_HOME": str(settings.home),
    }
    if settings.airflow.auth_manager:
        env["AIRFLOW__CORE__AUTH_MANAGER"] = settings.airflow.auth_manager
    else:
        # SimpleAuthManager, every user an admin: the API server listens on api_host
        # (127.0.0.1 by default), so only this machine's users reach it (docs/airflow.md).
        env["AIRFLOW__CORE__AUTH_MANAGER"] = SIMPLE_AUTH_MANAGER
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
    if services:
        env.update(
            {
                # Read by every Airflow process from the 0600 file: not in the environment.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD": "cat "
                + shlex.quote(str(database_url_file(settings))),
                "AIRFLOW__CORE__EXECUTOR": settings.airflow.executor,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url(settings)}/execution/",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(_DAG_REFRESH_S),
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(
                    settings.airflow.heartbeat_timeout_s
                ),
                # The tasks of a scheduler that died are only failed and retried once a
                # scheduler resets them as orphans, which it checks for every this many
                # seconds (Airflow's default: 300): as often as a heartbeat times out.
                "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": str(
                    settings.airflow.heartbeat_timeout_s
                ),
            }
        )
        if settings.airflow.preload_modules:
            env["PYTHONPATH"] = os.pathsep.join([str(LOCAL_SETTINGS_FOLDER), env["PYTHONPATH"]])
    else:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{metadata_db(settings)}"
        # The hook lets `airflow dags test` skip the garbage collection of its exit.
        env["PYTHONPATH"] = os.pathsep.join([str(LOCAL_SETTINGS_FOLDER), env["PYTHONPATH"]])
    for section in _SECTIONS:
        if section == "feast":
            env["KEEP_FEAST"] = _feast_for_tasks(settings)
            continue
        # The tasks never need the metadata DB's URL (and its password).
        exclude = {"database_url"} if section == "airflow" else None
        env[f"KEEP_{section.upper()}"] = getattr(settings, section).model_dump_json(exclude=exclude)
    if os.environ.get("KEEP_CONFIG"):
        env["KEEP_CONFIG"] = os.environ["KEEP_CONFIG"]
    return env


# Inherited ways to name the metadata DB that would win over the generated one.
_DB_VARIABLES = tuple(
    f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN{suffix}" for suffix in ("", "_CMD", "_SECRET")
)


def command_environ(
    settings: Settings, base: Mapping[str, str] | None = None, *, services: bool = False
) -> dict[str, str]:
    """``base`` (default: this process's environment) without its ``KEEP_*`` variables and
    its metadata DB variables, plus :func:`airflow_environ`: inherited
    ``KEEP_SECTION__FIELD`` overrides must not win over the settings object the caller
    passed, nor an inherited database over the generated one."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("KEEP_") and k not in _DB_VARIABLES
    }
    env.update(airflow_environ(settings, services=services))
    return env


def airflow_command(*args: str) -> list[str]:
    """``airflow <args>`` run by this interpreter (the venv's Airflow, whatever PATH says)."""
    return [sys.executable, "-m", "airflow", *args]


def run_airflow(
    settings: Settings,
    args: Sequence[str],
    *,
    timeout: float,
    log_name: str,
    abort_on: Callable[[str], bool] | None = None,
    services: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``airflow <args>`` with the generated environment, in its own process group.

    ``services=True``: against the running services' metadata DB (see :func:`airflow_environ`).

    stdout and stderr are captured together (``.stdout``) and streamed to
    ``<airflow home>/logs/<log_name>`` (``tail -f`` it during a long run). When
    ``abort_on(line)`` is true for a line, the command is stopped a few seconds later. On exit (success,
    failure, abort or timeout) every process left in the command's group (e.g. Spark's
    JVM) is terminated. Raises :class:`AirflowCommandError` with the relevant part of
    the log on a non-zero exit, an abort or a timeout.
    """
    cmd = airflow_command(*args)
    log_path = settings.airflow.home / "logs" / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    aborted = threading.Event()
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=command_environ(settings, services=services),
        cwd=settings.home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        with open(log_path, "w") as log_file:
            for line in proc.stdout:
                lines.append(line)
                log_file.write(line)
                log_file.flush()
                if abort_on is not None and not aborted.is_set() and abort_on(line):
                    aborted.set()

    reader = threading.Thread(target=pump, name=f"airflow-{log_name}", daemon=True)
    reader.start()
    why = ""
    try:
        deadline = started + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                why = f"timed out after {timeout:.0f} s"
                break
            if aborted.wait(0.2):
                time.sleep(_ABORT_GRACE_S)  # let the failing task's traceback reach the log
                why = "was stopped early (fail_fast)"
                break
    finally:
        seen = len(lines)  # what came before we stopped it (after: shutdown noise)
        # After a normal exit this reaps leftovers, e.g. a JVM that does not stop.
        exited = not why and proc.poll() is not None
        _kill_group(proc, grace=_EXIT_GRACE_S if exited else 0.0)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=10)
    output = "".join(lines)
    if not why and proc.returncode != 0:
        why = f"exited with code {proc.returncode} after {time.monotonic() - started:.0f} s"
    if why:
        raise AirflowCommandError(
            f"`airflow {' '.join(args)}` {why} (AIRFLOW_HOME={settings.airflow.home}; "
            f"full log: {log_path}).{_hint(output)}\n{_excerpt(''.join(lines[:seen]))}"
        )
    return subprocess.CompletedProcess(cmd, proc.returncode, output, None)


def init_airflow(settings: Settings, *, timeout: float = 300, services: bool = False) -> bool:
    """Create or upgrade the metadata DB (``airflow db migrate``) unless already done, and
    create the ``keep_compute`` pool (one slot: Spark and torch tasks never overlap).

    ``services=False``: the SQLite DB of ``airflow dags test``; ``services=True``: the
    running services' database (its URL in :func:`database_url_file`, written by
    ``keep airflow up``). Idempotent: one marker per database in ``AIRFLOW_HOME``, named
    by a hash of its URL, records the Airflow version it was migrated for (a new private
    PostgreSQL cluster has a new password, hence a new marker); a file lock makes
    concurrent callers wait for one migration. Returns True when a migration ran.
    """
    home = settings.airflow.home
    home.mkdir(parents=True, exist_ok=True)
    if services:
        url = database_url_file(settings).read_text().strip()
    else:
        url = f"sqlite:///{metadata_db(settings)}"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    marker = home / f"{_MIGRATED_MARKER}-{key}"
    stamp = airflow_version()
    with open(home / ".keep-db.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (
            marker.is_file()
            and marker.read_text() == stamp
            and (services or _has_schema(metadata_db(settings)))
        ):
            return False
        run_airflow(
            settings,
            ["db", "migrate"],
            timeout=timeout,
            log_name="db_migrate.log",
            services=services,
        )
        run_airflow(
            settings,
            [
                "pools",
                "set",
                COMPUTE_POOL,
                str(COMPUTE_POOL_SLOTS),
                "Spark and torch tasks: one at a time on a small machine",
            ],
            timeout=timeout,
            log_name="pools_set.log",
            services=services,
        )
        marker.write_text(stamp)
        return True


def dags_test(
    settings: Settings,
    ds: dt.date | None,
    *,
    dag_id: str = DAG_ID,
    timeout: float = 1800,
    fail_fast: bool = False,
    conf: Mapping[str, object] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one DagRun of ``dag_id`` for logical day ``ds`` with ``airflow dags test``.

    Initialises the metadata DB first if needed. Tasks run in-process, one after the
    other; a re-run of the same day clears and re-runs its task instances. The combined
    output is in ``.stdout`` and in ``<airflow home>/logs/dags_test-<dag_id>-<ds>.log``.

    ``airflow dags test`` honours the DAG's retries: a failing task is retried after its
    ``retry_delay`` while the command waits; and a task that ``depends_on_past`` on a day
    that did not succeed is never runnable, so the command waits until ``timeout``.
    ``fail_fast=True`` stops the run at the first task failure or once tasks are seen
    blocked (tests, debugging).
    """
    init_airflow(settings)
    args = ["dags", "test", dag_id]
    if ds is not None:
        args.append(ds.isoformat())
    if conf is not None:
        args += ["--conf", json.dumps(dict(conf))]
    label = ds.isoformat() if ds is not None else str((conf or {}).get("snapshot_ds", "manual"))
    return run_airflow(
        settings,
        args,
        timeout=timeout,
        log_name=f"dags_test-{dag_id}-{label}.log",
        abort_on=_failure_detector() if fail_fast else None,
    )


def task_states(settings: Settings, ds: dt.date, dag_id: str = DAG_ID) -> dict[str, str | None]:
    """``{task_id: state}`` of the DagRun of ``dag_id`` for logical day ``ds`` in the SQLite
    metadata DB of ``airflow dags test`` ({} when there is none), through Airflow's public
    CLI (``airflow tasks states-for-dag-run -o json``)."""
    return {row["task_id"]: row["state"] or None for row in task_instances(settings, ds, dag_id)}


def task_instances(settings: Settings, ds: dt.date, dag_id: str = DAG_ID) -> list[dict[str, str]]:
    """The task instances of the DagRun of ``dag_id`` for logical day ``ds``, as Airflow's CLI
    prints them (``task_id``, ``state``, ``start_date``, ``end_date`` in ISO 8601, ...);
    [] when there is no such run."""
    logical = dt.datetime.combine(ds, dt.time(), tzinfo=dt.UTC).isoformat()
    try:
        result = run_airflow(
            settings,
            ["tasks", "states-for-dag-run", dag_id, logical, "--output", "json"],
            timeout=300,
            log_name=f"task_states-{dag_id}-{ds.isoformat()}.log",
        )
    except AirflowCommandError as exc:
        if "DagRunNotFound" in str(exc) or "not found" in str(exc):
            return []
        raise
    return _json_list(result.stdout)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _json_list(output: str) -> list[dict[str, str]]:
    """The JSON array an Airflow CLI command printed (``-o json``), among its log lines."""
    text = _ANSI.sub("", output)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"^\[", text, re.MULTILINE):
        with contextlib.suppress(json.JSONDecodeError):
            value, _ = decoder.raw_decode(text, match.start())
            if isinstance(value, list):
                return value
    raise AirflowCommandError(f"no JSON list in the command's output:\n{text[-2000:]}")


def _failure_detector() -> Callable[[str], bool]:
    """A predicate over `airflow dags test` log lines: true at the first failed task attempt,
    or after the test loop has reported for a while that no task can run although none
    is waiting for a retry, a reschedule or a trigger (blocked by depends_on_past)."""
    blocked = 0

    def check(line: str) -> bool:
        nonlocal blocked
        if _TASK_FAILED.search(line):
            return True
        if _BLOCKED.search(line):
            blocked += 1
        return blocked >= _BLOCKED_REPORTS

    return check


def _has_schema(db: Path) -> bool:
    if not db.is_file():
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False
    finally:
        con.close()


def _kill_group(proc: subprocess.Popen[str], grace: float = 0.0) -> None:
    """Wait up to ``grace`` seconds for ``proc``'s process group to exit by itself (Spark's
    JVM stops, and cleans its temp dirs, once the Python driver is gone), then SIGTERM,
    then SIGKILL what is left. The group is ours: the command was started with
    ``start_new_session``, so the group id is its pid."""

    def wait_empty(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            proc.poll()  # reap the leader, or the group never looks empty
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    if wait_empty(grace):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if wait_empty(5.0):
            return


def _excerpt(output: str) -> str:
    """The first task error (the end of its traceback) and the last lines of a log."""
    lines = [ln for ln in output.rstrip().splitlines() if not _NOISE.search(ln)]
    tail = "--- last lines ---\n" + "\n".join(lines[-_LOG_TAIL_LINES:])
    stuck = [ln for ln in output.splitlines() if "No tasks to run. unrunnable tasks" in ln]
    if stuck:  # once, not once a second
        tail += f"\n{stuck[-1]}  [{len(stuck)}x]"
    first = next((i for i, ln in enumerate(lines) if _FIRST_ERROR.search(ln)), None)
    if first is None:
        return tail
    end = next((i for i in range(first + 1, len(lines)) if _LOG_RECORD.match(lines[i])), len(lines))
    # Java frames of a Py4JJavaError say nothing the Java exception line does not.
    block = [ln for ln in lines[first:end] if not _JAVA_FRAME.match(ln)]
    if len(block) > _ERROR_LINES:
        block = [block[0], "  [...]", *block[-(_ERROR_LINES - 2) :]]
    return "--- first error ---\n" + "\n".join(block) + "\n" + tail


def _hint(output: str) -> str:
    if "new_state=up_for_retry" in output:
        return (
            " A task failed and was waiting for its retry (see the first error below); "
            "fix it and re-run the day."
        )
    if "No tasks to run. unrunnable tasks" in output:
        return (
            " Some tasks never became runnable: with depends_on_past, a day only runs after "
            "the previous day's run succeeded (run the days in order, or clear the failed day)."
        )
    if "could not be found" in output and "Dag" in output:
        return f" The DAG did not parse; check `airflow dags list-import-errors` ({DAGS_FOLDER})."
    return ""

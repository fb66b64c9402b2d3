"""A running Airflow on PostgreSQL: ``keep airflow up | status | down``.

The slow test runs one real up/down cycle on free ports in a temporary KEEP home: the
private PostgreSQL, ``airflow db migrate``, scheduler, dag processor and API server; the
REST API lists and unpauses the daily DAG, whose first task runs through the
LocalExecutor and the Execution API; ``down`` then stops everything, the task running
at that moment (and its Spark JVM) included.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from typer.testing import CliRunner

from keep.core.config import Settings, display_settings
from keep.flows import airflow_services, cli
from keep.flows.airflow_api import AirflowApiError, AirflowClient
from keep.flows.airflow_env import (
    COMPUTE_POOL,
    DAG_ID,
    LOCAL_SETTINGS_FOLDER,
    airflow_environ,
    command_environ,
    database_url_file,
)
from keep.flows.airflow_services import api_server, down, pid_file, postgres_dir, status
from tests.conftest import free_port, let_postgres_in, make_settings
from tests.keep.store.test_postgres_server import port_is_free, postmasters

T = TypeVar("T")
SECRET = "s3cret-pw"


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float) -> T:
    """Poll ``check`` until it returns something true. A poll that finds the API server too
    busy to answer in time (a loaded 2-core machine) is polled again; the last such error
    is reported if the deadline passes."""
    deadline = time.monotonic() + timeout_s
    busy: AirflowApiError | None = None
    while True:
        try:
            value = check()
        except AirflowApiError as exc:
            busy, value = exc, None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s:.0f} s waiting for {what}"
                + (f" (last API error: {busy})" if busy else "")
            )
        time.sleep(2.0)


def service_settings(tmp_path: Path, **airflow: Any) -> Settings:
    let_postgres_in(tmp_path)
    return make_settings(
        tmp_path,
        airflow={"postgres_port": free_port(), "api_port": free_port(), **airflow},
    )


def leftovers(settings: Settings) -> list[str]:
    """Live processes started for this KEEP home: their working directory is in it, or
    their environment names its AIRFLOW_HOME. (Airflow renames some of its processes,
    e.g. ``airflow api_server -- ...``, which wipes what /proc shows of their environment,
    so the working directory, set by ``keep airflow up``, is the sure sign.)"""
    home = str(settings.home)
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cwd = proc.cwd()
            ours = cwd == home or cwd.startswith(home + "/")
            ours = ours or proc.environ().get("AIRFLOW_HOME") == str(settings.airflow.home)
            if ours:
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


# --------------------------------------------------------------------------- quick


def test_services_environment_keeps_the_password_out(tmp_path: Path) -> None:
    url = f"postgresql+psycopg2://keep:{SECRET}@db.example:5432/airflow"
    settings = service_settings(tmp_path, database_url=url, heartbeat_timeout_s=42)
    inherited = {"PATH": "/usr/bin", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:///elsewhere"}
    env = command_environ(settings, base=inherited, services=True)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD"] == f"cat {database_url_file(settings)}"
    assert not any(SECRET in value for value in env.values())
    a = settings.airflow
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        f"http://127.0.0.1:{a.api_port}/execution/"
    )
    assert env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] == "42"
    assert env["AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL"] == "42"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "True"
    other = settings.model_copy(deep=True)
    other.airflow.auth_manager = "example.AuthManager"
    env = airflow_environ(other, services=True)
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == "example.AuthManager"
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS" not in env
    # The services find the local-settings hook that preloads the tasks' libraries.
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(LOCAL_SETTINGS_FOLDER)
    assert (LOCAL_SETTINGS_FOLDER / "airflow_local_settings.py").is_file()
    other.airflow.preload_modules = False
    assert str(LOCAL_SETTINGS_FOLDER) not in airflow_environ(other, services=True)["PYTHONPATH"]
    # The embedded mode (airflow dags test) keeps its SQLite DB; its tasks share one process.
    embedded = airflow_environ(settings)
    assert embedded["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:////")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD" not in embedded
    # ... and the local-settings hook (it freezes the heap at the exit of `dags test`).
    assert embedded["PYTHONPATH"].split(os.pathsep)[0] == str(LOCAL_SETTINGS_FOLDER)


@pytest.mark.parametrize(
    ("argv", "frozen", "preloaded"),
    [
        (["airflow", "dags", "test", "keep_daily_refresh", "2026-01-02"], True, False),
        (["airflow", "scheduler"], False, True),
        (["airflow", "dag-processor"], False, False),
    ],
)
def test_local_settings_hook_per_process(argv: list[str], frozen: bool, preloaded: bool) -> None:
    """What Airflow's local-settings hook does in each kind of process: `airflow dags test`
    (every task of a day in one process) freezes the heap at exit, so the interpreter's
    final garbage collections skip the libraries' objects; the scheduler preloads the
    tasks' libraries (itself checked in test_up_status_rest_down); other processes are left
    alone."""
    probe = (
        "import atexit, gc, sys\n"
        "import keep.flows.airflow_preload as preload\n"
        "calls = []\n"
        "preload.preload = lambda *args: calls.append(args) or []\n"
        f"sys.argv = {argv!r}\n"
        "import airflow_local_settings\n"
        "atexit._run_exitfuncs()\n"
        "print(gc.get_freeze_count() > 0, bool(calls))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LOCAL_SETTINGS_FOLDER), "."])}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [str(frozen), str(preloaded)]


def test_keep_config_masks_the_database_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql+psycopg2://keep:{SECRET}@db.example:5432/airflow"
    settings = service_settings(tmp_path, database_url=url)
    assert display_settings(settings)["airflow"]["database_url"] == (
        "postgresql+psycopg2://keep:***@db.example:5432/airflow"
    )
    monkeypatch.setattr(cli, "load_settings", lambda: settings)
    result = CliRunner().invoke(cli.app, ["config"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "keep:***@db.example" in result.output
    # A secret in the settings: not in their repr, so not in a log line or a traceback.
    assert SECRET not in repr(settings) and SECRET not in str(settings.airflow)


def test_status_reports_and_removes_stale_pid_files(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    path = pid_file(settings, "scheduler")
    path.parent.mkdir(parents=True)
    path.write_text(f"{gone.pid}\n")
    result = status(settings)
    scheduler = next(p for p in result.processes if p.name == "scheduler")
    assert (scheduler.pid, scheduler.alive, scheduler.stale) == (gone.pid, False, True)
    assert not path.exists()
    assert result.health is None and result.health_error and not result.healthy
    assert down(settings) == []  # nothing to stop; idempotent


def test_down_stops_what_a_dead_service_left_in_its_group(tmp_path: Path) -> None:
    """The API server's main process is gone (killed with the shell or test that started
    it) but a worker of its session lives on: `down` finds it by the process group the pid
    file names, and stops it."""
    settings = service_settings(tmp_path)
    leader = subprocess.Popen(
        ["bash", "-c", "sleep 300 & echo $!; exit 0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # as airflow_services starts every service
    )
    worker = int(leader.stdout.readline())  # type: ignore[union-attr]
    leader.wait()
    path = pid_file(settings, "api-server")
    path.parent.mkdir(parents=True)
    path.write_text(f"{leader.pid}\n")
    assert psutil.pid_exists(worker) and os.getpgid(worker) == leader.pid
    assert down(settings, grace_s=5) == ["api-server"]
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    assert not path.exists()
    assert down(settings) == []


# --------------------------------------------------------------------------- slow


def task_state(client: AirflowClient, task_id: str, state: str) -> dict[str, Any] | None:
    """The first task instance ``task_id`` in ``state`` in any run of the daily DAG."""
    for run in client.dag_runs(DAG_ID):
        for ti in client.task_instances(DAG_ID, run["run_id"]):
            if ti["task_id"] == task_id and ti["state"] == state:
                return ti
    return None


def _maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has torch's C++ library loaded."""
    return any("libtorch_cpu" in m.path for m in psutil.Process(pid).memory_maps())


@pytest.mark.slow
def test_up_status_rest_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    settings = service_settings(tmp_path, retry_delay_s=5, heartbeat_timeout_s=30)
    # The DAG starts yesterday: once unpaused, the scheduler runs yesterday (a complete day).
    settings.pipeline.start_ds = settings.pipeline.end_ds = yesterday
    settings.generator.epoch = yesterday
    home = settings.airflow.home
    monkeypatch.setattr(cli, "load_settings", lambda: settings)
    runner = CliRunner()
    timings: dict[str, float] = {}
    try:
        started = time.monotonic()
        result = runner.invoke(cli.app, ["airflow", "up", "--timeout", "300"])
        timings["up"] = time.monotonic() - started
        assert result.exit_code == 0, result.output
        password = (postgres_dir(settings) / "password").read_text().strip()
        assert password not in result.output
        assert f"http://127.0.0.1:{settings.airflow.api_port}" in result.output
        assert "keep:***@127.0.0.1" in result.output
        pids = {name: int(pid_file(settings, name).read_text()) for name in ("scheduler",)}
        assert str(pids["scheduler"]) in result.output

        result = runner.invoke(cli.app, ["airflow", "status"])
        assert result.exit_code == 0, result.output
        assert "scheduler: healthy" in result.output and "dag_processor: healthy" in result.output
        # The password is in its two 0600 files only: no log, no airflow.cfg, ...
        holding = [
            str(path.relative_to(home))
            for path in home.rglob("*")
            if path.is_file()
            and "/data/" not in str(path)
            and password in path.read_text(errors="replace")
        ]
        assert sorted(holding) == ["postgres/password", "run/database.url"]
        # ... and no Airflow process holds it in its environment.
        for name in airflow_services.SERVICES:
            environ = psutil.Process(int(pid_file(settings, name).read_text())).environ()
            assert not any(password in value for value in environ.values()), name
        # The scheduler preloaded the tasks' libraries (torch's library is mapped in it),
        # the other services did not.
        assert {
            name: _maps_torch(int(pid_file(settings, name).read_text()))
            for name in airflow_services.SERVICES
        } == {"scheduler": True, "dag-processor": False, "api-server": False}

        client = AirflowClient.for_settings(settings)
        started = time.monotonic()
        wait_for(
            "the DAG to be parsed", lambda: DAG_ID in {d["dag_id"] for d in client.dags()}, 120
        )
        timings["parsed"] = time.monotonic() - started
        assert client.import_errors() == []
        assert {p["name"]: p["slots"] for p in client.pools()}[COMPUTE_POOL] == 1
        assert client.unpause(DAG_ID)["is_paused"] is False

        # The first task runs: scheduler -> LocalExecutor -> task -> Execution API.
        started = time.monotonic()
        land_raw = wait_for(
            "land_raw to succeed", lambda: task_state(client, "land_raw", "success"), 240
        )
        timings["land_raw"] = time.monotonic() - started
        assert land_raw["try_number"] == 1
        run = next(r for r in client.dag_runs(DAG_ID) if r["run_id"] == land_raw["dag_run_id"])
        assert (run["run_type"], run["logical_date"][:10]) == ("scheduled", yesterday.isoformat())

        # Stop while the next task (Spark) runs: its processes must go too.
        wait_for("ingest to run", lambda: task_state(client, "ingest", "running"), 120)
        wait_for("Spark's JVM", lambda: any("java" in p for p in leftovers(settings)), 90)
        running = leftovers(settings)

        # A manual run (it waits: one run at a time, and the day before comes first).
        manual = client.trigger(DAG_ID, today, conf={"why": "test"})
        runs = {r["run_id"]: r for r in client.dag_runs(DAG_ID)}
        assert runs[manual["run_id"]]["run_type"] == "manual"
        assert runs[manual["run_id"]]["conf"] == {"why": "test"}
        assert runs[manual["run_id"]]["logical_date"][:10] == today.isoformat()
        client.close()
    finally:
        started = time.monotonic()
        result = runner.invoke(cli.app, ["airflow", "down", "--grace", "5"])
        timings["down"] = time.monotonic() - started
        print("timings (s):", {k: round(v) for k, v in timings.items()})
    assert result.exit_code == 0, result.output
    assert "stopped: scheduler, dag-processor, api-server, spark-server, postgres" in result.output
    print(f"{len(running)} processes before down:", *running, sep="\n  ")
    assert leftovers(settings) == []
    assert postmasters(postgres_dir(settings) / "data") == []
    assert port_is_free(settings.airflow.api_port)
    assert port_is_free(settings.airflow.postgres_port)
    assert not list((home / "run").glob("*.pid"))
    result = runner.invoke(cli.app, ["airflow", "status"])
    assert result.exit_code == 1 and "no answer" in result.output
    assert runner.invoke(cli.app, ["airflow", "down"]).output.strip() == "nothing was running"


@pytest.mark.slow
def test_embedded_api_server(tmp_path: Path) -> None:
    """An API server alone over the SQLite DB of `airflow dags test`, for the block only."""
    settings = service_settings(tmp_path)
    with api_server(settings) as client:
        assert client.health()["metadatabase"]["status"] == "healthy"
        assert {p["name"]: p["slots"] for p in client.pools()}[COMPUTE_POOL] == 1
        assert client.dags() == []  # nothing ran yet
        assert leftovers(settings) != []
    assert leftovers(settings) == []
    assert port_is_free(settings.airflow.api_port)

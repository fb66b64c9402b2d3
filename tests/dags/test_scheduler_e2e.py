"""Both DAGs under a real, running Airflow on PostgreSQL, with a scheduler crash in the middle.

``keep airflow up`` starts the private PostgreSQL, the scheduler (LocalExecutor), the DAG
processor and the API server for a temporary KEEP home whose schedule is two days long;
``spark.remote`` names the test session's Spark server, so the Spark tasks are its clients
(as with the server ``keep airflow up`` starts when none is named).
Unpausing the daily DAG makes the scheduler catch up both days by itself, in order (as after
an outage). Each publication's ``keep_knowledge`` Asset event triggers the downstream DAG,
which registers one model version per knowledge snapshot.

While day 2 aggregates (a Spark job mid-write), the scheduler and everything it started --
executor worker, task (the Spark client) -- are killed with SIGKILL, as a crashed host would
lose them; ``keep airflow up`` restarts the scheduler. The day must then finish exactly once,
and every table must equal, row for row, an uninterrupted run of the same days in another
home (the test session's ``knowledge_lake``: the Spark steps by the same jobs, every other
step in one process). Finally ``keep airflow down`` must leave no process behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from keep.core.config import Settings
from keep.flows import airflow_services
from keep.flows.airflow_api import AirflowClient
from keep.flows.airflow_env import DAG_ID, DOWNSTREAM_DAG_ID
from keep.store import model_registry as registry
from tests.conftest import SPARK_LAKE_DAYS, free_port, let_postgres_in, make_settings
from tests.dags.lake_checksums import LAKE_TABLES, lake_checksums
from tests.keep.flows.test_airflow_services import leftovers, wait_for
from tests.keep.store.test_postgres_server import postmasters

D1, D2 = SPARK_LAKE_DAYS[:2]
DAYS = [D1, D2]
TABLES = (*LAKE_TABLES, "knowledge/user", "knowledge/item", "knowledge/user_category")
TABLES += ("gold/downstream_training_set",)


def _settings(home: Path, remote: str | None = None, **airflow: Any) -> Settings:
    return make_settings(
        home,
        airflow={"demo_mode": True, **airflow},
        pipeline={"start_ds": D1, "end_ds": D2, "schedule_end_ds": D2},
        spark={"remote": remote},
    )


def _runs(client: AirflowClient, dag_id: str) -> list[dict[str, Any]]:
    return sorted(client.dag_runs(dag_id), key=lambda r: r.get("logical_date") or r["run_id"])


def _ti(client: AirflowClient, run_id: str, task_id: str) -> dict[str, Any]:
    return next(t for t in client.task_instances(DAG_ID, run_id) if t["task_id"] == task_id)


def _running_task(client: AirflowClient, day: dt.date, task_id: str) -> bool:
    for run in client.dag_runs(DAG_ID):
        if (run.get("logical_date") or "")[:10] == day.isoformat():
            return _ti(client, run["run_id"], task_id)["state"] == "running"
    return False


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process under it at once (a crashed host)."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]


def _finished(client: AirflowClient) -> bool:
    daily = _runs(client, DAG_ID)
    failed = [r["run_id"] for r in daily if r["state"] == "failed"]
    assert not failed, f"daily runs failed: {failed}"
    down = client.dag_runs(DOWNSTREAM_DAG_ID)
    assert not [r for r in down if r["state"] == "failed"], down
    return (
        len(daily) == len(DAYS)
        and all(r["state"] == "success" for r in daily)
        and len([r for r in down if r["state"] == "success"]) == len(DAYS)
    )


def _versions(settings: Settings) -> list[tuple[str, str, list[str], bool]]:
    return [
        (v.knowledge_lineage, v.snapshot_ds, v.train_days, v.gate["success"])
        for v in registry.versions(settings, "ads")
    ]


@pytest.mark.slow
# Two days of both DAGs under a real scheduler, plus the uninterrupted reference: 15-25 min
# on a loaded 2-core machine, more than the suite's default per-test limit.
@pytest.mark.timeout(2700)
def test_scheduler_runs_both_dags_and_survives_a_crash(
    request: pytest.FixtureRequest, tmp_path: Path, spark_server_url: str
) -> None:
    let_postgres_in(tmp_path)
    settings = _settings(
        tmp_path / "scheduled",
        spark_server_url,
        postgres_port=free_port(),
        api_port=free_port(),
        retry_delay_s=5,
        heartbeat_timeout_s=30,
    )
    timings: dict[str, float] = {}
    began = time.monotonic()
    killed: list[int] = []
    try:
        airflow_services.up(settings)
        timings["up"] = time.monotonic() - began
        client = AirflowClient.for_settings(settings)
        wait_for(
            "both DAGs parsed",
            lambda: {DAG_ID, DOWNSTREAM_DAG_ID} <= {d["dag_id"] for d in client.dags()},
            180,
        )
        assert client.import_errors() == []
        client.unpause(DOWNSTREAM_DAG_ID)
        client.unpause(DAG_ID)  # the scheduler catches up D1 and D2 by itself

        # Day 2 aggregates: crash the scheduler with everything it started.
        wait_for("day 2 to aggregate", lambda: _running_task(client, D2, "aggregate"), 1200)
        time.sleep(3)
        scheduler = int(airflow_services.pid_file(settings, "scheduler").read_text())
        killed = _kill_tree(scheduler)
        timings["killed_at"] = time.monotonic() - began
        killed_when = dt.datetime.now(dt.UTC)
        assert len(killed) >= 3, killed  # scheduler, executor worker, task
        airflow_services.up(settings)  # restarts what is not running: the scheduler

        wait_for("both days and both model versions", lambda: _finished(client), 1500)
        timings["finished"] = time.monotonic() - began

        # Each day ran once, in order, as a scheduled (catch-up) run.
        daily = _runs(client, DAG_ID)
        assert [(r["logical_date"][:10], r["run_type"]) for r in daily] == [
            (D1.isoformat(), "scheduled"),
            (D2.isoformat(), "scheduled"),
        ]
        assert daily[0]["end_date"] <= daily[1]["start_date"]
        # The killed task was retried (its first try died with the scheduler); nothing else was.
        tries = {
            t["task_id"]: t["try_number"] for t in client.task_instances(DAG_ID, daily[1]["run_id"])
        }
        assert tries["aggregate"] == 2, tries
        assert {t for t, n in tries.items() if n != 1} == {"aggregate"}, tries
        # The restarted scheduler reset the dead one's task for its retry within a few
        # heartbeat timeouts (30 s here), not after Airflow's default 300 s orphan check.
        retried = dt.datetime.fromisoformat(
            _ti(client, daily[1]["run_id"], "aggregate")["start_date"]
        )
        assert (retried - killed_when).total_seconds() < 150, (retried, killed_when)

        # One downstream run per published snapshot, each triggered by its Asset event.
        down = client.dag_runs(DOWNSTREAM_DAG_ID)
        assert [r["run_type"] for r in down] == ["asset_triggered"] * 2
        versions = _versions(settings)
        assert [v[1] for v in versions] == [D1.isoformat(), D2.isoformat()]
        assert all(v[3] for v in versions)
        assert registry.live(settings, "ads").snapshot_ds == D2.isoformat()  # type: ignore[union-attr]
        events = client.asset_events("keep_downstream_model")
        assert sorted(e["extra"]["snapshot_ds"] for e in events) == [D1.isoformat(), D2.isoformat()]

        # A re-publication of the same snapshot (its event again, by hand) trains nothing.
        again = client.trigger(
            DOWNSTREAM_DAG_ID,
            None,
            conf={"lineage": versions[-1][0], "snapshot_ds": D2.isoformat()},
        )
        wait_for(
            "the repeated run",
            lambda: next(
                r["state"] in ("success", "failed")
                for r in client.dag_runs(DOWNSTREAM_DAG_ID)
                if r["run_id"] == again["run_id"]
            ),
            300,
        )
        states = {
            t["task_id"]: t["state"]
            for t in client.task_instances(DOWNSTREAM_DAG_ID, again["run_id"])
        }
        assert states["plan"] == "success" and states["train"] == states["register"] == "skipped"
        assert _versions(settings) == versions
        client.close()
    finally:
        stopped = airflow_services.down(settings, grace_s=10)
        print("timings (s):", {k: round(v) for k, v in timings.items()}, "stopped:", stopped)
    assert leftovers(settings) == []
    assert postmasters(airflow_services.postgres_dir(settings) / "data") == []
    assert not [pid for pid in killed if psutil.pid_exists(pid) and _alive(pid)]

    # The uninterrupted reference, in another home: the session's shared lake of these days
    # (the Spark steps run in order by the same jobs), every other step of each day run in
    # one process, in order, as `keep run` runs them, each publication's event handled as
    # the downstream DAG does (asked for only now, when another test has most likely built it).
    reference = make_settings(request.getfixturevalue("knowledge_lake"))

    # The crash changed nothing: every table equals the uninterrupted run's (the lake tables'
    # days of this run: the shared lake has one more), and so do the registered versions
    # (same lineage, snapshots, days and gate outcomes).
    days = [ds.isoformat() for ds in DAYS]
    got = lake_checksums(settings.lake.root, TABLES, days)
    assert got == lake_checksums(reference.lake.root, TABLES, days)
    assert got["bronze/impressions"][0] == len(DAYS) * settings.generator.impressions_per_day
    assert _versions(settings) == _versions(reference)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

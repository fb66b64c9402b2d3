"""Failure semantics of the daily DAG, read back through Airflow's REST API.

A failed gate is deterministic: its task fails at once, on its first try, although the DAG
allows retries. An infrastructure error (here: Spark cannot start, its jars are missing) is
retried ``airflow.retries`` times. Day 1's Spark steps run on the test session's Spark
server; day 2's tasks start their own Spark (there is no server to fall back on). Both runs go through ``airflow dags test`` (SQLite); an
API server is then started over that database to read each task instance's try count.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from keep.flows.airflow_env import DAG_ID, AirflowCommandError, dags_test
from keep.flows.airflow_services import api_server
from tests.conftest import free_port, make_settings

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)


@pytest.mark.slow
def test_a_failed_gate_is_not_retried_an_infrastructure_error_is(
    tmp_path: Path, spark_server_url: str
) -> None:
    airflow = {"demo_mode": True, "retries": 2, "retry_delay_s": 1, "api_port": free_port()}
    # No quarantine rate can be <= -1 %: the ingest gate fails (deterministically).
    failing_gate = make_settings(
        tmp_path,
        airflow=airflow,
        validation={"max_quarantine_rate": -0.01},
        spark={"remote": spark_server_url},
    )
    with pytest.raises(AirflowCommandError, match="exited with code"):
        dags_test(failing_gate, D1, timeout=900)
    # Day 2 (its ingest only depends on day 1's ingest, which succeeded): Spark cannot start.
    no_jars = make_settings(tmp_path, airflow=airflow, spark={"jars_dir": tmp_path / "no-jars"})
    with pytest.raises(AirflowCommandError, match="exited with code"):
        dags_test(no_jars, D2, timeout=900)

    with api_server(failing_gate) as client:
        runs = {r["logical_date"][:10]: r for r in client.dag_runs(DAG_ID)}
        day1 = {
            t["task_id"]: t for t in client.task_instances(DAG_ID, runs[D1.isoformat()]["run_id"])
        }
        day2 = {
            t["task_id"]: t for t in client.task_instances(DAG_ID, runs[D2.isoformat()]["run_id"])
        }
    assert (day1["ingest"]["state"], day1["ingest"]["try_number"]) == ("success", 1)
    assert (day1["validate"]["state"], day1["validate"]["try_number"]) == ("failed", 1)
    assert day1["aggregate"]["state"] == "upstream_failed"
    assert (day2["ingest"]["state"], day2["ingest"]["try_number"]) == ("failed", 3)
    assert runs[D1.isoformat()]["state"] == runs[D2.isoformat()]["state"] == "failed"

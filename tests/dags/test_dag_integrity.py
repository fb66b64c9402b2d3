"""Integrity of every DAG in ``dags/``: it parses, and follows the project's conventions.

Airflow reads its configuration when it is imported, so the DagBag is filled in a
subprocess with the environment :func:`keep.flows.airflow_env.airflow_environ` generates for a
temporary ``AIRFLOW_HOME``; the subprocess reports what it found as JSON.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keep.core.config import Settings, load_settings
from keep.flows.airflow_env import DAGS_FOLDER, REPO_ROOT, airflow_environ, command_environ
from tests.conftest import make_settings

DAILY = "keep_daily_refresh"

# Runs inside the subprocess: parse the dags folder, describe every DAG as JSON.
_DESCRIBE_DAGBAG = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag

started = time.monotonic()
bag = DagBag(dag_folder=sys.argv[1])
parse_s = time.monotonic() - started
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags),
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "timetable": f"{type(dag.timetable).__name__} {getattr(dag.timetable, 'expression', '')}",
        "schedule": str(dag.schedule),
        "start_date": dag.start_date.isoformat() if dag.start_date else None,
        "end_date": dag.end_date.isoformat() if dag.end_date else None,
        "asset_triggers": sorted(a.name for a in getattr(
            getattr(dag.timetable, "asset_condition", None), "objects", [])),
        "doc_md": dag.doc_md,
        "tasks": {
            t.task_id: {
                "owner": t.owner,
                "retries": t.retries,
                "retry_delay_s": t.retry_delay.total_seconds(),
                "depends_on_past": t.depends_on_past,
                "has_failure_callback": bool(t.on_failure_callback),
                "downstream": sorted(t.downstream_task_ids),
                "outlets": [getattr(o, "name", str(o)) for o in t.outlets],
                "pool": t.pool,
                "upstream": sorted(t.upstream_task_ids),
            }
            for t in dag.tasks
        },
    }
heavy = sorted(
    m for m in ("pyspark", "great_expectations", "torch", "feast", "spark_jobs", "models")
    if m in sys.modules
)
with open(sys.argv[2], "w") as out:
    json.dump({"import_errors": bag.import_errors, "dags": dags, "parse_s": parse_s,
               "heavy_modules": heavy}, out)
"""


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("dag-integrity"))


@pytest.fixture(scope="module")
def dagbag(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    report = tmp_path_factory.mktemp("dagbag") / "dagbag.json"
    proc = subprocess.run(
        [sys.executable, "-c", _DESCRIBE_DAGBAG, str(DAGS_FOLDER), str(report)],
        env=command_environ(settings),
        cwd=settings.home,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"DagBag subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(report.read_text())


def test_no_import_errors(dagbag: dict[str, Any]) -> None:
    assert dagbag["import_errors"] == {}
    assert DAILY in dagbag["dags"]


@pytest.mark.parametrize("convention", ["tags", "owner", "retries", "docs"])
def test_every_dag_follows_conventions(dagbag: dict[str, Any], convention: str) -> None:
    problems = []
    for dag_id, dag in dagbag["dags"].items():
        if convention == "tags" and not dag["tags"]:
            problems.append(f"{dag_id} has no tags")
        if convention == "docs" and not (dag["doc_md"] or "").strip():
            problems.append(f"{dag_id} has no doc_md")
        for task_id, task in dag["tasks"].items():
            if convention == "owner" and task["owner"] in ("", "airflow", None):
                problems.append(f"{dag_id}.{task_id} has no owner")
            if convention == "retries" and task["retries"] < 1:
                problems.append(f"{dag_id}.{task_id} has retries={task['retries']}")
    assert problems == []


def test_daily_refresh_shape(dagbag: dict[str, Any], settings: Settings) -> None:
    dag = dagbag["dags"][DAILY]
    tasks = dag["tasks"]
    chain = [
        "land_raw",
        "ingest",
        "validate",
        "aggregate",
        "validate_state",
        "samples",
        "validate_samples",
        "pretrain",
        "export_knowledge",
        "validate_knowledge",
        "publish_knowledge",
        "maintain",
    ]
    assert set(tasks) == set(chain)
    # A chain in this order, nothing else: every gate stops everything after it.
    assert {t: v["downstream"] for t, v in tasks.items()} == {
        task: chain[i + 1 : i + 2] for i, task in enumerate(chain)
    }
    assert dag["max_active_runs"] == 1
    # Missed days are caught up, in order (one run at a time, each after the day before).
    assert dag["catchup"] is True
    assert dag["end_date"] is None  # pipeline.schedule_end_ds: no end by default
    assert dag["timetable"] == "CronDataIntervalTimetable 0 0 * * *"  # ds = the day processed
    assert {"keep", "daily"} <= set(dag["tags"])
    start = dt.datetime.fromisoformat(dag["start_date"])
    assert start == dt.datetime.combine(settings.pipeline.start_ds, dt.time(), tzinfo=dt.UTC)
    for task_id, task in tasks.items():
        assert task["owner"] == "keep", task_id
        assert task["depends_on_past"] is True, task_id
        assert task["retries"] >= 1 and task["retry_delay_s"] > 0, task_id
        assert task["retry_delay_s"] == settings.airflow.retry_delay_s, task_id
        assert task["has_failure_callback"], task_id
        # Only the publication announces the knowledge Asset (after every gate passed).
        expected = ["keep_knowledge"] if task_id == "publish_knowledge" else []
        assert task["outlets"] == expected, task_id
        assert task["pool"] == "keep_compute", task_id


def test_downstream_dag_shape(dagbag: dict[str, Any]) -> None:
    dag = dagbag["dags"]["keep_downstream_ctr"]
    tasks = dag["tasks"]
    # Triggered by the knowledge Asset only, one run at a time, no date-driven catch-up.
    assert dag["asset_triggers"] == ["keep_knowledge"]
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert {t: v["upstream"] for t, v in tasks.items()} == {
        "plan": [],
        "training_set": ["plan"],
        "train": ["plan", "training_set"],
        "evaluate": ["plan", "train"],
        "model_gate": ["evaluate"],
        "register": ["evaluate", "model_gate"],
    }
    for task_id, task in tasks.items():
        assert task["pool"] == "keep_compute", task_id
        assert task["depends_on_past"] is False, task_id  # asset runs have no logical date
        expected = ["keep_downstream_model"] if task_id == "register" else []
        assert task["outlets"] == expected, task_id


def test_parsing_stays_light(dagbag: dict[str, Any]) -> None:
    """Heavy modules are imported inside the steps (keep.flows.pipeline), so parsing the DAG
    folder is fast."""
    assert dagbag["heavy_modules"] == []
    assert dagbag["parse_s"] < 10


def test_airflow_environ_reproduces_settings(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's ``load_settings()`` under the generated environment is the caller's object,
    even when the parent environment carries conflicting KEEP_* overrides."""
    parent = {"PATH": "/usr/bin", "KEEP_SPARK__MASTER": "spark://elsewhere:7077"}
    env = command_environ(settings, base=parent)
    assert "KEEP_SPARK__MASTER" not in env
    for key in [k for k in os.environ if k.startswith("KEEP_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(settings.home)
    assert load_settings() == settings


def test_airflow_environ_contents(settings: Settings) -> None:
    env = airflow_environ(settings)
    home = settings.airflow.home
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO_ROOT / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{home / 'airflow.db'}"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:////")
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(settings.airflow.parallelism)
    assert env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] == str(settings.airflow.parallelism)
    assert env["KEEP_HOME"] == str(settings.home)
    assert Path(env["AIRFLOW_HOME"]).is_absolute()

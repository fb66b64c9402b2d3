"""One day through Airflow end to end: ``airflow dags test keep_daily_refresh 2026-01-01``.

A temporary KEEP home holds the raw files, the lake and ``AIRFLOW_HOME`` (SQLite metadata
DB); the Airflow subprocess gets the test's settings through the generated environment.
The result is read back without Spark (``deltalake``) and compared with the raw files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from deltalake import DeltaTable

from keep.flows.airflow_env import dags_test, init_airflow, task_states
from tests.conftest import make_settings

DS = dt.date(2026, 1, 1)


def raw_impression_ids(raw_root: Path, ds: dt.date) -> list[str]:
    """Impression ids of the day's raw JSON-lines files, read line by line (no project code)."""
    ids = []
    for path in sorted((raw_root / "impressions" / f"ds={ds.isoformat()}").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                ids.append(json.loads(line)["impression_id"])
    return ids


def processes_using(airflow_home: Path) -> list[str]:
    """Processes of this user whose environment points at ``airflow_home`` (leftovers)."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real != os.getuid():
                continue
            if proc.environ().get("AIRFLOW_HOME") == str(airflow_home):
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.mark.slow
def test_one_day_through_airflow(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    airflow_home = settings.airflow.home

    started = time.monotonic()
    assert init_airflow(settings) is True
    assert init_airflow(settings) is False  # idempotent: migrated once
    migrate_s = time.monotonic() - started

    started = time.monotonic()
    result = dags_test(settings, DS, timeout=900, fail_fast=True)
    run_s = time.monotonic() - started
    print(f"airflow db migrate: {migrate_s:.0f} s, airflow dags test: {run_s:.0f} s")
    assert result.returncode == 0
    assert task_states(settings, DS) == {
        task: "success"
        for task in (
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
        )
    }

    # Every raw impression of the day is in bronze, once, under the right ds (the demo
    # generator writes only valid, unique rows: nothing is quarantined or deduplicated).
    raw_ids = raw_impression_ids(settings.lake.raw_root, DS)
    assert raw_ids
    bronze = DeltaTable(str(settings.lake.root / "bronze" / "impressions"))
    day = bronze.to_pyarrow_table(
        partitions=[("ds", "=", DS.isoformat())], columns=["impression_id", "ds"]
    ).to_pydict()
    assert len(day["impression_id"]) == len(raw_ids)
    assert sorted(day["impression_id"]) == sorted(raw_ids)
    assert set(day["ds"]) == {DS.isoformat()}

    # The tasks' XComs carry the counts and the gate outcome.
    con = sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True)
    try:
        xcoms = dict(
            con.execute(
                "SELECT task_id, value FROM xcom WHERE dag_id = ? AND key = 'return_value'",
                ("keep_daily_refresh",),
            ).fetchall()
        )
    finally:
        con.close()
    ingest = json.loads(xcoms["ingest"])["result"]
    assert ingest["impressions"]["rows_stored"] == len(raw_ids)
    for gate in ("validate", "validate_state", "validate_samples", "validate_knowledge"):
        assert json.loads(xcoms[gate])["result"]["success"] is True, gate
    pretrain = json.loads(xcoms["pretrain"])["result"]
    lineage = pretrain["lineage"]
    assert pretrain["new_lineage"] is True  # the first day starts a lineage

    # The publication announced the knowledge Asset, naming the lineage and the snapshot.
    con = sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True)
    try:
        events = con.execute(
            "SELECT a.name, e.extra, e.source_task_id FROM asset_event e "
            "JOIN asset a ON a.id = e.asset_id"
        ).fetchall()
    finally:
        con.close()
    assert [(name, task) for name, _, task in events] == [("keep_knowledge", "publish_knowledge")]
    extra = json.loads(events[0][1])
    assert (extra["lineage"], extra["snapshot_ds"]) == (lineage, DS.isoformat())

    # The published user vectors are live in the online store: what the retrieval module
    # serves equals the knowledge table's rows of the snapshot, read with delta-rs.
    knowledge = DeltaTable(str(settings.lake.root / "knowledge" / "user")).to_pyarrow_table(
        partitions=[("knowledge_lineage", "=", lineage), ("snapshot_ds", "=", DS.isoformat())],
        columns=["user_id", "vector"],
    )
    first = knowledge.slice(0, 1).to_pylist()[0]
    from serving.retrieval import KnowledgeRetriever

    served = KnowledgeRetriever(settings).fetch(first["user_id"], [], [])
    assert (served.lineage, served.snapshot_ds, served.user_missing) == (
        lineage,
        DS.isoformat(),
        False,
    )
    np.testing.assert_allclose(served.user, np.asarray(first["vector"], np.float32))

    # The day's samples: one per stored impression (no down-sampling by default).
    samples = DeltaTable(str(settings.lake.root / "gold" / "pretrain_samples"))
    assert samples.to_pyarrow_table(partitions=[("ds", "=", DS.isoformat())]).num_rows == len(
        raw_ids
    )

    # `airflow dags test` ran everything in its own process and left nothing behind.
    assert processes_using(airflow_home) == []

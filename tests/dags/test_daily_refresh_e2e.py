"""One day through Airflow end to end: ``airflow dags test keep_daily_refresh 2026-01-01``.

A temporary KEEP home holds the raw files, the lake and ``AIRFLOW_HOME`` (SQLite metadata
DB); the Airflow subprocess gets the test's settings through the generated environment.
Its Spark tasks are Spark Connect clients of the test session's Spark server, as
``keep run --via airflow`` runs them on one.
The result is read back without Spark (``deltalake``) and compared with the raw files.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from keep.flows.airflow_env import DAG_ID, dags_test, init_airflow, task_states
from keep.flows.airflow_services import api_server
from tests.conftest import free_port, make_settings
from tests.keep.flows.test_airflow_services import leftovers

DS = dt.date(2026, 1, 1)


def raw_impression_ids(raw_root: Path, ds: dt.date) -> list[str]:
    """Impression ids of the day's raw JSON-lines files, read line by line (no project code)."""
    ids = []
    for path in sorted((raw_root / "impressions" / f"ds={ds.isoformat()}").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                ids.append(json.loads(line)["impression_id"])
    return ids


@pytest.mark.slow
def test_one_day_through_airflow(tmp_path: Path, spark_server_url: str) -> None:
    settings = make_settings(
        tmp_path, airflow={"api_port": free_port()}, spark={"remote": spark_server_url}
    )

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
            "maintain",
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

    # The tasks' XComs carry the counts and the gate outcome (read through the REST API of
    # an API server started over this home's metadata DB).
    with api_server(settings) as client:
        (run,) = client.dag_runs(DAG_ID)
        xcoms = {
            task: client.xcom(DAG_ID, run["run_id"], task)
            for task in ("ingest", "validate", "validate_state", "validate_samples")
            + ("validate_knowledge", "pretrain")
        }
        events = client.asset_events("keep_knowledge")
    ingest = xcoms["ingest"]["result"]
    assert ingest["impressions"]["rows_stored"] == len(raw_ids)
    for gate in ("validate", "validate_state", "validate_samples", "validate_knowledge"):
        assert xcoms[gate]["result"]["success"] is True, gate
    pretrain = xcoms["pretrain"]["result"]
    lineage = pretrain["lineage"]
    assert pretrain["new_lineage"] is True  # the first day starts a lineage

    # The publication announced the knowledge Asset, naming the lineage and the snapshot.
    assert [(e["name"], e["source_task_id"]) for e in events] == [
        ("keep_knowledge", "publish_knowledge")
    ]
    extra = events[0]["extra"]
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
    assert leftovers(settings) == []

"""The Spark server: steps run as Spark Connect clients of one long-lived server.

Real server (``spark-submit ... SparkConnectServer`` from the pyspark wheel), real steps
run through the CLI in child processes (a process that made a Spark Connect session puts
pyspark in Connect mode for good, so the remote steps never share the test's process).
The steps run on the test session's server (started the same way, already warm), while
this test starts, queries and stops a server of its own with the CLI.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from deltalake import DeltaTable

from keep.core.config import Settings
from keep.core.errors import SetupError
from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS, INGEST_AUDIT, QUARANTINE
from keep.flows.airflow_env import command_environ
from keep.lake import delta, spark_server
from keep.sources import generator
from tests.conftest import make_settings

DS = dt.date(2026, 1, 1)


def keep_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keep.flows.cli", *args],
        env=command_environ(settings),
        cwd=settings.home,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_steps_run_on_the_server_and_write_tables_every_reader_can_read(
    tmp_path: Path, spark_server_url: str
) -> None:
    settings = make_settings(tmp_path)
    directory = spark_server.server_dir(settings)
    server = spark_server.start(settings, directory)
    try:
        assert spark_server.start(settings, directory) == server  # idempotent
        remote = make_settings(tmp_path, spark={"remote": spark_server_url})
        paths = generator.write_day(settings, DS)
        lines = sum(1 for _ in paths["impressions"].open())

        result = keep_cli(remote, "ingest", "--ds", DS.isoformat())
        assert result.returncode == 0, result.stdout + result.stderr
        assert "on the Spark server" in " ".join((result.stdout + result.stderr).split())
        status = keep_cli(settings, "spark-server", "status")
        assert status.returncode == 0 and server.url in status.stdout

        # Tables written through Spark Connect are plain Delta tables that delta-rs reads
        # with the lake's schema (a StringType sent by the client used to be recorded as
        # "string collate UTF8_BINARY", which delta-rs refuses).
        for spec in (IMPRESSIONS, DIM_USERS, DIM_ITEMS, QUARANTINE, INGEST_AUDIT):
            table = DeltaTable(str(delta.table_path(settings, spec)))
            schema = table.schema().to_arrow()
            assert [f.name for f in schema] == spec.schema.names, spec.name
            table.to_pyarrow_table()
        audit = DeltaTable(str(delta.table_path(settings, INGEST_AUDIT))).to_pyarrow_table()
        row = {r["source"]: r for r in audit.to_pylist()}["impressions"]
        assert row["rows_in"] == lines
        assert (
            row["rows_stored"]
            + row["rows_quarantined"]
            + row["duplicates_within_day"]
            + row["duplicates_earlier_days"]
            == lines
        )
        assert delta.partition_rows(settings, IMPRESSIONS, DS) == row["rows_stored"]

        # The gate on GX's Spark engine (a day above validation.pandas_max_rows) validates
        # the server's frames too.
        spark_gate = remote.model_copy(
            update={"validation": remote.validation.model_copy(update={"pandas_max_rows": 0})}
        )
        result = keep_cli(spark_gate, "validate", "--ds", DS.isoformat())
        assert result.returncode == 0, result.stdout + result.stderr
        # Every other step runs on the server in tests/dags/test_scheduler_e2e.py (under
        # ``keep airflow up``), its tables compared with an in-process run's.
    finally:
        stopped = keep_cli(settings, "spark-server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert spark_server.running(directory) is None
    assert keep_cli(settings, "spark-server", "status").returncode == 1


def test_a_server_that_cannot_start_is_one_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, spark={"driver_memory": "not-a-size"})
    with pytest.raises(SetupError) as error:
        spark_server.start(settings, tmp_path / "server", timeout_s=120)
    assert "Spark server" in str(error.value) and "server.log" in str(error.value)

"""The pipeline gives the same lake on a real standalone cluster as on ``local[2]``.

Two tiny days (the second one incremental, on the first one's state) are ingested and
aggregated twice from the same raw files: by the session's ``local[2]`` SparkSession (lake
A: the test session's shared lake, ``spark_lake``, whose raw files are checked equal), and in a separate driver process whose
``spark.master`` is a standalone cluster started with ``keep.lake.cluster`` on loopback
(lake B; one Python process can hold only one SparkContext, and the session-scoped one is
shared with other tests). The tables are then read with delta-rs (no Spark) and compared.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from deltalake import DeltaTable

from keep.core.config import Settings
from keep.core.tables import ENTITIES, IMPRESSIONS, USER_BEHAVIOR, TableSpec, stats_spec
from keep.lake import delta
from keep.lake.cluster import start_standalone
from keep.sources import generator
from tests.conftest import REPO, SPARK_LAKE_DAYS, make_settings

DAYS = SPARK_LAKE_DAYS[:2]

# The cluster-side driver: settings come from KEEP_* environment variables only.
CLUSTER_DRIVER = """
import datetime as dt, sys
from keep.core.config import load_settings
from keep.lake.spark import get_spark
from spark_jobs.aggregate import run_aggregate
from spark_jobs.ingest import run_ingest

settings = load_settings()
spark = get_spark(settings)
assert spark.sparkContext.master == settings.spark.master, spark.sparkContext.master
for arg in sys.argv[1:]:
    ds = dt.date.fromisoformat(arg)
    run_ingest(spark, settings, ds)
    print("aggregate", ds, run_aggregate(spark, settings, ds), flush=True)
spark.stop()
"""


def _env(settings: Settings, master: str, extra_conf: dict[str, str]) -> dict[str, str]:
    """KEEP_* variables reproducing ``settings`` for a driver of ``master``."""
    g = settings.generator
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEP_")}
    env.update(
        {
            "KEEP_CONFIG": str(settings.home / "no-such-keep.yaml"),
            "KEEP_HOME": str(settings.home),
            "KEEP_LAKE__ROOT": str(settings.lake.root),
            "KEEP_LAKE__RAW_ROOT": str(settings.lake.raw_root),
            "KEEP_SPARK__MASTER": master,
            "KEEP_SPARK__JARS_DIR": str(settings.spark.jars_dir),
            "KEEP_SPARK__SHUFFLE_PARTITIONS": str(settings.spark.shuffle_partitions),
            "KEEP_SPARK__DRIVER_MEMORY": "1g",
            "KEEP_SPARK__JAVA_OPTIONS": settings.spark.java_options,
            "KEEP_SPARK__EXTRA_CONF": json.dumps(extra_conf),
            "KEEP_GENERATOR__N_USERS": str(g.n_users),
            "KEEP_GENERATOR__N_ITEMS": str(g.n_items),
            "KEEP_GENERATOR__IMPRESSIONS_PER_DAY": str(g.impressions_per_day),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    return env


def _rows(settings: Settings, spec: TableSpec, ds: dt.date | None) -> list[dict[str, Any]]:
    """Rows of ``spec`` (one partition, or all), read with delta-rs, sorted by the key."""
    filters = [("ds", "=", ds.isoformat())] if ds else None
    table = DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_table(filters=filters)
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: tuple(r[k] for k in spec.key))


def _same(a: Any, b: Any) -> bool:
    """Deep equality with a relative tolerance on floats."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _assert_same_table(a: Settings, b: Settings, spec: TableSpec, ds: dt.date | None) -> int:
    rows_a, rows_b = _rows(a, spec, ds), _rows(b, spec, ds)
    assert rows_a, f"{spec.name} is empty on local[2]"
    assert len(rows_a) == len(rows_b), (
        f"{spec.name}: {len(rows_a)} rows local, {len(rows_b)} cluster"
    )
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert _same(ra, rb), f"{spec.name} differs:\nlocal:   {ra}\ncluster: {rb}"
    return len(rows_a)


@pytest.mark.slow
def test_standalone_cluster_matches_local(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    remote = make_settings(tmp_path, lake={"root": tmp_path / "lake_b"})
    for ds in DAYS:  # the same world's days as the shared lake's (the generator is seeded)
        generator.write_day(remote, ds)
    driver_log = tmp_path / "cluster-driver.log"

    began = time.perf_counter()
    with start_standalone(tmp_path / "cluster", cores=1, memory="1g", timeout=180) as cluster:
        pids = cluster.pids
        timings = {"cluster_start_s": time.perf_counter() - began}
        env = {
            **_env(remote, cluster.master_url, cluster.client_conf()),
            **cluster.driver_env(),
        }
        with driver_log.open("wb") as log:
            driver = subprocess.Popen(
                [sys.executable, "-c", CLUSTER_DRIVER, *[d.isoformat() for d in DAYS]],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                returncode = driver.wait(timeout=900)
                timings["cluster_driver_s"] = (
                    time.perf_counter() - began - timings["cluster_start_s"]
                )
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
        tail = "\n".join(driver_log.read_text(errors="replace").splitlines()[-40:])
        assert returncode == 0, f"cluster driver failed ({returncode}):\n{tail}\n{cluster.logs()}"
        state = cluster.status()
        apps = state["completedapps"] + state["activeapps"]
        # The work really ran on the cluster's executor (which fetched the Delta jars).
        assert [a["name"] for a in apps] == [remote.spark.app_name], apps
        executor_logs = list((cluster.work_dir / "work").glob("app-*/*/stderr"))
        assert executor_logs, "no executor ran on the worker"
        assert "delta-spark" in executor_logs[0].read_text(errors="replace")

    assert not [p for p in pids if psutil.pid_exists(p)], "master/worker still alive"
    assert cluster.processes() == [], "cluster processes (executors?) still alive"

    # The local side: the session's shared lake (asked for only now, when another test has
    # most likely built it), from raw files equal to the ones the cluster read.
    local = make_settings(request.getfixturevalue("spark_lake"))
    raw = [p for p in sorted(remote.lake.raw_root.rglob("*")) if p.is_file()]
    assert raw
    for path in raw:
        twin = local.lake.raw_root / path.relative_to(remote.lake.raw_root)
        assert twin.read_bytes() == path.read_bytes(), path

    last = DAYS[-1]
    counts = {
        spec.name: _assert_same_table(local, remote, spec, last)
        for spec in [*[stats_spec(e, local.aggregate.windows) for e in ENTITIES], USER_BEHAVIOR]
    }
    counts[IMPRESSIONS.name] = sum(
        _assert_same_table(local, remote, IMPRESSIONS, ds) for ds in DAYS
    )
    assert counts[IMPRESSIONS.name] == len(DAYS) * local.generator.impressions_per_day
    assert len(_rows(remote, IMPRESSIONS, None)) == counts[IMPRESSIONS.name]  # those days only
    print({k: round(v, 1) for k, v in timings.items()}, counts)  # shown with pytest -s

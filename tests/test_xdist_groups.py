"""The suite's scheduling plugin (tests/xdist_groups.py) does what the suite's time relies on.

A small project that registers the plugin is run with two xdist workers, as the suite is:
every test that uses a ``spark`` fixture (directly or through another fixture) must run on
one worker, the other tests must use the other worker too, and a slow test must be the first
of its worker's tests. (xdist's own ``loadgroup`` silently ignores groups under pytest 9.2.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CONFTEST = """
import pytest

pytest_plugins = ["tests.xdist_groups"]


@pytest.fixture(scope="session")
def spark():
    return "stands for the in-process SparkSession"


@pytest.fixture
def uses_spark(spark):
    return spark
"""

TESTS = """
import json, os, time

import pytest


def record(name):
    time.sleep(0.05)
    with open(os.environ["WHERE"], "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")


@pytest.mark.parametrize("i", range(8))
def test_direct(spark, i):
    record(f"spark-direct-{i}")


@pytest.mark.parametrize("i", range(4))
def test_through_a_fixture(uses_spark, i):
    record(f"spark-indirect-{i}")


@pytest.mark.parametrize("i", range(8))
def test_other(i):
    record(f"other-{i}")


@pytest.mark.slow
def test_slow():
    record("slow")
"""


def test_spark_tests_share_one_worker_and_slow_tests_go_first(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    slow: a long test\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_spread.py").write_text(TESTS)
    where = tmp_path / "where.jsonl"
    # The small project's own session: options meant for the suite's (PYTEST_ADDOPTS) stay out.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env |= {"WHERE": str(where), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:randomly",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in where.read_text().splitlines()]
    assert len(rows) == 21
    by_worker: dict[str, list[str]] = {}
    for name, worker in rows:
        by_worker.setdefault(worker, []).append(name)
    assert len(by_worker) == 2, by_worker  # both workers ran tests
    spark_workers = {worker for name, worker in rows if name.startswith("spark-")}
    assert len(spark_workers) == 1, by_worker  # all 12 Spark tests on one worker
    (slow_worker,) = [w for w, names in by_worker.items() if "slow" in names]
    assert by_worker[slow_worker][0] == "slow", by_worker

"""Benchmark: one day through the daily DAG, per step: wall seconds, Spark jobs, Delta commits.

    .venv/bin/python bench/daily.py                      # 50 k and 1 M impressions (defaults)
    .venv/bin/python bench/daily.py --sizes 50000        # the demo day only

For each size, in a fresh temporary KEEP_HOME (demo mode: the generator lands the raw
files; users and items scale with the size, at the demo world's density):

1. day 1 runs through both DAGs (``keep_daily_refresh`` with ``airflow dags test``, then
   ``keep_downstream_ctr`` on the knowledge it published), untimed: the history the
   measured day builds on (a lineage, a checkpoint, yesterday's state, a live model);
2. day 2 runs through ``keep_daily_refresh`` the same way, timed: ``total_s`` is the wall
   time of the whole ``airflow dags test`` command (Airflow's start, parsing, every task,
   the JVM start), ``by_step`` has each task's wall seconds (its task instance's start and
   end in Airflow's metadata DB), the **Spark jobs** it ran (jobs whose submission time falls
   in the task, from Spark's event log, enabled for the benchmark with
   ``spark.eventLog.enabled``), the **Delta commits** it wrote (new ``_delta_log`` versions
   of any table under KEEP_HOME, by their file's time) and the **JVM starts** (Spark
   applications started in it). ``outside_tasks_s`` is what the command spent outside its
   tasks (Airflow's own start-up, DAG parsing, scheduling);
3. the downstream DAG then runs on day 2's knowledge, timed as a whole
   (``downstream_total_s``, context: it is triggered by the publication, not part of the
   daily DAG).

Writes reports/bench/daily.json: ``sizes``, ``total_s`` (aligned with ``sizes``) and
``by_step`` (size -> step -> ``seconds``, ``spark_jobs``, ``delta_commits``,
``jvm_starts``), plus per size the totals of jobs and commits and the context above, and
``cpu_probe_s``: a fixed CPython loop timed before and after the run, this machine's speed
at the time (shared machines differ by 2x from one day to the next).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, cpu_probe, write_report

DEMO_IMPRESSIONS = 50_000
DEMO_USERS = 5_000
DEMO_ITEMS = 2_000
EPOCH = dt.date(2026, 1, 1)


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def spark_events(events_dir: Path) -> tuple[list[float], list[float]]:
    """(job submission times, application start times), epoch seconds, from every event
    log under ``events_dir`` (finished or still in progress, single file or rolling)."""
    jobs: list[float] = []
    apps: list[float] = []
    if not events_dir.is_dir():
        return jobs, apps
    # Spark 4 writes rolling event logs: one folder per application, several files.
    for path in events_dir.rglob("*"):
        if not path.is_file():
            continue
        with path.open(errors="replace") as lines:
            for line in lines:
                if '"SparkListenerJobStart"' in line:
                    jobs.append(json.loads(line)["Submission Time"] / 1000)
                elif '"SparkListenerApplicationStart"' in line:
                    apps.append(json.loads(line)["Timestamp"] / 1000)
    return jobs, apps


def delta_commits(home: Path) -> list[float]:
    """Modification times of every Delta commit file (``_delta_log/<version>.json``)."""
    times = []
    for log_dir in home.rglob("_delta_log"):
        for path in log_dir.glob("*.json"):
            if path.stem.isdigit():
                times.append(path.stat().st_mtime)
    return times


def measure(size: int, out: Path, *, server: bool) -> None:
    """Run in a child whose environment configures KEEP (see ``main``)."""
    from keep.core.config import load_settings
    from keep.flows import pipeline
    from keep.lake import spark_server

    settings = pipeline.with_demo_mode(load_settings(), True)
    if server:
        began = time.perf_counter()
        running = spark_server.start(settings, spark_server.server_dir(settings))
        settings = spark_server.with_remote(settings, running)
        print(f"Spark server {running.url} started in {time.perf_counter() - began:.1f} s")
    try:
        _measure(settings, size, out)
    finally:
        spark_server.stop_dir(spark_server.server_dir(settings))


def _measure(settings: Any, size: int, out: Path) -> None:
    from keep.flows import downstream, pipeline
    from keep.flows.airflow_env import DOWNSTREAM_DAG_ID, dags_test, task_instances

    history, day = EPOCH, EPOCH + dt.timedelta(days=1)
    began = time.perf_counter()
    first = pipeline.run_day_airflow(settings, history)
    if not first.ok:
        raise SystemExit(f"day 1 failed: {first.gate_summary}")
    history_s = time.perf_counter() - began
    print(f"{size:,} impressions: day 1 (history) in {history_s:.0f} s", flush=True)

    commits_before = set(delta_commits(settings.home))
    began = time.perf_counter()
    dags_test(settings, day, fail_fast=True)
    total_s = time.perf_counter() - began
    tasks = {t["task_id"]: t for t in task_instances(settings, day)}
    failed = {k: t["state"] for k, t in tasks.items() if t["state"] != "success"}
    if failed:
        raise SystemExit(f"day 2 did not succeed: {failed}")
    jobs, apps = spark_events(settings.home / "spark-events")
    commits = [t for t in delta_commits(settings.home) if t not in commits_before]
    by_step: dict[str, dict[str, Any]] = {}
    for step in pipeline.STEPS:
        t = tasks[step]
        start, end = _ts(t["start_date"]), _ts(t["end_date"])

        def within(times: list[float], start: float = start, end: float = end) -> int:
            return sum(start <= x <= end for x in times)

        by_step[step] = {
            "seconds": round(end - start, 2),
            "spark_jobs": within(jobs),
            "delta_commits": within(commits),
            "jvm_starts": within(apps),
        }
        print(f"  {step:<20} {by_step[step]}", flush=True)
    in_tasks = sum(s["seconds"] for s in by_step.values())

    event = downstream.knowledge_event(settings)
    began = time.perf_counter()
    if event is not None and event["snapshot_ds"] == day.isoformat():
        dags_test(settings, None, dag_id=DOWNSTREAM_DAG_ID, conf=event, fail_fast=True)
    downstream_s = time.perf_counter() - began
    figures = {
        "total_s": round(total_s, 1),
        "by_step": by_step,
        "tasks_s": round(in_tasks, 1),
        "outside_tasks_s": round(total_s - in_tasks, 1),
        "spark_jobs": sum(s["spark_jobs"] for s in by_step.values()),
        "delta_commits": sum(s["delta_commits"] for s in by_step.values()),
        "jvm_starts": sum(s["jvm_starts"] for s in by_step.values()),
        "history_day_s": round(history_s, 1),
        "downstream_total_s": round(downstream_s, 1),
    }
    print(f"  day 2 through the DAG: {total_s:.1f} s", flush=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[DEMO_IMPRESSIONS, 1_000_000])
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary homes")
    parser.add_argument(
        "--no-server",
        action="store_true",
        help="no Spark server: each run's Spark steps start a Spark of their own (the "
        "default of a process without spark.remote)",
    )
    parser.add_argument("--phase", choices=["measure"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "measure":
        measure(args.size, args.out, server=not args.no_server)
        return
    report: dict[str, Any] = {"sizes": [], "total_s": [], "by_step": {}, "per_size": {}}
    probes = [cpu_probe()]
    began = time.perf_counter()
    for size in args.sizes:
        scale = size / DEMO_IMPRESSIONS
        home = Path(tempfile.mkdtemp(prefix="keep-bench-daily-"))
        events = home / "spark-events"
        events.mkdir()
        env = {
            **os.environ,
            "KEEP_HOME": str(home),
            "KEEP_GENERATOR__IMPRESSIONS_PER_DAY": str(size),
            "KEEP_GENERATOR__N_USERS": str(max(DEMO_USERS, round(DEMO_USERS * scale))),
            "KEEP_GENERATOR__N_ITEMS": str(max(DEMO_ITEMS, round(DEMO_ITEMS * scale))),
            "KEEP_SPARK__EXTRA_CONF": json.dumps(
                {
                    "spark.eventLog.enabled": "true",
                    "spark.eventLog.compress": "false",
                    "spark.eventLog.dir": events.as_uri(),
                }
            ),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        out = home / "figures.json"
        try:
            cmd = [PYTHON, __file__, "--phase", "measure", "--size", str(size), "--out", str(out)]
            cmd += ["--no-server"] if args.no_server else []
            subprocess.run(cmd, env=env, cwd=home, check=True)
            figures = json.loads(out.read_text())
        finally:
            if not args.keep_home:
                shutil.rmtree(home, ignore_errors=True)
        report["sizes"].append(size)
        report["total_s"].append(figures.pop("total_s"))
        report["by_step"][str(size)] = figures.pop("by_step")
        report["per_size"][str(size)] = figures
    report["bench_wall_s"] = round(time.perf_counter() - began)
    probes.append(cpu_probe())
    # This machine's speed before and after the run (bench/_common.py: cpu_probe); shared
    # machines vary by 2x from day to day, so compare absolute figures at similar probes.
    report["cpu_probe_s"] = probes
    report["spark_server"] = not args.no_server
    report["python"] = sys.version.split()[0]
    write_report("daily", report)


if __name__ == "__main__":
    main()

"""``keep backfill``: state and samples, and with ``--through-knowledge`` what the
pre-training derived from them (checkpoints in their own lineage, knowledge snapshots, their
gate reports, the live snapshot).

The slow test starts from three days of the tests' tiny world through the Spark steps, the
first two of them through every other daily step too (a copy of the test session's
``knowledge_lake``), runs day 3's pre-training, export, knowledge gate and publication in
this process (day 3 starting a new lineage, which the downstream model then follows), then
repairs day 2 and backfills it both ways.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from typer.testing import CliRunner

from keep.core.config import Settings
from keep.flows import downstream, pipeline
from keep.lake import knowledge, raw_format
from tests.conftest import SPARK_LAKE_DAYS, make_settings

DAYS = SPARK_LAKE_DAYS
# The steps that carry day 3 to a published snapshot (the knowledge gate included:
# publication needs its report); the knowledge lake ran its Spark steps.
DAY3_STEPS = ("pretrain", "export_knowledge", "validate_knowledge", "publish_knowledge")


def change_day(settings: Settings, ds: dt.date) -> None:
    """Repair a day's raw impressions: drop a third of them, turn some non-clicks into clicks."""
    path = raw_format.day_dir(settings, "impressions", ds) / "part-00000.jsonl"
    records = [json.loads(line) for i, line in enumerate(path.read_text().splitlines()) if i % 3]
    for r in records[::7]:
        r["click"] = 1
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def checkpoint_files(settings: Settings) -> dict[str, tuple[int, str]]:
    """Every checkpoint and metrics file: (mtime in ns, content hash) by relative path."""
    root = settings.pretrain.checkpoint_root
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.glob("*/ds=*"))
    }


def manifest(settings: Settings, lineage: str, ds: dt.date) -> dict[str, Any]:
    found = knowledge.read_manifest(settings, lineage, ds)
    assert found is not None, (lineage, ds)
    return found


@pytest.mark.slow
def test_backfill_through_knowledge_recomputes_checkpoints_snapshots_and_the_live_one(
    spark: SparkSession, knowledge_lake: Path, tmp_path: Path
) -> None:
    from keep.store.publication import read_pointer
    from models.pretrain.checkpoint import (
        checkpoint_days,
        checkpoint_path,
        current_lineage,
        lineages,
        read_snapshot,
    )

    settings = make_settings(tmp_path / "home", pretrain={"full_retrain_on": [DAYS[2]]})
    assert set(DAY3_STEPS) <= set(pipeline.STEPS)
    shutil.copytree(knowledge_lake, settings.home)
    for name in DAY3_STEPS:
        outcome = pipeline.run_step(settings, name, DAYS[2])["result"]
    # The downstream model follows the new lineage, as the downstream DAG does after each
    # publication (a live model stays pinned to its lineage's snapshot until then).
    assert downstream.run_event(settings, [outcome])["status"] == "registered"
    first, second = lineages(settings)
    assert checkpoint_days(settings, first) == DAYS[:2]
    assert checkpoint_days(settings, second) == DAYS[2:]
    assert current_lineage(settings) == second
    pointer = read_pointer(settings)
    assert (
        pointer["slots"][pointer["live"]]["lineage"],
        pointer["slots"][pointer["live"]]["snapshot_ds"],
    ) == (second, DAYS[2].isoformat())
    checkpoints = checkpoint_files(settings)
    manifests = {
        (lin, ds): manifest(settings, lin, ds) for lin, ds in [(first, DAYS[1]), (second, DAYS[2])]
    }

    change_day(settings, DAYS[1])
    pipeline.ingest(settings, DAYS[1])

    # Without the option: state and samples only; checkpoints, snapshots and the online
    # store stay as they were.
    assert pipeline.backfill(settings, DAYS[1], DAYS[1], gates_on=False) == DAYS[1:]
    assert checkpoint_files(settings) == checkpoints
    assert {key: manifest(settings, *key) for key in manifests} == manifests
    assert read_pointer(settings) == pointer

    # What --through-knowledge adds: day 2 retrained in its own lineage (warm start from
    # day 1, although CURRENT names day 3's lineage), day 3 retrained from scratch as
    # planned (same lineage id), both exported and gated; the live snapshot republished.
    done = pipeline.backfill_knowledge(settings, DAYS[1])
    assert done.snapshots == [(first, DAYS[1]), (second, DAYS[2])]
    assert lineages(settings) == [first, second]  # no new lineage
    assert current_lineage(settings) == second
    after = checkpoint_files(settings)
    day = {ds: f"ds={ds.isoformat()}" for ds in DAYS}
    assert {k: v for k, v in after.items() if day[DAYS[0]] in k} == {
        k: v for k, v in checkpoints.items() if day[DAYS[0]] in k
    }
    for path in (f"{first}/{day[DAYS[1]]}.pt", f"{second}/{day[DAYS[2]]}.pt"):
        assert after[path][1] != checkpoints[path][1], path  # trained on the repaired data
    meta = read_snapshot(checkpoint_path(settings, first, DAYS[1])).meta
    assert (meta["mode"], meta["parent_ds"]) == ("warm_start", DAYS[0].isoformat())
    assert read_snapshot(checkpoint_path(settings, second, DAYS[2])).meta["mode"] == "full_retrain"
    for (lin, ds), old in manifests.items():
        new = manifest(settings, lin, ds)
        assert new["written_at"] > old["written_at"], (lin, ds)
        # The export rewrote the manifest without a gate report: this one is the new gate's.
        assert new["gate"]["success"] is True and new["gate"]["ds"] == ds.isoformat()

    live_before = pointer["slots"][pointer["live"]]
    now = read_pointer(settings)
    live = now["slots"][now["live"]]
    assert (live["lineage"], live["snapshot_ds"]) == (second, DAYS[2].isoformat())
    assert live["published_at"] > live_before["published_at"]
    assert now["switches"] == pointer["switches"] + 1  # one publication: never an older one
    assert done.published is not None and done.published["snapshot_ds"] == DAYS[2].isoformat()


def test_cli_backfill_through_knowledge_runs_the_knowledge_part_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keep.flows import cli

    calls: list[tuple[str, dt.date]] = []

    def fake_backfill(
        settings: Settings, start: dt.date, end: dt.date, on_day: Any = None
    ) -> list[dt.date]:
        calls.append(("state", start))
        return [start, start + dt.timedelta(days=1)]

    def fake_knowledge(
        settings: Settings, start: dt.date, on_snapshot: Any = None
    ) -> pipeline.KnowledgeBackfill:
        calls.append(("knowledge", start))
        live = {"lineage": "L", "snapshot_ds": "2026-01-03"}
        return pipeline.KnowledgeBackfill(
            snapshots=[("L", start)], live_before=live, published=live
        )

    monkeypatch.setattr(pipeline, "backfill", fake_backfill)
    monkeypatch.setattr(pipeline, "check_backfill", lambda *args: None)  # no lake here
    monkeypatch.setattr(pipeline, "backfill_knowledge", fake_knowledge)
    monkeypatch.setattr(cli, "load_settings", lambda: make_settings(tmp_path))
    runner = CliRunner()

    result = runner.invoke(cli.app, ["backfill", "--start", "2026-01-02"])
    assert result.exit_code == 0, result.output
    assert calls == [("state", DAYS[1])]

    calls.clear()
    result = runner.invoke(cli.app, ["backfill", "--start", "2026-01-02", "--through-knowledge"])
    assert result.exit_code == 0, result.output
    assert calls == [("state", DAYS[1]), ("knowledge", DAYS[1])]
    assert "republished the live snapshot L/2026-01-03" in result.output

    usage = runner.invoke(cli.app, ["backfill", "--help"], terminal_width=200).output
    assert "--through-knowledge" in usage

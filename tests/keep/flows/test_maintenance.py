"""The daily maintenance step: what it keeps, what it removes, and that a rerun does nothing.

The home is built by hand (delta-rs tables, checkpoint files, registry versions, raw
folders) so every expected survivor is written down here, not computed by the code under
test. Retentions are small so a few days exercise them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from keep.core.config import Settings
from keep.core.tables import INGEST_AUDIT, knowledge_spec, samples_spec
from keep.flows.maintenance import maintain
from keep.lake.delta import table_path
from keep.store import model_registry
from tests.conftest import make_settings
from tests.keep.store.feast_data import write_snapshot

DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(10)]
TODAY = DAYS[-1]  # 2026-03-10
OLD, NEW = "L-old", "L-new"


def day(i: int) -> str:
    return DAYS[i].isoformat()


@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        maintenance={
            "vacuum_retention_hours": 0,
            "gold_days_kept": 3,
            "knowledge_days_kept": 2,
            "checkpoint_days_kept": 2,
            "model_versions_kept": 1,
            "raw_days_kept": 4,
        },
    )


def write_day(settings: Settings, name: str, ds: str, rows: int) -> None:
    spec = samples_spec(name, settings.aggregate.windows)
    table = pa.table({"impression_id": [f"{ds}-{i}" for i in range(rows)], "ds": [ds] * rows})
    # Two appends a day: two small files per partition, for compaction to merge.
    for half in (table.slice(0, rows // 2), table.slice(rows // 2)):
        write_deltalake(str(table_path(settings, spec)), half, partition_by=["ds"], mode="append")


def rows_by_day(settings: Settings, name: str) -> dict[str, list[str]]:
    spec = samples_spec(name, settings.aggregate.windows)
    table = DeltaTable(str(table_path(settings, spec))).to_pyarrow_table()
    out: dict[str, list[str]] = {}
    for ds, key in zip(table["ds"].to_pylist(), table["impression_id"].to_pylist(), strict=True):
        out.setdefault(ds, []).append(key)
    return {k: sorted(v) for k, v in out.items()}


def parquet_files(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder)) for p in folder.rglob("*.parquet") if "_delta_log" not in str(p)
    }


def checkpoint(settings: Settings, lineage: str, ds: str, partial: bool = False) -> Path:
    folder = settings.pretrain.checkpoint_root / lineage
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lineage.json").write_text("{}")
    path = folder / (f"ds={ds}.partial.pt" if partial else f"ds={ds}.pt")
    path.write_bytes(b"weights of " + path.name.encode())
    return path


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and "_delta_log" not in p.parts:
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def build(settings: Settings) -> None:
    # Gold: 10 days of samples, 6 rows a day in two files each.
    for i in range(10):
        write_day(settings, "gold.pretrain_samples", day(i), 6)
    # Knowledge: OLD has days 0-5, NEW days 6-9. In use: OLD (the live downstream model was
    # trained on it) and NEW (current pre-training lineage, live online).
    for i in range(6):
        write_snapshot(settings, OLD, DAYS[i], n=5)
    for i in range(6, 10):
        write_snapshot(settings, NEW, DAYS[i], n=5)
    for lineage, days in ((OLD, range(6)), (NEW, range(6, 10))):
        for i in days:
            manifest = settings.knowledge.manifest_root / lineage / f"{day(i)}.json"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text("{}")
    # Pre-training checkpoints: a dead lineage, OLD (in use), NEW (current).
    for i in range(3):
        checkpoint(settings, "L-dead", day(i))
    for i in range(6):
        checkpoint(settings, OLD, day(i))
    checkpoint(settings, OLD, day(2), partial=True)
    for i in range(6, 10):
        checkpoint(settings, NEW, day(i))
    checkpoint(settings, NEW, day(9), partial=True)  # today's run, to be resumed
    (settings.pretrain.checkpoint_root / "CURRENT.json").write_text(json.dumps({"lineage": NEW}))
    # Registry: v1..v4; v2 is live (trained on OLD), v1 and v3 are its rollback history.
    src = settings.home / "model.pt"
    src.write_bytes(b"model")
    gate = {"success": True}
    for i, lineage in enumerate((OLD, OLD, NEW, NEW), start=1):
        model_registry.register(
            settings, "ads", src, arm="keep", lineage=lineage, snapshot_ds=day(i),
            train_days=[day(i)], metrics={}, gate=gate, promote=False,
        )  # fmt: skip
    # Live v2 (trained on OLD), rollback history [1, 3].
    for version in (1, 3, 2):
        model_registry.promote(settings, "ads", version)
    # Raw landing folders for days 0-9; days 0-8 ingested.
    for i in range(10):
        for kind in ("impressions", "users"):
            folder = settings.lake.raw_root / kind / f"ds={day(i)}"
            folder.mkdir(parents=True)
            (folder / "part-0.jsonl").write_text("{}\n")
    audit = pa.table({"ds": [day(i) for i in range(9)], "rows": list(range(9))})
    write_deltalake(str(table_path(settings, INGEST_AUDIT)), audit, partition_by=["ds"])


def test_maintenance_keeps_what_is_in_use_and_drops_the_rest(home: Settings) -> None:
    s = home
    build(s)
    before = rows_by_day(s, "gold.pretrain_samples")
    state = model_registry.pointer_state(s, "ads")
    assert state["live"] == 2 and state["history"] == [1, 3]

    result = maintain(s, TODAY, online=False)

    # Gold: the last 3 days (8, 9, 10 March), their rows untouched; older days gone, and
    # their files too (VACUUM with a 0 h retention); each kept day compacted to one file.
    assert rows_by_day(s, "gold.pretrain_samples") == {day(i): before[day(i)] for i in (7, 8, 9)}
    gold = table_path(s, samples_spec("gold.pretrain_samples", s.aggregate.windows))
    files = parquet_files(gold)
    assert {f.split("/")[0] for f in files} == {f"ds={day(i)}" for i in (7, 8, 9)}
    assert len(files) == 3

    # Knowledge: within 2 days (9, 10 March: NEW), plus the newest snapshot of each lineage
    # in use (OLD's day 5, 6 March); everything else dropped, with its manifest.
    expected = {(NEW, day(8)), (NEW, day(9)), (OLD, day(5))}
    for entity in ("user", "item", "user_category"):
        t = DeltaTable(str(table_path(s, knowledge_spec(entity)))).to_pyarrow_table()
        pairs = set(
            zip(t["knowledge_lineage"].to_pylist(), t["snapshot_ds"].to_pylist(), strict=True)
        )
        assert pairs == expected
        assert t.num_rows == 5 * len(expected)
    manifests = {(p.parent.name, p.stem) for p in s.knowledge.manifest_root.glob("*/*.json")}
    assert manifests == expected

    # Checkpoints: the dead lineage is gone; OLD keeps only its newest day; NEW its last two
    # days and today's partial checkpoint; OLD's stale partial is gone.
    root = s.pretrain.checkpoint_root
    left = {str(p.relative_to(root)) for p in root.rglob("*.pt")}
    assert left == {
        f"{OLD}/ds={day(5)}.pt",
        f"{NEW}/ds={day(8)}.pt",
        f"{NEW}/ds={day(9)}.pt",
        f"{NEW}/ds={day(9)}.partial.pt",
    }
    assert not (root / "L-dead").exists()

    # Registry: live v2, last rollback target v3, newest v4 keep their files; v1 does not
    # (history cut to [3]), but keeps its card.
    reg = s.downstream.registry_root / "ads"
    assert {p.parent.name for p in reg.glob("v*/model.pt")} == {"v0002", "v0003", "v0004"}
    assert (reg / "v0001" / "card.md").is_file()
    assert model_registry.pointer_state(s, "ads")["history"] == [3]

    # Raw: folders of ingested days older than 4 days removed; day 9 (not ingested) kept.
    raw = {p.name[3:] for p in (s.lake.raw_root / "impressions").iterdir()}
    assert raw == {day(i) for i in (6, 7, 8, 9)}
    assert sorted(result["in_use"]["lineages"]) == sorted({OLD, NEW})

    # A second run the same day finds nothing more to do.
    digest = tree_digest(s.home / "var")
    again = maintain(s, TODAY, online=False)
    assert tree_digest(s.home / "var") == digest
    assert again["knowledge_snapshots_dropped"] == []
    assert all(t["dropped_partitions"] == 0 for t in again["tables"])
    # The one rollback target left still has its model.
    assert model_registry.rollback(s, "ads").version == 3


def table_rows(root: Path) -> dict[str, list[str]]:
    """Every Delta table under ``root``: its rows as sorted JSON lines."""
    out = {}
    for log in sorted(root.glob("var/lake/*/*/_delta_log")):
        t = DeltaTable(str(log.parent)).to_pyarrow_table()
        out[str(log.parent.relative_to(root))] = sorted(
            json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist()
        )
    return out


def other_files(root: Path) -> dict[str, bytes]:
    """Every file outside the Delta tables (checkpoints, registry, raw, manifests)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "var").rglob("*"))
        if p.is_file() and "lake" not in p.relative_to(root).parts[:2] and p.name != "LIVE.json"
    }


def test_maintenance_killed_anywhere_is_finished_by_the_next_run(tmp_path: Path) -> None:
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    retentions = {
        "vacuum_retention_hours": 0, "gold_days_kept": 3, "knowledge_days_kept": 2,
        "checkpoint_days_kept": 2, "model_versions_kept": 1, "raw_days_kept": 4,
    }  # fmt: skip
    seed = tmp_path / "seed"
    build(make_settings(seed, maintenance=retentions))
    reference = tmp_path / "reference"
    shutil.copytree(seed, reference)
    before = log_files(reference)
    maintain(make_settings(reference, maintenance=retentions), TODAY, online=False)
    expected_rows, expected_files = table_rows(reference), other_files(reference)
    commits: dict[str, int] = {}
    for path in log_files(reference) - before:
        table = str(path.parent.parent.relative_to(reference))
        commits[table] = commits.get(table, 0) + 1
    assert len(commits) >= 4  # gold, the three knowledge tables (at least)

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEP_")}
    env |= {f"KEEP_MAINTENANCE__{k.upper()}": str(v) for k, v in retentions.items()}
    env["KEEP_SPARK__JARS_DIR"] = str(make_settings(seed).spark.jars_dir)
    script = (
        "import datetime as dt; from keep.core.config import load_settings; "
        "from keep.flows.maintenance import maintain; "
        f"maintain(load_settings(), dt.date.fromisoformat('{TODAY}'), online=False)"
    )
    # Kill right after the last commit of each table the maintenance changes (tables are
    # maintained one after the other: those before it done, the rest and the file
    # retention not started), and right after the very first commit.
    first = next(iter(sorted(commits)))
    points = [(first, 1), *sorted(commits.items())]
    for table, n in points:
        home = tmp_path / f"killed-{table.replace('/', '-')}-{n}"
        shutil.copytree(seed, home)
        before = log_files(home)
        proc = subprocess.Popen(
            [sys.executable, "-c", script], env=env | {"KEEP_HOME": str(home)}, cwd=home,
            start_new_session=True,
        )  # fmt: skip
        while proc.poll() is None and len(table_logs(home, table) - before) < n:
            time.sleep(0.002)
        assert proc.poll() is None, f"maintenance ended before commit {n} of {table}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Every table still reads (a committed version), and the rerun ends exactly where
        # the uninterrupted run did.
        table_rows(home)
        maintain(make_settings(home, maintenance=retentions), TODAY, online=False)
        assert table_rows(home) == expected_rows, (table, n)
        assert other_files(home) == expected_files, (table, n)


def log_files(home: Path) -> set[Path]:
    return set(home.glob("var/lake/*/*/_delta_log/*.json"))


def table_logs(home: Path, table: str) -> set[Path]:
    return set((home / table / "_delta_log").glob("*.json"))

"""Benchmark: SIGKILL every writing step at several points, rerun it, compare with a clean run.

    .venv/bin/python bench/chaos.py                               # defaults (~27 min on 2 cores)
    .venv/bin/python bench/chaos.py --steps publish_knowledge --points early commit
    .venv/bin/python bench/chaos.py --help                        # every option

In a fresh temporary KEEP_HOME (removed afterwards unless ``--keep-home``), a tiny world
(demo mode, ``--impressions-per-day`` a day, a few hundred users and items, small embedding
tables, a mid-run pre-training checkpoint every 5 steps) runs day 1 and day 2: the
**reference**. Every faulted step runs in a subprocess of its own, in a new session (its own
local Spark: the JVM is in the step's process group); the steps between two faulted ones
share one subprocess. The lake gates (validate, validate_state, validate_samples) only read
and are skipped; the knowledge gate runs (publication requires its report).

Before each faulted step the home is copied; after it the step's **owned outputs** are
fingerprinted (below). Then, for every kill point, the home is restored to the copy, the
step is started again and its whole process group (Python, JVM, reader workers) is killed
with SIGKILL at the point:

* ``early`` / ``middle`` -- 15 % / 50 % of the reference run's wall time;
* ``commit`` -- the moment the step's first commit appears: a new ``_delta_log`` version of
  any table it owns (the other tables of the step not yet written), the day's checkpoint
  file (pre-training), a knowledge table's snapshot, a downstream arm's checkpoint (the other
  arm not yet saved), or the publication record naming a slot ``writing`` (mid-publication);
* ``checkpoint`` (pre-training only) -- the moment its second mid-run checkpoint
  (``ds=<day>.partial.pt``) is written: the rerun must resume from it, not start over.

Faulted steps and default points: ingest on day 1 at ``commit`` (the very first write of
the bronze and dimension tables: the first table committed, the others not yet created);
on day 2 ingest, aggregate and samples (Spark steps: their first 15 % is the JVM's start, and
each fault costs a JVM start more) at ``middle`` and ``commit``; pre-training at ``early``,
``middle``, ``checkpoint`` and ``commit``; knowledge export, publication, the downstream
training set and downstream training at ``early``, ``middle`` and ``commit``. ``--points``
sets the points of every faulted step (day 1 included).

Right after the kill every owned output is read as a reader would (delta-rs, the files, the
online store): each must be the state before the step or exactly the reference -- a
different content is a **partial** output readable in between. Then the step is rerun to
completion and each owned output compared with the reference: row count and content
checksum.

Owned outputs and what their checksum covers (``ignored_columns`` in the report lists what is
left out because it legitimately changes from run to run):

* Delta tables: the day's partition (``ds``; knowledge: ``snapshot_ds``), every column,
  rows hashed as canonical JSON and sorted, so the checksum is that of the multiset of rows;
* pre-training: the day's checkpoint (weights, optimizer state, RNG state, meta: bit for
  bit) and its metrics file (less the training seconds, and the figures of the work this
  run did -- steps, samples, mean loss, ``resumed`` -- which a resumed run counts from its
  mid-run checkpoint on);
* knowledge export: the three tables' snapshot partitions and the manifest (less
  ``written_at``);
* publication: the live snapshot of the publication record (lineage, day, status, rows per
  entity; not its timestamps, record number, lease or slot colour) and the online rows of
  the live slot (entity key, feature, value, event time; not Feast's ``created_ts``);
* training set: the day's partition of gold.downstream_training_set;
* downstream training: each arm's checkpoint of the day (weights, optimizer state, meta) and
  the day's metrics file.

Writes reports/bench/chaos.json: ``faults_injected``, ``recovered_identical`` (reruns whose
every output equals the reference, with no partial output seen and, where a mid-run checkpoint
existed, a resumed pre-training), ``lost_or_doubled_rows`` (sum over outputs of |rows after
the rerun - reference rows|; goal 0), ``partial_readable`` (kills after which some output was
neither before nor reference; goal 0), ``finished_before_kill`` (faults whose step ended
before its kill point), ``steps`` (per step: the points tried and each fault's result: the
state of each output at the kill, the outputs differing after the rerun), ``wall_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, write_report

EPOCH = dt.date(2026, 1, 1)  # the generator's default epoch
DAY1, DAY2 = EPOCH, EPOCH + dt.timedelta(days=1)
# The daily pipeline's steps (keep.flows.pipeline.STEPS), then the downstream refresh's two
# writing steps (pipeline.train_downstream: the training set, then the models).
DAY_STEPS = (
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
    "training_set",
    "train_downstream",
)
WRITING_STEPS = (
    "ingest",
    "aggregate",
    "samples",
    "pretrain",
    "export_knowledge",
    "publish_knowledge",
    "training_set",
    "train_downstream",
)
# The lake gates (validate, validate_state, validate_samples) only read what the steps
# before them wrote: the reference skips them. The knowledge gate stays: publication
# requires its report in the snapshot's manifest.
LAKE_GATES = ("validate", "validate_state", "validate_samples")
POINTS = ("early", "middle", "commit", "checkpoint")
# Default kill points. A Spark step spends its first 15 % starting Python and the JVM, and
# each of its faults costs a JVM start more: by default it is killed in the middle and at
# its first commit only (``--points early middle commit`` adds the early kill).
SPARK_STEPS = ("ingest", "aggregate", "samples")
DEFAULT_POINTS = {s: ["early", "middle", "commit"] for s in WRITING_STEPS}
DEFAULT_POINTS |= {s: ["middle", "commit"] for s in SPARK_STEPS}
DEFAULT_POINTS["pretrain"] = ["early", "middle", "checkpoint", "commit"]
FRACTION = {"early": 0.15, "middle": 0.5}
# What legitimately changes from one run of a step to the next, left out of the checksums.
IGNORED = {
    "knowledge manifest": ["written_at"],
    # What this run of the day did: a resumed run counts only the steps after its mid-run
    # checkpoint (by design, tests/models/pretrain/test_train.py); the weights are compared.
    "pretrain metrics": [
        "train.seconds",
        "train.resumed",
        "train.steps",
        "train.samples_per_rank",
        "train.mean_loss",
    ],
    "publication record": ["seq", "switches", "published_at", "started_at", "lease_until", "live"],
    "online rows": ["created_ts"],
}
POLL_S = 0.02


def day_steps(ds: dt.date) -> list[str]:
    """The steps run on ``ds``: no lake gate, no downstream refresh on the first day (no
    knowledge is served before the first snapshot)."""
    skip = {*LAKE_GATES, *(("training_set", "train_downstream") if ds == DAY1 else ())}
    return [s for s in DAY_STEPS if s not in skip]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the world


def world_config(impressions: int, users: int, items: int) -> dict[str, Any]:
    """keep.yaml of the tiny world: small tables, small batches, frequent mid-run checkpoints
    (pre-training writes several during a day, so a kill can land after one)."""
    return {
        "spark": {"shuffle_partitions": 2},
        "generator": {
            "n_users": users,
            "n_items": items,
            "impressions_per_day": impressions,
            "new_users_per_day": 5,
            "new_items_per_day": 2,
        },
        "airflow": {"demo_mode": True},
        "pretrain": {
            "user_buckets": 1_009,
            "item_buckets": 503,
            "category_buckets": 101,
            "brand_buckets": 211,
            "batch_size": 64,
            "checkpoint_every_steps": 5,
        },
        "downstream": {
            "user_buckets": 1_009,
            "item_buckets": 503,
            "category_buckets": 101,
            "brand_buckets": 211,
            "seeds": [0],
            "epochs": 1,
        },
    }


def step_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KEEP_HOME": str(home),
        "KEEP_CONFIG": str(home / "keep.yaml"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }


def run_steps_here(steps: list[str], ds: dt.date) -> None:
    """The child: run steps of day ``ds`` in order, in this process (one Spark for all of
    them); settings from KEEP_HOME / KEEP_CONFIG."""
    from keep.core.config import load_settings
    from keep.flows import pipeline

    settings = load_settings()
    for step in steps:
        if step in pipeline.STEPS:
            pipeline.run_step(settings, step, ds)
            continue
        from keep.lake import knowledge
        from keep.store.training_sets import write_training_set
        from models.downstream.daily import run_day

        served = knowledge.served_knowledge(settings, ds)
        if served is None:
            raise SystemExit(f"{step} {ds}: no gated knowledge snapshot of the day before")
        lineage, snapshot = served
        if step == "training_set":
            write_training_set(settings, ds, ds, lineage=lineage)
        elif step == "train_downstream":
            arms = settings.downstream.daily_arms
            run_day(settings, ds, lineage=lineage, snapshot=snapshot, arms=arms)
        else:
            raise SystemExit(f"unknown step {step!r}")


def start_step(
    home: Path, steps: list[str], ds: dt.date, log_file: Path
) -> subprocess.Popen[bytes]:
    """The steps in a new session: its process group holds the JVM and every worker."""
    cmd = [PYTHON, __file__, "--phase", "step", "--step", *steps, "--ds", ds.isoformat()]
    with log_file.open("ab") as out:
        return subprocess.Popen(
            cmd,
            env=step_env(home),
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the step's whole process group (a crashed host: no cleanup runs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Reader workers or a JVM that left the group would survive it: none may write on.
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return
    os.killpg(proc.pid, signal.SIGKILL)


def run_to_end(home: Path, steps: list[str], ds: dt.date, log_file: Path) -> float:
    began = time.perf_counter()
    proc = start_step(home, steps, ds, log_file)
    if proc.wait() != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{' '.join(steps)} {ds} failed ({proc.returncode}):\n{tail}")
    return time.perf_counter() - began


# --------------------------------------------------------------------------- fingerprints


def digest_rows(rows: list[Any]) -> str:
    """sha256 of the multiset of rows: each row as canonical JSON, the lines sorted."""
    lines = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def delta_partition(path: Path, column: str, day: str) -> tuple[int, str]:
    """Rows and checksum of the table's partition ``column = day`` at its latest version, as
    a delta-rs reader sees it (no table, or no committed version yet: 0 rows)."""
    from deltalake import DeltaTable

    from keep.lake.delta import has_commit

    if not has_commit(path):
        return 0, digest_rows([])
    table = DeltaTable(str(path)).to_pyarrow_table(filters=[(column, "=", day)])
    return table.num_rows, digest_rows(table.to_pylist())


def drop_keys(data: Any, dotted: list[str]) -> Any:
    """``data`` without the (dotted) keys, e.g. ``train.seconds``."""
    data = json.loads(json.dumps(data))
    for name in dotted:
        node = data
        *parents, last = name.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return data


def json_file(path: Path, ignored: list[str]) -> tuple[int | None, str]:
    if not path.is_file():
        return None, "absent"
    return None, digest_rows([drop_keys(json.loads(path.read_text()), ignored)])


def torch_file(path: Path) -> tuple[int | None, str]:
    """Checksum of a checkpoint: every tensor's bytes and every other value, by key."""
    import torch

    if not path.is_file():
        return None, "absent"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()

    def feed(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                feed(f"{prefix}/{k}", value[k])
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                feed(f"{prefix}/{i}", v)
        elif isinstance(value, torch.Tensor):
            h.update(prefix.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(f"{prefix}={value!r}".encode())

    feed("", payload)
    return None, h.hexdigest()


@dataclass
class Outputs:
    """What one step owns in a home, and how to read it as a reader would."""

    names: list[str]
    read: Callable[[], dict[str, tuple[int | None, str]]]
    # True once the step has committed something (the ``commit`` kill point).
    committed: Callable[[], bool]


def _settings(home: Path) -> Any:
    from keep.core.config import load_settings

    os.environ["KEEP_HOME"] = str(home)
    os.environ["KEEP_CONFIG"] = str(home / "keep.yaml")
    return load_settings()


def _new_commit(paths: list[Path]) -> Callable[[], bool]:
    """True once any of the tables has a commit it did not have when this was made."""

    def commits() -> set[str]:
        seen = set()
        for p in paths:
            log_dir = p / "_delta_log"
            if log_dir.is_dir():
                seen |= {
                    f"{p}/{n}"
                    for n in os.listdir(log_dir)
                    if n[:1].isdigit() and n.endswith(".json")
                }
        return seen

    before = commits()
    return lambda: bool(commits() - before)


def _new_files(folder: Path, pattern: str, count: int = 1) -> Callable[[], bool]:
    """True once ``count`` files matching ``pattern`` under ``folder`` have been written since
    (a file replaced again counts again: its inode changes with each atomic replace)."""

    def inodes() -> set[tuple[str, int]]:
        out = set()
        for p in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                out.add((str(p), p.stat().st_ino))
        return out

    before = inodes()
    seen: set[tuple[str, int]] = set()

    def check() -> bool:
        seen.update(inodes() - before)
        return len(seen) >= count

    return check


def outputs(step: str, home: Path, ds: dt.date, *, point: str | None = None) -> Outputs:
    """The outputs ``step`` of day ``ds`` owns in ``home`` (see the module docstring)."""
    from keep.core import tables as t
    from keep.lake import delta

    settings = _settings(home)
    day = ds.isoformat()
    windows = settings.aggregate.windows

    def tables(specs: list[Any], column: str = "ds") -> dict[str, Callable[[], Any]]:
        return {
            s.name: (lambda s=s: delta_partition(delta.table_path(settings, s), column, day))
            for s in specs
        }

    readers: dict[str, Callable[[], Any]]
    paths = []
    committed: Callable[[], bool]
    if step == "ingest":
        specs = [t.IMPRESSIONS, t.QUARANTINE, t.INGEST_AUDIT, t.DIM_USERS, t.DIM_ITEMS]
    elif step == "aggregate":
        specs = [t.USER_BEHAVIOR, t.DAILY_COUNTS, *(t.stats_spec(e, windows) for e in t.ENTITIES)]
    elif step == "samples":
        specs = list(t.sample_specs(windows))
    elif step == "training_set":
        specs = [t.training_set_spec(windows)]
    elif step == "export_knowledge":
        specs = [t.knowledge_spec(e) for e in t.KNOWLEDGE_ENTITIES]
    else:
        specs = []
    if step == "export_knowledge":
        readers = tables(specs, "snapshot_ds")
        manifests = settings.knowledge.manifest_root

        def manifest() -> Any:
            found = sorted(manifests.glob(f"*/{day}.json"))
            return json_file(found[0], IGNORED["knowledge manifest"]) if found else (None, "absent")

        readers["knowledge manifest"] = manifest
    else:
        readers = tables(specs)
    paths = [delta.table_path(settings, s) for s in specs]
    committed = _new_commit(paths)

    if step == "pretrain":
        root = settings.pretrain.checkpoint_root

        def checkpoint() -> Any:
            found = sorted(root.glob(f"*/ds={day}.pt"))
            return torch_file(found[0]) if found else (None, "absent")

        def metrics() -> Any:
            found = sorted(root.glob(f"*/ds={day}.json"))
            return json_file(found[0], IGNORED["pretrain metrics"]) if found else (None, "absent")

        readers = {"pretrain checkpoint": checkpoint, "pretrain metrics": metrics}
        if point == "checkpoint":
            committed = _new_files(root, f"*/ds={day}.partial.pt", count=2)
        else:
            committed = _new_files(root, f"*/ds={day}.pt")
    elif step == "publish_knowledge":
        db = settings.feast.store_root / "online.db"
        project = settings.feast.project
        readers = {
            "publication record": lambda: publication_record(db, project),
            **{
                f"online {e} rows": (lambda e=e: online_rows(db, project, e))
                for e in t.KNOWLEDGE_ENTITIES
            },
        }
        committed = lambda: publication_writing(db, project)  # noqa: E731
    elif step == "train_downstream":
        from models.downstream.checkpoint import model_path
        from models.downstream.daily import day_metrics_path

        arms = settings.downstream.daily_arms
        models = {a: model_path(settings, a, settings.downstream.seeds[0], ds) for a in arms}
        readers = {
            f"downstream {a} checkpoint": (lambda p=p: torch_file(p)) for a, p in models.items()
        }
        metrics_file = day_metrics_path(settings, ds)
        readers["downstream metrics"] = lambda: json_file(metrics_file, [])
        committed = _new_files(settings.downstream.checkpoint_root, f"*/*/ds={day}.pt")
    return Outputs(list(readers), lambda: {k: r() for k, r in readers.items()}, committed)


def _pointer(db: Path, project: str, timeout: float = 30) -> dict[str, Any] | None:
    """The publication record, read as a reader reads it (a plain connection: one left
    behind by a killed writer is rolled back by SQLite on open)."""
    if not db.is_file():
        return None
    conn = sqlite3.connect(db, timeout=timeout)
    try:
        row = conn.execute(
            "SELECT state FROM keep_publication WHERE project = ?", (project,)
        ).fetchone()
    except sqlite3.OperationalError:  # no publication record yet
        return None
    finally:
        conn.close()
    return json.loads(row[0]) if row else None


def publication_writing(db: Path, project: str) -> bool:
    """True while the publication record names a slot ``writing`` (mid-publication)."""
    try:
        state = _pointer(db, project, timeout=0.05)
    except sqlite3.Error:  # the publisher holds the lock: look again at the next poll
        return False
    slots = (state or {}).get("slots", {})
    return any(s.get("status") == "writing" for s in slots.values())


def publication_record(db: Path, project: str) -> tuple[int | None, str]:
    """The live snapshot as readers see it: lineage, day, status and rows of the live slot."""
    state = _pointer(db, project)
    if not state or state.get("live") is None:
        return None, "nothing live"
    live = state["slots"][state["live"]]
    kept = {k: v for k, v in live.items() if k not in IGNORED["publication record"]}
    return None, digest_rows([kept])


def online_rows(db: Path, project: str, entity: str) -> tuple[int | None, str]:
    """The live slot's online rows of ``entity`` (the slot the publication record names)."""
    from keep.core.feast_names import slot_view_name

    state = _pointer(db, project)
    if not state or state.get("live") is None:
        return 0, digest_rows([])
    view = slot_view_name(entity, state["live"])
    conn = sqlite3.connect(db, timeout=30)
    try:
        names = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0].endswith(view)
        ]
        if not names:
            return 0, digest_rows([])
        rows = conn.execute(
            f'SELECT entity_key, feature_name, value, event_ts FROM "{names[0]}"'
        ).fetchall()
    finally:
        conn.close()
    return len(rows), digest_rows([[k.hex(), f, v.hex(), str(ts)] for k, f, v, ts in rows])


# --------------------------------------------------------------------------- faults


def copy_home(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)


def inject(
    home: Path,
    pre: Path,
    step: str,
    ds: dt.date,
    point: str,
    reference_s: float,
    before: dict[str, Any],
    reference: dict[str, Any],
    logs: Path,
) -> dict[str, Any]:
    """Restore ``pre`` into ``home``, run ``step`` and SIGKILL it at ``point``, read every owned
    output, rerun the step and compare its outputs with ``reference``."""
    copy_home(pre, home)
    watch = outputs(step, home, ds, point=point)
    log_file = logs / f"{ds}-{step}-{point}.log"
    began = time.perf_counter()
    proc = start_step(home, [step], ds, log_file)
    deadline = FRACTION[point] * reference_s if point in FRACTION else None
    finished = False
    while True:
        elapsed = time.perf_counter() - began
        if proc.poll() is not None:
            finished = True
            break
        if deadline is not None and elapsed >= deadline:
            break
        if deadline is None and watch.committed():
            break
        if elapsed > 5 * reference_s + 60:
            break
        time.sleep(POLL_S)
    killed_at = time.perf_counter() - began
    kill_group(proc)
    if finished and proc.returncode != 0:
        raise RuntimeError(f"{step} {ds} failed before its kill:\n{log_file.read_text()[-4000:]}")
    at_kill = watch.read()
    partial = sorted(
        name for name, value in at_kill.items() if value not in (before[name], reference[name])
    )
    partial_checkpoint = False
    if step == "pretrain":
        settings = _settings(home)
        partial_checkpoint = any(settings.pretrain.checkpoint_root.glob(f"*/ds={ds}.partial.pt"))
    rerun_s = run_to_end(home, [step], ds, log_file)
    after = watch.read()
    differing = sorted(name for name in after if after[name] != reference[name])
    rows_diff = sum(
        abs((after[n][0] or 0) - (reference[n][0] or 0))
        for n in after
        if after[n][0] is not None or reference[n][0] is not None
    )
    result: dict[str, Any] = {
        "point": point,
        "killed_at_s": round(killed_at, 2),
        "finished_before_kill": finished,
        "state_at_kill": {
            n: ("reference" if v == reference[n] else "before" if v == before[n] else "partial")
            for n, v in at_kill.items()
        },
        "partial_readable": partial,
        "rerun_s": round(rerun_s, 1),
        "differing_outputs": differing,
        "rows_diff": rows_diff,
    }
    resumed_ok = True
    if step == "pretrain":
        settings = _settings(home)
        found = sorted(settings.pretrain.checkpoint_root.glob(f"*/ds={ds}.json"))
        resumed = bool(found) and bool(json.loads(found[0].read_text())["train"]["resumed"])
        result["partial_checkpoint_at_kill"] = partial_checkpoint
        result["resumed"] = resumed
        resumed_ok = resumed or not partial_checkpoint
    result["recovered_identical"] = not differing and not partial and resumed_ok
    return result


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="keep-bench-chaos-"))
    home, pre, post, logs = (scratch / n for n in ("home", "pre", "post", "logs"))
    home.mkdir()
    logs.mkdir()
    config = world_config(args.impressions_per_day, args.users, args.items)
    import yaml

    (home / "keep.yaml").write_text(yaml.safe_dump(config))
    targets = {(DAY1, "ingest")} if "ingest" in args.steps else set()
    targets |= {(DAY2, s) for s in args.steps}
    report_steps: dict[str, Any] = {}
    reference_s: dict[str, float] = {}
    try:
        for ds in (DAY1, DAY2):
            batch: list[str] = []  # steps before the next faulted one: one process
            for step in [*day_steps(ds), None]:
                target = step is not None and (ds, step) in targets
                if batch and (target or step is None):
                    seconds = run_to_end(home, batch, ds, logs / f"{ds}-{batch[0]}.log")
                    reference_s[f"{ds} {' + '.join(batch)}"] = round(seconds, 1)
                    log(f"{ds} {' + '.join(batch)}: reference {seconds:.1f} s")
                    batch = []
                if step is None:
                    break
                if not target:
                    batch.append(step)
                    continue
                before = outputs(step, home, ds).read()
                copy_home(home, pre)
                seconds = run_to_end(home, [step], ds, logs / f"{ds}-{step}.log")
                reference_s[f"{ds} {step}"] = round(seconds, 1)
                log(f"{ds} {step}: reference {seconds:.1f} s")
                reference = outputs(step, home, ds).read()
                home.rename(post)
                points = list(args.points or DEFAULT_POINTS[step])
                if ds == DAY1 and not args.points:
                    points = ["commit"]  # the first commit of the tables (others not yet)
                if step != "pretrain" and "checkpoint" in points:
                    points.remove("checkpoint")  # only pre-training writes mid-run checkpoints
                results = []
                for point in points:
                    result = inject(home, pre, step, ds, point, seconds, before, reference, logs)
                    results.append(result)
                    log(
                        f"  kill at {point:<10} {result['killed_at_s']:6.1f} s: "
                        f"recovered_identical={result['recovered_identical']} "
                        f"partial={result['partial_readable']} rows_diff={result['rows_diff']}"
                        + (f" resumed={result['resumed']}" if "resumed" in result else "")
                    )
                shutil.rmtree(home)
                post.rename(home)
                shutil.rmtree(pre)
                name = step if ds == DAY2 else f"{step} (first write, day 1)"
                report_steps[name] = {
                    "ds": ds.isoformat(),
                    "reference_s": round(seconds, 1),
                    "outputs": {
                        n: {"rows": r, "checksum": c[:16]} for n, (r, c) in reference.items()
                    },
                    "points": points,
                    "results": results,
                }
    finally:
        if args.keep_home:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    faults = [r for s in report_steps.values() for r in s["results"]]
    return {
        "faults_injected": len(faults),
        "recovered_identical": sum(r["recovered_identical"] for r in faults),
        "lost_or_doubled_rows": sum(r["rows_diff"] for r in faults),
        "partial_readable": sum(bool(r["partial_readable"]) for r in faults),
        "finished_before_kill": sum(r["finished_before_kill"] for r in faults),
        "steps": report_steps,
        "reference_s": reference_s,
        "ignored_columns": IGNORED,
        "world": {
            "days": [DAY1.isoformat(), DAY2.isoformat()],
            "impressions_per_day": args.impressions_per_day,
            "users": args.users,
            "items": args.items,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        choices=WRITING_STEPS,
        default=list(WRITING_STEPS),
        help="steps to fault (default: every writing step)",
    )
    parser.add_argument(
        "--points",
        nargs="+",
        choices=POINTS,
        help="kill points of every step ('checkpoint': pre-training only); default: middle "
        "and commit for the Spark steps (ingest, aggregate, samples), early, middle and commit "
        "for the others, and checkpoint too for pre-training",
    )
    parser.add_argument("--impressions-per-day", type=int, default=3_000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary home")
    parser.add_argument("--no-report", action="store_true", help="print, do not write the JSON")
    parser.add_argument("--phase", choices=["step"], help=argparse.SUPPRESS)
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--ds", type=dt.date.fromisoformat, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "step":
        run_steps_here(args.step, args.ds)
        return
    began = time.perf_counter()
    report = run(args)
    report = {**{k: report.pop(k) for k in list(report)[:5]}, "wall_s": 0.0, **report}
    report["wall_s"] = round(time.perf_counter() - began, 1)
    report["python"] = sys.version.split()[0]
    if args.no_report:
        print(json.dumps(report, indent=2))
    else:
        write_report("chaos", report)


if __name__ == "__main__":
    main()

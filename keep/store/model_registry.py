"""The downstream model registry: versions, model cards and one live version per subsystem.

Why not MLflow's model registry: it needs a tracking server or a database-backed store
beside the lake, and its file store is deprecated for the registry; KEEP's embedded default
is one machine with no service running. The registry instead follows the knowledge
publication's pattern (a table of record, immutable artefacts, one atomically switched
pointer):

* ``registry.downstream_models`` (Delta, append-only, read with delta-rs): one row per
  version -- subsystem, version number, arm, the knowledge lineage and snapshot it was
  trained with, its training days, metrics, the model gate's report, the checkpoint's path
  and a short model card;
* ``<downstream.registry_root>/<subsystem>/v<NNNN>/``: the version's checkpoint
  (``model.pt``, copied, never modified), ``card.md`` and ``version.json``;
* ``<downstream.registry_root>/<subsystem>/LIVE.json``: the live version and the ones live
  before it (for rollback), replaced atomically (temp file, fsync, ``os.replace``); a
  reader sees the old or the new pointer, never a mix;
* ``<downstream.registry_root>/<subsystem>/attempts/<lineage>/<snapshot>.json``: what
  happened to the candidate trained for a knowledge snapshot (registered, or rejected by
  the gate with its report): the downstream DAG runs once per lineage and snapshot.

Writers hold a file lock per subsystem (``register``, ``promote``, ``rollback``). A crash
after the version's folder is written but before its row is appended leaves a folder no
row names: the next registration reuses its number and overwrites it.

    register(settings, "ads", checkpoint, arm="keep", lineage=..., snapshot_ds=..., ...)
    live(settings, "ads")          # the ModelVersion serving now, or None
    rollback(settings, "ads")      # the version live before it is live again
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from keep.core.config import Settings
from keep.core.errors import InputError, KeepError
from keep.core.files import atomic_write_text
from keep.core.tables import MODEL_REGISTRY
from keep.lake import delta

CHECKPOINT = "model.pt"


@dataclass
class ModelVersion:
    """One registered version of a subsystem's downstream model."""

    subsystem: str
    version: int
    arm: str
    knowledge_lineage: str
    snapshot_ds: str
    train_days: list[str]
    metrics: dict[str, Any]
    gate: dict[str, Any]
    checkpoint: str
    card: str
    registered_at: str
    live: bool = field(default=False)

    @property
    def name(self) -> str:
        return f"{self.subsystem}/v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "card"} | {"name": self.name}


def subsystem_dir(settings: Settings, subsystem: str) -> Path:
    return settings.downstream.registry_root / subsystem


def version_dir(settings: Settings, subsystem: str, version: int) -> Path:
    return subsystem_dir(settings, subsystem) / f"v{version:04d}"


def _pointer_path(settings: Settings, subsystem: str) -> Path:
    return subsystem_dir(settings, subsystem) / "LIVE.json"


@contextlib.contextmanager
def _lock(settings: Settings, subsystem: str) -> Iterator[None]:
    folder = subsystem_dir(settings, subsystem)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".registry.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_pointer(settings: Settings, subsystem: str) -> dict[str, Any]:
    path = _pointer_path(settings, subsystem)
    if not path.is_file():
        return {"live": None, "history": [], "seq": 0}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def pointer_state(settings: Settings, subsystem: str) -> dict[str, Any]:
    """The live pointer's record: ``live`` version, rollback ``history``, ``seq``."""
    return _read_pointer(settings, subsystem)


def _write_pointer(settings: Settings, subsystem: str, state: dict[str, Any]) -> None:
    state = {**state, "seq": int(state.get("seq", 0)) + 1, "updated_at": _now()}
    atomic_write_text(_pointer_path(settings, subsystem), json.dumps(state, indent=2) + "\n")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- reads


def versions(settings: Settings, subsystem: str | None = None) -> list[ModelVersion]:
    """Every registered version (of ``subsystem``), oldest first, the live one flagged."""
    if not delta.table_exists(settings, MODEL_REGISTRY):
        return []
    from deltalake import DeltaTable

    table = DeltaTable(str(delta.table_path(settings, MODEL_REGISTRY))).to_pyarrow_table()
    rows = sorted(table.to_pylist(), key=lambda r: (r["subsystem"], r["version"]))
    live_of: dict[str, int | None] = {}
    out = []
    for r in rows:
        if subsystem is not None and r["subsystem"] != subsystem:
            continue
        if r["subsystem"] not in live_of:
            live_of[r["subsystem"]] = _read_pointer(settings, r["subsystem"]).get("live")
        out.append(
            ModelVersion(
                subsystem=r["subsystem"],
                version=int(r["version"]),
                arm=r["arm"],
                knowledge_lineage=r["knowledge_lineage"],
                snapshot_ds=r["snapshot_ds"],
                train_days=list(r["train_days"]),
                metrics=json.loads(r["metrics_json"]),
                gate=json.loads(r["gate_json"]),
                checkpoint=r["checkpoint"],
                card=r["card"],
                registered_at=r["registered_at"].isoformat(),
                live=live_of[r["subsystem"]] == r["version"],
            )
        )
    return out


def get(settings: Settings, subsystem: str, version: int) -> ModelVersion:
    for v in versions(settings, subsystem):
        if v.version == version:
            return v
    known = ", ".join(f"v{v.version}" for v in versions(settings, subsystem)) or "none"
    raise InputError(
        f"{subsystem} has no registered version v{version} (registered: {known}); "
        "see `keep models list`"
    )


def live(settings: Settings, subsystem: str) -> ModelVersion | None:
    """The version serving ``subsystem`` now (None before the first registration)."""
    number = _read_pointer(settings, subsystem).get("live")
    return None if number is None else get(settings, subsystem, int(number))


def live_record(settings: Settings, subsystem: str) -> dict[str, Any] | None:
    """The live version's ``version.json`` (number, lineage, snapshot, checkpoint) from the
    pointer file, without reading the registry table: cheap enough to poll (the scoring
    service does). None before the first registration."""
    state = _read_pointer(settings, subsystem)
    number = state.get("live")
    if number is None:
        return None
    path = version_dir(settings, subsystem, int(number)) / "version.json"
    if not path.is_file():
        raise InputError(
            f"{subsystem}: the live pointer names v{number} but {path} is missing; "
            "`keep models rollback` or re-register"
        )
    record: dict[str, Any] = json.loads(path.read_text())
    record["live_seq"] = state.get("seq", 0)
    return record


def pinned_lineages(settings: Settings) -> dict[str, str]:
    """Subsystem -> the knowledge lineage its live version was trained on (every subsystem
    with a live version). Publication keeps a snapshot of each of these readable online."""
    root = settings.downstream.registry_root
    if not root.is_dir():
        return {}
    pins = {}
    for folder in sorted(p for p in root.iterdir() if (p / "LIVE.json").is_file()):
        record = live_record(settings, folder.name)
        if record is not None:
            pins[folder.name] = str(record["knowledge_lineage"])
    return pins


def find(settings: Settings, subsystem: str, lineage: str, snapshot_ds: str) -> ModelVersion | None:
    """The version trained for knowledge snapshot ``(lineage, snapshot_ds)``, if any."""
    for v in versions(settings, subsystem):
        if (v.knowledge_lineage, v.snapshot_ds) == (lineage, snapshot_ds):
            return v
    return None


# --------------------------------------------------------------------------- attempts


def attempt_path(settings: Settings, subsystem: str, lineage: str, snapshot_ds: str) -> Path:
    return subsystem_dir(settings, subsystem) / "attempts" / lineage / f"{snapshot_ds}.json"


def read_attempt(
    settings: Settings, subsystem: str, lineage: str, snapshot_ds: str
) -> dict[str, Any] | None:
    path = attempt_path(settings, subsystem, lineage, snapshot_ds)
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def record_attempt(
    settings: Settings, subsystem: str, lineage: str, snapshot_ds: str, record: dict[str, Any]
) -> None:
    """What happened to the candidate of ``(lineage, snapshot_ds)`` (atomic write)."""
    path = attempt_path(settings, subsystem, lineage, snapshot_ds)
    atomic_write_text(path, json.dumps({**record, "recorded_at": _now()}, indent=2) + "\n")


# --------------------------------------------------------------------------- writes


def _card(v: ModelVersion) -> str:
    m = v.metrics
    lines = [
        f"# {v.subsystem} click model v{v.version}",
        "",
        f"- arm: `{v.arm}` (downstream model with the KEEP plug-in network)",
        f"- knowledge: lineage `{v.knowledge_lineage}`, snapshot {v.snapshot_ds}; it must be "
        "served with knowledge of this lineage only",
        f"- trained on days: {', '.join(v.train_days) or '-'} (warm-started from the version "
        "live before it)",
        f"- registered: {v.registered_at}",
        "",
        "## Holdout of the newest day (model gate)",
        "",
        "| model | AUC | calibration | rows | clicks |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in (m.get("holdout") or {}).items():
        if not isinstance(row, dict):
            continue
        lines.append(
            f"| {name} | {_fmt(row.get('auc'))} | {_fmt(row.get('calibration'))} | "
            f"{int(row.get('rows', 0))} | {int(row.get('clicks', 0))} |"
        )
    lines += ["", f"Gate: {'passed' if v.gate.get('success') else 'FAILED'}"]
    for check in v.gate.get("checks", []):
        lines.append(
            f"- {'ok' if check['success'] else 'FAILED'} {check['name']}: {check['detail']}"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def register(
    settings: Settings,
    subsystem: str,
    checkpoint: Path,
    *,
    arm: str,
    lineage: str,
    snapshot_ds: str,
    train_days: list[str],
    metrics: dict[str, Any],
    gate: dict[str, Any],
    promote: bool = True,
) -> ModelVersion:
    """Register ``checkpoint`` as the next version of ``subsystem`` (and make it live).

    Refuses a gate report that did not pass. Idempotent per knowledge snapshot: a second
    call for the same ``(lineage, snapshot_ds)`` returns the version already registered.
    """
    if not gate.get("success"):
        raise InputError(
            f"refusing to register a {subsystem} model whose gate did not pass: "
            f"{gate.get('summary', gate)}"
        )
    if not checkpoint.is_file():
        raise InputError(f"no checkpoint at {checkpoint}: train the candidate first")
    with _lock(settings, subsystem):
        existing = find(settings, subsystem, lineage, snapshot_ds)
        if existing is not None:
            return existing
        number = max((v.version for v in versions(settings, subsystem)), default=0) + 1
        folder = version_dir(settings, subsystem, number)
        if folder.exists():  # left by a registration that crashed before its row
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        tmp = folder / f".{CHECKPOINT}.tmp"
        shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, folder / CHECKPOINT)
        version = ModelVersion(
            subsystem=subsystem,
            version=number,
            arm=arm,
            knowledge_lineage=lineage,
            snapshot_ds=snapshot_ds,
            train_days=list(train_days),
            metrics=metrics,
            gate=gate,
            checkpoint=str(folder / CHECKPOINT),
            card="",
            registered_at=_now(),
        )
        version.card = _card(version)
        (folder / "card.md").write_text(version.card)
        (folder / "version.json").write_text(json.dumps(version.to_dict(), indent=2) + "\n")
        _append_row(settings, version)
        if promote:
            state = _read_pointer(settings, subsystem)
            _write_pointer(settings, subsystem, _switched(state, number))
            version.live = True
        return version


def _append_row(settings: Settings, v: ModelVersion) -> None:
    from deltalake import write_deltalake

    row = {
        "subsystem": [v.subsystem],
        "version": [v.version],
        "arm": [v.arm],
        "knowledge_lineage": [v.knowledge_lineage],
        "snapshot_ds": [v.snapshot_ds],
        "train_days": [v.train_days],
        "metrics_json": [json.dumps(v.metrics, sort_keys=True)],
        "gate_json": [json.dumps(v.gate, sort_keys=True)],
        "checkpoint": [v.checkpoint],
        "card": [v.card],
        "registered_at": [dt.datetime.fromisoformat(v.registered_at)],
    }
    table = pa.table(row, schema=MODEL_REGISTRY.schema)
    write_deltalake(str(delta.table_path(settings, MODEL_REGISTRY)), table, mode="append")


def _switched(state: dict[str, Any], number: int) -> dict[str, Any]:
    history = list(state.get("history", []))
    if state.get("live") is not None and state["live"] != number:
        history.append(state["live"])
    return {**state, "live": number, "history": history}


def promote(settings: Settings, subsystem: str, version: int) -> ModelVersion:
    """Make ``version`` live (the current live version can be rolled back to)."""
    with _lock(settings, subsystem):
        target = get(settings, subsystem, version)
        if not target.gate.get("success"):
            raise KeepError(f"{target.name} did not pass the model gate: it cannot go live")
        _require_files(target)
        _write_pointer(settings, subsystem, _switched(_read_pointer(settings, subsystem), version))
    return get(settings, subsystem, version)


def rollback(settings: Settings, subsystem: str) -> ModelVersion:
    """Make the version that was live before the current one live again."""
    with _lock(settings, subsystem):
        state = _read_pointer(settings, subsystem)
        history = list(state.get("history", []))
        if state.get("live") is None or not history:
            raise KeepError(
                f"{subsystem}: no earlier live version to roll back to "
                f"(live: {state.get('live')}); see `keep models list`"
            )
        previous = history.pop()
        _write_pointer(settings, subsystem, {**state, "live": previous, "history": history})
    return get(settings, subsystem, int(previous))


def _require_files(version: ModelVersion) -> None:
    if not Path(version.checkpoint).is_file():
        raise KeepError(
            f"{version.name}: its model file was removed by lake maintenance "
            "(maintenance.model_versions_kept); register a newer version instead"
        )


def prune_versions(settings: Settings, subsystem: str, keep: int) -> dict[str, int]:
    """Delete the model files of versions that can no longer go live: every version but the
    live one, the last ``keep`` it can be rolled back to and the ``keep`` newest. Their
    card, ``version.json`` and registry row stay (what was trained, on what, how it did);
    the rollback history is cut to the versions whose files are kept. Returns counts."""
    deleted = {"versions": 0, "bytes": 0}
    folder = subsystem_dir(settings, subsystem)
    if not folder.is_dir():
        return deleted
    with _lock(settings, subsystem):
        state = _read_pointer(settings, subsystem)
        history = [int(v) for v in state.get("history", [])][-keep:]
        numbers = sorted(int(p.name[1:]) for p in folder.glob("v[0-9]*") if p.name[1:].isdigit())
        kept = set(history) | set(numbers[-keep:])
        if state.get("live") is not None:
            kept.add(int(state["live"]))
        if history != [int(v) for v in state.get("history", [])]:
            _write_pointer(settings, subsystem, {**state, "history": history})
        for number in numbers:
            model = version_dir(settings, subsystem, number) / CHECKPOINT
            if number in kept or not model.is_file():
                continue
            deleted["bytes"] += model.stat().st_size
            model.unlink()
            deleted["versions"] += 1
    return deleted


def subsystems(settings: Settings) -> list[str]:
    """Every subsystem with a registry folder."""
    root = settings.downstream.registry_root
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

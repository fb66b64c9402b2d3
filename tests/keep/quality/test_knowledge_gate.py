"""The knowledge gate on knowledge tables and impressions written directly with delta-rs.

A healthy lineage: random key vectors on day 1, the same plus small noise on day 2 (active
keys recomputed, the rest carried forward). Each unhealthy variant breaks one property and
must be rejected with exactly its own reason; a new lineage that is the old one rotated by
a random orthogonal matrix (plus noise) must be accepted.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from keep.core.config import Settings
from keep.core.tables import IMPRESSIONS, knowledge_spec
from keep.core.time import end_of_day
from keep.lake import delta
from keep.lake.knowledge import write_manifest
from keep.quality.knowledge_gate import (
    COLLAPSED,
    COVERAGE,
    CROSS_LINEAGE,
    DIMENSION,
    DRIFT_MEDIAN,
    DRIFT_P99,
    DUPLICATE_KEYS,
    EMPTY,
    NON_FINITE,
    NORM,
    NULL_KEYS,
    TIMESTAMP,
    KnowledgeCheck,
    failure_reasons,
    validate_knowledge,
)
from tests.conftest import make_settings

DIM = 16
D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
N_USERS, N_ITEMS, N_CATEGORIES = 400, 200, 5
ACTIVE_USERS, ACTIVE_ITEMS = 300, 150  # keys 0..n-1 have impressions on each day
L1 = "L1"


@pytest.fixture(scope="module")
def ge_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Great Expectations project for the module (creating it is the slow part)."""
    return tmp_path_factory.mktemp("ge")


def gate_settings(tmp_path: Path, ge_root: Path) -> Settings:
    return make_settings(
        tmp_path,
        pretrain={"knowledge_dim": DIM},
        validation={"ge_root": ge_root},
        # Several batches per snapshot; drift gated from a lineage's second snapshot on
        # (the warm-up has its own test).
        knowledge={"export_batch_rows": 128, "drift_warmup_snapshots": 0},
    )


@pytest.fixture
def home(tmp_path: Path, ge_root: Path) -> Settings:
    settings = gate_settings(tmp_path, ge_root)
    for ds in (D1, D2):
        write_impressions(settings, ds)
    return settings


def keys_of(entity: str) -> dict[str, np.ndarray]:
    if entity == "user":
        return {"user_id": np.arange(N_USERS, dtype=np.int64)}
    if entity == "item":
        return {"item_id": np.arange(N_ITEMS, dtype=np.int64)}
    users = np.repeat(np.arange(N_USERS, dtype=np.int64), 2)
    return {"user_id": users, "category_id": (users * 7 + np.tile([0, 1], N_USERS)) % N_CATEGORIES}


def active_mask(entity: str) -> np.ndarray:
    keys = keys_of(entity)
    if entity == "item":
        return keys["item_id"] < ACTIVE_ITEMS
    return keys["user_id"] < ACTIVE_USERS


def base_vectors(entity: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, len(entity)])
    return rng.normal(0, 1, (len(keys_of(entity)[next(iter(keys_of(entity)))]), DIM))


def write_impressions(settings: Settings, ds: dt.date) -> None:
    rng = np.random.default_rng(ds.toordinal())
    users = np.concatenate([np.arange(ACTIVE_USERS), rng.integers(0, ACTIVE_USERS, 500)])
    items = np.concatenate(
        [np.arange(ACTIVE_ITEMS), rng.integers(0, ACTIVE_ITEMS, len(users) - ACTIVE_ITEMS)]
    )
    n = len(users)
    start = dt.datetime(ds.year, ds.month, ds.day, tzinfo=dt.UTC)
    schema = IMPRESSIONS.schema
    table = pa.table(
        {
            "impression_id": [f"{ds}-{i}" for i in range(n)],
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "event_time": [
                start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 86_000, n)
            ],
            "scenario": ["feed"] * n,
            "position": np.zeros(n, np.int32),
            "click": np.zeros(n, np.int32),
            "cart": np.zeros(n, np.int32),
            "purchase": np.zeros(n, np.int32),
            "ds": [ds.isoformat()] * n,
        },
        schema=schema,
    )
    write_deltalake(
        str(delta.table_path(settings, IMPRESSIONS)),
        table,
        partition_by=["ds"],
        mode="overwrite",
        predicate=f"ds = '{ds.isoformat()}'",
    )


def write_snapshot(
    settings: Settings,
    entity: str,
    lineage: str,
    ds: dt.date,
    vectors: np.ndarray | list[np.ndarray],
    recomputed: np.ndarray,
    keep: np.ndarray | None = None,
    *,
    rows: np.ndarray | None = None,
    event_timestamp: dt.datetime | None = None,
    schema: pa.Schema | None = None,
) -> None:
    """Write one snapshot (rows where ``keep``; or the row indices ``rows``, repeats
    allowed) exactly as the export lays it out; ``event_timestamp`` and ``schema`` (of the
    first write of the table) replace the export's."""
    spec = knowledge_spec(entity)
    schema = schema or spec.schema
    keys = keys_of(entity)
    n = len(recomputed)
    keep = np.ones(n, bool) if keep is None else keep
    rows = np.flatnonzero(keep) if rows is None else rows
    columns: dict[str, object] = {k: v[rows] for k, v in keys.items()}
    columns["vector"] = pa.array(
        [np.asarray(vectors[i], np.float32) for i in rows], schema.field("vector").type
    )
    columns["recomputed"] = recomputed[rows]
    columns["event_timestamp"] = [event_timestamp or end_of_day(ds)] * len(rows)
    columns["knowledge_lineage"] = [lineage] * len(rows)
    columns["snapshot_ds"] = [ds.isoformat()] * len(rows)
    write_deltalake(
        str(delta.table_path(settings, spec)),
        pa.table(columns, schema=schema),
        partition_by=list(spec.partition_by),
        mode="overwrite",
        predicate=f"knowledge_lineage = '{lineage}' AND snapshot_ds = '{ds.isoformat()}'",
    )


def day2_vectors(entity: str, noise: float = 0.05) -> np.ndarray:
    """Warm-started day 2: active keys move a little, inactive keys are carried forward."""
    v1 = base_vectors(entity)
    rng = np.random.default_rng([1, len(entity)])
    moved = v1 + noise * rng.normal(0, 1, v1.shape)
    return np.where(active_mask(entity)[:, None], moved, v1)


def write_healthy(
    settings: Settings, lineage: str = L1, day2: bool = True, skip: str | None = None
) -> None:
    """Day 1 (all recomputed) and day 2 of a healthy lineage, except entity ``skip`` on day 2."""
    for entity in ("user", "item", "user_category"):
        n = len(base_vectors(entity))
        write_snapshot(settings, entity, lineage, D1, base_vectors(entity), np.ones(n, bool))
        if day2 and entity != skip:
            write_snapshot(settings, entity, lineage, D2, day2_vectors(entity), active_mask(entity))


def reasons_of(settings: Settings, ds: dt.date, lineage: str, **kw: object) -> set[str]:
    report = validate_knowledge(settings, ds, lineage, **kw)  # type: ignore[arg-type]
    assert report.success == (not failure_reasons(report)), report.summary()
    return failure_reasons(report)


def check(settings: Settings, ds: dt.date, lineage: str, table: str, reason: str) -> KnowledgeCheck:
    report = validate_knowledge(settings, ds, lineage)
    found = [
        c
        for c in report.checks
        if isinstance(c, KnowledgeCheck) and c.table == table and c.reason == reason
    ]
    assert len(found) == 1, report.summary()
    return found[0]


def test_healthy_lineage_passes_on_both_days(home: Settings) -> None:
    write_healthy(home)
    for ds in (D1, D2):
        report = validate_knowledge(home, ds, L1)
        assert report.success, report.summary()
        assert report.gate == "knowledge"
        assert {c.table for c in report.checks} == {
            "knowledge.user",
            "knowledge.item",
            "knowledge.user_category",
        }
        assert report.data_docs_index is not None and report.data_docs_index.is_file()
        # The versions it read are recorded (what publication will publish).
        assert report.table_versions == {
            knowledge_spec(e).name: DeltaTable(
                str(delta.table_path(home, knowledge_spec(e)))
            ).version()
            for e in ("user", "item", "user_category")
        }
        assert report.to_dict()["table_versions"] == report.table_versions
    # Day 2's drift is the noise we added: median 1 - cos over the recomputed users,
    # computed here independently of the gate, appears in the report.
    v1, v2 = base_vectors("user"), day2_vectors("user")
    active = active_mask("user")
    cos = np.sum(v1 * v2, 1) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)
    expected = float(np.median(1 - cos[active]))
    drift = check(home, D2, L1, "knowledge.user", DRIFT_MEDIAN)
    assert drift.success
    assert f"median cosine distance {expected:.4f} over {int(active.sum())} keys" in drift.observed
    coverage = check(home, D2, L1, "knowledge.user", COVERAGE)
    assert coverage.observed.startswith(f"100.00% of {ACTIVE_USERS} keys")


def test_nan_values_are_rejected(home: Settings) -> None:
    write_healthy(home, skip="user")
    v2 = day2_vectors("user")
    v2[[3, 50, 120], 5] = np.nan
    v2[7, 0] = np.inf
    write_snapshot(home, "user", L1, D2, v2, active_mask("user"))
    assert reasons_of(home, D2, L1) == {NON_FINITE}
    nan_check = check(home, D2, L1, "knowledge.user", NON_FINITE)
    assert nan_check.observed.startswith("4 unexpected values")


def test_wrong_dimension_is_rejected(home: Settings) -> None:
    write_healthy(home, skip="item")
    v2 = day2_vectors("item")
    write_snapshot(home, "item", L1, D2, v2[:, : DIM // 2], active_mask("item"))
    assert reasons_of(home, D2, L1) == {DIMENSION}


@pytest.mark.parametrize("noise", [0.01, 0.0])
def test_collapsed_vectors_are_rejected(home: Settings, noise: float) -> None:
    """All users' vectors one point (exactly, or up to 1 % noise)."""
    # The first snapshot of the first lineage: nothing to compare with, only the spread.
    for entity in ("user", "item", "user_category"):
        v = base_vectors(entity)
        if entity == "user":
            rng = np.random.default_rng(5)
            v = np.ones_like(v) + noise * rng.normal(0, 1, v.shape)
        write_snapshot(home, entity, L1, D1, v, np.ones(len(v), bool))
    assert reasons_of(home, D1, L1) == {COLLAPSED}


def test_shared_direction_is_not_collapse(home: Settings) -> None:
    """Trained vectors share a large common component; the varying part still tells keys
    apart, so they are not collapsed (the real demo model's users: ~2-4 % varying energy)."""
    for entity in ("user", "item", "user_category"):
        v = base_vectors(entity)
        if entity == "user":
            v = 10.0 * np.ones_like(v) + 0.5 * v  # ~2.4 % of the energy varies
        write_snapshot(home, entity, L1, D1, v, np.ones(len(v), bool))
    assert reasons_of(home, D1, L1) == set()


def test_missing_coverage_is_rejected(home: Settings) -> None:
    write_healthy(home, skip="user")
    keep = np.ones(N_USERS, bool)
    keep[:60] = False  # 60 of the 300 users active on D2 have no vector: 80 % coverage
    write_snapshot(home, "user", L1, D2, day2_vectors("user"), active_mask("user"), keep)
    assert reasons_of(home, D2, L1) == {COVERAGE}
    assert check(home, D2, L1, "knowledge.user", COVERAGE).observed.startswith("80.00% of 300")


def test_stale_vectors_of_active_items_fail_coverage(home: Settings) -> None:
    """An active key carried forward instead of recomputed is not covered either."""
    write_healthy(home, skip="item")
    recomputed = active_mask("item").copy()
    recomputed[:30] = False
    write_snapshot(home, "item", L1, D2, day2_vectors("item"), recomputed)
    assert reasons_of(home, D2, L1) == {COVERAGE}


def test_abrupt_drift_within_lineage_is_rejected(home: Settings) -> None:
    """Rotating a lineage's space overnight keeps norms and spread but breaks every consumer."""
    write_healthy(home, skip="user")
    q, _ = np.linalg.qr(np.random.default_rng(11).normal(0, 1, (DIM, DIM)))
    v2 = np.where(active_mask("user")[:, None], base_vectors("user") @ q, base_vectors("user"))
    write_snapshot(home, "user", L1, D2, v2, active_mask("user"))
    reasons = reasons_of(home, D2, L1)
    assert DRIFT_MEDIAN in reasons
    assert reasons <= {DRIFT_MEDIAN, DRIFT_P99}


def test_young_lineage_drift_is_reported_then_gated(home: Settings) -> None:
    """With a warm-up of one snapshot, a lineage's second snapshot may still move a lot
    (reported, not gated); its third may not."""
    young = home.model_copy(
        update={"knowledge": home.knowledge.model_copy(update={"drift_warmup_snapshots": 1})}
    )
    q, _ = np.linalg.qr(np.random.default_rng(11).normal(0, 1, (DIM, DIM)))
    active = active_mask("user")
    write_healthy(young, skip="user")
    v2 = np.where(active[:, None], base_vectors("user") @ q, base_vectors("user"))
    write_snapshot(young, "user", L1, D2, v2, active)
    assert reasons_of(young, D2, L1) == set()
    drift = check(young, D2, L1, "knowledge.user", DRIFT_MEDIAN)
    assert "[warm-up: snapshot 2 of the lineage, gated from snapshot 3 on]" in drift.observed

    d3 = D2 + dt.timedelta(days=1)
    write_impressions(young, d3)
    for entity in ("item", "user_category"):
        write_snapshot(young, entity, L1, d3, day2_vectors(entity), active_mask(entity))
    write_snapshot(young, "user", L1, d3, np.where(active[:, None], v2 @ q, v2), active)
    assert DRIFT_MEDIAN in reasons_of(young, d3, L1)


def _new_lineage(home: Settings, lineage: str, transform: np.ndarray | None) -> None:
    """Lineage ``lineage`` on D2: L1's day-1 vectors through ``transform`` (+ noise), or random."""
    rng = np.random.default_rng(21)
    for entity in ("user", "item", "user_category"):
        v = base_vectors(entity)
        if transform is None:
            new = rng.normal(0, 1, v.shape)
        else:
            new = 3.0 * v @ transform + 0.05 * rng.normal(0, 1, v.shape)
        write_snapshot(home, entity, lineage, D2, new, np.ones(len(v), bool))


def test_rotated_new_lineage_is_accepted(home: Settings) -> None:
    write_healthy(home, day2=False)
    q, _ = np.linalg.qr(np.random.default_rng(12).normal(0, 1, (DIM, DIM)))
    _new_lineage(home, "L2", q)
    report = validate_knowledge(home, D2, "L2")
    assert report.success, report.summary()
    cross = [
        c for c in report.checks if isinstance(c, KnowledgeCheck) and c.reason == CROSS_LINEAGE
    ]
    assert len(cross) == 3
    assert all("vs L1@2026-01-01" in c.observed for c in cross)
    assert all("linear CKA 0.99" in c.observed or "CKA 1.00" in c.observed for c in cross)


def test_unrelated_new_lineage_is_rejected(home: Settings) -> None:
    write_healthy(home, day2=False)
    _new_lineage(home, "L3", None)
    assert reasons_of(home, D2, "L3", reference_lineage=L1) == {CROSS_LINEAGE}


def test_missing_snapshot_is_reported(home: Settings) -> None:
    write_healthy(home, day2=False)
    report = validate_knowledge(home, D2, L1)
    assert failure_reasons(report) == {"missing_snapshot"}
    assert "run the export first" in report.summary()


def test_rescaled_vectors_fail_the_norm_ratio_only(home: Settings) -> None:
    """A bug that multiplies every recomputed vector by 10 keeps each direction (no drift,
    same spread): only the norm ratio against the previous snapshot sees it."""
    write_healthy(home, skip="user")
    active = active_mask("user")
    v1 = base_vectors("user")
    write_snapshot(home, "user", L1, D2, np.where(active[:, None], 10 * v1, v1), active)
    assert reasons_of(home, D2, L1) == {NORM}
    norm = check(home, D2, L1, "knowledge.user", NORM)
    assert norm.observed.startswith(f"median per-key norm ratio 10.000 over {active.sum()} keys")


def test_duplicate_keys_are_rejected(home: Settings) -> None:
    write_healthy(home, skip="item")
    rows = np.concatenate([np.arange(N_ITEMS), [3, 3, 40]])  # item 3 three times, 40 twice
    write_snapshot(home, "item", L1, D2, day2_vectors("item"), active_mask("item"), rows=rows)
    assert reasons_of(home, D2, L1) == {DUPLICATE_KEYS}
    dup = check(home, D2, L1, "knowledge.item", DUPLICATE_KEYS)
    assert dup.observed.startswith("5 unexpected values")  # every copy of a repeated key


def test_wrong_event_timestamp_is_rejected(home: Settings) -> None:
    """Knowledge of the end of D2 must carry D3 00:00 UTC, or Feast's point-in-time join
    serves it to the wrong samples."""
    write_healthy(home, skip="user_category")
    late = end_of_day(D2) + dt.timedelta(hours=1)
    vectors, active = day2_vectors("user_category"), active_mask("user_category")
    write_snapshot(home, "user_category", L1, D2, vectors, active, event_timestamp=late)
    assert reasons_of(home, D2, L1) == {TIMESTAMP}


def test_null_keys_are_rejected(tmp_path: Path, ge_root: Path) -> None:
    """A knowledge table written by another writer whose key column allows nulls."""
    settings = gate_settings(tmp_path, ge_root)
    write_impressions(settings, D1)
    spec = knowledge_spec("item")
    nullable = pa.schema([f.with_nullable(True) if f.name == "item_id" else f for f in spec.schema])
    n = N_ITEMS
    vectors = base_vectors("item")
    write_snapshot(settings, "item", L1, D1, vectors, np.ones(n, bool), schema=nullable)
    for entity in ("user", "user_category"):
        v = base_vectors(entity)
        write_snapshot(settings, entity, L1, D1, v, np.ones(len(v), bool))
    # Two more rows of the snapshot, with a null key.
    extra = pa.table(
        {
            "item_id": pa.array([None, None], pa.int64()),
            "vector": pa.array(
                [vectors[0].astype(np.float32)] * 2, spec.schema.field("vector").type
            ),
            "recomputed": [True, True],
            "event_timestamp": [end_of_day(D1)] * 2,
            "knowledge_lineage": [L1] * 2,
            "snapshot_ds": [D1.isoformat()] * 2,
        },
        schema=nullable,
    )
    write_deltalake(
        str(delta.table_path(settings, spec)), extra, partition_by=list(spec.partition_by),
        mode="append",
    )  # fmt: skip
    assert NULL_KEYS in reasons_of(settings, D1, L1)
    nulls = check(settings, D1, L1, "knowledge.item", NULL_KEYS)
    assert nulls.observed.startswith("2 unexpected values")


def test_exported_but_empty_snapshot_is_not_missing(home: Settings) -> None:
    """The export ran (its manifest is written after the tables) but wrote no user rows:
    reported as empty, with what to check; a snapshot never exported stays "missing"."""
    write_healthy(home, skip="user")
    write_manifest(home, L1, D2, {"lineage": L1, "knowledge_dim": DIM})
    assert reasons_of(home, D2, L1) == {EMPTY}
    empty = check(home, D2, L1, "knowledge.user", EMPTY)
    assert "was exported (manifest) but has no rows" in empty.observed

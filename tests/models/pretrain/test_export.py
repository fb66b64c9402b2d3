"""Knowledge export on silver state written directly with delta-rs and a fresh model.

Three days of state (users 0-19, items 0-9, categories 0-2). Lineage L is exported on D1
(a new lineage: every known key recomputed) and on D3 with a different checkpoint of the
same lineage (no D2 snapshot: the previous snapshot is D1). ``active_window_days = 2``, so
on D3 the keys with impressions on D2 or D3 are recomputed, keys seen only on D1 are carried
forward, and a user who appears in dim.users on D3 (never active, no previous vector) is
recomputed from cold-start inputs. Expected inputs and key sets are built here from the
test's own Python data, not by the export's code.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from deltalake import DeltaTable, write_deltalake

from keep.core.config import Settings
from keep.core.tables import (
    DAILY_COUNTS,
    DIM_ITEMS,
    DIM_USERS,
    USER_BEHAVIOR,
    TableSpec,
    knowledge_spec,
    stats_spec,
    window_columns,
)
from keep.lake import delta
from models.pretrain import features
from models.pretrain.checkpoint import (
    TrainingSnapshot,
    checkpoint_path,
    metrics_path,
    save_snapshot,
    set_current_lineage,
)
from models.pretrain.export import export_knowledge
from models.pretrain.multitask import MultiTaskModel
from models.pretrain.train import model_config
from tests.conftest import make_settings

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)
DAYS = (D1, D2, D3)
WINDOWS = [1, 7]
PRIOR = 0.05
# Who has impressions on which day.
ACTIVE_USERS = {D1: range(0, 10), D2: range(5, 15), D3: range(10, 13)}
ACTIVE_ITEMS = {D1: range(0, 6), D2: range(3, 8), D3: range(8, 9)}
# dim.users change rows: everyone but 18/19 on D1, user 3 changes on D2, user 18 arrives on D3.
USER_ROWS = {
    D1: {u: ("F" if u % 2 else "M", u % 5, u % 3) for u in range(18)},
    D2: {3: ("F", 6, 2)},
    D3: {18: ("U", 1, 0)},
}
ITEM_ROWS = {D1: {i: (i % 3, 100 + i, 10.0 + i) for i in range(10)}, D3: {4: (1, 104, 99.5)}}


def categories_of(user: int) -> list[int]:
    return [user % 3, (user + 1) % 3]


@pytest.fixture
def settings(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path,
        aggregate={"windows": WINDOWS, "prior_ctr": PRIOR, "sequence_length": 5},
        pretrain={
            "user_buckets": 101,
            "item_buckets": 53,
            "category_buckets": 11,
            "brand_buckets": 31,
            "embedding_dim": 4,
            "knowledge_dim": 8,
            "hidden_dims": [16],
        },
        knowledge={"active_window_days": 2, "export_batch_rows": 4},
    )


def write(settings: Settings, spec: TableSpec, rows: list[dict[str, object]]) -> None:
    write_deltalake(
        str(delta.table_path(settings, spec)),
        pa.Table.from_pylist(rows, schema=spec.schema),
        partition_by=list(spec.partition_by),
        mode="append",
    )


def eod(ds: dt.date) -> dt.datetime:
    return dt.datetime(ds.year, ds.month, ds.day, tzinfo=dt.UTC) + dt.timedelta(days=1)


def sequences() -> dict[dt.date, dict[int, list[dict[str, object]]]]:
    """Each active user clicks one item a day; the snapshot keeps the last 5, oldest first."""
    out: dict[dt.date, dict[int, list[dict[str, object]]]] = {}
    history: dict[int, list[dict[str, object]]] = {}
    for k, ds in enumerate(DAYS):
        for u in ACTIVE_USERS[ds]:
            item = (u + k) % 10
            history.setdefault(u, []).append(
                {
                    "event_time": dt.datetime(ds.year, ds.month, ds.day, 8, u, tzinfo=dt.UTC),
                    "item_id": item,
                    "category_id": item % 3,
                    "brand_id": 100 + item,
                    "scenario": "feed",
                    "behavior_type": "click" if u % 4 else "purchase",
                }
            )
        out[ds] = {u: list(b[-5:]) for u, b in history.items()}
    return out


def stats_row(key: dict[str, int], seed: int, ds: dt.date) -> dict[str, object]:
    row: dict[str, object] = dict(key)
    for w in WINDOWS:
        impressions = (seed * 7 + w * 3) % 11 + 1
        clicks = seed % impressions
        row.update(
            {
                f"impressions_{w}d": impressions,
                f"clicks_{w}d": clicks,
                f"carts_{w}d": clicks // 2,
                f"purchases_{w}d": clicks // 3,
                f"ctr_{w}d": (clicks + 20 * PRIOR) / (impressions + 20),
            }
        )
    row.update({"event_timestamp": eod(ds), "ds": ds.isoformat()})
    return row


def seen_until(active: dict[dt.date, range], ds: dt.date) -> set[int]:
    return {k for d in DAYS if d <= ds for k in active[d]}


def write_state(settings: Settings) -> None:
    seqs = sequences()
    for ds in DAYS:
        day = ds.isoformat()
        write(
            settings,
            USER_BEHAVIOR,
            [
                {
                    "user_id": u,
                    "behaviors": b,
                    "seq_len": len(b),
                    "event_timestamp": eod(ds),
                    "ds": day,
                }
                for u, b in seqs[ds].items()
            ],
        )
        users = seen_until(ACTIVE_USERS, ds)
        items = seen_until(ACTIVE_ITEMS, ds)
        write(
            settings, stats_spec("user", WINDOWS), [stats_row({"user_id": u}, u, ds) for u in users]
        )
        write(
            settings, stats_spec("item", WINDOWS), [stats_row({"item_id": i}, i, ds) for i in items]
        )
        write(
            settings,
            stats_spec("user_category", WINDOWS),
            [
                stats_row({"user_id": u, "category_id": c}, u + c, ds)
                for u in users
                for c in categories_of(u)
            ],
        )
        counts = {"impressions": 2, "clicks": 1, "carts": 0, "purchases": 0, "ds": day}
        blank = {"user_id": None, "item_id": None, "category_id": None}
        write(
            settings,
            DAILY_COUNTS,
            [{**blank, "entity": "user", "user_id": u, **counts} for u in ACTIVE_USERS[ds]]
            + [{**blank, "entity": "item", "item_id": i, **counts} for i in ACTIVE_ITEMS[ds]]
            + [
                {**blank, "entity": "user_category", "user_id": u, "category_id": c, **counts}
                for u in ACTIVE_USERS[ds]
                for c in categories_of(u)
            ],
        )
        write(
            settings,
            DIM_USERS,
            [
                {"user_id": u, "gender": g, "age_level": a, "purchase_power": p, "ds": day}
                for u, (g, a, p) in USER_ROWS.get(ds, {}).items()
            ],
        )
        write(
            settings,
            DIM_ITEMS,
            [
                {"item_id": i, "category_id": c, "brand_id": b, "price": p, "ds": day}
                for i, (c, b, p) in ITEM_ROWS.get(ds, {}).items()
            ],
        )


def make_checkpoint(settings: Settings, ds: dt.date, seed: int) -> tuple[str, MultiTaskModel]:
    """A freshly initialised model saved as lineage L's checkpoint of ``ds``."""
    cfg = model_config(settings)
    torch.manual_seed(seed)
    model = MultiTaskModel(cfg).eval()
    lineage = "20260101-test"
    meta = {
        "config": cfg.to_json(),
        "lineage": lineage,
        "ds": ds.isoformat(),
        "phases": [[ds.isoformat()]],
    }
    snap = TrainingSnapshot(
        model_state=model.state_dict(),
        optimizer_state={},
        torch_rng=torch.get_rng_state(),
        meta=meta,
    )
    save_snapshot(snap, checkpoint_path(settings, lineage, ds))
    metrics_path(settings, lineage, ds).write_text(
        json.dumps({"eval": {"click_auc": 0.5 + seed / 100}})
    )
    set_current_lineage(settings, lineage)
    return lineage, model


def snapshot(
    settings: Settings, entity: str, lineage: str, ds: dt.date
) -> dict[tuple[int, ...], tuple[np.ndarray, bool]]:
    spec = knowledge_spec(entity)
    table = DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_table()
    assert table.schema == spec.schema
    rows = table.filter(
        (pa.compute.field("knowledge_lineage") == lineage)
        & (pa.compute.field("snapshot_ds") == ds.isoformat())
    ).to_pylist()
    keys = list(spec.key[:-2])
    out = {
        tuple(r[k] for k in keys): (np.array(r["vector"], np.float32), r["recomputed"])
        for r in rows
    }
    assert len(out) == len(rows), "duplicate keys in a snapshot"
    assert all(r["event_timestamp"] == eod(ds) for r in rows)
    return out


TYPES = {
    "behaviors": USER_BEHAVIOR.schema.field("behaviors").type,
    **{f.name: f.type for f in DIM_USERS.schema},
}


def as_table(row: dict[str, object]) -> pa.Table:
    """A one-row input table (types of the lake tables, so empty and null values are typed)."""
    return pa.table({k: pa.array([v], TYPES.get(k)) for k, v in row.items()})


def user_input(user: int, ds: dt.date) -> dict[str, object]:
    """Gold-sample columns of one user as of the end of ``ds``, from the test's data."""
    seq = sequences()[ds].get(user, [])
    attrs = None
    for d in DAYS:
        if d <= ds and user in USER_ROWS.get(d, {}):
            attrs = USER_ROWS[d][user]
    row: dict[str, object] = {
        "user_id": user,
        "behaviors": seq,
        "seq_len": len(seq),
        "gender": attrs[0] if attrs else None,
        "age_level": attrs[1] if attrs else None,
        "purchase_power": attrs[2] if attrs else None,
    }
    stats = stats_row({}, user, ds) if user in seen_until(ACTIVE_USERS, ds) else None
    for col in window_columns(WINDOWS):
        cold = PRIOR if col.startswith("ctr_") else 0
        row["u_" + col] = stats[col] if stats else cold
    return row


def test_export_snapshots_carry_forward_and_rerun(settings: Settings) -> None:
    write_state(settings)
    lineage, model1 = make_checkpoint(settings, D1, seed=1)
    first = export_knowledge(settings, D1)
    assert first.lineage == lineage
    known_users_d1 = set(range(18)) | seen_until(ACTIVE_USERS, D1)
    assert first.rows["user"] == len(known_users_d1)
    assert first.recomputed["user"] == len(known_users_d1)  # a new lineage recomputes all
    assert first.rows["item"] == 10
    assert first.rows["user_category"] == 2 * len(seen_until(ACTIVE_USERS, D1))
    assert first.buckets["user_id"] > 1  # 4-row batches: the bucketed path is exercised

    _, model3 = make_checkpoint(settings, D3, seed=3)
    third = export_knowledge(settings, D3, lineage)
    assert third.previous_snapshot == {
        "user": "2026-01-01",
        "item": "2026-01-01",
        "user_category": "2026-01-01",
    }

    users1 = snapshot(settings, "user", lineage, D1)
    users3 = snapshot(settings, "user", lineage, D3)
    known_users_d3 = known_users_d1 | set(range(19)) | seen_until(ACTIVE_USERS, D3)
    assert set(users3) == {(u,) for u in known_users_d3}
    active = set(ACTIVE_USERS[D2]) | set(ACTIVE_USERS[D3])
    expected_fresh = active | {18}  # 18: new on D3, no previous vector
    assert {k[0] for k, (_, fresh) in users3.items() if fresh} == expected_fresh
    assert third.recomputed["user"] == len(expected_fresh)
    assert third.carried_forward["user"] == len(known_users_d3 - expected_fresh)
    for u in known_users_d3 - expected_fresh:  # e.g. users 0-4 (active on D1 only), 15-17
        np.testing.assert_array_equal(users3[(u,)][0], users1[(u,)][0])

    # Recomputed vectors are the D3 model's towers on independently built inputs:
    # an active user, a changed-attribute user active on D1 only (carried: D1 model, D1 inputs),
    # and a cold-start newcomer.
    for user, ds, model, table in (
        (11, D3, model3, users3),
        (18, D3, model3, users3),
        (3, D1, model1, users1),
    ):
        inputs = as_table(user_input(user, ds))
        with torch.inference_mode():
            expected = model.user_knowledge(features.user_batch(inputs, 5)).numpy()[0]
        np.testing.assert_allclose(table[(user,)][0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(users3[(3,)][0], users1[(3,)][0])

    items3 = snapshot(settings, "item", lineage, D3)
    assert {k[0] for k, (_, f) in items3.items() if f} == {3, 4, 5, 6, 7, 8}
    item = {"item_id": 4, "category_id": 1, "brand_id": 104, "price": 99.5}  # D3's change row
    item |= {"i_" + c: v for c, v in stats_row({}, 4, D3).items() if c in window_columns(WINDOWS)}
    with torch.inference_mode():
        expected = model3.item_knowledge(features.item_batch(pa.Table.from_pylist([item]))).numpy()[
            0
        ]
    np.testing.assert_allclose(items3[(4,)][0], expected, rtol=1e-5, atol=1e-6)

    uc3 = snapshot(settings, "user_category", lineage, D3)
    assert len(uc3) == 2 * len(seen_until(ACTIVE_USERS, D3))
    pair = {
        "user_id": 12,
        "category_id": 1,
        "behaviors": sequences()[D3][12],
        "seq_len": len(sequences()[D3][12]),
    }
    pair |= {"uc_" + c: v for c, v in stats_row({}, 13, D3).items() if c in window_columns(WINDOWS)}
    with torch.inference_mode():
        batch = features.user_category_batch(as_table(pair), 5)
        expected = model3.user_category_knowledge(batch).numpy()[0]
    assert uc3[(12, 1)][1]
    np.testing.assert_allclose(uc3[(12, 1)][0], expected, rtol=1e-5, atol=1e-6)

    manifest = json.loads(third.manifest_path.read_text())
    assert third.manifest_path == settings.knowledge.manifest_root / lineage / "2026-01-03.json"
    assert manifest["metrics"] == {"eval": {"click_auc": 0.53}}
    assert manifest["tables"]["user"]["rows"] == len(known_users_d3)
    assert manifest["knowledge_dim"] == 8 and manifest["lineage"] == lineage
    assert manifest["checkpoint"].endswith("ds=2026-01-03.pt")

    # Re-running a day replaces its snapshot: same rows, same vectors, no duplicates.
    path = str(delta.table_path(settings, knowledge_spec("user")))
    version = DeltaTable(path).version()
    again = export_knowledge(settings, D3, lineage)
    assert again.rows == third.rows
    assert DeltaTable(path).version() == version + 1
    rerun = snapshot(settings, "user", lineage, D3)
    assert rerun.keys() == users3.keys()
    for key, (vec, fresh) in users3.items():
        np.testing.assert_array_equal(rerun[key][0], vec)
        assert rerun[key][1] == fresh
    assert DeltaTable(path).to_pyarrow_dataset().count_rows() == len(users1) + len(users3)

"""Training sets through Feast: every sample kept, values equal an independent as-of join.

Two Feast repos: the project's own feature_repo/ (applied with apply_repo, its
DeltaDuckDB offline store), with one and with two coexisting lineages in the lake; and a
small one written by the test (same shape: Delta sources, knowledge keyed by entity +
lineage, counters, one feature service, plus views that are not keyed by lineage). Both run
keep.store.training_sets against a real FeatureStore and real Delta tables whose every
value the test wrote. Expected values come from ``pandas.merge_asof`` (backward,
exact matches allowed, tolerance = the view's ttl), which is how Feast defines the join.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import deltalake
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    DOWNSTREAM_SAMPLES,
    ENTITIES,
    STAT_PREFIX,
    knowledge_spec,
    samples_spec,
    stats_spec,
    training_set_spec,
    window_columns,
)
from keep.lake import delta
from keep.store.training_sets import (
    TrainingSetError,
    build_training_set,
    write_training_set,
)
from tests.conftest import make_settings

WINDOWS = [1, 7]
DIM = 4
PRIOR = 0.05
KNOWLEDGE_TTL = dt.timedelta(days=1)
STATS_TTL = dt.timedelta(days=1)
DAYS = [dt.date(2026, 1, 2), dt.date(2026, 1, 3), dt.date(2026, 1, 4)]
UTC = dt.UTC


def _ts(day: dt.date, hours: float = 0.0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(hours=hours)


def _end(day: dt.date) -> dt.datetime:
    return _ts(day + dt.timedelta(days=1))


def _vec(seed: int) -> list[float]:
    return [round(float(x), 3) for x in np.random.default_rng(seed).normal(size=DIM)]


# --------------------------------------------------------------------------- lake fixtures

# (user, item, category) of the samples of each day; the first triple repeats (several
# impressions with the same keys: Feast would collapse them). User 3 never has knowledge,
# user 4 only a snapshot later than every sample, item 99 has no category.
SAMPLE_KEYS: dict[dt.date, list[tuple[int, int, int | None]]] = {
    DAYS[0]: [(1, 10, 100), (1, 10, 100), (2, 11, 100), (3, 10, 100), (1, 12, 101)],
    DAYS[1]: [(1, 10, 100), (1, 10, 100), (1, 10, 100), (2, 12, 101), (4, 11, 100), (3, 99, None)],
    DAYS[2]: [(1, 11, 100), (2, 10, 100), (3, 12, 101), (2, 11, 100)],
}

# Knowledge snapshots: (lineage, snapshot_ds) -> keys per entity. User 2 is only in the
# first snapshot (carried-forward gap), so the 1-day ttl expires it on the last day.
SNAPSHOTS: dict[tuple[str, dt.date], dict[str, list[tuple[int, ...]]]] = {
    ("L1", dt.date(2026, 1, 1)): {
        "user": [(1,), (2,)],
        "item": [(10,), (11,)],
        "user_category": [(1, 100), (2, 100)],
    },
    ("L1", dt.date(2026, 1, 2)): {
        "user": [(1,)],
        "item": [(10,), (11,), (12,)],
        "user_category": [(1, 100), (1, 101), (2, 101)],
    },
    ("L1", dt.date(2026, 1, 4)): {"user": [(1,), (4,)], "item": [(10,)], "user_category": []},
    # Another lineage beside L1 (blue/green): must never leak into L1's training set.
    ("L2", dt.date(2026, 1, 2)): {
        "user": [(1,), (2,), (3,)],
        "item": [(10,), (11,)],
        "user_category": [(1, 100)],
    },
}

# Counters: ds -> keys with a row (user 3 has none before the last day).
STATS_KEYS: dict[dt.date, dict[str, list[tuple[int, ...]]]] = {
    dt.date(2026, 1, 1): {
        "user": [(1,), (2,)],
        "item": [(10,), (11,)],
        "user_category": [(1, 100)],
    },
    dt.date(2026, 1, 2): {
        "user": [(1,), (2,), (4,)],
        "item": [(10,), (11,), (12,)],
        "user_category": [(1, 100), (2, 100)],
    },
    dt.date(2026, 1, 3): {
        "user": [(1,), (3,)],
        "item": [(10,), (12,)],
        "user_category": [(1, 100), (2, 101)],
    },
}


def _write(settings: Settings, spec: Any, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=spec.schema)
    deltalake.write_deltalake(
        str(delta.table_path(settings, spec)),
        table,
        partition_by=list(spec.partition_by),
        mode="append",
    )


def _samples(settings: Settings) -> None:
    spec = samples_spec(DOWNSTREAM_SAMPLES, WINDOWS)
    rows = []
    for day, keys in SAMPLE_KEYS.items():
        for i, (user, item, category) in enumerate(keys):
            row: dict[str, Any] = {
                "impression_id": f"{day}-{i}",
                "user_id": user,
                "item_id": item,
                # Late event from the day before (ingest's lateness) on the first row.
                "event_time": _ts(day, -0.5 if i == 0 else 1 + i),
                "scenario": "ads",
                "position": i,
                "click": i % 2,
                "cart": 0,
                "purchase": 0,
                "weight": 1.0,
                "category_id": category,
                "behaviors": [],
                "seq_len": 0,
                "state_ds": (day - dt.timedelta(days=1)).isoformat(),
                "ds": day.isoformat(),
            }
            # The samples job's own (Spark) counters: Feast's must replace them.
            for prefix in STAT_PREFIX.values():
                for col in window_columns(WINDOWS):
                    row[prefix + col] = -1.0 if col.startswith("ctr_") else -1
            rows.append(row)
    _write(settings, spec, rows)


def _knowledge(settings: Settings, lineages: tuple[str, ...] = ("L1", "L2")) -> None:
    for entity in ENTITIES:
        spec = knowledge_spec(entity)
        rows = []
        for (lineage, snap), per_entity in SNAPSHOTS.items():
            if lineage not in lineages:
                continue
            for key in per_entity[entity]:
                row: dict[str, Any] = dict(zip(ENTITIES[entity], key, strict=True))
                seed = hash((lineage, snap.toordinal(), entity, key)) % 2**31
                row |= {
                    "vector": _vec(seed),
                    "recomputed": True,
                    "event_timestamp": _end(snap),
                    "knowledge_lineage": lineage,
                    "snapshot_ds": snap.isoformat(),
                }
                rows.append(row)
        _write(settings, spec, rows)


def _stats(settings: Settings) -> None:
    for entity in ENTITIES:
        spec = stats_spec(entity, WINDOWS)
        rows = []
        for day, per_entity in STATS_KEYS.items():
            for n, key in enumerate(per_entity[entity]):
                row: dict[str, Any] = dict(zip(ENTITIES[entity], key, strict=True))
                for w in WINDOWS:
                    base = 1000 * day.day + 100 * w + 10 * n + sum(key) % 7
                    row |= {
                        f"impressions_{w}d": base,
                        f"clicks_{w}d": base // 10,
                        f"carts_{w}d": base // 100,
                        f"purchases_{w}d": base // 1000,
                        f"ctr_{w}d": (base // 10 + 1) / (base + 20),
                    }
                row |= {"event_timestamp": _end(day), "ds": day.isoformat()}
                rows.append(row)
        _write(settings, spec, rows)


# --------------------------------------------------------------------------- Feast repo

_REPO = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import DeltaFormat
from feast.types import Array, Float32, Float64, Int64, String

LAKE = {lake!r}
WINDOWS = {windows!r}
KEYS = {{"user": ["user_id"], "item": ["item_id"], "user_category": ["user_id", "category_id"]}}
PREFIX = {{"user": "u_", "item": "i_", "user_category": "uc_"}}

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64)
category = Entity(name="category", join_keys=["category_id"], value_type=ValueType.INT64)
lineage = Entity(name="lineage", join_keys=["knowledge_lineage"], value_type=ValueType.STRING)
ENTS = {{"user": [user], "item": [item], "user_category": [user, category]}}

views = []
for e in KEYS:
    p = PREFIX[e]
    k_src = FileSource(
        name=f"{{e}}_knowledge_source", path=f"{{LAKE}}/knowledge/{{e}}", file_format=DeltaFormat(),
        timestamp_field="event_timestamp", field_mapping={{"vector": f"{{p}}vector"}},
    )
    views.append(FeatureView(
        name=f"{{e}}_knowledge_fv", entities=[*ENTS[e], lineage], ttl=timedelta(days={kttl}),
        schema=[Field(name=f"{{p}}vector", dtype=Array(Float32))], source=k_src, online=False,
    ))
    raw_src = FileSource(
        name=f"{{e}}_knowledge_raw_source", path=f"{{LAKE}}/knowledge/{{e}}",
        file_format=DeltaFormat(), timestamp_field="event_timestamp",
    )
    cols = [f"{{c}}_{{w}}d" for w in WINDOWS for c in ("impressions", "clicks", "carts", "purchases", "ctr")]
    s_src = FileSource(
        name=f"{{e}}_stats_source", path=f"{{LAKE}}/silver/{{e}}_stats", file_format=DeltaFormat(),
        timestamp_field="event_timestamp", field_mapping={{c: p + c for c in cols}},
    )
    views.append(FeatureView(
        name=f"{{e}}_stats_fv", entities=ENTS[e], ttl=timedelta(days={sttl}),
        schema=[Field(name=p + c, dtype=Float64 if c.startswith("ctr") else Int64) for c in cols],
        source=s_src,
    ))
    # An online view of the knowledge, for the feast serve test.
    views.append(FeatureView(
        name=f"{{e}}_knowledge_online_fv", entities=ENTS[e], ttl=timedelta(days=0),
        schema=[Field(name="vector", dtype=Array(Float32))], source=raw_src, online=True,
    ))
    # A view over the whole knowledge table WITHOUT the lineage key (mixes lineages).
    views.append(FeatureView(
        name=f"{{e}}_knowledge_any_lineage_fv", entities=ENTS[e], ttl=timedelta(days={kttl}),
        schema=[Field(name="vector", dtype=Array(Float32)), Field(name="knowledge_lineage", dtype=String)],
        source=raw_src, online=False,
    ))

downstream_ctr_v1 = FeatureService(
    name="downstream_ctr_v1",
    features=[v for v in views if v.name.endswith(("_knowledge_fv", "_stats_fv"))],
)
"""


def _repo(settings: Settings, offline_store: str) -> Path:
    repo = settings.home / "feature_repo"
    repo.mkdir()
    (repo / "repo.py").write_text(
        _REPO.format(
            lake=str(settings.lake.root),
            windows=WINDOWS,
            kttl=KNOWLEDGE_TTL.days,
            sttl=STATS_TTL.days,
        )
    )
    (repo / "feature_store.yaml").write_text(
        f"project: keep_test\nprovider: local\n"
        f"registry: {settings.home / 'registry.db'}\n"
        f"online_store:\n  type: sqlite\n  path: {settings.home / 'online.db'}\n"
        f"offline_store:\n  type: {offline_store}\n"
        "entity_key_serialization_version: 3\n"
    )
    return repo


def _apply(repo: Path) -> Any:
    """`feast apply` in-process (the CLI costs ~15 s of imports per call)."""
    import importlib.util

    from feast import FeatureStore

    spec = importlib.util.spec_from_file_location(f"repo_{abs(hash(repo))}", repo / "repo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    store = FeatureStore(repo_path=str(repo))
    entities = [module.user, module.item, module.category, module.lineage]
    store.apply([*entities, *module.views, module.downstream_ctr_v1])
    return store


@pytest.fixture(params=["file"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Settings, Any]:
    settings = make_settings(
        tmp_path,
        aggregate={"windows": WINDOWS, "prior_ctr": PRIOR},
        pretrain={"knowledge_dim": DIM},
    )
    _samples(settings)
    _knowledge(settings)
    _stats(settings)
    return settings, _apply(_repo(settings, request.param))


# --------------------------------------------------------------------------- expectation


def _expected(
    settings: Settings,
    lineage: str,
    knowledge_ttl: dt.timedelta = KNOWLEDGE_TTL,
    stats_ttl: dt.timedelta = STATS_TTL,
) -> pd.DataFrame:
    """Independent point-in-time join of the samples with knowledge and counters."""
    read = lambda spec: deltalake.DeltaTable(str(delta.table_path(settings, spec))).to_pandas()  # noqa: E731
    samples = read(samples_spec(DOWNSTREAM_SAMPLES, WINDOWS))
    # Every sample of day ds is joined at ds 00:00 UTC (see keep.store.training_sets).
    samples["ts"] = pd.to_datetime(samples["ds"]).dt.tz_localize("UTC")
    samples = samples.sort_values("ts", kind="stable")
    out = samples[["impression_id"]].copy()
    for entity, keys in ENTITIES.items():
        know = read(knowledge_spec(entity))
        know = know[know["knowledge_lineage"] == lineage].sort_values("event_timestamp")
        stats = read(stats_spec(entity, WINDOWS)).sort_values("event_timestamp")
        left = samples.dropna(subset=list(keys)).copy()
        for k in keys:
            left[k] = left[k].astype("int64")
        for frame, ttl, tag in ((know, knowledge_ttl, "k"), (stats, stats_ttl, "s")):
            frame = frame.copy()
            frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[ns, UTC]")
            joined = pd.merge_asof(
                left[["impression_id", "ts", *keys]].astype({"ts": "datetime64[ns, UTC]"}),
                frame.drop(columns=["ds", "snapshot_ds"], errors="ignore"),
                left_on="ts",
                right_on="event_timestamp",
                by=list(keys),
                direction="backward",
                allow_exact_matches=True,
                tolerance=pd.Timedelta(ttl),
            )
            joined = joined.set_index("impression_id")
            if tag == "k":
                vec = joined["vector"].reindex(out["impression_id"]).to_list()
                out[f"{entity}_knowledge_missing"] = [not isinstance(v, np.ndarray) for v in vec]
                out[f"{entity}_vector"] = [
                    list(v) if isinstance(v, np.ndarray) else [0.0] * DIM for v in vec
                ]
            else:
                got = joined["event_timestamp"].reindex(out["impression_id"])
                out[f"{entity}_stats_missing"] = got.isna().to_numpy()
                for col in window_columns(WINDOWS):
                    fill = PRIOR if col.startswith("ctr_") else 0
                    values = joined[col].reindex(out["impression_id"]).fillna(fill)
                    out[STAT_PREFIX[entity] + col] = values.to_numpy()
    return out.set_index("impression_id")


# --------------------------------------------------------------------------- tests


def _check_against_expectation(
    tables: list[pa.Table], want: pd.DataFrame, lineage: str
) -> pd.DataFrame:
    assert [t.num_rows for t in tables] == [len(SAMPLE_KEYS[d]) for d in DAYS]
    assert all(t.schema == training_set_spec(WINDOWS).schema for t in tables)
    got = pa.concat_tables(tables).to_pandas().set_index("impression_id")
    assert got.index.is_unique
    assert sorted(got.index) == sorted(want.index)
    want = want.loc[got.index]
    for column in want.columns:
        if column.endswith("_vector"):
            for key, a, b in zip(got.index, got[column], want[column], strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=f"{column} of {key}")
        else:
            np.testing.assert_allclose(
                got[column].astype(float), want[column].astype(float), err_msg=column
            )
    assert set(got["knowledge_lineage"]) == {lineage}
    return got


def _project_settings(tmp_path: Path, lineages: tuple[str, ...]) -> Settings:
    """The lake tables above, with the project's own feature_repo/ applied over them."""
    from keep.store.feast_repo import apply_repo

    settings = make_settings(
        tmp_path,
        aggregate={"windows": WINDOWS, "prior_ctr": PRIOR},
        pretrain={"knowledge_dim": DIM},
    )
    _samples(settings)
    _knowledge(settings, lineages)
    _stats(settings)
    apply_repo(settings)
    return settings


def _project_expected(settings: Settings, lineage: str) -> pd.DataFrame:
    from keep.core.feast_names import KNOWLEDGE_TTL as K_TTL
    from keep.core.feast_names import STATS_TTL as S_TTL

    return _expected(settings, lineage, K_TTL, S_TTL)


def _lake_vector(settings: Settings, lineage: str, user: int, snapshot: dt.date) -> np.ndarray:
    """The user vector of one (lineage, snapshot) as written to knowledge.user."""
    frame = deltalake.DeltaTable(
        str(delta.table_path(settings, knowledge_spec("user")))
    ).to_pandas()
    row = frame[
        (frame["knowledge_lineage"] == lineage)
        & (frame["user_id"] == user)
        & (frame["snapshot_ds"] == snapshot.isoformat())
    ]
    assert len(row) == 1
    return np.asarray(row["vector"].iloc[0], dtype=np.float32)


def test_project_feature_repo_gives_the_same_training_set(tmp_path: Path) -> None:
    """The project's feature_repo/ with one lineage in the lake: same checks as below."""
    settings = _project_settings(tmp_path, ("L1",))
    tables = list(build_training_set(settings, DAYS[0], DAYS[-1], lineage="L1"))
    _check_against_expectation(tables, _project_expected(settings, "L1"), "L1")


def test_project_feature_repo_keeps_coexisting_lineages_apart(tmp_path: Path) -> None:
    """L1 and L2 side by side in the lake, the project's feature_repo/ and offline store.

    The offline knowledge views are keyed by lineage, so a training set of each lineage
    over the same days keeps every sample and gets exactly that lineage's as-of vectors,
    even on the day both lineages have a snapshot with the same event timestamp.
    """
    settings = _project_settings(tmp_path, ("L1", "L2"))
    got: dict[str, pd.DataFrame] = {}
    for lineage in ("L1", "L2"):
        tables = list(build_training_set(settings, DAYS[0], DAYS[-1], lineage=lineage))
        want = _project_expected(settings, lineage)
        got[lineage] = _check_against_expectation(tables, want, lineage)
    l1, l2 = got["L1"], got["L2"].loc[got["L1"].index]

    # Guards against a vacuous expectation: the lineages really differ on these samples.
    # User 3 has L2 knowledge only (from day 2 on: L2's first snapshot is of 2026-01-02, so
    # on day 1 every L2 row is cold); user (2, 100) x category has L1 only.
    assert l1.loc[l1["user_id"] == 3, "user_knowledge_missing"].all()
    later = (l1["user_id"] == 3) & (l1["ds"] > DAYS[0].isoformat())
    assert later.sum() == 2 and not l2.loc[later, "user_knowledge_missing"].any()
    assert l2.loc[l2["ds"] == DAYS[0].isoformat(), "user_knowledge_missing"].all()
    pair = (l1["user_id"] == 2) & (l1["category_id"] == 100) & (l1["ds"] == DAYS[0].isoformat())
    assert pair.any()
    assert not l1.loc[pair, "user_category_knowledge_missing"].any()
    assert l2.loc[pair, "user_category_knowledge_missing"].all()
    # Day 2 joins at 2026-01-03 00:00, the event timestamp of BOTH lineages' 2026-01-02
    # snapshot: each training set has its own lineage's vector, read straight from the lake.
    same_day = l1.index[(l1["ds"] == DAYS[1].isoformat()) & (l1["user_id"] == 1)]
    assert len(same_day) == 3
    v1 = _lake_vector(settings, "L1", 1, dt.date(2026, 1, 2))
    v2 = _lake_vector(settings, "L2", 1, dt.date(2026, 1, 2))
    assert not np.allclose(v1, v2)
    for key in same_day:
        np.testing.assert_array_equal(np.asarray(l1.at[key, "user_vector"], np.float32), v1)
        np.testing.assert_array_equal(np.asarray(l2.at[key, "user_vector"], np.float32), v2)
    # Counters do not depend on the lineage.
    for column in ("u_impressions_7d", "i_ctr_1d", "uc_clicks_1d"):
        np.testing.assert_array_equal(l1[column].to_numpy(), l2[column].to_numpy())


def test_project_knowledge_view_without_lineage_key_is_refused(tmp_path: Path) -> None:
    """A knowledge view keyed by the entity only (no lineage key, no lineage feature)
    could mix lineages: the builder refuses it rather than guess."""
    from feast import FeatureView, Field
    from feast.types import Array, Float32, Int64

    from keep.core.feast_names import KNOWLEDGE_TTL as K_TTL
    from keep.store.feast_repo import get_store

    settings = _project_settings(tmp_path, ("L1", "L2"))
    store = get_store(settings)
    entity_only = FeatureView(
        name="user_knowledge_entity_only_fv",
        entities=[store.get_entity("user")],
        ttl=K_TTL,
        schema=[
            Field(name="user_id", dtype=Int64),
            Field(name="u_knowledge", dtype=Array(Float32)),
        ],
        source=store.get_data_source("user_knowledge_source"),
        online=False,
    )
    store.apply([entity_only])
    with pytest.raises(TrainingSetError, match="never be mixed"):
        list(
            build_training_set(
                settings,
                DAYS[1],
                DAYS[1],
                lineage="L1",
                store=store,
                knowledge_views={"user": entity_only.name},
            )
        )


def test_every_sample_kept_and_values_match_an_independent_as_of_join(
    world: tuple[Settings, Any],
) -> None:
    settings, store = world
    tables = list(build_training_set(settings, DAYS[0], DAYS[-1], lineage="L1", store=store))
    got = _check_against_expectation(tables, _expected(settings, "L1"), "L1")

    # The cases the test was built for, spelled out (guards against a vacuous expectation).
    day2 = got[got["ds"] == DAYS[1].isoformat()]
    assert day2.loc[day2["user_id"] == 3, "user_knowledge_missing"].all()  # cold user
    assert day2.loc[day2["user_id"] == 4, "user_knowledge_missing"].all()  # only later rows
    assert not day2.loc[day2["user_id"] == 4, "user_stats_missing"].all()
    assert day2.loc[day2["item_id"] == 99, "user_category_knowledge_missing"].all()  # null key
    repeated = day2[(day2["user_id"] == 1) & (day2["item_id"] == 10)]
    assert len(repeated) == 3 and not repeated["user_knowledge_missing"].any()
    day3 = got[got["ds"] == DAYS[2].isoformat()]
    assert day3.loc[day3["user_id"] == 2, "user_knowledge_missing"].all()  # ttl expired
    assert (got["u_impressions_1d"] >= 0).all()  # the samples' own counters were replaced
    cold = got[got["user_knowledge_missing"]]
    assert all(np.count_nonzero(v) == 0 for v in cold["user_vector"])
    assert (got.loc[got["user_stats_missing"], "u_ctr_7d"] == PRIOR).all()


def test_other_lineage_is_never_mixed_in(world: tuple[Settings, Any]) -> None:
    settings, store = world
    got = pa.concat_tables(
        list(build_training_set(settings, DAYS[1], DAYS[1], lineage="L2", store=store))
    ).to_pandas()
    want = _expected(settings, "L2").loc[got["impression_id"]]
    for a, b in zip(got["user_vector"], want["user_vector"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert got.loc[got["user_id"] == 3, "user_knowledge_missing"].eq(False).all()  # L2 has user 3
    # A knowledge view that is not keyed by lineage mixes L1 and L2: refused.
    with pytest.raises(TrainingSetError, match="never be mixed"):
        list(
            build_training_set(
                settings,
                DAYS[1],
                DAYS[1],
                lineage="L1",
                store=store,
                knowledge_views={"user": "user_knowledge_any_lineage_fv"},
            )
        )


def test_write_training_set_is_idempotent_per_lineage_and_day(
    world: tuple[Settings, Any],
) -> None:
    settings, store = world
    rows = write_training_set(settings, DAYS[0], DAYS[-1], lineage="L1", store=store)
    assert rows == {d.isoformat(): len(SAMPLE_KEYS[d]) for d in DAYS}
    write_training_set(settings, DAYS[1], DAYS[1], lineage="L1", store=store)  # re-run a day
    write_training_set(settings, DAYS[1], DAYS[1], lineage="L2", store=store)
    spec = training_set_spec(WINDOWS)
    table = deltalake.DeltaTable(str(delta.table_path(settings, spec))).to_pandas()
    counts = table.groupby(["knowledge_lineage", "ds"]).size().to_dict()
    assert counts == {
        **{("L1", d.isoformat()): len(SAMPLE_KEYS[d]) for d in DAYS},
        ("L2", DAYS[1].isoformat()): len(SAMPLE_KEYS[DAYS[1]]),
    }


def test_bad_requests_get_clear_errors(world: tuple[Settings, Any]) -> None:
    settings, store = world
    with pytest.raises(InputError, match="lineage"):
        list(build_training_set(settings, DAYS[0], DAYS[0], lineage="L1' OR 1=1", store=store))
    with pytest.raises(InputError, match="before"):
        list(build_training_set(settings, DAYS[1], DAYS[0], lineage="L1", store=store))
    with pytest.raises(TrainingSetError, match="feast apply"):
        list(
            build_training_set(
                settings, DAYS[0], DAYS[0], lineage="L1", store=store, feature_service="nope_v9"
            )
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_feast_serve_returns_a_users_knowledge_over_http(tmp_path: Path) -> None:
    """One HTTP request to `feast serve` on loopback gives the vector written online."""
    settings = make_settings(tmp_path, aggregate={"windows": WINDOWS})
    _knowledge(settings)
    _stats(settings)
    repo = _repo(settings, "file")
    store = _apply(repo)
    vector = _vec(42)
    store.write_to_online_store(
        "user_knowledge_online_fv",
        pd.DataFrame(
            {
                "user_id": [7, 8],
                "vector": [np.array(vector, np.float32), np.array(_vec(43), np.float32)],
                "event_timestamp": [pd.Timestamp(_end(DAYS[0]))] * 2,
            }
        ),
    )
    port = _free_port()
    feast = Path(sys.executable).with_name("feast")
    process = subprocess.Popen(
        [str(feast), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped as a whole below
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                out = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"feast serve exited with {process.returncode}:\n{out[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("feast serve did not become ready within 120 s")
            time.sleep(0.5)
        body = json.dumps(
            {"features": ["user_knowledge_online_fv:vector"], "entities": {"user_id": [7]}}
        ).encode()
        answer = _post(f"http://127.0.0.1:{port}/get-online-features", body)
        names = answer["metadata"]["feature_names"]
        column = answer["results"][names.index("vector")]
        assert column["statuses"] == ["PRESENT"]
        np.testing.assert_allclose(column["values"][0], vector, rtol=1e-6)
        assert answer["results"][names.index("user_id")]["values"] == [7]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

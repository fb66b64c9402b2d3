"""The feature repository: conventions, point-in-time semantics and the Feast CLI on it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from keep.core.config import Settings
from keep.store.feast_repo import apply_repo, feast_env
from tests.keep.store.feast_data import write_all_stats, write_snapshot, write_stats

REPO_DIR = Path(__file__).resolve().parents[3] / "feature_repo"


def test_repo_conventions_and_point_in_time_join(settings: Settings) -> None:
    write_snapshot(settings, "L1", dt.date(2026, 1, 1), n=8)
    write_snapshot(settings, "L1", dt.date(2026, 1, 2), n=8, salt="day2")
    write_all_stats(settings, dt.date(2026, 1, 1))
    store = apply_repo(settings)

    views = store.list_feature_views()
    names = {v.name for v in views}
    assert {
        "user_knowledge_fv",
        "item_knowledge_blue_fv",
        "user_category_knowledge_green_fv",
        "user_category_stats_fv",
    } <= names
    for view in views:
        assert view.name.endswith("_fv") and view.owner and view.tags
        assert view.batch_source is not None and view.batch_source.name.endswith("_source")
        for field in view.schema:
            assert field.description, f"{view.name}.{field.name} has no description"
    # Neither the offline knowledge views nor the slots are open to `feast materialize`.
    assert all(not v.online for v in views if "knowledge" in v.name)
    # Offline knowledge views are keyed by lineage too; online slots only by the entity
    # (their lineage is in the publication pointer).
    assert store.get_entity("lineage").join_key == "knowledge_lineage"
    for view in views:
        keys = {c.name for c in view.entity_columns}
        if view.name.endswith("_knowledge_fv"):
            assert "knowledge_lineage" in keys, view.name
        else:
            assert "knowledge_lineage" not in keys, view.name
    assert all(v.online for v in views if v.name.endswith("_stats_fv"))
    service = store.get_feature_service("downstream_ctr_v1")
    assert {p.name for p in service.feature_view_projections} == {
        "user_knowledge_fv",
        "item_knowledge_fv",
        "user_category_knowledge_fv",
        "user_stats_fv",
        "item_stats_fv",
        "user_category_stats_fv",
    }

    # Point in time: a sample of day d+1 sees the state of the end of d; counters of day 1
    # (stamped 2026-01-02 00:00) are out of their 1-day TTL for a sample on 2026-01-04.
    entity_df = pd.DataFrame(
        {
            "user_id": [3, 3, 3],
            "item_id": [1002, 1002, 1002],
            "category_id": [102, 102, 102],
            "knowledge_lineage": ["L1", "L1", "L1"],
            "event_timestamp": pd.to_datetime(
                ["2026-01-02 08:00", "2026-01-03 08:00", "2026-01-04 08:00"], utc=True
            ),
        }
    )
    df = (
        store.get_historical_features(entity_df=entity_df, features=service)
        .to_df()
        .sort_values("event_timestamp")
    )
    assert df["u_snapshot_ds"].tolist() == ["2026-01-01", "2026-01-02", "2026-01-02"]
    clicks = write_stats(settings, "user", dt.date(2026, 1, 1)).column("clicks_7d").to_pylist()
    got = df["u_clicks_7d"].tolist()
    assert got[0] == clicks[2] and pd.isna(got[2])


@pytest.mark.slow  # a fresh `feast` process imports Feast (~15-25 s here)
def test_feast_cli_apply_on_the_repo(settings: Settings) -> None:
    write_snapshot(settings, "L1", dt.date(2026, 1, 1), n=4)
    write_all_stats(settings, dt.date(2026, 1, 1))
    apply_repo(settings)
    env = {**os.environ, **feast_env(settings)}
    feast = Path(sys.executable).parent / "feast"
    out = subprocess.run(
        [str(feast), "apply"], cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Same yaml, same registry: the CLI finds nothing to change after apply_repo.
    assert "No changes to registry" in out.stdout

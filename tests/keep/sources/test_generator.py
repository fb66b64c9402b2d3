"""The synthetic super-domain has the properties its configuration promises.

Expected values come from the configuration (traffic shares, base logits, position
decays) or from independent re-sampling, never from the generator's own summaries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from keep.core.config import Settings
from keep.sources import generator
from tests.conftest import make_settings

EPOCH = dt.date(2026, 1, 1)
DAYS = [EPOCH + dt.timedelta(days=i) for i in range(3)]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks = rankdata(scores)
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def world_settings(home: Path, **generator_overrides: object) -> Settings:
    return make_settings(
        home,
        generator={
            "n_users": 2_000,
            "n_items": 800,
            "impressions_per_day": 30_000,
            **generator_overrides,
        },
    )


@pytest.fixture(scope="module")
def small_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    settings = world_settings(tmp_path_factory.mktemp("world"))
    raws, oracles = [], []
    for ds in DAYS:
        paths = generator.write_day(settings, ds)
        raws.append(pd.read_json(paths["impressions"], lines=True, dtype={"impression_id": str}))
        oracles.append(pd.read_parquet(paths["oracle"]))
    return settings, pd.concat(raws, ignore_index=True), pd.concat(oracles, ignore_index=True)


def test_downstream_subsystem_is_about_ten_times_sparser(small_world) -> None:
    settings, raw, _ = small_world
    g = settings.generator
    downstream = raw[raw["scenario"] == g.downstream_scenario]
    users = downstream["user_id"].unique()
    per_user_all = raw[raw["user_id"].isin(users)].groupby("user_id").size().mean()
    per_user_downstream = downstream.groupby("user_id").size().mean()
    share = {s.name: s.traffic_share for s in g.scenarios}[g.downstream_scenario]
    assert share == pytest.approx(0.1)
    assert 7 <= per_user_all / per_user_downstream <= 14


def test_click_rates_follow_configured_scenarios_and_positions(small_world) -> None:
    settings, raw, oracle = small_world
    ctr = raw.groupby("scenario")["click"].mean()
    by_base = sorted(settings.generator.scenarios, key=lambda s: s.base_logit)
    assert list(ctr[[s.name for s in by_base]].values) == sorted(ctr.values)
    for scenario, rows in raw.groupby("scenario"):
        top = rows.loc[rows["position"] == 0, "click"].mean()
        deep = rows.loc[rows["position"] >= 5, "click"].mean()
        assert top > deep, scenario
    # The oracle is calibrated: per scenario, mean probability ~ observed click rate.
    merged = raw.merge(oracle, on="impression_id", validate="one_to_one")
    assert len(merged) == len(raw)
    calib = merged.groupby("scenario").agg(ctr=("click", "mean"), p=("p_click", "mean"))
    assert np.allclose(calib["ctr"], calib["p"], rtol=0.15)


def test_oracle_auc_is_above_chance_and_consistent_with_its_noise(small_world) -> None:
    _, raw, oracle = small_world
    merged = raw.merge(oracle, on="impression_id")
    p = merged["p_click"].to_numpy()
    observed = auc(merged["click"].to_numpy(), p)
    # Independent re-draws of the labels from the oracle probabilities give the AUC that
    # Bernoulli noise alone allows; the generated labels must look like one such draw.
    rng = np.random.default_rng(123)
    redraws = np.array([auc((rng.random(len(p)) < p).astype(int), p) for _ in range(20)])
    assert observed > 0.6
    assert abs(observed - redraws.mean()) < 4 * redraws.std() + 0.005


def test_growth_drift_and_truth_files(small_world) -> None:
    settings, raw, _ = small_world
    g = settings.generator
    users0, items0 = generator.dimensions_for_day(settings, DAYS[0])
    users1, items1 = generator.dimensions_for_day(settings, DAYS[1])
    assert len(users0) == g.n_users and len(items0) == g.n_items
    assert users1["user_id"].min() == g.n_users and len(users1) == g.new_users_per_day
    new_items = items1[items1["item_id"] >= g.n_items]
    assert len(new_items) == g.new_items_per_day
    day1 = raw[raw["impression_id"].str.startswith(f"{DAYS[1]:%Y%m%d}")]
    assert day1["user_id"].max() < g.n_users + g.new_users_per_day
    latent0 = pd.read_parquet(
        generator.truth_dir(settings, "user_latent", DAYS[0]) / "part-00000.parquet"
    )
    latent2 = pd.read_parquet(
        generator.truth_dir(settings, "user_latent", DAYS[2]) / "part-00000.parquet"
    )
    a = np.stack(latent0["latent"].to_numpy())
    b = np.stack(latent2["latent"].to_numpy())[: len(a)]
    corr = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert 0.9 < corr < 1.0  # slow drift: interests move, but little in two days
    manifest = json.loads((g.truth_root / "world.json").read_text())
    assert manifest["world_id"] == g.world_id()
    # The truth never lands beside the raw logs.
    assert not any(
        "p_click" in p.read_text()[:2000] for p in settings.lake.raw_root.rglob("*.jsonl")
    )


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = world_settings(tmp_path / "a", impressions_per_day=3_000)
    b = world_settings(tmp_path / "b", impressions_per_day=3_000)
    c = world_settings(tmp_path / "c", impressions_per_day=3_000, seed=8)
    for s in (a, b, c):
        generator.write_day(s, DAYS[1])
    assert _digest(tmp_path / "a" / "var") == _digest(tmp_path / "b" / "var")
    assert _digest(tmp_path / "a" / "var") != _digest(tmp_path / "c" / "var")
    assert a.generator.world_id() != c.generator.world_id()


def test_chunks_made_by_several_processes_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that a small day has several (each chunk is its own random stream).
    monkeypatch.setattr(generator, "CHUNK", 1_000)
    one = world_settings(tmp_path / "one", impressions_per_day=3_500, workers=1)
    two = world_settings(tmp_path / "two", impressions_per_day=3_500, workers=2)
    paths = {s.generator.workers: generator.write_day(s, DAYS[1]) for s in (one, two)}
    assert _digest(tmp_path / "one" / "var") == _digest(tmp_path / "two" / "var")
    # The file holds pandas' own JSON lines of the day's rows, in impression id order.
    raw, _ = generator.impressions_for_day(one, DAYS[1])
    assert len(raw) == 3_500 and raw["impression_id"].is_monotonic_increasing
    expected = raw.to_json(orient="records", lines=True).encode()
    assert paths[2]["impressions"].read_bytes() == expected
    # The worker count is not part of the world.
    assert one.generator.world_id() == two.generator.world_id()


def test_jsonl_bytes_is_pandas_json_lines() -> None:
    plain = pd.DataFrame(
        {"id": ["a-1", "b 2"], "n": np.array([3, -40], dtype=np.int64), "t": ["x", "y"]}
    )
    tricky = [
        plain.assign(t=['q"uote', "sl/ash"]),  # characters pandas escapes
        plain.assign(t=["caf\u00e9", "tab\there"]),
        plain.assign(t=[None, "y"]),
        plain.assign(n=[0.5, 1.0]),
        plain.assign(n=[True, False]),
        plain.iloc[:0],
    ]
    for df in [plain, *tricky]:
        assert generator.jsonl_bytes(df) == df.to_json(orient="records", lines=True).encode()

"""Aggregation and samples: incremental state equals a full recomputation, samples see
exactly the state of the day before, backfills equal fresh runs, order is enforced.

The reference values are computed here with pandas, straight from the bronze and
dimension tables (read with delta-rs), not with the jobs' code.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import (
    COUNTERS,
    ENTITIES,
    IMPRESSIONS,
    USER_BEHAVIOR,
    sample_specs,
    stats_spec,
)
from keep.lake import delta, raw_format
from keep.sources import generator
from spark_jobs.aggregate import run_aggregate, run_seed_state
from spark_jobs.ingest import run_ingest
from spark_jobs.samples import run_samples
from tests.conftest import built_once, make_settings, run_spark_days

EPOCH = dt.date(2026, 1, 1)
WINDOWS = [1, 2, 3, 4]
LENGTH = 5
# Five days: the 4-day window expires the first day on the last one.
HISTORY = [EPOCH + dt.timedelta(days=i) for i in range(5)]
SAMPLE_DAYS = (HISTORY[3], HISTORY[4])


def tiny(home: Path, **aggregate: object) -> Settings:
    return make_settings(
        home,
        generator={
            "n_users": 50,
            "n_items": 40,
            "n_categories": 6,
            "n_brands": 12,
            "impressions_per_day": 500,
            "new_users_per_day": 2,
            "new_items_per_day": 1,
        },
        aggregate={"windows": WINDOWS, "sequence_length": LENGTH, **aggregate},
    )


def read(settings: Settings, spec_name: str, ds: dt.date | None = None) -> pd.DataFrame:
    layer, table = spec_name.split(".")
    filters = [("ds", "=", ds.isoformat())] if ds else None
    return DeltaTable(str(settings.lake.root / layer / table)).to_pandas(filters=filters)


# --------------------------------------------------------------------------- reference


def impressions_with_attrs(settings: Settings) -> pd.DataFrame:
    """Every bronze impression with its item's category/brand as of its own log day."""
    imps = read(settings, "bronze.impressions")
    items = read(settings, "dim.items")
    parts = []
    for ds, day in imps.groupby("ds"):
        asof = items[items["ds"] <= ds].sort_values("ds").drop_duplicates("item_id", keep="last")
        parts.append(
            day.merge(asof[["item_id", "category_id", "brand_id"]], on="item_id", how="left")
        )
    return pd.concat(parts, ignore_index=True)


def expected_stats(
    events: pd.DataFrame, entity: str, ds: dt.date, prior: tuple[float, float]
) -> pd.DataFrame:
    keys = list(ENTITIES[entity])
    rows = events.dropna(subset=keys).assign(
        impressions=1, clicks=events["click"], carts=events["cart"], purchases=events["purchase"]
    )
    out = None
    for w in WINDOWS:
        first = (ds - dt.timedelta(days=w - 1)).isoformat()
        window = rows[(rows["ds"] >= first) & (rows["ds"] <= ds.isoformat())]
        sums = window.groupby(keys)[list(COUNTERS)].sum().add_suffix(f"_{w}d")
        out = sums if out is None else out.join(sums, how="outer")
    assert out is not None
    out = out.fillna(0).astype("int64")
    ctr_prior, strength = prior
    for w in WINDOWS:
        out[f"ctr_{w}d"] = (out[f"clicks_{w}d"] + strength * ctr_prior) / (
            out[f"impressions_{w}d"] + strength
        )
    out = out[out[f"impressions_{max(WINDOWS)}d"] > 0]
    out.index = out.index.set_names(keys)
    return out.sort_index()


def expected_sequences(events: pd.DataFrame, ds: dt.date) -> dict[int, list[tuple]]:
    clicked = events[(events["click"] == 1) & (events["ds"] <= ds.isoformat())].copy()
    clicked["behavior_type"] = np.where(
        clicked["purchase"] == 1, "purchase", np.where(clicked["cart"] == 1, "cart", "click")
    )
    cols = ["event_time", "item_id", "category_id", "brand_id", "scenario", "behavior_type"]
    clicked = clicked.sort_values(cols)
    return {
        int(user): [tuple(r) for r in group[cols].itertuples(index=False)][-LENGTH:]
        for user, group in clicked.groupby("user_id")
    }


def as_tuples(behaviors: object) -> list[tuple]:
    fields = ("event_time", "item_id", "category_id", "brand_id", "scenario", "behavior_type")
    return [tuple(b[f] for f in fields) for b in behaviors]  # type: ignore[attr-defined]


def normalise(seq: list[tuple]) -> list[tuple]:
    return [
        (
            pd.Timestamp(t).tz_convert("UTC")
            if pd.Timestamp(t).tz
            else pd.Timestamp(t).tz_localize("UTC"),
            int(i),
            int(c),
            int(b),
            s,
            k,
        )
        for t, i, c, b, s, k in seq
    ]


# --------------------------------------------------------------------------- fixtures


def extend(
    tmp_path_factory: pytest.TempPathFactory, name: str, start: Path, build: Callable[[Path], None]
) -> Path:
    """A lake built once per session: a copy of the lake at ``start``, then ``build``."""

    def copy_and_build(home: Path) -> None:
        shutil.copytree(start, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
        build(home)

    return built_once(tmp_path_factory, name, copy_and_build)


@pytest.fixture(scope="module")
def first_days(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Homes of the history's first day and of its first three days (samples every day),
    each built once per test session: where the backfill test's two lakes start from."""
    one = built_once(
        tmp_path_factory,
        "aggregate-1day",
        lambda home: run_spark_days(spark, tiny(home), HISTORY[:1]),
    )
    three = extend(
        tmp_path_factory,
        "aggregate-3days",
        one,
        lambda home: run_spark_days(spark, tiny(home), HISTORY[1:3]),
    )
    return [one, three]


@pytest.fixture(scope="module")
def history(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, first_days: list[Path]
) -> Settings:
    """Five days landed, ingested and aggregated in order (built once per test session, read
    by the tests of this module on any worker), sampled every day."""
    home = extend(
        tmp_path_factory,
        "aggregate-history",
        first_days[-1],
        lambda home: run_spark_days(spark, tiny(home), HISTORY[3:]),
    )
    return tiny(home)


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_incremental_state_equals_full_recomputation(history: Settings) -> None:
    events = impressions_with_attrs(history)
    agg = history.aggregate
    for ds in HISTORY:
        for entity, keys in ENTITIES.items():
            got = (
                read(history, stats_spec(entity, WINDOWS).name, ds)
                .set_index(list(keys))
                .sort_index()
            )
            want = expected_stats(events, entity, ds, (agg.prior_ctr, agg.prior_strength))
            assert list(got.index) == list(want.index), (entity, ds)
            for col in want.columns:
                assert np.allclose(
                    got[col].to_numpy(dtype=float), want[col].to_numpy(dtype=float)
                ), (entity, ds, col)
            assert (
                got["event_timestamp"] == pd.Timestamp(ds + dt.timedelta(days=1), tz="UTC")
            ).all()
        sequences = read(history, USER_BEHAVIOR.name, ds)
        got_seq = {
            int(r.user_id): normalise(as_tuples(r.behaviors)) for r in sequences.itertuples()
        }
        want_seq = {u: normalise(s) for u, s in expected_sequences(events, ds).items()}
        assert got_seq == want_seq, ds
        assert (sequences["seq_len"] == sequences["behaviors"].map(len)).all()
    # The windows really expired rows: on the last day, some user's 4-day count is below
    # the count of all their impressions so far (the first day fell out of the window).
    last = read(history, "silver.user_stats", HISTORY[-1]).set_index("user_id")["impressions_4d"]
    all_time = events.groupby("user_id").size().reindex(last.index)
    assert (last < all_time).any()


@pytest.mark.slow
def test_samples_see_exactly_the_state_of_the_day_before(history: Settings) -> None:
    events = impressions_with_attrs(history)
    agg = history.aggregate
    pretrain, downstream = sample_specs(history.aggregate.windows)
    for ds in SAMPLE_DAYS:
        state_day = ds - dt.timedelta(days=1)
        samples = read(history, pretrain.name, ds)
        bronze = read(history, IMPRESSIONS.name, ds)
        assert sorted(samples["impression_id"]) == sorted(bronze["impression_id"])
        assert (samples["state_ds"] == state_day.isoformat()).all()
        # Only information from before the sample's day: state built from partitions < ds.
        before = events[events["ds"] < ds.isoformat()]
        want_seq = expected_sequences(before, state_day)
        with_history = samples[samples["seq_len"] > 0]
        assert len(with_history) > len(samples) / 2
        for row in with_history.itertuples():
            assert normalise(as_tuples(row.behaviors)) == normalise(want_seq[int(row.user_id)])
            assert max(t for t, *_ in normalise(as_tuples(row.behaviors))) < pd.Timestamp(
                ds, tz="UTC"
            )
        for entity, prefix in (("user", "u_"), ("item", "i_"), ("user_category", "uc_")):
            keys = list(ENTITIES[entity])
            want = (
                expected_stats(before, entity, state_day, (agg.prior_ctr, agg.prior_strength))
                .add_prefix(prefix)
                .reset_index()
            )
            items = read(history, "dim.items")
            asof = (
                items[items["ds"] <= state_day.isoformat()]
                .sort_values("ds")
                .drop_duplicates("item_id", keep="last")
            )
            joined = samples.drop(columns=["category_id"]).merge(
                asof[["item_id", "category_id"]], on="item_id", how="left"
            )
            merged = joined.merge(want, on=keys, how="left", suffixes=("", "_want"))
            for w in WINDOWS:
                col = f"{prefix}clicks_{w}d"
                expected = merged[f"{col}_want"].fillna(0).to_numpy()
                assert np.array_equal(merged[col].to_numpy(), expected), (ds, col)
        down = read(history, downstream.name, ds)
        assert set(down["scenario"]) == {history.downstream.scenario}
        assert sorted(down["impression_id"]) == sorted(
            samples.loc[samples["scenario"] == history.downstream.scenario, "impression_id"]
        )


def _tables(settings: Settings, layers: tuple[str, ...] = ("silver", "gold")) -> dict[str, str]:
    """Content of every silver and gold table, order-independent, as JSON per table."""
    out = {}
    for layer in layers:
        for path in sorted((settings.lake.root / layer).iterdir()):
            frame = DeltaTable(str(path)).to_pandas()
            rows = sorted(
                json.dumps(r, default=str, sort_keys=True) for r in frame.to_dict(orient="records")
            )
            out[f"{layer}.{path.name}"] = "\n".join(rows)
    return out


def _change_day(settings: Settings, ds: dt.date) -> None:
    """Drop a third of the day's raw impressions and turn some non-clicks into clicks."""
    path = raw_format.day_dir(settings, "impressions", ds) / "part-00000.jsonl"
    records = [json.loads(line) for i, line in enumerate(path.read_text().splitlines()) if i % 3]
    for r in records[::7]:
        r["click"] = 1
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.slow
def test_backfill_after_changed_day_equals_fresh_run_and_order_is_enforced(
    spark: SparkSession, first_days: list[Path], tmp_path: Path
) -> None:
    from keep.flows import pipeline

    days = HISTORY[:3]
    # Copies of the lakes after the first day and after all three days (samples every day).
    one_day, three_days = first_days
    repaired, fresh = tiny(tmp_path / "repaired"), tiny(tmp_path / "fresh")
    shutil.copytree(three_days, repaired.home)
    shutil.copytree(one_day, fresh.home)  # the fresh run's first day is this one, unchanged
    _change_day(repaired, days[1])
    run_ingest(spark, repaired, days[1])
    recomputed = pipeline.backfill(repaired, days[1], days[1], gates_on=False)
    assert recomputed == days[1:]  # the changed day and every day after it

    for ds in days[1:]:
        generator.write_day(fresh, ds)
        if ds == days[1]:
            _change_day(fresh, ds)
        run_ingest(spark, fresh, ds)
        run_aggregate(spark, fresh, ds)
        run_samples(spark, fresh, ds)
    assert _tables(repaired) == _tables(fresh)

    # Out of order: day 5 without day 4's state is refused, with the way out in the message.
    late = HISTORY[4]
    generator.write_day(repaired, late)
    run_ingest(spark, repaired, late)
    with pytest.raises(InputError, match=r"state of 2026-01-04 is missing.*keep backfill"):
        run_aggregate(spark, repaired, late)
    with pytest.raises(InputError, match="no partition 2026-01-04"):
        run_aggregate(spark, repaired, HISTORY[3])
    assert delta.table_exists(repaired, USER_BEHAVIOR)


def _silver(settings: Settings) -> dict[str, str]:
    """Every silver table's content (all partitions), order-independent."""
    return _tables(settings, ("silver",))


def _days(settings: Settings, table: str) -> list[str]:
    return sorted(read(settings, f"silver.{table}")["ds"].unique())


@pytest.mark.slow
def test_seed_equals_the_incremental_path_and_the_next_day_continues_it(
    spark: SparkSession, history: Settings, tmp_path: Path
) -> None:
    """The seed (one full recomputation) leaves exactly the state the daily job leaves.

    A 1-day window and no snapshot retention, so that retention removes daily counts and
    snapshots within a few days: every silver table is then compared whole.
    """
    params = {"windows": [1], "snapshot_retention_days": 0}
    incremental = tiny(tmp_path / "incremental", **params)
    seeded = tiny(tmp_path / "seeded", **params)
    for target in (incremental, seeded):
        for layer in ("bronze", "dim"):  # the history's bronze, ingested once
            shutil.copytree(history.lake.root / layer, target.lake.root / layer)
    *built, seed_day, next_day = HISTORY
    for ds in [*built, seed_day]:
        run_aggregate(spark, incremental, ds)
    run_seed_state(spark, seeded, seed_day)

    assert _silver(seeded) == _silver(incremental)
    # Retention kept the daily counts of the last 1 + 1 + 1 days and one snapshot.
    assert _days(seeded, "daily_counts") == [d.isoformat() for d in HISTORY[1:4]]
    assert _days(seeded, "user_stats") == [seed_day.isoformat()]
    assert len(read(seeded, USER_BEHAVIOR.name)) > 0

    for settings in (incremental, seeded):
        run_aggregate(spark, settings, next_day)
    assert _silver(seeded) == _silver(incremental)
    assert _days(seeded, "daily_counts") == [d.isoformat() for d in HISTORY[2:5]]

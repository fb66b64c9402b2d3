"""Ingest job: quarantine reasons, duplicates, idempotent reruns, partition isolation.

Expected values come from the raw rows the tests write themselves (pandas / json),
never from the ingest code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS, INGEST_AUDIT, QUARANTINE
from keep.lake import delta, raw_format
from keep.lake import spark_io as lake
from keep.sources import generator
from spark_jobs.ingest import run_ingest, shuffle_partitions
from tests.conftest import SPARK_LAKE_DAYS, make_settings

D1 = dt.date(2026, 1, 1)
D2 = dt.date(2026, 1, 2)
D3 = dt.date(2026, 1, 3)


def write_lines(settings: Settings, source: str, ds: dt.date, lines: list[str]) -> Path:
    path = raw_format.day_dir(settings, source, ds) / "part-00000.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def clean_rows(settings: Settings, ds: dt.date) -> list[dict]:
    return generator.impressions_for_day(settings, ds)[0].to_dict(orient="records")


def dumps(row: dict) -> str:
    return json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})


def delta_frame(settings: Settings, spec, ds: dt.date | None = None) -> pd.DataFrame:
    path = delta.table_path(settings, spec)
    filters = [("ds", "=", ds.isoformat())] if ds else None
    return DeltaTable(str(path)).to_pandas(filters=filters)


def checksum(df: pd.DataFrame) -> tuple[int, str]:
    """Row count and an order-independent content hash of a frame."""
    rows = sorted(json.dumps(r, default=str, sort_keys=True) for r in df.to_dict(orient="records"))
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


def partition_bytes(settings: Settings, spec, ds: dt.date) -> dict[str, str]:
    """sha256 of every file in partition ``ds``, plus the snapshot's file list for it."""
    root = delta.table_path(settings, spec)
    folder = root / f"ds={ds.isoformat()}"
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    live = sorted(f for f in DeltaTable(str(root)).file_uris() if f"/ds={ds.isoformat()}/" in f)
    return digests | {"_live": ",".join(live)}


# --------------------------------------------------------------------------- quarantine


def defective_rows(ds: dt.date, base: dict) -> list[tuple[str, str]]:
    """(raw line, expected reason) for one injected defect each."""
    day = pd.Timestamp(ds.isoformat(), tz="UTC")

    def variant(i: int, **changes: object) -> dict:
        row = dict(base, impression_id=f"bad-{i:03d}")
        row.update(changes)
        return {k: v for k, v in row.items() if v is not _DROP}

    cases: list[tuple[dict | str, str]] = [
        ('{"impression_id": "bad-000", "user_id": 1, broken', "malformed_record"),
        (variant(1, impression_id=_DROP), "null_impression_id"),
        (variant(2, user_id=None), "null_user_id"),
        (variant(3, user_id="abc"), "bad_type_user_id"),
        (variant(4, item_id="12x"), "bad_type_item_id"),
        (variant(5, event_time="yesterday"), "bad_type_event_time"),
        (variant(6, event_time=(day - pd.Timedelta(hours=3)).isoformat()), "event_time_too_late"),
        (variant(7, event_time=(day + pd.Timedelta(hours=25)).isoformat()), "event_time_after_day"),
        (variant(8, scenario="television"), "unknown_scenario"),
        (variant(9, scenario=""), "null_scenario"),
        (variant(10, position=-1), "out_of_range_position"),
        (variant(11, click=2), "out_of_range_click"),
        (variant(12, cart="yes"), "bad_type_cart"),
        (variant(13, click=0, cart=1, purchase=0), "cart_without_click"),
        (variant(14, click=0, cart=0, purchase=1), "purchase_without_click"),
        (variant(15, position="first"), "bad_type_position"),
        (variant(16, purchase=7), "out_of_range_purchase"),
        (variant(17, item_id=None), "null_item_id"),
    ]
    return [(c if isinstance(c, str) else json.dumps(c), reason) for c, reason in cases]


_DROP = object()


@pytest.mark.slow
def test_quarantine_reasons_and_row_balance(spark: SparkSession, settings: Settings) -> None:
    rows = clean_rows(settings, D1)[:360]
    base = dict(rows[0], click=1, cart=0, purchase=0)
    bad = defective_rows(D1, base)
    # A late event within the allowed lateness is clean and must be stored.
    late = dict(
        rows[1],
        event_time=(pd.Timestamp(D1.isoformat(), tz="UTC") - pd.Timedelta(minutes=30)).isoformat(),
    )
    rows[1] = late
    lines = [dumps(r) for r in rows] + [line for line, _ in bad]
    write_lines(settings, "impressions", D1, lines)

    counts = run_ingest(spark, settings, D1)["impressions"]

    assert 0.04 < len(bad) / len(lines) < 0.06
    quarantine = delta_frame(settings, QUARANTINE, D1)
    got = dict(zip(quarantine["raw"], quarantine["reason"], strict=True))
    assert got == dict(bad), "every injected row, and only those, quarantined with its own reason"
    stored = delta_frame(settings, IMPRESSIONS, D1)
    assert set(stored["impression_id"]) == {r["impression_id"] for r in rows}
    assert (
        counts.rows_in
        == len(lines)
        == counts.rows_stored + counts.rows_quarantined + counts.duplicates
    )
    assert (counts.rows_stored, counts.rows_quarantined, counts.duplicates) == (
        len(rows),
        len(bad),
        0,
    )


@pytest.mark.slow
def test_duplicates_within_day_and_against_earlier_days(
    spark: SparkSession, settings: Settings
) -> None:
    day1 = clean_rows(settings, D1)[-100:]  # the day's last events (generator sorts by time)
    write_lines(settings, "impressions", D1, [dumps(r) for r in day1])
    run_ingest(spark, settings, D1)

    day2 = clean_rows(settings, D2)[:100]
    exact = day2[:10]  # re-sent unchanged: plain duplicates
    non_clicked = [r for r in day2[10:] if r["click"] == 0][:5]
    upgraded = [dict(r, click=1, cart=1) for r in non_clicked]  # conflicting copies
    replayed = day1[-7:]  # stored on day 1, re-sent within the allowed lateness
    lines = [dumps(r) for r in day2 + exact + upgraded + replayed]
    write_lines(settings, "impressions", D2, lines)

    counts = run_ingest(spark, settings, D2)["impressions"]

    assert counts.rows_in == len(lines)
    assert counts.duplicates_within_day == len(exact) + len(upgraded)
    assert counts.conflicting_duplicates == len(upgraded)
    assert counts.duplicates_earlier_days == len(replayed)
    assert counts.rows_stored == len(day2)
    stored = delta_frame(settings, IMPRESSIONS, D2).set_index("impression_id")
    for row in upgraded:  # the copy furthest down the funnel wins
        assert (stored.loc[row["impression_id"], ["click", "cart"]] == [1, 1]).all()
    assert not set(stored.index) & {r["impression_id"] for r in replayed}
    audit = delta_frame(settings, INGEST_AUDIT, D2).set_index("source")
    assert audit.loc["impressions", "rows_in"] == len(lines)


def impression(iid: str | None, time: str, click: int = 0, cart: int = 0, **extra: object) -> str:
    row = {"impression_id": iid, "user_id": 7, "item_id": 9, "event_time": f"2026-01-01T{time}Z"}
    row |= {"scenario": "feed", "position": 0, "click": click, "cart": cart, "purchase": 0}
    return json.dumps({k: v for k, v in (row | extra).items() if v is not None})


@pytest.mark.slow
def test_copies_rank_by_funnel_then_time_then_file_and_invalid_copies_never_compete(
    spark: SparkSession, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    folder = raw_format.day_dir(settings, "impressions", D1)
    folder.mkdir(parents=True)
    a = [
        impression("funnel", "10:00:00", click=0),
        impression("time", "10:05:00", click=1),
        impression("exact", "11:00:00"),
        impression("exact", "11:00:00"),
        impression("file", "12:00:00", click=1),
        impression("mixed", "13:00:00", click=2),  # invalid: out_of_range_click
        impression("bad", "14:00:00", cart=1),  # invalid twice: cart_without_click
        impression("bad", "14:00:00", cart=1),
        *[impression(None, f"15:00:0{i}") for i in range(3)],  # no id: null_impression_id
    ]
    b = [
        impression("funnel", "10:07:00", click=1, cart=1),  # further down the funnel
        impression("time", "10:01:00", click=1),  # same funnel step, earlier
        impression("file", "12:00:00", click=1, position=3),  # same step and time: a wins
        impression("mixed", "13:00:00", click=1),
    ]
    (folder / "a.jsonl").write_text("".join(line + "\n" for line in a))
    (folder / "b.jsonl").write_text("".join(line + "\n" for line in b))
    user = {"user_id": 1, "gender": "F", "age_level": 3, "purchase_power": 1}
    users = raw_format.day_dir(settings, "users", D1)
    users.mkdir(parents=True)
    (users / "a.jsonl").write_text(
        json.dumps(user) + "\n" + json.dumps({"user_id": 2, "gender": None}) + "\n"
    )
    (users / "b.jsonl").write_text(
        json.dumps(user | {"age_level": None}) + "\n" + json.dumps({"user_id": 2}) + "\n"
    )

    with caplog.at_level("INFO", logger="spark_jobs.ingest"):
        counts = run_ingest(spark, settings, D1)

    imp = counts["impressions"]
    assert imp.rows_in == len(a) + len(b)
    # Stored: funnel, time, exact, file, mixed; quarantined: mixed (a), bad x2, no id x3.
    assert (imp.rows_stored, imp.rows_quarantined) == (5, 6)
    # Within-day duplicates: funnel, time, exact, file (the invalid copies do not count);
    # conflicting: funnel, time, file (the exact copy agrees with the one kept).
    assert (imp.duplicates_within_day, imp.conflicting_duplicates) == (4, 3)
    stored = delta_frame(settings, IMPRESSIONS, D1).set_index("impression_id")
    assert sorted(stored.index) == ["exact", "file", "funnel", "mixed", "time"]
    assert stored.loc["funnel", ["click", "cart"]].tolist() == [1, 1]
    assert stored.loc["time", "event_time"] == pd.Timestamp("2026-01-01T10:01:00Z")
    assert stored.loc["file", "position"] == 0
    assert stored.loc["mixed", "click"] == 1
    quarantine = delta_frame(settings, QUARANTINE, D1)
    expected = sorted([a[5], a[6], a[7], *a[8:]])
    assert sorted(quarantine["raw"]) == expected, "every invalid line, each copy, as received"
    assert quarantine.groupby("reason").size().to_dict() == {
        "out_of_range_click": 1,
        "cart_without_click": 2,
        "null_impression_id": 3,
    }
    # Dimensions: the last copy in file order wins; a missing value is a value.
    usr = counts["users"]
    assert (usr.rows_stored, usr.duplicates_within_day, usr.conflicting_duplicates) == (2, 2, 1)
    dim = delta_frame(settings, DIM_USERS, D1).set_index("user_id")
    assert pd.isna(dim.loc[1, "age_level"]) and dim.loc[1, "gender"] == "F"
    assert any("5 Delta commits" in r.getMessage() for r in caplog.records)


def test_shuffle_partitions_grow_with_the_day(settings: Settings) -> None:
    settings.ingest.raw_bytes_per_task = 100
    floor = settings.spark.shuffle_partitions
    assert shuffle_partitions(settings, 0) == floor
    assert shuffle_partitions(settings, 100 * floor) == floor
    assert shuffle_partitions(settings, 100 * floor + 1) == floor + 1
    assert shuffle_partitions(settings, 100 * 50) == 50


# --------------------------------------------------------------------------- reruns


@pytest.mark.slow
def test_rerun_is_identical_and_changed_day_touches_only_itself(
    spark: SparkSession, spark_lake: Path, tmp_path: Path
) -> None:
    # A copy of the session's shared lake: D1, D2, D3 generated and ingested (then aggregated).
    settings = make_settings(tmp_path / "home")
    shutil.copytree(spark_lake, settings.home)
    assert SPARK_LAKE_DAYS == [D1, D2, D3]
    tables = (IMPRESSIONS, QUARANTINE, INGEST_AUDIT, DIM_USERS, DIM_ITEMS)
    before = {t.name: checksum(delta_frame(settings, t)) for t in tables}

    run_ingest(spark, settings, D2)  # same input again
    assert {t.name: checksum(delta_frame(settings, t)) for t in tables} == before

    others = {ds: partition_bytes(settings, IMPRESSIONS, ds) for ds in (D1, D3)}
    raw = raw_format.day_dir(settings, "impressions", D2) / "part-00000.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    changed = records[::2]  # drop every other row ...
    for r in changed[:50]:  # ... and flip a label on some of the rest
        r["click"], r["cart"], r["purchase"] = 1, 0, 0
    raw.write_text("".join(json.dumps(r) + "\n" for r in changed))

    run_ingest(spark, settings, D2)

    day2 = delta_frame(settings, IMPRESSIONS, D2)
    assert len(day2) == len(changed)
    assert set(day2["impression_id"]) == {r["impression_id"] for r in changed}
    assert day2["click"].sum() == sum(r["click"] for r in changed)
    assert {ds: partition_bytes(settings, IMPRESSIONS, ds) for ds in (D1, D3)} == others


@pytest.mark.slow
def test_a_first_commit_killed_midway_reads_as_no_table_and_ingest_recovers(
    spark: SparkSession, settings: Settings
) -> None:
    """What an ingest killed (out of heap) during the first write of bronze.impressions left:
    ``_delta_log/`` with only an empty ``_staged_commits/`` and a 0-byte data file. The
    table has no version: it reads as absent and the rerun creates it."""
    folder = delta.table_path(settings, IMPRESSIONS)
    (folder / "_delta_log" / "_staged_commits").mkdir(parents=True)
    (folder / f"ds={D1.isoformat()}").mkdir()
    (folder / f"ds={D1.isoformat()}" / "part-00000-killed.c000.snappy.parquet").touch()
    assert not delta.table_exists(settings, IMPRESSIONS)
    assert lake.read_table(spark, settings, IMPRESSIONS).count() == 0

    generator.write_day(settings, D1)
    counts = run_ingest(spark, settings, D1)
    assert delta.table_exists(settings, IMPRESSIONS)
    stored = delta_frame(settings, IMPRESSIONS, D1)
    assert len(stored) == counts["impressions"].rows_stored > 0
    assert DeltaTable(str(folder)).version() == 0


# --------------------------------------------------------------------------- formats, dims, errors


@pytest.mark.slow
def test_csv_and_parquet_inputs_and_dimension_history(
    spark: SparkSession, settings: Settings
) -> None:
    rows = pd.DataFrame(clean_rows(settings, D1)[:40])
    folder = raw_format.day_dir(settings, "impressions", D1)
    folder.mkdir(parents=True)
    rows.iloc[:20].to_csv(folder / "a.csv", index=False)
    rows.iloc[20:].to_parquet(folder / "b.parquet", index=False)
    write_lines(
        settings,
        "items",
        D1,
        [
            json.dumps({"item_id": 1, "category_id": 3, "brand_id": 9, "price": 10.0}),
            json.dumps({"item_id": 2, "category_id": 4, "brand_id": None, "price": -1.0}),
        ],
    )
    write_lines(
        settings,
        "items",
        D2,
        [json.dumps({"item_id": 1, "category_id": 3, "brand_id": 9, "price": 12.5})],
    )
    write_lines(settings, "impressions", D2, [dumps(r) for r in clean_rows(settings, D2)[:5]])

    counts = run_ingest(spark, settings, D1)
    run_ingest(spark, settings, D2)

    assert counts["impressions"].rows_stored == 40
    assert counts["items"].rows_quarantined == 1
    quarantine = delta_frame(settings, QUARANTINE, D1)
    assert quarantine.loc[quarantine["source"] == "items", "reason"].tolist() == ["negative_price"]
    items = lake.read_table(spark, settings, DIM_ITEMS)
    price = {
        ds: lake.as_of(items, "item_id", ds).where("item_id = 1").first()["price"]
        for ds in (D1, D2)
    }
    assert price == {D1: 10.0, D2: 12.5}


def test_missing_raw_day_is_a_clear_error(spark: SparkSession, settings: Settings) -> None:
    with pytest.raises(InputError, match="No raw impression files for 2026-01-05"):
        run_ingest(spark, settings, dt.date(2026, 1, 5))

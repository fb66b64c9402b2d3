"""Taobao adapter: public layout in, documented raw format out (docs/taobao.md).

The input files are written here in exactly the public column layout; every expected
value (days, ISO times, ids, pseudo-item ids, prices, counts) is worked out by hand
from those lines and the rules in docs/taobao.md, never by calling the adapter's code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import DIM_ITEMS, DIM_USERS, IMPRESSIONS, INGEST_AUDIT, QUARANTINE, TableSpec
from keep.lake import delta
from keep.sources.taobao import import_taobao

D1 = dt.date(2017, 5, 5)  # 1494000000 = 2017-05-05T16:00:00Z
D2 = dt.date(2017, 5, 6)  # 1494028800 = 2017-05-06T00:00:00Z (the UTC midnight)

# (1 << 40) | (cate << 20) | brand, worked out by hand:
# 2**40 = 1_099_511_627_776; 6421 * 2**20 = 6_732_906_496; 4520 * 2**20 = 4_739_563_520.
ITEM_A = 1_106_244_583_782  # cate 6421, brand 49510
ITEM_B = 1_104_251_191_296  # cate 4520, brand NULL -> 0

RAW_SAMPLE = [
    "user,time_stamp,adgroup_id,pid,nonclk,clk",
    "1,1494000000,11,430548_1007,1,0",  # 2: D1 16:00:00, position 0, no click
    "2,1494028799,12,430539_1007,0,1",  # 3: D1 23:59:59, position 1, click
    "1,1494028800,11,430548_1007,1,0",  # 4: D2 00:00:00
    "3,1494030000,13,999_1,0,1",  # 5: D2 00:20:00, unknown pid -> position 2
    "abc,1494000000,11,430548_1007,1,0",  # 6: bad user
    "2,1494000000,12,430548_1007,1,2",  # 7: clk 2
    "2,notatime,12,430548_1007,1,0",  # 8: bad time -> first day
    "2,1494000000,12",  # 9: wrong field count -> first day
    "2,1494030000,12,430548_1007,1,1",  # 10: nonclk contradicts clk
    "",  # 11: blank, not a record
    "1,1494000000,11,430548_1007,1,0",  # 12: exact copy of line 2
    "4,1494030000,x12,430548_1007,1,0",  # 13: bad adgroup_id
    "5,1494030000,14,pidX,1,0",  # 14: bad pid
]
BEHAVIOR_LOG = [
    "user,time_stamp,btag,cate,brand",
    "1,1494000000,pv,6421,49510",  # 2: D1, item A, click
    "1,1494000100,cart,6421,49510",  # 3: D1, item A, click + cart
    "2,1494028799,buy,4520,NULL",  # 4: D1, item B, click + purchase
    "2,1494028800,fav,4520,",  # 5: D2, item B (empty brand), click
    "3,1494030000,pv,6421,49510",  # 6: D2, item A
    "3,1494030000,like,6421,49510",  # 7: unknown btag
    "3,1494030000,pv,abc,49510",  # 8: bad cate
    "x,1494030000,pv,6421,49510",  # 9: bad user
    "3,1494030000,pv,6421",  # 10: wrong field count -> first day
    "3,,pv,6421,49510",  # 11: empty time -> first day
    "4,1494030100,pv,2000000,7",  # 12: D2, cate >= 2**20 -> hashed pseudo-item C
    "4,1494030100,pv,6421,brandX",  # 13: bad brand
]
AD_FEATURE = [
    "adgroup_id,cate_id,campaign_id,customer,brand,price",
    "11,6421,1,1,49510,10.0",
    "12,6421,2,1,NULL,30.0",
    "13,4520,3,2,100,100.0",
    "14,1,4,3,5,abc",  # 5: bad price
    "15,1,4,3,5",  # 6: wrong field count
    "16,1,4,3,5,-1.5",  # 7: negative price
    "17,1,4,3,5,NaN",  # 8: not a finite price
]
USER_PROFILE = [
    # The real file's last header name has a trailing space.
    "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,"
    "shopping_level,occupation,new_user_class_level ",
    "1,0,5,2,5,,3,0,3",
    "2,0,1,1,2,1,3,0,4",
    "3,0,1,3,3,2,3,0,",
    "y,0,1,1,2,1,3,0,4",  # 5: bad userid
    "4,0,1,1,2,-1,3,0,4",  # 6: negative pvalue_level
    "5,0,1",  # 7: wrong field count
]
FILES = {
    "raw_sample.csv": RAW_SAMPLE,
    "behavior_log.csv": BEHAVIOR_LOG,
    "ad_feature.csv": AD_FEATURE,
    "user_profile.csv": USER_PROFILE,
}


def write_inputs(folder: Path, files: dict[str, list[str]] = FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (folder / name).write_text("".join(line + "\n" for line in lines))
    return folder


def out_file(settings: Settings, source: str, ds: dt.date, name: str) -> Path:
    return settings.lake.raw_root / source / f"ds={ds.isoformat()}" / f"taobao-{name}.jsonl"


def read_out(settings: Settings, source: str, ds: dt.date, name: str) -> list[dict | str]:
    """Lines of an output file: JSON objects as dicts, anything else as the raw string."""
    rows: list[dict | str] = []
    for line in out_file(settings, source, ds, name).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            rows.append(line)
    return rows


def h64(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_inputs(tmp_path / "taobao")


# --------------------------------------------------------------------------- raw_sample


def test_raw_sample_days_times_ids_and_labels(settings: Settings, source: Path) -> None:
    summary = import_taobao(settings, source)
    assert summary.days == [D1, D2]
    d1 = read_out(settings, "impressions", D1, "raw_sample")
    d2 = read_out(settings, "impressions", D2, "raw_sample")
    # D1: lines 2, 3, 6, 7, 12 in file order, then the undated lines 8 and 9.
    assert len(d1) == 7 and len(d2) == 5
    first = d1[0]
    assert first == {
        "impression_id": "ad-" + h64("1,1494000000,11,430548_1007"),
        "user_id": 1,
        "item_id": 11,
        "event_time": "2017-05-05T16:00:00Z",
        "scenario": "ads",
        "position": 0,
        "click": 0,
        "cart": 0,
        "purchase": 0,
    }
    assert isinstance(d1[1], dict)
    assert (d1[1]["event_time"], d1[1]["position"], d1[1]["click"]) == (
        "2017-05-05T23:59:59Z",
        1,
        1,
    )
    assert d1[4] == first  # the exact copy gets the same id: ingest dedupes it
    assert isinstance(d2[0], dict) and isinstance(d2[1], dict)
    assert (d2[0]["event_time"], d2[0]["click"]) == ("2017-05-06T00:00:00Z", 0)
    assert (d2[1]["event_time"], d2[1]["position"], d2[1]["click"]) == (
        "2017-05-06T00:20:00Z",
        2,
        1,
    )


def test_raw_sample_bad_lines_are_passed_through(settings: Settings, source: Path) -> None:
    summary = import_taobao(settings, source)
    d1 = read_out(settings, "impressions", D1, "raw_sample")
    d2 = read_out(settings, "impressions", D2, "raw_sample")
    bad_user, bad_clk = d1[2], d1[3]
    assert isinstance(bad_user, dict) and isinstance(bad_clk, dict)
    assert bad_user["user_id"] == "abc" and bad_user["taobao_error"] == "bad_user"
    assert bad_user["taobao_source"] == "raw_sample.csv:6"
    assert bad_user["taobao_raw"] == RAW_SAMPLE[5]
    assert bad_clk["click"] == "2" and bad_clk["taobao_raw"] == RAW_SAMPLE[6]
    assert d1[5] == f"taobao raw_sample.csv:8 bad_time_stamp: {RAW_SAMPLE[7]}"
    assert d1[6] == f"taobao raw_sample.csv:9 wrong_field_count: {RAW_SAMPLE[8]}"
    assert d2[2] == f"taobao raw_sample.csv:10 nonclk_mismatch: {RAW_SAMPLE[9]}"
    assert isinstance(d2[3], dict) and d2[3]["item_id"] == "x12"
    assert d2[4] == f"taobao raw_sample.csv:14 bad_pid: {RAW_SAMPLE[13]}"
    s = summary.sources["raw_sample.csv"]
    assert (s.rows_read, s.rows_written, s.rows_bad) == (12, 5, 7)
    assert s.bad_reasons == {
        "bad_user": 1,
        "bad_clk": 1,
        "bad_time_stamp": 1,
        "wrong_field_count": 1,
        "nonclk_mismatch": 1,
        "bad_adgroup_id": 1,
        "bad_pid": 1,
    }


def test_integer_fields_follow_the_ingest_cast(settings: Settings, tmp_path: Path) -> None:
    # Spark's try_cast(... AS BIGINT) trims whitespace, accepts a sign, rejects decimals
    # and values beyond 64 bits; the adapter must agree value by value.
    lines = [
        RAW_SAMPLE[0],
        " +7 ,1494000000,11,430548_1007,1,0",
        "-3,\t1494000000 ,11,430548_1007,1,0",
        "1.0,1494000000,11,430548_1007,1,0",
        "9223372036854775808,1494000000,11,430548_1007,1,0",
        "9223372036854775807,1494000000,11,430548_1007,1,0",
    ]
    source = write_inputs(tmp_path / "ints", {"raw_sample.csv": lines})
    summary = import_taobao(settings, source)
    rows = read_out(settings, "impressions", D1, "raw_sample")
    assert [r["user_id"] for r in rows if isinstance(r, dict)] == [
        7,
        -3,
        "1.0",
        "9223372036854775808",
        9223372036854775807,
    ]
    assert summary.sources["raw_sample.csv"].bad_reasons == {"bad_user": 2}


# --------------------------------------------------------------------------- behavior_log


def test_behavior_log_positives_negatives_and_pseudo_items(
    settings: Settings, source: Path
) -> None:
    summary = import_taobao(settings, source)
    d1 = read_out(settings, "impressions", D1, "behavior_log")
    # positives 2, 3, 4 each followed by its negative, then undated lines 10 and 11
    assert len(d1) == 8
    pos = [d1[0], d1[2], d1[4]]
    neg = [d1[1], d1[3], d1[5]]
    assert all(isinstance(r, dict) for r in pos + neg)
    assert pos[0] == {
        "impression_id": "bl-" + h64("1,1494000000,pv,6421,49510"),
        "user_id": 1,
        "item_id": ITEM_A,
        "event_time": "2017-05-05T16:00:00Z",
        "scenario": "browse",
        "position": 0,
        "click": 1,
        "cart": 0,
        "purchase": 0,
    }
    assert [(r["click"], r["cart"], r["purchase"]) for r in pos] == [
        (1, 0, 0),
        (1, 1, 0),
        (1, 0, 1),
    ]
    assert pos[2]["item_id"] == ITEM_B
    # D1 holds two pseudo-items; a negative is never the positive's own item.
    assert [r["item_id"] for r in neg] == [ITEM_B, ITEM_B, ITEM_A]
    for p, n in zip(pos, neg, strict=True):
        assert n["impression_id"] == "bn-" + p["impression_id"][3:] + "-0"
        assert (n["click"], n["cart"], n["purchase"]) == (0, 0, 0)
        assert (n["user_id"], n["event_time"], n["scenario"]) == (
            p["user_id"],
            p["event_time"],
            "browse",
        )
    assert d1[6] == f"taobao behavior_log.csv:10 wrong_field_count: {BEHAVIOR_LOG[9]}"
    assert d1[7] == f"taobao behavior_log.csv:11 bad_time_stamp: {BEHAVIOR_LOG[10]}"

    d2 = read_out(settings, "impressions", D2, "behavior_log")
    # 5, n5, 6, n6, 7, 8, 9, 12, n12, 13
    assert len(d2) == 10
    assert isinstance(d2[7], dict)
    item_c = d2[7]["item_id"]
    assert 1 << 41 <= item_c < 1 << 42  # cate 2000000 does not fit 20 bits: hashed id
    negatives = {1: ITEM_B, 3: ITEM_A, 8: item_c}  # position in file -> own item
    for i, own in negatives.items():
        row = d2[i]
        assert isinstance(row, dict) and row["click"] == 0
        assert row["item_id"] in {ITEM_A, ITEM_B, item_c} - {own}
    assert d2[4] == f"taobao behavior_log.csv:7 unknown_btag: {BEHAVIOR_LOG[6]}"
    assert d2[5] == f"taobao behavior_log.csv:8 bad_cate: {BEHAVIOR_LOG[7]}"
    assert isinstance(d2[6], dict) and d2[6]["user_id"] == "x"
    assert d2[9] == f"taobao behavior_log.csv:13 bad_brand: {BEHAVIOR_LOG[12]}"

    s = summary.sources["behavior_log.csv"]
    assert (s.rows_read, s.rows_written, s.rows_bad, s.rows_generated) == (12, 6, 6, 6)
    assert summary.negatives_skipped == 0
    assert summary.impressions_per_day == {D1: 7 + 8, D2: 5 + 10}


def test_more_negatives_or_none(settings: Settings, source: Path) -> None:
    import_taobao(settings, source, negatives_per_positive=3)
    d1 = read_out(settings, "impressions", D1, "behavior_log")
    assert len(d1) == 3 * 4 + 2
    negs = [r for r in d1 if isinstance(r, dict) and r["impression_id"].startswith("bn-")]
    assert len(negs) == 9
    assert {r["click"] for r in negs} == {0}
    assert sorted(r["impression_id"][-2:] for r in negs) == ["-0"] * 3 + ["-1"] * 3 + ["-2"] * 3
    summary = import_taobao(settings, source, negatives_per_positive=0)
    assert summary.sources["behavior_log.csv"].rows_generated == 0
    assert len(read_out(settings, "impressions", D1, "behavior_log")) == 3 + 2


def test_day_with_a_single_pseudo_item_has_no_negatives(settings: Settings, tmp_path: Path) -> None:
    files = {
        "raw_sample.csv": RAW_SAMPLE[:2],
        "behavior_log.csv": [BEHAVIOR_LOG[0], BEHAVIOR_LOG[1], BEHAVIOR_LOG[2]],
    }
    summary = import_taobao(settings, write_inputs(tmp_path / "one", files))
    assert summary.negatives_skipped == 2
    assert len(read_out(settings, "impressions", D1, "behavior_log")) == 2


# --------------------------------------------------------------------------- dimensions


def test_dimension_rows_land_on_the_first_day(settings: Settings, source: Path) -> None:
    summary = import_taobao(settings, source)
    assert summary.dims_day == D1
    assert not out_file(settings, "items", D2, "ad_feature").exists()
    ads = read_out(settings, "items", D1, "ad_feature")
    assert ads[:3] == [
        {"item_id": 11, "category_id": 6421, "brand_id": 49510, "price": 10.0},
        {"item_id": 12, "category_id": 6421, "brand_id": "", "price": 30.0},
        {"item_id": 13, "category_id": 4520, "brand_id": 100, "price": 100.0},
    ]
    assert isinstance(ads[3], dict) and ads[3]["price"] == "abc"
    assert ads[4] == f"taobao ad_feature.csv:6 wrong_field_count: {AD_FEATURE[5]}"
    assert isinstance(ads[5], dict) and ads[5]["price"] == "-1.5"
    assert ads[6] == f"taobao ad_feature.csv:8 bad_price_value: {AD_FEATURE[7]}"
    s = summary.sources["ad_feature.csv"]
    assert (s.rows_read, s.rows_written, s.rows_bad) == (7, 3, 4)

    pseudo = read_out(settings, "items", D1, "pseudo_items")
    # ascending id; price: median ad price of the category (6421: median(10, 30) = 20,
    # 4520: 100), else the global median of all ad prices (median(10, 30, 100) = 30).
    assert pseudo[:2] == [
        {"item_id": ITEM_B, "category_id": 4520, "brand_id": "", "price": 100.0},
        {"item_id": ITEM_A, "category_id": 6421, "brand_id": 49510, "price": 20.0},
    ]
    assert isinstance(pseudo[2], dict)
    assert (pseudo[2]["category_id"], pseudo[2]["brand_id"], pseudo[2]["price"]) == (
        2000000,
        7,
        30.0,
    )
    assert summary.pseudo_items == 3

    users = read_out(settings, "users", D1, "user_profile")
    assert users[:3] == [
        {"user_id": 1, "gender": "F", "age_level": 5, "purchase_power": ""},
        {"user_id": 2, "gender": "M", "age_level": 2, "purchase_power": 1},
        {"user_id": 3, "gender": "U", "age_level": 3, "purchase_power": 2},
    ]
    assert isinstance(users[3], dict) and users[3]["user_id"] == "y"
    assert isinstance(users[4], dict) and users[4]["purchase_power"] == "-1"
    assert users[5] == f"taobao user_profile.csv:7 wrong_field_count: {USER_PROFILE[6]}"
    s = summary.sources["user_profile.csv"]
    assert (s.rows_read, s.rows_written, s.rows_bad) == (6, 3, 3)


# --------------------------------------------------------------------------- accounting


def test_every_input_line_is_accounted_for(settings: Settings, source: Path) -> None:
    summary = import_taobao(settings, source)
    out_lines: list[dict | str] = []
    for path in sorted(settings.lake.raw_root.rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out_lines.append(json.loads(line))
            except json.JSONDecodeError:
                out_lines.append(line)
    passed_raw = [r["taobao_raw"] for r in out_lines if isinstance(r, dict) and "taobao_raw" in r]
    markers = [r for r in out_lines if isinstance(r, str)]
    for name, lines in FILES.items():
        s = summary.sources[name]
        data = [line for line in lines[1:] if line.strip()]
        assert s.rows_read == len(data) == s.rows_written + s.rows_bad
        assert sum(s.bad_reasons.values()) == s.rows_bad
        bad_seen = sum(passed_raw.count(line) for line in set(data))
        bad_seen += sum(1 for m in markers if m.startswith(f"taobao {name}:"))
        assert bad_seen == s.rows_bad, name
    assert len(markers) + len(passed_raw) == sum(s.rows_bad for s in summary.sources.values())
    assert [r["source"] for r in summary.summary_rows()][:4] == list(FILES)


def test_determinism_and_rerun_replaces_only_adapter_files(
    settings: Settings, source: Path
) -> None:
    root = settings.lake.raw_root
    import_taobao(settings, source)
    first = all_bytes(root)
    foreign = root / "impressions" / f"ds={D1}" / "part-00000.jsonl"
    foreign.write_text("{}\n")
    stale = root / "impressions" / f"ds={D2}" / "taobao-old.jsonl"
    stale.write_text("{}\n")
    import_taobao(settings, source, chunksize=2)  # chunk size does not change the bytes
    again = all_bytes(root)
    assert again.pop(str(foreign.relative_to(root))) == b"{}\n"
    assert again == first
    assert not stale.exists()
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no temp files left


def test_missing_inputs(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(InputError, match="raw_sample.csv"):
        import_taobao(settings, tmp_path / "empty")
    only = write_inputs(tmp_path / "only", {"raw_sample.csv": RAW_SAMPLE})
    with caplog.at_level(logging.WARNING, logger="keep.sources.taobao"):
        summary = import_taobao(settings, only)
    assert "behavior_log.csv" in caplog.text and "user_profile.csv" in caplog.text
    assert not summary.sources["ad_feature.csv"].found
    assert not (settings.lake.raw_root / "items").exists()
    bad_header = write_inputs(tmp_path / "hdr", {"raw_sample.csv": ["user,time,adgroup_id"]})
    with pytest.raises(InputError, match="time_stamp"):
        import_taobao(settings, bad_header)
    # An optional file with a bad header fails the run before anything is written.
    broken = write_inputs(
        tmp_path / "broken", {"raw_sample.csv": RAW_SAMPLE, "ad_feature.csv": ["adgroup_id,price"]}
    )
    before = all_bytes(settings.lake.raw_root)
    with pytest.raises(InputError, match="cate_id"):
        import_taobao(settings, broken)
    assert all_bytes(settings.lake.raw_root) == before


# --------------------------------------------------------------------------- real ingest


def delta_frame(settings: Settings, spec: TableSpec, ds: dt.date) -> pd.DataFrame:
    path = delta.table_path(settings, spec)
    return DeltaTable(str(path)).to_pandas(filters=[("ds", "=", ds.isoformat())])


@pytest.mark.slow
def test_ingest_quarantines_the_bad_lines(
    spark: SparkSession, settings: Settings, source: Path
) -> None:
    from spark_jobs.ingest import run_ingest

    summary = import_taobao(settings, source)
    expected = {
        D1: {
            ("impressions", RAW_SAMPLE[5]): "bad_type_user_id",
            ("impressions", RAW_SAMPLE[6]): "out_of_range_click",
            ("impressions", RAW_SAMPLE[7]): "malformed_record",
            ("impressions", RAW_SAMPLE[8]): "malformed_record",
            ("impressions", BEHAVIOR_LOG[9]): "malformed_record",
            ("impressions", BEHAVIOR_LOG[10]): "malformed_record",
            ("users", USER_PROFILE[4]): "bad_type_user_id",
            ("users", USER_PROFILE[5]): "out_of_range_purchase_power",
            ("users", USER_PROFILE[6]): "malformed_record",
            ("items", AD_FEATURE[4]): "bad_type_price",
            ("items", AD_FEATURE[5]): "malformed_record",
            ("items", AD_FEATURE[6]): "negative_price",
            ("items", AD_FEATURE[7]): "malformed_record",
        },
        D2: {
            ("impressions", RAW_SAMPLE[9]): "malformed_record",
            ("impressions", RAW_SAMPLE[12]): "bad_type_item_id",
            ("impressions", RAW_SAMPLE[13]): "malformed_record",
            ("impressions", BEHAVIOR_LOG[6]): "malformed_record",
            ("impressions", BEHAVIOR_LOG[7]): "malformed_record",
            ("impressions", BEHAVIOR_LOG[8]): "bad_type_user_id",
            ("impressions", BEHAVIOR_LOG[12]): "malformed_record",
        },
    }
    # (rows_in, stored, quarantined, duplicates) per source, counted from the files above
    expected_audit = {
        D1: {"impressions": (15, 8, 6, 1), "users": (6, 3, 3, 0), "items": (10, 6, 4, 0)},
        D2: {"impressions": (15, 8, 7, 0), "users": (0, 0, 0, 0), "items": (0, 0, 0, 0)},
    }
    for ds in (D1, D2):
        counts = run_ingest(spark, settings, ds)
        quarantine = delta_frame(settings, QUARANTINE, ds)
        found = {}
        for row in quarantine.itertuples():
            try:
                original = json.loads(row.raw)["taobao_raw"]
            except json.JSONDecodeError:
                original = row.raw.split(": ", 1)[1]
            found[(row.source, original)] = row.reason
        assert found == expected[ds]
        for source_name, (rows_in, stored, quarantined, dups) in expected_audit[ds].items():
            c = counts[source_name]
            assert (c.rows_in, c.rows_stored, c.rows_quarantined, c.duplicates) == (
                rows_in,
                stored,
                quarantined,
                dups,
            ), (ds, source_name)
            assert c.rows_in == c.rows_stored + c.rows_quarantined + c.duplicates
        assert counts["impressions"].rows_in == summary.impressions_per_day[ds]
        audit = delta_frame(settings, INGEST_AUDIT, ds).set_index("source")
        assert audit.loc["impressions", "rows_quarantined"] == expected_audit[ds]["impressions"][2]
    stored = delta_frame(settings, IMPRESSIONS, D1)
    assert set(stored["scenario"]) == {"ads", "browse"}
    assert int(stored["click"].sum()) == 1 + 3  # line 3 of raw_sample + three browse positives
    assert len(delta_frame(settings, DIM_ITEMS, D1)) == 6
    assert len(delta_frame(settings, DIM_USERS, D1)) == 3

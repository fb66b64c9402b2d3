"""Reading a day partition as the files the Delta log lists, on real Spark + Delta."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.tables import DIM_USERS
from keep.lake import delta
from keep.lake import spark_io as lake
from tests.conftest import SPARK_LAKE_DAYS, make_settings

D1 = dt.date(2026, 1, 1)
D2 = dt.date(2026, 1, 2)


def write_users(spark: SparkSession, settings: Settings, ds: dt.date, ids: list[int]) -> None:
    rows = [
        {"user_id": u, "gender": "F", "age_level": 2, "purchase_power": 1, "ds": ds.isoformat()}
        for u in ids
    ]
    frame = spark.createDataFrame(rows, lake.spark_schema(DIM_USERS)).repartition(2)
    lake.overwrite_partition(frame, settings, DIM_USERS, ds)


def users(frame) -> list[tuple[int, str]]:
    return sorted((r["user_id"], r["ds"]) for r in frame.collect())


def test_read_files_reads_the_partition_as_delta_does(
    spark: SparkSession, settings: Settings
) -> None:
    assert delta.partition_files(settings, DIM_USERS, D1) == delta.PartitionFiles([], 0, True)
    write_users(spark, settings, D1, [1, 2, 3])
    write_users(spark, settings, D2, [4, 5])
    write_users(spark, settings, D2, [6, 7, 8, 9])  # replaces the day: old files stay on disk

    files = delta.partition_files(settings, DIM_USERS, D2)

    assert files.rows == 4 and files.plain_parquet
    assert files.paths and all(
        p.is_file() and p.parent.name == "ds=2026-01-02" for p in files.paths
    )
    day = lake.read_files(spark, settings, DIM_USERS, files)
    assert users(day) == [
        (6, "2026-01-02"),
        (7, "2026-01-02"),
        (8, "2026-01-02"),
        (9, "2026-01-02"),
    ]
    through_delta = spark.read.format("delta").load(str(delta.table_path(settings, DIM_USERS)))
    assert users(day) == users(through_delta.where("ds = '2026-01-02'"))
    assert users(lake.read_partition(spark, settings, DIM_USERS, D2)) == users(day)
    assert users(lake.read_table(spark, settings, DIM_USERS)) == users(through_delta)
    assert users(lake.read_days(spark, settings, DIM_USERS, D1, D1)) == [
        (1, "2026-01-01"),
        (2, "2026-01-01"),
        (3, "2026-01-01"),
    ]
    empty = dt.date(2026, 1, 3)
    nothing = lake.read_files(
        spark, settings, DIM_USERS, delta.partition_files(settings, DIM_USERS, empty)
    )
    assert nothing.count() == 0 and set(nothing.columns) == set(lake.spark_schema(DIM_USERS).names)


def test_tables_with_deletion_vectors_are_read_through_delta(
    spark: SparkSession, settings: Settings
) -> None:
    """A row deleted by a deletion vector is still in its Parquet file: such tables (reader
    protocol > 1) must be read by Delta, not file by file."""
    write_users(spark, settings, D1, [1, 2, 3])
    path = delta.table_path(settings, DIM_USERS)
    spark.sql(
        f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)"
    )
    spark.sql(f"DELETE FROM delta.`{path}` WHERE user_id = 2")

    files = delta.partition_files(settings, DIM_USERS, D1)

    assert not files.plain_parquet
    day = lake.read_partition(spark, settings, DIM_USERS, D1)
    assert users(day) == [(1, "2026-01-01"), (3, "2026-01-01")]


def test_a_read_of_many_files_lists_them_without_a_spark_job(
    spark: SparkSession, settings: Settings
) -> None:
    """Spark lists more than 32 paths with a Spark job of its own (1-2 s a read): a table of
    a few files a day reaches that within weeks. The session lists them in the driver."""
    rows = [
        {"user_id": u, "gender": "M", "age_level": 1, "purchase_power": 0, "ds": D1.isoformat()}
        for u in range(120)
    ]
    frame = spark.createDataFrame(rows, lake.spark_schema(DIM_USERS)).repartition(60, "user_id")
    lake.overwrite_partition(frame, settings, DIM_USERS, D1)
    files = delta.partition_files(settings, DIM_USERS, D1)
    assert len(files.paths) > 32  # Spark's own threshold for a listing job

    tracker, context = spark.sparkContext.statusTracker(), spark.sparkContext
    context.setJobGroup("listing", "resolve a read of many files")
    try:
        day = lake.read_files(spark, settings, DIM_USERS, files)
        assert day.schema.names == lake.spark_schema(DIM_USERS).names
        assert tracker.getJobIdsForGroup("listing") == []
    finally:
        context.setJobGroup("other", "")
    assert users(day) == [(u, D1.isoformat()) for u in range(120)]


def test_a_small_day_is_one_file_per_partition(spark: SparkSession, spark_lake: Path) -> None:
    """Every Spark step writes a small day as one file per partition of each table (not one
    per shuffle partition: two in the tests' settings), so the daily maintenance has nothing
    to compact and commits nothing, and no later Spark write rebuilds a table's state."""
    settings = make_settings(spark_lake)
    assert settings.spark.shuffle_partitions == 2
    files: dict[str, Counter[tuple[str, ...]]] = {}
    for log in settings.lake.root.glob("*/*/_delta_log"):
        actions = pa.table(DeltaTable(str(log.parent)).get_add_actions(flatten=True)).to_pydict()
        keys = sorted(k for k in actions if k.startswith("partition."))
        name = f"{log.parent.parent.name}.{log.parent.name}"
        files[name] = Counter(zip(*(actions[k] for k in keys), strict=True))
    for name in (
        "bronze.impressions",
        "dim.users",
        "silver.daily_counts",
        "silver.user_category_stats",
        "gold.pretrain_samples",
        "gold.downstream_samples",
    ):
        assert len(files[name]) >= len(SPARK_LAKE_DAYS), (name, files[name])
    for name, per_partition in files.items():
        assert set(per_partition.values()) <= {1}, (name, per_partition)


def _commits(settings: Settings) -> list[tuple[str, str]]:
    """(operation, mode) of each commit of dim.users, oldest first, from its Delta log."""
    history = DeltaTable(str(delta.table_path(settings, DIM_USERS))).history()
    return [(c["operation"], c["operationParameters"]["mode"]) for c in reversed(history)]


def test_a_new_day_is_appended_a_written_day_replaced(
    spark: SparkSession, settings: Settings
) -> None:
    write_users(spark, settings, D1, [1, 2, 3])
    write_users(spark, settings, D2, [4, 5])
    write_users(spark, settings, D2, [6, 7])  # a rerun of the day replaces it
    # The day's first write appends (no state to compute, nothing to replace); the rerun
    # replaces the partition, as does a write that also drops days before a cut.
    assert _commits(settings) == [("WRITE", "Append")] * 2 + [("WRITE", "Overwrite")]
    d3 = D2 + dt.timedelta(days=1)
    rows = [{"user_id": 9, "gender": "M", "age_level": 1, "purchase_power": 1, "ds": str(d3)}]
    frame = spark.createDataFrame(rows, lake.spark_schema(DIM_USERS))
    lake.overwrite_partition(frame, settings, DIM_USERS, d3, drop_before=D2)
    assert _commits(settings)[-1] == ("WRITE", "Overwrite")
    assert users(lake.read_table(spark, settings, DIM_USERS)) == [
        (6, "2026-01-02"),
        (7, "2026-01-02"),
        (9, "2026-01-03"),
    ]


def test_an_appended_row_of_another_day_fails_the_write_and_commits_nothing(
    spark: SparkSession, settings: Settings
) -> None:
    write_users(spark, settings, D1, [1])
    rows = [{"user_id": 2, "gender": "F", "age_level": 2, "purchase_power": 1, "ds": "2026-01-01"}]
    frame = spark.createDataFrame(rows, lake.spark_schema(DIM_USERS))
    with pytest.raises(Exception, match="a row outside ds = '2026-01-02'"):
        lake.overwrite_partition(frame, settings, DIM_USERS, D2)
    assert len(_commits(settings)) == 1
    assert users(lake.read_table(spark, settings, DIM_USERS)) == [(1, "2026-01-01")]


def test_two_writers_of_the_same_new_day_leave_one_copy(
    spark: SparkSession, settings: Settings
) -> None:
    write_users(spark, settings, D1, [1])
    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(write_users, spark, settings, D2, [10, 11, 12]) for _ in range(2)]
        for future in done:
            future.result()
    # One append, then one replacement of what it wrote: each user once.
    assert users(lake.read_partition(spark, settings, DIM_USERS, D2)) == [
        (10, "2026-01-02"),
        (11, "2026-01-02"),
        (12, "2026-01-02"),
    ]
    assert sorted(_commits(settings)[1:]) == [("WRITE", "Append"), ("WRITE", "Overwrite")]


def test_spark_java_options_follow_the_projects_own(spark: SparkSession, tmp_path: Path) -> None:
    """``spark.java_options`` comes after the project's JVM options, for the driver, the
    executors and the Spark server's command line; the session's JVM runs in UTC."""
    from keep.lake.spark import spark_conf
    from keep.lake.spark_server import command

    options = "-XX:+UseSerialGC -XX:+HeapDumpOnOutOfMemoryError"
    settings = make_settings(tmp_path, spark={"java_options": f" {options} "})
    conf = spark_conf(settings)
    expected = f"-Duser.timezone=UTC {options}"
    assert conf["spark.driver.extraJavaOptions"] == expected
    assert conf["spark.executor.extraJavaOptions"] == expected
    assert f"spark.driver.extraJavaOptions={expected}" in command(settings, 15002)
    assert spark_conf(make_settings(tmp_path))["spark.driver.extraJavaOptions"] == (
        "-Duser.timezone=UTC"
    )
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    assert str(jvm.java.lang.System.getProperty("user.timezone")) == "UTC"

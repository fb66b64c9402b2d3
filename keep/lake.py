"""Reading and writing the Delta lake: paths, partition overwrite, as-of reads.

All writes replace whole ``ds`` partitions (Delta ``replaceWhere``), so re-running a
day is idempotent and never touches the files of any other day.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from keep.config import Settings
from keep.schemas import TableSpec


def table_path(settings: Settings, spec: TableSpec) -> Path:
    return settings.lake.root / spec.layer / spec.table


def table_exists(settings: Settings, spec: TableSpec) -> bool:
    return (table_path(settings, spec) / "_delta_log").is_dir()


def read_table(spark: SparkSession, settings: Settings, spec: TableSpec) -> DataFrame:
    """The whole table, or an empty frame with its schema if it was never written."""
    if not table_exists(settings, spec):
        return spark.createDataFrame([], spec.schema)
    return spark.read.format("delta").load(str(table_path(settings, spec)))


def read_partition(
    spark: SparkSession, settings: Settings, spec: TableSpec, ds: dt.date
) -> DataFrame:
    return read_table(spark, settings, spec).where(F.col("ds") == ds.isoformat())


def read_days(
    spark: SparkSession, settings: Settings, spec: TableSpec, first: dt.date, last: dt.date
) -> DataFrame:
    """Partitions ``first <= ds <= last`` (partition pruning keeps this O(days read))."""
    return read_table(spark, settings, spec).where(
        F.col("ds").between(first.isoformat(), last.isoformat())
    )


def overwrite_partition(df: DataFrame, settings: Settings, spec: TableSpec, ds: dt.date) -> None:
    """Replace partition ``ds`` of ``spec`` with ``df`` (which must only hold that day).

    A frame without a ``ds`` column gets ``ds`` set to the day.
    """
    if "ds" not in df.columns:
        df = df.withColumn("ds", F.lit(ds.isoformat()))
    out = spec.conform(df)
    (
        out.write.format("delta")
        .mode("overwrite")
        .partitionBy(*spec.partition_by)
        .option("replaceWhere", f"ds = '{ds.isoformat()}'")
        .save(str(table_path(settings, spec)))
    )


def partition_rows(settings: Settings, spec: TableSpec, ds: dt.date) -> int:
    """Row count of partition ``ds`` from the Delta log's file statistics (no JVM, no scan)."""
    import pyarrow as pa
    from deltalake import DeltaTable

    if not table_exists(settings, spec):
        return 0
    actions = pa.table(DeltaTable(str(table_path(settings, spec))).get_add_actions(flatten=True))
    day = ds.isoformat()
    return sum(
        int(n)
        for n, part in zip(
            actions.column("num_records").to_pylist(),
            actions.column("partition.ds").to_pylist(),
            strict=True,
        )
        if part == day
    )


def as_of(df: DataFrame, key: str, ds: dt.date) -> DataFrame:
    """Per ``key``, the latest row with ``ds <= ds`` (as-of read of a change-log dimension)."""
    latest = Window.partitionBy(key).orderBy(F.col("ds").desc())
    return (
        df.where(F.col("ds") <= ds.isoformat())
        .withColumn("_rank", F.row_number().over(latest))
        .where("_rank = 1")
        .drop("_rank")
    )

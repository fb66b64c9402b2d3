"""Reading and writing the Delta lake with Spark: schemas, partition overwrite, as-of reads.

All writes replace whole ``ds`` partitions (Delta ``replaceWhere``; a day's first write,
with nothing to replace, is an append of rows checked to be of that day), so re-running a
day is idempotent and never touches the files of any other day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from keep.core.config import Settings
from keep.core.tables import TableSpec
from keep.lake.delta import PartitionFiles, partition_days, table_files, table_path


def spark_type(dtype: pa.DataType) -> T.DataType:
    """The Spark type of a lake column's pyarrow type (``keep.core.tables``)."""
    simple: dict[pa.DataType, T.DataType] = {
        pa.string(): T.StringType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.float64(): T.DoubleType(),
        pa.float32(): T.FloatType(),
        pa.bool_(): T.BooleanType(),
        pa.timestamp("us", tz="UTC"): T.TimestampType(),
    }
    if dtype in simple:
        return simple[dtype]
    if pa.types.is_list(dtype):
        return T.ArrayType(spark_type(dtype.value_type), dtype.value_field.nullable)
    if pa.types.is_struct(dtype):
        return T.StructType([T.StructField(f.name, spark_type(f.type), f.nullable) for f in dtype])
    raise TypeError(f"no Spark type for {dtype}")


def spark_schema(spec: TableSpec) -> T.StructType:
    """The table's schema as a Spark ``StructType``, derived from its pyarrow schema."""
    return T.StructType(
        [T.StructField(f.name, spark_type(f.type), f.nullable) for f in spec.schema]
    )


def ddl(dtype: pa.DataType) -> str:
    """The Spark SQL type name (DDL) of a lake column's pyarrow type, for casts and schemas.

    Casts and schemas are given by name, not as ``DataType`` objects: over Spark Connect a
    ``StringType()`` object arrives with its collation spelled out, and a table created from
    it records ``string collate UTF8_BINARY``, which other Delta readers (delta-rs) refuse.
    """
    return spark_type(dtype).simpleString()


def schema_ddl(spec: TableSpec) -> str:
    """The table's schema as a DDL column list (```name` type, ...``), see :func:`ddl`."""
    return ", ".join(f"`{f.name}` {ddl(f.type)}" for f in spec.schema)


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select and cast ``df`` to exactly the table's columns, in order."""
    return df.select(*[F.col(f.name).cast(ddl(f.type)).alias(f.name) for f in spec.schema])


def read_table(spark: SparkSession, settings: Settings, spec: TableSpec) -> DataFrame:
    """The whole table, or an empty frame with its schema if it was never written."""
    return _read_logged(spark, settings, spec, None, None)


def read_partition(
    spark: SparkSession, settings: Settings, spec: TableSpec, ds: dt.date
) -> DataFrame:
    return _read_logged(spark, settings, spec, ds, ds)


def read_days(
    spark: SparkSession, settings: Settings, spec: TableSpec, first: dt.date, last: dt.date
) -> DataFrame:
    """Partitions ``first <= ds <= last`` (only their files are read)."""
    return _read_logged(spark, settings, spec, first, last)


def _read_logged(
    spark: SparkSession,
    settings: Settings,
    spec: TableSpec,
    first: dt.date | None,
    last: dt.date | None,
) -> DataFrame:
    """Partitions ``first <= ds <= last`` (None: unbounded) as the Parquet files the Delta
    log lists for them (:func:`keep.lake.delta.table_files`, read without a JVM): one Spark
    job, where Delta's own read first computes the table's snapshot and lists its files
    with four or five Spark jobs per table. Tables whose files are not plain Parquet
    (deletion vectors, column mapping) are read through Delta."""
    files = table_files(settings, spec, first=first, last=last)
    if files.plain_parquet:
        return read_files(spark, settings, spec, files)
    df = spark.read.format("delta").load(str(table_path(settings, spec)))
    if first is not None:
        df = df.where(F.col("ds") >= first.isoformat())
    if last is not None:
        df = df.where(F.col("ds") <= last.isoformat())
    return df


def read_files(
    spark: SparkSession, settings: Settings, spec: TableSpec, files: PartitionFiles
) -> DataFrame:
    """The rows of ``files`` (plain Parquet files of ``spec`` listed by its Delta log), with
    the partition column ``ds`` from their paths; empty with the table's schema when there
    are none."""
    if not files.paths:
        return spark.createDataFrame([], schema_ddl(spec))
    return (
        spark.read.schema(schema_ddl(spec))
        .option("basePath", str(table_path(settings, spec)))
        .parquet(*[str(p) for p in files.paths])
    )


def overwrite_partition(
    df: DataFrame,
    settings: Settings,
    spec: TableSpec,
    ds: dt.date,
    *,
    drop_before: dt.date | None = None,
) -> None:
    """Replace partition ``ds`` of ``spec`` with ``df`` (which must only hold that day).

    A frame without a ``ds`` column gets ``ds`` set to the day. ``drop_before``: also remove
    every partition older than that day, in the same commit (retention without a DELETE).

    When the log (read with delta-rs, no JVM) shows nothing to replace -- the day's first
    write, and nothing older than ``drop_before`` -- the rows are appended: the same commit
    content as a ``replaceWhere`` over an empty partition, without Delta computing the
    table's state and filtering its files first (four Spark jobs and 1.5-3 s a write). The
    check and the write hold the table's write lock (:func:`write_lock`), so two writers of
    the same new day on this host never both append: the second one replaces.
    """
    if "ds" not in df.columns:
        df = df.withColumn("ds", F.lit(ds.isoformat()))
    predicate = f"ds = '{ds.isoformat()}'"
    if drop_before is not None:
        predicate += f" OR ds < '{drop_before.isoformat()}'"
    with write_lock(settings, spec):
        days = partition_days(settings, spec)
        cut = drop_before.isoformat() if drop_before is not None else ""
        if ds.isoformat() in days or any(day < cut for day in days):
            replace_where(df, settings, spec, predicate)
        else:
            # What replaceWhere checks: every row is of the day (else the write job fails
            # and nothing is committed).
            day = ds.isoformat()
            outside = F.raise_error(F.lit(f"{spec.name}: a row outside ds = '{day}'"))
            checked = df.withColumn(
                "ds", F.when(F.col("ds") == day, F.col("ds")).otherwise(outside)
            )
            _writer(checked, spec).mode("append").save(str(table_path(settings, spec)))


@contextlib.contextmanager
def write_lock(settings: Settings, spec: TableSpec) -> Iterator[None]:
    """An exclusive lock on ``spec``'s writes for the block (a file lock under the lake's
    ``_locks/`` folder: it holds between processes on one host)."""
    folder = settings.lake.root / "_locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{spec.layer}.{spec.table}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _writer(df: DataFrame, spec: TableSpec) -> DataFrameWriter:
    return conform(df, spec).write.format("delta").partitionBy(*spec.partition_by)


def replace_where(df: DataFrame, settings: Settings, spec: TableSpec, predicate: str) -> None:
    """Replace the rows of ``spec`` matching ``predicate`` (on partition columns) by ``df``,
    in one Delta commit; every row of ``df`` must match the predicate."""
    (
        _writer(df, spec)
        .mode("overwrite")
        .option("replaceWhere", predicate)
        .save(str(table_path(settings, spec)))
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

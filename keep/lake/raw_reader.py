"""Reading the raw landing format with Spark (layout: ``keep.lake.raw_format``).

JSON lines is the canonical format; CSV (with a header line) and Parquet are accepted too.
Reading never interprets a value: every field comes back as a string next to the raw
line it came from, so the ingest job can quarantine a bad row with its exact content.
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

_CORRUPT = "_corrupt"
_EXTRA = "_extra"


def _string_schema(fields: tuple[str, ...], extra: str) -> str:
    return ", ".join([f"`{f}` STRING" for f in fields] + [f"`{extra}` STRING"])


def _read_json(spark: SparkSession, path: Path, fields: tuple[str, ...]) -> DataFrame:
    lines = spark.read.text(str(path)).where(F.trim("value") != "")
    parsed = F.from_json(
        "value",
        _string_schema(fields, _CORRUPT),
        {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT},
    )
    return lines.select(
        F.col("value").alias("_raw"),
        parsed.alias("p"),
    ).select(
        "_raw",
        *[F.col(f"p.`{f}`").alias(f) for f in fields],
        F.col(f"p.{_CORRUPT}").isNotNull().alias("_malformed"),
    )


def _read_csv(spark: SparkSession, path: Path, fields: tuple[str, ...]) -> DataFrame:
    lines = spark.read.text(str(path))
    header = lines.first()
    if header is None:
        return _empty(spark, fields)
    data = lines.where((F.col("value") != header.value) & (F.trim("value") != ""))
    names = [c.strip() for c in header.value.split(",")]
    missing = [f for f in fields if f not in names]
    if missing:
        from keep.core.errors import InputError

        raise InputError(f"{path}: CSV header lacks column(s) {missing}; expected {list(fields)}")
    schema = ", ".join(f"`{n}` STRING" for n in names) + f", `{_EXTRA}` STRING"
    parsed = F.from_csv("value", schema, {"mode": "PERMISSIVE"})
    return data.select(F.col("value").alias("_raw"), parsed.alias("p")).select(
        "_raw",
        *[F.col(f"p.`{f}`").alias(f) for f in fields],
        F.col(f"p.{_EXTRA}").isNotNull().alias("_malformed"),
    )


def _read_parquet(spark: SparkSession, path: Path, fields: tuple[str, ...]) -> DataFrame:
    df = spark.read.parquet(str(path))
    cols = [
        (F.col(f"`{f}`").cast("string") if f in df.columns else F.lit(None).cast("string")).alias(f)
        for f in fields
    ]
    raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
    return df.select(raw.alias("_raw"), *cols, F.lit(False).alias("_malformed"))


def _empty(spark: SparkSession, fields: tuple[str, ...]) -> DataFrame:
    """No rows, the reader's columns (built in the JVM: no Python worker starts for it)."""
    text = [F.lit(None).cast("string").alias(f) for f in ("_raw", *fields)]
    return spark.range(0).select(*text, F.lit(False).alias("_malformed"))


def read_raw(spark: SparkSession, files: list[Path], fields: tuple[str, ...]) -> DataFrame:
    """All rows of ``files`` as strings: ``_raw``, ``_source_file``, the fields, ``_malformed``."""
    frames = []
    for path in files:
        name = path.name
        if name.endswith(".parquet"):
            df = _read_parquet(spark, path, fields)
        elif name.endswith((".csv", ".csv.gz")):
            df = _read_csv(spark, path, fields)
        else:
            df = _read_json(spark, path, fields)
        frames.append(df.withColumn("_source_file", F.lit(name)))
    if not frames:
        return _empty(spark, fields).withColumn("_source_file", F.lit(None).cast("string"))
    return reduce(DataFrame.unionByName, frames)

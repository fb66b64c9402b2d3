"""The floor of ingest for bench/ingest.py: the least Spark work that turns a day's raw
impressions into a deduplicated Delta table, for ingest's rows/s to be compared with.

    python bench/_ingest_floor.py RAW_DIR TABLE_DIR DAY

Reads the JSON lines under RAW_DIR with an explicit schema (every field a string, as the
raw format delivers them), casts them to the bronze types with ``try_cast``, keeps one row
per ``impression_id`` (``dropDuplicates``) and writes a Delta table partitioned by ``ds``.
No row rules, no quarantine, no audit, no conflict rule, no earlier days. The Spark session
is keep's own (``keep.lake.spark.get_spark``: the same master, driver memory, shuffle
partitions and Delta jars as ``keep ingest``), so the comparison is Spark against Spark.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pyspark.sql import functions as F


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keep
    from keep.core.config import load_settings
    from keep.core.tables import IMPRESSIONS, RAW_FIELDS
    from keep.lake.spark import get_spark
    from keep.lake.spark_io import spark_type

    raw_dir, table_dir, day = sys.argv[1:4]
    spark = get_spark(load_settings())
    schema = ", ".join(f"`{name}` STRING" for name in RAW_FIELDS["impressions"])
    types = {f.name: spark_type(f.type).simpleString() for f in IMPRESSIONS.schema}
    raw = spark.read.schema(schema).json(raw_dir)
    typed = raw.select(
        *[F.expr(f"try_cast(`{n}` AS {types[n]})").alias(n) for n in RAW_FIELDS["impressions"]],
        F.lit(day).alias("ds"),
    )
    (
        typed.dropDuplicates(["impression_id"])
        .write.format("delta")
        .mode("overwrite")
        .partitionBy("ds")
        .save(table_dir)
    )
    spark.stop()


if __name__ == "__main__":
    main()

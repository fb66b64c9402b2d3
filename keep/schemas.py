"""Every lake table's schema, key and partitioning, defined once.

A table name is ``<layer>.<table>``; on disk it lives at ``<lake root>/<layer>/<table>``.
Jobs write exactly these columns in this order (``conform`` enforces it), so the
Delta schema never drifts by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)


@dataclass(frozen=True)
class TableSpec:
    """Name, schema, primary key and partition columns of one lake table."""

    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ("ds",)
    description: str = ""

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema.fields]

    def conform(self, df: DataFrame) -> DataFrame:
        """Select and cast ``df`` to exactly this table's columns, in order."""
        return df.select(
            *[F.col(f.name).cast(f.dataType).alias(f.name) for f in self.schema.fields]
        )


def _f(name: str, dtype: object, nullable: bool = True) -> StructField:
    return StructField(name, dtype, nullable)  # type: ignore[arg-type]


IMPRESSIONS = TableSpec(
    name="bronze.impressions",
    description="One row per impression of any subsystem, deduplicated by impression_id.",
    key=("impression_id",),
    schema=StructType(
        [
            _f("impression_id", StringType(), False),
            _f("user_id", LongType(), False),
            _f("item_id", LongType(), False),
            _f("event_time", TimestampType(), False),
            _f("scenario", StringType(), False),
            _f("position", IntegerType(), False),
            _f("click", IntegerType(), False),
            _f("cart", IntegerType(), False),
            _f("purchase", IntegerType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

QUARANTINE = TableSpec(
    name="bronze.quarantine",
    description="Raw rows rejected by ingest, with the reason(s) and the raw content.",
    key=("ds", "source", "source_file", "raw"),
    schema=StructType(
        [
            _f("source", StringType(), False),
            _f("reason", StringType(), False),
            _f("reasons", ArrayType(StringType(), True), False),
            _f("raw", StringType(), True),
            _f("source_file", StringType(), True),
            _f("ds", StringType(), False),
        ]
    ),
)

INGEST_AUDIT = TableSpec(
    name="bronze.ingest_audit",
    description="Per day and source: rows in = stored + quarantined + duplicates.",
    key=("ds", "source"),
    schema=StructType(
        [
            _f("source", StringType(), False),
            _f("rows_in", LongType(), False),
            _f("rows_stored", LongType(), False),
            _f("rows_quarantined", LongType(), False),
            _f("duplicates_within_day", LongType(), False),
            _f("duplicates_earlier_days", LongType(), False),
            _f("conflicting_duplicates", LongType(), False),
            _f("quarantine_rate", DoubleType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

DIM_USERS = TableSpec(
    name="dim.users",
    description=(
        "User attributes as received on day ds (new or changed users). "
        "The attributes as of day d are each user's row with the greatest ds <= d."
    ),
    key=("user_id", "ds"),
    schema=StructType(
        [
            _f("user_id", LongType(), False),
            _f("gender", StringType(), True),
            _f("age_level", IntegerType(), True),
            _f("purchase_power", IntegerType(), True),
            _f("ds", StringType(), False),
        ]
    ),
)

DIM_ITEMS = TableSpec(
    name="dim.items",
    description=(
        "Item attributes as received on day ds (new or changed items). "
        "The attributes as of day d are each item's row with the greatest ds <= d."
    ),
    key=("item_id", "ds"),
    schema=StructType(
        [
            _f("item_id", LongType(), False),
            _f("category_id", LongType(), False),
            _f("brand_id", LongType(), True),
            _f("price", DoubleType(), False),
            _f("ds", StringType(), False),
        ]
    ),
)

ALL_TABLES: tuple[TableSpec, ...] = (IMPRESSIONS, QUARANTINE, INGEST_AUDIT, DIM_USERS, DIM_ITEMS)

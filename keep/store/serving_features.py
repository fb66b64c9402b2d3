"""The downstream model's own online features: their sources in the lake, their Delta table
and their online view (models/downstream/serving_features.py builds and packs them).

:func:`read_sources` reads what the features of the end of a day are built from;
:func:`write_serving_features` replaces the ``(subsystem, ds)`` partition of
``gold.downstream_<entity>_serving`` and writes the rows online through Feast's public
``FeatureStore.write_to_online_store`` into ``downstream_<entity>_fv`` (event time = end of
the day, so a re-run writes the same values and an older day never overwrites a newer one).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.feast_names import serving_feature, serving_view_name
from keep.core.tables import (
    DIM_ITEMS,
    DIM_USERS,
    DOWNSTREAM_SAMPLES,
    SERVING_ENTITIES,
    USER_BEHAVIOR,
    TableSpec,
    samples_spec,
    serving_features_spec,
)
from keep.core.time import end_of_day
from keep.lake import delta
from keep.store.feast_repo import get_store

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("user_id", "item_id", "click", "weight", "scenario", "ds")


@dataclass
class ServingSources:
    dim_users: pa.Table
    dim_items: pa.Table
    user_behavior: pa.Table  # silver.user_behavior of ds
    history: pa.Table  # downstream samples of the counter windows ending with ds


def _read(
    settings: Settings, spec: TableSpec, columns: list[str], where: pc.Expression | None
) -> pa.Table:
    from deltalake import DeltaTable

    if not delta.table_exists(settings, spec):
        raise InputError(
            f"{spec.name} does not exist at {delta.table_path(settings, spec)}: run the daily "
            "refresh of that day first"
        )
    dataset = DeltaTable(str(delta.table_path(settings, spec))).to_pyarrow_dataset()
    return dataset.to_table(columns=columns, filter=where)


def read_sources(settings: Settings, ds: dt.date) -> ServingSources:
    """What the serving features of the end of ``ds`` are built from."""
    day = ds.isoformat()
    first = (ds - dt.timedelta(days=max(settings.downstream.counter_windows) - 1)).isoformat()
    ds_col = pc.field("ds")
    return ServingSources(
        dim_users=_read(
            settings,
            DIM_USERS,
            ["user_id", "gender", "age_level", "purchase_power", "ds"],
            ds_col <= day,
        ),
        dim_items=_read(
            settings,
            DIM_ITEMS,
            ["item_id", "category_id", "brand_id", "price", "ds"],
            ds_col <= day,
        ),
        user_behavior=_read(settings, USER_BEHAVIOR, ["user_id", "behaviors"], ds_col == day),
        history=_read(
            settings,
            samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows),
            list(HISTORY_COLUMNS),
            (ds_col >= first) & (ds_col <= day),
        ),
    )


def ensure_serving_tables(settings: Settings) -> None:
    """Create the serving-feature tables, empty, where they do not exist yet."""
    from deltalake import write_deltalake

    for entity in SERVING_ENTITIES:
        spec = serving_features_spec(entity)
        if delta.table_exists(settings, spec):
            continue
        path = delta.table_path(settings, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_deltalake(
            str(path),
            spec.schema.empty_table(),
            mode="append",
            partition_by=list(spec.partition_by),
        )


def write_serving_features(
    settings: Settings,
    subsystem: str,
    ds: dt.date,
    tables: dict[str, pa.Table],
    *,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Replace the ``(subsystem, ds)`` partitions and write the rows online; rows per entity.

    ``tables``: per entity (user, item), the key column and the packed ``features``.
    """
    from deltalake import write_deltalake

    store = store or get_store(settings)
    stamp = end_of_day(ds)
    rows: dict[str, int] = {}
    for entity in SERVING_ENTITIES:
        table = tables[entity]
        spec = serving_features_spec(entity)
        key = spec.key[0]
        n = table.num_rows
        full = pa.table(
            {
                key: table.column(key),
                "features": table.column("features"),
                "event_timestamp": pa.array([stamp] * n, spec.schema.field("event_timestamp").type),
                "subsystem": pa.array([subsystem] * n, pa.string()),
                "ds": pa.array([ds.isoformat()] * n, pa.string()),
            }
        ).cast(spec.schema)
        path = delta.table_path(settings, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        if delta.table_exists(settings, spec):
            write_deltalake(
                str(path),
                full,
                mode="overwrite",
                partition_by=list(spec.partition_by),
                predicate=f"subsystem = '{subsystem}' AND ds = '{ds.isoformat()}'",
            )
        else:
            write_deltalake(str(path), full, mode="append", partition_by=list(spec.partition_by))
        frame = full.select([key, "features", "event_timestamp"]).rename_columns(
            [key, serving_feature(entity), "event_timestamp"]
        )
        store.write_to_online_store(serving_view_name(entity), frame.to_pandas())
        rows[entity] = n
        log.info("%s serving features of %s: %d %s keys online", subsystem, ds, n, entity)
    return {"subsystem": subsystem, "ds": ds.isoformat(), "rows": rows}

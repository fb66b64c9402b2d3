"""Point-in-time training sets of the downstream model, read through Feast.

A training row is one ``gold.downstream_samples`` row of day ``ds`` plus, from Feast's
offline store (``FeatureStore.get_historical_features`` on the feature service, by default
``downstream_ctr_v1``): the user / item / user x category knowledge vectors of ONE knowledge
lineage and the user / item / user x category counters, all as of the end of ``ds - 1``.
Counters reach the downstream model only through this path (training) and Feast's online
store (serving), so both see the same features under the same names; the counters that the
samples table carries from Spark are replaced by Feast's values.

Point in time: every sample of day ``ds`` is joined at ``ds 00:00 UTC`` (the moment the
state of ``ds - 1`` ends), not at its own ``event_time``: ingest accepts events up to an hour
late into the next day's log, and a join on ``event_time`` would give such a sample a state
one day older than its ``state_ds``. Knowledge exported after ``ds - 1`` and the counters of
``ds - 1`` carry ``event_timestamp = ds 00:00`` and are therefore exactly what it sees
(Feast keeps feature rows with ``event_timestamp <= entity timestamp`` and within the view's
ttl, the latest one wins).

Lineages: several knowledge lineages coexist in the knowledge tables (a new one is
published beside the old one, DESIGN.md "Knowledge versions"). The project's offline
knowledge views are keyed by the entity AND the ``lineage`` entity (join key
``knowledge_lineage``), so each entity row names the requested lineage and the join returns
exactly that lineage's vectors: the other lineage's rows, even of the same snapshot day, do
not match. A knowledge view without that key is accepted only if it carries a lineage
feature, and every row it returns is checked: another lineage is refused, never mixed.

Feast's file offline store drops entity rows without an earlier feature row (or only rows
outside the ttl), collapses entity rows sharing join keys and timestamp, and fails outright
on a key with no feature row at all. So each view is queried on its own, with the day's
DISTINCT keys that have at least one feature row up to the day (read from the source's Delta
log), and the answer is joined back onto every sample by key. Keys Feast returns nothing for
get an explicit cold-start value and a ``*_missing`` flag: a zero knowledge vector, zero
counters and the prior click rate (the same fill ``spark_jobs.samples`` uses). The output
has exactly one row per input sample (asserted).

Memory is bounded by one day of samples plus what the offline store reads per call (the file
store reads each source whole; at scale the Spark offline store reads only what it needs).

Entry points: :func:`build_training_set` (iterator of per-day Arrow tables) and
:func:`write_training_set` (Delta table ``gold.downstream_training_set``, partitioned by
lineage and day, each (lineage, day) partition replaced on re-run). See
docs/training_sets.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from keep.core import time
from keep.core.config import Settings
from keep.core.errors import InputError, KeepError
from keep.core.feast_names import FEATURE_SERVICE
from keep.core.tables import (
    DOWNSTREAM_SAMPLES,
    ENTITIES,
    KNOWLEDGE_ENTITIES,
    STAT_PREFIX,
    TableSpec,
    samples_spec,
    training_set_spec,
    window_columns,
)
from keep.lake import delta

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger(__name__)

LINEAGE = "knowledge_lineage"
ENTITY_TS = "event_timestamp"
_ROW = "__row"
_POS = "__pos"


class TrainingSetError(KeepError):
    """The training set cannot be built as asked (missing view, mixed lineage, lost rows)."""


@dataclass(frozen=True)
class ViewJoin:
    """One feature view of the service, as joined onto the samples."""

    view: str
    entity: str  # "user" | "item" | "user_category"
    kind: str  # "knowledge" | "counters"
    join_keys: tuple[str, ...]  # the entity's keys (without the lineage)
    lineage_key: bool  # the view is keyed by knowledge_lineage as well
    features: tuple[str, ...]
    feature_types: tuple[pa.DataType, ...]  # Arrow type of each feature
    source_path: str
    timestamp_field: str
    vector_feature: str | None  # knowledge views: the vector feature
    lineage_feature: str | None  # knowledge views: the lineage feature, if the view has one
    source_keys: tuple[str, ...]  # join keys as named in the source
    source_lineage: str | None  # lineage column as named in the source


# --------------------------------------------------------------------------- planning


def _entity_of(join_keys: Sequence[str], view: str) -> str:
    for entity, keys in ENTITIES.items():
        if set(keys) == set(join_keys):
            return entity
    raise TrainingSetError(
        f"feature view {view!r} joins on {list(join_keys)}, which is none of the sample "
        f"entities {dict(ENTITIES)}; fix the view in feature_repo/"
    )


def _view_join(store: FeatureStore, view_name: str, features: Sequence[str] | None) -> ViewJoin:
    from feast.infra.offline_stores.file_source import FileSource
    from feast.type_map import feast_value_type_to_pa
    from feast.types import Array

    try:
        fv = store.get_feature_view(view_name)
    except Exception as exc:  # Feast raises its own not-found types
        raise TrainingSetError(
            f"feature view {view_name!r} is not in the Feast registry: run `keep feast apply`"
        ) from exc
    dtypes = {f.name: f.dtype for f in fv.features}
    names = tuple(features) if features is not None else tuple(dtypes)
    all_keys = tuple(fv.projection.join_key_map.get(c.name, c.name) for c in fv.entity_columns)
    # A view keyed by lineage too selects exactly one lineage in the point-in-time join.
    join_keys = tuple(k for k in all_keys if k != LINEAGE)
    entity = _entity_of(join_keys, view_name)
    # A knowledge view is the one with a vector (list) feature; counters are scalars.
    vectors = [n for n in names if isinstance(dtypes.get(n), Array)]
    if len(vectors) > 1:
        raise TrainingSetError(f"view {view_name!r} has several vector features {vectors}")
    lineage_key = LINEAGE in all_keys
    lineages = [n for n in dtypes if n.endswith(LINEAGE)]
    lineage_feature = lineages[0] if vectors and lineages else None
    if vectors and not lineage_key and lineage_feature is None:
        raise TrainingSetError(
            f"knowledge view {view_name!r} is neither keyed by {LINEAGE} (entity `lineage`) "
            "nor carries a lineage feature: its vectors could be of any lineage, and "
            "lineages must never be mixed; key the view by lineage (docs/training_sets.md)"
        )
    if lineage_feature is not None and lineage_feature not in names:
        names = (*names, lineage_feature)  # always fetch the lineage to check it
    source = fv.batch_source
    if not isinstance(source, FileSource):
        raise TrainingSetError(f"feature view {view_name!r}: only file sources are supported")
    path = FileSource.get_uri_for_file_path(store.repo_path, source.path)
    # Column names in the source itself (the view may rename them by field_mapping).
    raw = {v: k for k, v in (source.field_mapping or {}).items()}
    return ViewJoin(
        view=view_name,
        entity=entity,
        kind="knowledge" if vectors else "counters",
        join_keys=join_keys,
        lineage_key=lineage_key,
        features=names,
        feature_types=tuple(feast_value_type_to_pa(dtypes[n].to_value_type()) for n in names),
        source_path=path,
        timestamp_field=source.timestamp_field,
        vector_feature=vectors[0] if vectors else None,
        lineage_feature=lineage_feature,
        source_keys=tuple(raw.get(k, k) for k in join_keys),
        source_lineage=(
            raw.get(LINEAGE, LINEAGE)
            if lineage_key
            else raw.get(lineage_feature, lineage_feature)
            if lineage_feature
            else None
        ),
    )


def plan_views(
    store: FeatureStore,
    feature_service: str,
    *,
    knowledge_views: Mapping[str, str] | None = None,
) -> list[ViewJoin]:
    """The feature views of ``feature_service``, one per (entity, kind).

    ``knowledge_views`` (entity -> view name) replaces the service's knowledge views, e.g.
    by the views of the blue/green slot holding the lineage being trained.
    """
    try:
        service = store.get_feature_service(feature_service)
    except Exception as exc:
        raise TrainingSetError(
            f"feature service {feature_service!r} is not in the Feast registry: "
            "run `keep feast apply`"
        ) from exc
    plan: dict[tuple[str, str], ViewJoin] = {}
    for projection in service.feature_view_projections:
        join = _view_join(store, projection.name, [f.name for f in projection.features])
        key = (join.entity, join.kind)
        if key in plan:
            raise TrainingSetError(
                f"feature service {feature_service!r} has two {join.kind} views for "
                f"{join.entity} ({plan[key].view}, {join.view}): one per entity, never two "
                "lineages at once"
            )
        plan[key] = join
    for entity, view_name in (knowledge_views or {}).items():
        join = _view_join(store, view_name, None)
        if join.kind != "knowledge" or join.entity != entity:
            raise TrainingSetError(
                f"view {view_name!r} is not a {entity} knowledge view (it is {join.kind} "
                f"of {join.entity})"
            )
        plan[(entity, "knowledge")] = join
    return [plan[k] for k in sorted(plan)]


# --------------------------------------------------------------------------- reading


def read_samples(settings: Settings, ds: dt.date) -> pa.Table:
    """Partition ``ds`` of gold.downstream_samples, in its schema (empty if absent)."""
    from deltalake import DeltaTable

    spec = samples_spec(DOWNSTREAM_SAMPLES, settings.aggregate.windows)
    schema = spec.schema
    path = delta.table_path(settings, spec)
    if not delta.table_exists(settings, spec):
        raise InputError(
            f"{spec.name} does not exist at {path}: run `keep samples` for the days first"
        )
    dataset = DeltaTable(str(path)).to_pyarrow_dataset()
    table = dataset.to_table(filter=pc.field("ds") == ds.isoformat())
    return table.select(schema.names).cast(schema)


def _source_keys(join: ViewJoin, until: dt.datetime, lineage: str | None) -> pa.Table:
    """Distinct keys of the view's source with a row at or before ``until`` (current version)."""
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    path = Path(join.source_path)
    dataset = (
        DeltaTable(str(path)).to_pyarrow_dataset()
        if delta.has_commit(path)
        else pads.dataset(str(path), format="parquet", partitioning="hive")
    )
    cond = pc.field(join.timestamp_field) <= pa.scalar(until, pa.timestamp("us", tz="UTC"))
    column = join.source_lineage or LINEAGE
    if lineage is not None and column in dataset.schema.names:
        cond = cond & (pc.field(column) == lineage)
    elif lineage is not None and join.lineage_key:
        raise TrainingSetError(
            f"view {join.view!r} is keyed by {LINEAGE} but its source {path} has no column "
            f"{column!r}"
        )
    keys = dataset.to_table(columns=list(join.source_keys), filter=cond)
    keys = keys.rename_columns(list(join.join_keys)).cast(
        pa.schema([pa.field(k, pa.int64()) for k in join.join_keys])
    )
    return keys.group_by(list(join.join_keys)).aggregate([])


def _distinct_keys(samples: pa.Table, keys: Sequence[str]) -> pa.Table:
    table = samples.select(list(keys))
    for k in keys:
        table = table.filter(pc.is_valid(table[k]))
    return table.group_by(list(keys)).aggregate([])


def _positions(samples: pa.Table, found: pa.Table, keys: Sequence[str]) -> pa.Array:
    """Per sample row, the row of ``found`` with its key (null where there is none)."""
    left = samples.select(list(keys)).append_column(
        _ROW, pa.array(np.arange(samples.num_rows, dtype=np.int64))
    )
    right = found.select(list(keys)).append_column(
        _POS, pa.array(np.arange(found.num_rows, dtype=np.int64))
    )
    joined = left.join(right, keys=list(keys), join_type="left outer").sort_by(_ROW)
    if joined.num_rows != samples.num_rows:
        raise TrainingSetError(f"feature rows are not unique per key {list(keys)}")
    return joined[_POS].combine_chunks()


def _historical(
    store: FeatureStore, join: ViewJoin, keys: pa.Table, ts: dt.datetime, lineage: str
) -> pa.Table:
    """Feast's point-in-time answer for ``keys`` at ``ts``: one row per key it found."""
    if keys.num_rows == 0:  # e.g. a lineage with no snapshot up to the day: all cold
        return pa.table(
            {k: pa.array([], pa.int64()) for k in join.join_keys}
            | {f: pa.array([], t) for f, t in zip(join.features, join.feature_types, strict=True)}
        )
    entity_df = keys.to_pandas()
    entity_df[ENTITY_TS] = pd.Timestamp(ts)
    if join.lineage_key:
        entity_df[LINEAGE] = lineage
    refs = [f"{join.view}:{f}" for f in join.features]
    result = store.get_historical_features(
        entity_df=entity_df, features=refs, full_feature_names=True
    ).to_arrow()
    names = {f"{join.view}__{f}": f for f in join.features}
    result = result.select([*join.join_keys, *names]).rename_columns(
        [*join.join_keys, *names.values()]
    )
    result = result.cast(
        pa.schema(
            [pa.field(k, pa.int64()) for k in join.join_keys]
            + [result.schema.field(f) for f in names.values()]
        )
    )
    if result.group_by(list(join.join_keys)).aggregate([]).num_rows != result.num_rows:
        raise TrainingSetError(f"Feast returned several rows per key for view {join.view!r}")
    return result


# --------------------------------------------------------------------------- assembling


def _vectors(
    values: pa.ChunkedArray | pa.Array, positions: pa.Array, dim: int, view: str
) -> tuple[pa.Array, pa.Array]:
    """Vectors taken by position, zero where missing; and the missing flags."""
    taken = pc.take(values, positions)
    if isinstance(taken, pa.ChunkedArray):
        taken = taken.combine_chunks()
    missing = pc.is_null(taken)
    n = len(taken)
    out = np.zeros((n, dim), dtype=np.float32)
    present = np.flatnonzero(~np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool))
    if present.size:
        got = taken.take(pa.array(present))
        lengths = np.asarray(pc.list_value_length(got).to_numpy(zero_copy_only=False))
        if (lengths != dim).any():
            raise TrainingSetError(
                f"view {view!r} holds vectors of length {sorted(set(lengths.tolist()))}, "
                f"expected pretrain.knowledge_dim = {dim}: the lineage and the settings disagree"
            )
        flat = np.asarray(got.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        out[present] = flat.reshape(present.size, dim)
    offsets = pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(out.reshape(-1)))
    return vectors, missing


def _stat_column(entity: str, feature: str) -> str:
    prefix = STAT_PREFIX[entity]
    return feature if feature.startswith(prefix) else prefix + feature


def join_day(
    store: FeatureStore,
    samples: pa.Table,
    ds: dt.date,
    plan: Sequence[ViewJoin],
    *,
    lineage: str,
    settings: Settings,
) -> pa.Table:
    """One day's samples joined with the plan's views, one output row per sample."""
    spec = training_set_spec(settings.aggregate.windows)
    schema = spec.schema
    ts = time.day_start(ds)
    dim = settings.pretrain.knowledge_dim
    columns: dict[str, pa.Array | pa.ChunkedArray] = {n: samples[n] for n in samples.column_names}
    stat_columns = {
        STAT_PREFIX[e] + c for e in ENTITIES for c in window_columns(settings.aggregate.windows)
    }
    provided: set[str] = set()
    for join in plan:
        lineage_filter = lineage if join.kind == "knowledge" else None
        wanted = _distinct_keys(samples, join.join_keys)
        known = _source_keys(join, ts, lineage_filter)
        # Only keys with a feature row up to the day: Feast's file store fails on the rest.
        keys = wanted.join(known, keys=list(join.join_keys), join_type="inner")
        found = _historical(store, join, keys, ts, lineage)
        positions = _positions(samples, found, join.join_keys)
        if join.kind == "knowledge":
            if join.lineage_feature is not None:
                got = found[join.lineage_feature].cast(pa.string())
                seen = set(pc.unique(got).to_pylist()) - {None}
                if seen - {lineage}:
                    raise TrainingSetError(
                        f"view {join.view!r} gave knowledge of lineage(s) {sorted(seen)} for a "
                        f"training set of lineage {lineage!r}: lineages must never be mixed; "
                        "the offline knowledge views must be keyed by knowledge_lineage "
                        "(docs/training_sets.md)"
                    )
            assert join.vector_feature is not None
            vectors, missing = _vectors(found[join.vector_feature], positions, dim, join.view)
            columns[f"{join.entity}_vector"] = vectors
            columns[f"{join.entity}_knowledge_missing"] = missing
        else:
            taken_any = None
            for feature in join.features:
                if feature == join.lineage_feature:
                    continue
                name = _stat_column(join.entity, feature)
                if name not in stat_columns:
                    continue  # extra counters the training set schema does not hold
                taken = pc.take(found[feature], positions)
                is_rate = name.removeprefix(STAT_PREFIX[join.entity]).startswith("ctr_")
                fill = settings.aggregate.prior_ctr if is_rate else 0
                columns[name] = pc.fill_null(taken, fill)
                provided.add(name)
                taken_any = taken
            if taken_any is not None:
                columns[f"{join.entity}_stats_missing"] = pc.is_null(taken_any)
    missing_stats = sorted(stat_columns - provided)
    if missing_stats:
        raise TrainingSetError(
            f"the feature service gives no value for counters {missing_stats[:5]}"
            f"{'...' if len(missing_stats) > 5 else ''}: counters reach training only through "
            "Feast, so its counter views must cover every window in aggregate.windows"
        )
    for entity in KNOWLEDGE_ENTITIES:
        if f"{entity}_vector" not in columns:
            raise TrainingSetError(f"the feature service has no {entity} knowledge view")
    for entity in ENTITIES:
        if f"{entity}_stats_missing" not in columns:
            raise TrainingSetError(f"the feature service has no {entity} counter view")
    columns[LINEAGE] = pa.array([lineage] * samples.num_rows, pa.string())
    out = pa.table({n: columns[n] for n in schema.names}).cast(schema)
    if out.num_rows != samples.num_rows:
        raise TrainingSetError(
            f"{ds}: {samples.num_rows} samples in, {out.num_rows} training rows out"
        )
    return out


# --------------------------------------------------------------------------- entry points


def _default_store(settings: Settings) -> FeatureStore:
    from keep.store.feast_repo import get_store

    store: FeatureStore = get_store(settings)
    return store


def build_training_set(
    settings: Settings,
    start_ds: dt.date,
    end_ds: dt.date,
    *,
    lineage: str,
    feature_service: str = FEATURE_SERVICE,
    knowledge_views: Mapping[str, str] | None = None,
    store: FeatureStore | None = None,
) -> Iterator[pa.Table]:
    """Yield the training set of each day ``start_ds..end_ds``, one Arrow table per day.

    Every table has the schema of ``training_set_spec`` and exactly one row per
    ``gold.downstream_samples`` row of the day (days without samples yield an empty table).
    ``knowledge_views`` picks the knowledge views of ``lineage`` when the service's own views
    hold another lineage; a view that returns any other lineage is refused.
    """
    if not lineage or not all(c.isalnum() or c in "-_." for c in lineage):
        raise InputError(
            f"invalid knowledge lineage {lineage!r}: give the lineage to train on "
            "(letters, digits, '-', '_', '.')"
        )
    days = time.days(start_ds, end_ds)
    store = store if store is not None else _default_store(settings)
    plan = plan_views(store, feature_service, knowledge_views=knowledge_views)
    for ds in days:
        samples = read_samples(settings, ds)
        table = join_day(store, samples, ds, plan, lineage=lineage, settings=settings)
        log.info("training set %s lineage %s: %d rows", ds, lineage, table.num_rows)
        yield table


def write_training_set(
    settings: Settings,
    start_ds: dt.date,
    end_ds: dt.date,
    *,
    lineage: str,
    feature_service: str = FEATURE_SERVICE,
    knowledge_views: Mapping[str, str] | None = None,
    store: FeatureStore | None = None,
) -> dict[str, int]:
    """Write ``gold.downstream_training_set`` for the days; return rows per day.

    Each (lineage, day) partition is replaced, so a re-run is idempotent and other
    lineages' and days' files are untouched.
    """
    from deltalake import write_deltalake

    spec: TableSpec = training_set_spec(settings.aggregate.windows)
    path = delta.table_path(settings, spec)
    rows: dict[str, int] = {}
    for table in build_training_set(
        settings,
        start_ds,
        end_ds,
        lineage=lineage,
        feature_service=feature_service,
        knowledge_views=knowledge_views,
        store=store,
    ):
        if table.num_rows == 0:
            continue
        ds = table["ds"][0].as_py()
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {"partition_by": list(spec.partition_by)}
        if delta.has_commit(path):
            kwargs["predicate"] = f"{LINEAGE} = '{lineage}' AND ds = '{ds}'"
        write_deltalake(
            str(path), table, mode="overwrite" if "predicate" in kwargs else "append", **kwargs
        )
        rows[ds] = table.num_rows
    return rows

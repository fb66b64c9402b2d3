"""Feast's DuckDB offline store, reading Delta tables with delta-rs instead of DuckDB's extension.

Feast's own DuckDB store reads a ``FileSource(file_format=DeltaFormat())`` through DuckDB's
``delta`` extension, which DuckDB downloads on first use -- impossible on machines without
internet access (this project's CI). This subclass reads Delta sources with the
``deltalake`` package (the lake's own reader, no JVM): the current table version only, so
files of overwritten partitions are never read. Parquet sources and everything else
(point-in-time joins, materialization pulls) are Feast's DuckDB/ibis code unchanged.

Selected in feature_repo/feature_store*.yaml::

    offline_store:
      type: keep.store.offline.DeltaDuckDBOfflineStore

At scale the Spark offline store replaces it (docs/feast.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import ibis
from feast.data_format import DeltaFormat
from feast.data_source import DataSource
from feast.infra.offline_stores import duckdb as feast_duckdb
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import (
    get_historical_features_ibis,
    pull_all_from_table_or_query_ibis,
    pull_latest_from_table_or_query_ibis,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.repo_config import RepoConfig
from pydantic import StrictStr


class DeltaDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: StrictStr = "keep.store.offline.DeltaDuckDBOfflineStore"


def read_data_source(data_source: DataSource, repo_path: str) -> Any:
    """An ibis table over ``data_source``: Delta through delta-rs, the rest as Feast does."""
    if isinstance(data_source, FileSource) and isinstance(data_source.file_format, DeltaFormat):
        from deltalake import DeltaTable

        table = DeltaTable(data_source.path).to_pyarrow_dataset().to_table()
        return ibis.memtable(table)
    return feast_duckdb._read_data_source(data_source, repo_path)


def _common(config: RepoConfig) -> dict[str, Any]:
    return {
        "data_source_reader": read_data_source,
        "data_source_writer": feast_duckdb._write_data_source,
        "staging_location": config.offline_store.staging_location,
        "staging_location_endpoint_override": config.offline_store.staging_location_endpoint_override,
    }


class DeltaDuckDBOfflineStore(DuckDBOfflineStore):
    """DuckDBOfflineStore whose Delta reads go through delta-rs (see module docstring)."""

    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        return pull_latest_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_common(config),
        )

    @staticmethod
    def get_historical_features(  # type: ignore[override]
        config: RepoConfig,
        feature_views: list[Any],
        feature_refs: list[str],
        entity_df: Any,
        registry: Any,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        return get_historical_features_ibis(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
            **_common(config),
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        return pull_all_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_common(config),
        )

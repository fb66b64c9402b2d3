"""The daily pipeline's steps, in order: the functions of the same names in
``keep.pipeline``, and the tasks of the daily DAG. Kept apart from ``keep.pipeline`` so
that Airflow parses the DAG without importing Spark, Great Expectations or torch."""

from __future__ import annotations

# Each gate (validate*) stops everything downstream of it.
STEPS: tuple[str, ...] = (
    "land_raw",
    "ingest",
    "validate",
    "aggregate",
    "validate_state",
    "samples",
    "validate_samples",
    "pretrain",
    "export_knowledge",
    "validate_knowledge",
    "publish_knowledge",
)

"""What the Airflow scheduler imports once for the tasks it runs (``airflow.preload_modules``).

Under ``keep airflow up`` the LocalExecutor forks its worker processes from the scheduler and
every task process from a worker, so whatever the scheduler has imported, each task process
starts with. Without this, each task process imports what its step uses by itself: ~2.4
CPU-seconds a task measured here (Great Expectations ~3.3 s, Feast ~2.4 s, torch ~1.4 s);
with it, the real-scheduler test's two days used 388 instead of 464 busy CPU-seconds.

Airflow runs its local-settings hook, ``airflow_settings/airflow_local_settings.py``, in
every process it starts; ``keep airflow up`` puts that folder on the services' PYTHONPATH
when ``airflow.preload_modules`` is on, and the hook calls :func:`preload` in the scheduler
only. A module that fails to import is logged and skipped: the task imports it again and
reports the error there. ``airflow dags test`` runs every task in one process and needs none.
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger(__name__)

# The modules the steps of both DAGs import when they run (keep.flows.pipeline's lazy
# imports): Spark jobs and their client, the gates (Great Expectations), pre-training and
# the downstream model (torch), publication and training sets (Feast, imported through
# keep.store.feast_repo's fast path).
TASK_MODULES: tuple[str, ...] = (
    "keep.flows.pipeline",
    "keep.flows.downstream",
    "keep.lake.spark",
    "pyspark.sql.connect.session",
    "spark_jobs.ingest",
    "spark_jobs.aggregate",
    "spark_jobs.samples",
    "keep.quality.lake_gates",
    "keep.quality.knowledge_gate",
    "models.pretrain.train",
    "models.pretrain.export",
    "models.downstream.daily",
    "keep.store.feast_repo",
    "keep.store.publication",
    "keep.store.training_sets",
    "keep.flows.maintenance",
)


def preload(modules: tuple[str, ...] = TASK_MODULES) -> list[str]:
    """Import ``modules``; the names that failed (logged, not raised)."""
    started = time.monotonic()
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the task that needs it imports it again and fails there
            log.warning("preloading %s for the tasks failed: %s", name, exc)
            failed.append(name)
    log.info(
        "preloaded %d modules for the tasks in %.1f s",
        len(modules) - len(failed),
        time.monotonic() - started,
    )
    return failed

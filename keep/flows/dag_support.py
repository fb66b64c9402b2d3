"""What KEEP's two DAG files share: default arguments and failure semantics.

Imported only by the DAG files (it imports Airflow's task SDK).

Failure semantics (docs/airflow.md):

* a **deterministic** failure -- a gate that failed (:class:`~keep.core.errors.GateFailed`)
  or input the step refuses (:class:`~keep.core.errors.InputError`) -- fails the task at
  once, without retries: running it again would fail the same way. :func:`no_retry_on`
  turns them into Airflow's ``AirflowFailException``;
* anything else (a JVM that died, a full disk, a lost connection) is treated as
  infrastructure and retried ``airflow.retries`` times, ``airflow.retry_delay_s`` apart;
  every step is idempotent per day, so a retry redoes the day's work cleanly.

Every task takes the one slot of the ``keep_compute`` pool (created with the metadata DB):
on a small machine a Spark job and a training never run at the same time, across both DAGs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from keep.core.config import Settings
from keep.core.errors import GateFailed, InputError
from keep.flows.airflow_env import COMPUTE_POOL

log = logging.getLogger("keep.dags")


@contextlib.contextmanager
def no_retry_on_deterministic() -> Iterator[None]:
    """Re-raise a gate failure or refused input as ``AirflowFailException`` (no retry)."""
    try:
        yield
    except (GateFailed, InputError) as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def on_failure(context: Any) -> None:
    """Task failure callback (after the last try): one clear line in the logs."""
    ti = context.get("ti")
    log.error(
        "KEEP: task %s of %s failed (run %s, try %s): %r",
        getattr(ti, "task_id", "?"),
        getattr(ti, "dag_id", "?"),
        getattr(ti, "run_id", "?"),
        getattr(ti, "try_number", "?"),
        context.get("exception"),
    )


def default_args(settings: Settings) -> dict[str, Any]:
    return {
        "owner": "keep",
        "retries": settings.airflow.retries,
        "retry_delay": dt.timedelta(seconds=settings.airflow.retry_delay_s),
        "execution_timeout": dt.timedelta(hours=2),
        "on_failure_callback": on_failure,
        "pool": COMPUTE_POOL,
    }

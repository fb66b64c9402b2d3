"""The one Great Expectations helper of the platform's gates (GX 1.x API).

Every gate -- ingest, state and samples over the lake's Spark frames, collected to pandas
when the day is small enough (``keep.quality.lake_gates``), knowledge over pandas frames
read with delta-rs (``keep.quality.knowledge_gate``) -- uses:

* :func:`get_context`: one File Data Context at ``settings.validation.ge_root``;
* :func:`batch_definition`: a data source (Spark or pandas), a DataFrame asset and its
  whole-frame batch definition, got or added;
* :func:`ensure_checkpoint`: a checkpoint per table, updating Data Docs itself or leaving
  that to :func:`update_data_docs` (one build for all of a gate's checkpoints), written
  only when the code's suite or actions differ from the stored ones;
* :func:`suite_checks`: GX results -> :class:`CheckResult` lines of a :class:`GateReport`,
  the same text whichever engine ran (:func:`_examples`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlparse

import great_expectations as gx
import numpy as np
from great_expectations.checkpoint import UpdateDataDocsAction, ValidationAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
)
from great_expectations.exceptions import DataContextError

from keep.core.config import Settings

DATA_SOURCE = "keep_lake"
BATCH_DEFINITION = "day"
# The execution engines a data source can use (GX runs the same suite on either).
SPARK = "spark"
PANDAS = "pandas"
DOCS_SITE = "local_site"
# BASIC: counts and a few unexpected values per expectation (the summary's examples).
RESULT_FORMAT: dict[str, Any] = {"result_format": "BASIC", "partial_unexpected_count": 5}
# The ingest gate's name: its report also carries the quarantine rate.
INGEST = "ingest"


def param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def run_identifier(name: str) -> RunIdentifier:
    """A GX run named ``name`` (``<gate>_gate_<ds>``: Data Docs list runs by day), now."""
    return RunIdentifier(run_name=name, run_time=dt.datetime.now(dt.UTC))


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """One expectation on one table: whether it held, and what was observed."""

    table: str
    expectation: str
    column: str | None
    success: bool
    observed: str

    def line(self) -> str:
        on = f" on {self.column}" if self.column else ""
        return f"{self.table}: {self.expectation}{on}: {self.observed}"

    @classmethod
    def from_result(cls, table: str, result: Any) -> Self:
        """The check of one GX ``ExpectationValidationResult`` on ``table``."""
        config = result.expectation_config
        return cls(
            table=table,
            expectation=config.type,
            column=_column(config.kwargs),
            success=bool(result.success),
            observed=_observed(result),
        )


@dataclass
class GateReport:
    """Outcome of one gate (``gate``: ingest, state or samples) for one day.

    ``quarantine_rate`` is the ingest gate's (NaN for the others).
    """

    ds: dt.date
    success: bool
    checks: list[CheckResult] = field(default_factory=list)
    quarantine_rate: float = float("nan")
    data_docs_index: Path | None = None
    gate: str = INGEST
    # The Delta version of each table the gate read (the knowledge gate's), by table name.
    table_versions: dict[str, int] | None = None

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    @property
    def title(self) -> str:
        return "Gate" if self.gate == INGEST else f"{self.gate.capitalize()} gate"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable digest (what the Airflow tasks return as their XCom)."""
        digest: dict[str, Any] = {
            "ds": self.ds.isoformat(),
            "gate": self.gate,
            "success": bool(self.success),
            "checks": len(self.checks),
            "failed": [c.line() for c in self.failed],
            "summary": self.summary(),
            "data_docs": str(self.data_docs_index) if self.data_docs_index else None,
        }
        if self.gate == INGEST and self.quarantine_rate == self.quarantine_rate:  # not NaN
            digest["quarantine_rate"] = self.quarantine_rate
        if self.table_versions is not None:
            digest["table_versions"] = dict(self.table_versions)
        return digest

    def summary(self) -> str:
        docs = f"Data Docs: {self.data_docs_index}" if self.data_docs_index else "no Data Docs"
        rate = f"impression quarantine rate {self.quarantine_rate:.2%}"
        ingest = self.gate == INGEST
        if self.success:
            tables = len({c.table for c in self.checks})
            return (
                f"{self.title} OK for {self.ds}: {len(self.checks)} checks on {tables} tables "
                f"passed{f', {rate}' if ingest else ''}. {docs}"
            )
        failed = self.failed
        lines = [
            f"{self.title} FAILED for {self.ds}: {len(failed)} of {len(self.checks)} checks "
            f"failed{f' ({rate})' if ingest else ''}."
        ]
        lines += [f"  - {c.line()}" for c in failed]
        lines.append(docs)
        return "\n".join(lines)


def _examples(values: list[Any]) -> str:
    """The unexpected values as the same text whichever engine found them. Times are shown
    in UTC without an offset: Spark collects them as naive datetimes in the process's local
    time, pandas as UTC Timestamps; numpy scalars (pandas) are shown as Python ones (Spark)."""

    def show(v: Any) -> Any:
        if isinstance(v, dt.datetime):
            # astimezone reads a naive datetime as local time.
            return v.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, (tuple, list)):
            return tuple(show(x) for x in v)
        return v

    return repr([show(v) for v in values])


def _observed(result: Any) -> str:
    """Short human text for one ExpectationValidationResult."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        message = str(info.get("exception_message") or "unknown error").strip().splitlines()
        return f"error: {message[0] if message else 'unknown error'}"
    res = result.result or {}
    if "unexpected_count" in res:
        count = res.get("unexpected_count") or 0
        if not count:
            return f"all {res.get('element_count', 0)} values as expected"
        examples = res.get("partial_unexpected_list") or []
        noun = "value" if count == 1 else "values"
        text = f"{count} unexpected {noun}"
        return f"{text}, e.g. {_examples(examples)}" if examples else text
    if res.get("missing_count"):
        # expect_column_distinct_values_to_contain_set: expected values that never occur.
        return f"missing {_examples(res.get('partial_missing_list') or [])}"
    if "observed_value" in res and res["observed_value"] is not None:
        observed = res["observed_value"]
        if isinstance(observed, list):
            observed = sorted(observed, key=str)
        return f"observed {observed}"
    return "passed" if result.success else "failed"


def _column(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("column"):
        return str(kwargs["column"])
    if kwargs.get("column_A"):
        return f"{kwargs['column_A']},{kwargs['column_B']}"
    if kwargs.get("column_list"):
        return ",".join(kwargs["column_list"])
    return None


C = TypeVar("C", bound=CheckResult)


def suite_checks(table: str, suite_result: Any, kind: type[C] = CheckResult) -> list[C]:  # type: ignore[assignment]
    """One check of type ``kind`` per expectation result of a validated suite."""
    return [kind.from_result(table, result) for result in suite_result.results]


# --------------------------------------------------------------------------------------
# Great Expectations context
# --------------------------------------------------------------------------------------


def _quiet_logging() -> None:
    """GX logs freely at INFO; keep it to warnings unless someone configured it."""
    logger = logging.getLogger("great_expectations")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def get_context(settings: Settings) -> Any:
    """The File Data Context at ``settings.validation.ge_root`` (created when missing)."""
    _quiet_logging()
    root = settings.validation.ge_root
    root.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="file", project_root_dir=str(root))
    bars = context.variables.progress_bars
    if bars is None or bars.get("globally", True) or bars.get("metric_calculations", True):
        # tqdm bars on every metric computation: unreadable in Airflow and CLI logs.
        context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        context.variables.save()
    return context


def batch_definition(
    context: Any,
    asset_name: str,
    *,
    source_name: str = DATA_SOURCE,
    batch_name: str = BATCH_DEFINITION,
    engine: str = SPARK,
) -> Any:
    """Get-or-add the data source (``engine``: spark or pandas), the asset and its
    whole-frame batch definition."""
    try:
        source = context.data_sources.get(source_name)
    except KeyError:
        if engine == PANDAS:
            source = context.data_sources.add_pandas(name=source_name)
        else:
            # persist=False: we cache the day's frames ourselves and release them afterwards
            # (GX would persist every frame it is given and never unpersist it).
            source = context.data_sources.add_spark(name=source_name, persist=False)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition(batch_name)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(batch_name)


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _checkpoint_config(checkpoint: gx.Checkpoint) -> Any:
    """What a checkpoint is made of, without ids (``dict()`` requires a saved checkpoint)."""
    result_format = checkpoint.result_format
    return {
        "actions": [_without_ids(action.dict()) for action in checkpoint.actions],
        "result_format": dict(result_format) if isinstance(result_format, dict) else result_format,
        "validation_definitions": [vd.name for vd in checkpoint.validation_definitions],
    }


def _stored_if_current(context: Any, wanted: gx.Checkpoint) -> gx.Checkpoint | None:
    """The stored checkpoint when it (and its definitions and suites) already match ``wanted``."""
    try:
        stored = context.checkpoints.get(wanted.name)
    except DataContextError:
        return None
    if _checkpoint_config(stored) != _checkpoint_config(wanted):
        return None
    for have, want in zip(
        stored.validation_definitions, wanted.validation_definitions, strict=True
    ):
        same_data = (have.data.data_asset.name, have.data.name) == (
            want.data.data_asset.name,
            want.data.name,
        )
        same_suite = _without_ids(have.suite.to_json_dict()) == _without_ids(
            want.suite.to_json_dict()
        )
        if not (same_data and same_suite):
            return None
    return stored


def ensure_checkpoint(
    context: Any, name: str, suite: gx.ExpectationSuite, data: Any, *, data_docs: bool = True
) -> Any:
    """The checkpoint ``name`` validating ``data`` (a batch definition) against ``suite``,
    updating Data Docs unless ``data_docs`` is false (its caller then builds them with
    :func:`update_data_docs`); added or updated only when the stored one differs from the
    code, so steady-state runs (and concurrent runs of different days) only read the
    configuration."""
    definition = gx.ValidationDefinition(name=name, data=data, suite=suite)
    actions: list[ValidationAction] = [
        UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])
    ]
    wanted = gx.Checkpoint(
        name=name,
        validation_definitions=[definition],
        actions=actions if data_docs else [],
        result_format=RESULT_FORMAT,
    )
    # add_or_update cascades: it adds or updates the suite and the definition too.
    return _stored_if_current(context, wanted) or context.checkpoints.add_or_update(wanted)


def data_docs_pages(result: Any) -> list[Any]:
    """The Data Docs pages of a checkpoint result that ``UpdateDataDocsAction`` builds:
    each validation's page and its suite's (identifiers only, not the result's data)."""
    pages: list[Any] = []
    for identifier, suite_result in result.run_results.items():
        pages += [identifier, ExpectationSuiteIdentifier(name=suite_result.suite_name)]
    return pages


def update_data_docs(context: Any, pages: list[Any]) -> None:
    """Build Data Docs ``pages`` (:func:`data_docs_pages` of several checkpoints) and the
    site's index, in one build: ``UpdateDataDocsAction`` rebuilds the index, and compiles
    every template again, once per checkpoint."""
    if pages:
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=pages)


def data_docs_index(context: Any) -> Path | None:
    """Path of the local Data Docs site's index.html, if it is on the file system."""
    for site in context.get_docs_sites_urls(site_name=DOCS_SITE):
        url = site.get("site_url")
        if url and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
    return None

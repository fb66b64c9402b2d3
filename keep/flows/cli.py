"""``keep``: the command line of the KEEP platform.

Every command is a thin wrapper over a function of ``keep.flows.pipeline`` (the same ones
the Airflow DAG calls). Settings come from ``keep.yaml`` / ``KEEP_*`` variables; see
``keep config``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from keep.core.config import Settings, config_file, display_settings, load_settings
from keep.core.errors import KeepError
from keep.core.time import days

app = typer.Typer(
    name="keep",
    help="KEEP: knowledge extraction from long-history impression logs, plugged into CTR models.",
    no_args_is_help=True,
    add_completion=False,
    # Usage errors as click prints them: one "Error: ..." line (no box that wraps the
    # message over several lines), like every other error of the command line.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
# Tables stay readable in logs and CI, where there is no terminal to size them by.
out = Console(width=None if sys.stdout.isatty() else 160)

F = TypeVar("F", bound=Callable[..., Any])


class Via(enum.StrEnum):
    local = "local"
    airflow = "airflow"


DateOpt = Annotated[
    dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Logical day (UTC), YYYY-MM-DD.")
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    for noisy in (
        "py4j",
        "py4j.clientserver",
        "py4j.java_gateway",
        "great_expectations",
        "urllib3",
        "filelock",
        "feast",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _friendly(fn: F) -> F:
    """Print expected failures (KeepError) as one clear message and exit with code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeepError as exc:
            # One line, whatever the terminal's width (logs and CI grep for it).
            console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, markup=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _existing_home() -> Settings:
    """The settings of a command that reads an existing KEEP home (its lake, raw files,
    models): a home that does not exist is one clear error, not a missing file later."""
    settings = load_settings()
    if not settings.home.is_dir():
        raise KeepError(
            f"KEEP home {settings.home} does not exist (set by KEEP_HOME or `home:` in "
            f"{config_file()}): point it at an existing home, or create one with "
            "`keep generate` / `keep run`."
        )
    return settings


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command("config")
@_friendly
def show_config() -> None:
    """Print the effective settings (file + environment overrides) as YAML."""
    settings = load_settings()
    out.print(yaml.safe_dump(display_settings(settings), sort_keys=False), end="")


@app.command()
@_friendly
def generate(
    start: DateOpt,
    end: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last day (default: --start)."),
    ] = None,
) -> None:
    """Write synthetic raw files (impressions, users, items) for a range of days."""
    from keep.sources import generator

    settings = load_settings()
    span = days(start.date(), (end or start).date())
    with _progress() as progress:
        task = progress.add_task("generate", total=len(span))
        for ds in span:
            paths = generator.write_day(settings, ds)
            progress.update(task, advance=1, description=f"generate {ds}")
    out.print(
        f"wrote {len(span)} day(s) under {settings.lake.raw_root} (last: {paths['impressions']})"
    )


@app.command()
@_friendly
def ingest(ds: DateOpt) -> None:
    """Ingest one day of raw files into the Delta lake (bronze, dim, quarantine)."""
    from keep.flows import pipeline

    counts = pipeline.ingest(_existing_home(), ds.date())
    table = _counts_table(f"ingest {ds.date()}")
    for c in counts.values():
        table.add_row(c.source, *_count_cells(c))
    out.print(table)


@app.command()
@_friendly
def validate(ds: DateOpt) -> None:
    """Run the Great Expectations gate on one day; exit 2 with a summary if it fails."""
    from keep.flows import pipeline

    report = pipeline.validate(_existing_home(), ds.date())
    out.print(report.summary())


@app.command()
@_friendly
def aggregate(ds: DateOpt) -> None:
    """Update the silver state (sequences, counters) of one day from the day before, then gate it."""
    from keep.flows import pipeline

    settings = _existing_home()
    rows = pipeline.aggregate(settings, ds.date())
    out.print(_rows_table(f"aggregate {ds.date()}", rows))
    out.print(pipeline.validate_state(settings, ds.date()).summary())


@app.command()
@_friendly
def samples(ds: DateOpt) -> None:
    """Build the gold samples of one day (state as of the day before), then gate them."""
    from keep.flows import pipeline

    settings = _existing_home()
    rows = pipeline.samples(settings, ds.date())
    out.print(_rows_table(f"samples {ds.date()}", rows))
    out.print(pipeline.validate_samples(settings, ds.date()).summary())


@app.command()
@_friendly
def backfill(
    start: DateOpt,
    end: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last changed day (default: --start)."),
    ] = None,
    through_knowledge: Annotated[
        bool,
        typer.Option(
            "--through-knowledge",
            help="Then also recompute, for every day from --start on that has a "
            "pre-training checkpoint, in order and in that checkpoint's lineage: the "
            "pre-training (warm start from the day before, or the lineage's own start), "
            "the knowledge snapshot and its gate (report in the manifest); and republish "
            "the snapshot that was live if it was recomputed and its gate passes. Only "
            "that one: publishing older snapshots in turn would move the live pointer "
            "backwards.",
        ),
    ] = False,
) -> None:
    """Recompute state and samples from --start, through --end, and every later day that
    depends on them, in order, with every gate (--through-knowledge: pre-training and
    knowledge too).

    This, not Airflow's scheduler-driven backfill, is the supported way to repair history:
    re-ingest the changed days first (`keep ingest --ds D`: raw files and bronze are not
    touched here), then `keep backfill --start D`. Recomputed: silver state, gold samples
    (+ their gates); with --through-knowledge also the pre-training checkpoints, knowledge
    snapshots and their gate reports, and the online store's live snapshot. Not recomputed:
    the downstream models and their training sets (gold.downstream_training_set); the
    downstream DAG trains them on the next knowledge publication. See docs/aggregation.md.
    """
    from keep.flows import pipeline

    settings = _existing_home()
    first, last = start.date(), (end or start).date()
    pipeline.check_backfill(settings, first, last)
    knowledge: pipeline.KnowledgeBackfill | None = None
    with _progress() as progress:
        task = progress.add_task("backfill", total=None)

        def on_day(ds: dt.date) -> None:
            progress.update(task, description=f"state and samples {ds}", advance=1)

        def on_snapshot(lineage: str, ds: dt.date) -> None:
            progress.update(task, description=f"knowledge {lineage} / {ds}", advance=1)

        span = pipeline.backfill(settings, first, last, on_day=on_day)
        if through_knowledge:
            knowledge = pipeline.backfill_knowledge(settings, first, on_snapshot=on_snapshot)
    out.print(f"recomputed state and samples of {len(span)} day(s): {span[0]} .. {span[-1]}")
    if knowledge is None:
        return
    out.print(
        f"recomputed {len(knowledge.snapshots)} checkpoint(s) and knowledge snapshot(s): "
        + (", ".join(f"{lin}/{ds}" for lin, ds in knowledge.snapshots) or "none")
    )
    if knowledge.published is not None:
        info = knowledge.published
        out.print(f"republished the live snapshot {info['lineage']}/{info['snapshot_ds']}")
    else:
        live = knowledge.live_before
        named = f"{live['lineage']}/{live['snapshot_ds']}" if live else "nothing"
        out.print(f"online store unchanged (live: {named}, not among the recomputed snapshots)")


@app.command()
@_friendly
def pretrain(
    ds: DateOpt,
    full_retrain: Annotated[
        bool,
        typer.Option(
            "--full-retrain",
            help="Train from scratch over pretrain.full_retrain_days days ending with --ds "
            "(starts a new lineage) instead of warm-starting from the day before.",
        ),
    ] = False,
) -> None:
    """Pre-train the multi-task model on one day (warm start from the day before's checkpoint).

    Distributed: `python -m torch.distributed.run --nproc_per_node=2 -m models.pretrain.ddp
    --ds D` runs the same training with DDP (see docs/pretrain.md).
    """
    from models.pretrain.train import pretrain_day

    result = pretrain_day(_existing_home(), ds.date(), full_retrain=full_retrain, progress=True)
    table = Table(title=f"pretrain {ds.date()}: {result.mode}, lineage {result.lineage}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(result.metrics.items()):
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(table)
    out.print(f"checkpoint: {result.checkpoint_path}")


@app.command("export-knowledge")
@_friendly
def export_knowledge(ds: DateOpt) -> None:
    """Export day D's knowledge snapshot (user, item, user x category), then gate it."""
    from keep.flows import pipeline

    settings = _existing_home()
    result = pipeline.export_knowledge(settings, ds.date())
    out.print(_rows_table(f"knowledge {result.lineage} / {ds.date()}", result.rows))
    out.print(f"manifest: {result.manifest_path}")
    out.print(pipeline.validate_knowledge(settings, ds.date()).summary())


@app.command()
@_friendly
def publish(ds: DateOpt) -> None:
    """Publish day D's gated knowledge snapshot to Feast's online store (atomic switch)."""
    from keep.flows import pipeline

    info = pipeline.publish_knowledge(_existing_home(), ds.date())
    out.print_json(data=pipeline.to_json(info))


@app.command()
@_friendly
def maintain(ds: DateOpt) -> None:
    """Lake maintenance as of day D: retention, compaction, VACUUM, old checkpoints and
    lineages nothing uses (settings.maintenance; the daily pipeline's last step)."""
    from keep.flows import pipeline

    result = pipeline.maintain(_existing_home(), ds.date())
    usage = result["disk_bytes"]
    out.print_json(data=pipeline.to_json({k: v for k, v in result.items() if k != "tables"}))
    out.print(f"KEEP home after maintenance: {usage['total'] / 2**20:,.1f} MB")


@app.command()
@_friendly
def rollback() -> None:
    """Make the previously live knowledge snapshot live again (one pointer switch)."""
    from keep.store.publication import rollback as roll_back

    settings = _existing_home()
    out.print_json(data=roll_back(settings))


@app.command("training-set")
@_friendly
def training_set(
    start: DateOpt,
    end: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last day (default: --start)."),
    ] = None,
    lineage: Annotated[
        str | None,
        typer.Option(help="Knowledge lineage to join (default: the live one in Feast)."),
    ] = None,
) -> None:
    """Downstream training set: the downstream samples joined point-in-time with knowledge
    and counters through Feast (`downstream_ctr_v1`), every sample kept, one day at a time,
    into Delta gold.downstream_training_set."""
    from keep.store.publication import live_snapshot
    from keep.store.training_sets import write_training_set

    settings = _existing_home()
    from keep.lake.knowledge import snapshot_rows

    first, last = start.date(), (end or start).date()
    days(first, last)  # a reversed range is refused before anything runs
    if lineage is not None:
        known = sorted({lin for lin, _ in snapshot_rows(settings, "user")})
        if lineage not in known:
            raise KeepError(
                f"unknown knowledge lineage {lineage!r}: the lake has "
                f"{', '.join(known) or 'no knowledge snapshots yet'} "
                "(`keep models list` shows the lineage of each model; omit --lineage for the "
                "live one)."
            )
    chosen = lineage or (live_snapshot(settings) or {}).get("lineage")
    if not chosen:
        raise KeepError("no live knowledge in Feast yet: publish a snapshot or pass --lineage")
    rows = write_training_set(settings, first, last, lineage=chosen)
    out.print(_rows_table(f"training set {first} .. {last}, lineage {chosen}", rows))


ArmOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arm",
        help="Arm(s): base, keep, concat, finetune, superdomain_features "
        "(default: downstream.daily_arms).",
    ),
]


@app.command("train-downstream")
@_friendly
def train_downstream(ds: DateOpt, arm: ArmOpt = None) -> None:
    """Day D's downstream CTR models: the point-in-time training set with the knowledge
    served on D, each arm evaluated on D (trained through D-1), then trained on D."""
    from keep.flows import pipeline

    result = pipeline.train_downstream(_existing_home(), ds.date(), arms=arm)
    out.print(_arms_table(f"downstream {ds.date()}", result))


@app.command("evaluate-downstream")
@_friendly
def evaluate_downstream(ds: DateOpt, arm: ArmOpt = None) -> None:
    """Evaluate the arms' newest models (trained before D) on day D; trains nothing."""
    from keep.flows import pipeline

    result = pipeline.train_downstream(_existing_home(), ds.date(), arms=arm, train=False)
    out.print(_arms_table(f"downstream evaluation {ds.date()}", result))


def _arms_table(title: str, result: dict[str, Any]) -> Table:
    if "skipped" in result:
        raise KeepError(f"{result['ds']}: {result['skipped']}; publish knowledge first")
    table = Table(
        title=f"{title}: {result['rows']:,} rows, knowledge {result['lineage']} "
        f"/ {result['snapshot_ds']}"
    )
    for name in ("arm", "AUC", "GAUC", "log loss", "calibration", "lineage switch"):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for arm, m in result["arms"].items():
        if not m.get("held_out"):
            table.add_row(arm, "-", "-", "-", "-", "first day: trained only")
            continue
        table.add_row(
            arm,
            *[f"{m[k]:.4f}" for k in ("auc", "gauc", "logloss", "calibration")],
            m.get("lineage_switch") or "-",
        )
    return table


@app.command()
@_friendly
def report(
    quality: Annotated[
        Path, typer.Option(help="The quality summary written by bench/quality.py.")
    ] = Path("reports/bench/quality.json"),
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for index.html and the PNG plots.")
    ] = Path("reports/quality"),
) -> None:
    """Render the quality report (arms vs oracle, gap closed, calibration) as HTML + PNGs."""
    from keep.flows.report import write_report

    if not quality.is_file():
        raise KeepError(f"no quality summary at {quality}: run bench/quality.py first")
    files = write_report(quality, out_dir)
    out.print(f"report: {files.index}")


redis = typer.Typer(help="A private redis-server for Feast's Redis online store (127.0.0.1).")
app.add_typer(redis, name="redis")


@redis.command("start")
@_friendly
def redis_start(
    directory: Annotated[Path, typer.Option("--dir", help="Its data, pid and log folder.")] = Path(
        "var/redis"
    ),
) -> None:
    """Start Debian's redis-server on 127.0.0.1 (free port, protected mode); prints the
    connection string to put in KEEP_FEAST__REDIS_CONNECTION."""
    from keep.store.redis_server import start as start_server

    server = start_server(directory.resolve())
    out.print(f"redis-server pid {server.pid}: {server.connection_string}")


@redis.command("stop")
@_friendly
def redis_stop(
    directory: Annotated[Path, typer.Option("--dir", help="The folder given to start.")] = Path(
        "var/redis"
    ),
) -> None:
    """Stop the redis-server started with the same --dir (by its PID)."""
    from keep.store.redis_server import stop_dir

    stopped = stop_dir(directory.resolve())
    out.print("stopped" if stopped else f"no redis-server running for {directory}")


spark_server = typer.Typer(
    help="A long-lived Spark Connect server: one warm Spark for every step's jobs "
    "(docs/airflow.md, 'The Spark server')."
)
app.add_typer(spark_server, name="spark-server")


@spark_server.command("start")
@_friendly
def spark_server_start(
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
) -> None:
    """Start the server with the settings' Spark configuration (master, heap, Delta) on
    127.0.0.1; prints the URL to set as KEEP_SPARK__REMOTE (or spark.remote)."""
    from keep.lake import spark_server as server_mod

    settings = load_settings()
    server = server_mod.start(settings, server_mod.server_dir(settings), port=port)
    out.print(f"Spark server pid {server.pid}: {server.url}")
    out.print(f"export KEEP_SPARK__REMOTE={server.url}")


@spark_server.command("status")
@_friendly
def spark_server_status() -> None:
    """Whether the server of this KEEP home runs, its URL and log."""
    from keep.lake import spark_server as server_mod

    directory = server_mod.server_dir(load_settings())
    server = server_mod.running(directory)
    if server is None:
        out.print(f"no Spark server running for {directory}")
        raise typer.Exit(code=1)
    out.print(
        f"Spark server pid {server.pid}: {server.url} (log {directory / server_mod.LOG_FILE})"
    )


@spark_server.command("stop")
@_friendly
def spark_server_stop() -> None:
    """Stop the server of this KEEP home (by its PID)."""
    from keep.lake import spark_server as server_mod

    directory = server_mod.server_dir(load_settings())
    stopped = server_mod.stop_dir(directory)
    out.print("stopped" if stopped else f"no Spark server running for {directory}")


models = typer.Typer(
    help="The downstream model registry: versions, the live one, promotion and rollback "
    "(docs/downstream.md, 'Model registry').",
    no_args_is_help=True,
)
app.add_typer(models, name="models")

SubsystemOpt = Annotated[
    str | None,
    typer.Option(help="Downstream subsystem (default: downstream.scenario)."),
]


@models.command("list")
@_friendly
def models_list(subsystem: SubsystemOpt = None) -> None:
    """Every registered version: knowledge lineage and snapshot, days, holdout AUC, gate."""
    from keep.store import model_registry as registry

    settings = _existing_home()
    name = subsystem or settings.downstream.scenario
    found = registry.versions(settings, name)
    table = Table(title=f"{name} model versions ({settings.downstream.registry_root})")
    for col in (
        "version",
        "live",
        "knowledge lineage",
        "snapshot",
        "trained on",
        "AUC",
        "gate",
        "registered",
    ):
        table.add_column(col)
    for v in found:
        auc = ((v.metrics.get("holdout") or {}).get("candidate") or {}).get("auc")
        table.add_row(
            f"v{v.version}",
            "[bold green]live[/]" if v.live else "",
            v.knowledge_lineage,
            v.snapshot_ds,
            ", ".join(v.train_days),
            _auc(auc),
            "passed" if v.gate.get("success") else "FAILED",
            v.registered_at,
        )
    out.print(table)
    if not found:
        out.print(
            f"no {name} model registered yet: the downstream DAG registers one per publication"
        )


@models.command("promote")
@_friendly
def models_promote(
    version: Annotated[
        int, typer.Argument(help="Version number to make live (see `keep models list`).")
    ],
    subsystem: SubsystemOpt = None,
) -> None:
    """Make a registered version live (the current one can be rolled back to)."""
    from keep.store import model_registry as registry

    settings = _existing_home()
    v = registry.promote(settings, subsystem or settings.downstream.scenario, version)
    out.print(f"{v.name} is live (knowledge {v.knowledge_lineage} / {v.snapshot_ds})")


@models.command("rollback")
@_friendly
def models_rollback(subsystem: SubsystemOpt = None) -> None:
    """Make the version that was live before the current one live again."""
    from keep.store import model_registry as registry

    settings = _existing_home()
    v = registry.rollback(settings, subsystem or settings.downstream.scenario)
    out.print(f"{v.name} is live again (knowledge {v.knowledge_lineage} / {v.snapshot_ds})")


airflow = typer.Typer(
    help="A running Airflow on this machine: PostgreSQL metadata DB, scheduler, dag "
    "processor and API server (UI + REST API), started and stopped by PID (docs/airflow.md).",
    no_args_is_help=True,
)
app.add_typer(airflow, name="airflow")


def _processes_table(title: str, processes: list[Any]) -> Table:
    table = Table(title=title)
    for name in ("process", "pid", "state", "log"):
        table.add_column(name)
    for p in processes:
        state = (
            "[green]running[/]"
            if p.alive
            else "[yellow]stale pid file (removed)[/]"
            if p.stale
            else "stopped"
        )
        table.add_row(p.name, str(p.pid or "-"), state, str(p.log))
    return table


@airflow.command("up")
@_friendly
def airflow_up(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the services to report healthy.")
    ] = 300.0,
) -> None:
    """Start PostgreSQL (unless airflow.database_url names a database), migrate it, then
    Airflow's scheduler, dag processor and API server, each as its own process; returns
    once /api/v2/monitor/health reports them healthy. Idempotent."""
    from keep.flows.airflow_services import up

    settings = load_settings()
    with console.status("starting Airflow (first time: a minute or two) ..."):
        result = up(settings, timeout_s=timeout)
    out.print(_processes_table("keep airflow up", result.processes))
    started = ", ".join(result.started) or "nothing (already running)"
    out.print(f"started: {started}{'; database migrated' if result.migrated else ''}")
    out.print(f"UI and REST API: {result.api_url}  (every user an admin; 127.0.0.1 only)")
    out.print(f"metadata DB: {result.database}")
    out.print(f"stop: keep airflow down; logs: {settings.airflow.home / 'logs'}")


@airflow.command("down")
@_friendly
def airflow_down(
    grace: Annotated[
        float,
        typer.Option(
            help="Seconds each process gets to exit after SIGTERM (the scheduler waits for "
            "running tasks) before it and its children are killed."
        ),
    ] = 30.0,
) -> None:
    """Stop the scheduler, the dag processor, the API server and then PostgreSQL, by the
    PIDs in their pid files, with their children. Idempotent."""
    from keep.flows.airflow_services import down

    with console.status("stopping Airflow ..."):
        stopped = down(load_settings(), grace_s=grace)
    out.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@airflow.command("status")
@_friendly
def airflow_status() -> None:
    """Each process (pid, running or not; stale pid files are removed) and the API server's
    health answer. Exit code 1 unless everything is healthy."""
    from keep.flows.airflow_services import status

    result = status(load_settings())
    out.print(_processes_table("keep airflow status", result.processes))
    out.print(f"UI and REST API: {result.api_url}")
    out.print(f"metadata DB: {result.database}")
    if result.health is None:
        out.print(f"health: [red]no answer[/] ({result.health_error})")
    else:
        parts = ", ".join(
            f"{part}: {(info or {}).get('status') or '-'}" for part, info in result.health.items()
        )
        out.print(f"health: {parts}")
    if not result.healthy:
        raise typer.Exit(code=1)


@airflow.command("unpause")
@_friendly
def airflow_unpause(
    dag_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="DAGs to unpause (default: keep_downstream_ctr and keep_daily_refresh)."
        ),
    ] = None,
) -> None:
    """Unpause DAGs of the running Airflow (REST API). The daily DAG then catches up every
    day from pipeline.start_ds, in order."""
    from keep.flows.airflow_api import AirflowClient
    from keep.flows.airflow_env import DAG_ID, DOWNSTREAM_DAG_ID

    client = AirflowClient.for_settings(load_settings())
    try:
        for dag_id in dag_ids or [DOWNSTREAM_DAG_ID, DAG_ID]:
            client.unpause(dag_id)
            out.print(f"{dag_id}: unpaused")
    finally:
        client.close()


@app.command()
@_friendly
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: serve.port).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="uvicorn worker processes (default: serve.workers).")
    ] = None,
) -> None:
    """Serve the live downstream model over HTTP: POST /v1/score, GET /healthz, GET /metrics.

    Knowledge comes from the online store (Feast), pinned to the lineage the live model was
    trained on; a newly registered version is loaded in the background and swapped in.
    """
    from serving.app import run as run_service

    run_service(_existing_home(), host=host, port=port, workers=workers)


@app.command("import-taobao")
@_friendly
def import_taobao(
    source: Annotated[
        Path,
        typer.Argument(
            help="Folder with raw_sample.csv (+ behavior_log.csv, ad_feature.csv, user_profile.csv)."
        ),
    ],
    negatives_per_positive: Annotated[
        int, typer.Option(help="Sampled non-clicked impressions per behaviour-log row.")
    ] = 1,
    chunksize: Annotated[
        int, typer.Option(help="Rows read at a time (bounds memory).")
    ] = 1_000_000,
) -> None:
    """Convert the public Taobao display-ad data set into the raw format (docs/taobao.md)."""
    from keep.sources.taobao import import_taobao as run_import

    summary = run_import(
        load_settings(), source, negatives_per_positive=negatives_per_positive, chunksize=chunksize
    )
    rows = summary.summary_rows()
    table = Table(title=f"Taobao import: {len(summary.days)} day(s)")
    for name in rows[0]:
        table.add_column(str(name))
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    out.print(table)


@app.command()
@_friendly
def run(
    start: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="First day (default: pipeline.start_ds)."),
    ] = None,
    end: Annotated[
        dt.datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last day (default: pipeline.end_ds)."),
    ] = None,
    land: Annotated[
        bool | None,
        typer.Option(
            "--land/--no-land",
            help="--land: generate each day's synthetic raw files first (turns "
            "airflow.demo_mode on for this run); --no-land: only check that they have "
            "landed (demo mode off). Default: airflow.demo_mode (off unless set).",
        ),
    ] = None,
    via: Annotated[
        Via,
        typer.Option(
            help="local: call the pipeline functions in this process; "
            "airflow: run each day through the real DAG with `airflow dags test`.",
        ),
    ] = Via.local,
    spark_server: Annotated[
        bool | None,
        typer.Option(
            "--spark-server/--no-spark-server",
            help="Run the days' Spark steps on one long-lived Spark server (started for the "
            "run and stopped after it, unless spark.remote names one). Default: on with "
            "--via airflow (each day is a new process), off with --via local (this process "
            "keeps its Spark across days).",
        ),
    ] = None,
) -> None:
    """Run the daily pipeline for a range of days, in order, and summarise it.

    Both ways run exactly the functions the Airflow DAG's tasks call. Stops at the first
    failed day, because every day's state depends on the day before. The first step,
    land_raw, generates synthetic raw files only in demo mode (--land, or
    KEEP_AIRFLOW__DEMO_MODE=true); otherwise it checks that the day's files have landed.
    """
    from keep.flows import pipeline

    settings = load_settings()
    if land is not None:
        settings = pipeline.with_demo_mode(settings, land)
    first = start.date() if start else settings.pipeline.start_ds
    last = end.date() if end else settings.pipeline.end_ds
    span = days(first, last)
    results: list[pipeline.DayResult] = []
    began = time.monotonic()
    use_server = via is Via.airflow if spark_server is None else spark_server
    with contextlib.ExitStack() as stack:
        if use_server:
            from keep.lake.spark_server import serving

            settings = stack.enter_context(serving(settings))
        with _progress() as progress:
            task = progress.add_task("run", total=len(span))
            for ds in span:
                progress.update(task, description=f"day {ds}")
                if via is Via.airflow:
                    result = pipeline.run_day_airflow(settings, ds)
                else:
                    result = pipeline.run_day(settings, ds)
                results.append(result)
                progress.update(task, advance=1)
                if not result.ok:
                    break
    out.print(_summary_table(results, settings.downstream.scenario))
    out.print(
        f"{len(results)} day(s) in {time.monotonic() - began:.0f} s; lake: {settings.lake.root}"
    )
    failed = [r for r in results if not r.ok]
    if failed:
        console.print(f"[bold red]{failed[0].ds} failed:[/]\n{failed[0].gate_summary}")
        raise typer.Exit(code=1)


def _rows_table(title: str, rows: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in rows.items():
        table.add_row(name, f"{count:,}")
    return table


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _counts_table(title: str) -> Table:
    table = Table(title=title)
    for name in ("source", "rows in", "stored", "quarantined", "duplicates", "quarantine %"):
        table.add_column(name, justify="right" if name != "source" else "left")
    return table


def _count_cells(c: Any) -> list[str]:
    return [
        f"{c.rows_in:,}",
        f"{c.rows_stored:,}",
        f"{c.rows_quarantined:,}",
        f"{c.duplicates:,}",
        f"{100 * c.quarantine_rate:.2f}",
    ]


def _auc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def _summary_table(results: list[Any], scenario: str = "ads") -> Table:
    """Per day: ingest counts, samples, the pre-training model's held-out click AUC and
    lineage, the downstream arms' held-out click AUC on the subsystem's impressions beside
    the generator's oracle (synthetic worlds), and the gates."""
    arms = sorted({arm for r in results for arm in r.downstream_auc})
    table = Table(
        title="keep run: impressions per day (click AUC: super-domain pre-training; "
        f"arms and oracle: {scenario})"
    )
    names = (
        "day",
        "rows in",
        "stored",
        "quarantined",
        "duplicates",
        "quarantine %",
        "samples",
        "click AUC",
        "lineage",
        *[f"{arm} AUC" for arm in arms],
        "oracle AUC",
        "model",
        "gates",
    )
    for name in names:
        left = name in ("day", "gates", "lineage", "model")
        table.add_column(name, justify="left" if left else "right")
    for r in results:
        imp = r.counts.get("impressions")
        cells = _count_cells(imp) if imp else ["-"] * 5
        gate = "[green]passed[/]" if r.ok else "[red]FAILED[/]"
        table.add_row(
            str(r.ds),
            *cells,
            f"{r.samples:,}" if r.samples is not None else "-",
            _auc(r.click_auc),
            r.lineage or "-",
            *[_auc(r.downstream_auc.get(arm)) for arm in arms],
            _auc(r.downstream_oracle_auc),
            r.downstream_model or "-",
            gate,
        )
    return table


if __name__ == "__main__":  # pragma: no cover
    app()

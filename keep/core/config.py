"""The one configuration object of the KEEP platform.

Settings are read, in increasing priority, from the defaults below, a YAML file
(``keep.yaml`` in the working directory, or the file named by ``KEEP_CONFIG``) and
environment variables ``KEEP_<SECTION>__<FIELD>`` (for example
``KEEP_SPARK__MASTER=spark://host:7077`` or ``KEEP_LAKE__ROOT=/data/lake``).

Every job receives a :class:`Settings` explicitly; no function body hard-codes a path,
a date or a seed. Tool-specific files (Airflow's environment, Feast's
``feature_store.yaml``) are generated from this object.

Relative paths are resolved against ``home`` (``KEEP_HOME``, default: the current
working directory), so one checkout can run several isolated pipelines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# The checkout / install root: set-up artefacts (Delta jars, the dags folder) live here,
# while data (lake, raw files, Airflow's database) lives under ``Settings.home``.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Section(BaseModel):
    """A settings section: an unknown key is an error (a typo must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid")


# A TCP port number.
Port = Annotated[int, Field(ge=1, le=65535)]


class SparkSettings(Section):
    """Where and how Spark runs. The same code scales out by changing ``master`` only."""

    master: str = "local[2]"
    # A Spark Connect server (``sc://host:port``) to run every job on instead of a Spark of
    # this process's own: one long-lived, warm JVM for every task of every day
    # (``keep spark-server``; docs/airflow.md, "The Spark server"). Unset: each process
    # starts its own Spark.
    remote: str | None = None
    app_name: str = "keep"
    driver_memory: str = "2g"
    # 2 cores: a handful of shuffle partitions; at scale, raise to ~2-3x total cores.
    shuffle_partitions: PositiveInt = 4
    # Folder holding the Delta Lake jars fetched once by ``scripts/setup.sh``.
    jars_dir: Path = PROJECT_ROOT / ".cache" / "jars"
    log_level: str = "WARN"
    # JVM options of Spark's driver and executors (and of the Spark server), after the
    # project's own (UTC time zone): a collector, JFR, heap dumps on OOM. Empty: the JVM's
    # defaults (G1 here; the serial collector saved no CPU, docs/benchmarks.md).
    java_options: str = ""
    # Any further ``spark.*`` settings, passed through verbatim.
    extra_conf: dict[str, str] = Field(default_factory=dict)


class LakeSettings(Section):
    """Locations of the raw landing zone and the Delta lake."""

    raw_root: Path = Path("var/raw")
    root: Path = Path("var/lake")


class IngestSettings(Section):
    """Rules of the ingest job (see docs/raw-format.md)."""

    # Known subsystems; an impression from any other scenario is quarantined.
    # ``browse`` is the Taobao behaviour log's scenario (docs/taobao.md).
    scenarios: list[str] = Field(
        default_factory=lambda: ["search", "feed", "video", "ads", "browse"]
    )
    # An event may arrive in the log of the day after it happened, up to this much late.
    allowed_lateness_minutes: NonNegativeInt = 60
    # Impression ids are deduplicated against this many earlier days of bronze.
    dedup_lookback_days: NonNegativeInt = 7
    # Raw bytes of a day per shuffle partition of the ingest job (at least
    # spark.shuffle_partitions partitions): bounds the rows one task sorts, so the job's
    # memory does not grow with the day (docs/raw-format.md, "Scale").
    raw_bytes_per_task: PositiveInt = 128 * 2**20
    # A raw line longer than this refuses the day's file before anything is read into the
    # lake (a stuck logger writing one endless line, a binary file landed by mistake).
    max_line_bytes: PositiveInt = 2**20


class ValidationSettings(Section):
    """Great Expectations gates."""

    # Fraction of a day's raw impression rows that may be quarantined before the gate fails.
    max_quarantine_rate: float = 0.10
    # Great Expectations project folder (Data Docs HTML lives under it).
    ge_root: Path = Path("var/great_expectations")
    # A lake gate collects a table's day of at most this many rows to pandas (Arrow, one
    # Spark job) and validates it with GX's pandas engine; larger days stay in Spark (GX's
    # Spark engine on a cached frame: bounded memory, a query or two per expectation).
    # The widest gated frame (gold.pretrain_samples, 17 columns) holds 0.4 KB a row in
    # pandas and the gate's process peaks about 0.9 KB a row above its base: 0.9 GB at a
    # 1 M-impression day, 1.3 GB at this limit. 0: always Spark.
    pandas_max_rows: NonNegativeInt = 1_500_000


class ScenarioSpec(Section):
    """One subsystem of the synthetic super-domain."""

    name: str
    traffic_share: float
    base_logit: float
    position_decay: float


def _default_scenarios() -> list[ScenarioSpec]:
    return [
        ScenarioSpec(name="search", traffic_share=0.35, base_logit=-2.4, position_decay=0.40),
        ScenarioSpec(name="feed", traffic_share=0.35, base_logit=-3.1, position_decay=0.20),
        ScenarioSpec(name="video", traffic_share=0.20, base_logit=-2.8, position_decay=0.25),
        # The sparse downstream subsystem: 10% of the traffic, ~10x fewer impressions per user.
        ScenarioSpec(name="ads", traffic_share=0.10, base_logit=-3.5, position_decay=0.50),
    ]


class GeneratorSettings(Section):
    """The synthetic super-domain (docs/generator.md). Its hash names the world."""

    seed: int = 7
    # First day of the world; dimension files of this day hold every user and item.
    epoch: dt.date = dt.date(2026, 1, 1)
    horizon_days: PositiveInt = 400
    n_users: PositiveInt = 5_000
    n_items: PositiveInt = 2_000
    new_users_per_day: NonNegativeInt = 25
    new_items_per_day: NonNegativeInt = 10
    n_categories: PositiveInt = 40
    n_brands: PositiveInt = 400
    latent_dim: PositiveInt = 16
    impressions_per_day: PositiveInt = 50_000
    scenarios: list[ScenarioSpec] = Field(default_factory=_default_scenarios)
    downstream_scenario: str = "ads"
    activity_sigma: float = 0.8
    popularity_exponent: float = 0.9
    item_spread: float = 0.6
    retrieval_sharpness: float = 1.0
    affinity_weight: float = 1.2
    click_noise_sd: float = 0.5
    drift: float = 0.03
    price_change_rate: float = 0.01
    # Where the truth (oracle probabilities, latent interests, world.json) is written:
    # never beside the raw logs, so no pipeline stage can read it by accident.
    truth_root: Path = Path("var/truth")
    # Processes that make a day's impression chunks side by side (a day of more than one
    # chunk of 500 k impressions only); the files are the same for any number.
    workers: PositiveInt = 2

    def world_dump(self) -> dict[str, Any]:
        """Everything that defines the world: not where its truth is written, nor how many
        processes write it."""
        return self.model_dump(mode="json", exclude={"truth_root", "workers"})

    def world_id(self) -> str:
        """Hash of :meth:`world_dump`: the world's name."""
        blob = json.dumps(self.world_dump(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class AirflowSettings(Section):
    """Airflow's own configuration is generated from these (see keep.flows.airflow_env)."""

    home: Path = Path("var/airflow")
    parallelism: PositiveInt = 2
    # Retries after an infrastructure error, this far apart (a failed gate or input a step
    # refuses is never retried: dags/, keep.flows.dag_support).
    retries: NonNegativeInt = 2
    retry_delay_s: NonNegativeInt = 300
    # Demo mode: the first step (land_raw) writes the day's raw files with the synthetic
    # generator. Off by default, so a deployment that forgets the flag never writes synthetic
    # files into a real landing zone: land_raw then only checks that the day's files landed.
    # scripts/demo.sh, the tests' settings and the benchmarks turn it on explicitly.
    demo_mode: bool = False
    # The metadata DB of the running services (`keep airflow up`, docs/airflow.md), as a
    # SQLAlchemy URL, e.g. postgresql+psycopg2://user:password@host:5432/airflow. None: a
    # private PostgreSQL that `keep airflow up` starts under <home>/postgres. Airflow's
    # processes read it from a 0600 file, never from their environment; `keep config` masks
    # its password (a SecretStr: never in a repr, a log or a traceback). `airflow dags test`
    # (the embedded demo path) keeps its SQLite DB.
    database_url: SecretStr | None = None
    # Port of that private PostgreSQL (127.0.0.1 only).
    postgres_port: Port = 54329
    # The API server (UI, REST API v2, the tasks' Execution API).
    api_host: str = "127.0.0.1"
    api_port: Port = 28080
    # None: Airflow's SimpleAuthManager with every user an admin, the one-machine default
    # (the API server listens on 127.0.0.1). Production: a real auth manager's class path,
    # configured through its own AIRFLOW__* settings (docs/airflow.md).
    auth_manager: str | None = None
    # LocalExecutor: tasks run on this machine. Several machines: CeleryExecutor or
    # KubernetesExecutor (docs/airflow.md says what else each needs).
    executor: str = "LocalExecutor"
    # A running task whose heartbeat stops this long (its process died) is failed by the
    # scheduler, then retried; a crashed scheduler's tasks are reset for a retry by the
    # next scheduler within about as long (its orphaned-task check runs this often).
    heartbeat_timeout_s: int = 120
    # `keep airflow up` also starts a Spark server (keep.lake.spark_server) and the tasks run
    # their Spark jobs on it: one warm JVM instead of one JVM start per Spark task. Ignored
    # when spark.remote already names a server. False: every task starts its own Spark.
    spark_server: bool = True
    # The scheduler of `keep airflow up` imports the libraries the tasks use once
    # (keep.flows.airflow_preload): its LocalExecutor forks every task process from it, so
    # each task starts with them loaded instead of importing them again (~2 CPU-s a task).
    preload_modules: bool = True


class AggregateSettings(Section):
    """Long-history state (silver) and training samples (gold); see docs/aggregation.md."""

    # Last N behaviours (clicks, carts, purchases) kept per user.
    sequence_length: PositiveInt = 50
    # Counter windows in days; every window's counts are kept per entity and day.
    windows: list[int] = Field(default_factory=lambda: [1, 7, 30, 365])
    # Smoothed click rate: (clicks + prior_strength * prior_ctr) / (impressions + prior_strength).
    prior_ctr: float = 0.05
    prior_strength: float = 20.0
    # Daily state snapshots older than this many days are deleted (backfills and
    # point-in-time joins can reach back this far). Daily counts are kept for the
    # longest window regardless, because the counters subtract the day leaving it.
    snapshot_retention_days: NonNegativeInt = 60
    # Fraction of non-clicked impressions kept in the samples; kept ones get weight 1/rate
    # so that weighted click rates stay calibrated. 1.0 keeps everything.
    negative_sample_rate: float = 1.0


class PretrainSettings(Section):
    """The multi-task pre-training model and its training loop (docs/pretrain.md)."""

    # Hashed embedding buckets: an id never seen in training still maps to a bucket.
    user_buckets: PositiveInt = 100_003
    item_buckets: PositiveInt = 50_021
    category_buckets: PositiveInt = 1_009
    brand_buckets: PositiveInt = 10_007
    scenario_buckets: PositiveInt = 17
    embedding_dim: PositiveInt = 16
    # Dimension of every exported knowledge vector (user, item, user x category).
    knowledge_dim: PositiveInt = 64
    hidden_dims: list[int] = Field(default_factory=lambda: [128, 64])
    batch_size: PositiveInt = 512
    # 3e-3 learns a young lineage faster but its user x category knowledge then drifts past
    # the knowledge gate's p99 threshold (measured: docs/pretrain.md).
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    epochs: PositiveInt = 1
    seed: int = 0
    # torch intra-op threads per process (divided by the ranks under torchrun). 1 by default:
    # on the shared 2-core machine a second OpenMP thread spin-waits against the reader
    # worker and other processes, measured 5-10x slower per step (docs/pretrain.md).
    threads: PositiveInt = 1
    # Reader worker processes decoding Delta batches while the model trains (0 = inline).
    reader_workers: NonNegativeInt = 1
    # Samples shuffled together (memory bound of the reader, in rows).
    shuffle_buffer: PositiveInt = 20_000
    # Checkpoints: one folder per lineage, one file per day; mid-run every N steps.
    checkpoint_root: Path = Path("var/checkpoints")
    checkpoint_every_steps: PositiveInt = 200
    # The held-out evaluation of a day scores a uniform sample of about this many of its
    # samples when it has more (AUC within about 0.002 at 200 k rows; a 1 M-row day's
    # evaluation costs a fifth). None: every sample.
    eval_max_rows: int | None = Field(default=200_000, gt=0)
    # Days a daily warm start trains on, ending with the new day (a sliding window; 1, the
    # default, measured better than 2 or 3 on a young lineage: docs/pretrain.md).
    warm_start_days: int = 1
    # Days of history a full retrain (new lineage) covers, ending with the day trained.
    full_retrain_days: PositiveInt = 7
    # Days on which the daily pipeline retrains from scratch (a new knowledge lineage)
    # instead of warm-starting: a planned change of the knowledge's meaning.
    full_retrain_on: list[dt.date] = Field(default_factory=list)


class DownstreamSettings(Section):
    """The downstream subsystem's own CTR model, its arms and training (docs/downstream.md)."""

    # The subsystem whose model this is: its impressions (gold.downstream_samples), labels
    # and in-scenario behaviours.
    scenario: str = "ads"
    # The downstream model's own hashed tables (it shares no parameters with pre-training).
    user_buckets: PositiveInt = 100_003
    item_buckets: PositiveInt = 50_021
    category_buckets: PositiveInt = 1_009
    brand_buckets: PositiveInt = 10_007
    embedding_dim: PositiveInt = 16
    hidden_dims: list[int] = Field(default_factory=lambda: [128, 64])
    # Hidden width of each plug-in projection (knowledge -> one hidden layer's offset).
    plugin_hidden: PositiveInt = 32
    max_seq_len: PositiveInt = 50
    # A sparse subsystem gives a few thousand rows a day: small batches and a few passes
    # per day, or the model barely moves (bench/quality.py, docs/downstream.md).
    batch_size: PositiveInt = 128
    learning_rate: float = 1e-3
    # Epochs over each day's rows (daily warm start).
    epochs: PositiveInt = 3
    weight_decay: float = 0.0
    # Every arm is trained once per seed; results are reported with intervals over seeds.
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    # Windows (days before ds) of the downstream-only counters (models/downstream/counters.py).
    counter_windows: list[int] = Field(default_factory=lambda: [1, 7, 30])
    # Pseudo-impressions of the smoothed click rate; its prior mean is fitted to the history.
    prior_strength: float = 20.0
    checkpoint_root: Path = Path("var/downstream")
    # Checkpoints kept per arm and seed by the daily step (the newest days).
    checkpoint_days_kept: int = 3
    # torch intra-op threads (1: see PretrainSettings.threads).
    threads: PositiveInt = 1
    # Arms the daily pipeline trains after each publication (bench/quality.py runs them all).
    daily_arms: list[str] = Field(default_factory=lambda: ["base", "keep"])
    # What a knowledge arm does when the knowledge lineage changes: "procrustes" (map the new
    # space onto the old on shared keys), "reinit" (plug-in back to zero) or "none"
    # (models/downstream/daily.py; the default is chosen by measurement, docs/downstream.md).
    lineage_switch: str = "procrustes"
    # --- the daily downstream DAG (dags/keep_downstream_ctr.py, docs/downstream.md) ---
    # Versions of the model, their cards and the live pointer per subsystem.
    registry_root: Path = Path("var/registry")
    # Share of the newest day's impressions (by impression id hash) kept out of training:
    # the model gate compares the candidate with the live version on them.
    gate_holdout_fraction: float = 0.2
    # The candidate's AUC may be at most this much below the live version's on the holdout.
    gate_auc_margin: float = 0.02
    # Predicted / observed clicks of the candidate on the holdout must lie within these.
    gate_calibration_bounds: tuple[float, float] = (0.5, 2.0)
    # Below this many clicks on the holdout, AUC and calibration are reported, not gated
    # (their noise would decide the gate).
    gate_min_clicks: int = 20
    # A run trains on every labelled day after the live version's last one, at most this many.
    max_catchup_days: int = 7


class KnowledgeSettings(Section):
    """Knowledge export and its gate (docs/knowledge.md)."""

    # Keys with an impression within this many days (ending with the snapshot day) are
    # recomputed; other known keys are carried forward from the previous snapshot.
    active_window_days: int = 7
    # Rows per batch everywhere in the export and the gate: the memory bound.
    export_batch_rows: PositiveInt = 50_000
    # Rows per forward pass of the model in the export (activations grow with rows x sequence).
    inference_batch_rows: PositiveInt = 4_096
    # One JSON manifest per snapshot: <manifest_root>/<lineage>/<ds>.json.
    manifest_root: Path = Path("var/knowledge")
    # Scratch space of the export (the day's state split into key buckets; removed after).
    spill_root: Path = Path("var/tmp/knowledge")
    # Gate thresholds (why each: docs/knowledge.md).
    min_coverage: float = 0.95
    # Median per-key |v_d| / |v_prev| of recomputed keys, within a lineage.
    norm_ratio_bounds: tuple[float, float] = (0.5, 2.0)
    # Per-key cosine distance to the previous snapshot's vector, within a lineage.
    max_drift_median: float = 0.35
    max_drift_p99: float = 1.2
    # The first N warm-started snapshots of a lineage (N previous snapshots or fewer) have
    # their drift and norm ratio reported but not gated: a model trained from scratch on
    # one day still moves a lot on the next (docs/knowledge.md).
    drift_warmup_snapshots: NonNegativeInt = 2
    # Not collapsed: std of pairwise cosines of a sample of mean-centred vectors, and the
    # share of the vectors' energy that varies between keys (E|v - mean|^2 / E|v|^2).
    min_pairwise_cosine_spread: float = 0.05
    min_variance_fraction: float = 0.001
    # Across lineages: mean k-nearest-neighbour overlap on shared keys.
    min_neighbour_overlap: float = 0.05
    neighbour_k: PositiveInt = 10
    # Keys sampled (by key hash, the same keys in every snapshot) for drift and norms ...
    gate_sample_rows: PositiveInt = 20_000
    # ... and, of those, for the pairwise checks (collapse, neighbours).
    pairwise_sample_rows: PositiveInt = 1_000


class MaintenanceSettings(Section):
    """The daily lake maintenance step, after publication (keep.flows.maintenance,
    docs/operations.md, "A year on one disk"). Retentions count pipeline days (``ds``),
    except VACUUM's, which is Delta's own (wall-clock hours since a file was removed)."""

    # Delta VACUUM: files removed from a table (and files no commit references, from killed
    # writers) are deleted once older than this. 7 days is Delta's default: readers of a
    # version older than that (time travel, a long-running reader) may fail.
    vacuum_retention_hours: NonNegativeInt = 168
    # Compaction: a partition with more than one file smaller than this is rewritten into
    # files of about this size (delta-rs optimize.compact).
    compact_target_mb: PositiveInt = 128
    # Impressions (bronze) older than this many days are dropped. None: kept forever (the
    # long history the platform exists for). Keep it above the longest counter window plus
    # ingest.dedup_lookback_days, or a full recomputation (`keep backfill`) cannot see them.
    bronze_days_kept: PositiveInt | None = None
    # Landed raw files (lake.raw_root) of days already ingested are deleted after this many
    # days (bronze and its quarantine hold every row; a re-ingest needs them, so not at
    # once). None: never deleted (the landing zone is someone else's to clean).
    raw_days_kept: PositiveInt | None = 14
    # Gold tables (samples, training sets, downstream serving features): days kept. A
    # backfill of older days recomputes them from bronze.
    gold_days_kept: PositiveInt = 60
    # Knowledge snapshots kept (days), besides the ones still in use: both online slots'
    # snapshots and the newest snapshot of every lineage in use (the pre-training lineage,
    # the live and previous online lineages, the live downstream models' lineages).
    knowledge_days_kept: PositiveInt = 14
    # Pre-training checkpoints (and downstream candidates) kept per lineage (days); the
    # newest checkpoint of every lineage in use is kept whatever its age.
    checkpoint_days_kept: PositiveInt = 7
    # Downstream model versions whose files are kept: the live one, the last N it can be
    # rolled back to, and the N newest (the registry keeps every version's card and row).
    model_versions_kept: PositiveInt = 5


class FeastSettings(Section):
    """The Feast feature store over the lake (feature_repo/, docs/feast.md)."""

    repo_path: Path = PROJECT_ROOT / "feature_repo"
    # feature_store.yaml and the registry / online store files are generated here.
    store_root: Path = Path("var/feast")
    project: str = "keep"
    online_store: str = "sqlite"  # or "redis"
    redis_connection: str = "127.0.0.1:6379"
    # Rows per online-store write batch (one SQLite transaction / Redis pipeline) during
    # publication; memory is about 2 KB x this, whatever the snapshot's size.
    publish_chunk_rows: PositiveInt = 50_000
    # A publication holds its slot for this long past its last written chunk. Publishers on
    # other hosts (same online store) wait for it; on this host the publication lock tells
    # a dead publisher from a live one at once. A publisher that finds its claim taken over
    # stops before its next chunk (docs/feast.md, "Concurrent publishers").
    publish_lease_s: PositiveInt = 300
    # Password of the Redis online store (an ACL user's, see redis_user). A secret: never
    # printed by `keep config`, never written to logs or task environments in clear; the
    # embedded redis-server (keep.store.redis_server) is started with it. Set it here, with
    # KEEP_FEAST__REDIS_PASSWORD, or through redis_password_file; never in redis_connection.
    redis_password: SecretStr | None = None
    # A file holding the password (a trailing newline is ignored; keep it mode 0600), read
    # when redis_password is not set. Airflow's tasks get the password this way.
    redis_password_file: Path | None = None
    # The ACL user the platform connects as ("default" = Redis' requirepass user).
    redis_user: str = "default"


class ServeSettings(Section):
    """The online scoring service, `keep serve` (serving/app.py, docs/serving.md)."""

    host: str = "127.0.0.1"
    port: Port = 8087
    # uvicorn worker processes (None: one per CPU core). Each loads the model and its own
    # store connections; scoring is CPU-bound Python, so processes -- not threads -- add
    # throughput (docs/serving.md).
    workers: int | None = None
    # torch intra-op threads of the scorer (1: a request is small; concurrency comes from
    # requests overlapping their store reads, not from splitting one forward pass).
    threads: PositiveInt = 1
    # The downstream subsystem whose live registered model is served (None: the
    # downstream scenario, downstream.scenario).
    subsystem: str | None = None
    # Largest candidate list of one request (a longer one is refused with 422).
    max_candidates: PositiveInt = 500
    # How often the service looks for a new live model version / publication (seconds).
    reload_interval_s: float = 2.0


class PipelineSettings(Section):
    """Dates of the default demo run."""

    start_ds: dt.date = dt.date(2026, 1, 1)
    end_ds: dt.date = dt.date(2026, 1, 3)
    # The scheduler's window for the daily DAG: from start_ds (a first unpause catches up
    # every day since then, in order) to this day (None: no end).
    schedule_end_ds: dt.date | None = None


class Settings(BaseSettings):
    """All settings of one KEEP deployment."""

    model_config = SettingsConfigDict(
        env_prefix="KEEP_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    home: Path = Field(default_factory=Path.cwd)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    aggregate: AggregateSettings = Field(default_factory=AggregateSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    downstream: DownstreamSettings = Field(default_factory=DownstreamSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = config_file()
        return (
            init_settings,
            env_settings,
            YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file),
        )

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        for section in (
            self.spark,
            self.lake,
            self.validation,
            self.airflow,
            self.generator,
            self.pretrain,
            self.knowledge,
            self.downstream,
            self.feast,
        ):
            for name, value in list(section):
                if isinstance(value, Path) and not value.is_absolute():
                    setattr(section, name, self.home / value)
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        """Load ``feast.redis_password`` from ``feast.redis_password_file`` (paths resolved)."""
        f = self.feast
        if f.redis_password is None and f.redis_password_file is not None:
            try:
                text = f.redis_password_file.read_text()
            except OSError as exc:
                raise ValueError(
                    f"feast.redis_password_file {f.redis_password_file}: {exc.strerror}"
                ) from None
            f.redis_password = SecretStr(text.removesuffix("\n").removesuffix("\r"))
        return self

    def fingerprint(self) -> str:
        """Short hash of the settings that change results (not paths), for lineage records."""
        payload: dict[str, Any] = {
            "ingest": self.ingest.model_dump(mode="json"),
            "world": self.generator.world_id(),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@?#]*:)[^/?#]*@")


def mask_password(url: str) -> str:
    """``url`` with its password (``scheme://user:password@host``) replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\g<head>***@", url)


_CONNECTION_PASSWORD = re.compile(r"(password=)[^,\n]*")


def mask_connection_string(text: str) -> str:
    """``text`` with every ``password=...`` of a Redis connection string (up to the next
    comma) replaced by ``password=***``; for messages that may quote one."""
    return _CONNECTION_PASSWORD.sub(r"\g<1>***", text)


def display_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able data for people (``keep config``): secrets masked
    (``feast.redis_password`` is a SecretStr, shown as ``**********``)."""
    data = settings.model_dump(mode="json")
    if settings.airflow.database_url is not None:
        url = settings.airflow.database_url.get_secret_value()
        data["airflow"]["database_url"] = mask_password(url)
    data["feast"]["redis_connection"] = mask_connection_string(data["feast"]["redis_connection"])
    return data


def config_file() -> Path:
    """The YAML settings file read (``KEEP_CONFIG``, default ``keep.yaml`` in the cwd)."""
    return Path(os.environ.get("KEEP_CONFIG", "keep.yaml"))


_SECRET_FIELDS = ("password", "database_url")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error on the settings as one line: each field (with the variable that
    sets it), what is wrong, the value given (never a secret's), and where to fix it."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err["loc"]]
        field = ".".join(loc) or "settings"
        env = "KEEP_" + "__".join(x.upper() for x in loc[:2]) if loc else "KEEP_*"
        given = ""
        if err.get("type") != "missing" and not any(s in field for s in _SECRET_FIELDS):
            given = f", got {_shown(err.get('input'))}"
        parts.append(f"{field} ({env}): {err['msg']}{given}")
    return (
        f"invalid settings: {'; '.join(parts)}. Fix {config_file()} or the KEEP_* variable "
        "(`keep config` prints the effective settings; the README's Configuration section)."
    )


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from file + environment, with explicit keyword overrides on top.

    Bad settings raise :class:`~keep.core.errors.ConfigError` with one line naming the field,
    the problem and where to fix it (not pydantic's multi-line report or a YAML traceback).
    """
    from keep.core.errors import ConfigError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(
            f"{config_file()} is not valid YAML ({problem}{where}): fix it, or point "
            "KEEP_CONFIG at another file."
        ) from None
    except (TypeError, AttributeError, ValueError):  # a YAML list where a mapping goes
        raise ConfigError(
            f"{config_file()} must be a mapping of sections (spark:, lake:, ...): see the "
            "README's Configuration section."
        ) from None

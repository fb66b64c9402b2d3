"""The one Spark factory: a SparkSession with Delta Lake, configured from Settings.

Delta's jars are fetched once from Maven Central by ``scripts/setup.sh`` into
``settings.spark.jars_dir``; afterwards Spark starts without any network access
(``spark.jars`` points at local files, no Ivy resolution at start-up).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from keep.core.config import Settings
from keep.core.errors import SetupError

SETUP_COMMAND = "./scripts/setup.sh"


# Paths a read lists in the driver before Spark lists them with a job (see spark_conf).
LISTING_PATHS_IN_DRIVER = 1024


def delta_artifact() -> str:
    """Maven artifact id of the Delta jar matching the installed pyspark and delta-spark.

    delta-spark publishes one artifact per Spark minor version
    (``delta-spark_<spark major.minor>_<scala>``).
    """
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    delta_version = importlib.metadata.version("delta-spark")
    return f"delta-spark_{spark_minor}_2.13-{delta_version}.jar"


def delta_jars(jars_dir: Path) -> list[Path]:
    """The local Delta jars, or a SetupError that names the set-up command."""
    expected = delta_artifact()
    if not (jars_dir / expected).is_file():
        raise SetupError(
            f"Delta Lake jar {expected} not found in {jars_dir}. "
            f"Run `{SETUP_COMMAND}` once (it fetches the jars from Maven Central)."
        )
    return sorted(jars_dir.glob("*.jar"))


def check_java() -> str:
    """Path of the java binary Spark will use, or a SetupError naming the fix."""
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else None
    found = str(java) if java and java.is_file() else shutil.which("java")
    if not found:
        raise SetupError(
            "Java 17+ is required by Spark but was not found (no JAVA_HOME, no `java` on PATH). "
            "Install it (Debian: `apt-get install -y openjdk-17-jre-headless`) "
            f"or run `{SETUP_COMMAND}`."
        )
    return found


def spark_conf(settings: Settings) -> dict[str, str]:
    """All Spark settings for a session, as a plain dict (also used to start clusters)."""
    s = settings.spark
    java_options = " ".join(filter(None, ["-Duser.timezone=UTC", s.java_options.strip()]))
    conf = {
        "spark.master": s.master,
        "spark.app.name": s.app_name,
        "spark.driver.memory": s.driver_memory,
        "spark.jars": ",".join(str(p) for p in delta_jars(s.jars_dir)),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.default.parallelism": str(s.shuffle_partitions),
        # Delta reconstructs table state with this many partitions; 50 by default.
        "spark.databricks.delta.snapshotPartitions": str(s.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": java_options,
        "spark.executor.extraJavaOptions": java_options,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.debug.maxToStringFields": "200",
        "spark.sql.sources.partitionOverwriteMode": "static",
        # Keep tables readable by delta-rs: no deletion vectors / row tracking by default.
        "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Tables are read as the Parquet files their Delta log names (keep.lake.spark_io):
        # listing them is one stat per file. Above this many paths Spark lists them with a
        # Spark job instead (32 by default: a 60-day table of a few files a day), which costs
        # 1-2 s per read here (bench/read_listing.py). On an object store with many
        # thousands of files per read, lower it in spark.extra_conf.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": str(LISTING_PATHS_IN_DRIVER),
        # A day's partition is written as about one file per 64 MB of shuffled rows
        # (spark.sql.adaptive.advisoryPartitionSizeInBytes), not one per shuffle partition:
        # adaptive execution merges small shuffle partitions up to that size, also inside
        # a persisted frame (ingest's classified rows). A small day is one file, so the
        # daily maintenance has nothing to compact and commits nothing; a delta-rs commit
        # would make Spark's next write rebuild the table's state (three Spark jobs,
        # 0.4-1.3 s a table: docs/benchmarks.md). Larger days still get one task per 64 MB.
        "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
        "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
    }
    conf.update(s.extra_conf)
    return conf


def is_remote(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect session (no JVM, no SparkContext here)."""
    return not hasattr(spark, "_jsc")


def get_spark(settings: Settings) -> SparkSession:
    """Return the process's SparkSession (created on first call) configured for Delta.

    With ``spark.remote`` set, a Spark Connect session to that server (which was started
    with this same configuration, see ``keep.lake.spark_server``): no JVM in this process.
    """
    if settings.spark.remote:
        session = SparkSession.builder.remote(settings.spark.remote).getOrCreate()
        # A client that dies (a killed task) takes its running operation with it: a
        # reattachable execution would go on in the server for a while after its client
        # went, racing the task's retry for the same partitions.
        session.client.disable_reattachable_execute()
        return session
    check_java()
    # Python workers (and, on a cluster, executors) run this very interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if settings.spark.master.startswith("local"):
        # Local mode talks to itself only: stay on loopback whatever the hostname resolves to.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark.log_level)
    return spark

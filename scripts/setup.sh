#!/usr/bin/env bash
# Idempotent set-up of a KEEP checkout: Python environment + Delta Lake jars.
#
#   ./scripts/setup.sh          # creates .venv (if needed), installs the project, fetches jars
#
# After it ran once, Spark starts with no network access. Re-running is cheap: every
# step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${KEEP_VENV:-$ROOT/.venv}
JARS=${KEEP_SPARK__JARS_DIR:-$ROOT/.cache/jars}
PY=${KEEP_PYTHON:-python3}

say() { printf '\033[1m[keep setup]\033[0m %s\n' "$*"; }

need_apt=()
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# Redis online store (Feast): tests start a private redis-server (keep/store/redis_server.py).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Metadata DB of `keep airflow up`: a private PostgreSQL run from Debian's binaries
# (keep/store/postgres_server.py), found on PATH or in /usr/lib/postgresql/<major>/bin.
have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  for bin in /usr/lib/postgresql/*/bin/initdb; do [ -x "$bin" ] && return 0; done
  return 1
}
have_initdb || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_apt[*]} (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "keep setup: missing ${need_apt[*]}; install them (Debian: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

# 1. Python environment (uv makes this fast; it is itself installed from PyPI).
if ! command -v uv >/dev/null 2>&1; then
  say "installing uv"
  "$PY" -m pip install -q --disable-pip-version-check uv
fi
UV="$(command -v uv || echo "$PY -m uv")"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  $UV venv -q -p "$PY" "$VENV"
fi
# Exactly the versions of uv.lock (the ones CI tested): `uv sync --frozen` installs from the
# lock file without re-resolving and removes what the lock does not list. After changing a
# dependency in pyproject.toml, run `uv lock` and commit uv.lock with it.
stamp="$VENV/.keep-installed"
if [ ! -f "$stamp" ] || [ uv.lock -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing the locked dependencies and the project (first time: several minutes)"
  UV_PROJECT_ENVIRONMENT="$VENV" $UV sync -q --frozen --extra dev
  touch "$stamp"
fi
# Byte-compile every installed module once. Without .pyc files each process compiles what it
# imports from source whenever it cannot write them (PYTHONDONTWRITEBYTECODE=1, read-only
# installs): about 15 s for torch and 35 s for feast, in every task and test process.
if [ ! -f "$VENV/.keep-bytecode" ] || [ "$stamp" -nt "$VENV/.keep-bytecode" ]; then
  say "byte-compiling the environment (once per install, about a minute)"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # Packages' own test folders are skipped (never imported at run time; a fifth of the
  # sources). Some packages ship invalid files: compileall reports them, never mind.
  PYTHONDONTWRITEBYTECODE= "$VENV/bin/python" -m compileall -q -j 0 -x 'site-packages/.+/tests?/' "$site" \
    >/dev/null 2>&1 || true
  touch "$VENV/.keep-bytecode"
fi

# 2. Delta Lake jars matching the installed pyspark/delta-spark, from Maven Central.
read -r SPARK_MINOR DELTA_VERSION < <("$VENV/bin/python" -c \
  'import importlib.metadata as m, pyspark; print(".".join(pyspark.__version__.split(".")[:2]), m.version("delta-spark"))')
ARTIFACT="delta-spark_${SPARK_MINOR}_2.13"
if [ ! -f "$JARS/$ARTIFACT-$DELTA_VERSION.jar" ]; then
  say "fetching io.delta:$ARTIFACT:$DELTA_VERSION and its Delta dependencies into $JARS"
  mkdir -p "$JARS"
  tmp=$(mktemp -d)
  sed -e "s/@ARTIFACT@/$ARTIFACT/" -e "s/@DELTA_VERSION@/$DELTA_VERSION/g" \
    scripts/delta-jars.pom.xml > "$tmp/pom.xml"
  # Only Delta's own jars: Spark already ships Hadoop, Parquet, Jackson and Scala.
  mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$JARS" -DexcludeTransitive=true -DincludeScope=runtime
  rm -rf "$tmp"
fi
say "ready: $VENV, jars in $JARS"

"""The floors hold at run time, not only in `lint-imports`' static graph.

Each check imports modules in a fresh interpreter and lists which heavy packages (and which
platform modules) that import pulled in: a training image must not need Spark, and
``feast apply`` must not import the platform (docs/architecture.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keep.core.config import Settings
from keep.store.feast_repo import REPO_MODULES, feast_env
from tests.conftest import REPO, make_settings

HEAVY = ("pyspark", "delta", "torch", "feast", "airflow", "great_expectations")

# Runs in the fresh interpreter: import the modules named in argv[1] (a JSON list), with
# argv[2] prepended to sys.path (Feast imports a repo's modules from the repo folder), and
# print which packages and platform modules are loaded afterwards.
_IMPORT_AND_LIST = """
import importlib, json, sys
modules, path = json.loads(sys.argv[1]), sys.argv[2]
if path:
    sys.path.insert(0, path)
for name in modules:
    importlib.import_module(name)
loaded = sorted(sys.modules)
print(json.dumps({
    "top": sorted({m.split(".")[0] for m in loaded}),
    "platform": [m for m in loaded if m.split(".")[0] in
                 ("keep", "models", "spark_jobs", "serving", "dags")],
}))
"""


def _import_fresh(
    modules: list[str], *, path: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_AND_LIST, json.dumps(modules), str(path or "")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, list[str]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _modules_of(package: str) -> list[str]:
    folder = REPO.joinpath(*package.split("."))
    return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("architecture"))


def test_pretraining_imports_no_spark() -> None:
    """Every module of models.pretrain (model, reader, training, export) imports without
    pyspark or Feast: samples and knowledge reach training through Delta and Arrow."""
    modules = _modules_of("models.pretrain")
    assert "models.pretrain.multitask" in modules and "models.pretrain.export" in modules
    loaded = _import_fresh(modules)
    assert "torch" in loaded["top"]  # the imports did happen
    assert not {"pyspark", "delta", "feast", "spark_jobs"} & set(loaded["top"])


def test_feature_repo_imports_only_core_and_feast(settings: Settings) -> None:
    """What `feast apply` executes: each declaration module of feature_repo/, imported the
    way Feast imports it (from the repo folder), loads Feast and keep.core only."""
    import os

    env = {**os.environ, **feast_env(settings)}
    loaded = _import_fresh(list(REPO_MODULES), path=REPO / "feature_repo", env=env)
    assert "feast" in loaded["top"]
    # (Feast 0.67 itself imports torch and pandas; the repo adds nothing heavy of its own.)
    assert not {"pyspark", "delta", "airflow", "great_expectations"} & set(loaded["top"])
    outside_core = [
        m
        for m in loaded["platform"]
        if m not in ("keep", "keep.core") and not m.startswith("keep.core.")
    ]
    assert outside_core == []


def test_core_imports_nothing_heavy() -> None:
    loaded = _import_fresh(_modules_of("keep.core"))
    assert not set(HEAVY) & set(loaded["top"])
    assert not {"pandas", "deltalake"} & set(loaded["top"])  # (pyarrow itself loads numpy)


def test_steps_and_dag_parse_stay_light() -> None:
    """The step mapping (what each DAG task runs) imports its jobs, gates and models only
    when a step runs."""
    loaded = _import_fresh(["keep.flows.pipeline"])
    assert not set(HEAVY) & set(loaded["top"])
    assert not {"spark_jobs", "models", "serving"} & set(loaded["top"])

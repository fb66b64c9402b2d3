"""The Feast feature store over the lake: configuration and ``feast apply``.

``feature_repo/`` holds the Feast repository in Feast's own layout (``feature_store.yaml``
with ``${KEEP_FEAST_*}`` variables; entities, sources, views and services in Python). This
module ties it to the project's :class:`~keep.core.config.Settings`:

* :func:`feast_env` -- the variables that ``feature_store.yaml`` and the repo read, so that
  ``cd feature_repo && env $(...) feast apply`` and :func:`get_store` see the same store;
* :func:`get_store` / :func:`apply_repo` -- a ``FeatureStore`` for a Settings, and
  ``feast apply`` run in-process;
* :func:`shell_exports` -- the same variables as shell ``export`` lines, for Feast's CLI;
* :func:`redis_connection_string` -- Feast's Redis connection string with the credentials of
  ``feast.redis_password`` / ``feast.redis_user``. Only :func:`repo_config` puts it into a
  Feast config; the variables above never hold the password.

Names of views, slots and services: ``keep.core.feast_names``. Publication of knowledge
into the online store: ``keep.store.publication``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from keep.core.config import Settings, mask_connection_string
from keep.core.errors import InputError, SetupError
from keep.store.redis_server import feast_connection_string

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

log = logging.getLogger(__name__)

# The declaration modules of feature_repo/ (feast imports them; we re-import them fresh).
REPO_MODULES: tuple[str, ...] = ("entities", "data_sources", "features", "feature_services")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
YAML_FOR_STORE = {"sqlite": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


@contextlib.contextmanager
def _typeguard_off() -> Iterator[None]:
    """Within: typeguard's ``@typechecked`` returns what it decorates unchanged, as it does
    when Python runs optimised (``-O``), typeguard's documented production mode."""
    import typeguard  # a dependency of feast

    original = typeguard.typechecked

    def passthrough(target: Any = None, **_: Any) -> Any:
        return target if target is not None else (lambda t: t)

    typeguard.typechecked = passthrough  # type: ignore[assignment]
    try:
        yield
    finally:
        typeguard.typechecked = original


def import_feast(attempts: int = 3) -> None:
    """Import ``feast`` once per process, quickly and robustly.

    Feast decorates ~20 classes with typeguard's ``@typechecked``, which re-parses and
    recompiles the source of ~240 functions at import time: 10-20 s in every process that
    imports Feast (each publication, each serving worker, each test process), for run-time
    type checks of Feast's own arguments, which typeguard documents as a development aid
    (a no-op under ``python -O``). Feast is imported with that instrumentation off; Feast's
    own validation of its objects is unchanged.

    That parse is also what can fail on CPython 3.11 (before 3.11.8) with ``SystemError: AST
    constructor recursion depth mismatch`` when the process already runs other threads and
    finalizers (the Spark gateway, GX and torch of an Airflow task process; CPython issue
    gh-106905). Should it happen anyway, the import is retried from scratch, with the
    garbage collector paused during it.
    """
    if "feast.feature_store" in sys.modules:
        return
    for attempt in range(1, attempts + 1):
        enabled = gc.isenabled()
        gc.disable()
        try:
            with _typeguard_off():
                import feast.feature_store  # noqa: F401

            return
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc) or attempt == attempts:
                raise
            log.warning("importing feast failed (%s); retrying (%d/%d)", exc, attempt, attempts)
            for name in [m for m in sys.modules if m == "feast" or m.startswith("feast.")]:
                del sys.modules[name]
        finally:
            if enabled:
                gc.enable()


import_feast()


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment for Feast's CLI and for the repo's Python declarations.

    ``feature_store*.yaml`` reads ``${KEEP_FEAST_PROJECT}``, ``${KEEP_FEAST_REGISTRY}``,
    ``${KEEP_FEAST_ONLINE_PATH}``, ``${KEEP_FEAST_REDIS}``; the declarations read the lake root,
    counter windows and knowledge dimension. ``FEAST_FS_YAML_FILE_PATH`` selects the yaml
    of the configured online store, so ``feast apply`` / ``feast serve`` need no flags.
    ``KEEP_FEAST_REDIS`` is ``feast.redis_connection`` without credentials: the password
    is added by :func:`repo_config` only (:func:`redis_connection_string`).
    """
    f = settings.feast
    return {
        "KEEP_FEAST_PROJECT": f.project,
        "KEEP_FEAST_REGISTRY": str(f.store_root / "registry.db"),
        "KEEP_FEAST_ONLINE_PATH": str(f.store_root / "online.db"),
        # Validated: a password written into redis_connection is refused.
        "KEEP_FEAST_REDIS": feast_connection_string(f.redis_connection, password=None),
        "KEEP_FEAST_LAKE_ROOT": str(settings.lake.root),
        "KEEP_FEAST_WINDOWS": ",".join(str(w) for w in settings.aggregate.windows),
        "KEEP_FEAST_KNOWLEDGE_DIM": str(settings.pretrain.knowledge_dim),
        "FEAST_FS_YAML_FILE_PATH": str(feature_store_yaml(settings)),
    }


def feature_store_yaml(settings: Settings) -> Path:
    kind = settings.feast.online_store
    if kind not in YAML_FOR_STORE:
        raise InputError(
            f"settings.feast.online_store is {kind!r}; use one of {sorted(YAML_FOR_STORE)}"
        )
    return settings.feast.repo_path / YAML_FOR_STORE[kind]


def redis_connection_string(settings: Settings, address: str | None = None) -> str:
    """Feast's Redis ``connection_string`` for ``settings``: ``address`` (default
    ``feast.redis_connection``) plus ``feast.redis_user`` / ``feast.redis_password`` when a
    password is set. It holds the password: give it to Feast, never show it
    (:func:`keep.core.config.mask_connection_string`)."""
    f = settings.feast
    # An empty password (e.g. KEEP_FEAST__REDIS_PASSWORD=) means none.
    password = f.redis_password.get_secret_value() if f.redis_password else None
    return feast_connection_string(
        f.redis_connection if address is None else address, password=password, user=f.redis_user
    )


def repo_config(settings: Settings, **online_overrides: Any) -> RepoConfig:
    """Feast's RepoConfig from the repo's yaml, variables substituted from the settings.

    The same file the CLI reads; substitution is strict here (a missing variable is an
    error, where the CLI would keep the literal ``${...}``). A Redis online store gets the
    credentials of the settings (:func:`redis_connection_string`); errors never show them.
    """
    from feast.repo_config import RepoConfig
    from pydantic import ValidationError

    path = feature_store_yaml(settings)
    env = feast_env(settings)

    def substitute(match: re.Match[str]) -> str:
        if match.group(1) not in env:
            raise SetupError(
                f"{path} uses ${{{match.group(1)}}}, which keep.store.feast_repo.feast_env does not set"
            )
        return env[match.group(1)]

    lines = path.read_text().splitlines()
    text = "\n".join(
        line if line.lstrip().startswith("#") else _VARIABLE.sub(substitute, line) for line in lines
    )
    raw = yaml.safe_load(text)
    online = dict(raw["online_store"])
    if online.get("type") == "redis":
        online["connection_string"] = redis_connection_string(
            settings, str(online.get("connection_string", settings.feast.redis_connection))
        )
    raw["online_store"] = {**online, **online_overrides}
    try:
        config = RepoConfig(**raw)
    except ValidationError as exc:
        message = mask_connection_string(str(exc))
        if settings.feast.redis_password:
            message = message.replace(settings.feast.redis_password.get_secret_value(), "***")
        raise SetupError(f"{path}: invalid Feast configuration: {message}") from None
    config.repo_path = settings.feast.repo_path
    return config


def get_store(settings: Settings, **online_overrides: Any) -> FeatureStore:
    """A FeatureStore for ``settings`` (registry and online store under feast.store_root)."""
    from feast import FeatureStore

    settings.feast.store_root.mkdir(parents=True, exist_ok=True)
    return FeatureStore(
        repo_path=str(settings.feast.repo_path), config=repo_config(settings, **online_overrides)
    )


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def apply_repo(settings: Settings) -> FeatureStore:
    """``feast apply`` of feature_repo/ for ``settings``, in-process; returns the store.

    Objects removed from the repo are removed from the registry (like the CLI). The repo's
    modules are imported afresh each time, so several settings can be applied in one process.
    """
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    store = get_store(settings)
    repo_path = settings.feast.repo_path
    with _environment(feast_env(settings)):
        for name in REPO_MODULES:
            sys.modules.pop(name, None)
        # Feast names the repo's modules relative to the working directory (its CLI chdirs
        # into the repo); do the same so that `from features import ...` is one module.
        cwd = Path.cwd()
        os.chdir(repo_path)
        sys.path.insert(0, str(repo_path))
        try:
            repo = parse_repo(repo_path)
        finally:
            sys.path.remove(str(repo_path))
            os.chdir(cwd)
            for name in REPO_MODULES:
                sys.modules.pop(name, None)
    from keep.store.serving_features import ensure_serving_tables

    # The serving views' sources exist (empty) before the first model is registered, so a
    # plain `feast materialize` over every online view works from the start.
    ensure_serving_tables(settings)
    with contextlib.redirect_stdout(sys.stderr):  # Feast prints its diff; keep stdout clean
        apply_total_with_repo_instance(
            store, settings.feast.project, store.registry, repo, skip_source_validation=False
        )
    return get_store(settings)


def shell_exports(settings: Settings | None = None) -> str:
    """``export`` lines of :func:`feast_env` (settings from keep.yaml / KEEP_* if None).

    ``eval "$(.venv/bin/python -c 'from keep.store.feast_repo import shell_exports as s; print(s())')"``
    then ``cd feature_repo && feast apply`` / ``feast serve``.
    """
    import shlex

    from keep.core.config import load_settings

    env = feast_env(settings or load_settings())
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())

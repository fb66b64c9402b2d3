"""Every Feast name of the platform, and what ``feature_repo/`` reads from the settings.

The feature repository (``feature_repo/``, read by ``feast apply``), publication
(``keep.store.publication``), training sets and the online scorer all name views, slots,
features and services through the functions here, so a name is spelled once. This module
imports only the standard library and ``keep.core``: ``feast apply`` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from keep.core.errors import SetupError
from keep.core.tables import LINEAGE, STAT_PREFIX, TableSpec, window_columns

SLOTS: tuple[str, str] = ("blue", "green")
# See feature_repo/features.py for why these TTLs.
KNOWLEDGE_TTL = timedelta(days=3)
STATS_TTL = timedelta(days=1)
FEATURE_SERVICE = "downstream_ctr_v1"
# The lineage entity: the offline knowledge views are keyed by it as well, so that a
# point-in-time join asks for one lineage and gets exactly that lineage's vectors while
# several lineages coexist in the knowledge tables. Its join key is the knowledge tables'
# own lineage column, read unrenamed (the online slot views are NOT keyed by it: a slot
# holds one snapshot of one lineage, named by the publication pointer).
LINEAGE_ENTITY = "lineage"
LINEAGE_JOIN_KEY = LINEAGE


def knowledge_columns(entity: str) -> dict[str, str]:
    """Knowledge table column -> feature name (prefixed like the gold samples' columns).

    The lineage column is not renamed: it is the join key :data:`LINEAGE_JOIN_KEY` of the
    offline knowledge views (a source column can have only one name in Feast).
    """
    p = STAT_PREFIX[entity]
    return {
        "vector": f"{p}knowledge",
        "recomputed": f"{p}recomputed",
        "snapshot_ds": f"{p}snapshot_ds",
    }


def stats_columns(entity: str, windows: list[int]) -> dict[str, str]:
    """Stats table column -> feature name, e.g. clicks_7d -> u_clicks_7d."""
    p = STAT_PREFIX[entity]
    return {c: p + c for c in window_columns(windows)}


def knowledge_view_name(entity: str) -> str:
    """The offline knowledge view of ``entity`` (training sets)."""
    return f"{entity}_knowledge_fv"


def slot_view_name(entity: str, slot: str) -> str:
    """The online slot view of ``entity`` (``slot`` in :data:`SLOTS`)."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; slots are {SLOTS}")
    return f"{entity}_knowledge_{slot}_fv"


def stats_view_name(entity: str) -> str:
    return f"{entity}_stats_fv"


def serving_view_name(entity: str) -> str:
    """The online view of the downstream model's own features of ``entity`` (user, item)."""
    return f"downstream_{entity}_fv"


def serving_feature(entity: str) -> str:
    """The one (packed, bytes) feature of :func:`serving_view_name`."""
    return f"downstream_{entity}_features"


def vector_feature(entity: str) -> str:
    """Name of the vector feature of ``entity``'s knowledge views."""
    return knowledge_columns(entity)["vector"]


# --------------------------------------------------------------------------- repo parameters


@dataclass(frozen=True)
class RepoParams:
    """What the repo's declarations need from the settings (passed through the environment)."""

    lake_root: Path
    windows: list[int]
    knowledge_dim: int


def repo_params(env: Mapping[str, str] | None = None) -> RepoParams:
    """Read :class:`RepoParams` from the environment set by :func:`feast_env`."""
    env = os.environ if env is None else env
    missing = [
        k
        for k in ("KEEP_FEAST_LAKE_ROOT", "KEEP_FEAST_WINDOWS", "KEEP_FEAST_KNOWLEDGE_DIM")
        if not env.get(k)
    ]
    if missing:
        raise SetupError(
            f"feature_repo needs {', '.join(missing)}: run Feast with the project's environment, "
            "i.e. the exports of keep.store.feast_repo.shell_exports() (docs/feast.md), or use "
            "keep.store.feast_repo.apply_repo(settings)"
        )
    return RepoParams(
        lake_root=Path(env["KEEP_FEAST_LAKE_ROOT"]),
        windows=[int(w) for w in env["KEEP_FEAST_WINDOWS"].split(",") if w],
        knowledge_dim=int(env["KEEP_FEAST_KNOWLEDGE_DIM"]),
    )


def source_table_path(params: RepoParams, spec: TableSpec) -> str:
    """Absolute path of a lake table (same layout as keep.lake.delta.table_path)."""
    return str(params.lake_root / spec.layer / spec.table)

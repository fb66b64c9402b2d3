"""How the suite spreads over xdist workers (a pytest plugin, registered by tests/conftest.py).

Every test that uses the in-process SparkSession (the ``spark`` fixture, directly or through
another fixture) joins the xdist group ``spark``, and ``--dist loadgroup`` (pyproject's
addopts) runs a group on one worker: one JVM started and warmed up (JIT) for all of them, not
one per worker. Largest units are scheduled first, so the other worker takes the rest, slow
tests (``@pytest.mark.slow``) before the others.

xdist 3.8 names a group by a suffix on the test's node id, which pytest 9.2 no longer lets it
set (pytest-xdist issue #1386: the groups are silently ignored); so each worker records the
groups it collected in pytest's cache and the controller's scheduler (xdist's public
``pytest_xdist_make_scheduler`` hook) reads them from there. Without the cache plugin
(``-p no:cacheprovider``) or with another ``--dist`` mode, xdist's own scheduler is used.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

GROUPS_CACHE_KEY = "keep/xdist-groups"
SPARK_GROUP = "spark"


def _group_name(mark: pytest.Mark) -> str:
    """The group an ``xdist_group`` mark names, as xdist reads it (positional or ``name=``)."""
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long tests first (in collection order otherwise): the short ones then fill both
    # workers to the end, instead of one long test running alone at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(SPARK_GROUP))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and getattr(config, "cache", None) is not None:
        groups = {
            item.nodeid: "_".join(sorted(_group_name(m) for m in marks))
            for item in items
            if (marks := list(item.iter_markers("xdist_group")))
        }
        config.cache.set(f"{GROUPS_CACHE_KEY}/{worker}", groups)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup" or getattr(config, "cache", None) is None:
        return None  # xdist's own scheduler
    from xdist.scheduler import LoadScopeScheduling

    cache = config.cache

    class GroupScheduling(LoadScopeScheduling):
        """xdist's ``loadgroup``: a group is one unit of work, every other test its own."""

        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # read once, after every worker collected
                self.groups = {}
                for node in self.nodes:
                    key = f"{GROUPS_CACHE_KEY}/{node.gateway.id}"
                    self.groups.update(cache.get(key, {}))
            group = self.groups.get(nodeid)
            return f"@group:{group}" if group else nodeid

    return GroupScheduling(config, log)

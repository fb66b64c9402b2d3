"""Concurrent publishers: on one host the publication lock refuses the second one; on two
hosts sharing one online store, the pointer's compare-and-set and the writer's lease let
exactly one win, and the other fails with a clear message before anything of it goes live.

"Two hosts" are two processes with their own Feast repository and lock folder
(``feast.store_root``) and the same Redis, as two Airflow workers on two machines would be.
Expected values are the vectors the test wrote to the lake.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from keep.core.config import Settings
from keep.core.errors import KeepError
from keep.store.feast_repo import apply_repo
from keep.store.publication import live_snapshot, publish_knowledge, rollback
from tests.keep.store.feast_data import write_all_stats, write_snapshot
from tests.keep.store.test_publication import assert_serves

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
SPAWN = multiprocessing.get_context("spawn")  # delta-rs' runtime refuses a forked child


def _publish_at_the_barrier(settings: Settings, ds: dt.date, barrier: Any, results: Any) -> None:
    """Child process ("a host"): wait for the other one, then publish ``ds``, pausing after
    the first chunk so that the two publications overlap whichever host is faster."""
    import time

    paused = False

    def on_chunk(entity: str, rows: int) -> None:
        nonlocal paused
        if not paused:
            paused = True
            time.sleep(10)

    barrier.wait(timeout=120)
    try:
        info = publish_knowledge(settings, ds, "L1", gate=True, on_chunk=on_chunk)
        results.put((ds.isoformat(), "published", info["slot"]))
    except KeepError as exc:
        results.put((ds.isoformat(), type(exc).__name__, str(exc)))


@pytest.mark.slow  # two fresh Python processes that import Feast (~15 s each)
@pytest.mark.parametrize("feast_settings", ["redis"], indirect=True)
def test_two_hosts_race_and_exactly_one_publication_wins(
    feast_settings: Settings, tmp_path: Path
) -> None:
    snapshots = {ds: write_snapshot(feast_settings, "L1", ds, n=40) for ds in (D1, D2)}
    for ds in (D1, D2):
        write_all_stats(feast_settings, ds)
    hosts = {}
    for ds, name in ((D1, "host-a"), (D2, "host-b")):
        host = feast_settings.model_copy(deep=True)
        host.feast.store_root = tmp_path / name
        apply_repo(host)
        hosts[ds] = host

    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    children = [
        SPAWN.Process(target=_publish_at_the_barrier, args=(hosts[ds], ds, barrier, results))
        for ds in (D1, D2)
    ]
    for child in children:
        child.start()
    outcomes = sorted(results.get(timeout=300) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0

    won = [ds for ds, what, _ in outcomes if what == "published"]
    lost = [(ds, what, message) for ds, what, message in outcomes if what != "published"]
    assert len(won) == 1 and len(lost) == 1, outcomes
    _, kind, message = lost[0]
    assert kind == "PublicationConflict", message
    assert "another publication" in message or "another publisher" in message, message
    winner = dt.date.fromisoformat(won[0])
    live = live_snapshot(hosts[D1])
    assert live is not None and live["snapshot_ds"] == winner.isoformat()
    # Every key is the winner's, exactly: nothing of the loser reached the slot.
    assert_serves(hosts[winner], snapshots[winner], winner)

    # The losing host publishes once the winner is done: it goes live as usual.
    loser = D2 if winner == D1 else D1
    assert publish_knowledge(hosts[loser], loser, "L1", gate=True)["slot"] == "green"
    assert_serves(hosts[D1], snapshots[loser], loser)


def _publish_slowly(settings: Settings, started: Any) -> None:
    """Child process: publish day 2, pausing after its first chunk (holding the lock)."""
    import time

    def on_chunk(entity: str, rows: int) -> None:
        if not started.is_set():
            started.set()
            time.sleep(8)

    publish_knowledge(settings, D2, "L1", gate=True, on_chunk=on_chunk)


@pytest.mark.slow  # the slow publisher is a fresh Python process (~15 s to import Feast)
@pytest.mark.parametrize("feast_settings", ["sqlite"], indirect=True)
def test_a_second_publisher_on_the_same_host_is_refused(feast_settings: Settings) -> None:
    s = feast_settings
    first = write_snapshot(s, "L1", D1, n=40)
    second = write_snapshot(s, "L1", D2, n=40)
    for ds in (D1, D2):
        write_all_stats(s, ds)
    apply_repo(s)
    publish_knowledge(s, D1, "L1", gate=True)

    started = SPAWN.Event()
    child = SPAWN.Process(target=_publish_slowly, args=(s, started))
    child.start()
    try:
        assert started.wait(timeout=120), "the child never started publishing"
        with pytest.raises(KeepError, match="another publication or rollback is running"):
            publish_knowledge(s, D1, "L1", gate=True)
        with pytest.raises(KeepError, match="another publication or rollback is running"):
            rollback(s)
        assert_serves(s, first, D1)  # meanwhile the old snapshot is served, whole
    finally:
        child.join(timeout=120)
    assert child.exitcode == 0
    assert_serves(s, second, D2)

"""Time contracts (DESIGN.md, Contracts: Time).

All timestamps are UTC. Day ``d`` is ``[d 00:00, d+1 00:00)`` UTC. State and knowledge as of
the end of ``d`` carry ``event_timestamp = d+1 00:00 UTC``, so Feast's point-in-time join
gives a sample of day ``d+1`` exactly the state of the end of ``d``.
"""

from __future__ import annotations

import datetime as dt

from keep.core.errors import InputError


def day_start(ds: dt.date) -> dt.datetime:
    """``ds`` 00:00 UTC: the first instant of the day (a sample's point in time)."""
    return dt.datetime(ds.year, ds.month, ds.day, tzinfo=dt.UTC)


def end_of_day(ds: dt.date) -> dt.datetime:
    """``event_timestamp`` of state or knowledge as of the end of ``ds`` (``ds + 1`` 00:00 UTC)."""
    return day_start(ds) + dt.timedelta(days=1)


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from ``start`` through ``end``, in order; a reversed range is an error."""
    if end < start:
        raise InputError(f"end {end} is before start {start}: give the earlier day first")
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]

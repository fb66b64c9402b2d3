"""The raw landing format: where a day's files are (reading them: ``keep.lake.raw_reader``).

Layout (see docs/raw-format.md)::

    <raw_root>/<source>/ds=YYYY-MM-DD/<any name>.{jsonl,jsonl.gz,csv,csv.gz,parquet}

with ``source`` one of ``impressions``, ``users``, ``items``. JSON lines is the
canonical format; CSV (with a header line) and Parquet are accepted too.

Each source's fields are ``keep.core.tables.RAW_FIELDS``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from keep.core.config import Settings

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".csv.gz", ".parquet")


def day_dir(settings: Settings, source: str, ds: dt.date) -> Path:
    return settings.lake.raw_root / source / f"ds={ds.isoformat()}"


def day_files(settings: Settings, source: str, ds: dt.date) -> list[Path]:
    """The day's raw files of ``source``, sorted by name (hidden and temp files ignored)."""
    folder = day_dir(settings, source, ds)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith((".", "_")) and p.name.endswith(SUFFIXES)
    )

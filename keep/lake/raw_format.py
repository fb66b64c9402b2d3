"""The raw landing format: where a day's files are (reading them: ``keep.lake.raw_reader``).

Layout (see docs/raw-format.md)::

    <raw_root>/<source>/ds=YYYY-MM-DD/<any name>.{jsonl,jsonl.gz,csv,csv.gz,parquet}

with ``source`` one of ``impressions``, ``users``, ``items``. JSON lines is the
canonical format; CSV (with a header line) and Parquet are accepted too.

Each source's fields are ``keep.core.tables.RAW_FIELDS``.
"""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from keep.core.config import Settings
from keep.core.errors import InputError

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


_CHUNK = 4 * 2**20
_PARQUET_MAGIC = b"PAR1"


def _chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes (decompressed for ``.gz``), in chunks."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def check_file(path: Path, *, max_line_bytes: int) -> None:
    """Refuse a raw file that cannot be read as a whole, with one line naming the problem
    and the fix: empty, truncated or corrupt (gzip, Parquet), not UTF-8 text, or a line
    over ``max_line_bytes``. A bad *row* in a good file is not refused here: ingest
    quarantines it with its reason."""
    fix = "replace it with a complete copy from the source, or move it out of the folder"
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes); {fix}.")
    if path.name.endswith(".parquet"):
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
        if head != _PARQUET_MAGIC or tail != _PARQUET_MAGIC:
            raise InputError(f"{path}: not a complete Parquet file (truncated?); {fix}.")
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line, longest_at, longest = 0, 1, 0, 0
    current = 0  # length of the line being read
    try:
        for chunk in _chunks(path):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                at = offset + exc.start
                raise InputError(
                    f"{path}: not UTF-8 text (byte 0x{chunk[exc.start]:02x} at offset {at}); "
                    f"re-export it as UTF-8, or {fix}."
                ) from None
            parts = chunk.split(b"\n")
            current += len(parts[0])
            for part in parts[1:]:
                if current > longest:
                    longest, longest_at = current, line
                line += 1
                current = len(part)
            if current > longest:
                longest, longest_at = current, line
            if longest > max_line_bytes:
                raise InputError(
                    f"{path}: line {longest_at} is longer than ingest.max_line_bytes "
                    f"({max_line_bytes:,} bytes): not a log of records; {fix} "
                    "(or raise ingest.max_line_bytes)."
                )
            offset += len(chunk)
        decoder.decode(b"", final=True)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip ({exc}); {fix}.") from None
    except UnicodeDecodeError:
        raise InputError(
            f"{path}: not UTF-8 text (it ends inside a character); re-export it as UTF-8, or {fix}."
        ) from None


def check_day(settings: Settings, ds: dt.date, sources: tuple[str, ...]) -> list[Path]:
    """Check every raw file of ``ds`` (:func:`check_file`) before anything is read into the
    lake; the day's impression files must exist. Returns the files checked."""
    checked = []
    for source in sources:
        files = day_files(settings, source, ds)
        if source == "impressions" and not files:
            folder = day_dir(settings, source, ds)
            why = "no such folder" if not folder.is_dir() else "no *.jsonl, *.csv or *.parquet"
            raise InputError(
                f"No raw impression files for {ds} in {folder} ({why}): land the day's files "
                "there first (docs/raw-format.md), or turn demo mode on to generate them."
            )
        for path in files:
            check_file(path, max_line_bytes=settings.ingest.max_line_bytes)
        checked += files
    return checked

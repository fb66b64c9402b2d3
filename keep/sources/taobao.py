"""Taobao display-ad data set -> the KEEP raw landing format (docs/taobao.md).

Converts the public Taobao files (``raw_sample.csv``, ``behavior_log.csv``,
``ad_feature.csv``, ``user_profile.csv``) into per-day JSON-lines files of the
documented raw format (docs/raw-format.md)::

    <raw_root>/impressions/ds=D/taobao-raw_sample.jsonl     ad impressions (scenario "ads")
    <raw_root>/impressions/ds=D/taobao-behavior_log.jsonl   browse behaviour + sampled negatives
    <raw_root>/items/ds=F/taobao-ad_feature.jsonl           ad items (F = first day)
    <raw_root>/items/ds=F/taobao-pseudo_items.jsonl         (category, brand) pseudo-items
    <raw_root>/users/ds=F/taobao-user_profile.jsonl         users

Pure Python (pyarrow compute, numpy, pandas; no Spark), streaming: every file is read in
chunks of ``chunksize`` lines and appended to hidden per-day temp files, renamed to their
final names only after every input was converted (on an error they are removed). Same
inputs and parameters give byte-identical files, independent of ``chunksize``.

No line is dropped silently: a line the adapter cannot convert is written in a form the
ingest quarantines (a bad field keeps its original text, so ingest flags e.g.
``bad_type_user_id``; a line that cannot be converted at all becomes a non-JSON line, so
ingest flags ``malformed_record`` with the original text), and it is counted per
source and reason in the returned :class:`TaobaoImportSummary`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from keep.core.config import Settings
from keep.core.errors import InputError
from keep.core.tables import RAW_FIELDS
from keep.lake import raw_format

log = logging.getLogger(__name__)

RAW_SAMPLE = "raw_sample.csv"
BEHAVIOR_LOG = "behavior_log.csv"
AD_FEATURE = "ad_feature.csv"
USER_PROFILE = "user_profile.csv"

# Columns the adapter needs from each file (others in the header are ignored).
COLUMNS: dict[str, tuple[str, ...]] = {
    RAW_SAMPLE: ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    BEHAVIOR_LOG: ("user", "time_stamp", "btag", "cate", "brand"),
    AD_FEATURE: ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    USER_PROFILE: (
        "userid",
        "cms_segid",
        "cms_group_id",
        "final_gender_code",
        "age_level",
        "pvalue_level",
        "shopping_level",
        "occupation",
        "new_user_class_level",
    ),
}

BROWSE_SCENARIO = "browse"
OUTPUT_PREFIX = "taobao-"
# Ad slots of the public data set, in a fixed order; any other well-formed pid is "other".
PID_POSITIONS: dict[str, int] = {"430548_1007": 0, "430539_1007": 1}
PID_OTHER_POSITION = 2
# btag -> (click, cart, purchase): the behaviour log holds positive behaviour only.
BTAG_LABELS: dict[str, tuple[int, int, int]] = {
    "pv": (1, 0, 0),
    "fav": (1, 0, 0),
    "cart": (1, 1, 0),
    "buy": (1, 0, 1),
}
# Pseudo-item ids: (1 << 40) | (cate << 20) | brand while cate and brand fit in 20 bits,
# else (1 << 41) | (hash(cate, brand) mod 2**41). Ad ids (adgroup_id) are < 2**40.
PSEUDO_BASE = 1 << 40
PSEUDO_FIELD_BITS = 20
PSEUDO_FALLBACK_BASE = 1 << 41
# time_stamp must be unix seconds in [1970-01-01, 2100-01-01).
MAX_EPOCH_SECONDS = 4_102_444_800

_WS = "".join(chr(c) for c in range(33))  # what Spark's cast trims: ASCII controls + space
_INT_RE = r"^[+-]?[0-9]+$"
_FLOAT_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
# Anything Spark's DOUBLE cast might read as a number (NaN, Infinity, 1.5d, ...).
_SPARK_NUMBER_RE = (
    r"(?i)^[+-]?(?:nan|inf(?:inity)?|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?[df]?)$"
)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_SECONDS_PER_DAY = 86_400
_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_STR = pa.large_string()  # all text is large_string: no 2 GiB limit per chunk

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
U64Array = npt.NDArray[np.uint64]
ObjArray = npt.NDArray[np.object_]


# --------------------------------------------------------------------------- summary


@dataclass
class SourceSummary:
    """Counts of one input file: ``rows_read = rows_written + rows_bad``."""

    source: str
    found: bool = False
    rows_read: int = 0
    rows_written: int = 0
    rows_bad: int = 0
    # Rows the adapter adds: the sampled negatives of behavior_log.
    rows_generated: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)

    def count(self, reasons: ObjArray) -> None:
        """Add one chunk's rows; ``reasons`` holds "" for good rows, the reason for bad ones."""
        bad = reasons[reasons != ""]
        self.rows_read += len(reasons)
        self.rows_bad += len(bad)
        self.rows_written += len(reasons) - len(bad)
        for reason, n in Counter(bad.tolist()).items():
            self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + n


@dataclass
class TaobaoImportSummary:
    """What one :func:`import_taobao` run read and wrote."""

    sources: dict[str, SourceSummary]
    days: list[dt.date]
    dims_day: dt.date
    impressions_per_day: dict[dt.date, int]
    negatives_skipped: int
    pseudo_items: int
    files: list[Path]

    def summary_rows(self) -> list[dict[str, str | int]]:
        """One row per input file, for a CLI table (column -> value, same keys each row)."""
        rows: list[dict[str, str | int]] = [
            {
                "source": s.source,
                "found": "yes" if s.found else "no",
                "rows_read": s.rows_read,
                "rows_written": s.rows_written,
                "rows_bad": s.rows_bad,
                "rows_generated": s.rows_generated,
                "bad_reasons": ", ".join(f"{k}={v}" for k, v in sorted(s.bad_reasons.items())),
            }
            for s in self.sources.values()
        ]
        rows.append(
            {
                "source": "pseudo_items (from behavior_log)",
                "found": "yes" if self.pseudo_items else "no",
                "rows_read": 0,
                "rows_written": 0,
                "rows_bad": 0,
                "rows_generated": self.pseudo_items,
                "bad_reasons": "",
            }
        )
        return rows


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Chunk:
    """Up to ``chunksize`` non-blank lines of one file, split into header-named fields."""

    file: str
    line_no: IntArray
    text: pa.Array  # the original lines
    fields: dict[str, pa.Array]  # wrong-field-count lines hold "" in every field
    wrong_count: BoolArray

    def __len__(self) -> int:
        return len(self.text)


def _header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    return [name.strip(_WS) for name in first.rstrip("\n").split(",")]


def _check_header(path: Path, name: str) -> list[str]:
    header = _header(path)
    missing = [c for c in COLUMNS[name] if c not in header]
    if missing:
        raise InputError(
            f"{path}: header lacks column(s) {missing}; expected the public Taobao layout "
            f"{list(COLUMNS[name])} (see docs/taobao.md)."
        )
    return header


def _split(file: str, header: list[str], line_no: IntArray, lines: list[str]) -> _Chunk:
    text = pa.array(lines, type=_STR)
    n = len(header)
    wrong = _np(pc.not_equal(pc.count_substring(text, ","), n - 1)).astype(bool)
    safe = pc.if_else(pa.array(wrong), _s("," * (n - 1)), text)
    flat = pc.list_flatten(pc.split_pattern(safe, ","))
    rows = len(lines)
    fields = {
        name: flat.take(pa.array(np.arange(j, rows * n, n, dtype=np.int64)))
        for j, name in enumerate(header)
    }
    return _Chunk(file, line_no, text, fields, wrong)


def _chunks(path: Path, header: list[str], chunksize: int) -> Iterator[_Chunk]:
    """Chunks of the file's data lines; blank lines are skipped (they are not records)."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        f.readline()
        next_no = 2
        while block := list(islice(f, chunksize)):
            numbers, lines = [], []
            for i, raw in enumerate(block):
                line = raw.rstrip("\n")
                if line.strip(_WS):
                    numbers.append(next_no + i)
                    lines.append(line)
            next_no += len(block)
            if lines:
                yield _split(path.name, header, np.array(numbers, dtype=np.int64), lines)


# --------------------------------------------------------------------------- parsing


def _s(value: str) -> pa.Scalar:
    return pa.scalar(value, _STR)


def _np(values: pa.Array) -> npt.NDArray[Any]:
    return values.to_numpy(zero_copy_only=False)


def _mask(values: BoolArray) -> pa.Array:
    return pa.array(values, type=pa.bool_())


def _strip(raw: pa.Array) -> pa.Array:
    return pc.ascii_trim(raw, _WS)


def _matches(raw: pa.Array, pattern: str) -> BoolArray:
    return _np(pc.match_substring_regex(raw, pattern)).astype(bool)


def _parse_int(raw: pa.Array) -> tuple[IntArray, BoolArray]:
    """Values and validity: optional sign and ASCII digits within int64, as Spark's cast."""
    s = _strip(raw)
    ok = _matches(s, _INT_RE)
    digits = pc.ascii_ltrim(pc.ascii_ltrim(s, "+-"), "0")
    width = _np(pc.binary_length(digits))
    long = ok & (width >= 19)
    if long.any():
        negative = _np(pc.starts_with(s, "-")).astype(bool)
        idx = np.flatnonzero(long)
        for i, text in zip(idx.tolist(), digits.take(pa.array(idx)).to_pylist(), strict=True):
            limit = "9223372036854775808" if negative[i] else "9223372036854775807"
            ok[i] = len(text) == 19 and text <= limit
    clean = pc.if_else(_mask(ok), pc.ascii_ltrim(s, "+"), _s("0"))
    return _np(pc.cast(clean, pa.int64())).astype(np.int64), ok


def _parse_epoch(raw: pa.Array) -> tuple[IntArray, BoolArray]:
    ts, ok = _parse_int(raw)
    ok &= (ts >= 0) & (ts < MAX_EPOCH_SECONDS)
    return np.where(ok, ts, 0), ok


def _is_blank(raw: pa.Array) -> BoolArray:
    return _np(pc.equal(_strip(raw), _s(""))).astype(bool)


def _is_missing_brand(raw: pa.Array) -> BoolArray:
    return _is_blank(raw) | _np(pc.equal(pc.utf8_upper(_strip(raw)), _s("NULL"))).astype(bool)


_TIMES_OF_DAY = pa.array(
    [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(_SECONDS_PER_DAY)],
    type=_STR,
)


def _iso(ts: IntArray) -> pa.Array:
    """UTC ISO-8601 text of unix seconds, e.g. 1494000000 -> 2017-05-05T16:00:00Z."""
    days, index = np.unique(ts // _SECONDS_PER_DAY, return_inverse=True)
    dates = pa.array([_date(d).isoformat() for d in days.tolist()], type=_STR)
    time_of_day = _TIMES_OF_DAY.take(pa.array(ts % _SECONDS_PER_DAY))
    return pc.binary_join_element_wise(dates.take(pa.array(index)), time_of_day, _s(""))


def _day(ts: IntArray, ok: BoolArray) -> IntArray:
    """Days since 1970-01-01 (UTC) of valid times; -1 where the time is unusable."""
    return np.where(ok, ts // _SECONDS_PER_DAY, -1)


def _date(day: int) -> dt.date:
    return dt.date.fromordinal(_EPOCH_ORDINAL + int(day))


def _first_reason(checks: Sequence[tuple[str, BoolArray]], n: int) -> ObjArray:
    """Per row, the name of the first failed check, "" when none failed."""
    out = np.full(n, "", dtype=object)
    for name, failed in reversed(checks):
        out[failed] = name
    return out


def _hash64(keys: pa.Array) -> tuple[pa.Array, U64Array]:
    """blake2b-64 of each key (UTF-8): hex strings and the same values as uint64."""
    digests = [hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest() for k in keys.to_pylist()]
    values = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)
    return pa.array([d.hex() for d in digests], type=_STR), values


def _key(fields: dict[str, pa.Array], columns: Sequence[str]) -> pa.Array:
    """The fields (surrounding whitespace removed) joined by commas: the hash input of ids."""
    return pc.binary_join_element_wise(*[_strip(fields[c]) for c in columns], _s(","))


def splitmix64(x: U64Array) -> U64Array:
    """The SplitMix64 finaliser, vectorised (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _as_u64(values: IntArray) -> U64Array:
    return values.astype(np.uint64)  # two's complement for negative values


def pseudo_item_id(cate: IntArray, brand: IntArray) -> IntArray:
    """Item id of a (category, brand) pair of the behaviour log (docs/taobao.md)."""
    limit = 1 << PSEUDO_FIELD_BITS
    fits = (cate >= 0) & (cate < limit) & (brand >= 0) & (brand < limit)
    packed = PSEUDO_BASE | (np.where(fits, cate, 0) << PSEUDO_FIELD_BITS) | np.where(fits, brand, 0)
    mixed = splitmix64(splitmix64(_as_u64(cate)) ^ _as_u64(brand))
    fallback = (mixed % _U64(PSEUDO_FALLBACK_BASE)).astype(np.int64) | PSEUDO_FALLBACK_BASE
    return np.where(fits, packed, fallback).astype(np.int64)


# --------------------------------------------------------------------------- JSON text

# JSON text of one column: per row (array) or the same for every row (scalar).
Fragment: TypeAlias = "pa.Array | pa.Scalar"


def _num(values: npt.NDArray[np.int64]) -> pa.Array:
    return pc.cast(pa.array(values, type=pa.int64()), _STR)


def _jstr(values: Sequence[str]) -> pa.Array:
    return pa.array([json.dumps(v) for v in values], type=_STR)


def _quoted(values: pa.Array) -> pa.Array:
    """Values known to need no escaping (ids, ISO times, letters) as JSON strings."""
    return pc.binary_join_element_wise(_s('"'), values, _s('"'), _s(""))


def _int_fragment(raw: pa.Array, values: IntArray, ok: BoolArray) -> pa.Array:
    """JSON numbers for valid values; the original text as a JSON string otherwise."""
    out = _num(values)
    if not ok.all():
        bad = _jstr(raw.filter(_mask(~ok)).to_pylist())
        out = pc.replace_with_mask(out, _mask(~ok), bad)
    return out


def _optional_fragment(
    raw: pa.Array, values: IntArray, ok: BoolArray, blank: BoolArray
) -> pa.Array:
    return pc.if_else(_mask(blank), _s('""'), _int_fragment(raw, values, ok | blank))


def _records(columns: Sequence[tuple[str, Fragment]], tail: Fragment) -> pa.Array:
    """JSON objects from per-column JSON fragments; ``tail`` closes each object."""
    parts: list[Fragment] = []
    for i, (name, frag) in enumerate(columns):
        opener = "{" if i == 0 else ", "
        parts += [_s(f'{opener}"{name}": '), frag]
    return pc.binary_join_element_wise(*parts, tail, _s(""))


def _lines(
    chunk: _Chunk, columns: Sequence[tuple[str, Fragment]], marker: ObjArray, field_bad: ObjArray
) -> tuple[pa.Array, ObjArray]:
    """Output text per input line, and its adapter reason ("" for good rows).

    Good rows are JSON objects. Rows with a bad field are JSON objects holding that field's
    original text plus ``taobao_error`` / ``taobao_source`` / ``taobao_raw``. Rows that cannot
    be converted (``marker``) become ``taobao <file>:<line> <reason>: <original line>``.
    """
    is_marker = marker != ""
    is_bad = ~is_marker & (field_bad != "")
    tail: Fragment = _s("}")
    if is_bad.any():
        raw = chunk.text.filter(_mask(is_bad)).to_pylist()
        extras = [
            f", {_jkv('taobao_error', reason)}, {_jkv('taobao_source', f'{chunk.file}:{no}')}, "
            f"{_jkv('taobao_raw', line)}}}"
            for no, reason, line in zip(chunk.line_no[is_bad], field_bad[is_bad], raw, strict=True)
        ]
        tail = pc.replace_with_mask(
            pa.repeat(_s("}"), len(chunk)), _mask(is_bad), pa.array(extras, type=_STR)
        )
    text = _records(columns, tail)
    if is_marker.any():
        raw = chunk.text.filter(_mask(is_marker)).to_pylist()
        markers = [
            f"taobao {chunk.file}:{no} {reason}: {line}"
            for no, reason, line in zip(
                chunk.line_no[is_marker], marker[is_marker], raw, strict=True
            )
        ]
        text = pc.replace_with_mask(text, _mask(is_marker), pa.array(markers, type=_STR))
    return text, np.where(is_marker, marker, field_bad)


def _jkv(key: str, value: str) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


def _as_bytes(text: pa.Array) -> memoryview:
    """The lines of ``text``, each followed by a newline, as one UTF-8 buffer."""
    joined = pc.binary_join_element_wise(text, _s("\n"), _s(""))
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
    first, last = offsets[joined.offset], offsets[joined.offset + len(joined)]
    return memoryview(joined.buffers()[2])[first:last]


# --------------------------------------------------------------------------- output


class _Output:
    """The run's files: hidden per-day temp files, renamed over the final names at the end."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._temps: dict[Path, Path] = {}
        self._undated: dict[str, Path] = {}
        self.undated_lines = 0

    def final_path(self, kind: str, day: dt.date, name: str) -> Path:
        folder = raw_format.day_dir(self._settings, kind, day)
        return folder / f"{OUTPUT_PREFIX}{name}.jsonl"

    def _append_to(self, tmp: Path, fresh: bool, text: pa.Array) -> None:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb" if fresh else "ab") as f:
            f.write(_as_bytes(text))

    def append(self, kind: str, day: dt.date, name: str, text: pa.Array) -> None:
        if len(text) == 0:
            return
        final = self.final_path(kind, day, name)
        fresh = final not in self._temps
        if fresh:
            self._temps[final] = final.with_name(f".{final.name}.tmp")
        self._append_to(self._temps[final], fresh, text)

    def append_undated(self, name: str, text: pa.Array) -> None:
        """Lines without a usable day: kept aside, appended to the first day at the end."""
        if len(text) == 0:
            return
        fresh = name not in self._undated
        if fresh:
            self._undated[name] = (
                self._settings.lake.raw_root / "impressions" / f".{OUTPUT_PREFIX}{name}.undated.tmp"
            )
        self.undated_lines += len(text)
        self._append_to(self._undated[name], fresh, text)

    def write_days(self, kind: str, name: str, day: IntArray, text: pa.Array) -> Counter[int]:
        """Append each line to the file of its day (-1: undated); lines per day."""
        self.append_undated(name, text.filter(_mask(day < 0)))
        counts: Counter[int] = Counter()
        for d in np.unique(day[day >= 0]).tolist():
            rows = text.filter(_mask(day == d))
            self.append(kind, _date(d), name, rows)
            counts[d] += len(rows)
        return counts

    def finalize(self, first_day: dt.date, days: Sequence[dt.date]) -> list[Path]:
        """Place undated lines, drop this adapter's stale files of ``days``, rename temps."""
        for name, tmp in self._undated.items():
            final = self.final_path("impressions", first_day, name)
            fresh = final not in self._temps
            if fresh:
                self._temps[final] = final.with_name(f".{final.name}.tmp")
            with tmp.open("rb") as src, self._temps[final].open("wb" if fresh else "ab") as dst:
                shutil.copyfileobj(src, dst)
            tmp.unlink()
        self._undated.clear()
        for day in days:
            for kind in RAW_FIELDS:
                folder = raw_format.day_dir(self._settings, kind, day)
                for old in folder.glob(f"{OUTPUT_PREFIX}*.jsonl"):
                    if old not in self._temps:
                        old.unlink()
        for final, tmp in self._temps.items():
            tmp.replace(final)
        return sorted(self._temps)

    def abort(self) -> None:
        for tmp in [*self._temps.values(), *self._undated.values()]:
            tmp.unlink(missing_ok=True)


@dataclass
class _Run:
    settings: Settings
    out: _Output
    chunksize: int
    negatives_per_positive: int
    impressions_per_day: Counter[int] = field(default_factory=Counter)
    negatives_skipped: int = 0


# --------------------------------------------------------------------------- raw_sample


def _convert_raw_sample(chunk: _Chunk, scenario: str) -> tuple[IntArray, pa.Array, ObjArray]:
    f = chunk.fields
    n = len(chunk)
    ts, ts_ok = _parse_epoch(f["time_stamp"])
    user, user_ok = _parse_int(f["user"])
    item, item_ok = _parse_int(f["adgroup_id"])
    pid = _strip(f["pid"])
    pid_ok = _matches(pid, r"^[0-9]+_[0-9]+$")
    clk, clk_ok = _parse_int(f["clk"])
    clk_ok &= (clk == 0) | (clk == 1)
    nonclk, nonclk_ok = _parse_int(f["nonclk"])
    mismatch = clk_ok & ~(nonclk_ok & (nonclk == 1 - clk))
    marker = _first_reason(
        [
            ("wrong_field_count", chunk.wrong_count),
            ("bad_time_stamp", ~ts_ok),
            ("bad_pid", ~pid_ok),
            ("nonclk_mismatch", mismatch),
        ],
        n,
    )
    field_bad = _first_reason(
        [("bad_user", ~user_ok), ("bad_adgroup_id", ~item_ok), ("bad_clk", ~clk_ok)], n
    )
    ids, _ = _hash64(_key(f, ("user", "time_stamp", "adgroup_id", "pid")))
    known = pa.array(list(PID_POSITIONS), type=_STR)
    slot = pc.index_in(pid, value_set=known).to_numpy(zero_copy_only=False)
    positions = np.array(list(PID_POSITIONS.values()) + [PID_OTHER_POSITION], dtype=np.int64)
    position = positions[np.where(np.isnan(slot.astype(float)), len(known), slot).astype(np.int64)]
    columns: list[tuple[str, Fragment]] = [
        ("impression_id", pc.binary_join_element_wise(_s('"ad-'), ids, _s('"'), _s(""))),
        ("user_id", _int_fragment(f["user"], user, user_ok)),
        ("item_id", _int_fragment(f["adgroup_id"], item, item_ok)),
        ("event_time", _quoted(_iso(ts))),
        ("scenario", _s(json.dumps(scenario))),
        ("position", _num(position)),
        ("click", _int_fragment(f["clk"], clk, clk_ok)),
        ("cart", _s("0")),
        ("purchase", _s("0")),
    ]
    text, reasons = _lines(chunk, columns, marker, field_bad)
    return _day(ts, ts_ok), text, reasons


def _import_raw_sample(run: _Run, path: Path, summary: SourceSummary) -> None:
    header = _check_header(path, RAW_SAMPLE)
    scenario = run.settings.downstream.scenario
    for chunk in _chunks(path, header, run.chunksize):
        day, text, reasons = _convert_raw_sample(chunk, scenario)
        summary.count(reasons)
        run.impressions_per_day.update(run.out.write_days("impressions", "raw_sample", day, text))


# --------------------------------------------------------------------------- behavior_log


@dataclass(frozen=True)
class _Behavior:
    """Parsed behaviour rows; ``valid`` rows are converted and get sampled negatives."""

    ts: IntArray
    day: IntArray
    user: IntArray
    user_ok: BoolArray
    labels: IntArray  # (n, 3): click, cart, purchase
    cate: IntArray
    brand: IntArray
    brand_missing: BoolArray
    item: IntArray
    marker: ObjArray
    field_bad: ObjArray
    valid: BoolArray


def _parse_behavior(chunk: _Chunk) -> _Behavior:
    f = chunk.fields
    n = len(chunk)
    ts, ts_ok = _parse_epoch(f["time_stamp"])
    user, user_ok = _parse_int(f["user"])
    btag = _strip(f["btag"])
    code = _np(pc.index_in(btag, value_set=pa.array(list(BTAG_LABELS), type=_STR)))
    btag_ok = ~np.isnan(code.astype(float))
    cate, cate_ok = _parse_int(f["cate"])
    brand_missing = _is_missing_brand(f["brand"])
    brand, brand_ok = _parse_int(f["brand"])
    brand_ok |= brand_missing
    brand = np.where(brand_missing, 0, brand)
    marker = _first_reason(
        [
            ("wrong_field_count", chunk.wrong_count),
            ("bad_time_stamp", ~ts_ok),
            ("unknown_btag", ~btag_ok),
            ("bad_cate", ~cate_ok),
            ("bad_brand", ~brand_ok),
        ],
        n,
    )
    field_bad = _first_reason([("bad_user", ~user_ok)], n)
    table = np.array([*BTAG_LABELS.values(), (0, 0, 0)], dtype=np.int64)
    labels = table[np.where(btag_ok, code, len(BTAG_LABELS)).astype(np.int64)]
    return _Behavior(
        ts=ts,
        day=_day(ts, ts_ok),
        user=user,
        user_ok=user_ok,
        labels=labels,
        cate=cate,
        brand=brand,
        brand_missing=brand_missing,
        item=pseudo_item_id(cate, brand),
        marker=marker,
        field_bad=field_bad,
        valid=(marker == "") & (field_bad == ""),
    )


@dataclass
class _Popularity:
    """Pass 1 over the behaviour log: positives per (day, pseudo-item), pseudo-item attributes."""

    keys: list[IntArray] = field(default_factory=list)
    counts: list[IntArray] = field(default_factory=list)
    attrs: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {"item": [], "cate": [], "brand": [], "brand_missing": []}
        ).astype({"item": np.int64, "cate": np.int64, "brand": np.int64, "brand_missing": bool})
    )
    by_day: dict[int, tuple[IntArray, IntArray, IntArray]] = field(default_factory=dict)

    _DAY_SHIFT = 42  # pseudo ids are < 2**42

    def add(self, b: _Behavior) -> None:
        v = b.valid
        keys, counts = np.unique((b.day[v] << self._DAY_SHIFT) | b.item[v], return_counts=True)
        self.keys.append(keys)
        self.counts.append(counts.astype(np.int64))
        if sum(len(k) for k in self.keys) > 4_000_000:
            self._merge()
        new = pd.DataFrame(
            {
                "item": b.item[v],
                "cate": b.cate[v],
                "brand": b.brand[v],
                "brand_missing": b.brand_missing[v],
            }
        )
        # The first occurrence in file order names a pseudo-item's attributes.
        new = new.drop_duplicates("item", keep="first")
        new = new[~new["item"].isin(self.attrs["item"])]
        if not new.empty:
            self.attrs = pd.concat([self.attrs, new], ignore_index=True)

    def _merge(self) -> None:
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, np.int64)
        counts = np.concatenate(self.counts) if self.counts else np.zeros(0, np.int64)
        merged, inverse = np.unique(keys, return_inverse=True)
        self.keys = [merged]
        self.counts = [np.bincount(inverse, weights=counts, minlength=len(merged)).astype(np.int64)]

    def finish(self) -> None:
        """Per day: pseudo-items (ascending id), their counts and cumulative counts."""
        self._merge()
        keys, counts = self.keys[0], self.counts[0]
        days = keys >> self._DAY_SHIFT
        items = keys & ((1 << self._DAY_SHIFT) - 1)
        for d in np.unique(days).tolist():
            sel = days == d
            self.by_day[d] = (items[sel], counts[sel], np.cumsum(counts[sel]))
        self.attrs = self.attrs.sort_values("item", kind="stable").reset_index(drop=True)


def draw_negatives(
    pop: _Popularity, day: IntArray, own: IntArray, row_hash: U64Array, k: int, seed: int
) -> tuple[IntArray, BoolArray]:
    """``k`` pseudo-items per row, drawn from the day's popularity excluding the row's own item.

    Draw j of a row: ``x = splitmix64(splitmix64(h XOR splitmix64(seed)) + j)``, with ``h``
    the row's 64-bit hash; ``r = x mod (N_d - c_own)`` indexes the day's positives (``N_d``
    rows, items in ascending id order) with the own item's ``c_own`` rows cut out.
    Returns the (n, k) items and, per row, whether a draw was possible (another item exists).
    """
    n = len(day)
    out = np.zeros((n, k), dtype=np.int64)
    possible = np.zeros(n, dtype=bool)
    base = splitmix64(row_hash ^ splitmix64(np.array([seed & _MASK64], dtype=np.uint64)))
    for d in np.unique(day).tolist():
        rows = np.flatnonzero(day == d)
        items, counts, cum = pop.by_day[d]
        idx = np.searchsorted(items, own[rows])
        c_own = counts[idx]
        start = cum[idx] - c_own
        rest = cum[-1] - c_own
        ok = rest > 0
        possible[rows] = ok
        rows, start, c_own, rest = rows[ok], start[ok], c_own[ok], rest[ok]
        for j in range(k):
            with np.errstate(over="ignore"):
                x = splitmix64(base[rows] + _U64(j))
            r = (x % rest.astype(np.uint64)).astype(np.int64)
            r = np.where(r >= start, r + c_own, r)
            out[rows, j] = items[np.searchsorted(cum, r, side="right")]
    return out, possible


def _scan_behavior(run: _Run, path: Path, header: list[str]) -> _Popularity:
    pop = _Popularity()
    for chunk in _chunks(path, header, run.chunksize):
        pop.add(_parse_behavior(chunk))
    pop.finish()
    fallback = pop.attrs["item"].to_numpy() >= PSEUDO_FALLBACK_BASE
    if fallback.any():
        log.warning(
            "%s: %d (cate, brand) pairs exceed 20 bits; their pseudo-item ids are hashed "
            "(docs/taobao.md)",
            path,
            int(fallback.sum()),
        )
    return pop


def _behavior_columns(
    ids: pa.Array, user: pa.Array, item: pa.Array, iso: pa.Array, labels: Sequence[Fragment]
) -> list[tuple[str, Fragment]]:
    return [
        ("impression_id", ids),
        ("user_id", user),
        ("item_id", item),
        ("event_time", _quoted(iso)),
        ("scenario", _s(json.dumps(BROWSE_SCENARIO))),
        ("position", _s("0")),
        ("click", labels[0]),
        ("cart", labels[1]),
        ("purchase", labels[2]),
    ]


def _negative_lines(
    b: _Behavior, hexes: pa.Array, iso: pa.Array, neg: IntArray, rows: IntArray
) -> tuple[pa.Array, IntArray, IntArray]:
    """Text, day and order key of the negatives of ``rows`` (k per row, after the positive)."""
    k = neg.shape[1]
    row_rep = np.repeat(rows, k)
    j_rep = np.tile(np.arange(k, dtype=np.int64), len(rows))
    take = pa.array(row_rep, type=pa.int64())
    ids = pc.binary_join_element_wise(
        _s('"bn-'), hexes.take(take), _s("-"), _num(j_rep), _s('"'), _s("")
    )
    zero = _s("0")
    columns = _behavior_columns(
        ids, _num(b.user[row_rep]), _num(neg[rows].reshape(-1)), iso.take(take), [zero] * 3
    )
    order = row_rep * (k + 1) + 1 + j_rep
    return _records(columns, _s("}")), b.day[row_rep], order


def _convert_behavior(
    run: _Run, chunk: _Chunk, pop: _Popularity
) -> tuple[IntArray, pa.Array, ObjArray, int]:
    """Output lines (positives, each followed by its negatives), days, reasons, skipped."""
    b = _parse_behavior(chunk)
    k = run.negatives_per_positive
    hexes, hashes = _hash64(_key(chunk.fields, ("user", "time_stamp", "btag", "cate", "brand")))
    iso = _iso(b.ts)
    columns = _behavior_columns(
        pc.binary_join_element_wise(_s('"bl-'), hexes, _s('"'), _s("")),
        _int_fragment(chunk.fields["user"], b.user, b.user_ok),
        _num(b.item),
        iso,
        [_num(b.labels[:, i]) for i in range(3)],
    )
    text, reasons = _lines(chunk, columns, b.marker, b.field_bad)
    valid = np.flatnonzero(b.valid)
    if k == 0 or len(valid) == 0:
        return b.day, text, reasons, 0
    neg, possible = draw_negatives(
        pop, b.day[valid], b.item[valid], hashes[valid], k, run.settings.generator.seed
    )
    full = np.zeros((len(chunk), k), dtype=np.int64)
    full[valid] = neg
    neg_text, neg_day, neg_order = _negative_lines(b, hexes, iso, full, valid[possible])
    order = np.concatenate([np.arange(len(chunk), dtype=np.int64) * (k + 1), neg_order])
    perm = np.argsort(order, kind="stable")
    all_text = pa.concat_arrays([text, neg_text]).take(pa.array(perm))
    all_day = np.concatenate([b.day, neg_day])[perm]
    return all_day, all_text, reasons, int((~possible).sum()) * k


def _import_behavior(run: _Run, path: Path, summary: SourceSummary) -> _Popularity:
    header = _check_header(path, BEHAVIOR_LOG)
    pop = _scan_behavior(run, path, header)
    for chunk in _chunks(path, header, run.chunksize):
        day, text, reasons, skipped = _convert_behavior(run, chunk, pop)
        summary.count(reasons)
        run.negatives_skipped += skipped
        summary.rows_generated += len(text) - len(chunk)
        run.impressions_per_day.update(run.out.write_days("impressions", "behavior_log", day, text))
    return pop


# --------------------------------------------------------------------------- dimensions


def _parse_price(raw: pa.Array) -> tuple[npt.NDArray[np.float64], ObjArray]:
    """Prices and a problem per row: "" ok, "bad_price" (ingest flags it), "bad_price_value"."""
    s = _strip(raw)
    grammar = _matches(s, _FLOAT_RE)
    clean = pc.if_else(_mask(grammar), s, _s("0"))
    values = np.where(grammar, _np(pc.cast(clean, pa.float64())), np.nan)
    finite = grammar & np.isfinite(values)
    spark_number = _matches(s, _SPARK_NUMBER_RE)
    problem = _first_reason(
        [
            ("bad_price_value", spark_number & ~finite),
            ("bad_price", ~finite | (values < 0)),
        ],
        len(s),
    )
    return np.where(problem == "", values, np.nan), problem


def _price_text(values: npt.NDArray[np.float64]) -> pa.Array:
    """Shortest round-trip text of each price (Python's repr, e.g. 10.0, 1e+20)."""
    return pa.array([repr(v) for v in values.tolist()], type=_STR)


def _convert_ad_feature(chunk: _Chunk) -> tuple[pa.Array, ObjArray, pd.DataFrame]:
    f = chunk.fields
    n = len(chunk)
    item, item_ok = _parse_int(f["adgroup_id"])
    cate, cate_ok = _parse_int(f["cate_id"])
    brand_missing = _is_missing_brand(f["brand"])
    brand, brand_ok = _parse_int(f["brand"])
    price, price_problem = _parse_price(f["price"])
    marker = _first_reason(
        [
            ("wrong_field_count", chunk.wrong_count),
            ("bad_price_value", price_problem == "bad_price_value"),
        ],
        n,
    )
    field_bad = _first_reason(
        [
            ("bad_adgroup_id", ~item_ok),
            ("bad_cate_id", ~cate_ok),
            ("bad_brand", ~brand_ok & ~brand_missing),
            ("bad_price", price_problem == "bad_price"),
        ],
        n,
    )
    price_frag = _price_text(price)
    bad_price = price_problem != ""
    if bad_price.any():
        bad = _jstr(f["price"].filter(_mask(bad_price)).to_pylist())
        price_frag = pc.replace_with_mask(price_frag, _mask(bad_price), bad)
    columns: list[tuple[str, Fragment]] = [
        ("item_id", _int_fragment(f["adgroup_id"], item, item_ok)),
        ("category_id", _int_fragment(f["cate_id"], cate, cate_ok)),
        ("brand_id", _optional_fragment(f["brand"], brand, brand_ok, brand_missing)),
        ("price", price_frag),
    ]
    text, reasons = _lines(chunk, columns, marker, field_bad)
    good = reasons == ""
    prices = pd.DataFrame({"cate": cate[good], "price": price[good], "item": item[good]})
    return text, reasons, prices


def _import_ad_feature(run: _Run, path: Path, day: dt.date, summary: SourceSummary) -> pd.DataFrame:
    """Write the ad items; return (cate, price) of the valid rows, for pseudo-item prices."""
    header = _check_header(path, AD_FEATURE)
    prices = [_no_prices().assign(item=np.zeros(0, np.int64))]
    for chunk in _chunks(path, header, run.chunksize):
        text, reasons, chunk_prices = _convert_ad_feature(chunk)
        summary.count(reasons)
        run.out.append("items", day, "ad_feature", text)
        prices.append(chunk_prices)
    out = pd.concat(prices, ignore_index=True)
    if (large := int((out["item"] >= PSEUDO_BASE).sum())) > 0:
        log.warning("%s: %d adgroup id(s) >= 2**40 may collide with pseudo-item ids", path, large)
    return out[["cate", "price"]]


def _no_prices() -> pd.DataFrame:
    return pd.DataFrame({"cate": np.zeros(0, np.int64), "price": np.zeros(0)})


def pseudo_item_prices(cates: pd.Series, ad_prices: pd.DataFrame) -> npt.NDArray[np.float64]:
    """Median ad price of each category; the global median for categories without ads."""
    if ad_prices.empty:
        log.warning("no valid ad prices (ad_feature.csv missing or empty): pseudo-item price 0.0")
        return np.zeros(len(cates))
    by_cate = ad_prices.groupby("cate")["price"].median()
    overall = float(ad_prices["price"].median())
    return cates.map(by_cate).fillna(overall).to_numpy(dtype=np.float64)


def _write_pseudo_items(run: _Run, pop: _Popularity, day: dt.date, ad_prices: pd.DataFrame) -> int:
    attrs = pop.attrs
    if attrs.empty:
        return 0
    brand = attrs["brand"].to_numpy(dtype=np.int64)
    missing = attrs["brand_missing"].to_numpy(dtype=bool)
    columns: list[tuple[str, Fragment]] = [
        ("item_id", _num(attrs["item"].to_numpy(dtype=np.int64))),
        ("category_id", _num(attrs["cate"].to_numpy(dtype=np.int64))),
        ("brand_id", pc.if_else(_mask(missing), _s('""'), _num(brand))),
        ("price", _price_text(pseudo_item_prices(attrs["cate"], ad_prices))),
    ]
    run.out.append("items", day, "pseudo_items", _records(columns, _s("}")))
    return len(attrs)


def _convert_user_profile(chunk: _Chunk) -> tuple[pa.Array, ObjArray]:
    f = chunk.fields
    n = len(chunk)
    user, user_ok = _parse_int(f["userid"])
    gender_code, gender_ok = _parse_int(f["final_gender_code"])
    gender = np.where(
        gender_ok & (gender_code == 1), "M", np.where(gender_ok & (gender_code == 2), "F", "U")
    )
    optional: dict[str, tuple[pa.Array, BoolArray]] = {}
    for column in ("age_level", "pvalue_level"):
        values, ok = _parse_int(f[column])
        blank = _is_blank(f[column])
        ok &= values >= 0
        optional[column] = (_optional_fragment(f[column], values, ok, blank), ok | blank)
    marker = _first_reason([("wrong_field_count", chunk.wrong_count)], n)
    field_bad = _first_reason(
        [
            ("bad_userid", ~user_ok),
            ("bad_age_level", ~optional["age_level"][1]),
            ("bad_pvalue_level", ~optional["pvalue_level"][1]),
        ],
        n,
    )
    columns: list[tuple[str, Fragment]] = [
        ("user_id", _int_fragment(f["userid"], user, user_ok)),
        ("gender", _quoted(pa.array(gender, type=_STR))),
        ("age_level", optional["age_level"][0]),
        ("purchase_power", optional["pvalue_level"][0]),
    ]
    return _lines(chunk, columns, marker, field_bad)


def _import_user_profile(run: _Run, path: Path, day: dt.date, summary: SourceSummary) -> None:
    header = _check_header(path, USER_PROFILE)
    for chunk in _chunks(path, header, run.chunksize):
        text, reasons = _convert_user_profile(chunk)
        summary.count(reasons)
        run.out.append("users", day, "user_profile", text)


# --------------------------------------------------------------------------- entry point


def _inputs(source_dir: Path) -> dict[str, Path | None]:
    required = source_dir / RAW_SAMPLE
    if not required.is_file():
        raise InputError(
            f"Taobao input {required} not found: {RAW_SAMPLE} is required "
            f"(the other files are optional; see docs/taobao.md)."
        )
    found: dict[str, Path | None] = {}
    for name in COLUMNS:
        path = source_dir / name
        found[name] = path if path.is_file() else None
        if found[name] is None:
            log.warning("Taobao input %s not found: skipped (optional)", path)
    for name, present in found.items():
        if present is not None:
            _check_header(present, name)
    return found


def _check_settings(settings: Settings, negatives_per_positive: int, chunksize: int) -> None:
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")
    for scenario in (settings.downstream.scenario, BROWSE_SCENARIO):
        if scenario not in settings.ingest.scenarios:
            log.warning(
                "scenario %r is not in ingest.scenarios %s: ingest will quarantine its rows "
                "as unknown_scenario",
                scenario,
                settings.ingest.scenarios,
            )


def import_taobao(
    settings: Settings,
    source_dir: Path,
    *,
    negatives_per_positive: int = 1,
    chunksize: int = 1_000_000,
) -> TaobaoImportSummary:
    """Convert the Taobao files in ``source_dir`` into raw-format files under ``lake.raw_root``.

    ``raw_sample.csv`` is required (InputError otherwise); ``behavior_log.csv``,
    ``ad_feature.csv`` and ``user_profile.csv`` are optional. Re-running replaces this
    adapter's files (``taobao-*.jsonl``) of every day it writes; other files are untouched.
    """
    _check_settings(settings, negatives_per_positive, chunksize)
    inputs = _inputs(Path(source_dir))
    sources = {name: SourceSummary(name, found=path is not None) for name, path in inputs.items()}
    run = _Run(settings, _Output(settings), chunksize, negatives_per_positive)
    try:
        summary = _convert_all(run, inputs, sources)
    except BaseException:
        run.out.abort()
        raise
    log.info(
        "taobao import: %d day(s) %s..%s, %d file(s)",
        len(summary.days),
        summary.days[0],
        summary.days[-1],
        len(summary.files),
    )
    return summary


def _convert_all(
    run: _Run, inputs: dict[str, Path | None], sources: dict[str, SourceSummary]
) -> TaobaoImportSummary:
    raw_sample = inputs[RAW_SAMPLE]
    assert raw_sample is not None
    _import_raw_sample(run, raw_sample, sources[RAW_SAMPLE])
    behavior = inputs[BEHAVIOR_LOG]
    pop = _import_behavior(run, behavior, sources[BEHAVIOR_LOG]) if behavior else _Popularity()
    if not run.impressions_per_day:
        raise InputError(
            f"No line of {RAW_SAMPLE} or {BEHAVIOR_LOG} has a usable time_stamp: "
            "there is no day to write (see docs/taobao.md)."
        )
    days = [_date(d) for d in sorted(run.impressions_per_day)]
    first = days[0]
    ad_prices = _no_prices()
    if (ad_feature := inputs[AD_FEATURE]) is not None:
        ad_prices = _import_ad_feature(run, ad_feature, first, sources[AD_FEATURE])
    pseudo_items = _write_pseudo_items(run, pop, first, ad_prices)
    if (profile := inputs[USER_PROFILE]) is not None:
        _import_user_profile(run, profile, first, sources[USER_PROFILE])
    files = run.out.finalize(first, days)
    per_day = {_date(d): n for d, n in sorted(run.impressions_per_day.items())}
    per_day[first] += run.out.undated_lines
    return TaobaoImportSummary(
        sources=sources,
        days=days,
        dims_day=first,
        impressions_per_day=per_day,
        negatives_skipped=run.negatives_skipped,
        pseudo_items=pseudo_items,
        files=files,
    )

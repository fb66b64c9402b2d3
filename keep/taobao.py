"""Taobao display-ad data set -> the KEEP raw landing format (docs/taobao.md).

Converts the public Taobao files (``raw_sample.csv``, ``behavior_log.csv``,
``ad_feature.csv``, ``user_profile.csv``) into per-day JSON-lines files of the
documented raw format (docs/raw-format.md)::

    <raw_root>/impressions/ds=D/taobao-raw_sample.jsonl     ad impressions (scenario "ads")
    <raw_root>/impressions/ds=D/taobao-behavior_log.jsonl   browse behaviour + sampled negatives
    <raw_root>/items/ds=F/taobao-ad_feature.jsonl           ad items (F = first day)
    <raw_root>/items/ds=F/taobao-pseudo_items.jsonl         (category, brand) pseudo-items
    <raw_root>/users/ds=F/taobao-user_profile.jsonl         users

Pure Python (pandas / numpy), streaming: every file is read in chunks of ``chunksize``
lines and appended to hidden per-day temp files that are renamed at the end, so a run
either lands all its files or none. Same inputs and parameters give byte-identical
files, independent of ``chunksize``.

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

import numpy as np
import numpy.typing as npt
import pandas as pd

from keep import raw_format
from keep.config import Settings
from keep.errors import InputError

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
_INT_RE = r"[+-]?[0-9]+"
_FLOAT_RE = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# Anything Spark's DOUBLE cast might read as a number (NaN, Infinity, 1.5d, ...).
_SPARK_NUMBER_RE = (
    r"(?i)[+-]?(?:nan|inf(?:inity)?|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?[df]?)"
)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_SECONDS_PER_DAY = 86_400
_U64 = np.uint64
_MASK64 = (1 << 64) - 1

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
    text: pd.Series
    fields: pd.DataFrame  # wrong-field-count lines hold "" in every field
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
    text = pd.Series(lines, dtype=object)
    n = len(header)
    wrong = (text.str.count(",").to_numpy() + 1) != n
    safe = text.where(~wrong, "," * (n - 1))
    fields = safe.str.split(",", expand=True)
    fields.columns = header
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


def _strip(raw: pd.Series) -> pd.Series:
    return raw.str.strip(_WS)


def _parse_int(raw: pd.Series) -> tuple[IntArray, BoolArray]:
    """Values and validity: optional sign and ASCII digits within int64, as Spark's cast."""
    s = _strip(raw)
    ok = s.str.fullmatch(_INT_RE).to_numpy(dtype=bool)
    digits = s.str.lstrip("+-").str.lstrip("0")
    width = digits.str.len().to_numpy()
    negative = s.str.startswith("-").to_numpy(dtype=bool)
    limit = np.where(negative, "9223372036854775808", "9223372036854775807").astype(object)
    fits = (width < 19) | ((width == 19) & (digits.to_numpy(dtype=object) <= limit))
    ok &= fits
    values = np.zeros(len(s), dtype=np.int64)
    if ok.any():
        values[ok] = s[ok].astype(np.int64).to_numpy()
    return values, ok


def _parse_epoch(raw: pd.Series) -> tuple[IntArray, BoolArray]:
    ts, ok = _parse_int(raw)
    ok &= (ts >= 0) & (ts < MAX_EPOCH_SECONDS)
    return np.where(ok, ts, 0), ok


def _is_missing_brand(raw: pd.Series) -> BoolArray:
    s = _strip(raw)
    return ((s == "") | (s.str.upper() == "NULL")).to_numpy(dtype=bool)


def _iso(ts: IntArray) -> pd.Series:
    text = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    return pd.Series(text, dtype=object) + "Z"


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


def _hash64(keys: pd.Series) -> tuple[list[str], U64Array]:
    """blake2b-64 of each key (UTF-8): hex strings and the same values as uint64."""
    digests = [hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest() for k in keys]
    values = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)
    return [d.hex() for d in digests], values


def _key(fields: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """The fields (surrounding whitespace removed) joined by commas: the hash input of ids."""
    out = _strip(fields[columns[0]])
    for c in columns[1:]:
        out = out + "," + _strip(fields[c])
    return out


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


def _num(values: npt.NDArray[np.generic]) -> pd.Series:
    return pd.Series(values.astype(str), dtype=object)


def _jstr(values: pd.Series | Sequence[str]) -> pd.Series:
    return pd.Series([json.dumps(v) for v in values], dtype=object)


def _int_fragment(raw: pd.Series, values: IntArray, ok: BoolArray) -> pd.Series:
    """JSON numbers for valid values; the original text as a JSON string otherwise."""
    out = _num(values)
    if not ok.all():
        out[~ok] = _jstr(raw[~ok]).to_numpy()
    return out


def _optional_fragment(
    raw: pd.Series, values: IntArray, ok: BoolArray, blank: BoolArray
) -> pd.Series:
    out = _int_fragment(raw, values, ok)
    out[blank] = '""'
    return out


def _const(value: str, n: int) -> pd.Series:
    return pd.Series([value] * n, dtype=object)


def _records(columns: Sequence[tuple[str, pd.Series]], tail: pd.Series) -> pd.Series:
    """JSON objects from per-column JSON fragments; ``tail`` closes each object."""
    name, frag = columns[0]
    out = f'{{"{name}": ' + frag
    for name, frag in columns[1:]:
        out = out + f', "{name}": ' + frag
    return out + tail


def _lines(
    chunk: _Chunk, columns: Sequence[tuple[str, pd.Series]], marker: ObjArray, field_bad: ObjArray
) -> tuple[pd.Series, ObjArray]:
    """Output text per input line, and its adapter reason ("" for good rows).

    Good rows are JSON objects. Rows with a bad field are JSON objects holding that field's
    original text plus ``taobao_error`` / ``taobao_source`` / ``taobao_raw``. Rows that cannot
    be converted (``marker``) become ``taobao <file>:<line> <reason>: <original line>``.
    """
    n = len(chunk)
    is_marker = marker != ""
    is_bad = ~is_marker & (field_bad != "")
    tail = _const("}", n)
    if is_bad.any():
        where = [f"{chunk.file}:{no}" for no in chunk.line_no[is_bad]]
        tail[is_bad] = (
            ', "taobao_error": '
            + _jstr(field_bad[is_bad].tolist())
            + ', "taobao_source": '
            + _jstr(where)
            + ', "taobao_raw": '
            + _jstr(chunk.text[is_bad])
            + "}"
        ).to_numpy()
    text = _records(columns, tail)
    if is_marker.any():
        text[is_marker] = [
            f"taobao {chunk.file}:{no} {reason}: {line}"
            for no, reason, line in zip(
                chunk.line_no[is_marker], marker[is_marker], chunk.text[is_marker], strict=True
            )
        ]
    return text, np.where(is_marker, marker, field_bad)


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

    def _append_to(self, tmp: Path, fresh: bool, lines: Sequence[str]) -> None:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w" if fresh else "a", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")

    def append(self, kind: str, day: dt.date, name: str, lines: Sequence[str]) -> None:
        if not lines:
            return
        final = self.final_path(kind, day, name)
        fresh = final not in self._temps
        if fresh:
            self._temps[final] = final.with_name(f".{final.name}.tmp")
        self._append_to(self._temps[final], fresh, lines)

    def append_undated(self, name: str, lines: Sequence[str]) -> None:
        """Lines without a usable day: kept aside, appended to the first day at the end."""
        if not lines:
            return
        fresh = name not in self._undated
        if fresh:
            self._undated[name] = (
                self._settings.lake.raw_root / "impressions" / f".{OUTPUT_PREFIX}{name}.undated.tmp"
            )
        self._append_to(self._undated[name], fresh, lines)

    def write_days(self, kind: str, name: str, day: IntArray, text: pd.Series) -> Counter[int]:
        """Append each line to the file of its day (-1: undated); lines per day."""
        undated = day < 0
        self.undated_lines += int(undated.sum())
        self.append_undated(name, text[undated].tolist())
        counts: Counter[int] = Counter()
        for d in np.unique(day[~undated]).tolist():
            rows = text[day == d].tolist()
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
            for kind in raw_format.SOURCES:
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


def _convert_raw_sample(chunk: _Chunk, scenario: str) -> tuple[IntArray, pd.Series, ObjArray]:
    f = chunk.fields
    n = len(chunk)
    ts, ts_ok = _parse_epoch(f["time_stamp"])
    user, user_ok = _parse_int(f["user"])
    item, item_ok = _parse_int(f["adgroup_id"])
    pid = _strip(f["pid"])
    pid_ok = pid.str.fullmatch(r"[0-9]+_[0-9]+").to_numpy(dtype=bool)
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
    position = pid.map(PID_POSITIONS).fillna(PID_OTHER_POSITION).astype(np.int64).to_numpy()
    columns = [
        ("impression_id", '"ad-' + pd.Series(ids, dtype=object) + '"'),
        ("user_id", _int_fragment(f["user"], user, user_ok)),
        ("item_id", _int_fragment(f["adgroup_id"], item, item_ok)),
        ("event_time", '"' + _iso(ts) + '"'),
        ("scenario", _const(json.dumps(scenario), n)),
        ("position", _num(position)),
        ("click", _int_fragment(f["clk"], clk, clk_ok)),
        ("cart", _const("0", n)),
        ("purchase", _const("0", n)),
    ]
    text, reasons = _lines(chunk, columns, marker, field_bad)
    return _day(ts, ts_ok), text, reasons


def _import_raw_sample(run: _Run, path: Path, summary: SourceSummary) -> None:
    header = _check_header(path, RAW_SAMPLE)
    scenario = run.settings.generator.downstream_scenario
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
    btag_ok = btag.isin(list(BTAG_LABELS)).to_numpy(dtype=bool)
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
    code = btag.map({tag: i for i, tag in enumerate(BTAG_LABELS)}).fillna(len(BTAG_LABELS))
    labels = table[code.to_numpy(dtype=np.int64)]
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
    ids: pd.Series, user: pd.Series, item: pd.Series, iso: pd.Series, labels: IntArray
) -> list[tuple[str, pd.Series]]:
    n = len(ids)
    return [
        ("impression_id", ids),
        ("user_id", user),
        ("item_id", item),
        ("event_time", '"' + iso + '"'),
        ("scenario", _const(json.dumps(BROWSE_SCENARIO), n)),
        ("position", _const("0", n)),
        ("click", _num(labels[:, 0])),
        ("cart", _num(labels[:, 1])),
        ("purchase", _num(labels[:, 2])),
    ]


def _negative_lines(
    b: _Behavior, hexes: list[str], iso: pd.Series, neg: IntArray, rows: IntArray
) -> tuple[list[str], list[int], list[int]]:
    """Text, day and order key of the negatives of ``rows`` (k per row, after the positive)."""
    k = neg.shape[1]
    n = len(rows) * k
    row_rep = np.repeat(rows, k)
    j_rep = np.tile(np.arange(k), len(rows))
    ids = pd.Series(
        [f'"bn-{hexes[r]}-{j}"' for r, j in zip(row_rep.tolist(), j_rep.tolist(), strict=True)],
        dtype=object,
    )
    columns = _behavior_columns(
        ids,
        _num(b.user[row_rep]),
        _num(neg[rows].reshape(n)),
        iso.iloc[row_rep].reset_index(drop=True),
        np.zeros((n, 3), dtype=np.int64),
    )
    text = _records(columns, _const("}", n)).tolist()
    order = (row_rep * (k + 1) + 1 + j_rep).tolist()
    return text, b.day[row_rep].tolist(), order


def _convert_behavior(
    run: _Run, chunk: _Chunk, pop: _Popularity
) -> tuple[IntArray, pd.Series, ObjArray, int]:
    """Output lines (positives, each followed by its negatives), days, reasons, skipped."""
    b = _parse_behavior(chunk)
    k = run.negatives_per_positive
    hexes, hashes = _hash64(_key(chunk.fields, ("user", "time_stamp", "btag", "cate", "brand")))
    iso = _iso(b.ts)
    columns = _behavior_columns(
        '"bl-' + pd.Series(hexes, dtype=object) + '"',
        _int_fragment(chunk.fields["user"], b.user, b.user_ok),
        _num(b.item),
        iso,
        b.labels,
    )
    text, reasons = _lines(chunk, columns, b.marker, b.field_bad)
    valid = np.flatnonzero(b.valid)
    skipped = 0
    if k == 0 or len(valid) == 0:
        return b.day, text, reasons, skipped
    neg, possible = draw_negatives(
        pop, b.day[valid], b.item[valid], hashes[valid], k, run.settings.generator.seed
    )
    skipped = int((~possible).sum()) * k
    full = np.zeros((len(chunk), k), dtype=np.int64)
    full[valid] = neg
    neg_text, neg_day, neg_order = _negative_lines(b, hexes, iso, full, valid[possible])
    order = np.concatenate([np.arange(len(chunk)) * (k + 1), np.array(neg_order, dtype=np.int64)])
    perm = np.argsort(order, kind="stable")
    all_text = pd.Series(text.tolist() + neg_text, dtype=object).iloc[perm].reset_index(drop=True)
    all_day = np.concatenate([b.day, np.array(neg_day, dtype=np.int64)])[perm]
    return all_day, all_text, reasons, skipped


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


def _parse_price(raw: pd.Series) -> tuple[npt.NDArray[np.float64], ObjArray]:
    """Prices and a problem per row: "" ok, "bad_price" (ingest flags it), "bad_price_value"."""
    s = _strip(raw)
    grammar = s.str.fullmatch(_FLOAT_RE).to_numpy(dtype=bool)
    values = np.full(len(s), np.nan)
    if grammar.any():
        values[grammar] = s[grammar].astype(float).to_numpy()
    finite = grammar & np.isfinite(values)
    spark_number = s.str.fullmatch(_SPARK_NUMBER_RE).to_numpy(dtype=bool)
    problem = _first_reason(
        [
            ("bad_price_value", spark_number & ~finite),
            ("bad_price", ~finite | (values < 0)),
        ],
        len(s),
    )
    return np.where(problem == "", values, np.nan), problem


def _price_text(values: npt.NDArray[np.float64]) -> pd.Series:
    return pd.Series([repr(float(v)) for v in values], dtype=object)


def _convert_ad_feature(chunk: _Chunk) -> tuple[pd.Series, ObjArray, pd.DataFrame]:
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
        price_frag[bad_price] = _jstr(f["price"][bad_price]).to_numpy()
    columns = [
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
        run.out.append("items", day, "ad_feature", text.tolist())
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
    columns = [
        ("item_id", _num(attrs["item"].to_numpy(dtype=np.int64))),
        ("category_id", _num(attrs["cate"].to_numpy(dtype=np.int64))),
        ("brand_id", _num(brand).where(~missing, '""')),
        ("price", _price_text(pseudo_item_prices(attrs["cate"], ad_prices))),
    ]
    text = _records(columns, _const("}", len(attrs)))
    run.out.append("items", day, "pseudo_items", text.tolist())
    return len(attrs)


def _convert_user_profile(chunk: _Chunk) -> tuple[pd.Series, ObjArray]:
    f = chunk.fields
    n = len(chunk)
    user, user_ok = _parse_int(f["userid"])
    gender_code, gender_ok = _parse_int(f["final_gender_code"])
    gender = np.where(
        gender_ok & (gender_code == 1), "M", np.where(gender_ok & (gender_code == 2), "F", "U")
    )
    optional: dict[str, tuple[pd.Series, BoolArray]] = {}
    for column in ("age_level", "pvalue_level"):
        values, ok = _parse_int(f[column])
        blank = (_strip(f[column]) == "").to_numpy(dtype=bool)
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
    columns = [
        ("user_id", _int_fragment(f["userid"], user, user_ok)),
        ("gender", '"' + pd.Series(gender, dtype=object) + '"'),
        ("age_level", optional["age_level"][0]),
        ("purchase_power", optional["pvalue_level"][0]),
    ]
    return _lines(chunk, columns, marker, field_bad)


def _import_user_profile(run: _Run, path: Path, day: dt.date, summary: SourceSummary) -> None:
    header = _check_header(path, USER_PROFILE)
    for chunk in _chunks(path, header, run.chunksize):
        text, reasons = _convert_user_profile(chunk)
        summary.count(reasons)
        run.out.append("users", day, "user_profile", text.tolist())


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
    for scenario in (settings.generator.downstream_scenario, BROWSE_SCENARIO):
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

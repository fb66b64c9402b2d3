"""Tensors for the pre-training model, built from pyarrow tables with gold-sample column names.

Each side of the model has its own batch builder that needs only its own columns, so the
knowledge export can build a user table from ``silver.user_behavior`` + ``silver.user_stats``
(stats renamed to ``u_*``), an item table from ``dim.items`` + ``silver.item_stats`` (``i_*``)
and a user x category table from the behaviour sequence + ``silver.user_category_stats``
(``uc_*``) without ever building full samples:

============================  ==============================================================
builder                       columns read
============================  ==============================================================
:func:`user_batch`            user_id, behaviors, seq_len, gender, age_level, purchase_power,
                              every ``u_*`` counter
:func:`item_batch`            item_id, category_id, brand_id, price, every ``i_*`` counter
:func:`user_category_batch`   user_id, behaviors, seq_len, category_id (the query), every
                              ``uc_*`` counter
:func:`sample_batch`          all of the above + scenario, position, click, cart, purchase,
                              weight (labels may be absent: then they are zeros)
============================  ==============================================================

Identifiers are not reduced to embedding rows here: every id (and every string such as a
scenario) becomes a 63-bit *hash* (splitmix64 with a per-field salt), and the model takes it
modulo its bucket count. So this module does not depend on the model's buckets, and an id
never seen in training still maps to some trained row. Hash 0 is reserved for "missing"
(null id, padding of the behaviour sequence) and maps to the zero padding row.

Counters: ``log1p`` of counts, ``logit`` of the smoothed click rates (``*_ctr_*``, which lie
strictly in (0, 1) because of the prior). Counter columns are taken in
:func:`counter_columns` order (by window, then counter), so the table's column order does
not matter, only its set of ``u_*`` / ``i_*`` / ``uc_*`` columns (checked by the model).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from keep.core.errors import InputError
from keep.core.tables import COUNTERS

USER_PREFIX = "u_"
ITEM_PREFIX = "i_"
USER_CATEGORY_PREFIX = "uc_"

BEHAVIOR_TYPES: dict[str, int] = {"click": 1, "cart": 2, "purchase": 3}
GENDERS: dict[str, int] = {"F": 1, "M": 2}  # anything else (U, null) -> 3 / 0
# Small ordinal attributes are clipped into a fixed table: 0 = missing, value v -> v + 1.
ORDINAL_SLOTS = 16
POSITION_SLOTS = 64

_SALTS: dict[str, int] = {
    "user": 0x51ED270B27AC5E8B,
    "item": 0x2545F4914F6CDD1D,
    "category": 0x9E3779B97F4A7C15,
    "brand": 0xBF58476D1CE4E5B9,
    "scenario": 0x94D049BB133111EB,
}
_MASK63 = np.uint64((1 << 63) - 1)


def hash_ids(values: np.ndarray, valid: np.ndarray, field: str) -> np.ndarray:
    """splitmix64 of int64 ids salted per field, as non-negative int64; 0 where invalid."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) + np.uint64(_SALTS[field])
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    out = (x & _MASK63).astype(np.int64)
    out[out == 0] = 1  # 0 stays reserved for "missing"
    out[~valid] = 0
    return out


def _hash_strings(arr: pa.Array | pa.ChunkedArray, field: str) -> np.ndarray:
    """Stable hash (crc32 per distinct string, then salted splitmix64) of a string column."""
    encoded = pc.dictionary_encode(arr)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    valid = np.asarray(encoded.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    table = np.array(
        [zlib.crc32(s.encode()) for s in encoded.dictionary.to_pylist()] or [0], dtype=np.int64
    )
    raw = table[np.where(valid, codes, 0).astype(np.int64)]
    return hash_ids(raw, valid, field)


def _column(table: pa.Table, name: str, what: str) -> pa.ChunkedArray:
    if table.schema.get_field_index(name) < 0:
        raise InputError(
            f"{what} needs column {name!r}; got {table.column_names[:12]}... "
            "Build the table with the gold-sample column names (keep.core.tables.samples_spec)."
        )
    return table.column(name)


def _ids(table: pa.Table, name: str, field: str, what: str) -> torch.Tensor:
    col = _column(table, name, what).combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    return torch.from_numpy(hash_ids(values, valid, field))


def _ordinal(table: pa.Table, name: str, slots: int, what: str) -> torch.Tensor:
    col = _column(table, name, what).combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.clip(values, 0, slots - 2) + 1
    out[~valid] = 0
    return torch.from_numpy(out)


def _floats(table: pa.Table, name: str, what: str, default: float = 0.0) -> torch.Tensor:
    col = _column(table, name, what).combine_chunks()
    values = col.cast(pa.float64()).fill_null(default).to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.asarray(values, dtype=np.float32))


def counter_columns(prefix: str, windows: Sequence[int]) -> list[str]:
    """Counter columns of one entity in model order, e.g. ``u_impressions_1d ... u_ctr_365d``."""
    return [f"{prefix}{c}_{w}d" for w in windows for c in (*COUNTERS, "ctr")]


def _windows_of(table: pa.Table, prefix: str) -> list[int]:
    days: set[int] = set()
    for name in table.column_names:
        if name.startswith(prefix + "ctr_") and name.endswith("d"):
            day = name[len(prefix) + 4 : -1]
            if day.isdigit():
                days.add(int(day))
    return sorted(days)


def counter_tensor(table: pa.Table, names: Sequence[str], what: str) -> torch.Tensor:
    """``[B, len(names)]``: ``log1p`` of counts, ``logit`` of rates (columns named ``*ctr_*``)."""
    out = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        col = _column(table, name, what).combine_chunks().cast(pa.float64()).fill_null(0.0)
        v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        if name.startswith("ctr_") or "_ctr_" in name:
            v = np.clip(v, 1e-4, 1 - 1e-4)
            out[:, j] = np.log(v / (1 - v))
        else:
            out[:, j] = np.log1p(np.maximum(v, 0.0))
    return torch.from_numpy(out)


def _counters(table: pa.Table, prefix: str, what: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``[B, C]`` transformed counters and their column names (C = 5 x windows; may be 0)."""
    names = counter_columns(prefix, _windows_of(table, prefix))
    if not names:
        return torch.zeros(table.num_rows, 0), ()
    return counter_tensor(table, names, what), tuple(names)


# --------------------------------------------------------------------------- batches

B = TypeVar("B")


class _Batch:
    """Tensor containers: slicing and concatenation along the batch dimension."""

    def take(self: B, index: torch.Tensor | slice) -> B:
        values: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                values[f.name] = v[index]
            elif isinstance(v, _Batch):
                values[f.name] = v.take(index)
            else:
                values[f.name] = v
        return replace(self, **values)  # type: ignore[type-var]

    def __len__(self) -> int:
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
            if isinstance(v, _Batch):
                return len(v)
        return 0


def concat_batches(parts: Sequence[B]) -> B:
    """Concatenate batches of one type along the batch dimension (sequences are re-padded)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    values: dict[str, Any] = {}
    for f in fields(first):  # type: ignore[arg-type]
        vs = [getattr(p, f.name) for p in parts]
        if isinstance(vs[0], torch.Tensor):
            if vs[0].dim() == 2 and f.name in _SEQ_FIELDS:
                width = max(v.shape[1] for v in vs)
                vs = [torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in vs]
            values[f.name] = torch.cat(vs)
        elif isinstance(vs[0], _Batch):
            values[f.name] = concat_batches(vs)
        else:
            values[f.name] = vs[0]
    return replace(first, **values)  # type: ignore[type-var]


_SEQ_FIELDS = frozenset({"item", "category", "brand", "scenario", "behavior", "mask"})


@dataclass
class BehaviorSeq(_Batch):
    """The user's last behaviours, oldest first, left-aligned and zero-padded: all ``[B, L]``."""

    item: torch.Tensor
    category: torch.Tensor
    brand: torch.Tensor
    scenario: torch.Tensor
    behavior: torch.Tensor  # 1 click, 2 cart, 3 purchase, 0 padding
    mask: torch.Tensor  # bool, True where a behaviour is present


@dataclass
class UserBatch(_Batch):
    """Candidate-independent user inputs. ``user``/``gender``/``age``/``power``: ``[B]``."""

    user: torch.Tensor
    seq: BehaviorSeq
    gender: torch.Tensor
    age: torch.Tensor
    power: torch.Tensor
    counters: torch.Tensor  # [B, Cu]
    counter_names: tuple[str, ...]


@dataclass
class ItemBatch(_Batch):
    """Item inputs: hashed ``item``/``category``/``brand`` ``[B]``, ``price`` ``[B]`` (log1p)."""

    item: torch.Tensor
    category: torch.Tensor
    brand: torch.Tensor
    price: torch.Tensor
    counters: torch.Tensor  # [B, Ci]
    counter_names: tuple[str, ...]


@dataclass
class UserCategoryBatch(_Batch):
    """User x category inputs: the behaviour sequence and the query ``category`` ``[B]``."""

    user: torch.Tensor
    seq: BehaviorSeq
    category: torch.Tensor
    counters: torch.Tensor  # [B, Cuc]
    counter_names: tuple[str, ...]


@dataclass
class Labels(_Batch):
    """Funnel labels and sample weights, all float ``[B]``."""

    click: torch.Tensor
    cart: torch.Tensor
    purchase: torch.Tensor
    weight: torch.Tensor


@dataclass
class SampleBatch(_Batch):
    """One training batch: the three sides, the impression context and the labels."""

    user: UserBatch
    item: ItemBatch
    user_category: UserCategoryBatch
    scenario: torch.Tensor  # [B] hashed scenario of the impression
    position: torch.Tensor  # [B] clipped position slot
    labels: Labels


# --------------------------------------------------------------------------- builders


def behavior_seq(table: pa.Table, max_len: int = 50, what: str = "behavior_seq") -> BehaviorSeq:
    """Pad the ``behaviors`` list column into ``[B, L]`` tensors, keeping the newest ``max_len``.

    ``L`` is the longest kept sequence of this table (at least 1), so short-history batches
    stay cheap.
    """
    col = _column(table, "behaviors", what).combine_chunks()
    n = len(col)
    col = col.fill_null(pa.scalar([], col.type)) if col.null_count else col
    offsets = np.asarray(col.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, max_len)
    width = max(int(kept.max()) if n else 0, 1)
    values = col.values  # struct array of every behaviour (all rows)
    start = offsets[:-1] + (lengths - kept)  # newest max_len of each row
    row = np.repeat(np.arange(n, dtype=np.int64), kept)
    first_of_row = np.repeat(np.cumsum(kept) - kept, kept)
    slot = np.arange(int(kept.sum()), dtype=np.int64) - first_of_row
    src = np.repeat(start, kept) + slot
    src_arr = pa.array(src)

    def field_ids(name: str, salt: str) -> np.ndarray:
        child = values.field(name).take(src_arr)
        if pa.types.is_string(child.type):
            return _hash_strings(child, salt)
        valid = np.asarray(child.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        raw = child.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        return hash_ids(raw, valid, salt)

    def pad(flat: np.ndarray) -> torch.Tensor:
        out = np.zeros((n, width), dtype=np.int64)
        out[row, slot] = flat
        return torch.from_numpy(out)

    btype = values.field("behavior_type").take(src_arr)
    btype_codes = np.zeros(len(btype), dtype=np.int64)
    for name, code in BEHAVIOR_TYPES.items():
        hit = pc.equal(btype, name).fill_null(False).to_numpy(zero_copy_only=False)
        btype_codes[np.asarray(hit, dtype=bool)] = code
    mask = np.zeros((n, width), dtype=bool)
    mask[row, slot] = True
    return BehaviorSeq(
        item=pad(field_ids("item_id", "item")),
        category=pad(field_ids("category_id", "category")),
        brand=pad(field_ids("brand_id", "brand")),
        scenario=pad(field_ids("scenario", "scenario")),
        behavior=pad(btype_codes),
        mask=torch.from_numpy(mask),
    )


def _gender(table: pa.Table, what: str) -> torch.Tensor:
    col = _column(table, "gender", what).combine_chunks()
    out = np.full(len(col), 3, dtype=np.int64)
    for name, code in GENDERS.items():
        hit = pc.equal(col, name).fill_null(False).to_numpy(zero_copy_only=False)
        out[np.asarray(hit, dtype=bool)] = code
    out[~np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)] = 0
    return torch.from_numpy(out)


def user_batch(table: pa.Table, max_len: int = 50) -> UserBatch:
    """User side from user_id, behaviors, seq_len, gender, age_level, purchase_power, ``u_*``."""
    what = "user_batch"
    counters, names = _counters(table, USER_PREFIX, what)
    return UserBatch(
        user=_ids(table, "user_id", "user", what),
        seq=behavior_seq(table, max_len, what),
        gender=_gender(table, what),
        age=_ordinal(table, "age_level", ORDINAL_SLOTS, what),
        power=_ordinal(table, "purchase_power", ORDINAL_SLOTS, what),
        counters=counters,
        counter_names=names,
    )


def item_batch(table: pa.Table) -> ItemBatch:
    """Item side from item_id, category_id, brand_id, price and the ``i_*`` counters."""
    what = "item_batch"
    counters, names = _counters(table, ITEM_PREFIX, what)
    price = _floats(table, "price", what)
    return ItemBatch(
        item=_ids(table, "item_id", "item", what),
        category=_ids(table, "category_id", "category", what),
        brand=_ids(table, "brand_id", "brand", what),
        price=torch.log1p(price.clamp_min(0.0)),
        counters=counters,
        counter_names=names,
    )


def user_category_batch(table: pa.Table, max_len: int = 50) -> UserCategoryBatch:
    """User x category side from user_id, behaviors, seq_len, category_id and ``uc_*``."""
    what = "user_category_batch"
    counters, names = _counters(table, USER_CATEGORY_PREFIX, what)
    return UserCategoryBatch(
        user=_ids(table, "user_id", "user", what),
        seq=behavior_seq(table, max_len, what),
        category=_ids(table, "category_id", "category", what),
        counters=counters,
        counter_names=names,
    )


def _label(table: pa.Table, name: str, what: str, default: float) -> torch.Tensor:
    if name not in table.column_names:
        return torch.full((table.num_rows,), default)
    return _floats(table, name, what, default)


def sample_batch(table: pa.Table, max_len: int = 50) -> SampleBatch:
    """Everything the training step needs, from a gold.pretrain_samples table.

    The behaviour sequence is decoded once and shared by the user and user x category sides.
    """
    what = "sample_batch"
    user = user_batch(table, max_len)
    item = item_batch(table)
    uc_counters, uc_names = _counters(table, USER_CATEGORY_PREFIX, what)
    user_category = UserCategoryBatch(
        user=user.user,
        seq=user.seq,
        category=item.category,
        counters=uc_counters,
        counter_names=uc_names,
    )
    position = _ordinal(table, "position", POSITION_SLOTS, what)
    return SampleBatch(
        user=user,
        item=item,
        user_category=user_category,
        scenario=torch.from_numpy(_hash_strings(_column(table, "scenario", what), "scenario")),
        position=position,
        labels=Labels(
            click=_label(table, "click", what, 0.0),
            cart=_label(table, "cart", what, 0.0),
            purchase=_label(table, "purchase", what, 0.0),
            weight=_label(table, "weight", what, 1.0),
        ),
    )


# Columns the training reader needs from gold.pretrain_samples (everything else is skipped).
SAMPLE_BASE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "scenario",
    "position",
    "click",
    "cart",
    "purchase",
    "weight",
    "gender",
    "age_level",
    "purchase_power",
    "category_id",
    "brand_id",
    "price",
    "behaviors",
    "seq_len",
)


def sample_columns(windows: Sequence[int]) -> list[str]:
    """Every column :func:`sample_batch` reads, for a samples table with these windows."""
    return [
        *SAMPLE_BASE_COLUMNS,
        *counter_columns(USER_PREFIX, windows),
        *counter_columns(ITEM_PREFIX, windows),
        *counter_columns(USER_CATEGORY_PREFIX, windows),
    ]

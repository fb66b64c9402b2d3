"""The downstream model's own online features: built at the end of a day, packed, and turned
back into model rows when a candidate list is scored.

Besides knowledge, a downstream model reads per user the profile (gender, age level,
purchase power), the behaviours **in its own scenario** (newest ``max_seq_len``) and the
``du_*`` counters; per item the category, brand, price and ``di_*`` counters
(models/downstream/features.py). The scoring service must give it exactly what a training
row of the next day would hold, so these are built from the same sources and rules:

* profile and item attributes: each key's ``dim.users`` / ``dim.items`` row with the
  greatest ``ds <= d``;
* behaviours: ``silver.user_behavior`` of ``d`` (the state of the end of ``d``, which is
  what a sample of ``d + 1`` carries), filtered to the scenario;
* counters: :func:`models.downstream.counters.add_downstream_counters` for day ``d + 1``
  over the downstream rows of days ``<= d``.

Each key's features are packed into one binary value (one row per key in SQLite, one hash
field per key in Redis: a request reads one value per key):

* user: a fixed header (format, gender code, age level, purchase power, counter and
  behaviour counts), the counters as float64, then one record per behaviour (item,
  category, brand as int64 with a null sentinel, behaviour type as a code);
* item: float64 ``[category, brand, price, di_* counters...]``, NaN for a null.

Key ``-1`` of each table holds the features of an **unseen** key (no profile, no
behaviours, counters 0 / 0 / the fitted prior click rate): the service scores unknown ids
with it, flagged. Request ids are never negative, so it cannot collide.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keep.core.errors import InputError
from keep.core.tables import BEHAVIOR
from models.downstream.counters import ITEM_PREFIX, USER_PREFIX, add_downstream_counters
from models.downstream.features import filter_behaviors
from models.pretrain.features import BEHAVIOR_TYPES, GENDERS

FORMAT = 1
UNSEEN = -1  # the key holding an unseen user's / item's features
NULL_ID = np.iinfo(np.int64).min
NULL_INT32 = np.iinfo(np.int32).min
_GENDER_NAMES = {code: name for name, code in GENDERS.items()}
_OTHER_GENDER = 3  # any other non-null gender string ("U"): the model treats them alike
_OTHER_GENDER_NAME = "U"
_TYPE_NAMES = {code: name for name, code in BEHAVIOR_TYPES.items()}

USER_HEADER = np.dtype(
    [
        ("format", "u1"),
        ("gender", "u1"),
        ("age_level", "<i4"),
        ("purchase_power", "<i4"),
        ("n_counters", "<u2"),
        ("n_behaviors", "<u2"),
    ]
)
BEHAVIOR_RECORD = np.dtype(
    [("item_id", "<i8"), ("category_id", "<i8"), ("brand_id", "<i8"), ("behavior", "u1")]
)
ITEM_FIXED = ("category_id", "brand_id", "price")


def counter_names(prefix: str, windows: Sequence[int]) -> list[str]:
    """The ``du_*`` (``prefix`` = USER_PREFIX) or ``di_*`` columns, in model order."""
    return [f"{prefix}{c}_{w}d" for w in windows for c in ("impressions", "clicks", "ctr")]


# --------------------------------------------------------------------------- building


def _as_of(table: pa.Table, key: str, ds: dt.date) -> pa.Table:
    """Each key's row with the greatest ``ds <= ds`` (dimension tables)."""
    table = table.filter(pc.less_equal(table.column("ds"), ds.isoformat()))
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(table, [(key, "ascending"), ("ds", "descending")])
    table = table.take(order)
    keys = np.asarray(table.column(key).to_numpy(), np.int64)
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    return table.filter(pa.array(first))


def _counter_day(keys: np.ndarray, key: str) -> pa.Table:
    other = "item_id" if key == "user_id" else "user_id"
    return pa.table(
        {key: pa.array(keys, pa.int64()), other: pa.array(np.zeros(len(keys), np.int64))}
    )


def _gender_codes(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    out = np.full(len(col), _OTHER_GENDER, np.uint8)
    for name, code in GENDERS.items():
        out[np.asarray(pc.equal(col, name).fill_null(False).to_numpy(zero_copy_only=False))] = code
    out[~np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)] = 0
    return out


def _ints_or(col: pa.Array | pa.ChunkedArray, null: int, dtype: str) -> np.ndarray:
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
    values = np.asarray(col.fill_null(0).to_numpy(zero_copy_only=False)).astype(dtype)
    values[~valid] = null
    return values


def build_user_features(
    dim_users: pa.Table,
    user_behavior: pa.Table,
    history: pa.Table,
    *,
    ds: dt.date,
    scenario: str,
    counter_windows: Sequence[int],
    max_seq_len: int,
    prior_strength: float,
) -> pa.Table:
    """``user_id`` and packed ``features`` of every user known at the end of ``ds`` (and of
    the unseen key ``-1``), for scoring on ``ds + 1``.

    ``dim_users``: dim.users rows (any days); ``user_behavior``: silver.user_behavior of
    ``ds``; ``history``: downstream rows of days ``<= ds`` (user_id, item_id, click, weight,
    scenario, ds).
    """
    profile = _as_of(dim_users, "user_id", ds)
    users = np.union1d(
        np.asarray(profile.column("user_id").to_numpy(), np.int64),
        np.asarray(user_behavior.column("user_id").to_numpy(), np.int64),
    )
    users = np.concatenate([[UNSEEN], users[users >= 0]])
    n = len(users)

    header = np.zeros(n, USER_HEADER)
    header["format"] = FORMAT
    header["age_level"] = NULL_INT32
    header["purchase_power"] = NULL_INT32
    if profile.num_rows:
        at = np.searchsorted(users, np.asarray(profile.column("user_id").to_numpy(), np.int64))
        header["gender"][at] = _gender_codes(profile.column("gender"))
        header["age_level"][at] = _ints_or(profile.column("age_level"), NULL_INT32, "<i4")
        header["purchase_power"][at] = _ints_or(profile.column("purchase_power"), NULL_INT32, "<i4")

    names = counter_names(USER_PREFIX, counter_windows)
    counted = add_downstream_counters(
        _counter_day(users, "user_id"),
        history,
        ds=ds + dt.timedelta(days=1),
        windows=counter_windows,
        scenario=scenario,
        prior_strength=prior_strength,
    )
    counters = np.stack(
        [np.asarray(counted.column(c).to_numpy(), "<f8") for c in names], axis=1
    ).reshape(n, len(names))
    header["n_counters"] = len(names)

    # In-scenario behaviours, newest max_seq_len, one record array per user.
    records: list[np.ndarray] = [np.zeros(0, BEHAVIOR_RECORD)] * n
    if user_behavior.num_rows:
        kept = filter_behaviors(user_behavior.select(["user_id", "behaviors"]), scenario)
        col = kept.column("behaviors").combine_chunks()
        offsets = np.asarray(col.offsets.to_numpy(), np.int64)
        values = col.values
        flat = np.zeros(len(values), BEHAVIOR_RECORD)
        for name in ("item_id", "category_id", "brand_id"):
            flat[name] = _ints_or(values.field(name), int(NULL_ID), "<i8")
        btype = values.field("behavior_type")
        for name, code in BEHAVIOR_TYPES.items():
            hit = pc.equal(btype, name).fill_null(False).to_numpy(zero_copy_only=False)
            flat["behavior"][np.asarray(hit, bool)] = code
        at = np.searchsorted(users, np.asarray(kept.column("user_id").to_numpy(), np.int64))
        for row, pos in enumerate(at):
            lo, hi = offsets[row], offsets[row + 1]
            records[pos] = flat[max(lo, hi - max_seq_len) : hi]
    header["n_behaviors"] = [len(r) for r in records]

    blobs = [
        header[i : i + 1].tobytes() + counters[i].tobytes() + records[i].tobytes() for i in range(n)
    ]
    return pa.table(
        {"user_id": pa.array(users, pa.int64()), "features": pa.array(blobs, pa.binary())}
    )


def build_item_features(
    dim_items: pa.Table,
    history: pa.Table,
    *,
    ds: dt.date,
    scenario: str,
    counter_windows: Sequence[int],
    prior_strength: float,
) -> pa.Table:
    """``item_id`` and packed ``features`` of every item known at the end of ``ds`` (and of
    the unseen key ``-1``), for scoring on ``ds + 1``."""
    attrs = _as_of(dim_items, "item_id", ds)
    items = np.asarray(attrs.column("item_id").to_numpy(), np.int64)
    order = np.argsort(items, kind="stable")
    items = np.concatenate([[UNSEEN], items[order]])
    n = len(items)
    names = counter_names(ITEM_PREFIX, counter_windows)
    values = np.full((n, len(ITEM_FIXED) + len(names)), np.nan, "<f8")
    for j, name in enumerate(ITEM_FIXED):
        col = attrs.column(name).cast(pa.float64())
        values[1:, j] = np.asarray(col.to_numpy(zero_copy_only=False), "<f8")[order]
    counted = add_downstream_counters(
        _counter_day(items, "item_id"),
        history,
        ds=ds + dt.timedelta(days=1),
        windows=counter_windows,
        scenario=scenario,
        prior_strength=prior_strength,
    )
    for j, name in enumerate(names):
        values[:, len(ITEM_FIXED) + j] = np.asarray(counted.column(name).to_numpy(), "<f8")
    blobs = [values[i].tobytes() for i in range(n)]
    return pa.table(
        {"item_id": pa.array(items, pa.int64()), "features": pa.array(blobs, pa.binary())}
    )


# --------------------------------------------------------------------------- reading


@dataclass
class UserFeatures:
    gender: str | None
    age_level: int | None
    purchase_power: int | None
    counters: np.ndarray  # float64 [C]
    behaviors: np.ndarray  # BEHAVIOR_RECORD [n]


def decode_user(blob: bytes) -> UserFeatures:
    head = np.frombuffer(blob, USER_HEADER, count=1)[0]
    if int(head["format"]) != FORMAT:
        raise InputError(
            f"user features of format {int(head['format'])}, this scorer reads format "
            f"{FORMAT}: republish the serving features with this version"
        )
    at = USER_HEADER.itemsize
    k, m = int(head["n_counters"]), int(head["n_behaviors"])
    counters = np.frombuffer(blob, "<f8", count=k, offset=at)
    behaviors = np.frombuffer(blob, BEHAVIOR_RECORD, count=m, offset=at + 8 * k)
    gender_code = int(head["gender"])
    age, power = int(head["age_level"]), int(head["purchase_power"])
    return UserFeatures(
        gender=None if gender_code == 0 else _GENDER_NAMES.get(gender_code, _OTHER_GENDER_NAME),
        age_level=None if age == NULL_INT32 else age,
        purchase_power=None if power == NULL_INT32 else power,
        counters=counters,
        behaviors=behaviors,
    )


def decode_items(blobs: Sequence[bytes]) -> np.ndarray:
    """float64 ``[N, 3 + C]``: category, brand, price (NaN = null), then the di_* counters."""
    if not blobs:
        return np.zeros((0, 0), "<f8")
    width = len(blobs[0]) // 8
    return np.frombuffer(b"".join(blobs), "<f8").reshape(len(blobs), width)


def item_category(blob: bytes) -> int | None:
    """The category id held in one packed item value."""
    value = float(np.frombuffer(blob, "<f8", count=1)[0])
    return None if np.isnan(value) else int(value)


def _nullable_ints(values: np.ndarray) -> pa.Array:
    valid = ~np.isnan(values)
    return pa.array(np.where(valid, values, 0).astype(np.int64), pa.int64(), mask=~valid)


def request_table(
    *,
    user_id: int,
    user: UserFeatures,
    item_ids: Sequence[int],
    items: np.ndarray,
    positions: Sequence[int] | None,
    scenario: str,
    counter_windows: Sequence[int],
) -> pa.Table:
    """One training-set-like row per candidate (no knowledge, no labels): what
    :meth:`DownstreamModel.batch` reads, for the user and items decoded above."""
    n = len(item_ids)
    uc = counter_names(USER_PREFIX, counter_windows)
    ic = counter_names(ITEM_PREFIX, counter_windows)
    if items.shape != (n, len(ITEM_FIXED) + len(ic)) or user.counters.shape != (len(uc),):
        raise InputError(
            "the serving features do not match the model's counter windows "
            f"{list(counter_windows)}: republish them with the model's settings"
        )
    beh = user.behaviors
    m = len(beh)

    def ids(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.int64(), mask=values == NULL_ID)

    btype = pa.array([_TYPE_NAMES.get(int(c)) for c in beh["behavior"]], pa.string())
    one = pa.StructArray.from_arrays(
        [
            pa.nulls(m, BEHAVIOR.field("event_time").type),
            ids(beh["item_id"]),
            ids(beh["category_id"]),
            ids(beh["brand_id"]),
            pa.array([scenario] * m, pa.string()),
            btype,
        ],
        fields=list(BEHAVIOR),
    )
    # Every candidate row carries the user's sequence: offsets 0, m, 2m, ... over n copies.
    values = pa.concat_arrays([one] * n) if n else one.slice(0, 0)
    behaviors = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * m), values)
    columns: dict[str, pa.Array] = {
        "user_id": pa.array(np.full(n, user_id, np.int64)),
        "item_id": pa.array(np.asarray(item_ids, np.int64)),
        "category_id": _nullable_ints(items[:, 0]),
        "brand_id": _nullable_ints(items[:, 1]),
        "price": pa.array(items[:, 2], pa.float64(), from_pandas=True),
        "gender": pa.array([user.gender] * n, pa.string()),
        "age_level": pa.array([user.age_level] * n, pa.int32()),
        "purchase_power": pa.array([user.purchase_power] * n, pa.int32()),
        "position": pa.array([None] * n if positions is None else list(positions), pa.int32()),
        "scenario": pa.array([scenario] * n, pa.string()),
        "behaviors": behaviors,
    }
    for j, name in enumerate(uc):
        columns[name] = pa.array(np.full(n, user.counters[j]), pa.float64())
    for j, name in enumerate(ic):
        columns[name] = pa.array(items[:, len(ITEM_FIXED) + j], pa.float64())
    return pa.table(columns)

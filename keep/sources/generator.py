"""A synthetic super-domain that knows the truth: raw logs plus oracle probabilities.

The world (see docs/generator.md):

* **Users** have latent interests (``latent_dim`` floats) shared by every subsystem, a
  heavy-tailed activity level, and profile attributes loosely tied to their interests.
  Interests drift slowly: each day ``u <- sqrt(1 - r^2) u + r e`` with ``r = drift``.
* **Items** belong to a category; an item's latent factor is its category's factor plus
  item-specific noise, so categories carry transferable signal. Items have a brand, a
  log-normal price and a power-law (Zipf) popularity.
* **Scenarios** (subsystems) each have a traffic share, a base click logit and a position
  decay. ``downstream_scenario`` (default ``ads``) gets ~10x fewer impressions per user than
  the whole super-domain, as in the paper (~29 vs ~236 a month).
* **Impressions**: a user is drawn by activity, a category by a mix of the user's taste and
  global popularity (retrieval), an item within the category by popularity, a position.
* **Click** ~ Bernoulli(sigmoid(base_s + a * <u, v> / sqrt(d) + b_item + b_user
  - decay_s * log1p(position) + e)), with ``e ~ N(0, click_noise_sd)`` idiosyncratic noise that
  no feature reveals. The **oracle** file holds that exact probability per impression, so
  the oracle's AUC is the ceiling for any model's AUC on the same impressions.
* **Funnel**: cart | click and purchase | cart (or click without cart, "buy now") follow
  their own logistic models of the same affinity and the price.
* **Growth**: new users and items appear every day; they land in the dimension files of
  the day they appear. About 1% of items change price every day.

Everything is a function of ``(seed, day)``: same settings, same files, byte for byte.
Work is vectorised with numpy and done in chunks of 500 k impressions, so memory is bounded;
each chunk is its own random stream, so ``generator.workers`` processes make a big day's
chunks side by side and the file is the same for any number of them. The JSON lines are
built column-wise by Arrow (the bytes pandas' ``to_json`` would write, several times faster).
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from keep.core.config import GeneratorSettings, Settings
from keep.core.files import atomic_write_text
from keep.lake import raw_format

CHUNK = 500_000  # impressions generated at a time (bounds memory; part of the world's definition)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True)
class World:
    """The static part of the world: a function of the generator settings only."""

    g: GeneratorSettings
    user_latent0: np.ndarray  # U_pool x D, interests on the epoch day
    user_activity: np.ndarray  # U_pool, unnormalised
    user_bias: np.ndarray  # U_pool
    user_gender: np.ndarray
    user_age_level: np.ndarray
    user_purchase_power: np.ndarray
    category_latent: np.ndarray  # C x D
    item_category: np.ndarray  # I_pool
    item_latent: np.ndarray  # I_pool x D
    item_brand: np.ndarray
    item_price0: np.ndarray
    item_popularity: np.ndarray  # I_pool, unnormalised (Zipf)
    item_bias: np.ndarray
    affinity_center: float  # mean affinity of retrieved (user, item) pairs on the epoch day

    @property
    def n_user_pool(self) -> int:
        return len(self.user_activity)

    def n_users_on(self, day_index: int) -> int:
        return min(self.n_user_pool, self.g.n_users + self.g.new_users_per_day * day_index)

    def n_items_on(self, day_index: int) -> int:
        return min(len(self.item_category), self.g.n_items + self.g.new_items_per_day * day_index)


_WORLDS: dict[str, World] = {}


def build_world(g: GeneratorSettings) -> World:
    """The world of ``g`` (cached per world id: building it is the expensive part)."""
    key = g.world_id()
    if key not in _WORLDS:
        _WORLDS.clear()
        _WORLDS[key] = _build_world(g)
    return _WORLDS[key]


def _build_world(g: GeneratorSettings) -> World:
    rng = _rng(g.seed, 0)
    d = g.latent_dim
    n_users = g.n_users + g.new_users_per_day * g.horizon_days
    n_items = g.n_items + g.new_items_per_day * g.horizon_days
    user_latent = rng.normal(0, 1, (n_users, d))
    category_latent = rng.normal(0, 1, (g.n_categories, d))
    # Category sizes are themselves skewed: a few big categories, a long tail.
    category_weight = 1.0 / np.arange(1, g.n_categories + 1) ** 0.7
    item_category = rng.choice(g.n_categories, n_items, p=category_weight / category_weight.sum())
    item_latent = category_latent[item_category] + g.item_spread * rng.normal(0, 1, (n_items, d))
    popularity = 1.0 / rng.permutation(np.arange(1, n_items + 1)) ** g.popularity_exponent
    activity = np.exp(rng.normal(0, g.activity_sigma, n_users))
    # Retrieval shows users items they like, so the raw affinity of shown pairs is positive
    # on average; centring it keeps each scenario's base_logit the click logit of an average
    # impression. Estimated once per world from a pilot sample of the retrieval process.
    pilot_users = rng.choice(
        g.n_users, 20_000, p=activity[: g.n_users] / activity[: g.n_users].sum()
    )
    pilot_u = user_latent[pilot_users]
    taste = pilot_u @ category_latent.T / np.sqrt(d) * g.retrieval_sharpness
    pilot_cats = np.argmax(taste + rng.gumbel(size=taste.shape), axis=1)
    center = float(
        np.mean(np.einsum("ij,ij->i", pilot_u, category_latent[pilot_cats]) / np.sqrt(d))
    )
    return World(
        g=g,
        user_latent0=user_latent,
        user_activity=activity,
        user_bias=rng.normal(0, 0.3, n_users),
        user_gender=rng.choice(np.array(["F", "M", "U"]), n_users, p=[0.5, 0.45, 0.05]),
        user_age_level=np.clip(np.round(3 + 1.5 * rng.normal(0, 1, n_users)), 0, 6).astype(
            np.int64
        ),
        # Purchase power is tied to one interest dimension: the profile carries weak signal.
        user_purchase_power=np.digitize(user_latent[:, 0], [-0.7, 0.0, 0.7]).astype(np.int64),
        category_latent=category_latent,
        item_category=item_category.astype(np.int64),
        item_latent=item_latent,
        item_brand=(
            item_category * (g.n_brands // g.n_categories)
            + rng.integers(0, max(1, g.n_brands // g.n_categories), n_items)
        ).astype(np.int64),
        item_price0=np.round(
            np.exp(rng.normal(3.0, 0.8, n_items) + 0.3 * category_latent[item_category, 1]), 2
        ),
        item_popularity=popularity,
        item_bias=0.15 * np.log(popularity / popularity.mean()),
        affinity_center=center,
    )


def day_index(g: GeneratorSettings, ds: dt.date) -> int:
    k = (ds - g.epoch).days
    if k < 0:
        raise ValueError(f"{ds} is before the generator's epoch {g.epoch}")
    if k > g.horizon_days:
        raise ValueError(
            f"{ds} is past the generator's horizon ({g.horizon_days} days after {g.epoch})"
        )
    return k


def user_latent_on(world: World, k: int) -> np.ndarray:
    """Interests on day index ``k``: a random walk from the epoch (slow drift)."""
    g = world.g
    u = world.user_latent0.copy()
    keep_ = np.sqrt(1.0 - g.drift**2)
    for day in range(1, k + 1):
        u = keep_ * u + g.drift * _rng(g.seed, 3, day).normal(0, 1, u.shape)
    return u


def item_price_on(world: World, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Prices on day index ``k`` and the mask of items whose price changed that day."""
    g = world.g
    price = world.item_price0.copy()
    changed = np.zeros(len(price), dtype=bool)
    for day in range(1, k + 1):
        rng = _rng(g.seed, 4, day)
        changed = rng.random(len(price)) < g.price_change_rate
        price = np.where(changed, np.round(price * rng.uniform(0.85, 1.15, len(price)), 2), price)
    return price, changed


def _category_sampler(world: World, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Items sorted by category and a stacked CDF (category c's CDF shifted by c)."""
    cats = world.item_category[:n_items]
    order = np.lexsort((np.arange(n_items), cats))
    pop = world.item_popularity[:n_items][order]
    sorted_cats = cats[order]
    totals = np.bincount(sorted_cats, weights=pop, minlength=world.g.n_categories)
    cum = np.cumsum(pop)
    starts = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    within = (cum - starts[sorted_cats]) / np.where(totals[sorted_cats] > 0, totals[sorted_cats], 1)
    return order, sorted_cats + np.minimum(within, 1.0)


def impressions_for_day(settings: Settings, ds: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's impressions (raw-format columns) and the oracle (true probabilities)."""
    frames = [chunk for chunk in iter_impression_chunks(settings, ds)]
    raw = pd.concat([f[0] for f in frames], ignore_index=True)
    oracle = pd.concat([f[1] for f in frames], ignore_index=True)
    return raw, oracle


@dataclass(frozen=True)
class _Day:
    """What every impression chunk of one day draws from (computed once per day)."""

    n_users: int
    n_items: int
    users_latent: np.ndarray  # n_users x D, interests on the day
    price: np.ndarray  # item prices on the day
    order: np.ndarray  # items sorted by category (see _category_sampler)
    stacked_cdf: np.ndarray
    present_cats: np.ndarray  # categories with at least one item on the day
    activity: np.ndarray  # n_users, normalised
    cat_pop: np.ndarray  # log popularity of each category


_DAYS: dict[tuple[str, dt.date], _Day] = {}


def _day(g: GeneratorSettings, ds: dt.date) -> _Day:
    """The day's context (cached for the last day asked: a day's chunks share it)."""
    key = (g.world_id(), ds)
    if key not in _DAYS:
        _DAYS.clear()
        world = build_world(g)
        k = day_index(g, ds)
        n_users, n_items = world.n_users_on(k), world.n_items_on(k)
        order, stacked_cdf = _category_sampler(world, n_items)
        _DAYS[key] = _Day(
            n_users=n_users,
            n_items=n_items,
            users_latent=user_latent_on(world, k)[:n_users],
            price=item_price_on(world, k)[0],
            order=order,
            stacked_cdf=stacked_cdf,
            present_cats=np.bincount(world.item_category[:n_items], minlength=g.n_categories) > 0,
            activity=world.user_activity[:n_users] / world.user_activity[:n_users].sum(),
            cat_pop=np.log(
                np.bincount(
                    world.item_category[:n_items],
                    weights=world.item_popularity[:n_items],
                    minlength=g.n_categories,
                )
                + 1e-12
            ),
        )
    return _DAYS[key]


def n_chunks(g: GeneratorSettings) -> int:
    """Impression chunks per day (each its own random stream: the world's definition)."""
    return -(-g.impressions_per_day // CHUNK)


def iter_impression_chunks(
    settings: Settings, ds: dt.date
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """The day's impressions and oracle, chunk by chunk (in impression id order)."""
    g = settings.generator
    for chunk_no in range(n_chunks(g)):
        yield impression_chunk(g, ds, chunk_no)


def impression_chunk(
    g: GeneratorSettings, ds: dt.date, chunk_no: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chunk ``chunk_no`` of the day: raw-format impressions and their oracle probabilities.

    A function of ``(g, ds, chunk_no)`` alone, so chunks can be made in any process.
    """
    world = build_world(g)
    day = _day(g, ds)
    n_users, n_items = day.n_users, day.n_items
    scen = g.scenarios
    names = np.array([s.name for s in scen])
    share = np.array([s.traffic_share for s in scen])
    base = np.array([s.base_logit for s in scen])
    decay = np.array([s.position_decay for s in scen])
    sqrt_d = np.sqrt(g.latent_dim)
    lo = chunk_no * CHUNK
    n = min(CHUNK, g.impressions_per_day - lo)
    rng = _rng(g.seed, 1, ds.toordinal(), chunk_no)
    s_idx = rng.choice(len(scen), n, p=share / share.sum())
    users = rng.choice(n_users, n, p=day.activity)
    u = day.users_latent[users]
    # Retrieval: category by taste (softmax over categories) mixed with popularity.
    taste = (u @ world.category_latent.T) / sqrt_d * g.retrieval_sharpness + day.cat_pop
    taste = np.where(day.present_cats, taste, -np.inf).astype(np.float32)
    cats = np.argmax(taste + rng.gumbel(size=taste.shape).astype(np.float32), axis=1)
    pos_in_sorted = np.searchsorted(day.stacked_cdf, cats + rng.random(n), side="left")
    items = day.order[np.minimum(pos_in_sorted, n_items - 1)]
    position = np.minimum(rng.geometric(0.15, n) - 1, 49)
    affinity = np.einsum("ij,ij->i", u, world.item_latent[items]) / sqrt_d - world.affinity_center
    logit = (
        base[s_idx]
        + g.affinity_weight * affinity
        + world.item_bias[items]
        + world.user_bias[users]
        - decay[s_idx] * np.log1p(position)
        + rng.normal(0, g.click_noise_sd, n)
    )
    p_click = _sigmoid(logit)
    click = rng.random(n) < p_click
    log_price = np.log1p(day.price[items])
    p_cart = _sigmoid(-1.8 + 1.0 * affinity - 0.15 * (log_price - 3.0))
    cart = click & (rng.random(n) < p_cart)
    p_buy_after_cart = _sigmoid(-1.0 + 0.8 * affinity - 0.2 * (log_price - 3.0))
    p_buy_now = 0.1 * p_buy_after_cart
    purchase = click & (rng.random(n) < np.where(cart, p_buy_after_cart, p_buy_now))
    ms = np.sort(rng.integers(0, 86_400_000, n))
    # ISO-8601 with milliseconds and a Z: numpy formats datetime64 in C (pandas' strftime
    # formats one timestamp at a time in Python, half the generator's time).
    times = np.datetime_as_string(np.datetime64(ds.isoformat(), "ms") + ms, unit="ms")
    ids = np.char.add(f"{ds:%Y%m%d}-", np.char.zfill((lo + np.arange(n)).astype(str), 9))
    raw = pd.DataFrame(
        {
            "impression_id": ids,
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "event_time": np.char.add(times, "Z"),
            "scenario": names[s_idx],
            "position": position.astype(np.int64),
            "click": click.astype(np.int64),
            "cart": cart.astype(np.int64),
            "purchase": purchase.astype(np.int64),
        }
    )
    oracle = pd.DataFrame(
        {
            "impression_id": ids,
            "p_click": p_click,
            "p_cart_given_click": p_cart,
            "p_purchase_given_click": p_cart * p_buy_after_cart + (1 - p_cart) * p_buy_now,
        }
    )
    return raw, oracle


def dimensions_for_day(settings: Settings, ds: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and items landing on ``ds``: everything on the epoch, then new ones and price changes."""
    g = settings.generator
    world = build_world(g)
    k = day_index(g, ds)
    if k == 0:
        user_rows = np.arange(world.n_users_on(0))
        item_rows = np.arange(world.n_items_on(0))
    else:
        user_rows = np.arange(world.n_users_on(k - 1), world.n_users_on(k))
        price_now, changed = item_price_on(world, k)
        changed[world.n_items_on(k - 1) :] = False
        item_rows = np.concatenate(
            [
                np.flatnonzero(changed[: world.n_items_on(k - 1)]),
                np.arange(world.n_items_on(k - 1), world.n_items_on(k)),
            ]
        )
    price, _ = item_price_on(world, k)
    users = pd.DataFrame(
        {
            "user_id": user_rows.astype(np.int64),
            "gender": world.user_gender[user_rows],
            "age_level": world.user_age_level[user_rows],
            "purchase_power": world.user_purchase_power[user_rows],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_rows.astype(np.int64),
            "category_id": world.item_category[item_rows],
            "brand_id": world.item_brand[item_rows],
            "price": price[item_rows],
        }
    )
    return users, items


def truth_dir(settings: Settings, kind: str, ds: dt.date) -> Path:
    return settings.generator.truth_root / kind / f"ds={ds.isoformat()}"


# The one raw file per source and day that write_day writes, and the day's oracle truth file.
RAW_FILE = "part-00000.jsonl"
RAW_SOURCES = ("impressions", "users", "items")
ORACLE_FILE = "part-00000.parquet"


def foreign_files(settings: Settings, ds: dt.date) -> list[Path]:
    """Raw files of ``ds`` that :func:`write_day` did not write (e.g. a real landing zone).

    The generator writes exactly ``part-00000.jsonl`` per source and day, and the day's
    oracle truth (under ``truth_root``, never beside the raw files) before them: any other
    raw file, or raw files of a day without that truth, came from somewhere else.
    """
    landed = [p for source in RAW_SOURCES for p in raw_format.day_files(settings, source, ds)]
    if not (truth_dir(settings, "oracle", ds) / ORACLE_FILE).is_file():
        return landed
    return [p for p in landed if p.name != RAW_FILE]


def write_world_manifest(settings: Settings) -> Path:
    """truth/world.json: the generator configuration and its hash (the world's id)."""
    g = settings.generator
    path = g.truth_root / "world.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "world_id": g.world_id(),
        "generator": g.world_dump(),
    }
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def write_day(settings: Settings, ds: dt.date) -> dict[str, Path]:
    """Land one day: raw impressions/users/items + oracle and latent truth files. Idempotent."""
    k = day_index(settings.generator, ds)
    write_world_manifest(settings)
    imp_path = raw_format.day_dir(settings, "impressions", ds) / RAW_FILE
    oracle_path = truth_dir(settings, "oracle", ds) / ORACLE_FILE
    for path in (imp_path, oracle_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp_imp = imp_path.with_name(f".{imp_path.name}.tmp")
    tmp_oracle = oracle_path.with_name(f".{oracle_path.name}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        with tmp_imp.open("wb") as fh:
            for lines, oracle in _encoded_chunks(settings.generator, ds):
                fh.write(lines)
                writer = writer or pq.ParquetWriter(tmp_oracle, oracle.schema)
                writer.write_table(oracle)
    finally:
        if writer is not None:
            writer.close()
    # The truth first: raw files without it are not the generator's (foreign_files).
    tmp_oracle.replace(oracle_path)
    tmp_imp.replace(imp_path)
    users, items = dimensions_for_day(settings, ds)
    paths = {
        "impressions": imp_path,
        "oracle": oracle_path,
        "users": write_jsonl(users, raw_format.day_dir(settings, "users", ds) / RAW_FILE),
        "items": write_jsonl(items, raw_format.day_dir(settings, "items", ds) / RAW_FILE),
    }
    world = build_world(settings.generator)
    n = world.n_users_on(k)
    latent = user_latent_on(world, k)[:n].astype(np.float32)
    paths["user_latent"] = _atomic_parquet(
        pd.DataFrame({"user_id": np.arange(n, dtype=np.int64), "latent": list(latent)}),
        truth_dir(settings, "user_latent", ds) / "part-00000.parquet",
    )
    return paths


def _encoded_chunk(g: GeneratorSettings, ds: dt.date, chunk_no: int) -> tuple[bytes, pa.Table]:
    """Chunk ``chunk_no`` as the bytes of its JSON lines and its oracle as an Arrow table."""
    raw, oracle = impression_chunk(g, ds, chunk_no)
    return jsonl_bytes(raw), pa.Table.from_pandas(oracle, preserve_index=False)


def _encoded_chunks(g: GeneratorSettings, ds: dt.date) -> Iterator[tuple[bytes, pa.Table]]:
    """The day's encoded chunks in order; made by ``g.workers`` processes when there are
    several chunks (each chunk is a function of its number alone, so the bytes are the same
    whoever makes them). At most two chunks per worker wait in memory to be written."""
    chunks = range(n_chunks(g))
    workers = min(g.workers, len(chunks))
    if workers <= 1:
        for chunk_no in chunks:
            yield _encoded_chunk(g, ds, chunk_no)
        return
    _day(g, ds)  # built once here; the forked workers inherit the world and the day
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque[Future[tuple[bytes, pa.Table]]] = deque()
        for chunk_no in chunks:
            pending.append(pool.submit(_encoded_chunk, g, ds, chunk_no))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# Characters a JSON string holds as they are in pandas' JSON (printable ASCII except the
# quote, the backslash and the slash, which pandas escapes).
_PLAIN_JSON_TEXT = r"^[ !#-.0-\[\]-~]*$"


def jsonl_bytes(df: pd.DataFrame) -> bytes:
    """``df`` as JSON lines, byte for byte what ``df.to_json(orient="records", lines=True)``
    writes, built column-wise by Arrow (4x faster) when every column is an integer or plain
    text without nulls; any other frame is written by pandas."""
    parts: list[str | pa.Array] = []
    for i, name in enumerate(df.columns):
        col = df[name].to_numpy()
        if not re.fullmatch(_PLAIN_JSON_TEXT, str(name)):
            return df.to_json(orient="records", lines=True).encode()
        parts.append(("{" if i == 0 else ",") + f'"{name}":')
        if col.dtype.kind in "iu":
            parts.append(pc.cast(pa.array(col), pa.large_string()))
            continue
        if col.dtype.kind not in "OU":
            return df.to_json(orient="records", lines=True).encode()
        try:
            text = pa.array(col, pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return df.to_json(orient="records", lines=True).encode()
        plain = pc.all(pc.match_substring_regex(text, _PLAIN_JSON_TEXT)).as_py()
        if text.null_count or not plain:
            return df.to_json(orient="records", lines=True).encode()
        parts += ['"', text, '"']
    pieces = [p if isinstance(p, pa.Array) else pa.scalar(p, pa.large_string()) for p in parts]
    end, separator = (pa.scalar(text, pa.large_string()) for text in ("}\n", ""))
    lines = pc.binary_join_element_wise(*pieces, end, separator)
    if len(lines) == 0:
        return b""
    # The lines lie back to back in the array's data buffer, between its first and last offset.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return lines.buffers()[2][first:last].to_pybytes()


def write_jsonl(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` as JSON lines atomically (temp file + rename; readers skip ``.``-files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_json(tmp, orient="records", lines=True)
    tmp.replace(path)
    return path


def _atomic_parquet(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path

"""Demo-mode data: writes days of raw files in the documented raw format.

A small synthetic super-domain: users and items with latent factors, several
scenarios, a click -> cart -> purchase funnel. Deterministic for a seed and a day
(each day draws from its own RNG stream), vectorised with numpy.

``write_day`` is what the daily DAG's ``land_raw`` task calls in demo mode;
``keep generate`` writes a range of days.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from keep import raw_format
from keep.config import GeneratorSettings, Settings

LATENT_DIM = 8


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _world(g: GeneratorSettings) -> dict[str, np.ndarray]:
    """The static world: latent factors and attributes, a function of the seed only."""
    rng = _rng(g.seed, 0)
    item_category = rng.integers(0, g.n_categories, g.n_items)
    category_factor = rng.normal(0, 1, (g.n_categories, LATENT_DIM))
    item_factor = category_factor[item_category] + 0.5 * rng.normal(0, 1, (g.n_items, LATENT_DIM))
    popularity = 1.0 / np.arange(1, g.n_items + 1) ** 0.8
    rng.shuffle(popularity)
    return {
        "user_factor": rng.normal(0, 1, (g.n_users, LATENT_DIM)),
        "item_factor": item_factor,
        "item_category": item_category,
        "item_brand": rng.integers(0, g.n_brands, g.n_items),
        "item_price": np.round(np.exp(rng.normal(3.0, 1.0, g.n_items)), 2),
        "item_popularity": popularity / popularity.sum(),
        "user_gender": rng.choice(np.array(["F", "M", "U"]), g.n_users),
        "user_age_level": rng.integers(0, 7, g.n_users),
        "user_purchase_power": rng.integers(0, 4, g.n_users),
    }


def impressions_for_day(settings: Settings, ds: dt.date) -> pd.DataFrame:
    """The day's impressions as a DataFrame of raw-format columns (values already valid)."""
    g = settings.generator
    world = _world(g)
    rng = _rng(g.seed, 1, ds.toordinal())
    n = g.impressions_per_day
    scenarios = np.array(settings.ingest.scenarios)
    # The last scenario is the sparse downstream subsystem: ~10x fewer impressions.
    weights = np.ones(len(scenarios))
    weights[-1] = 0.1 * (len(scenarios) - 1) / 1.0
    weights /= weights.sum()
    scenario_idx = rng.choice(len(scenarios), n, p=weights)
    users = rng.integers(0, g.n_users, n)
    items = rng.choice(g.n_items, n, p=world["item_popularity"])
    position = rng.integers(0, 20, n)
    affinity = np.einsum("ij,ij->i", world["user_factor"][users], world["item_factor"][items])
    logit = -2.5 + 0.4 * affinity - 0.05 * position + 0.3 * (scenario_idx == 0)
    click = rng.random(n) < 1 / (1 + np.exp(-logit))
    cart = click & (rng.random(n) < 1 / (1 + np.exp(-(-1.5 + 0.3 * affinity))))
    purchase = click & (rng.random(n) < np.where(cart, 0.4, 0.05))
    seconds = np.sort(rng.integers(0, 86_400_000, n)) / 1000.0
    start = pd.Timestamp(ds.isoformat(), tz="UTC")
    times = start + pd.to_timedelta(seconds, unit="s")
    return pd.DataFrame(
        {
            "impression_id": [f"{ds:%Y%m%d}-{i:09d}" for i in range(n)],
            "user_id": users.astype(np.int64),
            "item_id": items.astype(np.int64),
            "event_time": times.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "scenario": scenarios[scenario_idx],
            "position": position.astype(np.int64),
            "click": click.astype(np.int64),
            "cart": cart.astype(np.int64),
            "purchase": purchase.astype(np.int64),
        }
    )


def dimensions_for_day(settings: Settings, ds: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and items rows landing on ``ds``: everything on the first day, then ~1% changes."""
    g = settings.generator
    world = _world(g)
    first_day = ds <= settings.pipeline.start_ds
    rng = _rng(g.seed, 2, ds.toordinal())
    user_rows = np.arange(g.n_users) if first_day else rng.choice(g.n_users, max(1, g.n_users // 100), replace=False)
    item_rows = np.arange(g.n_items) if first_day else rng.choice(g.n_items, max(1, g.n_items // 100), replace=False)
    price = world["item_price"][item_rows]
    if not first_day:  # price changes are the typical daily dimension update
        price = np.round(price * rng.uniform(0.8, 1.2, len(item_rows)), 2)
    users = pd.DataFrame(
        {
            "user_id": user_rows.astype(np.int64),
            "gender": world["user_gender"][user_rows],
            "age_level": world["user_age_level"][user_rows],
            "purchase_power": world["user_purchase_power"][user_rows],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": item_rows.astype(np.int64),
            "category_id": world["item_category"][item_rows].astype(np.int64),
            "brand_id": world["item_brand"][item_rows].astype(np.int64),
            "price": price,
        }
    )
    return users, items


def write_jsonl(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` as JSON lines atomically (temp file + rename; readers skip ``.``-files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_json(tmp, orient="records", lines=True, double_precision=6)
    tmp.replace(path)
    return path


def write_day(settings: Settings, ds: dt.date) -> dict[str, Path]:
    """Land one day of raw files (impressions, users, items); idempotent per day."""
    users, items = dimensions_for_day(settings, ds)
    frames = {"impressions": impressions_for_day(settings, ds), "users": users, "items": items}
    return {
        source: write_jsonl(df, raw_format.day_dir(settings, source, ds) / "part-00000.jsonl")
        for source, df in frames.items()
    }

"""The streaming reader: coverage, disjoint equal shards, determinism, resume, bounded windows."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from keep.core.errors import InputError
from models.pretrain.features import SampleBatch, sample_columns
from models.pretrain.reader import ReaderPosition, SampleReader
from tests.models.pretrain.conftest import tiny_settings, write_days

DAYS = [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]


def signatures(batch: SampleBatch) -> list[tuple[float, ...]]:
    """A row's fingerprint: price and the first item counters, undone from log1p."""
    raw = np.expm1(
        np.hstack(
            [batch.item.price.unsqueeze(-1).numpy(), batch.item.counters[:, :4].numpy()]
        ).astype(np.float64)
    )
    return [(round(float(r[0]), 2), *(float(round(v)) for v in r[1:])) for r in raw]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = tiny_settings(tmp_path_factory.mktemp("reader"))
    return write_days(settings, DAYS, rows=500, files_per_day=3)


def reader(table: Path, **kw: object) -> SampleReader:
    args: dict[str, object] = {
        "columns": sample_columns([1, 7, 30, 365]),
        "batch_size": 64,
        "shuffle_buffer": 300,
        "seed": 11,
    }
    args.update(kw)
    return SampleReader(table, DAYS, **args)  # type: ignore[arg-type]


def expected_signatures(table: Path) -> Counter[tuple[float, ...]]:
    t = DeltaTable(str(table)).to_pyarrow_table()
    cols = [t["price"].to_numpy()] + [
        t[f"i_{c}_1d"].to_numpy().astype(float)
        for c in ("impressions", "clicks", "carts", "purchases")
    ]
    return Counter(
        (round(float(row[0]), 2), *(float(v) for v in row[1:])) for row in np.stack(cols, axis=1)
    )


def test_epoch_covers_every_row_once_shuffled(table: Path) -> None:
    r = reader(table)
    batches = list(r.batches(ReaderPosition()))
    assert len(batches) == r.steps_per_epoch() == -(-1000 // 64)
    assert all(len(b) == 64 for b in batches[:-1]) and len(batches[-1]) == 1000 - 15 * 64
    got = Counter(s for b in batches for s in signatures(b))
    assert got == expected_signatures(table)
    # Shuffled across days: the first batch mixes rows of both days' files.
    other = list(reader(table, seed=12).batches(ReaderPosition()))
    assert signatures(batches[0]) != signatures(other[0])


def test_same_seed_same_order_and_resume_mid_epoch(table: Path) -> None:
    full = [signatures(b) for b in reader(table).batches(ReaderPosition(1, 0))]
    again = [signatures(b) for b in reader(table, workers=1).batches(ReaderPosition(1, 0))]
    assert full == again  # a worker process yields the same batches in the same order
    for k in (3, 5, 9):  # 5 = inside a window, 9 = right at a window edge (9 * 64 > 2 * 300)
        resumed = [signatures(b) for b in reader(table).batches(ReaderPosition(1, k))]
        assert resumed == full[k:]
    epoch0 = [signatures(b) for b in reader(table).batches(ReaderPosition(0, 0))]
    assert epoch0 != full  # every epoch has its own order


def test_ranks_get_disjoint_shards_and_equal_steps(table: Path) -> None:
    ranks = [reader(table, rank=r, world=2) for r in range(2)]
    units = [{(u.path, u.row_group) for w in r.windows(0) for u in w} for r in ranks]
    assert not units[0] & units[1]
    assert len(units[0] | units[1]) == 6  # 3 files x 2 days
    rows = [sum(u.rows for w in r.windows(0) for u in w) for r in ranks]
    steps = [len(list(r.batches(ReaderPosition()))) for r in ranks]
    assert steps[0] == steps[1] == min(rows) // 64
    seen = [Counter(s for b in r.batches(ReaderPosition()) for s in signatures(b)) for r in ranks]
    assert sum((seen[0] + seen[1]).values()) == 2 * steps[0] * 64
    assert seen[0] + seen[1] <= expected_signatures(table)


def test_windows_bound_memory(table: Path) -> None:
    r = reader(table)
    biggest_unit = max(u.rows for u in r.units)
    for window in r.windows(0):
        assert sum(u.rows for u in window) < 300 + biggest_unit


def test_missing_day_is_a_clear_error(table: Path) -> None:
    with pytest.raises(InputError, match="no rows"):
        SampleReader(
            table,
            [dt.date(2025, 1, 1)],
            columns=["user_id"],
            batch_size=8,
            shuffle_buffer=10,
            seed=0,
        )
    with pytest.raises(InputError, match="no Delta table"):
        SampleReader(
            table.parent / "nope", DAYS, columns=[], batch_size=8, shuffle_buffer=10, seed=0
        )

"""Streaming, deterministic, resumable reader of gold.pretrain_samples (delta-rs + pyarrow, no JVM).

How one epoch is read (docs/pretrain.md, "Reader"):

1. The Delta log (delta-rs) lists the data files of the requested ``ds`` partitions, ordered
   by day and smallest impression id; parquet footers give each file's row groups. A row
   group is the unit of reading ("unit").
2. The units are permuted with ``default_rng([seed, epoch])``; rank ``r`` of ``world``
   takes every ``world``-th unit (disjoint shards, no coordination needed).
3. A rank's units are grouped, in that order, into *windows* of about ``shuffle_buffer``
   rows. A window is read (only the needed columns), its rows are permuted with
   ``default_rng([seed, epoch, rank, window])`` and converted to tensors: memory holds a few
   windows (the one being consumed plus the workers' prefetch), never the whole table.
4. Batches of ``batch_size`` rows are cut from the concatenated stream of windows.

Everything above is a pure function of (table version's files, seed, epoch, rank, world),
so the reader's position is just ``(epoch, step)``: on resume, the row offset ``step x
batch_size`` is located in the windows' known sizes and reading restarts at that window.
Worker processes (``workers`` > 0, torch DataLoader) decode windows ahead of the training
loop; the order stays deterministic because the loader yields windows in index order.

Under DDP every rank takes the same number of steps per epoch: the minimum over ranks of
``floor(rows_r / batch_size)`` (computed by every rank from metadata alone); the few rows
beyond it are left for that epoch. A single process keeps its last, partial batch.

Delta tables with deletion vectors or column mapping are refused (parquet files alone would
not give their rows); the lake writes neither.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from keep.core.errors import InputError
from models.pretrain.features import SampleBatch, concat_batches, sample_batch

_UNSUPPORTED_READER_FEATURES = {"deletionVectors", "columnMapping"}


@dataclass(frozen=True)
class Unit:
    """One parquet row group of one day's partition."""

    path: str
    row_group: int
    rows: int
    ds: str


@dataclass(frozen=True)
class ReaderPosition:
    """Where the reader is: ``step`` batches of ``epoch`` already taken (by this rank)."""

    epoch: int = 0
    step: int = 0

    def to_json(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> ReaderPosition:
        return cls(epoch=int(data["epoch"]), step=int(data["step"]))


def list_units(table_uri: str | Path, days: Sequence[dt.date]) -> list[Unit]:
    """Row groups of the given days' partitions, sorted (the order the permutation starts from)."""
    from deltalake import DeltaTable

    uri = str(table_uri)
    if not (Path(uri) / "_delta_log").is_dir() and "://" not in uri:
        raise InputError(
            f"no Delta table at {uri}: build gold.pretrain_samples first "
            "(`keep run` / `keep samples` for the days to train on)."
        )
    table = DeltaTable(uri)
    features = set(table.protocol().reader_features or [])
    if features & _UNSUPPORTED_READER_FEATURES:
        raise InputError(
            f"{uri} uses Delta reader features {sorted(features)}; the training reader reads "
            "parquet files directly and supports neither deletion vectors nor column mapping. "
            "Rewrite the table without them (e.g. REORG ... APPLY (PURGE))."
        )
    wanted = {d.isoformat() for d in days}
    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    parts = actions.column("partition.ds").to_pylist()
    # Order files by content (their smallest impression id, from the Delta log's stats), not
    # by their random names: two copies of the same data then shuffle identically.
    firsts = (
        actions.column("min.impression_id").to_pylist()
        if "min.impression_id" in actions.column_names
        else [""] * len(paths)
    )
    root = uri.rstrip("/")
    units: list[Unit] = []
    for ds, _, rel in sorted(zip(parts, [f or "" for f in firsts], paths, strict=True)):
        if ds not in wanted:
            continue
        full = rel if "://" in rel or rel.startswith("/") else f"{root}/{rel}"
        meta = pq.ParquetFile(full).metadata
        for i in range(meta.num_row_groups):
            rows = meta.row_group(i).num_rows
            if rows:
                units.append(Unit(path=full, row_group=i, rows=rows, ds=ds))
    return units


def available_days(table_uri: str | Path) -> list[dt.date]:
    """Days that have at least one file in the table (empty if the table does not exist)."""
    from deltalake import DeltaTable

    if not (Path(str(table_uri)) / "_delta_log").is_dir():
        return []
    actions = pa.table(DeltaTable(str(table_uri)).get_add_actions(flatten=True))
    return sorted({dt.date.fromisoformat(d) for d in actions.column("partition.ds").to_pylist()})


class _Windows(Dataset[SampleBatch]):
    """Map-style dataset: index -> one permuted window as a SampleBatch (runs in workers)."""

    def __init__(
        self,
        windows: list[list[Unit]],
        columns: list[str],
        seed: int,
        epoch: int,
        rank: int,
        max_seq_len: int,
    ) -> None:
        self.windows = windows
        self.columns = columns
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.max_seq_len = max_seq_len

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> SampleBatch:
        tables = [
            pq.ParquetFile(u.path).read_row_group(u.row_group, columns=self.columns)
            for u in self.windows[index]
        ]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, index])
        table = table.take(pa.array(rng.permutation(table.num_rows)))
        return sample_batch(table, self.max_seq_len)


class SampleReader:
    """Deterministic shuffled batches of one rank's shard of the given days (see module doc)."""

    def __init__(
        self,
        table_uri: str | Path,
        days: Sequence[dt.date],
        *,
        columns: list[str],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        max_seq_len: int = 50,
    ) -> None:
        if batch_size < 1 or shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be positive")
        self.days = sorted(days)
        self.units = list_units(table_uri, self.days)
        if not self.units:
            raise InputError(
                f"gold.pretrain_samples has no rows for {[d.isoformat() for d in self.days]}: "
                "build the samples of these days first (`keep samples`)."
            )
        if len(self.units) < world:
            raise InputError(
                f"{len(self.units)} parquet row groups for {world} ranks: each rank needs at "
                "least one; write the samples with more files or run fewer ranks."
            )
        self.columns = columns
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed, self.rank, self.world = seed, rank, world
        self.workers = workers
        self.max_seq_len = max_seq_len
        self.rows = sum(u.rows for u in self.units)

    def windows(self, epoch: int, rank: int | None = None) -> list[list[Unit]]:
        """The given rank's windows of ``epoch`` (default: this reader's rank)."""
        r = self.rank if rank is None else rank
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        mine = [self.units[i] for i in order[r :: self.world]]
        out: list[list[Unit]] = []
        current: list[Unit] = []
        rows = 0
        for unit in mine:
            current.append(unit)
            rows += unit.rows
            if rows >= self.shuffle_buffer:
                out.append(current)
                current, rows = [], 0
        if current:
            out.append(current)
        return out

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Batches every rank takes in ``epoch`` (equal across ranks under DDP)."""
        if self.world == 1:
            return -(-self.rows // self.batch_size)
        per_rank = [
            sum(u.rows for w in self.windows(epoch, r) for u in w) for r in range(self.world)
        ]
        return min(per_rank) // self.batch_size

    def batches(self, position: ReaderPosition) -> Iterator[SampleBatch]:
        """Batches of ``position.epoch`` from ``position.step`` on, until the epoch's end."""
        epoch, step = position.epoch, position.step
        total = self.steps_per_epoch(epoch)
        if step >= total:
            return
        windows = self.windows(epoch)
        sizes = np.array([sum(u.rows for u in w) for w in windows], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        offset = step * self.batch_size
        first = int(np.searchsorted(starts, offset, side="right") - 1)
        skip = offset - int(starts[first])
        dataset = _Windows(windows, self.columns, self.seed, epoch, self.rank, self.max_seq_len)
        loader: DataLoader[SampleBatch] = DataLoader(
            dataset,
            batch_size=None,
            sampler=list(range(first, len(windows))),
            num_workers=self.workers,
            collate_fn=_identity,  # type: ignore[arg-type]
            prefetch_factor=2 if self.workers else None,
            # The loader draws its workers' base seed from this generator each time it is
            # iterated; by default it would draw from torch's global generator, so a run
            # resumed mid-epoch (one more iteration) would leave a different global RNG state
            # in its checkpoint than a run never interrupted. The reader's own seed decides.
            generator=torch.Generator().manual_seed(
                int(np.random.default_rng([self.seed, epoch, self.rank]).integers(2**62))
            ),
        )
        pending: list[SampleBatch] = []
        have = 0
        for window in loader:
            if skip:
                window = window.take(slice(skip, None))
                skip = 0
            at = 0
            n = len(window)
            while at < n:
                take = min(self.batch_size - have, n - at)
                pending.append(window.take(slice(at, at + take)))
                have += take
                at += take
                if have == self.batch_size:
                    yield concat_batches(pending)
                    pending, have = [], 0
                    step += 1
                    if step >= total:
                        return
        if pending and step < total:
            yield concat_batches(pending)


def _identity(x: SampleBatch) -> SampleBatch:
    return x

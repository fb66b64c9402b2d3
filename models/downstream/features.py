"""Tensors for the downstream CTR model, built from ``gold.downstream_training_set`` rows.

The base model sees **only the subsystem's own features** (DESIGN.md, the plugging half):

* hashed ids (user, item, category, brand), gender / age level / purchase power, log price,
  position;
* the user's behaviour sequence **filtered to the subsystem's scenario**
  (:func:`filter_behaviors`): the table's ``behaviors`` column is the super-domain sequence,
  and "each subsystem trains on its own feedback" means the downstream model may read only
  the behaviours that happened in it;
* the downstream-only counters ``du_*`` / ``di_*`` (models/downstream/counters.py);
* label ``click`` and ``weight`` (as :class:`models.pretrain.features.Labels`).

Carried separately, for the arms that may use them:

* :class:`Knowledge` (``keep``, ``concat``): the user, item and user x category knowledge
  vectors and their three missing flags; a missing key's vector is zeroed here whatever the
  table holds (cold key = zero vector + flag);
* :class:`SuperDomainExtras` (``superdomain_features``): the unfiltered sequence and the
  super-domain counters ``u_*`` / ``i_*`` / ``uc_*``.

Ids are hashed with :func:`models.pretrain.features.hash_ids` (the model takes them modulo
its own bucket counts), counters are transformed by
:func:`models.pretrain.features.counter_tensor` (log1p counts, logit rates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from keep.core.errors import InputError
from keep.core.tables import KNOWLEDGE_ENTITIES
from models.downstream.counters import downstream_counter_columns
from models.pretrain.features import (
    ITEM_PREFIX,
    ORDINAL_SLOTS,
    POSITION_SLOTS,
    USER_CATEGORY_PREFIX,
    USER_PREFIX,
    BehaviorSeq,
    Labels,
    _Batch,
    _column,
    _floats,
    _gender,
    _ids,
    _label,
    _ordinal,
    behavior_seq,
    counter_columns,
    counter_tensor,
)

WHAT = "downstream_batch"


@dataclass
class Knowledge(_Batch):
    """Knowledge of one lineage: ``user``/``item``/``user_category`` ``[B, K]``, ``missing``
    ``[B, 3]`` float flags in that order (1 = cold key, its vector is zeros)."""

    user: torch.Tensor
    item: torch.Tensor
    user_category: torch.Tensor
    missing: torch.Tensor


@dataclass
class SuperDomainExtras(_Batch):
    """The raw super-domain inputs of the ``superdomain_features`` arm."""

    seq: BehaviorSeq  # unfiltered behaviour sequence, [B, L]
    counters: torch.Tensor  # [B, C] transformed u_* / i_* / uc_* counters
    counter_names: tuple[str, ...]


@dataclass
class DownstreamBatch(_Batch):
    """One batch of the downstream model. Ids and attributes ``[B]`` (hashed / slots)."""

    user: torch.Tensor
    item: torch.Tensor
    category: torch.Tensor
    brand: torch.Tensor
    gender: torch.Tensor
    age: torch.Tensor
    power: torch.Tensor
    price: torch.Tensor  # [B] log1p(price)
    position: torch.Tensor
    seq: BehaviorSeq  # the user's behaviours in the downstream scenario only, [B, L]
    counters: torch.Tensor  # [B, C] transformed du_* / di_* counters
    counter_names: tuple[str, ...]
    labels: Labels  # click and weight (cart / purchase as read, unused)
    knowledge: Knowledge | None = None
    superdomain: SuperDomainExtras | None = None


def filter_behaviors(table: pa.Table, scenario: str) -> pa.Table:
    """``table`` with ``behaviors`` keeping only the behaviours of ``scenario`` (order kept)
    and ``seq_len`` set to the kept count."""
    col = _column(table, "behaviors", WHAT).combine_chunks()
    if col.null_count:
        col = col.fill_null(pa.scalar([], col.type))
    n = len(col)
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = col.flatten()
    keep = pc.equal(flat.field("scenario"), scenario).fill_null(False)
    keep_np = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.repeat(np.arange(n, dtype=np.int64), lengths)[keep_np]
    kept = np.bincount(rows, minlength=n)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int32)
    filtered = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat.filter(keep))
    out = table.set_column(table.schema.get_field_index("behaviors"), "behaviors", filtered)
    seq_len = pa.array(kept.astype(np.int32), pa.int32())
    if "seq_len" in out.column_names:
        return out.set_column(out.schema.get_field_index("seq_len"), "seq_len", seq_len)
    return out.append_column("seq_len", seq_len)


def knowledge_tensors(table: pa.Table, knowledge_dim: int) -> Knowledge:
    """The three knowledge vectors ``[B, K]`` and missing flags ``[B, 3]`` of ``table``."""
    vectors: list[torch.Tensor] = []
    flags: list[np.ndarray] = []
    n = table.num_rows
    for entity in KNOWLEDGE_ENTITIES:
        col = _column(table, f"{entity}_vector", WHAT).combine_chunks()
        missing = _column(table, f"{entity}_knowledge_missing", WHAT).combine_chunks()
        miss = np.asarray(missing.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)
        lengths = np.asarray(
            pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64
        )
        values = np.zeros((n, knowledge_dim), dtype=np.float32)
        full = lengths == knowledge_dim
        if not np.all(full | (lengths == 0)):
            bad = sorted(set(lengths[~(full | (lengths == 0))].tolist()))[:3]
            raise InputError(
                f"{entity}_vector has length {bad}, the model expects knowledge_dim="
                f"{knowledge_dim}: build the training set from knowledge of the lineage "
                "the model was configured for."
            )
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        if flat.size:
            values[full] = flat.reshape(-1, knowledge_dim)
        miss |= ~full  # an empty / null vector is a cold key whatever the flag says
        values[miss] = 0.0
        vectors.append(torch.from_numpy(values))
        flags.append(miss.astype(np.float32))
    return Knowledge(
        user=vectors[0],
        item=vectors[1],
        user_category=vectors[2],
        missing=torch.from_numpy(np.stack(flags, axis=-1)),
    )


def superdomain_extras(table: pa.Table, windows: Sequence[int], max_len: int) -> SuperDomainExtras:
    """The unfiltered sequence and the super-domain ``u_*``/``i_*``/``uc_*`` counters."""
    names = [
        *counter_columns(USER_PREFIX, windows),
        *counter_columns(ITEM_PREFIX, windows),
        *counter_columns(USER_CATEGORY_PREFIX, windows),
    ]
    return SuperDomainExtras(
        seq=behavior_seq(table, max_len, WHAT),
        counters=counter_tensor(table, names, WHAT),
        counter_names=tuple(names),
    )


def downstream_batch(
    table: pa.Table,
    *,
    scenario: str,
    counter_windows: Sequence[int],
    max_len: int = 50,
    knowledge_dim: int | None = None,
    superdomain_windows: Sequence[int] | None = None,
) -> DownstreamBatch:
    """Build a :class:`DownstreamBatch` from training-set rows (see the module docstring).

    ``knowledge_dim``: also read the knowledge vectors; ``superdomain_windows``: also read
    the super-domain extras with those counter windows. The ``du_*``/``di_*`` counters of
    ``counter_windows`` must be present (:func:`models.downstream.counters.add_downstream_counters`).
    """
    names = downstream_counter_columns(counter_windows)
    present = set(table.column_names)
    absent = [c for c in names if c not in present]
    if absent:
        raise InputError(
            f"{WHAT} needs the downstream-only counters {absent[:3]}...: add them with "
            "models.downstream.counters.add_downstream_counters(day, history, ...)."
        )
    price = _floats(table, "price", WHAT)
    return DownstreamBatch(
        user=_ids(table, "user_id", "user", WHAT),
        item=_ids(table, "item_id", "item", WHAT),
        category=_ids(table, "category_id", "category", WHAT),
        brand=_ids(table, "brand_id", "brand", WHAT),
        gender=_gender(table, WHAT),
        age=_ordinal(table, "age_level", ORDINAL_SLOTS, WHAT),
        power=_ordinal(table, "purchase_power", ORDINAL_SLOTS, WHAT),
        price=torch.log1p(price.clamp_min(0.0)),
        position=_ordinal(table, "position", POSITION_SLOTS, WHAT),
        seq=behavior_seq(filter_behaviors(table, scenario), max_len, WHAT),
        counters=counter_tensor(table, names, WHAT),
        counter_names=tuple(names),
        labels=Labels(
            click=_label(table, "click", WHAT, 0.0),
            cart=_label(table, "cart", WHAT, 0.0),
            purchase=_label(table, "purchase", WHAT, 0.0),
            weight=_label(table, "weight", WHAT, 1.0),
        ),
        knowledge=None if knowledge_dim is None else knowledge_tensors(table, knowledge_dim),
        superdomain=(
            None
            if superdomain_windows is None
            else superdomain_extras(table, superdomain_windows, max_len)
        ),
    )

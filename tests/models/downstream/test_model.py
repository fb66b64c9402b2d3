"""Downstream model: shapes per arm, the plug-in starts as an exact no-op, arms' inputs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from keep.core.config import Settings
from models.downstream.model import ARMS, DownstreamConfig, build_model, plug_into
from models.downstream.trainer import train_on
from tests.models.downstream.conftest import downstream_settings, with_counters

DS = dt.date(2026, 1, 10)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return downstream_settings(tmp_path)


@pytest.fixture
def table(settings: Settings) -> pa.Table:
    return with_counters(settings, DS, rows=60)


@pytest.mark.parametrize("arm", ARMS)
def test_shapes(settings: Settings, table: pa.Table, arm: str) -> None:
    model = build_model(DownstreamConfig.from_settings(settings), arm, seed=0)
    with torch.no_grad():
        assert model(model.batch(table)).shape == (60,)


def test_plugin_is_an_exact_no_op_until_trained(settings: Settings, table: pa.Table) -> None:
    base = build_model(DownstreamConfig.from_settings(settings), "base", seed=0).eval()
    keep = plug_into(base, seed=1).eval()
    assert keep.plugin is not None
    with torch.no_grad():
        base_logits = base(base.batch(table))
        keep_logits = keep(keep.batch(table))
    assert torch.equal(base_logits, keep_logits)
    assert float((base_logits - keep_logits).abs().max()) == 0.0

    # One step on the plug-in alone: it stops being a no-op (the base weights are untouched).
    for name, p in keep.named_parameters():
        p.requires_grad_(name.startswith("plugin."))
    train_on(keep, table.slice(0, 20), settings.downstream, seed=0, epochs=1)
    with torch.no_grad():
        moved = keep.eval()(keep.batch(table))
        assert torch.equal(base(base.batch(table)), base_logits)
    assert not torch.equal(moved, base_logits)


def _shuffle_vectors(table: pa.Table) -> pa.Table:
    for entity in ("user", "item", "user_category"):
        name = f"{entity}_vector"
        col = table.column(name)
        table = table.set_column(
            table.schema.get_field_index(name),
            name,
            col.take(pa.array(range(len(col) - 1, -1, -1))),
        )
    return table


@pytest.mark.parametrize(("arm", "reads_knowledge"), [("base", False), ("concat", True)])
def test_only_knowledge_arms_read_knowledge(
    settings: Settings, table: pa.Table, arm: str, reads_knowledge: bool
) -> None:
    model = build_model(DownstreamConfig.from_settings(settings), arm, seed=0).eval()
    other = _shuffle_vectors(table)
    with torch.no_grad():
        same = torch.equal(model(model.batch(table)), model(model.batch(other)))
    assert same != reads_knowledge


def test_base_ignores_other_subsystems_behaviours(settings: Settings, table: pa.Table) -> None:
    """Behaviours outside the downstream scenario do not reach the base model."""
    model = build_model(DownstreamConfig.from_settings(settings), "base", seed=0).eval()
    col = table.column("behaviors").combine_chunks()
    flat = col.flatten()
    moved_items = pc.if_else(
        pc.equal(flat.field("scenario"), "ads"),
        flat.field("item_id"),
        pc.add(flat.field("item_id"), 7),
    )
    values = pa.StructArray.from_arrays(
        [moved_items if f.name == "item_id" else flat.field(f.name) for f in col.type.value_type],
        fields=list(col.type.value_type),
    )
    changed = table.set_column(
        table.schema.get_field_index("behaviors"),
        "behaviors",
        pa.ListArray.from_arrays(col.offsets, values, type=col.type),
    )
    sd = build_model(DownstreamConfig.from_settings(settings), "superdomain_features", seed=0)
    with torch.no_grad():
        assert torch.equal(model(model.batch(table)), model(model.batch(changed)))
        # ... while the super-domain arm, which reads the raw sequence, does see them.
        assert not torch.equal(sd.eval()(sd.batch(table)), sd(sd.batch(changed)))

"""The model's knowledge accessors: shapes, candidate independence, training-path equality."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from models.pretrain.features import item_batch, sample_batch, user_batch, user_category_batch
from models.pretrain.multitask import MultiTaskModel
from models.pretrain.train import model_config
from tests.models.pretrain.conftest import make_day, tiny_settings


@pytest.fixture
def model_and_day(tmp_path: Path) -> tuple[MultiTaskModel, pa.Table]:
    settings = tiny_settings(tmp_path)
    torch.manual_seed(0)
    model = MultiTaskModel(model_config(settings)).eval()
    return model, make_day(settings, dt.date(2026, 1, 4), rows=40, seed=5)


def test_shapes_and_unseen_ids(model_and_day: tuple[MultiTaskModel, pa.Table]) -> None:
    model, day = model_and_day
    k = model.config.knowledge_dim
    # Ids far outside anything trained (and beyond the bucket counts) still embed.
    huge = pc.add(day.column("user_id"), pa.scalar(10**15, pa.int64()))
    day = day.set_column(day.schema.get_field_index("user_id"), "user_id", huge)
    with torch.no_grad():
        assert model.user_knowledge(user_batch(day)).shape == (40, k)
        assert model.item_knowledge(item_batch(day)).shape == (40, k)
        assert model.user_category_knowledge(user_category_batch(day)).shape == (40, k)
        assert model(sample_batch(day)).shape == (40, 3)


def test_user_knowledge_ignores_the_candidate(
    model_and_day: tuple[MultiTaskModel, pa.Table],
) -> None:
    model, day = model_and_day
    other = day.set_column(
        day.schema.get_field_index("item_id"), "item_id", pc.add(day.column("item_id"), 1)
    )
    other = other.set_column(
        other.schema.get_field_index("category_id"),
        "category_id",
        pc.add(day.column("category_id"), 1),
    )
    with torch.no_grad():
        a = model.user_knowledge(sample_batch(day).user)
        b = model.user_knowledge(sample_batch(other).user)
        assert torch.equal(a, b)
        uc_a = model.user_category_knowledge(user_category_batch(day))
        uc_b = model.user_category_knowledge(user_category_batch(other))
        assert not torch.allclose(uc_a, uc_b)  # the query category matters ...
        # ... but nothing else about the candidate does:
        moved = day.set_column(
            day.schema.get_field_index("item_id"), "item_id", pc.add(day.column("item_id"), 1)
        )
        assert torch.equal(uc_a, model.user_category_knowledge(user_category_batch(moved)))


def test_export_path_equals_training_path(
    model_and_day: tuple[MultiTaskModel, pa.Table],
) -> None:
    """Knowledge computed from per-side tables is what the shared tower saw in training."""
    model, day = model_and_day
    batch = sample_batch(day)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.user_tower.register_forward_hook(lambda m, i, o: seen.__setitem__("user", o)),
        model.item_tower.register_forward_hook(lambda m, i, o: seen.__setitem__("item", o)),
        model.user_category_tower.register_forward_hook(lambda m, i, o: seen.__setitem__("uc", o)),
    ]
    with torch.no_grad():
        model(batch)
        for h in hooks:
            h.remove()
        assert torch.allclose(seen["user"], model.user_knowledge(user_batch(day)))
        assert torch.allclose(seen["item"], model.item_knowledge(item_batch(day)))
        assert torch.allclose(seen["uc"], model.user_category_knowledge(user_category_batch(day)))

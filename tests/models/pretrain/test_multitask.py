"""The model's knowledge accessors: shapes, candidate independence, training-path equality."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from models.pretrain.features import item_batch, sample_batch, user_batch, user_category_batch
from models.pretrain.multitask import MultiTaskModel, TargetAttention
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


def test_attention_equals_the_mlp_on_the_concatenated_din_input() -> None:
    """On packed behaviours, with its split first layer, the attention computes exactly the
    DIN score MLP on ``[q, k, q - k, q * k]`` with a masked softmax over the padded sequence
    (the textbook form, written out here): values and gradients."""
    torch.manual_seed(3)
    att = TargetAttention(6, hidden=5)
    query = torch.randn(4, 6, requires_grad=True)
    keys = torch.randn(4, 7, 6, requires_grad=True)
    values = torch.randn(4, 7, 9)
    mask = torch.rand(4, 7) < 0.7
    mask[0] = False  # an empty sequence gives zeros

    def textbook(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        qq = q.unsqueeze(1).expand_as(k)
        x = torch.cat([qq, k, qq - k, qq * k], dim=-1)
        first, last = att.score[0], att.score[2]
        logits = torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
        logits = logits.squeeze(-1).masked_fill(~mask, -1e9)
        w = torch.softmax(logits, dim=-1) * mask.any(dim=-1, keepdim=True)
        return (w.unsqueeze(-1) * values).sum(1)

    index = torch.nonzero(mask, as_tuple=True)  # the packed form the model passes
    got = att(query, keys[index], values[index], index[0])
    want = textbook(query, keys)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.all(got[0] == 0)
    g_got = torch.autograd.grad(got.sum(), [query, keys, att.score[0].weight])
    g_want = torch.autograd.grad(want.sum(), [query, keys, att.score[0].weight])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

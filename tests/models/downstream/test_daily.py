"""Progressive validation and the lineage-switch rules of models/downstream/daily.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from keep.core.tables import KNOWLEDGE_ENTITIES
from models.downstream.daily import Arms, aligned, fit_alignment, procrustes
from tests.keep.store.feast_data import write_knowledge
from tests.models.downstream.conftest import LINEAGE, downstream_settings, with_counters

D1, D2, D3 = dt.date(2026, 1, 10), dt.date(2026, 1, 11), dt.date(2026, 1, 12)


def _rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, dim)))
    return q.astype(np.float32)


def test_procrustes_recovers_a_rotation() -> None:
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    q = _rotation(8, 1)
    r = procrustes(x @ q, x)  # maps the rotated space back
    assert np.allclose(r, q.T, atol=1e-4)


def test_alignment_maps_a_new_lineage_onto_the_old_one(tmp_path: Path) -> None:
    """A retrained lineage whose vectors are the old ones rotated (plus noise) is mapped back
    onto the old space by the matrices fitted on the keys both snapshots share."""
    settings = downstream_settings(tmp_path)
    dim = settings.pretrain.knowledge_dim
    q = {e: _rotation(dim, i) for i, e in enumerate(KNOWLEDGE_ENTITIES)}
    old_vectors = {}
    for entity in KNOWLEDGE_ENTITIES:
        _, old = write_knowledge(settings, entity, "L1", D1, 60)
        noise = np.random.default_rng(9).normal(0, 0.01, old.shape).astype(np.float32)
        write_knowledge(settings, entity, "L2", D2, 60, vectors=old @ q[entity] + noise)
        old_vectors[entity] = old
    alignment = fit_alignment(settings, ("L1", D1), ("L2", D2))
    assert alignment is not None
    for entity in KNOWLEDGE_ENTITIES:
        assert np.allclose(np.asarray(alignment[entity]), q[entity].T, atol=0.02)
    # aligned() applies them to a training-set table; cold (empty) vectors stay empty-zero.
    new = old_vectors["user"][:3] @ q["user"]
    table = pa.table(
        {
            "user_vector": pa.array([*list(new), []], pa.list_(pa.float32())),
            "item_vector": pa.array([[0.0] * dim] * 4, pa.list_(pa.float32())),
            "user_category_vector": pa.array([[0.0] * dim] * 4, pa.list_(pa.float32())),
        }
    )
    mapped = np.asarray(aligned(table, alignment).column("user_vector").to_pylist()[:3])
    assert np.allclose(mapped, old_vectors["user"][:3], atol=0.05)
    assert aligned(table, alignment).column("user_vector").to_pylist()[3] == [0.0] * dim


def test_arms_are_evaluated_before_they_train_on_a_day(tmp_path: Path) -> None:
    settings = downstream_settings(tmp_path)
    arms = Arms(settings, ["base", "keep"], [0])
    first = arms.step(D1, with_counters(settings, D1, 400), LINEAGE, D1 - dt.timedelta(days=1))
    assert [o.metrics for o in first] == [None, None]  # nothing trained before the first day
    assert arms.noop_at_init_max_abs_diff == 0.0  # keep starts as exactly the base model
    second = arms.step(D2, with_counters(settings, D2, 400), LINEAGE, D1)
    for outcome in second:
        assert outcome.metrics is not None
        assert 0.5 < outcome.metrics["auc"] <= 1.0  # the planted signal was learned
        assert outcome.metrics["rows"] == 400
    assert arms.states[("keep", 0)].meta.knowledge_lineage == LINEAGE
    assert arms.states[("keep", 0)].meta.train_days == [D1.isoformat(), D2.isoformat()]


@pytest.mark.parametrize("rule", ["reinit", "none"])
def test_lineage_switch_rules(tmp_path: Path, rule: str) -> None:
    settings = downstream_settings(tmp_path, lineage_switch=rule)
    arms = Arms(settings, ["keep"], [0])
    arms.step(D1, with_counters(settings, D1, 400), LINEAGE, D1 - dt.timedelta(days=1))
    plugin = arms.states[("keep", 0)].model.plugin  # type: ignore[union-attr]
    assert plugin is not None
    last = plugin.projections[0][-1]
    assert last.weight.abs().sum() > 0  # trained
    table = with_counters(settings, D2, 400)
    table = table.set_column(
        table.schema.get_field_index("knowledge_lineage"),
        "knowledge_lineage",
        pa.array(["L2"] * table.num_rows),
    )
    (outcome,) = arms.step(D2, table, "L2", D1, train=False)
    assert outcome.switched == rule
    assert arms.states[("keep", 0)].meta.knowledge_lineage == "L2"
    zeroed = float(last.weight.detach().abs().sum()) == 0.0
    assert zeroed is (rule == "reinit")

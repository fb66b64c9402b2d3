"""The ESMM-style funnel loss against a direct computation."""

from __future__ import annotations

import math

import torch

from models.pretrain.features import Labels
from models.pretrain.losses import FunnelLoss, funnel_probabilities


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_funnel_loss_is_bce_of_products() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0], [-2.0, 0.5, -0.5], [1.0, 1.0, 1.0]])
    labels = Labels(
        click=torch.tensor([1.0, 0.0, 1.0]),
        cart=torch.tensor([1.0, 0.0, 0.0]),
        purchase=torch.tensor([0.0, 0.0, 1.0]),
        weight=torch.tensor([1.0, 2.0, 1.0]),
    )
    out = FunnelLoss()(logits, labels)
    rows = logits.tolist()
    w = [1.0, 2.0, 1.0]
    y = [labels.click.tolist(), labels.cart.tolist(), labels.purchase.tolist()]
    expected = []
    for head in range(3):
        total = 0.0
        for i, (c, a, b) in enumerate(rows):
            p = sig(c) * (1.0 if head == 0 else sig(a) if head == 1 else sig(b))
            total += w[i] * bce(p, y[head][i])
        expected.append(total / sum(w))
    assert abs(out.click.item() - expected[0]) < 1e-5
    assert abs(out.cart.item() - expected[1]) < 1e-5
    assert abs(out.purchase.item() - expected[2]) < 1e-5
    assert abs(out.total.item() - sum(expected)) < 1e-5
    probs = funnel_probabilities(logits)
    assert abs(probs[0, 1].item() - sig(0.3) * sig(-1.0)) < 1e-6
    # P(click, cart) never exceeds P(click): the funnel holds by construction.
    assert (probs[:, 1] <= probs[:, 0]).all() and (probs[:, 2] <= probs[:, 0]).all()

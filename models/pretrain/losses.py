"""Funnel-aware losses of the three heads (ESMM-style, over the entire impression space).

The funnel in the samples is impression -> click -> cart and impression -> click ->
purchase (a purchase always follows a click; it may skip the cart). The heads are
*conditional*: ``click`` models P(click), ``cart`` models P(cart | click) and ``purchase``
models P(purchase | click). Training a conditional head only on clicked rows would learn
from a biased, tiny sample and would never see the non-clicked space it is later applied
to (ESMM's sample-selection-bias argument). Instead every impression trains all three
heads through products of probabilities:

* click loss    = BCE(p_click,                    click)
* cart loss     = BCE(p_click * p_cart|click,     cart)      (P(click and cart))
* purchase loss = BCE(p_click * p_purchase|click, purchase)  (P(click and purchase))

each weighted by the sample ``weight`` (undoing negative down-sampling) and summed with
``task_weights``. The products are computed in log space (sum of log-sigmoids) so that
rare events stay numerically stable. The same products are what evaluation scores
(:func:`funnel_probabilities`): cart and purchase AUC are over all impressions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.pretrain.features import Labels


@dataclass
class FunnelLosses:
    """Weighted mean losses of one batch (scalars)."""

    total: Tensor
    click: Tensor
    cart: Tensor
    purchase: Tensor


def _bce_from_log_p(log_p: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy given log p (element-wise), stable for p near 0 and 1."""
    log_p = log_p.clamp(max=-1e-7)
    log_not_p = torch.log(-torch.expm1(log_p))
    return -(target * log_p + (1 - target) * log_not_p)


def funnel_log_probabilities(logits: Tensor) -> Tensor:
    """``[B, 3]`` head logits -> ``[B, 3]`` log P(click), log P(click, cart),
    log P(click, purchase)."""
    log_click = F.logsigmoid(logits[:, 0])
    return torch.stack(
        [
            log_click,
            log_click + F.logsigmoid(logits[:, 1]),
            log_click + F.logsigmoid(logits[:, 2]),
        ],
        dim=-1,
    )


def funnel_probabilities(logits: Tensor) -> Tensor:
    """``[B, 3]`` unconditional probabilities of click, cart, purchase per impression."""
    return funnel_log_probabilities(logits).exp()


class FunnelLoss(nn.Module):
    """ESMM-style multi-task loss (see module docstring)."""

    def __init__(self, task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.task_weights = task_weights

    def forward(self, logits: Tensor, labels: Labels) -> FunnelLosses:
        """``logits`` ``[B, 3]`` -> weighted mean losses."""
        log_p = funnel_log_probabilities(logits)
        w = labels.weight
        denom = w.sum().clamp_min(1e-12)
        losses = [
            (_bce_from_log_p(log_p[:, i], target) * w).sum() / denom
            for i, target in enumerate((labels.click, labels.cart, labels.purchase))
        ]
        total = sum(tw * loss for tw, loss in zip(self.task_weights, losses, strict=True))
        assert isinstance(total, Tensor)
        return FunnelLosses(total=total, click=losses[0], cart=losses[1], purchase=losses[2])

"""Segmentation losses with deep supervision (MONAI losses).

* ``dice_ce`` (organs, PDAC): Dice + cross entropy as nnU-Net (foreground classes, batch Dice).
* ``ce_tversky`` (lymph nodes, paper Eq. 4-6): cross entropy + Tversky, equal weights.

Tversky convention. The paper writes (Eq. 4) ``T = 2 TP / (2 TP + alpha FP + beta FN)`` with
alpha = 0.5 weighting false positives and beta = 1.5 weighting false negatives (alpha = beta = 1
is Dice). MONAI's :class:`monai.losses.TverskyLoss` computes ``TP / (TP + alpha' FP + beta' FN)``,
also with alpha' on false positives and beta' on false negatives; dividing the paper's fraction by 2
gives ``alpha' = alpha / 2`` and ``beta' = beta / 2`` (0.25 and 0.75), which is what
:func:`paper_tversky_to_monai` returns.

Deep supervision: every decoder output gets the loss against the nearest-down-sampled target, with
nnU-Net's weights (1, 1/2, 1/4, ... with the lowest resolution at 0, normalised to sum 1).
"""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, TverskyLoss
from torch import nn
from torch.nn.modules.loss import _Loss

from training.presets import PAPER_TVERSKY_ALPHA, PAPER_TVERSKY_BETA


def paper_tversky_to_monai(alpha: float, beta: float) -> tuple[float, float]:
    """Map the paper's Eq. 4 weights (FP, FN) to MONAI TverskyLoss's (FP, FN)."""
    return alpha / 2.0, beta / 2.0


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights: 1/2^i, the lowest resolution set to 0 (when there are 2+ outputs), sum 1."""
    w = [0.5 ** i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class CETverskyLoss(_Loss):
    """Cross entropy + Tversky (paper Eq. 6) on logits [B, K, ...] and class-index targets [B, 1, ...]."""

    def __init__(self, alpha: float = PAPER_TVERSKY_ALPHA, beta: float = PAPER_TVERSKY_BETA):
        super().__init__()
        a, b = paper_tversky_to_monai(alpha, beta)
        self.tversky = TverskyLoss(include_background=False, to_onehot_y=True, softmax=True, alpha=a, beta=b,
                                   batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        self.ce = nn.CrossEntropyLoss()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        ce = self.ce(input, target[:, 0].long())
        return ce + self.tversky(input, target)


def build_loss(kind: str, n_outputs: int, tversky_alpha: float = PAPER_TVERSKY_ALPHA,
               tversky_beta: float = PAPER_TVERSKY_BETA) -> DeepSupervisionLoss:
    """The task's loss wrapped for ``n_outputs`` deep-supervision outputs."""
    if kind == "dice_ce":
        base: _Loss = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                 smooth_nr=1e-5, smooth_dr=1e-5)
    elif kind == "ce_tversky":
        base = CETverskyLoss(tversky_alpha, tversky_beta)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected 'dice_ce' or 'ce_tversky'")
    return DeepSupervisionLoss(base, weights=deep_supervision_weights(n_outputs))

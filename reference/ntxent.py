"""NT-Xent (the SimCLR contrastive loss), with the similarity computed as three blocks.

Source: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (Algorithm 1); official code github.com/google-research/simclr
(``objective.py``, ``add_contrastive_loss``). Default ``temperature = 0.5`` (lightly's
``NTXentLoss`` default; the official function's own default is 1.0 and its training flag 0.1).

For two views a, b of shape (N, D), cosine similarity over the 2N samples::

    za, zb = a / ||a||, b / ||b||                                  (per row)
    AB = za zb^T / t,  AA = za za^T / t,  BB = zb zb^T / t,  BA = AB^T      (N x N blocks)
    AA_ii = BB_ii = -inf                                           (no sample is its own negative)
    l_a(i) = -AB_ii + logsumexp_j [AB_ij, AA_ij]
    l_b(i) = -BA_ii + logsumexp_j [BA_ij, BB_ij]
    L = (sum_i l_a(i) + sum_i l_b(i)) / (2N)                       (Algorithm 1's mean over 2N)

The official code returns ``mean l_a + mean l_b``, twice this value, and multiplies BA = b a^T as
a fourth product; here BA is the transpose of AB, so the similarity costs the three products
AB, AA, BB: 3 N^2 D multiply-adds (the paper's count). :func:`ntxent_loss_four_products` computes
BA as the official code does: 4 N^2 D, the count of SimCLR's code and of lightly's
``NTXentLoss`` (one (2N) x (2N) product). The official code gathers the embeddings of every
device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _ntxent(z_a: Tensor, z_b: Tensor, temperature: float, multiply_ba: bool) -> Tensor:
    """NT-Xent with the BA block multiplied (``multiply_ba``, 4 N^2 D) or taken as the transpose
    of AB (3 N^2 D): the same value, two costs as fvcore counts them."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"two views of the same shape (N, D) needed, got {z_a.shape}, {z_b.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z_a.shape[0]
    za = F.normalize(z_a, dim=1)
    zb = F.normalize(z_b, dim=1)
    self_pair = torch.eye(n, dtype=torch.bool, device=z_a.device)
    logits_ab = za @ zb.T / temperature
    logits_ba = zb @ za.T / temperature if multiply_ba else logits_ab.T
    logits_aa = (za @ za.T / temperature).masked_fill(self_pair, float("-inf"))
    logits_bb = (zb @ zb.T / temperature).masked_fill(self_pair, float("-inf"))
    labels = torch.arange(n, device=z_a.device)
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), labels, reduction="sum")
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), labels, reduction="sum")
    return (loss_a + loss_b) / (2 * n)


def ntxent_loss(z_a: Tensor, z_b: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent loss of two views (N, D): the mean over the 2N samples of the cross-entropy of the
    positive against the 2N - 2 negatives, on cosine similarities divided by ``temperature``.

    Example:
        >>> import torch
        >>> from reference.ntxent import ntxent_loss
        >>> loss = ntxent_loss(torch.randn(16, 8), torch.randn(16, 8))
    """
    # the paper's three-product count: BA is not multiplied
    return _ntxent(z_a, z_b, temperature, multiply_ba=False)


def ntxent_loss_four_products(z_a: Tensor, z_b: Tensor, temperature: float = 0.5) -> Tensor:
    """:func:`ntxent_loss` with BA multiplied as SimCLR's ``add_contrastive_loss`` does
    (``logits_ba = matmul(hidden2, hidden1_large^T)``): the same value, 4 N^2 D multiply-adds.

    Example:
        >>> import torch
        >>> from reference.ntxent import ntxent_loss_four_products
        >>> loss = ntxent_loss_four_products(torch.randn(16, 8), torch.randn(16, 8))
    """
    return _ntxent(z_a, z_b, temperature, multiply_ba=True)

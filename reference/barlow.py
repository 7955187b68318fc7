"""Barlow Twins, written out as the official implementation computes it.

Source: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021; official code github.com/facebookresearch/barlowtwins (``main.py``,
``BarlowTwins.forward``). Default ``lambda_param = 5.1e-3`` (the repository's ``--lambd``).

Each feature is standardised over the batch, as the official code's
``nn.BatchNorm1d(D, affine=False)`` in training mode does (biased variance, eps = 1e-5)::

    zn_k = (z_k - mean_i z_ik) / sqrt(var_i z_ik + 1e-5)        (per feature k, over samples i)
    c    = zn_a^T zn_b / N                                      (D x D cross-correlation)
    L    = sum_k (1 - c_kk)^2 + lambda_param * sum_{k != l} c_kl^2

The D x D product costs N D^2 multiply-adds (the paper's count). The official code's batch norm
is an ``aten::batch_norm`` op, which fvcore counts too (4 flops an element):
:func:`barlow_twins_loss_batch_norm` computes the same loss through that op. Under data
parallelism the official code all-reduces ``c`` across devices (a global batch statistic, and the
batch norm is global too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BATCH_NORM_EPS = 1e-5  # nn.BatchNorm1d's default


def batch_standardize(z: Tensor, eps: float = BATCH_NORM_EPS) -> Tensor:
    """``(z - mean) / sqrt(var + eps)`` per feature over the batch (BatchNorm1d, no affine)."""
    centred = z - z.mean(dim=0, keepdim=True)
    variance = (centred * centred).mean(dim=0, keepdim=True)  # biased, as BatchNorm normalises
    return centred / torch.sqrt(variance + eps)


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (the official helper)."""
    n, m = x.shape
    if n != m:
        raise ValueError(f"off_diagonal needs a square matrix, got shape {tuple(x.shape)}")
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_param: float = 5.1e-3) -> Tensor:
    """Barlow Twins loss of two views (N, D): on-diagonal ``(1 - c_kk)^2`` plus lambda times
    off-diagonal ``c_kl^2`` of the D x D cross-correlation (sums, as in the official code).

    Example:
        >>> import torch
        >>> from reference.barlow import barlow_twins_loss
        >>> loss = barlow_twins_loss(torch.randn(16, 8), torch.randn(16, 8))
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"two views of the same shape (N, D) needed, got {z_a.shape}, {z_b.shape}")
    n = z_a.shape[0]
    c = batch_standardize(z_a).T @ batch_standardize(z_b) / n
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambda_param * off_diag


def barlow_twins_loss_batch_norm(z_a: Tensor, z_b: Tensor, lambda_param: float = 5.1e-3) -> Tensor:
    """:func:`barlow_twins_loss` with the standardisation as the official
    ``nn.BatchNorm1d(D, affine=False)`` computes it (``F.batch_norm`` in training mode): the
    same value, but an ``aten::batch_norm`` op in the graph, which fvcore counts.

    Example:
        >>> import torch
        >>> from reference.barlow import barlow_twins_loss_batch_norm
        >>> loss = barlow_twins_loss_batch_norm(torch.randn(16, 8), torch.randn(16, 8))
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"two views of the same shape (N, D) needed, got {z_a.shape}, {z_b.shape}")

    def bn(z: Tensor) -> Tensor:
        return F.batch_norm(z, None, None, training=True, eps=BATCH_NORM_EPS)

    c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    return on_diag + lambda_param * off_diagonal(c).pow(2).sum()

"""VICReg, written out as the official implementation computes it.

Source: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022; official code github.com/facebookresearch/vicreg
(``main_vicreg.py``, ``VICReg.forward``). Defaults: ``sim_coeff = 25``, ``std_coeff = 25``,
``cov_coeff = 1`` (the repository's flags) and ``eps = 1e-4`` (its constant in the std term).

For two views x, y of shape (N, D)::

    invariance = mean_{i,k} (x_ik - y_ik)^2                             (F.mse_loss)
    xc         = x - mean_i x_i,   std_x = sqrt(var_i x + eps)          (unbiased variance)
    variance   = mean_k relu(1 - std_x,k) / 2 + mean_k relu(1 - std_y,k) / 2
    cov_x      = xc^T xc / (N - 1)                                      (D x D)
    covariance = sum_{k != l} cov_x,kl^2 / D + sum_{k != l} cov_y,kl^2 / D
    L          = sim_coeff invariance + std_coeff variance + cov_coeff covariance

The two D x D covariances cost 2 N D^2 multiply-adds. The official code gathers the embeddings
of every device (``FullGatherLayer``) before the variance and covariance terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reference.barlow import off_diagonal


def vicreg_loss(
    z_a: Tensor,
    z_b: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg loss of two views (N, D): invariance + variance hinge + covariance decorrelation.

    Example:
        >>> import torch
        >>> from reference.vicreg import vicreg_loss
        >>> loss = vicreg_loss(torch.randn(16, 8), torch.randn(16, 8))
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"two views of the same shape (N, D) needed, got {z_a.shape}, {z_b.shape}")
    n, d = z_a.shape
    repr_loss = F.mse_loss(z_a, z_b)

    x = z_a - z_a.mean(dim=0)
    y = z_b - z_b.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    std_loss = torch.mean(F.relu(1.0 - std_x)) / 2 + torch.mean(F.relu(1.0 - std_y)) / 2

    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss

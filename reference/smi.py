"""SMI written out literally, one line per formula, with plain autograd.

Row standardisation (per sample, across features)::

    mu_i  = mean_k z_ik
    s_i   = max(||z_i - mu_i||_2, 1e-12)
    zh_i  = (z_i - mu_i) / s_i

Dependency transform, for rho clamped to [-1, 1]::

    m(rho) = -1/2 log(1 - rho^2 + eps)

Matrices ``M^{uv}_ij = m(zh^u_i . zh^v_j)``, and for views u < v::

    L_align = sum_{u<v} sum_i (1 - M^{uv}_ii)^2
    L_red   = sum_{u<v} sum_{i!=j} (M^{uv}_ij)^2 + sum_u sum_{i!=j} (M^{uu}_ij)^2
    L       = L_align + lambda_param * L_red

With two views this is ``sum_i (1 - M^AB_ii)^2 + lambda * sum_{i!=j} [M^AB_ij^2 + M^AA_ij^2 +
M^BB_ij^2]``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def standardize(z: Tensor) -> Tensor:
    """Rows of ``z`` centred and scaled to unit norm: ``zh_i = (z_i - mu_i) / s_i``."""
    centred = z - z.mean(dim=1, keepdim=True)
    s = torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp(min=1e-12)
    return centred / s


def dependency(rho: Tensor, eps: float) -> Tensor:
    """The Gaussian mutual-information transform ``m(rho) = -1/2 log(1 - rho^2 + eps)``."""
    rho = rho.clamp(-1.0, 1.0)
    return -0.5 * torch.log(1.0 - rho**2 + eps)


def smi_loss_terms(*views: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``(L_align, L_red)`` of SMI over two or more views of shape (N, D)."""
    zh = [standardize(z) for z in views]
    n = zh[0].shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=zh[0].device)
    align = zh[0].new_zeros(())
    red = zh[0].new_zeros(())
    for u, v in itertools.combinations(range(len(zh)), 2):
        m_uv = dependency(zh[u] @ zh[v].T, eps)
        align = align + ((1.0 - m_uv.diagonal()) ** 2).sum()
        red = red + (m_uv[off_diagonal] ** 2).sum()
    for zh_u in zh:
        m_uu = dependency(zh_u @ zh_u.T, eps)
        red = red + (m_uu[off_diagonal] ** 2).sum()
    return align, red


def smi_loss(*views: Tensor, lambda_param: float = 5e-3, eps: float = 1e-4) -> Tensor:
    """SMI loss ``L_align + lambda_param * L_red`` (sums, as in Barlow Twins)."""
    align, red = smi_loss_terms(*views, eps=eps)
    return align + lambda_param * red

"""SMI in plain autograd ops: slow, but differentiable any number of times.

The package's two paths (PyTorch and Triton) have hand-written backwards that are not themselves
differentiable, so they refuse ``create_graph=True``. For higher-order derivatives (a gradient
penalty, Hessian-vector products) use :func:`smi_loss` here: the same loss, one line per
formula, with every N x N matrix materialised::

    zh_i    = (z_i - mean(z_i)) / max(||z_i - mean(z_i)||, 1e-12)      (per row, across features)
    m(rho)  = -1/2 log(1 - rho^2 + eps),  rho clamped to [-1, 1]
    M^{uv}  = m(zh^u zh^v^T)                                            (N x N)
    L_align = sum_{u<v} sum_i (1 - M^{uv}_ii)^2
    L_red   = sum_{u<v} sum_{i!=j} (M^{uv}_ij)^2 + sum_u sum_{i!=j} (M^{uu}_ij)^2
    L       = L_align + lambda_param * L_red

It computes in the dtype of the views; pass float64 views where accuracy matters (``1 - rho^2``
cancels in float32 when two views nearly agree; the fast paths avoid that, this one does not).
It keeps O(V^2 N^2) memory alive for the backward.

Examples:
    >>> import torch
    >>> from smi_kernels.reference import smi_loss
    >>> z_a = torch.randn(8, 32, dtype=torch.float64, requires_grad=True)
    >>> z_b = torch.randn(8, 32, dtype=torch.float64)
    >>> (grad,) = torch.autograd.grad(smi_loss(z_a, z_b), z_a, create_graph=True)
    >>> grad.pow(2).sum().backward()  # a second derivative
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from smi_kernels import _checks
from smi_kernels._math import ROW_SCALE_FLOOR
from smi_kernels.loss import SMIOutput

__all__ = ["dependency", "smi_loss", "smi_loss_with_terms", "standardize"]


def standardize(z: Tensor) -> Tensor:
    """Rows of ``z`` centred and scaled to unit norm: ``zh_i = (z_i - mu_i) / s_i``."""
    centred = z - z.mean(dim=1, keepdim=True)
    s = torch.linalg.vector_norm(centred, dim=1, keepdim=True).clamp(min=ROW_SCALE_FLOOR)
    return centred / s


def dependency(rho: Tensor, eps: float) -> Tensor:
    """The Gaussian mutual-information transform ``m(rho) = -1/2 log(1 - rho^2 + eps)``."""
    rho = rho.clamp(-1.0, 1.0)
    return -0.5 * torch.log(1.0 - rho**2 + eps)


def smi_loss_with_terms(*views: Tensor, lambda_param: float = 5e-3, eps: float = 1e-4) -> SMIOutput:
    """``SMIOutput(loss, alignment, redundancy)`` of two or more views (N, D), in plain
    autograd ops; arguments and validation as :func:`smi_kernels.smi_loss`."""
    _checks.check_hyperparameters(lambda_param, eps)
    _checks.check_views(views)
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
    return SMIOutput(align + lambda_param * red, align, red)


def smi_loss(*views: Tensor, lambda_param: float = 5e-3, eps: float = 1e-4) -> Tensor:
    """SMI loss ``L_align + lambda_param * L_red`` of two or more views (N, D), in plain
    autograd ops (twice differentiable). Arguments as :func:`smi_kernels.smi_loss`."""
    return smi_loss_with_terms(*views, lambda_param=lambda_param, eps=eps).loss

"""The PyTorch implementation of SMI, for any device, with a hand-written backward.

Notation (the same as the package docs): V views of shape (N, D) are stacked into P = V N rows,
row p = u N + i is sample i of view u.

Forward::

    mu_p   = mean_k z_pk                      (then a second centring pass, see below)
    s_p    = max(||z_p - mu_p||, 1e-12)       (the norm accumulated in float64: no overflow or
                                               underflow for any float32 input)
    zh_p   = (z_p - mu_p) / s_p
    S      = Z Z^T,  Z = [zh_1; ...; zh_V]    (only the V(V+1)/2 blocks u <= v are multiplied)
    m(rho) = -1/2 log(1 - rho^2 + eps)        (rho = S_pq clamped to [-1, 1])

    L_red   = sum over every block of its off-diagonal m^2   (self blocks hold both orders)
    L_align = sum_{u<v} sum_i (1 - m(rho^{uv}_i))^2,
              1 - rho^{uv}_i = ||zh^u_i - zh^v_i||^2 / 2   (positive pairs, no cancellation)

Backward, with G = dL_red/dS (symmetric, zero on the diagonal and on the positive pairs) and
a^{uv}_i = dL_align/drho^{uv}_i = -2 (1 - m) m'::

    dzh  = c_red G Z  +  c_align sum_{v != u} a^{uv}_i zh^v_i
    dz_p = (dzh_p - mean_k dzh_p - [s_p not clamped] zh_p (zh_p . dzh_p)) / s_p

where ``(c_loss, c_align, c_red)`` are the incoming gradients of ``(L, L_align, L_red)`` folded as
``c_align = g_L + g_align`` and ``c_red = lambda g_L + g_red``. The product G Z is one matmul:
(P^2 D multiply-adds, against 2 V(V+1)/2 N^2 D for autograd of the naive graph).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from smi_kernels._math import ROW_SCALE_FLOOR


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SMI is evaluated in: float32 for the half types, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def standardize_rows(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise the rows of ``z`` (..., D): ``(zh, s, projected)``.

    ``s`` has a trailing singleton dimension; ``projected`` is True where ``s`` was not clamped
    to the floor (only there does the backward remove the radial component).
    The second centring pass removes what float cancellation left of a large common offset
    (``z = 1e6 + noise`` in float32); the norm is accumulated in float64 so that rows near the
    float32 maximum or at subnormal scale neither overflow nor underflow.
    """
    centred = z - z.mean(dim=-1, keepdim=True)
    centred = centred - centred.mean(dim=-1, keepdim=True)
    accumulate = torch.float64 if centred.dtype != torch.float64 else None
    norm = torch.linalg.vector_norm(centred, dim=-1, keepdim=True, dtype=accumulate)
    projected = norm >= ROW_SCALE_FLOOR
    s = norm.clamp(min=ROW_SCALE_FLOOR).to(centred.dtype)
    return centred / s, s, projected


def positive_pairs(zh: Tensor, projected: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
    """``1 - rho^{uv}_i`` for every pair of views u < v, shape (V(V-1)/2, N), and the pairs.

    ``1 - rho = ||zh_a - zh_b||^2 / 2`` for unit rows; a clamped (near-constant) row is not of
    unit norm and adds its defect ``1 - ||zh||^2``. This keeps ``1 - rho^2`` accurate to a few
    ulps of itself when the two views nearly agree, where ``1 - zh_a . zh_b`` would cancel.
    """
    defect = torch.where(projected.squeeze(-1), 0.0, 1.0 - (zh * zh).sum(-1))
    pairs = list(itertools.combinations(range(zh.shape[0]), 2))
    rows = []
    for u, v in pairs:
        gap = torch.linalg.vector_norm(zh[u] - zh[v], dim=-1) ** 2
        rows.append((0.5 * (gap + defect[u] + defect[v])).clamp(0.0, 2.0))
    return torch.stack(rows), pairs


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device_type`` (the path manages its own dtypes)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _SMIFunction(torch.autograd.Function):
    """Returns the vector ``(L, L_align, L_red)`` in the compute dtype."""

    @staticmethod
    def forward(ctx, lambda_param: float, eps: float, *views: Tensor) -> Tensor:  # type: ignore[override]
        with autocast_disabled(views[0].device.type):
            return _SMIFunction._forward(ctx, lambda_param, eps, views)

    @staticmethod
    def _forward(ctx, lambda_param: float, eps: float, views: Sequence[Tensor]) -> Tensor:
        v_count = len(views)
        n, d = views[0].shape
        dtype = compute_dtype(views[0].dtype)
        need_grad = any(ctx.needs_input_grad[2:])

        z = torch.stack([view.to(dtype) for view in views])  # (V, N, D)
        zh, s, projected = standardize_rows(z)

        one_minus_rho, pairs = positive_pairs(zh, projected)
        rho_pos = 1.0 - one_minus_rho
        t_pos = one_minus_rho * (2.0 - one_minus_rho) + eps  # 1 - rho^2 + eps, no cancellation
        m_pos = -0.5 * torch.log(t_pos)
        align = ((1.0 - m_pos) ** 2).sum()

        p = v_count * n
        zh_flat = zh.view(p, d)
        red = zh.new_zeros(())
        g_sym = zh.new_empty((p, p)) if need_grad else None
        for u, v in itertools.combinations_with_replacement(range(v_count), 2):
            block = torch.mm(zh[u], zh[v].T).clamp_(-1.0, 1.0)  # rho, N x N
            t = torch.addcmul(torch.full_like(block, 1.0 + eps), block, block, value=-1.0)
            log_t = t.log()
            # sum of m^2 = sum (log t)^2 / 4 over the off-diagonal; the diagonal is p = q (self)
            # or the positive pairs (cross), neither of which is a redundancy term
            log_t.diagonal().zero_()
            red = red + torch.dot(log_t.view(-1), log_t.view(-1)) * 0.25
            if g_sym is not None:
                # dL_red/dS_pq = w * 2 m m' = -w log(t) rho / t, w = 2 on self blocks (each
                # unordered pair appears twice in L_red), 1 on cross blocks
                weight = -2.0 if u == v else -1.0
                grad_block = log_t.mul_(block).div_(t).mul_(weight)
                g_sym[u * n : (u + 1) * n, v * n : (v + 1) * n] = grad_block
                if u != v:
                    g_sym[v * n : (v + 1) * n, u * n : (u + 1) * n] = grad_block.T

        out = torch.stack([align + lambda_param * red, align, red])
        ctx.lambda_param = lambda_param
        ctx.pairs = pairs
        ctx.input_dtype = views[0].dtype
        if need_grad:
            align_grad = -2.0 * (1.0 - m_pos) * rho_pos / t_pos  # dL_align/drho^{uv}_i
            ctx.save_for_backward(zh_flat, s.view(p), projected.view(p), g_sym, align_grad)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        with autocast_disabled(grad_out.device.type):
            return _SMIFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        zh_flat, s, projected, g_sym, align_grad = ctx.saved_tensors
        g_loss, g_align, g_red = grad_out.unbind()
        c_align = g_loss + g_align
        c_red = ctx.lambda_param * g_loss + g_red
        p, d = zh_flat.shape
        v_count = len(ctx.needs_input_grad) - 2
        n = p // v_count

        dzh = torch.mm(g_sym, zh_flat).mul_(c_red).view(v_count, n, d)
        zh = zh_flat.view(v_count, n, d)
        a = (c_align * align_grad).unsqueeze(-1)  # (pairs, N, 1)
        for k, (u, v) in enumerate(ctx.pairs):
            dzh[u].addcmul_(a[k], zh[v])
            dzh[v].addcmul_(a[k], zh[u])
        dzh = dzh.view(p, d)

        radial = torch.where(projected, (zh_flat * dzh).sum(-1), 0.0)
        dz = dzh.sub_(dzh.mean(-1, keepdim=True)).sub_(zh_flat * radial.unsqueeze(-1))
        dz = dz.div_(s.unsqueeze(-1)).to(ctx.input_dtype).view(v_count, n, d)
        grads = [dz[k] if ctx.needs_input_grad[2 + k] else None for k in range(v_count)]
        return (None, None, *grads)


def smi_torch(views: Sequence[Tensor], lambda_param: float, eps: float) -> Tensor:
    """``(L, L_align, L_red)`` by the PyTorch path, differentiable in every view."""
    return _SMIFunction.apply(lambda_param, eps, *views)

"""The PyTorch implementation of SMI, for any device, with a hand-written backward.

Notation (the same as the package docs): V views of shape (N, D) are stacked into P = V N rows,
row p = u N + i is sample i of view u.

Forward::

    mu_p   = mean_k z_pk                      (rows pre-scaled by a power of two, and centred
    s_p    = max(||z_p - mu_p||, 1e-12)        twice: see standardize_rows)
    zh_p   = (z_p - mu_p) / s_p
    S      = Z Z^T,  Z = [zh_1; ...; zh_V]    (only the V(V+1)/2 blocks u <= v are multiplied)
    m(rho) = -1/2 log(1 - rho^2 + eps)        (rho = S_pq clamped to [-1, 1])

    L_red   = sum over every block of its off-diagonal m^2   (self blocks hold both orders)
    L_align = sum_{u<v} sum_i (1 - m(rho^{uv}_i))^2,   with, for the positive pairs,
              1 -+ rho^{uv}_i = ||zh^u_i -+ zh^v_i||^2 / 2   (no cancellation at rho = +-1)

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
from collections.abc import Sequence

import torch
from torch import Tensor

from smi_kernels import memory
from smi_kernels._math import ROW_SCALE_FLOOR


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype SMI is evaluated in: float32 for the half types, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def view_pairs(v_count: int) -> list[tuple[int, int]]:
    """The pairs of distinct views u < v (plain loops: torch.compile traces them)."""
    return [(u, v) for u in range(v_count) for v in range(u + 1, v_count)]


def standardize_rows(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise the rows of ``z`` (..., D): ``(zh, s, projected)``.

    ``s`` has a trailing singleton dimension; ``projected`` is True where ``s`` was not clamped
    to the floor (only there does the backward remove the radial component).
    Each row is first divided by a power of two near its largest magnitude (exact, and
    standardisation does not depend on scale), so rows near the float32 maximum or at subnormal
    scale neither overflow nor underflow. The second centring pass removes what float
    cancellation left of a large common offset (``z = 1e6 + noise`` in float32).
    """
    peak = torch.linalg.vector_norm(z, ord=float("inf"), dim=-1, keepdim=True)
    scale = torch.where(peak > 0, torch.exp2(torch.floor(torch.log2(peak))), 1.0)
    centred = z / scale
    centred = centred.sub_(centred.mean(dim=-1, keepdim=True))
    centred = centred.sub_(centred.mean(dim=-1, keepdim=True))
    norm = torch.linalg.vector_norm(centred, dim=-1, keepdim=True)  # of the scaled row
    projected = norm * scale >= ROW_SCALE_FLOOR
    s = (norm * scale).clamp(min=ROW_SCALE_FLOOR)
    # a clamped row is c / 1e-12 = (centred * scale) / 1e-12; scale / 1e-12 can overflow only
    # when scale is huge, and then a clamped row is exactly zero: any finite factor will do
    clamped_factor = (scale / ROW_SCALE_FLOOR).clamp(max=torch.finfo(z.dtype).max)
    zh = centred.mul_(torch.where(projected, 1.0 / norm, clamped_factor))
    return zh, s, projected


def positive_pairs(
    zh: Tensor, projected: Tensor
) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, int]]]:
    """``(rho, 1 - rho, 1 + rho)`` of every pair of views u < v, each (V(V-1)/2, N), and the pairs.

    For unit rows ``1 - rho = ||zh_a - zh_b||^2 / 2`` and ``1 + rho = ||zh_a + zh_b||^2 / 2``:
    ``1 - rho^2`` then keeps full relative accuracy when the views nearly agree (rho -> 1) or
    nearly oppose (rho -> -1), where ``1 - (zh_a . zh_b)^2`` would cancel. rho itself is the dot
    product where it is small and ``1 -+ (1 -+ rho)`` near +-1. A clamped (near-constant) row is
    not of unit norm: its pairs use the dot product alone.
    """
    unit = projected.squeeze(-1)
    pairs = view_pairs(zh.shape[0])
    rho_rows, minus_rows, plus_rows = [], [], []
    for u, v in pairs:
        dot = (zh[u] * zh[v]).sum(-1)
        one_minus = 0.5 * ((zh[u] - zh[v]) ** 2).sum(-1)
        one_plus = 0.5 * ((zh[u] + zh[v]) ** 2).sum(-1)
        near = torch.where(dot > 0, 1.0 - one_minus, one_plus - 1.0)
        both = unit[u] & unit[v]
        rho = torch.where(both & (dot.abs() > 0.5), near, dot).clamp(-1.0, 1.0)
        rho_rows.append(rho)
        minus_rows.append(torch.where(both, one_minus.clamp(0.0, 2.0), 1.0 - rho))
        plus_rows.append(torch.where(both, one_plus.clamp(0.0, 2.0), 1.0 + rho))
    return torch.stack(rho_rows), torch.stack(minus_rows), torch.stack(plus_rows), pairs


def alignment_terms(
    zh: Tensor, projected: Tensor, eps: float, need_grad: bool
) -> tuple[Tensor, Tensor | None, list[tuple[int, int]]]:
    """``(L_align, dL_align/drho of each positive pair or None, the pairs u < v)``.

    The positives (views u < v of one sample) lie in the rows of one batch, so this is all of
    L_align whatever other rows S has (the sharded mode computes it on each rank's own rows).
    """
    rho_pos, one_minus_rho, one_plus_rho, pairs = positive_pairs(zh, projected)
    t_pos = one_minus_rho * one_plus_rho + eps  # 1 - rho^2 + eps, no cancellation
    m_pos = -0.5 * torch.log(t_pos)
    align = ((1.0 - m_pos) ** 2).sum()
    align_grad = -2.0 * (1.0 - m_pos) * rho_pos / t_pos if need_grad else None
    return align, align_grad, pairs


def log_dependency(rho: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(log t, t)`` with ``t = 1 - rho^2 + eps`` for a block of clamped rho: ``m = -log(t) / 2``.

    ``log t = log1p(eps - rho^2)``: t is near 1 for most entries, and rounding t to the ulp of 1
    first would cost the small m their relative accuracy.
    """
    x = torch.addcmul(torch.full_like(rho, eps), rho, rho, value=-1.0)
    log_t = torch.log1p(x)
    t = x.add_(1.0)
    return log_t, t


def redundancy_blocks(zh: Tensor, eps: float, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``(L_red, G_sym or None)`` of one batch of standardised views ``zh`` (V, N, D).

    Only the V(V+1)/2 blocks u <= v of S are multiplied; G_sym = dL_red/dS (P x P, symmetric,
    zero on the diagonal and on the positive pairs) is filled from them and their transposes.
    """
    v_count, n, _ = zh.shape
    p = v_count * n
    red = zh.new_zeros(())
    blocks = [(u, v) for u in range(v_count) for v in range(u, v_count)]  # u <= v
    g_sym = zh.new_empty((p, p)) if need_grad else None
    for u, v in blocks:
        block = torch.mm(zh[u], zh[v].T).clamp_(-1.0, 1.0)  # rho, N x N
        log_t, t = log_dependency(block, eps)
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
    return red, g_sym


def add_alignment_gradient(
    dzh: Tensor, zh: Tensor, a: Tensor, pairs: Sequence[tuple[int, int]]
) -> None:
    """``dzh[u] += a_k zh[v]`` and ``dzh[v] += a_k zh[u]`` for each pair k = (u, v), in place;
    ``a`` is (pairs, N, 1), the incoming gradient already folded in."""
    for k, (u, v) in enumerate(pairs):
        dzh[u].addcmul_(a[k], zh[v])
        dzh[v].addcmul_(a[k], zh[u])


def standardize_rows_backward(zh: Tensor, s: Tensor, projected: Tensor, dzh: Tensor) -> Tensor:
    """``dz = (dzh - mean_k dzh - [projected] zh (zh . dzh)) / s`` for rows (R, D); ``s`` and
    ``projected`` are (R,). Overwrites ``dzh``."""
    radial = torch.where(projected, torch.linalg.vecdot(zh, dzh), 0.0)
    dz = dzh.sub_(dzh.mean(-1, keepdim=True)).addcmul_(zh, radial.unsqueeze(-1), value=-1)
    return dz.div_(s.unsqueeze(-1))


def refuse_double_backward() -> None:
    """Raise when a backward runs with grad mode on (``create_graph=True``): the backward works
    on saved tensors that carry no graph, so its own derivative would silently be missing."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "smi_kernels: double backward through the SMI loss is not supported (its backward "
            "is not differentiable); call backward/autograd.grad without create_graph=True, "
            "or, for higher-order derivatives, use smi_kernels.reference.smi_loss (the same "
            "loss in plain autograd ops, twice differentiable, N x N matrices materialised)"
        )


def _autocast_support(device_type: str) -> bool:
    try:
        return torch.amp.is_autocast_available(device_type)
    except RuntimeError:  # a device type this torch does not know
        return False


#: autocast support of the usual device types, asked once: the torch.compile of torch 2.9 and
#: older cannot trace ``torch.amp.is_autocast_available`` (a C binding): a graph break a step
_AUTOCAST_SUPPORT = {t: _autocast_support(t) for t in ("cpu", "cuda", "meta", "mps", "xpu")}


def autocast_available(device_type: str) -> bool:
    """``torch.amp.is_autocast_available(device_type)``, traceable by torch.compile."""
    known = _AUTOCAST_SUPPORT.get(device_type)
    return _autocast_support(device_type) if known is None else known


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device_type`` (the path manages its own dtypes)."""
    if autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _SMIFunction(torch.autograd.Function):
    """Returns the vector ``(L, L_align, L_red)`` in the compute dtype."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, lambda_param: float, eps: float, need_grad: bool, *views: Tensor
    ) -> Tensor:
        with autocast_disabled(views[0].device.type):
            return _SMIFunction._forward(ctx, lambda_param, eps, need_grad, views)

    @staticmethod
    def _forward(
        ctx, lambda_param: float, eps: float, need_grad: bool, views: Sequence[Tensor]
    ) -> Tensor:
        v_count = len(views)
        n, d = views[0].shape
        dtype = compute_dtype(views[0].dtype)

        z = torch.stack([view.to(dtype) for view in views])  # (V, N, D)
        zh, s, projected = standardize_rows(z)

        align, align_grad, pairs = alignment_terms(zh, projected, eps, need_grad)

        p = v_count * n
        zh_flat = zh.view(p, d)
        red, g_sym = redundancy_blocks(zh, eps, need_grad)

        out = torch.stack([align + lambda_param * red, align, red])
        ctx.lambda_param = lambda_param
        ctx.pairs = pairs
        ctx.input_dtype = views[0].dtype
        if need_grad:
            ctx.save_for_backward(zh_flat, s.view(p), projected.view(p), g_sym, align_grad)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        refuse_double_backward()
        with autocast_disabled(grad_out.device.type):
            return _SMIFunction._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        zh_flat, s, projected, g_sym, align_grad = ctx.saved_tensors
        g_loss, g_align, g_red = grad_out.unbind()
        c_align = g_loss + g_align
        c_red = ctx.lambda_param * g_loss + g_red
        p, d = zh_flat.shape
        v_count = len(ctx.needs_input_grad) - 3
        n = p // v_count

        dzh = torch.mm(g_sym, zh_flat).mul_(c_red).view(v_count, n, d)
        zh = zh_flat.view(v_count, n, d)
        add_alignment_gradient(dzh, zh, (c_align * align_grad).unsqueeze(-1), ctx.pairs)
        dz = standardize_rows_backward(zh_flat, s, projected, dzh.view(p, d))
        dz = dz.to(ctx.input_dtype).view(v_count, n, d)
        grads = [dz[k] if ctx.needs_input_grad[3 + k] else None for k in range(v_count)]
        return (None, None, None, *grads)


def smi_torch(views: Sequence[Tensor], lambda_param: float, eps: float) -> Tensor:
    """``(L, L_align, L_red)`` by the PyTorch path, differentiable in every view."""
    need_grad = torch.is_grad_enabled() and any(view.requires_grad for view in views)
    n, d = views[0].shape
    memory.check_torch_path(n, d, len(views), views[0].dtype, need_grad, views[0].device)
    return _SMIFunction.apply(lambda_param, eps, need_grad, *views)

"""Row standardisation of all V views of one sample, and the alignment term of that sample.

One program per sample i handles the V rows z^u_i (u = 0..V-1) together as a (V, BLOCK_D) tile,
so the positive pairs (z^u_i, z^v_i) meet in registers:

    a^u       = a power of two near max_k |z^u_k|        pass 0 (x = z / a is exact, and the
                                                          standardisation does not see scale)
    mu^u      = mean_k x^u_k                             pass 1
    c^u       = (x^u - mu^u) - mean_k(x^u - mu^u)        pass 2 (second centring: large offsets)
    s^u       = max(a^u ||c^u||, 1e-12)                  pass 3
    zh^u      = c^u / ||c^u||, or a^u c^u / 1e-12 where s was clamped
                                                         pass 4, written out
    for the pairs, also in pass 4:
    1 -+ rho^{uv} = ||zh^u -+ zh^v||^2 / 2               for unit rows: no cancellation as
                                                         rho -> +-1
    rho^{uv}      = zh^u . zh^v where |rho| <= 1/2 or a row was clamped, else 1 -+ (1 -+ rho)
    t^{uv}    = (1 - rho)(1 + rho) + eps
    m^{uv}    = -1/2 log t,   m' = rho / t
    L_align,i = sum_{u<v} (1 - m^{uv})^2
    a^{uv}_i  = dL_align / drho^{uv}_i = -2 (1 - m) m'   (stored for the backward)

The pair quantities go to (V, V, N) buffers, both orders (u, v) and (v, u) written, so the backward
reads them by its own row's view without a branch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from smi_kernels._triton.rounding import to_storage


@triton.jit
def power_of_two_floor(x):
    """The largest power of two <= x > 0 (its exponent bits), the smallest normal for x = 0;
    Inf and NaN give Inf, so their rows turn into NaN downstream."""
    if x.dtype == tl.float64:
        bits = x.to(tl.uint64, bitcast=True) & 0x7FF0000000000000
        floor = bits.to(tl.float64, bitcast=True)
        return tl.where(floor > 0, floor, 2.2250738585072014e-308)
    else:
        bits = x.to(tl.uint32, bitcast=True) & 0x7F800000
        floor = bits.to(tl.float32, bitcast=True)
        return tl.where(floor > 0, floor, 1.1754943508222875e-38)


@triton.jit
def standardize_kernel(
    z_ptr,  # (V, N, D) stacked views, contiguous
    zh_ptr,  # (V, N, D) out: standardised rows
    s_ptr,  # (V N,) out: row scales s
    projected_ptr,  # (V N,) out: 1 where s was not clamped, else 0
    rho_ptr,  # (V, V, N) out: rho^{uv}_i of the positive pairs
    align_grad_ptr,  # (V, V, N) out: a^{uv}_i
    align_ptr,  # (N,) out: L_align,i
    N,
    D,
    eps,
    V: tl.constexpr,
    V_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    i = tl.program_id(0)
    acc_dtype = s_ptr.dtype.element_ty
    u = tl.arange(0, V_BLOCK)
    k = tl.arange(0, BLOCK_D)
    view_ok = u < V
    rows = z_ptr + (u.to(tl.int64) * N + i) * D  # (V_BLOCK,) row starts
    out_rows = zh_ptr + (u.to(tl.int64) * N + i) * D

    # pass 0: the power of two a (exponent bits of max |z|; the smallest normal for 0)
    peak = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        peak = tl.maximum(peak, tl.max(tl.abs(z), axis=1))
    scale = power_of_two_floor(peak)

    # pass 1: mu
    total = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        total += tl.sum(z / scale[:, None], axis=1)
    mu = total / D

    # pass 2: the residual mean after centring
    total = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        total += tl.sum(tl.where(mask, z / scale[:, None] - mu[:, None], 0.0), axis=1)
    mu2 = total / D

    # pass 3: ||c||
    total = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        c = tl.where(mask, (z / scale[:, None] - mu[:, None]) - mu2[:, None], 0.0)
        total += tl.sum(c * c, axis=1)
    norm = tl.sqrt(total)
    projected = norm * scale >= 1e-12
    s = tl.maximum(norm * scale, 1e-12)
    tl.store(s_ptr + u * N + i, s, mask=view_ok)
    tl.store(projected_ptr + u * N + i, projected.to(acc_dtype), mask=view_ok)

    # pass 4: zh, and ||zh^u -+ zh^v||^2 and zh^u . zh^v for every pair of views of sample i
    gap_minus = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
    gap_plus = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
    dot = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        c = tl.where(mask, (z / scale[:, None] - mu[:, None]) - mu2[:, None], 0.0)
        # (c a) / 1e-12 in that order: a is large only when c is exactly zero
        zh = tl.where(projected[:, None], c / norm[:, None], (c * scale[:, None]) / 1e-12)
        stored = to_storage(zh, zh_ptr.dtype.element_ty, EMULATE_RTNE)
        tl.store(out_rows[:, None] + (k0 + k)[None, :], stored, mask=mask)
        minus = zh[:, None, :] - zh[None, :, :]
        plus = zh[:, None, :] + zh[None, :, :]
        gap_minus += tl.sum(minus * minus, axis=2)
        gap_plus += tl.sum(plus * plus, axis=2)
        dot += tl.sum(zh[:, None, :] * zh[None, :, :], axis=2)

    unit = projected[:, None] & projected[None, :]
    near = tl.where(dot > 0, 1.0 - 0.5 * gap_minus, 0.5 * gap_plus - 1.0)
    rho = tl.where(unit & (tl.abs(dot) > 0.5), near, dot)
    rho = tl.clamp(rho, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN
    one_minus = tl.where(unit, 0.5 * gap_minus, 1.0 - rho)
    one_plus = tl.where(unit, 0.5 * gap_plus, 1.0 + rho)
    one_minus = tl.clamp(one_minus, 0.0, 2.0, propagate_nan=tl.PropagateNan.ALL)
    one_plus = tl.clamp(one_plus, 0.0, 2.0, propagate_nan=tl.PropagateNan.ALL)
    t = one_minus * one_plus + eps
    m = -0.5 * tl.log(t)
    align_grad = -2.0 * (1.0 - m) * rho / t
    pair = view_ok[:, None] & view_ok[None, :] & (u[:, None] != u[None, :])
    upper = u[:, None] < u[None, :]
    align = tl.sum(tl.sum(tl.where(pair & upper, (1.0 - m) * (1.0 - m), 0.0), axis=1), axis=0)
    # the (u, u) entries are no pair: written as zeros, never read
    both = view_ok[:, None] & view_ok[None, :]
    pair_offset = (u[:, None] * V + u[None, :]) * N + i
    tl.store(rho_ptr + pair_offset, tl.where(pair, rho, 0.0), mask=both)
    tl.store(align_grad_ptr + pair_offset, tl.where(pair, align_grad, 0.0), mask=both)
    tl.store(align_ptr + i, align)


def block_d(d: int, views: int, interpreting: bool) -> int:
    """Feature chunk of the standardisation: the (V, V, BLOCK_D) distance tile stays small."""
    cap = 64 if interpreting else max(64, 4096 // max(triton.next_power_of_2(views) ** 2, 1))
    return min(triton.next_power_of_2(d), cap)

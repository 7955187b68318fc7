"""Row standardisation of all V views of one sample, and the alignment term of that sample.

One program per sample i handles the V rows z^u_i (u = 0..V-1) together as a (V, BLOCK_D) tile,
so the positive pairs (z^u_i, z^v_i) meet in registers:

    mu^u      = mean_k z^u_ik                          pass 1
    c^u       = (z^u - mu^u) - mean_k(z^u - mu^u)      pass 2 (second centring: large offsets)
    s^u       = max(a^u ||c^u / a^u||, 1e-12),  a^u = max_k |z^u_k - mu^u|
                                                       pass 3 (scaled: no overflow, no underflow)
    zh^u      = c^u / s^u                               pass 4, written out
    1 - rho^{uv} = (||zh^u - zh^v||^2 + d^u + d^v) / 2  pass 4, d = 0 for unit rows, else the
                                                        defect 1 - ||zh||^2 of a clamped row
    t^{uv}    = (1 - rho)(1 + rho) + eps                (no cancellation as rho -> 1)
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

    # pass 1: mu
    total = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        total += tl.sum(z, axis=1)
    mu = total / D

    # pass 2: the residual mean after centring, and the scale a
    total = tl.zeros((V_BLOCK,), acc_dtype)
    peak = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        c = tl.where(mask, z - mu[:, None], 0.0)
        total += tl.sum(c, axis=1)
        peak = tl.maximum(peak, tl.max(tl.abs(c), axis=1))
    mu2 = total / D
    scale = tl.where(peak > 0, peak, 1.0)

    # pass 3: ||c|| = a ||c / a||
    total = tl.zeros((V_BLOCK,), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        c = tl.where(mask, ((z - mu[:, None]) - mu2[:, None]) / scale[:, None], 0.0)
        total += tl.sum(c * c, axis=1)
    norm = scale * tl.sqrt(total)
    projected = norm >= 1e-12
    s = tl.where(projected, norm, 1e-12)
    tl.store(s_ptr + u * N + i, s, mask=view_ok)
    tl.store(projected_ptr + u * N + i, projected.to(acc_dtype), mask=view_ok)

    # pass 4: zh, its squared norm, and the squared distances between the views of sample i
    sq_norm = tl.zeros((V_BLOCK,), acc_dtype)
    gap = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
    for k0 in range(0, D, BLOCK_D):
        mask = view_ok[:, None] & (k0 + k < D)[None, :]
        z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0).to(acc_dtype)
        zh = tl.where(mask, ((z - mu[:, None]) - mu2[:, None]) / s[:, None], 0.0)
        stored = to_storage(zh, zh_ptr.dtype.element_ty, EMULATE_RTNE)
        tl.store(out_rows[:, None] + (k0 + k)[None, :], stored, mask=mask)
        sq_norm += tl.sum(zh * zh, axis=1)
        diff = zh[:, None, :] - zh[None, :, :]
        gap += tl.sum(diff * diff, axis=2)

    defect = tl.where(projected, 0.0, 1.0 - sq_norm)
    one_minus_rho = 0.5 * (gap + defect[:, None] + defect[None, :])
    one_minus_rho = tl.clamp(one_minus_rho, 0.0, 2.0, propagate_nan=tl.PropagateNan.ALL)
    rho = 1.0 - one_minus_rho
    t = one_minus_rho * (2.0 - one_minus_rho) + eps
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

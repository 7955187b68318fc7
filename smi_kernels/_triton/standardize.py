"""Row standardisation of all V views of one sample, and the alignment term of that sample.

One program per sample i reads the V rows z^u_i (u = 0..V-1) where they lie (view u starts
``view_offset(u)`` elements after view 0: no stacked copy of the views), as a (V, BLOCK_D) tile,
so the positive pairs (z^u_i, z^v_i) meet in registers:

    a^u       = a power of two near max_k |z^u_k|        (x = z / a is exact, and the
                                                          standardisation does not see scale)
    mu^u      = mean_k x^u_k
    c^u       = (x^u - mu^u) - mean_k(x^u - mu^u)        (second centring: large offsets)
    s^u       = max(a^u ||c^u||, 1e-12)
    zh^u      = c^u / ||c^u||, or a^u c^u / 1e-12 where s was clamped          written out
    1 -+ rho^{uv} = ||zh^u -+ zh^v||^2 / 2               for unit rows: no cancellation as
                                                         rho -> +-1
    rho^{uv}      = zh^u . zh^v where |rho| <= 1/2 or a row was clamped, else 1 -+ (1 -+ rho)
    t^{uv}    = (1 - rho)(1 + rho) + eps
    m^{uv}    = -1/2 log t,   m' = rho / t
    L_align,i = sum_{u<v} (1 - m^{uv})^2
    a^{uv}_i  = dL_align / drho^{uv}_i = -2 (1 - m) m'   (stored for the backward)

When the whole (V, D) tile fits in registers (``SINGLE_PASS``) the rows are read once; otherwise
each quantity above is one pass over D in chunks (five passes: the numerics above need a, mu, the
residual mean and ||c|| before zh exists). zh is written with ``D_pad`` columns (zeros after D)
into the padded (P_pad, D_pad) layout of the Gram kernels; programs i >= N write the zero rows
after P. The pair quantities go to (V, V, N) buffers, both orders (u, v) and (v, u), so the
backward reads them by its own row's view without a branch.
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
def exact_div(x, y):
    """x / y correctly rounded. On the GPU ``/`` compiles to an approximate division (about 2 ulp);
    the divisions by the row's power of two must be exact (rows with a large offset would lose
    their spread) and so must the means (a constant row must centre to exactly zero)."""
    if x.dtype == tl.float32:
        return tl.math.div_rn(x, y.to(tl.float32))
    else:
        return x / y


@triton.jit
def view_offset(u, view_offset_1, view_offset_2, view_offset_3, view_stride, STACKED: tl.constexpr):
    """Element offset of view u from view 0: u * view_stride for stacked views (V > 4), else
    one of the (up to three) offsets the host measured between the views' storages."""
    if STACKED:
        return u.to(tl.int64) * view_stride
    else:
        zero = tl.zeros(u.shape, tl.int64)
        offset = tl.where(u == 1, zero + view_offset_1, zero)
        offset = tl.where(u == 2, zero + view_offset_2, offset)
        return tl.where(u == 3, zero + view_offset_3, offset)


@triton.jit
def pair_sums(zh, u, V: tl.constexpr, V_BLOCK: tl.constexpr):
    """``(||zh^a - zh^b||^2, ||zh^a + zh^b||^2, zh^a . zh^b)`` over a chunk, as (V_BLOCK,
    V_BLOCK) matrices holding both orders of every pair a < b of views."""
    minus = tl.zeros((V_BLOCK, V_BLOCK), zh.dtype)
    plus = tl.zeros((V_BLOCK, V_BLOCK), zh.dtype)
    dot = tl.zeros((V_BLOCK, V_BLOCK), zh.dtype)
    for a in tl.static_range(V):
        za = tl.sum(tl.where(u[:, None] == a, zh, 0.0), axis=0)
        for b in tl.static_range(a + 1, V):
            zb = tl.sum(tl.where(u[:, None] == b, zh, 0.0), axis=0)
            here = ((u[:, None] == a) & (u[None, :] == b)) | ((u[:, None] == b) & (u[None, :] == a))
            minus += tl.where(here, tl.sum((za - zb) * (za - zb), axis=0), 0.0)
            plus += tl.where(here, tl.sum((za + zb) * (za + zb), axis=0), 0.0)
            dot += tl.where(here, tl.sum(za * zb, axis=0), 0.0)
    return minus, plus, dot


@triton.jit
def standardize_kernel(
    # the views: view 0, and where the others lie
    z_ptr,  # view 0 of the V views (N, D), each contiguous
    view_offset_1,  # element offsets of views 1..3 from view 0 (V <= 4)
    view_offset_2,
    view_offset_3,
    view_stride,  # element offset between consecutive views (STACKED)
    # pointers out
    zh_ptr,  # (P_pad, D_pad) standardised rows, zero padding
    s_ptr,  # (P,) row scales s
    projected_ptr,  # (P,) 1 where s was not clamped, else 0
    rho_ptr,  # (V, V, N) rho^{uv}_i of the positive pairs
    align_grad_ptr,  # (V, V, N) a^{uv}_i
    align_ptr,  # (N,) L_align,i
    # sizes
    N,
    D,
    D_pad,
    P,
    # scalars
    eps,
    # meta-parameters
    V: tl.constexpr,
    V_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SINGLE_PASS: tl.constexpr,
    STACKED: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    i = tl.program_id(0)
    acc_dtype = s_ptr.dtype.element_ty
    k = tl.arange(0, BLOCK_D)
    if i >= N:
        # a zero row of the padding after P
        row = zh_ptr + (P + (i - N)).to(tl.int64) * D_pad
        for k0 in range(0, D_pad, BLOCK_D):
            tl.store(
                row + k0 + k, tl.zeros((BLOCK_D,), zh_ptr.dtype.element_ty), mask=k0 + k < D_pad
            )
    else:
        u = tl.arange(0, V_BLOCK)
        view_ok = u < V
        offsets = view_offset(u, view_offset_1, view_offset_2, view_offset_3, view_stride, STACKED)
        rows = z_ptr + offsets + i.to(tl.int64) * D  # (V_BLOCK,) row starts
        out_rows = zh_ptr + (u.to(tl.int64) * N + i) * D_pad

        if SINGLE_PASS:
            mask = view_ok[:, None] & (k < D)[None, :]
            z = tl.load(rows[:, None] + k[None, :], mask=mask, other=0.0).to(acc_dtype)
            scale = power_of_two_floor(tl.max(tl.abs(z), axis=1))
            x = exact_div(z, scale[:, None])
            mu = exact_div(tl.sum(x, axis=1), D)
            mu2 = exact_div(tl.sum(tl.where(mask, x - mu[:, None], 0.0), axis=1), D)
            c = tl.where(mask, (x - mu[:, None]) - mu2[:, None], 0.0)
            norm = tl.sqrt(tl.sum(c * c, axis=1))
        else:
            peak = tl.zeros((V_BLOCK,), acc_dtype)
            for k0 in range(0, D, BLOCK_D):
                mask = view_ok[:, None] & (k0 + k < D)[None, :]
                z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0)
                peak = tl.maximum(peak, tl.max(tl.abs(z.to(acc_dtype)), axis=1))
            scale = power_of_two_floor(peak)
            total = tl.zeros((V_BLOCK,), acc_dtype)
            for k0 in range(0, D, BLOCK_D):
                mask = view_ok[:, None] & (k0 + k < D)[None, :]
                z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0)
                total += tl.sum(exact_div(z.to(acc_dtype), scale[:, None]), axis=1)
            mu = exact_div(total, D)
            total = tl.zeros((V_BLOCK,), acc_dtype)
            for k0 in range(0, D, BLOCK_D):
                mask = view_ok[:, None] & (k0 + k < D)[None, :]
                z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0)
                x = exact_div(z.to(acc_dtype), scale[:, None])
                total += tl.sum(tl.where(mask, x - mu[:, None], 0.0), axis=1)
            mu2 = exact_div(total, D)
            total = tl.zeros((V_BLOCK,), acc_dtype)
            for k0 in range(0, D, BLOCK_D):
                mask = view_ok[:, None] & (k0 + k < D)[None, :]
                z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0)
                x = exact_div(z.to(acc_dtype), scale[:, None])
                c = tl.where(mask, (x - mu[:, None]) - mu2[:, None], 0.0)
                total += tl.sum(c * c, axis=1)
            norm = tl.sqrt(total)

        projected = norm * scale >= 1e-12
        s = tl.maximum(norm * scale, 1e-12)
        tl.store(s_ptr + u * N + i, s, mask=view_ok)
        tl.store(projected_ptr + u * N + i, projected.to(acc_dtype), mask=view_ok)

        # (c a) / 1e-12 in that order: a is large only when c is exactly zero
        if SINGLE_PASS:
            zh = tl.where(projected[:, None], c / norm[:, None], (c * scale[:, None]) / 1e-12)
            stored = to_storage(zh, zh_ptr.dtype.element_ty, EMULATE_RTNE)
            tl.store(
                out_rows[:, None] + k[None, :], stored, mask=view_ok[:, None] & (k < D_pad)[None, :]
            )
            gap_minus, gap_plus, dot = pair_sums(zh, u, V, V_BLOCK)
        else:
            gap_minus = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
            gap_plus = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
            dot = tl.zeros((V_BLOCK, V_BLOCK), acc_dtype)
            for k0 in range(0, D_pad, BLOCK_D):
                mask = view_ok[:, None] & (k0 + k < D)[None, :]
                z = tl.load(rows[:, None] + (k0 + k)[None, :], mask=mask, other=0.0)
                x = exact_div(z.to(acc_dtype), scale[:, None])
                c = tl.where(mask, (x - mu[:, None]) - mu2[:, None], 0.0)
                zh = tl.where(projected[:, None], c / norm[:, None], (c * scale[:, None]) / 1e-12)
                stored = to_storage(zh, zh_ptr.dtype.element_ty, EMULATE_RTNE)
                store_mask = view_ok[:, None] & (k0 + k < D_pad)[None, :]
                tl.store(out_rows[:, None] + (k0 + k)[None, :], stored, mask=store_mask)
                minus, plus, product = pair_sums(zh, u, V, V_BLOCK)
                gap_minus += minus
                gap_plus += plus
                dot += product

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

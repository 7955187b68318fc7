"""The fused forward: tiles of S = Z Z^T, the transform and the redundancy reduction, and G.

Z (P x D) stacks the standardised views, row p = u N + i. A program owns one tile (pb, qb) with
pb <= qb of S (the upper triangle: S is symmetric), runs the K-loop over D with tl.dot and fp32
accumulation, and then, in registers:

    rho   = clamp(S_pq, -1, 1),   t = 1 - rho^2 + eps,   m = -1/2 log1p(eps - rho^2),   m' = rho / t
    entry classes from the indices (u_p, i_p), (u_q, i_q):
        i_p == i_q           the diagonal p = q, or a positive pair: not a redundancy term
                             (positives are handled by the standardisation kernel)
        u_p == u_q, i_p != i_q   same view: weight w = 2 (both orders are in L_red)
        u_p != u_q, i_p != i_q   across views: weight w = 1
    L_red partial = sum_{p < q} w m^2 = sum w (log t)^2 / 4
    G_pq          = dL_red / dS_pq = 2 w m m' = -w log(t) rho / t       (when grad is needed)
    R partials    = sum_q G_pq S_pq for the tile's rows (row sums) and columns (column sums):
                    the radial part zh_p . (G Z)_p that the standardisation backward removes

G tiles are stored packed: only the NB (NB + 1) / 2 upper tiles, each BLOCK x BLOCK row-major, at
tile index pb NB - pb (pb - 1) / 2 + (qb - pb). A diagonal tile holds both of its triangles. In
float16, G is stored times a power of two ``g_scale`` (its entries can reach 4 m_max / eps).
Partial sums go to per-program slots reduced afterwards in a fixed order: no float atomics, so
the loss is bitwise reproducible from run to run. Programs below the diagonal only zero their
slot.
"""

from __future__ import annotations

import triton
import triton.language as tl

from smi_kernels._triton.rounding import to_storage


@triton.jit
def log1p(x, one_plus_x):
    """log(1 + x) to full relative accuracy for small x, from log alone: the rounding of 1 + x
    is divided back out (t - 1 is exact). Most entries of S have t = 1 - rho^2 + eps near 1,
    where log(t) would keep only the ulp of 1 of the small m."""
    w = one_plus_x - 1.0
    return tl.where(w == 0.0, x, tl.log(one_plus_x) * (x / tl.where(w == 0.0, 1.0, w)))


@triton.jit
def packed_tile_index(pb, qb, num_blocks):
    """Index of upper tile (pb, qb), pb <= qb, in the packed G buffer (64-bit)."""
    pb64 = tl.cast(pb, tl.int64)
    return pb64 * num_blocks - (pb64 * (pb64 - 1)) // 2 + (qb - pb)


@triton.jit
def gram_forward_kernel(
    zh_ptr,  # (P, D) standardised rows
    g_ptr,  # (NB (NB + 1) / 2, BLOCK, BLOCK) out: packed G tiles, when NEED_GRAD
    red_partial_ptr,  # (NB, NB) out: L_red partial of each program
    radial_partial_ptr,  # (NB, NB BLOCK) out: slot k, row p: sum over block k of G_pq S_pq
    P,
    N,
    D,
    eps,
    g_scale,
    num_blocks,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    pb = tl.program_id(0)
    qb = tl.program_id(1)
    acc_dtype = red_partial_ptr.dtype.element_ty
    if qb < pb:
        tl.store(red_partial_ptr + pb * num_blocks + qb, 0.0)
    else:
        offs_p = pb * BLOCK + tl.arange(0, BLOCK)
        offs_q = qb * BLOCK + tl.arange(0, BLOCK)
        offs_k = tl.arange(0, BLOCK_K)
        rows_p = zh_ptr + offs_p.to(tl.int64)[:, None] * D
        rows_q = zh_ptr + offs_q.to(tl.int64)[:, None] * D
        acc = tl.zeros((BLOCK, BLOCK), acc_dtype)
        for k0 in range(0, D, BLOCK_K):
            cols = (k0 + offs_k)[None, :]
            a = tl.load(rows_p + cols, mask=(offs_p[:, None] < P) & (cols < D), other=0.0)
            b = tl.load(rows_q + cols, mask=(offs_q[:, None] < P) & (cols < D), other=0.0)
            if WIDEN_DOT:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, tl.trans(b), acc, input_precision=INPUT_PRECISION)

        view_p = offs_p // N
        view_q = offs_q // N
        sample_p = offs_p - view_p * N
        sample_q = offs_q - view_q * N
        valid = (offs_p < P)[:, None] & (offs_q < P)[None, :]
        redundancy = valid & (sample_p[:, None] != sample_q[None, :])
        weight = tl.where(view_p[:, None] == view_q[None, :], 2.0, 1.0)

        rho = tl.clamp(acc, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN
        x = eps - rho * rho
        t = 1.0 + x
        log_t = log1p(x, t)
        upper = offs_p[:, None] < offs_q[None, :]
        terms = tl.where(redundancy & upper, weight * log_t * log_t, 0.0)
        red = tl.sum(tl.sum(terms, axis=1), axis=0) * 0.25
        tl.store(red_partial_ptr + pb * num_blocks + qb, red)

        if NEED_GRAD:
            g = tl.where(redundancy, -weight * log_t * rho / t, 0.0)
            stored = to_storage(g * g_scale, g_ptr.dtype.element_ty, EMULATE_RTNE)
            tile = packed_tile_index(pb, qb, num_blocks)
            r = tl.arange(0, BLOCK)
            tl.store(g_ptr + tile * (BLOCK * BLOCK) + r[:, None] * BLOCK + r[None, :], stored)
            # the radial sums use G as the backward will read it (rounded to its storage type)
            g_used = stored.to(acc_dtype) / g_scale
            gs = g_used * acc
            width = num_blocks * BLOCK
            tl.store(radial_partial_ptr + qb.to(tl.int64) * width + offs_p, tl.sum(gs, axis=1))
            if pb != qb:
                tl.store(radial_partial_ptr + pb.to(tl.int64) * width + offs_q, tl.sum(gs, axis=0))


@triton.jit
def finalize_kernel(
    red_partial_ptr,
    num_red,
    align_ptr,
    num_align,
    out_ptr,  # (3,): L, L_align, L_red
    lambda_param,
    BLOCK: tl.constexpr,
):
    """Sums the per-program partials in a fixed order: L = L_align + lambda L_red."""
    acc_dtype = out_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK)
    red = tl.zeros((BLOCK,), acc_dtype)
    for k0 in range(0, num_red, BLOCK):
        red += tl.load(red_partial_ptr + k0 + offs, mask=k0 + offs < num_red, other=0.0)
    align = tl.zeros((BLOCK,), acc_dtype)
    for k0 in range(0, num_align, BLOCK):
        align += tl.load(align_ptr + k0 + offs, mask=k0 + offs < num_align, other=0.0)
    red_sum = tl.sum(red, axis=0)
    align_sum = tl.sum(align, axis=0)
    tl.store(out_ptr, align_sum + lambda_param * red_sum)
    tl.store(out_ptr + 1, align_sum)
    tl.store(out_ptr + 2, red_sum)


def finalize_block(count: int) -> int:
    """Chunk of the fixed-order reduction."""
    return min(triton.next_power_of_2(max(count, 16)), 1024)

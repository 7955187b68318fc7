"""The fused forward: tiles of S = Z Z^T, the transform and the redundancy reduction, and G.

Z (P_pad x D_pad, zero padding) stacks the standardised views, row p = u N + i. The grid covers
the upper triangle only: program t owns tile (pb, qb), pb <= qb, numbered column by column
(t = qb (qb + 1) / 2 + pb), so the programs of one wave share their column block and read the
row blocks 0..qb in the same K order (L2 reuse). It runs the K-loop over D with tl.dot and fp32
accumulation (a piece of it when the K-loop is split, see below), then, in registers:

    rho   = clamp(S_pq, -1, 1),   t = 1 - rho^2 + eps,   m = -1/2 log1p(eps - rho^2),   m' = rho / t
    entry classes from the indices (u_p, i_p), (u_q, i_q):
        i_p == i_q           the diagonal p = q, or a positive pair: not a redundancy term
                             (positives are handled by the standardisation kernel)
        u_p == u_q, i_p != i_q   same view: weight w = 2 (both orders are in L_red)
        u_p != u_q, i_p != i_q   across views: weight w = 1
    L_red partial = sum_{p < q} w m^2 = sum w (log t)^2 / 4
    G_pq          = dL_red / dS_pq = 2 w m m' = -w log(t) rho / t       (when grad is needed)
    radial slots  = sum_q G_pq S_pq for the tile's rows (slot qb) and columns (slot pb):
                    the radial part zh_p . (G Z)_p that the standardisation backward removes

Split K (few tiles: the paper's per-GPU batch has 36 tiles of 64 for 132 SMs): program
(split k, tile t) computes the partial tile over features [k K_split, (k + 1) K_split) and
stores it; ``gram_epilogue_kernel`` sums the partials of a tile in split order, then runs the
same epilogue. No float atomics anywhere, so the loss is bitwise reproducible run to run.

G tiles are stored packed: tile t is B x B row-major at t B^2 (a diagonal tile holds both of
its triangles). In float16, G is stored times a power of two ``g_scale`` (its entries can reach
4 m_max / eps).
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
def triangle_tile(t):
    """(pb, qb) of upper tile t, numbered column by column: t = qb (qb + 1) / 2 + pb."""
    qb = ((tl.sqrt_rn(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    # the float square root may land one off either way: correct it exactly
    qb = tl.where((qb + 1) * (qb + 2) // 2 <= t, qb + 1, qb)
    qb = tl.where(qb * (qb + 1) // 2 > t, qb - 1, qb)
    return t - qb * (qb + 1) // 2, qb


@triton.jit
def packed_tile_index(pb, qb):
    """Index of upper tile (pb, qb), pb <= qb, in the packed G buffer (64-bit)."""
    qb64 = tl.cast(qb, tl.int64)
    return qb64 * (qb64 + 1) // 2 + pb


@triton.jit
def piece_epilogue(
    acc,
    pb,
    qb,
    col0,
    g_ptr,
    radial_slots_ptr,
    P,
    P_pad,
    N,
    eps,
    g_scale,
    BLOCK: tl.constexpr,
    WIDTH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """The transform of columns col0..col0 + WIDTH of tile (pb, qb) of S, held in ``acc``
    (BLOCK x WIDTH): stores that piece of G and the column radial sums (slot pb), and returns
    ``(L_red partial, row radial sums)``."""
    acc_dtype = acc.dtype
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, WIDTH)
    offs_p = pb * BLOCK + r
    offs_q = qb * BLOCK + col0 + c
    view_p = offs_p // N
    view_q = offs_q // N
    sample_p = offs_p - view_p * N
    sample_q = offs_q - view_q * N
    valid = (offs_p < P)[:, None] & (offs_q < P)[None, :]
    redundancy = valid & (sample_p[:, None] != sample_q[None, :])
    weight = tl.where(view_p[:, None] == view_q[None, :], 2.0, 1.0)

    rho = tl.clamp(acc, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN
    x = eps - rho * rho
    t_entry = 1.0 + x
    log_t = log1p(x, t_entry)
    upper = offs_p[:, None] < offs_q[None, :]
    terms = tl.where(redundancy & upper, weight * log_t * log_t, 0.0)
    red = tl.sum(tl.sum(terms, axis=1), axis=0) * 0.25

    row_radial = tl.zeros((BLOCK,), acc_dtype)
    if NEED_GRAD:
        g = tl.where(redundancy, -weight * log_t * rho / t_entry, 0.0)
        stored = to_storage(g * g_scale, g_ptr.dtype.element_ty, EMULATE_RTNE)
        tile = packed_tile_index(pb, qb)
        tl.store(g_ptr + tile * (BLOCK * BLOCK) + r[:, None] * BLOCK + (col0 + c)[None, :], stored)
        # the radial sums use G as the backward will read it (rounded to its storage type)
        gs = (stored.to(acc_dtype) / g_scale) * acc
        row_radial = tl.sum(gs, axis=1)
        if pb != qb:
            tl.store(radial_slots_ptr + pb.to(tl.int64) * P_pad + offs_q, tl.sum(gs, axis=0))
    return red, row_radial


@triton.jit
def tile_epilogue(
    acc0,
    acc1,
    pb,
    qb,
    t,
    g_ptr,
    red_ptr,
    radial_slots_ptr,
    P,
    P_pad,
    N,
    eps,
    g_scale,
    BLOCK: tl.constexpr,
    HALVES: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """The epilogue of tile (pb, qb), t: the L_red partial, G and the radial slots. With
    HALVES = 2 the tile is held as two column halves, transformed one after the other, so that
    the transform's temporaries are half a tile (a whole 128 x 128 tile's would spill)."""
    WIDTH: tl.constexpr = BLOCK // HALVES
    red, row_radial = piece_epilogue(
        acc0, pb, qb, 0, g_ptr, radial_slots_ptr, P, P_pad, N, eps, g_scale,
        BLOCK, WIDTH, NEED_GRAD, EMULATE_RTNE,
    )  # fmt: skip
    if HALVES == 2:
        red1, row_radial1 = piece_epilogue(
            acc1, pb, qb, WIDTH, g_ptr, radial_slots_ptr, P, P_pad, N, eps, g_scale,
            BLOCK, WIDTH, NEED_GRAD, EMULATE_RTNE,
        )  # fmt: skip
        red += red1
        row_radial += row_radial1
    tl.store(red_ptr + t, red)
    if NEED_GRAD:
        offs_p = pb * BLOCK + tl.arange(0, BLOCK)
        tl.store(radial_slots_ptr + qb.to(tl.int64) * P_pad + offs_p, row_radial)


@triton.jit
def gram_forward_kernel(
    zh_ptr,  # (P_pad, D_pad) standardised rows, zero padding
    g_ptr,  # (tiles, BLOCK, BLOCK) out: packed G tiles, when NEED_GRAD
    red_ptr,  # (tiles,) out: L_red partial of each tile
    radial_slots_ptr,  # (NB, P_pad) out: slot k, row p: sum over block k of G_pq S_pq
    split_partial_ptr,  # (SPLIT, tiles, BLOCK, BLOCK) out: partial S tiles when SPLIT > 1
    P,
    P_pad,
    N,
    D_pad,
    num_tiles,
    k_per_split,
    eps,
    g_scale,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HALVES: tl.constexpr,
    SPLIT: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    WIDTH: tl.constexpr = BLOCK // HALVES
    pid = tl.program_id(0)
    piece = pid // num_tiles
    t = pid - piece * num_tiles
    pb, qb = triangle_tile(t)
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, WIDTH)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = piece * k_per_split
    k_end = tl.minimum(k_start + k_per_split, D_pad)
    a_ptrs = zh_ptr + (pb * BLOCK + r).to(tl.int64)[:, None] * D_pad + (k_start + offs_k)[None, :]
    b_ptrs = zh_ptr + (qb * BLOCK + c).to(tl.int64)[:, None] * D_pad + (k_start + offs_k)[None, :]
    acc0 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    acc1 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    for _ in range(k_start, k_end, BLOCK_K):
        a = tl.load(a_ptrs)
        b0 = tl.load(b_ptrs)
        if WIDEN_DOT:
            a = a.to(tl.float32)
            b0 = b0.to(tl.float32)
        acc0 = tl.dot(a, tl.trans(b0), acc0, input_precision=INPUT_PRECISION)
        if HALVES == 2:
            b1 = tl.load(b_ptrs + WIDTH * D_pad)
            if WIDEN_DOT:
                b1 = b1.to(tl.float32)
            acc1 = tl.dot(a, tl.trans(b1), acc1, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SPLIT == 1:
        tile_epilogue(
            acc0, acc1, pb, qb, t, g_ptr, red_ptr, radial_slots_ptr, P, P_pad, N, eps, g_scale,
            BLOCK, HALVES, NEED_GRAD, EMULATE_RTNE,
        )  # fmt: skip
    else:
        slot = split_partial_ptr + pid.to(tl.int64) * (BLOCK * BLOCK) + r[:, None] * BLOCK
        tl.store(slot + c[None, :], acc0)
        if HALVES == 2:
            tl.store(slot + (WIDTH + c)[None, :], acc1)


@triton.jit
def gram_epilogue_kernel(
    g_ptr,
    red_ptr,
    radial_slots_ptr,
    split_partial_ptr,
    P,
    P_pad,
    N,
    num_tiles,
    eps,
    g_scale,
    BLOCK: tl.constexpr,
    HALVES: tl.constexpr,
    SPLIT: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """Split K: S tile t = the sum of its SPLIT partial tiles, in split order; then the epilogue."""
    WIDTH: tl.constexpr = BLOCK // HALVES
    t = tl.program_id(0)
    pb, qb = triangle_tile(t)
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, WIDTH)
    offsets = r[:, None] * BLOCK + c[None, :]
    acc0 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    acc1 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    for piece in tl.static_range(SPLIT):
        slot = split_partial_ptr + (piece * num_tiles + t).to(tl.int64) * (BLOCK * BLOCK)
        acc0 += tl.load(slot + offsets)
        if HALVES == 2:
            acc1 += tl.load(slot + WIDTH + offsets)
    tile_epilogue(
        acc0, acc1, pb, qb, t, g_ptr, red_ptr, radial_slots_ptr, P, P_pad, N, eps, g_scale,
        BLOCK, HALVES, NEED_GRAD, EMULATE_RTNE,
    )  # fmt: skip


@triton.jit
def finalize_kernel(
    red_ptr,
    num_red,
    align_ptr,
    num_align,
    out_ptr,  # (3,): L, L_align, L_red
    radial_slots_ptr,  # (NB, P_pad)
    radial_ptr,  # (P_pad,) out: sum of the slots of each row
    num_slots,
    P_pad,
    lambda_param,
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Program 0: L = L_align + lambda L_red from the per-tile and per-sample partials. Programs
    1..: the radial sum of BLOCK_R rows over the slots. Both in a fixed order."""
    pid = tl.program_id(0)
    acc_dtype = out_ptr.dtype.element_ty
    if pid == 0:
        offs = tl.arange(0, BLOCK)
        red = tl.zeros((BLOCK,), acc_dtype)
        for k0 in range(0, num_red, BLOCK):
            red += tl.load(red_ptr + k0 + offs, mask=k0 + offs < num_red, other=0.0)
        align = tl.zeros((BLOCK,), acc_dtype)
        for k0 in range(0, num_align, BLOCK):
            align += tl.load(align_ptr + k0 + offs, mask=k0 + offs < num_align, other=0.0)
        red_sum = tl.sum(red, axis=0)
        align_sum = tl.sum(align, axis=0)
        tl.store(out_ptr, align_sum + lambda_param * red_sum)
        tl.store(out_ptr + 1, align_sum)
        tl.store(out_ptr + 2, red_sum)
    else:
        rows = (pid - 1) * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = rows < P_pad
        radial = tl.zeros((BLOCK_R,), acc_dtype)
        for k in range(0, num_slots):
            radial += tl.load(radial_slots_ptr + tl.cast(k, tl.int64) * P_pad + rows, mask=ok)
        tl.store(radial_ptr + rows, radial, mask=ok)


def finalize_block(count: int) -> int:
    """Chunk of the fixed-order loss reduction."""
    return min(triton.next_power_of_2(max(count, 16)), 1024)

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
its triangles).

Sharded (``SHARDED``, one rank of W, see sharded.py): the same program also runs the tiles of
this rank's blocks with other ranks (``sharded_tile`` numbers them), reading its columns from
that rank's rows of the gathered zh. On such a tile every valid entry is a redundancy term,
counted once (no diagonal, no positive pair, no mirror tile); its G goes to the rank's stored
block for that column rank, its row sums to this rank's radial slots and its column sums to the
slots sent to the other rank.

In float16, G is stored times a power of two ``g_scale`` (its entries can reach 4 m_max / eps).
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
def band_tile_index(kind, a, b, num_blocks):
    """Index of tile (a, b) (row block a, column block b) in a stored block of G tiles of
    ``kind``: 0 the upper triangle with its diagonal (b (b + 1) / 2 + a, a <= b), 1 the strict
    upper triangle (b (b - 1) / 2 + a, a < b), 2 a whole square, row-major (a NB + b)."""
    a64 = tl.cast(a, tl.int64)
    b64 = tl.cast(b, tl.int64)
    triangle = b64 * (b64 + 1 - 2 * kind) // 2 + a64
    return tl.where(kind == 2, a64 * num_blocks + b64, triangle)


@triton.jit
def sharded_tile(idx, num_blocks, world, upper):
    """Forward tile ``idx`` of one rank of a sharded group: ``(pb, qb, t, tile, col_slot)``.

    Tiles are numbered: the rank's own triangle (column rank offset t = 0), then the K = (W - 1)
    // 2 whole blocks t = 1..K (NB^2 tiles each, column by column), then for even W its share of
    the half block t = W / 2 (the upper triangle with the diagonal tiles on the upper rank, the
    strict upper triangle on the lower rank). ``tile``: where its G goes; ``col_slot``: the slot
    row of its column radial sums (its own rows for t = 0, the rows sent to rank r + t else).
    """
    tri = num_blocks * (num_blocks + 1) // 2
    square = num_blocks * num_blocks
    full = (world - 1) // 2
    in_triangle = idx < tri
    j = tl.maximum(idx - tri, 0)
    in_full = (~in_triangle) & (j < full * square)
    s = j // square
    w = j - s * square
    full_qb = w // num_blocks
    full_pb = w - full_qb * num_blocks
    h = tl.maximum(j - full * square, 0)
    half_pb, half_qb = triangle_tile(h)
    half_qb += 1 - upper  # the strict triangle: tile h is (pb, qb + 1)
    tri_pb, tri_qb = triangle_tile(tl.minimum(idx, tri - 1))
    pb = tl.where(in_triangle, tri_pb, tl.where(in_full, full_pb, half_pb))
    qb = tl.where(in_triangle, tri_qb, tl.where(in_full, full_qb, half_qb))
    t = tl.where(in_triangle, 0, tl.where(in_full, s + 1, world // 2))
    band = tri + tl.cast(t - 1, tl.int64) * square
    tile = tl.where(
        in_triangle,
        tl.cast(idx, tl.int64),
        tl.where(in_full, band + full_pb * num_blocks + full_qb, band + (1 - upper) * tri + h),
    )
    col_slot = tl.where(in_triangle, pb, (world + t - 1) * num_blocks + pb)
    return pb, qb, t, tile, col_slot


@triton.jit
def piece_epilogue(
    # the piece of S, and where it lies
    acc,
    pb,
    qb,
    col0,
    tile,
    col_slot,
    cross,
    # pointers
    g_ptr,
    radial_slots_ptr,
    # sizes
    P,
    P_pad,
    N,
    # scalars
    eps,
    g_scale,
    # meta-parameters
    BLOCK: tl.constexpr,
    WIDTH: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    SHARDED: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """The transform of columns col0..col0 + WIDTH of tile (pb, qb) of S, held in ``acc``
    (BLOCK x WIDTH): stores that piece of G (stored tile ``tile``) and the column radial sums
    (slot row ``col_slot``), and returns ``(L_red partial, row radial sums)``. ``cross``
    (sharded only): the columns are another rank's rows, so every valid entry is a redundancy
    term, counted once (no diagonal, no positives, no mirror tile)."""
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
    upper = offs_p[:, None] < offs_q[None, :]
    if SHARDED:  # cross is 0 or 1 (integer sums: a scalar | a block is not boolean everywhere)
        differ = (sample_p[:, None] != sample_q[None, :]).to(tl.int32)
        redundancy = valid & (differ + cross > 0)
        counted = redundancy & (upper.to(tl.int32) + cross > 0)
    else:
        redundancy = valid & (sample_p[:, None] != sample_q[None, :])
        counted = redundancy & upper
    weight = tl.where(view_p[:, None] == view_q[None, :], 2.0, 1.0)

    rho = tl.clamp(acc, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN
    x = eps - rho * rho
    t_entry = 1.0 + x
    log_t = log1p(x, t_entry)
    terms = tl.where(counted, weight * log_t * log_t, 0.0)
    red = tl.sum(tl.sum(terms, axis=1), axis=0) * 0.25

    row_radial = tl.zeros((BLOCK,), acc_dtype)
    if NEED_GRAD:
        g = tl.where(redundancy, -weight * log_t * rho / t_entry, 0.0)
        stored = to_storage(g * g_scale, g_ptr.dtype.element_ty, EMULATE_RTNE)
        tl.store(g_ptr + tile * (BLOCK * BLOCK) + r[:, None] * BLOCK + (col0 + c)[None, :], stored)
        # the radial sums use G as the backward will read it (rounded to its storage type)
        gs = (stored.to(acc_dtype) / g_scale) * acc
        row_radial = tl.sum(gs, axis=1)
        if (pb != qb) | (cross > 0):
            tl.store(
                radial_slots_ptr + tl.cast(col_slot, tl.int64) * P_pad + offs_q, tl.sum(gs, axis=0)
            )
    return red, row_radial


@triton.jit
def tile_epilogue(
    # the tile of S (two column halves), and where it lies
    acc0,
    acc1,
    pb,
    qb,
    t,
    tile,
    row_slot,
    col_slot,
    cross,
    # pointers
    g_ptr,
    red_ptr,
    radial_slots_ptr,
    # sizes
    P,
    P_pad,
    N,
    # scalars
    eps,
    g_scale,
    # meta-parameters
    BLOCK: tl.constexpr,
    HALVES: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    SHARDED: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """The epilogue of tile (pb, qb), program tile t: the L_red partial, G (stored tile
    ``tile``) and the radial slots (rows: slot ``row_slot``; columns: ``col_slot``). With
    HALVES = 2 the tile is held as two column halves, transformed one after the other, so that
    the transform's temporaries are half a tile (a whole 128 x 128 tile's would spill)."""
    WIDTH: tl.constexpr = BLOCK // HALVES
    for half in tl.static_range(HALVES):
        if half == 0:
            acc = acc0
        else:
            acc = acc1
        red_half, row_radial_half = piece_epilogue(
            acc=acc,
            pb=pb,
            qb=qb,
            col0=half * WIDTH,
            tile=tile,
            col_slot=col_slot,
            cross=cross,
            g_ptr=g_ptr,
            radial_slots_ptr=radial_slots_ptr,
            P=P,
            P_pad=P_pad,
            N=N,
            eps=eps,
            g_scale=g_scale,
            BLOCK=BLOCK,
            WIDTH=WIDTH,
            NEED_GRAD=NEED_GRAD,
            SHARDED=SHARDED,
            EMULATE_RTNE=EMULATE_RTNE,
        )
        if half == 0:
            red = red_half
            row_radial = row_radial_half
        else:
            red += red_half
            row_radial += row_radial_half
    finish_tile(
        red, row_radial, pb, t, row_slot, red_ptr, radial_slots_ptr, P_pad, BLOCK, NEED_GRAD
    )


@triton.jit
def finish_tile(
    red,
    row_radial,
    pb,
    t,
    row_slot,
    red_ptr,
    radial_slots_ptr,
    P_pad,
    BLOCK: tl.constexpr,
    NEED_GRAD: tl.constexpr,
):
    """Stores the L_red partial of program tile t and the row radial sums of its rows."""
    tl.store(red_ptr + t, red)
    if NEED_GRAD:
        offs_p = pb * BLOCK + tl.arange(0, BLOCK)
        tl.store(radial_slots_ptr + tl.cast(row_slot, tl.int64) * P_pad + offs_p, row_radial)


@triton.jit
def locate_tile(idx, num_blocks, world, rank, upper, P_pad, D_pad, SHARDED: tl.constexpr):
    """``(pb, qb, column rank's row offset)`` of program tile ``idx``: the local triangle, or
    (SHARDED) one rank's share of the global S."""
    if SHARDED:
        pb, qb, t, _, _ = sharded_tile(idx, num_blocks, world, upper)
        column_base = tl.cast((rank + t) % world, tl.int64) * P_pad * D_pad
    else:
        pb, qb = triangle_tile(idx)
        column_base = 0
    return pb, qb, column_base


@triton.jit
def tile_targets(idx, pb, qb, num_blocks, world, upper, SHARDED: tl.constexpr):
    """``(tile, row_slot, col_slot, cross)`` of program tile ``idx`` = (pb, qb): where its G
    goes, the slot rows of its row and column radial sums, and whether its columns are another
    rank's rows. Computed after the K-loop, so that none of it is live across the loop."""
    if SHARDED:
        _, _, t, tile, col_slot = sharded_tile(idx, num_blocks, world, upper)
        row_slot = t * num_blocks + qb
        cross = (t > 0).to(tl.int32)
    else:
        tile = packed_tile_index(pb, qb)
        row_slot = qb
        col_slot = pb
        cross = 0
    return tile, row_slot, col_slot, cross


@triton.jit
def gram_forward_kernel(
    # pointers
    zh_ptr,  # (P_pad, D_pad) standardised rows, zero padding
    columns_ptr,  # the column rows: zh itself, or (sharded) every rank's zh, (W, P_pad, D_pad)
    g_ptr,  # (stored tiles, BLOCK, BLOCK) out: G tiles, when NEED_GRAD
    red_ptr,  # (tiles,) out: L_red partial of each tile
    radial_slots_ptr,  # (slots, P_pad) out: slot k, row p: sum over column block k of G_pq S_pq
    split_partial_ptr,  # (SPLIT, tiles, BLOCK, BLOCK) out: partial S tiles when SPLIT > 1
    # sizes
    P,  # rows of zh, V N
    P_pad,  # rows with the padding, NB BLOCK
    N,  # samples per view
    D_pad,  # features with the padding
    num_tiles,  # forward tiles (before the split)
    num_blocks,  # NB: row blocks of BLOCK rows
    # the rank in the sharded mode (W = 1, rank 0 locally)
    world,
    rank,
    upper,  # 1 on the upper side of the half block (rank < W / 2)
    # the K-loop piece of one program
    k_per_split,
    # scalars
    eps,
    g_scale,  # the power of two G is stored times
    # meta-parameters
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HALVES: tl.constexpr,
    SPLIT: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    SHARDED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    WIDTH: tl.constexpr = BLOCK // HALVES
    pid = tl.program_id(0)
    piece = pid // num_tiles
    t = pid - piece * num_tiles
    pb, qb, column_base = locate_tile(t, num_blocks, world, rank, upper, P_pad, D_pad, SHARDED)
    r = tl.arange(0, BLOCK)
    c = tl.arange(0, WIDTH)
    offs_k = tl.arange(0, BLOCK_K)
    k_start = piece * k_per_split
    k_end = tl.minimum(k_start + k_per_split, D_pad)
    a_ptrs = zh_ptr + (pb * BLOCK + r).to(tl.int64)[:, None] * D_pad + (k_start + offs_k)[None, :]
    if SHARDED:
        b_ptrs = (
            columns_ptr
            + column_base
            + (qb * BLOCK + c).to(tl.int64)[:, None] * D_pad
            + (k_start + offs_k)[None, :]
        )
    else:  # the columns are zh's own rows: one base pointer for both operands
        b_rows = (qb * BLOCK + c).to(tl.int64)
        b_ptrs = zh_ptr + b_rows[:, None] * D_pad + (k_start + offs_k)[None, :]
    acc0 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    acc1 = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
    for _ in range(k_start, k_end, BLOCK_K):
        a = tl.load(a_ptrs)
        b0 = tl.load(b_ptrs)
        if WIDEN_DOT:
            a = a.to(tl.float32)
            b0 = b0.to(tl.float32)
        # out_dtype is the accumulator's: float64 under the interpreter, which tl.dot refuses
        # against its float32 default out_dtype before triton 3.8
        acc0 = tl.dot(a, tl.trans(b0), acc0, input_precision=INPUT_PRECISION, out_dtype=acc0.dtype)
        if HALVES == 2:
            b1 = tl.load(b_ptrs + WIDTH * D_pad)
            if WIDEN_DOT:
                b1 = b1.to(tl.float32)
            acc1 = tl.dot(
                a, tl.trans(b1), acc1, input_precision=INPUT_PRECISION, out_dtype=acc1.dtype
            )
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if SPLIT == 1:
        tile, row_slot, col_slot, cross = tile_targets(t, pb, qb, num_blocks, world, upper, SHARDED)
        tile_epilogue(
            acc0=acc0,
            acc1=acc1,
            pb=pb,
            qb=qb,
            t=t,
            tile=tile,
            row_slot=row_slot,
            col_slot=col_slot,
            cross=cross,
            g_ptr=g_ptr,
            red_ptr=red_ptr,
            radial_slots_ptr=radial_slots_ptr,
            P=P,
            P_pad=P_pad,
            N=N,
            eps=eps,
            g_scale=g_scale,
            BLOCK=BLOCK,
            HALVES=HALVES,
            NEED_GRAD=NEED_GRAD,
            SHARDED=SHARDED,
            EMULATE_RTNE=EMULATE_RTNE,
        )
    else:
        slot = split_partial_ptr + pid.to(tl.int64) * (BLOCK * BLOCK) + r[:, None] * BLOCK
        tl.store(slot + c[None, :], acc0)
        if HALVES == 2:
            tl.store(slot + (WIDTH + c)[None, :], acc1)


@triton.jit
def gram_epilogue_kernel(
    # pointers (as the forward kernel's)
    g_ptr,
    red_ptr,
    radial_slots_ptr,
    split_partial_ptr,
    # sizes
    P,
    P_pad,
    N,
    D_pad,
    num_tiles,
    num_blocks,
    # the rank in the sharded mode
    world,
    rank,
    upper,
    # scalars
    eps,
    g_scale,
    # meta-parameters
    BLOCK: tl.constexpr,
    HALVES: tl.constexpr,
    SPLIT: tl.constexpr,
    NEED_GRAD: tl.constexpr,
    SHARDED: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """Split K: S tile t = the sum of its SPLIT partial tiles, in split order; then the epilogue,
    one column half at a time (both halves of a 128 x 128 float32 tile live at once spill on
    sm_80)."""
    WIDTH: tl.constexpr = BLOCK // HALVES
    t = tl.program_id(0)
    pb, qb, _ = locate_tile(t, num_blocks, world, rank, upper, P_pad, D_pad, SHARDED)
    tile, row_slot, col_slot, cross = tile_targets(t, pb, qb, num_blocks, world, upper, SHARDED)
    partials = split_partial_ptr + t.to(tl.int64) * (BLOCK * BLOCK)
    rows = tl.arange(0, BLOCK)[:, None] * BLOCK
    red = tl.zeros((), red_ptr.dtype.element_ty)
    row_radial = tl.zeros((BLOCK,), red_ptr.dtype.element_ty)
    for half in tl.static_range(HALVES):
        offsets = rows + half * WIDTH + tl.arange(0, WIDTH)[None, :]
        acc = tl.zeros((BLOCK, WIDTH), red_ptr.dtype.element_ty)
        for piece in tl.static_range(SPLIT):
            piece_offset = tl.cast(piece * num_tiles, tl.int64) * (BLOCK * BLOCK)
            acc += tl.load(partials + piece_offset + offsets)
        red_half, row_radial_half = piece_epilogue(
            acc=acc,
            pb=pb,
            qb=qb,
            col0=half * WIDTH,
            tile=tile,
            col_slot=col_slot,
            cross=cross,
            g_ptr=g_ptr,
            radial_slots_ptr=radial_slots_ptr,
            P=P,
            P_pad=P_pad,
            N=N,
            eps=eps,
            g_scale=g_scale,
            BLOCK=BLOCK,
            WIDTH=WIDTH,
            NEED_GRAD=NEED_GRAD,
            SHARDED=SHARDED,
            EMULATE_RTNE=EMULATE_RTNE,
        )
        red += red_half
        row_radial += row_radial_half
    finish_tile(
        red, row_radial, pb, t, row_slot, red_ptr, radial_slots_ptr, P_pad, BLOCK, NEED_GRAD
    )


@triton.jit
def finalize_kernel(
    # the loss: the partials in, (L, L_align, L_red) out
    red_ptr,  # (num_red,) L_red per tile
    num_red,
    align_ptr,  # (num_align,) L_align per sample
    num_align,
    out_ptr,  # (3,): L, L_align, L_red
    # the radial sums of the rows
    radial_slots_ptr,  # (slots, P_pad)
    radial_ptr,  # (P_pad,) out: sum of the slots of each row
    num_blocks,
    # the rank in the sharded mode
    world,
    upper,
    # sizes and scalars
    P_pad,
    lambda_param,
    # meta-parameters
    BLOCK: tl.constexpr,
    BLOCK_R: tl.constexpr,
    TILE: tl.constexpr,
    SHARDED: tl.constexpr,
):
    """Program 0: L = L_align + lambda L_red from the per-tile and per-sample partials. Programs
    1..: the radial sum of BLOCK_R rows over the slots. Both in a fixed order.

    Sharded, the slots of row p are: (t, qb) for every column rank offset t and column block qb
    (its own tiles' row sums, or the column sums of the tiles another rank formed, received in
    place), except on the half block, where the tiles (pb, qb) this rank formed (qb >= pb on the
    upper rank, qb > pb on the lower) are its own slots and the rest the received half slots."""
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
        if SHARDED:
            row_block = rows // TILE
            half = tl.where(world % 2 == 0, world // 2, -1)
            for k in range(0, world * num_blocks):
                t = k // num_blocks
                qb = k - t * num_blocks
                mine = qb + upper > row_block  # qb >= pb (upper rank), qb > pb (lower)
                use = ok & (mine.to(tl.int32) + (t != half).to(tl.int32) > 0)
                slot = radial_slots_ptr + tl.cast(k, tl.int64) * P_pad + rows
                radial += tl.load(slot, mask=use, other=0.0)
            if half > 0:
                first = (world + (world - 1) // 2 + 1) * num_blocks
                for qb in range(0, num_blocks):
                    mine = qb + upper > row_block
                    slot = radial_slots_ptr + tl.cast(first + qb, tl.int64) * P_pad + rows
                    radial += tl.load(slot, mask=ok & ~mine, other=0.0)
        else:
            for k in range(0, num_blocks):
                radial += tl.load(radial_slots_ptr + tl.cast(k, tl.int64) * P_pad + rows, mask=ok)
        tl.store(radial_ptr + rows, radial, mask=ok)


def finalize_block(count: int) -> int:
    """Chunk of the fixed-order loss reduction."""
    return min(triton.next_power_of_2(max(count, 16)), 1024)

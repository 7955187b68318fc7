"""The fused backward: dZ = G_sym Z, the alignment pairs and the standardisation backward.

With incoming gradients (g_L, g_align, g_red) of (L, L_align, L_red), folded as
c_align = g_L + g_align and c_red = lambda g_L + g_red, the gradient with respect to the
standardised row zh_p (p = u N + i) is

    dzh_p = c_red sum_q G_sym[p, q] zh_q  +  c_align sum_{v != u} a^{uv}_i zh^v_i

G_sym = G + G^T is read from G's stored upper tiles: tile (pb, qb) for qb >= pb as stored, the
transpose of tile (qb, pb) for qb < pb. A program owns an output tile of BLOCK rows (one row
block of G) x BLOCK_D features; its K-loop walks the P_pad rows of Z in slices of BLOCK_Q rows,
each slice a BLOCK x BLOCK_Q piece of one stored G tile (or the transpose of a BLOCK_Q x BLOCK
piece), so the shared memory of a pipeline stage is (BLOCK + BLOCK_D) BLOCK_Q elements whatever
BLOCK is. Programs are numbered row block first: a wave shares the Z slab of its feature block
and reads all of G, which stays in L2.

Sharded (``SHARDED``): the K-loop runs over the rows of every rank, column rank offset t =
0..W-1, the G tile of (pb, qb) read as stored or transposed from this rank's triangle, its own
blocks or the blocks its peers formed and sent (``band_tile_index``, see sharded.py); the rest
is the same.

Then the standardisation backward, row by row:

    dz_p = (dzh_p - mean_k dzh_p - [s_p not clamped] zh_p (zh_p . dzh_p)) / s_p

Both row scalars are known without a second pass over dzh:
    zh_p . dzh_p = c_red sum_q G_sym[p, q] S_pq + c_align sum_v a^{uv}_i rho^{uv}_i
                   (the first sum, ``radial``, was reduced once by the forward's last launch)
    mean_k dzh_p = sum_q G_sym[p, q] mean_k zh_q = 0   (every zh_q is centred; what rounding
                   leaves is below the precision of dzh itself)
"""

from __future__ import annotations

import triton
import triton.language as tl

from smi_kernels._triton.gram import band_tile_index
from smi_kernels._triton.rounding import to_storage


@triton.jit
def row_epilogue(
    # the piece of (G_sym Z) and where it lies
    acc,
    col0,
    offs_p,
    db,
    # pointers
    zh_ptr,
    rho_ptr,
    align_grad_ptr,
    dz_ptr,
    view_stride,
    # the row scalars
    radial,
    s,
    projected,
    c_align,
    c_red_scaled,
    # sizes
    P,
    N,
    D,
    D_pad,
    # meta-parameters
    V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WIDTH: tl.constexpr,
    EVEN_D: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    """dz of columns db BLOCK_D + col0 .. + WIDTH of the row block, from acc = (G_sym Z) there."""
    acc_dtype = acc.dtype
    offs_d = db * BLOCK_D + col0 + tl.arange(0, WIDTH)
    row_ok = offs_p < P
    view_p = offs_p // N
    sample_p = offs_p - view_p * N
    # zh has D_pad columns, zeros after D: its loads need a column mask only past D_pad
    if EVEN_D:
        load_cols = tl.full((1, WIDTH), 1, tl.int1)
    else:
        load_cols = (offs_d < D_pad)[None, :]
    dzh = acc * c_red_scaled
    # a loop, not unrolled: one partner tile live at a time (unrolled over four views, the
    # loads are hoisted together and spill)
    for v in range(V):
        pair_ok = row_ok & (view_p != v)
        a = tl.load(align_grad_ptr + (view_p * V + v) * N + sample_p, mask=pair_ok, other=0.0)
        partner = (v * N + sample_p).to(tl.int64)
        z_v = tl.load(
            zh_ptr + partner[:, None] * D_pad + offs_d[None, :],
            mask=pair_ok[:, None] & load_cols,
            other=0.0,
        )
        dzh += (c_align * a)[:, None] * z_v.to(acc_dtype)
    zh_p = tl.load(
        zh_ptr + offs_p.to(tl.int64)[:, None] * D_pad + offs_d[None, :],
        mask=row_ok[:, None] & load_cols,
        other=0.0,
    )
    dz = (dzh - (projected * radial)[:, None] * zh_p.to(acc_dtype)) / s[:, None]
    # dz has D_pad columns too (aligned rows, no column mask; its padding is zero)
    rows = view_p.to(tl.int64) * view_stride + sample_p.to(tl.int64) * D_pad
    out = dz_ptr + rows[:, None] + offs_d[None, :]
    tl.store(
        out, to_storage(dz, dz_ptr.dtype.element_ty, EMULATE_RTNE), mask=row_ok[:, None] & load_cols
    )


@triton.jit
def gram_backward_kernel(
    # pointers
    zh_ptr,  # (P_pad, D_pad)
    columns_ptr,  # zh itself, or (sharded) every rank's zh, (W, P_pad, D_pad)
    s_ptr,  # (P,)
    projected_ptr,  # (P,)
    g_ptr,  # packed G tiles
    radial_ptr,  # (P_pad,)
    rho_ptr,  # (V, V, N)
    align_grad_ptr,  # (V, V, N)
    grad_out_ptr,  # (3,): g_L, g_align, g_red
    dz_ptr,  # (V, N, D_pad) out, view u at u * view_stride
    # sizes
    view_stride,  # elements between the views of dz
    P,  # rows, V N
    P_pad,  # rows with the padding, NB BLOCK
    N,  # samples per view
    D,  # features
    D_pad,  # features with the padding
    num_blocks,  # NB
    # the rank in the sharded mode (W = 1, rank 0 locally)
    world,
    rank,
    upper,  # 1 on the upper side of the half block (rank < W / 2)
    # scalars
    lambda_param,
    inv_g_scale,  # 1 / the power of two G is stored times
    # meta-parameters
    V: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HALVES: tl.constexpr,
    SHARDED: tl.constexpr,
    EVEN_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    WIDTH: tl.constexpr = BLOCK_D // HALVES
    pid = tl.program_id(0)
    db = pid // num_blocks
    pb = pid - db * num_blocks
    acc_dtype = s_ptr.dtype.element_ty
    offs_p = pb * BLOCK + tl.arange(0, BLOCK)
    offs_d = db * BLOCK_D + tl.arange(0, WIDTH)
    if EVEN_D:
        z_mask0 = None
        z_mask1 = None
    else:
        z_mask0 = (offs_d < D_pad)[None, :]
        z_mask1 = (offs_d + WIDTH < D_pad)[None, :]

    acc0 = tl.zeros((BLOCK, WIDTH), acc_dtype)
    acc1 = tl.zeros((BLOCK, WIDTH), acc_dtype)
    if SHARDED:
        # every column rank offset t: the column blocks [0, split) from the transpose of a
        # stored tile (qb, pb), the rest as stored (pb, qb); see the module docstring
        tri = num_blocks * (num_blocks + 1) // 2
        square = num_blocks * num_blocks
        full = (world - 1) // 2
        for t in range(0, world):
            columns = columns_ptr + tl.cast((rank + t) % world, tl.int64) * P_pad * D_pad
            band = tri + tl.cast(t - 1, tl.int64) * square
            is_half = (world % 2 == 0) & (t == world // 2)
            received = (t > full) & ~is_half
            split = tl.where(
                t == 0, pb, tl.where(is_half, pb + 1 - upper, tl.where(received, num_blocks, 0))
            )
            transposed_base = tl.where(t == 0, 0, tl.where(is_half, band + upper * tri, band))
            transposed_kind = tl.where(t == 0, 0, tl.where(is_half, upper, 2))
            direct_base = tl.where(t == 0, 0, tl.where(is_half, band + (1 - upper) * tri, band))
            direct_kind = tl.where(t == 0, 0, tl.where(is_half, 1 - upper, 2))
            acc0, acc1 = walk(
                acc0=acc0,
                acc1=acc1,
                pb=pb,
                split=split,
                transposed_base=transposed_base,
                transposed_kind=transposed_kind,
                direct_base=direct_base,
                direct_kind=direct_kind,
                g_ptr=g_ptr,
                columns=columns,
                offs_d=offs_d,
                z_mask0=z_mask0,
                z_mask1=z_mask1,
                num_blocks=num_blocks,
                D_pad=D_pad,
                BLOCK=BLOCK,
                BLOCK_Q=BLOCK_Q,
                WIDTH=WIDTH,
                HALVES=HALVES,
                INPUT_PRECISION=INPUT_PRECISION,
                WIDEN_DOT=WIDEN_DOT,
            )
    else:
        # below the diagonal: G_sym[p, q] = G[q, p] from stored tile (qb, pb); on and above it,
        # stored tile (pb, qb) (the packed triangle: kind 0)
        acc0, acc1 = walk(
            acc0=acc0,
            acc1=acc1,
            pb=pb,
            split=pb,
            transposed_base=0,
            transposed_kind=0,
            direct_base=0,
            direct_kind=0,
            g_ptr=g_ptr,
            columns=zh_ptr,
            offs_d=offs_d,
            z_mask0=z_mask0,
            z_mask1=z_mask1,
            num_blocks=num_blocks,
            D_pad=D_pad,
            BLOCK=BLOCK,
            BLOCK_Q=BLOCK_Q,
            WIDTH=WIDTH,
            HALVES=HALVES,
            INPUT_PRECISION=INPUT_PRECISION,
            WIDEN_DOT=WIDEN_DOT,
        )

    g_loss = tl.load(grad_out_ptr).to(acc_dtype)
    g_align = tl.load(grad_out_ptr + 1).to(acc_dtype)
    g_red = tl.load(grad_out_ptr + 2).to(acc_dtype)
    c_align = g_loss + g_align
    c_red = lambda_param * g_loss + g_red

    # the row scalars, before any further tile is loaded
    row_ok = offs_p < P
    view_p = offs_p // N
    sample_p = offs_p - view_p * N
    radial_align = tl.zeros((BLOCK,), acc_dtype)
    for v in tl.static_range(V):
        pair_offset = (view_p * V + v) * N + sample_p
        pair_ok = row_ok & (view_p != v)
        a = tl.load(align_grad_ptr + pair_offset, mask=pair_ok, other=0.0)
        rho = tl.load(rho_ptr + pair_offset, mask=pair_ok, other=0.0)
        radial_align += a * rho
    radial = c_red * tl.load(radial_ptr + offs_p) + c_align * radial_align
    s = tl.load(s_ptr + offs_p, mask=row_ok, other=1.0)
    projected = tl.load(projected_ptr + offs_p, mask=row_ok, other=0.0)
    c_red_scaled = c_red * inv_g_scale
    for half in tl.static_range(HALVES):
        if half == 0:
            acc = acc0
        else:
            acc = acc1
        row_epilogue(
            acc=acc,
            col0=half * WIDTH,
            offs_p=offs_p,
            db=db,
            zh_ptr=zh_ptr,
            rho_ptr=rho_ptr,
            align_grad_ptr=align_grad_ptr,
            dz_ptr=dz_ptr,
            view_stride=view_stride,
            radial=radial,
            s=s,
            projected=projected,
            c_align=c_align,
            c_red_scaled=c_red_scaled,
            P=P,
            N=N,
            D=D,
            D_pad=D_pad,
            V=V,
            BLOCK_D=BLOCK_D,
            WIDTH=WIDTH,
            EVEN_D=EVEN_D,
            EMULATE_RTNE=EMULATE_RTNE,
        )


@triton.jit
def walk(
    acc0,
    acc1,
    # the G tiles of row block pb: column blocks [0, split) read transposed from the stored tile
    # (qb, pb), [split, NB) as stored (pb, qb), each part at its base and of its kind
    pb,
    split,
    transposed_base,
    transposed_kind,
    direct_base,
    direct_kind,
    # pointers
    g_ptr,
    columns,
    # the output tile's columns
    offs_d,
    z_mask0,
    z_mask1,
    # sizes
    num_blocks,
    D_pad,
    # meta-parameters
    BLOCK: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    WIDTH: tl.constexpr,
    HALVES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    """acc += G_sym[row block pb, :] Z over the rows of ``columns``, in slices of BLOCK_Q rows:
    first the column blocks [0, split), G_sym[p, q] the transpose of stored tile (qb, pb), then
    [split, NB), G_sym[p, q] stored tile (pb, qb); the tile of a part lies at its base plus
    ``band_tile_index(kind, ...)``."""
    for part in tl.static_range(2):
        if part == 0:
            first_block = 0
            end_block = split
            tile_base = transposed_base
            kind = transposed_kind
        else:
            first_block = split
            end_block = num_blocks
            tile_base = direct_base
            kind = direct_kind
        r = tl.arange(0, BLOCK)
        q = tl.arange(0, BLOCK_Q)
        for kq in range(first_block * BLOCK, end_block * BLOCK, BLOCK_Q):
            qb = kq // BLOCK
            jj = kq - qb * BLOCK
            if part == 0:
                tile = tile_base + band_tile_index(kind, qb, pb, num_blocks)
                g_rows = g_ptr + tile * (BLOCK * BLOCK) + (jj + q)[:, None] * BLOCK + r[None, :]
                g = tl.trans(tl.load(g_rows))
            else:
                tile = tile_base + band_tile_index(kind, pb, qb, num_blocks)
                g_rows = g_ptr + tile * (BLOCK * BLOCK) + r[:, None] * BLOCK + (jj + q)[None, :]
                g = tl.load(g_rows)
            z_rows = columns + (kq + q).to(tl.int64)[:, None] * D_pad + offs_d[None, :]
            acc0, acc1 = accumulate(
                acc0, acc1, g, z_rows, z_mask0, z_mask1, WIDTH, HALVES, INPUT_PRECISION, WIDEN_DOT
            )
    return acc0, acc1


@triton.jit
def accumulate(
    acc0,
    acc1,
    g,
    z_rows,
    z_mask0,
    z_mask1,
    WIDTH: tl.constexpr,
    HALVES: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    """acc_h + G slice @ Z slice, for the column halves h of the output tile."""
    z0 = tl.load(z_rows, mask=z_mask0)
    if WIDEN_DOT:
        g = g.to(tl.float32)
        z0 = z0.to(tl.float32)
    # out_dtype is the accumulator's (float64 under the interpreter: see gram_forward_kernel)
    acc0 = tl.dot(g, z0, acc0, input_precision=INPUT_PRECISION, out_dtype=acc0.dtype)
    if HALVES == 2:
        z1 = tl.load(z_rows + WIDTH, mask=z_mask1)
        if WIDEN_DOT:
            z1 = z1.to(tl.float32)
        acc1 = tl.dot(g, z1, acc1, input_precision=INPUT_PRECISION, out_dtype=acc1.dtype)
    return acc0, acc1

"""The fused backward: dZ = G_sym Z, the alignment pairs and the standardisation backward.

With incoming gradients (g_L, g_align, g_red) of (L, L_align, L_red), folded as
c_align = g_L + g_align and c_red = lambda g_L + g_red, the gradient with respect to the
standardised row zh_p (p = u N + i) is

    dzh_p = c_red sum_q G_sym[p, q] zh_q  +  c_align sum_{v != u} a^{uv}_i zh^v_i

G_sym = G + G^T is read from G's stored upper tiles: tile (pb, qb) for qb >= pb as stored, the
transpose of tile (qb, pb) for qb < pb. Then the standardisation backward, row by row:

    dz_p = (dzh_p - mean_k dzh_p - [s_p not clamped] zh_p (zh_p . dzh_p)) / s_p

Both row scalars are known without a second pass over dzh:
    zh_p . dzh_p = c_red sum_q G_sym[p, q] S_pq + c_align sum_v a^{uv}_i rho^{uv}_i
                   (the first sum was accumulated by the forward, per tile, in fixed slots)
    mean_k dzh_p = sum_q G_sym[p, q] mean_k zh_q = 0   (every zh_q is centred; what rounding
                   leaves is below the precision of dzh itself)
so one program computes a BLOCK x BLOCK_D tile of dz in a single launch: a K-loop over the P
rows of Z, then this epilogue.
"""

from __future__ import annotations

import triton
import triton.language as tl

from smi_kernels._triton.gram import packed_tile_index
from smi_kernels._triton.rounding import to_storage


@triton.jit
def accumulate_tile(
    acc, g, zh_ptr, rows_q, offs_d, P, D, INPUT_PRECISION: tl.constexpr, WIDEN_DOT: tl.constexpr
):
    """acc + G_sym[p-block, q-block] @ Z[q-block, d-chunk]."""
    z = tl.load(
        zh_ptr + rows_q.to(tl.int64)[:, None] * D + offs_d[None, :],
        mask=(rows_q < P)[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )
    if WIDEN_DOT:
        g = g.to(tl.float32)
        z = z.to(tl.float32)
    return tl.dot(g, z, acc, input_precision=INPUT_PRECISION)


@triton.jit
def gram_backward_kernel(
    zh_ptr,  # (P, D)
    s_ptr,  # (P,)
    projected_ptr,  # (P,)
    g_ptr,  # packed G tiles
    radial_partial_ptr,  # (NB, NB BLOCK)
    rho_ptr,  # (V, V, N)
    align_grad_ptr,  # (V, V, N)
    grad_out_ptr,  # (3,): g_L, g_align, g_red
    dz_ptr,  # (P, D) out
    P,
    N,
    D,
    lambda_param,
    inv_g_scale,
    num_blocks,
    V: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
    EMULATE_RTNE: tl.constexpr,
):
    pb = tl.program_id(0)
    db = tl.program_id(1)
    acc_dtype = s_ptr.dtype.element_ty
    r = tl.arange(0, BLOCK)
    offs_p = pb * BLOCK + r
    offs_d = db * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = (offs_d < D)[None, :]
    tile_offsets = r[:, None] * BLOCK + r[None, :]

    acc = tl.zeros((BLOCK, BLOCK_D), acc_dtype)
    for qb in range(0, pb):  # below the diagonal: the transpose of stored tile (qb, pb)
        tile = packed_tile_index(qb, pb, num_blocks)
        g = tl.trans(tl.load(g_ptr + tile * (BLOCK * BLOCK) + tile_offsets))
        acc = accumulate_tile(
            acc, g, zh_ptr, qb * BLOCK + r, offs_d, P, D, INPUT_PRECISION, WIDEN_DOT
        )
    for qb in range(pb, num_blocks):  # on and above the diagonal: stored tile (pb, qb)
        tile = packed_tile_index(pb, qb, num_blocks)
        g = tl.load(g_ptr + tile * (BLOCK * BLOCK) + tile_offsets)
        acc = accumulate_tile(
            acc, g, zh_ptr, qb * BLOCK + r, offs_d, P, D, INPUT_PRECISION, WIDEN_DOT
        )

    g_loss = tl.load(grad_out_ptr).to(acc_dtype)
    g_align = tl.load(grad_out_ptr + 1).to(acc_dtype)
    g_red = tl.load(grad_out_ptr + 2).to(acc_dtype)
    c_align = g_loss + g_align
    c_red = lambda_param * g_loss + g_red
    dzh = acc * (c_red * inv_g_scale)

    row_ok = offs_p < P
    view_p = offs_p // N
    sample_p = offs_p - view_p * N
    radial_align = tl.zeros((BLOCK,), acc_dtype)
    for v in tl.static_range(V):
        pair_ok = row_ok & (view_p != v)
        pair_offset = (view_p * V + v) * N + sample_p
        a = tl.load(align_grad_ptr + pair_offset, mask=pair_ok, other=0.0)
        rho = tl.load(rho_ptr + pair_offset, mask=pair_ok, other=0.0)
        partner = (v * N + sample_p).to(tl.int64)
        z_v = tl.load(
            zh_ptr + partner[:, None] * D + offs_d[None, :],
            mask=pair_ok[:, None] & col_ok,
            other=0.0,
        ).to(acc_dtype)
        dzh += (c_align * a)[:, None] * z_v
        radial_align += a * rho

    width = num_blocks * BLOCK
    radial_red = tl.zeros((BLOCK,), acc_dtype)
    for k in range(0, num_blocks):
        radial_red += tl.load(radial_partial_ptr + tl.cast(k, tl.int64) * width + offs_p)
    radial = c_red * radial_red + c_align * radial_align

    rows_p = offs_p.to(tl.int64)[:, None] * D + offs_d[None, :]
    mask = row_ok[:, None] & col_ok
    zh_p = tl.load(zh_ptr + rows_p, mask=mask, other=0.0).to(acc_dtype)
    s = tl.load(s_ptr + offs_p, mask=row_ok, other=1.0)
    projected = tl.load(projected_ptr + offs_p, mask=row_ok, other=0.0)
    dz = (dzh - (projected * radial)[:, None] * zh_p) / s[:, None]
    tl.store(dz_ptr + rows_p, to_storage(dz, dz_ptr.dtype.element_ty, EMULATE_RTNE), mask=mask)

"""Global-batch SMI with the work sharded over the ranks: ``gather_distributed="sharded"``.

The same loss and gradients as ``gather_distributed=True`` (docs/design.md, section 5), with each
rank doing 1/W of gather mode's matrix work: every pair of rows of the global batch is formed on
exactly one rank, and each rank computes the gradient of its own rows only.

Setting. W ranks, each with V views of shape (n, D) (n = N_local). The global batch is the ranks'
batches stacked in rank order, view by view, as in gather mode: global sample ``g = r n + i``.
``P_local = V n`` rows per rank, ``P_global = W P_local`` in all. Rank r owns the rows R_r.

What is gathered: the standardised rows zh, in the compute dtype (float32 for half inputs on the
PyTorch path, the input dtype on the Triton path, as each path stores zh). Standardisation is
per row, so each rank standardises its own rows once and its backward stays local; the rows
arrive exactly as their owner computed them, so an entry of S is the same dot product of the
same two rows that gather mode forms, up to the summation order of the matrix product.
Gathering the raw views instead would make every rank standardise all P_global rows (W-fold
redundant element-wise work).

The loss (symbols of docs/design.md, section 2). Every term of L is a function of one entry of S:
``L = sum_{p<q} f_pq(S_pq)``. Split S into W x W blocks of P_local x P_local, block (r, r') pairing
the rows of ranks r and r'. The pairs of one unordered block pair {r, r'} are formed once, on one of
the two ranks (:mod:`smi_kernels.schedule`): rank r forms its diagonal block (the local mode's
computation on its own rows: its triangle, the positives, all of L_align), whole blocks against the
next K = (W - 1) // 2 ranks and, for even W, half of the block it shares with rank r + W/2; so every
rank forms ``P_local^2 W / 2 = P_global^2 / (2W)`` entries, 1/W of gather mode's upper triangle. On
a block between two ranks there is no diagonal and no positive pair; its entries are redundancy
terms with the weights of section 2 (2 m^2 within a view, m^2 across views, each pair once). Rank
r's share L_r is the sum of the terms it formed; ``sum_r L_r = L``, and the output of every rank is
the global ``(L, L_align, L_red)``, the shares summed by an all-reduce.

Backward. Row p enters L through row and column p of S, and S is symmetric, so

    dL/dzh_p = sum_q G_sym[p, q] zh_q         (G_sym = G + G^T: 2 m m' across views, 4 m m'
                                               within a view, 0 on the diagonal and positives)

For rank r's rows this needs its band ``G_sym[R_r, :]`` (P_local x P_global) and every zh (the
gather). The band is the G of the blocks rank r formed, plus the transposes of the blocks its
peers formed: after the forward, each rank sends the G of every block it formed between two
ranks to the other rank of the block (point to point; P_local x P_global / 2 values a rank
in all, against the P_global x D of the zh gather: D / (P_local / 2) times less), and receives
theirs. Then, with no further communication,

    dzh[R_r] = c_red G_sym[R_r, :] Z + c_align (the local positives' terms)    P_local P_global D
    dz       = the row-standardisation backward, locally

1/W of gather mode's ``G_sym Z``. (Differentiating only the share L_r and reduce-scattering the
gradient of the other ranks' rows is the alternative: the same multiply-adds, but a P_global x D
reduce-scatter in every backward instead of the G blocks, D / (P_local / 2) times more bytes.)

Gradient convention (as gather mode, see :mod:`smi_kernels.distributed`): rank r' receives the
incoming gradient ``c_r'`` of its outputs (L, L_align, L_red); gather mode hands rank r's rows
``sum_r' c_r' dL/dz_r``. The backward all-reduces the three numbers ``c_r'`` and applies the
formula above with ``c = sum_r' c_r'``, which is that sum for any ``c_r'``. With ``loss.backward()``
on every rank it is ``W dL/dz_r``, and DDP's average gives each parameter the gradient of one
process that sees the whole batch. Every rank must run the backward (it is a collective), as in
gather mode.

Cost per rank: forward ``P_global^2 D / (2W)`` MACs, backward ``P_local P_global D``, both 1/W of
gather mode (:func:`smi_kernels.flops.distributed_macs`). Memory: the band of G (P_local x
P_global, at most) and the gathered zh (P_global x D); S exists one block at a time (PyTorch) or
one tile at a time (Triton). Communication: one all-gather of zh, the G blocks point to point
(with a gradient), and three small collectives (the shape check, the shares, the incoming
gradients).

The backends share the schedule (:mod:`smi_kernels.schedule`), the communication
(:mod:`smi_kernels.distributed`) and this module's autograd function; the PyTorch path is
:func:`redundancy_share` / :func:`band_gradient`, the Triton path
:mod:`smi_kernels._triton.sharded` (the local kernels with ``SHARDED`` set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from smi_kernels import distributed
from smi_kernels._torch import (
    add_alignment_gradient,
    alignment_terms,
    autocast_disabled,
    compute_dtype,
    log_dependency,
    redundancy_blocks,
    refuse_double_backward,
    smi_torch,
    standardize_rows,
    standardize_rows_backward,
)
from smi_kernels.distributed import Communicator
from smi_kernels.schedule import ALL, Schedule

MODE = "gather_distributed='sharded'"


#: (rows of this rank, G piece, column rank, its rows): one piece of this rank's band of G
Piece = tuple[slice, Tensor, int, slice]


def _row_views(rows: int, n: int, device: torch.device, start: int = 0) -> Tensor:
    return torch.arange(start, start + rows, device=device) // n


def cross_terms(
    rows: Tensor, row_view: Tensor, cols: Tensor, col_view: Tensor, eps: float, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """``(sum of w m^2, G)`` of a block of S between rows of two different ranks: no diagonal,
    no positives; w = 2 where the two rows are of the same view, 1 across views, every pair once.
    G = dL_red/dS = -w log(t) rho / t (the block of G_sym)."""
    rho = torch.mm(rows, cols.T).clamp_(-1.0, 1.0)
    log_t, t = log_dependency(rho, eps)
    weight = torch.where(row_view[:, None] == col_view[None, :], 2.0, 1.0).to(rho.dtype)
    red = torch.dot(log_t.square().view(-1), weight.view(-1)) * 0.25
    if not need_grad:
        return red, None
    return red, log_t.mul_(rho).div_(t).mul_(weight).neg_()


def redundancy_share(
    zh: Tensor, zh_all: Tensor, schedule: Schedule, eps: float, need_grad: bool
) -> tuple[Tensor, list[Piece], list[tuple[int, Tensor]]]:
    """This rank's share of L_red, the pieces of its band of G formed here, and what it sends.

    Args:
        zh: the local standardised rows, (V, n, D).
        zh_all: every rank's zh in rank order, (W, V n, D).
        schedule: the blocks this rank forms.
        eps: the stabiliser of m.
        need_grad: also form G (and list the G blocks other ranks need).

    Returns ``(red, pieces, sends)``: ``sends`` is ``[(peer, G block)]``, the blocks this rank
    formed whose other side is ``peer``'s rows (empty without a gradient).
    """
    v_count, n, d = zh.shape
    p_local = v_count * n
    own = zh.view(p_local, d)
    views = _row_views(p_local, n, zh.device)
    red, g_own = redundancy_blocks(zh, eps, need_grad)
    pieces: list[Piece] = [(ALL, g_own, schedule.rank, ALL)] if g_own is not None else []
    sends: list[tuple[int, Tensor]] = []
    for t, rows, cols in schedule.formed_blocks(p_local):
        peer = schedule.peer(t)
        red_block, g = cross_terms(
            own[rows], views[rows], zh_all[peer][cols], views[cols], eps, need_grad
        )
        red = red + red_block
        if g is not None:
            pieces.append((rows, g, peer, cols))
            sends.append((peer, g))
    return red, pieces, sends


def receive_buffers(
    schedule: Schedule, p_local: int, like: Tensor
) -> tuple[list[Piece], list[tuple[int, Tensor]]]:
    """The pieces of the band formed by other ranks (as transposed views of receive buffers),
    and the ``(peer, buffer)`` receives that fill them."""
    pieces: list[Piece] = []
    receives: list[tuple[int, Tensor]] = []
    for t, rows, cols in schedule.received_blocks(p_local):
        peer = schedule.peer(t)
        count_rows = len(range(p_local)[rows])
        count_cols = len(range(p_local)[cols])
        buffer = like.new_empty((count_cols, count_rows))  # in the peer's frame: its rows first
        receives.append((peer, buffer))
        pieces.append((rows, buffer.T, peer, cols))
    return pieces, receives


def band_gradient(pieces: Sequence[Piece], zh_all: Tensor, p_local: int) -> Tensor:
    """``G[R_r, :] Z``: dL_red/dzh of this rank's rows, (P_local, D), from the band's pieces."""
    out = zh_all.new_zeros((p_local, zh_all.shape[-1]))
    for rows, g, peer, cols in pieces:
        block = out[rows]
        torch.addmm(block, g, zh_all[peer][cols], out=block)  # addmm_, seen by FLOP counters
    return out


class _ShardedSMIFunction(torch.autograd.Function):
    """Returns the global vector ``(L, L_align, L_red)`` in the compute dtype; the gradient reaches
    this rank's views only (``sum over ranks of their incoming gradients`` times dL/dz_local)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        lambda_param: float,
        eps: float,
        need_grad: bool,
        comm: Communicator,
        backend: str,
        *views: Tensor,
    ) -> Tensor:
        ctx.comm = comm
        ctx.backend = backend
        ctx.lambda_param = lambda_param
        ctx.eps = eps
        if backend == "triton":
            from smi_kernels._triton import sharded as triton_sharded

            out, saved, ctx.plan = triton_sharded.forward(views, lambda_param, eps, need_grad, comm)
            if need_grad:
                ctx.save_for_backward(*saved)
            return out
        with autocast_disabled(views[0].device.type):
            return _ShardedSMIFunction._forward(ctx, lambda_param, eps, need_grad, comm, views)

    @staticmethod
    def _forward(
        ctx,
        lambda_param: float,
        eps: float,
        need_grad: bool,
        comm: Communicator,
        views: Sequence[Tensor],
    ) -> Tensor:
        v_count = len(views)
        n, d = views[0].shape
        p_local = v_count * n
        dtype = compute_dtype(views[0].dtype)
        schedule = Schedule(comm.world_size, comm.rank)

        z = torch.stack([view.to(dtype) for view in views])  # (V, n, D)
        zh, s, projected = standardize_rows(z)
        align, align_grad, pairs = alignment_terms(zh, projected, eps, need_grad)

        zh_all = comm.all_gather(zh).view(comm.world_size, p_local, d)
        red, pieces, sends = redundancy_share(zh, zh_all, schedule, eps, need_grad)
        if need_grad:
            received, receives = receive_buffers(schedule, p_local, zh)
            comm.exchange(sends, receives)
            pieces += received

        align_total, red_total = comm.all_reduce(torch.stack([align, red])).unbind()
        out = torch.stack([align_total + lambda_param * red_total, align_total, red_total])
        ctx.pairs = pairs
        ctx.input_dtype = views[0].dtype
        if need_grad:
            ctx.pieces = [(rows, peer, cols) for rows, _, peer, cols in pieces]
            rows = (zh.view(p_local, d), s.view(p_local), projected.view(p_local))
            ctx.save_for_backward(*rows, zh_all, align_grad, *(g for _, g, _, _ in pieces))
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        refuse_double_backward()
        # c = sum over ranks of the incoming gradients: the gather-mode convention for any c_r
        total = ctx.comm.all_reduce(grad_out.detach().clone(memory_format=torch.contiguous_format))
        v_count = len(ctx.needs_input_grad) - 5
        if ctx.backend == "triton":
            from smi_kernels._triton import sharded as triton_sharded

            dz = triton_sharded.backward(
                total, ctx.saved_tensors, ctx.plan, ctx.lambda_param, ctx.eps, ctx.comm.rank
            )
        else:
            with autocast_disabled(grad_out.device.type):
                dz = _ShardedSMIFunction._backward(ctx, total, v_count)
        grads = [dz[k] if ctx.needs_input_grad[5 + k] else None for k in range(v_count)]
        return (None, None, None, None, None, *grads)

    @staticmethod
    def _backward(ctx, total: Tensor, v_count: int) -> Tensor:
        zh_flat, s, projected, zh_all, align_grad, *blocks = ctx.saved_tensors
        g_loss, g_align, g_red = total.unbind()
        c_align = g_loss + g_align
        c_red = ctx.lambda_param * g_loss + g_red
        p_local, d = zh_flat.shape
        n = p_local // v_count

        layout = zip(ctx.pieces, blocks, strict=True)
        pieces = [(rows, g, peer, cols) for (rows, peer, cols), g in layout]
        dzh = band_gradient(pieces, zh_all, p_local).mul_(c_red).view(v_count, n, d)
        zh = zh_flat.view(v_count, n, d)
        add_alignment_gradient(dzh, zh, (c_align * align_grad).unsqueeze(-1), ctx.pairs)
        dz = standardize_rows_backward(zh_flat, s, projected, dzh.view(p_local, d))
        return dz.to(ctx.input_dtype).view(v_count, n, d)


def smi_sharded(
    views: Sequence[Tensor],
    lambda_param: float,
    eps: float,
    comm: Communicator | None = None,
    backend: str = "torch",
) -> Tensor:
    """The global ``(L, L_align, L_red)`` with this rank's share of the work, differentiable in
    this rank's views (gradient convention of gather mode).

    Without ``comm`` the default process group is used: it must be initialised; with one rank
    this is the local mode itself (bitwise, on the same backend); otherwise the ranks' views
    must agree in count, shape and dtype (checked, ``ValueError`` on every rank). A ``comm``
    (anything with ``rank``, ``world_size``, ``all_gather``, ``all_reduce`` and ``exchange``)
    runs the sharded computation as given, with no checks. ``backend``: "torch" (any device) or
    "triton" (the fused kernels: CUDA, or the Triton interpreter).

    Example (on every rank of an initialised process group):
        >>> from smi_kernels import smi_loss  # doctest: +SKIP
        >>> loss = smi_loss(z_a, z_b, gather_distributed="sharded")  # doctest: +SKIP
    """
    if comm is None:
        distributed.require_process_group(MODE)
        if torch.distributed.get_world_size() == 1:
            if backend == "triton":
                from smi_kernels._triton.op import smi_triton

                return smi_triton(views, lambda_param, eps)
            return smi_torch(views, lambda_param, eps)
    need_grad = torch.is_grad_enabled() and any(view.requires_grad for view in views)
    if comm is None:
        distributed.check_same_shapes(views, MODE, need_grad)
        comm = distributed.ProcessGroupCommunicator()
    return _ShardedSMIFunction.apply(lambda_param, eps, need_grad, comm, backend, *views)

"""The sharded mode on the Triton kernels: one rank's share of the global S, G and dZ.

The same kernels as the local mode, with ``SHARDED`` set (:mod:`smi_kernels.sharded` for the
math, :mod:`smi_kernels.schedule` for which tiles a rank forms, how it stores G and what it
sends). Rank r of W, P_pad rows a rank, NB row blocks of B:

1. standardise the rank's views into zh (P_pad, D_pad) as in the local mode;
2. all-gather zh (padding included): ``columns`` (W, P_pad, D_pad), so a tile of columns never
   straddles two ranks;
3. the Gram kernel over this rank's tiles (``schedule.forward_tiles``): its triangle, K whole
   NB x NB blocks of the ranks r + 1..r + K, and for even W its half of the block with rank
   r + W/2; each writes its L_red partial, its G tile and its radial sums (row sums for this
   rank's rows, column sums for the other rank's rows);
4. with a gradient, point to point (``schedule.messages``): each whole block's G tiles and
   column sums go to the rank of its columns, which stores them where its own tiles for that
   offset would be and reads them transposed; the two halves of a half block are swapped
   likewise;
5. the fixed-order reduction: this rank's share (L_r, L_align,r, L_red,r) and the radial sum of
   its rows; then the shares are all-reduced.

The backward kernel walks, for its row block, every column rank offset t with the column blocks
[0, split) read transposed and [split, NB) as stored (``split``: pb on the triangle, 0 on the
blocks formed here, NB on received ones, pb or pb + 1 on the half block), then the same row
epilogue as the local mode; the incoming gradients are all-reduced first, so that rank r's rows
receive ``sum over ranks of c_r' dL/dz_r`` as in gather mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from smi_kernels import flops, schedule
from smi_kernels._triton import configs, op
from smi_kernels._triton.plan import Plan, plan_for, segment
from smi_kernels.distributed import Communicator
from smi_kernels.schedule import Schedule


def sharded_plan(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    need_grad: bool,
    ranks: Schedule,
    precision: str | None = None,
) -> Plan:
    """The plan of one rank of ``ranks`` for views of ``shape`` (V, n, D)."""
    v, n, d = shape
    return plan_for(v, n, d, dtype, device, need_grad, ranks.world, ranks.upper, precision)


def messages(
    plan: Plan, workspace: Tensor, ranks: Schedule
) -> tuple[list[tuple[int, Tensor]], list[tuple[int, Tensor]]]:
    """``(sends, receives)`` of ``schedule.messages`` as views of the workspace: the G tiles and
    column sums of the blocks this rank formed, to the rank of their columns; the buffers the
    other ranks' land in."""
    sends, receives = schedule.messages(ranks, plan.num_blocks)

    def rows(peer: int, name: str, first: int, count: int) -> tuple[int, Tensor]:
        return peer, segment(workspace, plan, name)[first : first + count]

    return [rows(*m) for m in sends], [rows(*m) for m in receives]


def forward(
    views: Sequence[Tensor], lambda_param: float, eps: float, need_grad: bool, comm: Communicator
) -> tuple[Tensor, tuple[Tensor, ...], Plan]:
    """``(out, saved, plan)``: the global ``(L, L_align, L_red)`` (the shares all-reduced), and
    what the backward needs (the workspace and every rank's zh)."""
    ranks = Schedule(comm.world_size, comm.rank)
    device = views[0].device
    plan = sharded_plan([len(views), *views[0].shape], views[0].dtype, device, need_grad, ranks)
    workspace = op.allocate_workspace(plan, device)
    out = op.allocate((3,), plan.accumulator, device)
    run = op.launches(plan, configs.autotune_enabled())
    seg = op.segments(workspace, plan)
    op.launch_standardize(plan, run, seg, views, eps)
    columns = comm.all_gather(segment(workspace, plan, "zh"))
    if op.eager(device):
        op.launch_gram(plan, run, seg, columns, ranks.rank, eps)
    else:  # a dispatch mode (FlopCounterMode, ...) sees the registered op and its FLOP formula
        torch.ops.smi_kernels.smi_sharded_gram(
            columns=columns,
            workspace=workspace,
            z_shape=[len(views), *views[0].shape],
            dtype=views[0].dtype,
            precision=torch.get_float32_matmul_precision(),
            need_grad=need_grad,
            world=ranks.world,
            rank=ranks.rank,
            eps=eps,
        )
    if need_grad:
        comm.exchange(*messages(plan, workspace, ranks))
    op.launch_finalize(plan, run, seg, out, lambda_param)
    out = comm.all_reduce(out)
    # the loss of the global batch: L = L_align + lambda L_red of the summed terms
    out[0] = out[1] + lambda_param * out[2]
    return out, (workspace, columns), plan


def backward(
    grad_out: Tensor,
    saved: Sequence[Tensor],
    plan: Plan,
    lambda_param: float,
    eps: float,
    rank: int,
) -> Tensor:
    """dz (V, N, D) of this rank's views; ``grad_out`` is the all-reduced incoming gradient."""
    workspace, columns = saved
    if op.eager(workspace.device):
        return op.backward(grad_out, workspace, plan, lambda_param, eps, columns, rank)
    return torch.ops.smi_kernels.smi_sharded_backward(
        grad_out=grad_out,
        workspace=workspace,
        columns=columns,
        z_shape=[plan.views, plan.n, plan.d],
        dtype=plan.dtype,
        precision=_precision(plan),
        world=plan.world,
        rank=rank,
        lambda_param=lambda_param,
        eps=eps,
    )


def _precision(plan: Plan) -> str:
    """A float32 matmul precision that gives ``plan``'s arithmetic kind."""
    return "highest" if plan.kind == "ieee" else "high"


# ---------------------------------------------------------------- registered ops


@torch.library.custom_op("smi_kernels::smi_sharded_gram", mutates_args=("workspace",))
def smi_sharded_gram(
    columns: Tensor,
    workspace: Tensor,
    z_shape: list[int],
    dtype: torch.dtype,
    precision: str,
    need_grad: bool,
    world: int,
    rank: int,
    eps: float,
) -> None:
    """The Gram launches of rank ``rank`` of ``world`` (views of ``z_shape`` (V, n, D)) into its
    workspace, from every rank's zh ``columns``: what a dispatch mode sees of the forward."""
    ranks = Schedule(world, rank)
    plan = sharded_plan(z_shape, dtype, workspace.device, need_grad, ranks, precision)
    run = op.launches(plan, configs.autotune_enabled())
    op.launch_gram(plan, run, op.segments(workspace, plan), columns, rank, eps)


@smi_sharded_gram.register_fake
def _smi_sharded_gram_fake(
    columns, workspace, z_shape, dtype, precision, need_grad, world, rank, eps
) -> None:
    return None


@torch.library.custom_op("smi_kernels::smi_sharded_backward", mutates_args=())
def smi_sharded_backward(
    grad_out: Tensor,
    workspace: Tensor,
    columns: Tensor,
    z_shape: list[int],
    dtype: torch.dtype,
    precision: str,
    world: int,
    rank: int,
    lambda_param: float,
    eps: float,
) -> Tensor:
    """dz (V, n, D) of rank ``rank`` from its workspace (the exchange done) and the summed
    incoming gradient."""
    ranks = Schedule(world, rank)
    plan = sharded_plan(z_shape, dtype, workspace.device, True, ranks, precision)
    return op.backward(grad_out, workspace, plan, lambda_param, eps, columns, rank).clone()


@smi_sharded_backward.register_fake
def _smi_sharded_backward_fake(
    grad_out, workspace, columns, z_shape, dtype, precision, world, rank, lambda_param, eps
) -> Tensor:
    return workspace.new_empty(tuple(z_shape), dtype=dtype)


# FLOP formulas: the arguments of the op, tensors as their shapes


@register_flop_formula(torch.ops.smi_kernels.smi_sharded_gram)
def _sharded_gram_flops(columns, workspace, z_shape, dtype, precision, need_grad, world, *_, **__):
    v, n, d = z_shape
    return 2 * flops.sharded_forward_macs(n, d, world, v)


@register_flop_formula(torch.ops.smi_kernels.smi_sharded_backward)
def _sharded_backward_flops(grad, workspace, columns, z_shape, dtype, precision, world, *_, **__):
    v, n, d = z_shape
    return 2 * flops.sharded_backward_macs(n, d, world, v)

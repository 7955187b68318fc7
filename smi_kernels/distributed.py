"""All-gather of the views with gradients, for ``gather_distributed=True``.

Gradient convention: every rank computes the same global loss L on the gathered batch. The
backward of the gather sums, over ranks, the gradient each rank computed for this rank's rows
(an all-reduce), and returns this rank's slice: ``world_size * dL/dz_local``.
DistributedDataParallel then averages parameter gradients over ranks, so each parameter receives
exactly ``dL/dtheta`` of one process that sees the whole batch.

The plumbing of ``gather_distributed="sharded"`` (see :mod:`smi_kernels.sharded`) lives here too:
:func:`check_same_shapes` (one small all-gather a call, so that uneven inputs raise the same
``ValueError`` on every rank instead of hanging in a collective), :class:`Communicator`, the
all-gather, all-reduce and point-to-point exchange that mode needs, without gradients (its
autograd function differentiates by hand), and :class:`ProcessGroupCommunicator`, those of the
default process group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from smi_kernels._checks import FLOAT_DTYPES


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


class _GatherWithGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        local = local.contiguous()
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:  # type: ignore[override]
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[dist.get_rank()]


def gather_with_gradient(local: Tensor) -> Tensor:
    """Concatenate ``local`` (N, D) from every rank along dim 0, in rank order, with gradients."""
    if not is_distributed():
        raise RuntimeError(
            "gather_distributed=True needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first)"
        )
    if dist.get_world_size() == 1:
        return local
    return torch.cat(_GatherWithGradient.apply(local), dim=0)


def gather_views(views: Sequence[Tensor]) -> list[Tensor]:
    """Every view gathered from all ranks: the global batch, row i of each view still paired."""
    return [gather_with_gradient(view) for view in views]


def require_process_group(mode: str) -> None:
    """Raise ``RuntimeError`` when no default process group is initialised (``mode`` names the
    setting that needs one, e.g. ``"gather_distributed='sharded'"``)."""
    if not is_distributed():
        raise RuntimeError(
            f"{mode} needs an initialised torch.distributed process group "
            "(call torch.distributed.init_process_group first)"
        )


def all_gather_stacked(local: Tensor) -> Tensor:
    """``local`` from every rank, stacked in rank order: shape (W, *local.shape), no gradient."""
    out = local.new_empty((dist.get_world_size(), *local.shape))
    dist.all_gather(list(out.unbind(0)), local.contiguous())
    return out


def check_same_shapes(
    views: Sequence[Tensor],
    mode: str = "gather_distributed='sharded'",
    need_grad: bool | None = None,
) -> None:
    """Raise ``ValueError`` on every rank unless all ranks hold the same number of views, the same
    (N, D) and the same dtype, and (``need_grad`` given) all or none need a gradient (the sharded
    mode exchanges G only with one). One all-gather of five integers (and a host
    synchronisation)."""
    first = views[0]
    code = FLOAT_DTYPES.index(first.dtype) if first.dtype in FLOAT_DTYPES else -1
    grad = -1 if need_grad is None else int(need_grad)
    local = torch.tensor(
        [len(views), *first.shape, code, grad], dtype=torch.int64, device=first.device
    )
    shapes = [tuple(row) for row in all_gather_stacked(local).tolist()]
    if all(row == shapes[0] for row in shapes):
        return
    grads_differ = len({row[4] for row in shapes}) > 1

    def describe(rank: int, row: tuple[int, ...]) -> str:
        v_count, n, d, dtype, grad = row
        name = FLOAT_DTYPES[dtype] if dtype >= 0 else "another dtype"
        text = f"rank {rank}: {v_count} views of ({n}, {d}) {name}"
        if grads_differ:
            text += ", with a gradient" if grad else ", without a gradient"
        return text

    raise ValueError(
        f"{mode} needs the same number of views, the same (N, D) per view and the same dtype on "
        "every rank (the global batch is the ranks' batches stacked), and a gradient on every "
        "rank or on none; got " + "; ".join(describe(rank, row) for rank, row in enumerate(shapes))
    )


class Communicator(Protocol):
    """What the sharded mode needs from a process group (no gradients flow through it)."""

    rank: int
    world_size: int

    def all_gather(self, local: Tensor) -> Tensor:
        """(W, *local.shape): ``local`` of every rank, in rank order."""
        ...

    def all_reduce(self, values: Tensor) -> Tensor:
        """The sum of ``values`` over the ranks."""
        ...

    def exchange(
        self, sends: Sequence[tuple[int, Tensor]], receives: Sequence[tuple[int, Tensor]]
    ) -> None:
        """Point to point: send each ``(peer, tensor)`` of ``sends`` and fill each buffer of
        ``receives`` from its peer (every rank posts the matching pairs). Two messages between
        the same two ranks must arrive in the order they were posted (as NCCL and Gloo do)."""
        ...


class ProcessGroupCommunicator:
    """The default process group as seen by :mod:`smi_kernels.sharded`: this rank, the world
    size, an all-gather that stacks in rank order and a summing all-reduce (no gradients)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def all_gather(self, local: Tensor) -> Tensor:
        """(W, *local.shape): ``local`` of every rank in rank order."""
        return all_gather_stacked(local)

    def all_reduce(self, values: Tensor) -> Tensor:
        """The sum of ``values`` over ranks (in place)."""
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def exchange(
        self, sends: Sequence[tuple[int, Tensor]], receives: Sequence[tuple[int, Tensor]]
    ) -> None:
        """Send each ``(peer, tensor)`` and fill each ``(peer, buffer)``, all posted at once."""
        ops = [dist.P2POp(dist.isend, tensor.contiguous(), peer) for peer, tensor in sends]
        ops += [dist.P2POp(dist.irecv, buffer, peer) for peer, buffer in receives]
        if ops:
            for request in dist.batch_isend_irecv(ops):
                request.wait()

"""All-gather of the views with gradients, for ``gather_distributed=True``.

Gradient convention: every rank computes the same global loss L on the gathered batch. The
backward of the gather sums, over ranks, the gradient each rank computed for this rank's rows
(an all-reduce), and returns this rank's slice: ``world_size * dL/dz_local``.
DistributedDataParallel
then averages parameter gradients over ranks, so each parameter receives exactly ``dL/dtheta`` of
one process that sees the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


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

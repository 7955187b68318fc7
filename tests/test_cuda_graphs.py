"""CUDA graphs: SMILoss(backend="triton") forward + backward captured once, replayed on new data.

The Triton path must not synchronise with the host, allocate outside the graph's pool or read
tensor values on the host inside the step, and its fixed-order reductions make a replay bitwise
equal to eager on the same inputs. GPU only; skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smi_kernels import SMILoss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

N, D, IN_DIM = 64, 96, 32
WARMUP = 3


def new_views(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    z_a = x + 0.5 * torch.randn(N, D, generator=gen)
    z_b = x + 0.5 * torch.randn(N, D, generator=gen)
    return z_a.to("cuda", dtype), z_b.to("cuda", dtype)


def warm_up(step) -> None:
    """Run the step on a side stream first (autotuning, kernel compilation, allocator warm-up)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_replay_equals_eager_bitwise_leaf_views(dtype):
    loss_fn = SMILoss(backend="triton")
    init_a, init_b = new_views(0, dtype)
    static_a = init_a.clone().requires_grad_()
    static_b = init_b.clone().requires_grad_()

    def step():
        static_a.grad = None
        static_b.grad = None
        out = loss_fn.forward_with_terms(static_a, static_b)
        out.loss.backward()
        return out

    warm_up(step)
    static_a.grad = None
    static_b.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = loss_fn.forward_with_terms(static_a, static_b)
        static_out.loss.backward()
    grad_a, grad_b = static_a.grad, static_b.grad
    assert grad_a is not None and grad_b is not None

    for seed in (1, 2, 1):
        data_a, data_b = new_views(seed, dtype)
        with torch.no_grad():
            static_a.copy_(data_a)
            static_b.copy_(data_b)
        graph.replay()
        torch.cuda.synchronize()

        eager_a = data_a.clone().requires_grad_()
        eager_b = data_b.clone().requires_grad_()
        eager = loss_fn.forward_with_terms(eager_a, eager_b)
        eager.loss.backward()

        assert torch.isfinite(static_out.loss)
        for got, want in zip(static_out, eager, strict=True):
            assert torch.equal(got.detach(), want.detach()), (got.item(), want.item())
        assert torch.equal(grad_a, eager_a.grad)
        assert torch.equal(grad_b, eager_b.grad)
        assert grad_a.dtype == dtype


def test_replay_equals_eager_through_an_encoder():
    """A whole training step's forward + backward (Linear encoder + SMI) in one graph."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(IN_DIM, 64), nn.ReLU(), nn.Linear(64, D)).cuda()
    loss_fn = SMILoss(backend="triton")
    gen = torch.Generator().manual_seed(3)
    static_x = torch.randn(2, N, IN_DIM, generator=gen).cuda()

    def step():
        encoder.zero_grad(set_to_none=True)
        loss = loss_fn(encoder(static_x[0]), encoder(static_x[1]))
        loss.backward()
        return loss

    warm_up(step)
    encoder.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = loss_fn(encoder(static_x[0]), encoder(static_x[1]))
        static_loss.backward()
    static_grads = [p.grad for p in encoder.parameters()]

    for _ in range(2):
        data = torch.randn(2, N, IN_DIM, generator=gen).cuda()
        static_x.copy_(data)
        graph.replay()
        torch.cuda.synchronize()
        replayed_loss = static_loss.detach().clone()
        replayed_grads = [g.clone() for g in static_grads]

        encoder.zero_grad(set_to_none=True)
        eager_loss = loss_fn(encoder(data[0]), encoder(data[1]))
        eager_loss.backward()
        assert torch.equal(replayed_loss, eager_loss.detach())
        for got, p in zip(replayed_grads, encoder.parameters(), strict=True):
            assert torch.equal(got, p.grad)

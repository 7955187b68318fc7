"""What the PyTorch path keeps for backward, seen through ``saved_tensors_hooks``.

With P = V N stacked rows, the budget is exactly what the hand-written backward needs:

    zh (P x D)      the standardised views, compute dtype
    s (P)           the row scales, compute dtype
    projected (P)   which rows were not clamped to the floor of s, bool
    G (P x P)       dL_red / dS, compute dtype
    a (V(V-1)/2 x N)  dL_align / drho of each positive pair, compute dtype

Nothing N x N other than G is kept (no copy of S, no per-block temporaries), nor the input views.
The naive autograd graph of smi_kernels.reference keeps several N x N matrices per block, so it
must exceed the budget: a check that the hooks do see what a graph saves.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import helpers
import pytest
import torch
from helpers import DTYPES
from torch import Tensor

from smi_kernels import smi_loss, smi_loss_with_terms
from smi_kernels.reference import smi_loss as reference_loss


@dataclass(frozen=True)
class Saved:
    shape: tuple[int, ...]
    dtype: torch.dtype
    numel: int
    nbytes: int


def record_saved(fn: Callable[[], Tensor]) -> tuple[Tensor, list[Saved]]:
    """Run ``fn`` under pack/unpack hooks; returns its output and one record per saved tensor."""
    saved: list[Saved] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(
            Saved(
                tuple(tensor.shape),
                tensor.dtype,
                tensor.numel(),
                tensor.numel() * tensor.element_size(),
            )
        )
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, saved


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def budget(v: int, n: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    """``(numel, bytes)`` of zh, s, projected, G and the pair vector."""
    p, pairs = v * n, v * (v - 1) // 2
    floats = p * d + p + p * p + pairs * n
    size = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    return floats + p, floats * size + p  # the mask is one byte per row


#: views on the CPU (the PyTorch path is the one measured, whatever the machine)
make_views = functools.partial(helpers.make_views, device="cpu")


# D is neither N nor P, so the only saved tensor with two dimensions in {N, P} must be G
SHAPES = [(2, 16, 5), (2, 24, 40), (3, 10, 7), (3, 9, 50), (4, 12, 3), (4, 8, 100)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: str(dtype).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "V{}-N{}-D{}".format(*shape))
def test_saves_no_more_than_the_budget(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    v, n, d = shape
    p = v * n
    views = make_views(v, n, d, dtype)
    out, saved = record_saved(lambda: smi_loss_with_terms(*views, backend="torch"))

    numel_budget, bytes_budget = budget(v, n, d, dtype)
    numel = sum(item.numel for item in saved)
    nbytes = sum(item.nbytes for item in saved)
    assert numel <= numel_budget, f"saved {numel} elements > {numel_budget}: {saved}"
    assert nbytes <= bytes_budget, f"saved {nbytes} bytes > {bytes_budget}: {saved}"

    # exactly one P x P tensor (G), and nothing else with two dimensions of size N or P
    big = [item for item in saved if sum(size in (n, p) for size in item.shape) >= 2]
    assert [item.shape for item in big] == [(p, p)], saved
    assert big[0].dtype == compute_dtype(dtype)
    # the input views themselves are not kept (the path standardises them first)
    assert not any(item.shape == (n, d) and item.dtype == dtype for item in saved), saved
    # every saved float tensor is in the compute dtype; the only other one is the bool mask
    assert {item.dtype for item in saved} <= {compute_dtype(dtype), torch.bool}

    # the graph still works through the hooks, and gives the gradients it gives without them
    grads = torch.autograd.grad(out.loss, views)
    grads_plain = torch.autograd.grad(smi_loss(*views, backend="torch"), views)
    for grad, grad_plain in zip(grads, grads_plain, strict=True):
        assert torch.equal(grad, grad_plain)


@pytest.mark.parametrize("shape", [(2, 16, 5), (3, 9, 50)], ids=["V2-N16-D5", "V3-N9-D50"])
def test_saves_only_the_listed_tensors(shape: tuple[int, int, int]) -> None:
    """Each saved tensor is one of the five of the module docstring, each at most once."""
    v, n, d = shape
    p, pairs = v * n, v * (v - 1) // 2
    views = make_views(v, n, d, torch.float32)
    _, saved = record_saved(lambda: smi_loss(*views, backend="torch"))
    allowed = Counter(
        [
            ((p, d), torch.float32),
            ((p,), torch.float32),
            ((p,), torch.bool),
            ((p, p), torch.float32),
            ((pairs, n), torch.float32),
        ]
    )
    got = Counter((item.shape, item.dtype) for item in saved)
    assert not got - allowed, f"saved beyond the list: {got - allowed}"
    assert got[((p, p), torch.float32)] == 1  # G is needed


def test_only_one_view_requiring_grad_keeps_the_same_budget() -> None:
    v, n, d = 3, 10, 7
    views = make_views(v, n, d, torch.float32)
    partial = [x.detach().requires_grad_(k == 1) for k, x in enumerate(views)]
    _, saved = record_saved(lambda: smi_loss(*partial, backend="torch"))
    numel_budget, _ = budget(v, n, d, torch.float32)
    assert 0 < sum(item.numel for item in saved) <= numel_budget


@pytest.mark.parametrize("shape", [(2, 16, 5), (3, 9, 50)], ids=["V2-N16-D5", "V3-N9-D50"])
def test_naive_reference_saves_more(shape: tuple[int, int, int]) -> None:
    v, n, d = shape
    views = make_views(v, n, d, torch.float32)
    _, path_saved = record_saved(lambda: smi_loss(*views, backend="torch"))
    _, naive_saved = record_saved(lambda: reference_loss(*views))
    numel_budget, _ = budget(v, n, d, torch.float32)
    naive = sum(item.numel for item in naive_saved)
    assert naive > numel_budget
    assert naive > sum(item.numel for item in path_saved)
    # the naive graph keeps N x N matrices of every block (rho, the clamp, the log, ...)
    n_by_n = [item for item in naive_saved if item.shape == (n, n)]
    assert len(n_by_n) > v * (v + 1) // 2

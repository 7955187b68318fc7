"""Micro-benchmarks on the CPU: the SMI PyTorch path against the naive reference.

    pytest tools/test_micro.py --benchmark-only

Two views of (N, D) = (512, 2048), float32, one step = forward + backward. The project's target:
the PyTorch path (hand-written backward, G_sym Z in one product, no N x N temporaries kept for
autograd) at least 1.25x faster than the reference's plain autograd graph. Kept out of the
default test run (``testpaths = ["tests"]``).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness  # puts the repository root on sys.path (for `reference`)

N, D = 512, 2048
TARGET_SPEEDUP = 1.25
GROUP = f"smi cpu float32 N={N} D={D} forward+backward"


@pytest.fixture(scope="module")
def views() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(N, D, generator=generator, requires_grad=True)
    z_b = (z_a.detach() + 0.5 * torch.randn(N, D, generator=generator)).requires_grad_()
    return z_a, z_b


def _step(fn: harness.LossFn, z_a: torch.Tensor, z_b: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        z_a.grad = z_b.grad = None
        fn(z_a, z_b).backward()

    step()  # warm-up
    return step


@pytest.mark.benchmark(group=GROUP)
def test_reference(benchmark, views) -> None:
    """smi_kernels.reference: plain autograd."""
    benchmark(_step(harness.SMI_REFERENCE.fn, *views))


@pytest.mark.benchmark(group=GROUP)
def test_torch_path(benchmark, views) -> None:
    """smi_loss(backend="torch"): the PyTorch path."""
    benchmark(_step(harness.SMI_TORCH.fn, *views))


@pytest.mark.benchmark(group=GROUP)
def test_torch_path_speedup(benchmark, views) -> None:
    """The target: reference / PyTorch path >= 1.25, the ratio of the medians of the two steps
    timed alternately in the same rounds (so that load from elsewhere on the machine falls on
    both alike). The benchmark entry times a round (one step of each); the ratio goes to
    extra_info."""
    reference_step = _step(harness.SMI_REFERENCE.fn, *views)
    torch_step = _step(harness.SMI_TORCH.fn, *views)
    reference_s: list[float] = []
    torch_s: list[float] = []

    def one_round() -> None:
        start = time.perf_counter()
        reference_step()
        middle = time.perf_counter()
        torch_step()
        reference_s.append(middle - start)
        torch_s.append(time.perf_counter() - middle)

    benchmark.pedantic(one_round, rounds=15, warmup_rounds=0)
    ratio = statistics.median(reference_s) / statistics.median(torch_s)
    benchmark.extra_info.update(
        reference_median_s=statistics.median(reference_s),
        torch_path_median_s=statistics.median(torch_s),
        speedup=ratio,
    )
    print(f"\nSMI PyTorch path vs reference, CPU N={N} D={D} float32 fwd+bwd: {ratio:.2f}x")
    assert ratio >= TARGET_SPEEDUP, f"PyTorch path only {ratio:.2f}x the reference"

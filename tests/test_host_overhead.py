"""What one Triton-path step does on the host, pinned so that overhead cannot creep back.

The CUDA host path runs on CPU tensors with the plan of an H100 and the launches replaced by
recorders (``tools/host_overhead.py``). After the first step of a shape, a forward +
backward must make exactly its launches and three allocations, and call nothing device-wide:
no memory statistics, no device properties, no synchronisation, no copy of the views.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import host_overhead

from smi_kernels import SMILoss
from smi_kernels._triton import op

DEVICE_WIDE = (
    "mem_get_info",
    "memory_reserved",
    "memory_allocated",
    "memory_stats",
    "get_device_properties",
    "get_device_capability",
    "synchronize",
    "current_device",
    "is_current_stream_capturing",
)


@pytest.fixture
def counted(monkeypatch):
    """Counts of device-wide torch.cuda calls, allocations and stacks during a step."""
    counts: dict[str, int] = {}

    def counting(name, original=None):
        def call(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            if original is not None:
                return original(*args, **kwargs)
            raise AssertionError(f"torch.cuda.{name} called on the hot path")

        return call

    for name in DEVICE_WIDE:
        monkeypatch.setattr(torch.cuda, name, counting(name))
    monkeypatch.setattr(op, "allocate", counting("allocate", op.allocate))
    monkeypatch.setattr(torch, "stack", counting("stack", torch.stack))
    return counts


@pytest.mark.parametrize(
    ("n", "d", "dtype", "expected"),
    [
        (256, 8192, torch.bfloat16, ["standardize", "gram_forward", "gram_epilogue", "finalize"]),
        (2048, 1000, torch.float16, ["standardize", "gram_forward", "finalize"]),
    ],
)
def test_a_step_makes_its_launches_and_nothing_else(counted, n, d, dtype, expected) -> None:
    loss_fn = SMILoss(backend="triton")
    z_a = torch.randn(n, d).to(dtype).requires_grad_()
    z_b = torch.randn(n, d).to(dtype).requires_grad_()
    with host_overhead.gpu_host_path() as calls:
        torch.autograd.grad(loss_fn(z_a, z_b), [z_a, z_b])  # first step of the shape
        calls.clear()
        counted.clear()
        loss = loss_fn(z_a, z_b)
        forward_launches = list(calls)
        forward_counts = dict(counted)
        torch.autograd.grad(loss, [z_a, z_b])
    assert forward_launches == [name + "_kernel" for name in expected]
    assert calls[len(expected) :] == ["gram_backward_kernel"]
    assert forward_counts == {"allocate": 2}  # the loss vector and the workspace
    assert counted == {"allocate": 3}  # and dz


@pytest.mark.parametrize("layout", ["five-views", "strided"])
def test_views_are_stacked_once_only_when_needed(counted, layout: str) -> None:
    """More views than the standardisation reads in place, or a non-contiguous view, are copied
    once, by one stack; two contiguous views are not."""
    if layout == "five-views":
        views = [torch.randn(64, 256, requires_grad=True) for _ in range(5)]
    else:
        views = [torch.randn(256, 64).T.requires_grad_(), torch.randn(64, 256, requires_grad=True)]
    with host_overhead.gpu_host_path():
        SMILoss(backend="triton")(*views)
        counted.clear()
        SMILoss(backend="triton")(*views)
        assert counted.get("stack") == 1
        counted.clear()
        SMILoss(backend="triton")(views[1], views[1] * 2)
        assert "stack" not in counted


def test_no_grad_step_skips_the_backward_buffers(counted) -> None:
    z_a, z_b = torch.randn(256, 512), torch.randn(256, 512)
    with host_overhead.gpu_host_path() as calls, torch.no_grad():
        SMILoss(backend="triton")(z_a, z_b)
        calls.clear()
        counted.clear()
        SMILoss(backend="triton")(z_a, z_b)
    assert "gram_backward_kernel" not in calls
    assert counted == {"allocate": 2}


def test_plans_and_launch_lists_are_cached() -> None:
    from smi_kernels._triton.plan import make_plan

    first = make_plan("sm90", 132, 2, 256, 8192, torch.bfloat16, "highest", True)
    again = make_plan("sm90", 132, 2, 256, 8192, torch.bfloat16, "highest", True)
    assert first is again
    assert op.launches(first, False) is op.launches(first, False)

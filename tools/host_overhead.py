"""The host side of one Triton-path training step, measured without a GPU.

    python tools/host_overhead.py [--n 256 --d 8192 --dtype bfloat16] [--write]

At the paper's per-GPU batch (N = 256) the kernels of a step take tens of microseconds, so the
Python and dispatch work around them decides the step time. This runs the package's real CUDA
host path (``smi_loss(..., backend="triton")`` forward + backward: validation, backend choice,
the cached plan, the workspace carving, the autograd function, the launch argument lists) on
CPU tensors, with the plan of an H100 (sm_90, 132 SMs) and every Triton launch replaced by a
recorder that does nothing. What it does not include: Triton's own launcher (argument binding and
the driver call, per launch) and the CUDA caching allocator, which a CPU run cannot exercise;
``launches`` in the output says how many launches a step makes.

The recorder is also what ``tests/test_host_overhead.py`` uses to pin what a step may call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# CPU tensors reach the Triton path only under the interpreter flag; no kernel runs here
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class LaunchRecorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` records, runs nothing."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            self.calls.append(self.name)

        return launch


@contextmanager
def gpu_host_path(sm_count: int = 132) -> Iterator[list[str]]:
    """The Triton path's host code as on an sm_90 GPU, kernels replaced by recorders. Yields the
    list of launched kernel names."""
    from smi_kernels._triton import op, plan

    calls: list[str] = []
    names = ("standardize_kernel", "gram_forward_kernel", "gram_epilogue_kernel",
             "finalize_kernel", "gram_backward_kernel")  # fmt: skip
    saved = {name: getattr(op, name) for name in names}
    saved_plan_for = op.plan_for

    def plan_for(views, n, d, dtype, device, need_grad):
        return plan.make_plan("sm90", sm_count, views, n, d, dtype,
                              torch.get_float32_matmul_precision(), need_grad)  # fmt: skip

    op.launches.cache_clear()  # cached launch lists hold the kernel objects
    try:
        for name in names:
            setattr(op, name, LaunchRecorder(name, calls))
        op.plan_for = plan_for
        yield calls
    finally:
        for name, kernel in saved.items():
            setattr(op, name, kernel)
        op.plan_for = saved_plan_for
        op.launches.cache_clear()


def step_fn(n: int, d: int, dtype: torch.dtype):
    """One forward + backward of ``SMILoss(backend="triton")`` (the gradients of both views)."""
    from smi_kernels import SMILoss

    loss_fn = SMILoss(backend="triton")
    z_a = torch.randn(n, d).to(dtype).requires_grad_()
    z_b = torch.randn(n, d).to(dtype).requires_grad_()

    def step() -> None:
        # autograd.grad, not backward(): accumulating into .grad is device work (an add kernel
        # on the GPU), which on the CPU would be timed here as host time
        loss = loss_fn(z_a, z_b)
        torch.autograd.grad(loss, [z_a, z_b])

    return step


class _Trivial(torch.autograd.Function):
    """An autograd function that does nothing but allocate its outputs: PyTorch's own floor."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return a.new_empty(3, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return torch.empty(ctx.shape, dtype=ctx.dtype), torch.empty(ctx.shape, dtype=ctx.dtype)


def floor_us(n: int, d: int, dtype: torch.dtype, rounds: int, steps: int) -> float:
    """Median host time of ``_Trivial`` forward + autograd.grad on the same views (us): what
    PyTorch's autograd costs on this machine before any SMI code runs."""
    z_a = torch.randn(n, d).to(dtype).requires_grad_()
    z_b = torch.randn(n, d).to(dtype).requires_grad_()

    class Trivial(_Trivial):
        @staticmethod
        def forward(ctx, a, b):  # type: ignore[override]
            ctx.shape, ctx.dtype = a.shape, a.dtype
            return a.new_empty(3, dtype=torch.float32)

    per_round = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            torch.autograd.grad(Trivial.apply(z_a, z_b)[0], [z_a, z_b])
        per_round.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(per_round)


def measure(n: int, d: int, dtype: torch.dtype, rounds: int, steps: int) -> dict[str, Any]:
    """Median, min and max over ``rounds`` of the mean host time of ``steps`` steps (us)."""
    with gpu_host_path() as calls:
        step = step_fn(n, d, dtype)
        for _ in range(20):  # plans, caches, first-call paths
            step()
        calls.clear()
        step()
        launches = list(calls)
        per_round = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            per_round.append((time.perf_counter() - start) / steps * 1e6)
    return {
        "n": n, "d": d, "dtype": str(dtype).replace("torch.", ""),
        "median_us": statistics.median(per_round), "min_us": min(per_round),
        "max_us": max(per_round), "rounds": rounds, "steps_per_round": steps,
        "launches": launches,
    }  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, Python {python}, torch {torch.__version__}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--write", action="store_true",
                        help="write benchmarks/results/cpu/host_overhead.{md,json}")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = measure(args.n, args.d, getattr(torch, args.dtype), args.rounds, args.steps)
    result["machine"] = machine()
    result["autograd_floor_us"] = floor_us(args.n, args.d, getattr(torch, args.dtype),
                                           args.rounds, args.steps)  # fmt: skip
    spread = (result["max_us"] - result["min_us"]) / result["median_us"]
    text = (
        "# Host time of one Triton-path step (forward + backward), kernels replaced by no-ops\n\n"
        f"`python tools/host_overhead.py --n {args.n} --d {args.d} --dtype {args.dtype}` on "
        f"{result['machine']}.\n\n"
        f"| N | D | dtype | median (us) | min (us) | max (us) | spread | launches |\n"
        f"|---|---|---|---|---|---|---|---|\n"
        f"| {args.n} | {args.d} | {args.dtype} | {result['median_us']:.1f} | "
        f"{result['min_us']:.1f} | {result['max_us']:.1f} | {spread:.0%} | "
        f"{len(result['launches'])}: {', '.join(result['launches'])} |\n\n"
        f"{args.rounds} rounds of {args.steps} steps, one thread. Not included: Triton's launcher "
        "(binding and driver call, per launch) and the CUDA caching allocator.\n\n"
        "For scale: an autograd function that only allocates its outputs, forward + "
        f"autograd.grad on the same views, takes {result['autograd_floor_us']:.1f} us (median) on "
        "this machine: PyTorch's own floor, before any SMI code.\n"
    )
    print(text)
    if args.write:
        out = REPO / "benchmarks" / "results" / "cpu"
        out.mkdir(parents=True, exist_ok=True)
        (out / "host_overhead.md").write_text(text)
        (out / "host_overhead.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

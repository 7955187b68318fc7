"""What the test files share: tolerances, views, the float64 reference, backend parameters.

Tests import it as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path``).
The tolerances are those of the design document's numerics section (docs/design.md): relative
error ``||out - ref|| / ||ref||`` against a float64 evaluation of the loss on the same inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import Tensor

from smi_kernels import reference

#: the defaults of ``SMILoss``
LAMBDA, EPS = 5e-3, 1e-4

#: relative error allowed against float64, per input dtype (float32 is IEEE: TF32 has its own)
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-2,
}
TF32_TOLERANCE = 1e-3
DTYPES = list(TOLERANCE)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def triton_importable() -> bool:
    """True when the Triton path (``smi_kernels._triton.op``) imports."""
    try:
        import smi_kernels._triton.op  # noqa: F401
    except ImportError:
        return False
    return True


TRITON = triton_importable()
needs_triton = pytest.mark.skipif(
    not TRITON, reason="the Triton path (smi_kernels._triton.op) does not import"
)


def interpreter_multiplies_float64() -> bool:
    """True where the kernels run float64 under triton's interpreter: its ``tl.dot`` refuses
    float64 operands before triton 3.5 ("Unsupported lhs dtype fp64"). On a GPU float64 takes
    the PyTorch path, so this is False there."""
    if CUDA or not TRITON:
        return False
    import triton

    return tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 5)


needs_float64_dot = pytest.mark.skipif(
    not interpreter_multiplies_float64(),
    reason="float64 runs the kernels only under triton's interpreter (CPU), and its tl.dot "
    "refuses float64 before triton 3.5 (the dev extra takes >= 3.7)",
)
#: parametrise a test over both backends; the Triton one skips where triton does not import
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64, on ``ref``'s device; ``out`` of another shape or
    with a non-finite entry fails (NaN never passes)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), f"non-finite output: {out}"
    ref = ref.detach().double()
    out = out.detach().to(device=ref.device, dtype=torch.float64)
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    """A standard-normal tensor on the CPU, drawn in float32 from ``seed``."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def make_views(
    v: int,
    n: int,
    d: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = DEVICE,
    requires_grad: bool = True,
) -> list[Tensor]:
    """``v`` independent standard-normal views of shape (n, d), drawn in float32 on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n, d, generator=generator)
        .to(device=device, dtype=dtype)
        .requires_grad_(requires_grad)
        for _ in range(v)
    ]


def smi_loss_terms(*views: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """``(L_align, L_red)`` of the views by the reference, ``smi_kernels.reference``."""
    out = reference.smi_loss_with_terms(*views, eps=eps)
    return out.alignment, out.redundancy


def join_gloo(store: str, rank: int, world: int, timeout_s: float) -> None:
    """Join a gloo process group of ``world`` ranks through the file ``store`` (one thread a
    rank: the workers of a test share the machine)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )


def reference_terms_and_grads(
    views: Sequence[Tensor], lambda_param: float = LAMBDA, eps: float = EPS
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
    """Loss, alignment, redundancy and the loss's input gradients, in float64."""
    exact = [view.detach().double().requires_grad_() for view in views]
    out = reference.smi_loss_with_terms(*exact, lambda_param=lambda_param, eps=eps)
    grads = torch.autograd.grad(out.loss, exact)
    return out.loss.detach(), out.alignment.detach(), out.redundancy.detach(), grads


def fork_ranks(worlds: Sequence[int], run_rank: Callable[[int, int], None]) -> int:
    """Fork one process per rank of every world size in ``worlds``, run ``run_rank(world, rank)``
    in each and wait for them all: 0 when every rank exits cleanly, else 1 (a failed rank prints
    its traceback, and the launcher which ranks failed).

    Forking from one launcher pays the imports (seconds of CPU each) once for all the ranks.
    Nothing may have run on torch's thread pools before the fork; each rank makes its own
    process group after it.
    """
    children = {}
    for world in worlds:
        for rank in range(world):
            pid = os.fork()
            if pid == 0:  # the rank
                code = 1
                try:
                    run_rank(world, rank)
                    code = 0
                except BaseException:
                    import traceback

                    print(f"world {world} rank {rank} failed:", flush=True)
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children[pid] = (world, rank)
    failed = []
    for pid, (world, rank) in children.items():
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed.append(f"world {world} rank {rank}: wait status {status}")
    print("\n".join(failed), flush=True)
    return 1 if failed else 0


def run_launcher(script: str, args: Sequence[str], timeout_s: float, what: str) -> str:
    """Run ``python script --launch *args`` from the repository root, one thread per process,
    in a session of its own so that a hang is killed with every rank it forked; its output.
    Fails the test if it hangs past ``timeout_s`` or exits non-zero (``what`` names the workers
    in the message)."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, script, "--launch", *args],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log = proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"{what} hung for more than {timeout_s} s")
    assert proc.returncode == 0, f"the {what} failed:\n{log}"
    return log

"""Memory model of both paths, and the check that refuses a request that cannot fit.

Bytes, for V views of (N, D), P = V N rows, element size b of the input dtype (compute dtype for
the PyTorch path: float32 for half inputs), a = 4 (8 for float64) the accumulator size:

Triton path: one workspace per forward, laid out by the launch plan (``_triton/plan.py``: zh
with its padding, the row scales and pair terms, the per-tile partials, and with a gradient the
G tiles (NB (NB + 1) / 2 tiles of B^2 b, NB = ceil(P / B)) and the radial slots); the views are
read in place. Backward: dz, P D_pad b.
PyTorch path:
    stacked input, zh, and one P x D temporary   3 P D b
    G (P x P) saved, plus one N x N block and its transform temporaries, the previous
    block's still alive while the next is computed (6 N^2 b, followed op by op)
    backward: dzh and dz                         2 P D b
Sharded mode, per rank (n samples per view, P_local = V n, P_global = W P_local); this rank's
band of G is its own pieces and the pieces the other ranks formed and sent:
  PyTorch path:
    stacked input, zh, one temporary             3 P_local D b
    gathered zh (saved)                          P_global D b
    G band (saved)                               P_local P_global b, only with a gradient
    one P_local x P_local block of S and its     4 P_local^2 b
    transform temporaries
    backward: dzh and dz                         2 P_local D b
  Triton path (NB = ceil(P_local / B), K = (W - 1) // 2, h = 1 for even W):
    zh and the gathered zh (saved)               (P_local + P_global) D b
    G (saved)                                    (NB (NB + 1) / 2 + (W - 1) NB^2) B^2 b
    radial slots                                 (W + K + 2 h) NB^2 B a
    backward: dz                                 P_local D b

The check runs before either path allocates: on CUDA it compares the forward's new allocations
with the free device memory plus what PyTorch's caching allocator holds unused; on the CPU with
the memory the operating system reports available (``MemAvailable`` of ``/proc/meminfo``, else
``os.sysconf``). It raises ``torch.OutOfMemoryError`` with the breakdown rather than failing
inside a kernel launch or the allocator. With a gradient, the PyTorch path holds the P x P
matrix G and the N x N block temporaries: at V = 2, N = 20,000 that is 15 GiB in float32, and
at N = 40,000 about 60 GiB, whatever D is.

Examples:
    >>> import torch
    >>> from smi_kernels import memory
    >>> need = memory.torch_estimate(20_000, 64, 2, torch.float32, need_grad=True)
    >>> round((need.stacked_input + need.forward_new) / 2**30, 1)
    14.9
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from smi_kernels import schedule


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one SMI evaluation, by what holds them."""

    stacked_input: int
    standardized: int
    gradient_matrix: int
    partials: int
    vectors: int
    backward: int

    @property
    def forward_new(self) -> int:
        """Bytes the forward allocates beyond the stacked input: all of it stays alive for the
        backward (the autograd graph keeps it)."""
        return self.standardized + self.gradient_matrix + self.partials + self.vectors

    @property
    def peak(self) -> int:
        """Bytes alive at the peak (the backward's output next to the saved tensors)."""
        return self.stacked_input + self.forward_new + self.backward


def _sizes(dtype: torch.dtype) -> tuple[int, int]:
    element = torch.empty((), dtype=dtype).element_size()
    accumulator = 8 if dtype == torch.float64 else 4
    return element, accumulator


def torch_estimate(
    n: int, d: int, views: int, dtype: torch.dtype, need_grad: bool
) -> MemoryEstimate:
    """Bytes of the PyTorch path (half inputs are evaluated in float32)."""
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    b, a = _sizes(compute)
    p = views * n
    return MemoryEstimate(
        stacked_input=p * d * b,
        standardized=2 * p * d * b,
        gradient_matrix=p * p * b if need_grad else 0,
        partials=6 * n * n * b,
        vectors=(2 * p + views * views * n) * a,
        backward=2 * p * d * b if need_grad else 0,
    )


def sharded_estimate(
    n_local: int,
    d: int,
    views: int,
    world: int,
    dtype: torch.dtype,
    need_grad: bool,
    backend: str = "torch",
    block: int = 64,
) -> MemoryEstimate:
    """Bytes on one rank of ``gather_distributed="sharded"``: its band of G (P_local x
    P_global at most) and the gathered zh (P_global x D), never the global S or G. ``backend``:
    "torch" or "triton" (G tiles of side ``block``).

    Examples:
        >>> import torch
        >>> from smi_kernels.memory import sharded_estimate
        >>> sharded_estimate(256, 8192, 2, 8, torch.float32, True).gradient_matrix / 2**20
        8.0
        >>> triton = sharded_estimate(256, 8192, 2, 8, torch.bfloat16, True, "triton")
        >>> triton.gradient_matrix / 2**20
        3.78125
    """
    p_local = views * n_local
    p_global = world * p_local
    if backend == "triton":
        b, a = _sizes(dtype)
        nb = math.ceil(p_local / block)
        stored = schedule.stored_tiles(nb, world)
        tiles = schedule.forward_tiles(nb, world, upper=True)  # the upper rank: the larger share
        slots = schedule.radial_slots(nb, world)
        return MemoryEstimate(
            stacked_input=p_local * d * b,
            standardized=(p_local + p_global) * d * b,
            gradient_matrix=stored * block * block * b if need_grad else 0,
            partials=slots * nb * block * a if need_grad else 0,
            vectors=(2 * p_local + 2 * views * views * n_local + n_local + tiles + 3) * a,
            backward=p_local * d * b if need_grad else 0,
        )
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    b, a = _sizes(compute)
    return MemoryEstimate(
        stacked_input=p_local * d * b,
        standardized=2 * p_local * d * b + p_global * d * b,
        gradient_matrix=p_local * p_global * b if need_grad else 0,
        partials=4 * p_local * p_local * b,
        vectors=(2 * p_local + views * views * n_local) * a,
        backward=2 * p_local * d * b if need_grad else 0,
    )


def _host_available_bytes() -> int | None:
    """Memory the operating system can give a new allocation: ``MemAvailable`` (Linux), else
    the free physical pages; None where neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Free bytes for a new allocation on ``device``, or None where that is not known (the meta
    device, other accelerators, inside torch.compile's tracing or a CUDA graph capture)."""
    if torch.compiler.is_compiling():
        return None
    if device.type == "cpu":
        return _host_available_bytes()
    if device.type != "cuda":
        return None
    if torch.cuda.is_current_stream_capturing():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + cached


def check_fits(needed: int, what: str, device: torch.device, detail: str = "") -> None:
    """Raise ``torch.OutOfMemoryError`` when ``needed`` bytes cannot be allocated on ``device``;
    ``detail`` (what holds the bytes) goes into the message."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise torch.OutOfMemoryError(
            f"SMI {what} needs {needed / 2**30:.2f} GiB on {device} but only "
            f"{available / 2**30:.2f} GiB are free{detail}; reduce N (per view), D or the number "
            "of views (see smi_kernels.memory for the model)"
        )


#: PyTorch-path requests below this many bytes are not checked: asking the device or the OS what
#: is free costs more than such a step's own allocations are worth refusing
TORCH_PATH_CHECK_FROM = 2**28


def check_torch_path(
    n: int, d: int, views: int, dtype: torch.dtype, need_grad: bool, device: torch.device
) -> None:
    """Refuse, before it allocates, a PyTorch-path forward that cannot fit on ``device``."""
    if torch.compiler.is_compiling():
        return  # the compiled graph allocates on its own terms; an eager call is checked
    estimate = torch_estimate(n, d, views, dtype, need_grad)
    needed = estimate.stacked_input + estimate.forward_new
    if needed < TORCH_PATH_CHECK_FROM:
        return
    gib = 2**-30
    detail = (
        f" ({views} views of ({n}, {d}): the P x P gradient matrix G "
        f"{estimate.gradient_matrix * gib:.2f} GiB, one N x N block and its temporaries "
        f"{estimate.partials * gib:.2f} GiB, the stacked and standardised views "
        f"{(estimate.stacked_input + estimate.standardized) * gib:.2f} GiB)"
    )
    check_fits(needed, "forward (PyTorch path)", device, detail)

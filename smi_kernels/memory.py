"""Memory model of both paths, and the check that refuses a request that cannot fit.

Bytes, for V views of (N, D), P = V N rows, element size b of the input dtype (compute dtype for
the PyTorch path: float32 for half inputs), a = 4 (8 for float64) the accumulator size:

Triton path (G stored as packed upper tiles of side B, NB = ceil(P / B)):
    stacked input   P D b                     (torch.stack of the views)
    zh              P D b                     saved
    G               NB (NB + 1) / 2 B^2 b     saved, only when a gradient is needed
    radial partials NB^2 B a                  saved, only when a gradient is needed
    vectors         (2 P + 2 V^2 N + N + NB^2 + 3) a
    backward: dz    P D b
PyTorch path:
    stacked input, zh, and one P x D temporary   3 P D b
    G (P x P) saved, plus one N x N block and its transform temporaries (4 N^2 b)
    backward: dzh and dz                         2 P D b
Sharded mode (PyTorch path, per rank; n samples per view, P_local = V n, P_global = W P_local):
    stacked input, zh, one temporary             3 P_local D b
    gathered zh (saved)                          P_global D b
    G band (saved)                               P_local P_global b, only with a gradient
    one n x P_global slab of S and its transform 4 n P_global b
    backward: dzh and dz                         2 P_local D b

The check runs before the kernels allocate: on CUDA it compares the forward's new allocations
with the free device memory plus what PyTorch's caching allocator holds unused, and raises
``torch.OutOfMemoryError`` with the breakdown rather than failing inside a kernel launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
        """Bytes the forward allocates beyond the stacked input."""
        return self.standardized + self.gradient_matrix + self.partials + self.vectors

    @property
    def saved(self) -> int:
        """Bytes the autograd graph keeps between forward and backward."""
        return self.standardized + self.gradient_matrix + self.partials + self.vectors

    @property
    def peak(self) -> int:
        """Bytes alive at the peak (the backward's output next to the saved tensors)."""
        return self.stacked_input + self.saved + self.backward


def _sizes(dtype: torch.dtype) -> tuple[int, int]:
    element = torch.empty((), dtype=dtype).element_size()
    accumulator = 8 if dtype == torch.float64 else 4
    return element, accumulator


def triton_estimate(
    n: int, d: int, views: int, dtype: torch.dtype, need_grad: bool, block: int
) -> MemoryEstimate:
    """Bytes of the Triton path with G tiles of side ``block``."""
    b, a = _sizes(dtype)
    p = views * n
    nb = math.ceil(p / block)
    return MemoryEstimate(
        stacked_input=p * d * b,
        standardized=p * d * b,
        gradient_matrix=(nb * (nb + 1) // 2) * block * block * b if need_grad else 0,
        partials=nb * nb * block * a if need_grad else 0,
        vectors=(2 * p + 2 * views * views * n + n + nb * nb + 3) * a,
        backward=p * d * b if need_grad else 0,
    )


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
        partials=4 * n * n * b,
        vectors=(2 * p + views * views * n) * a,
        backward=2 * p * d * b if need_grad else 0,
    )


def sharded_estimate(
    n_local: int, d: int, views: int, world: int, dtype: torch.dtype, need_grad: bool
) -> MemoryEstimate:
    """Bytes on one rank of ``gather_distributed="sharded"`` (PyTorch path): its band of G
    (P_local x P_global) and the gathered zh (P_global x D), never the global S or G.

    Example:
        >>> import torch
        >>> from smi_kernels.memory import sharded_estimate
        >>> sharded_estimate(256, 8192, 2, 8, torch.float32, True).gradient_matrix / 2**20
        8.0
    """
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    b, a = _sizes(compute)
    p_local = views * n_local
    p_global = world * p_local
    return MemoryEstimate(
        stacked_input=p_local * d * b,
        standardized=2 * p_local * d * b + p_global * d * b,
        gradient_matrix=p_local * p_global * b if need_grad else 0,
        partials=4 * n_local * p_global * b,
        vectors=(2 * p_local + views * views * n_local) * a,
        backward=2 * p_local * d * b if need_grad else 0,
    )


def available_bytes(device: torch.device) -> int | None:
    """Free bytes for a new allocation on ``device``, or None where that is not known."""
    if device.type != "cuda":
        return None
    if torch.cuda.is_current_stream_capturing():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + cached


def check_fits(needed: int, what: str, device: torch.device) -> None:
    """Raise ``torch.OutOfMemoryError`` when ``needed`` bytes cannot be allocated on ``device``."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise torch.OutOfMemoryError(
            f"SMI {what} needs {needed / 2**30:.2f} GiB on {device} but only "
            f"{available / 2**30:.2f} GiB are free; reduce N (per view), D or the number of views "
            "(see smi_kernels.memory for the model)"
        )

"""Block configurations of the Triton kernels: one table per architecture, nothing elsewhere.

``BLOCK`` is the side of the square tile of S (forward) and of G (stored tile, read again by the
backward), so one problem uses one ``BLOCK`` in both passes. Small problems take small tiles so
that the upper-triangular grid of (P / BLOCK)^2 / 2 programs still fills the GPU's SMs (at the
paper's per-GPU batch, P = 512 rows: 136 tiles of 32 against 132 SMs on an H100).

The entries are starting points chosen from the shapes of well-tuned GEMMs on each architecture;
they have not been measured on hardware by this project yet. ``SMI_KERNELS_AUTOTUNE=1`` makes the
kernels autotune among the entries of the table for the current architecture (first call per
shape benchmarks each; results can then differ in the last bits between processes, since the
K-loop order depends on the chosen ``BLOCK_K``). Without it the first matching row is used, which
keeps results bitwise reproducible across processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForwardConfig:
    """Gram + transform kernel: S tile BLOCK x BLOCK, K-loop step BLOCK_K over D."""

    BLOCK: int
    BLOCK_K: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BackwardConfig:
    """G Z kernel: output tile BLOCK rows x BLOCK_D features, K-loop over P in steps of BLOCK."""

    BLOCK_D: int
    num_warps: int
    num_stages: int


# (largest P for which the row applies, forward candidates, backward candidates); rows in order
_TABLE: dict[str, list[tuple[int, list[ForwardConfig], list[BackwardConfig]]]] = {
    "sm90": [
        (
            1024,
            [ForwardConfig(32, 128, 4, 4), ForwardConfig(32, 64, 4, 5)],
            [BackwardConfig(128, 4, 3), BackwardConfig(64, 4, 4)],
        ),
        (
            4096,
            [ForwardConfig(64, 64, 4, 4), ForwardConfig(64, 128, 8, 3)],
            [BackwardConfig(128, 4, 3), BackwardConfig(256, 8, 3)],
        ),
        (
            1 << 62,
            [ForwardConfig(128, 64, 8, 3), ForwardConfig(128, 32, 4, 4)],
            [BackwardConfig(128, 8, 3), BackwardConfig(256, 8, 3)],
        ),
    ],
    "sm80": [
        (
            1024,
            [ForwardConfig(32, 64, 4, 4), ForwardConfig(32, 128, 4, 3)],
            [BackwardConfig(128, 4, 3), BackwardConfig(64, 4, 4)],
        ),
        (
            4096,
            [ForwardConfig(64, 64, 4, 4), ForwardConfig(64, 32, 4, 5)],
            [BackwardConfig(128, 4, 3), BackwardConfig(64, 4, 4)],
        ),
        (
            1 << 62,
            [ForwardConfig(128, 32, 8, 4), ForwardConfig(128, 64, 8, 3)],
            [BackwardConfig(128, 8, 3), BackwardConfig(64, 4, 4)],
        ),
    ],
    # the Triton interpreter runs tiles as NumPy arrays on the CPU: small tiles are fastest
    "interpreter": [
        (1 << 62, [ForwardConfig(16, 32, 1, 1)], [BackwardConfig(32, 1, 1)]),
    ],
}

# float32 tiles take twice the shared memory of 16-bit ones: halve the K step
_FLOAT32_K_CAP = 64


def architecture(device: torch.device) -> str:
    """The table a device uses: "sm90" (Hopper and newer), "sm80" (Ampere, Ada, older),
    "interpreter" for CPU tensors."""
    if device.type != "cuda":
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80"


def autotune_enabled() -> bool:
    """True when ``SMI_KERNELS_AUTOTUNE=1``."""
    return os.environ.get("SMI_KERNELS_AUTOTUNE", "0") not in ("", "0")


def candidates(
    arch: str, rows: int, dtype: torch.dtype
) -> tuple[list[ForwardConfig], list[BackwardConfig]]:
    """The forward and backward candidates for ``rows`` = P stacked rows of ``dtype``."""
    _, forward, backward = next(row for row in _TABLE[arch] if rows <= row[0])
    if dtype == torch.float32 and arch != "interpreter":
        forward = [
            ForwardConfig(c.BLOCK, min(c.BLOCK_K, _FLOAT32_K_CAP), c.num_warps, c.num_stages)
            for c in forward
        ]
    return forward, backward


def tile_size(device: torch.device, rows: int, dtype: torch.dtype) -> int:
    """``BLOCK`` for a problem: shared by the forward kernel, the stored G and the backward."""
    forward, _ = candidates(architecture(device), rows, dtype)
    return forward[0].BLOCK

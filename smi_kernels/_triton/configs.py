"""Block configurations of the Triton kernels: one table per architecture, nothing elsewhere.

``BLOCK`` is the side of the square tile of S (forward) and of the stored tiles of G, so the
forward and the backward of one problem share it. The other sizes are free per pass:

* forward: K-loop step ``BLOCK_K`` over the features; when the upper triangle has fewer tiles than
  the GPU has SMs (the paper's per-GPU batch, P = 512 rows), the K-loop is split over D
  (``plan.py`` chooses the split) and the partial tiles are summed in a fixed order;
* backward: an output tile ``BLOCK`` rows x ``BLOCK_D`` features, K-loop over the P rows of Z in
  slices of ``BLOCK_Q`` rows of the stored G tiles, so its shared memory does not grow with
  ``BLOCK``.

Three arithmetic classes take different tiles:

* ``"mma16"``: bfloat16/float16 operands on tensor cores (wgmma on sm_90 from 64-row tiles);
* ``"tf32"``: float32 at ``torch.set_float32_matmul_precision("high"|"medium")``;
* ``"ieee"``: float32 at the default precision ("highest"), which runs on CUDA cores (FMA), as
  ``torch.matmul`` does; float64 (interpreter only) too.

Every entry is compiled for its architecture by ``tools/kernel_report.py``: it fits shared
memory and spills no register (``tests/test_kernel_report.py`` holds that in CI). The entries
have not been timed on hardware yet. ``SMI_KERNELS_AUTOTUNE=1`` makes the kernels autotune among
a row's candidates (first call per shape benchmarks each; the K-loop order then depends on the
chosen ``BLOCK_K``, so results can differ in the last bits between processes). Without it the
first candidate runs, and results are bitwise reproducible across processes.
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
    """G Z kernel: output tile BLOCK x BLOCK_D, K-loop over P in slices of BLOCK_Q rows."""

    BLOCK_Q: int
    BLOCK_D: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Row:
    """Candidates for problems of at most ``max_rows`` stacked rows P (first one by default)."""

    max_rows: int
    forward: tuple[ForwardConfig, ...]
    backward: tuple[BackwardConfig, ...]


F, B = ForwardConfig, BackwardConfig
_ANY = 1 << 62

# (architecture, arithmetic class) -> rows in order of max_rows
_TABLE: dict[tuple[str, str], tuple[Row, ...]] = {
    ("sm90", "mma16"): (
        Row(1024, (F(64, 64, 4, 4), F(64, 128, 4, 3)), (B(64, 128, 4, 3), B(64, 64, 4, 4))),
        Row(_ANY, (F(128, 64, 8, 4), F(128, 64, 8, 3)), (B(64, 128, 8, 3), B(32, 128, 8, 4))),
    ),
    ("sm90", "tf32"): (
        Row(1024, (F(64, 32, 4, 4), F(64, 64, 4, 3)), (B(32, 128, 8, 3), B(32, 64, 8, 3))),
        Row(_ANY, (F(128, 32, 8, 4), F(128, 32, 8, 3)), (B(32, 64, 8, 4), B(16, 64, 8, 4))),
    ),
    ("sm90", "ieee"): (
        Row(_ANY, (F(64, 32, 8, 3), F(64, 32, 8, 4)), (B(32, 64, 4, 3), B(16, 64, 4, 4))),
    ),
    ("sm80", "mma16"): (
        Row(1024, (F(64, 64, 8, 3), F(64, 64, 8, 4)), (B(64, 128, 4, 3), B(32, 128, 4, 4))),
        Row(_ANY, (F(128, 32, 8, 4), F(128, 64, 8, 3)), (B(32, 128, 8, 3), B(64, 64, 8, 3))),
    ),
    ("sm80", "tf32"): (
        Row(1024, (F(64, 16, 4, 4), F(64, 32, 8, 3)), (B(32, 64, 4, 3), B(16, 128, 8, 3))),
        Row(_ANY, (F(128, 16, 8, 4), F(128, 32, 8, 3)), (B(32, 64, 8, 3), B(16, 64, 8, 4))),
    ),
    ("sm80", "ieee"): (
        Row(_ANY, (F(64, 32, 8, 3), F(64, 32, 4, 2)), (B(16, 64, 4, 3), B(32, 64, 4, 2))),
    ),
    # the Triton interpreter runs tiles as NumPy arrays on the CPU: small tiles are fastest, and
    # a second, larger BLOCK above 64 rows exercises the same code with several K slices
    ("interpreter", "any"): (
        Row(64, (F(16, 32, 1, 1),), (B(8, 32, 1, 1),)),
        Row(_ANY, (F(32, 16, 1, 1),), (B(16, 32, 1, 1),)),
    ),
}

ARCHITECTURES = ("sm90", "sm80")
ARITHMETIC = ("mma16", "tf32", "ieee")


def architecture(device: torch.device) -> str:
    """The table a device uses: "sm90" (Hopper and newer), "sm80" (Ampere, Ada, older),
    "interpreter" for CPU tensors."""
    if device.type != "cuda":
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80"


def arithmetic(dtype: torch.dtype, precision: str) -> str:
    """The arithmetic class of a dtype at a float32 matmul ``precision`` (see the module doc)."""
    if dtype in (torch.bfloat16, torch.float16):
        return "mma16"
    if dtype == torch.float32 and precision != "highest":
        return "tf32"
    return "ieee"


def autotune_enabled() -> bool:
    """True when ``SMI_KERNELS_AUTOTUNE=1``."""
    return os.environ.get("SMI_KERNELS_AUTOTUNE", "0") not in ("", "0")


def table_rows(arch: str, kind: str) -> tuple[Row, ...]:
    """Every row of the table for an architecture and arithmetic class."""
    return _TABLE[(arch, "any" if arch == "interpreter" else kind)]


#: rows of the sharded mode where the local row's configs spill there: (architecture, class,
#: max_rows) -> the row. Its backward kernel walks every column rank in an outer loop, which
#: holds a few more values live: sm_80 16-bit at 4 warps reaches 255 registers and 36 B of spills,
#: and its 4-warp candidate with slices of 64 G rows spills 4 B on triton 3.3 (32 rows: none);
#: above 1024 rows, slices of 32 G rows take 245 to 255 registers on triton 3.4 to 3.9 and spill
#: 48 B on 3.4; slices of 16 rows (the same 128 x 128 output tile) take 170 to 194 on 3.3 to 3.9
_SHARDED_ROWS: dict[tuple[str, str, int], Row] = {
    ("sm80", "mma16", 1024): Row(
        1024, (F(64, 64, 8, 3), F(64, 64, 8, 4)), (B(64, 128, 8, 3), B(32, 64, 4, 3))
    ),
    ("sm80", "mma16", _ANY): Row(
        _ANY, (F(128, 32, 8, 4), F(128, 64, 8, 3)), (B(16, 128, 8, 3), B(64, 64, 8, 3))
    ),
}


@dataclass(frozen=True)
class StandardizeConfig:
    """Standardisation kernel: one program per sample holds its V rows as a (V_BLOCK, BLOCK_D)
    tile, V_BLOCK the next power of two of V; the whole padded row (``SINGLE_PASS``) or chunks
    of it, five passes over D."""

    BLOCK_D: int
    SINGLE_PASS: bool
    num_warps: int


#: the whole padded row in one pass while the (V_BLOCK, D_pad) tile has at most this many
#: elements (8 warps: 64 floats a thread)
STANDARDIZE_SINGLE_PASS_ELEMENTS = 16384
#: else chunks of this many elements (V_BLOCK x BLOCK_D), over 8 warps: the pair sums unroll
#: over every pair of views, so the chunk stays small. ptxas spills a few bytes of the chunked
#: form at some shapes, differently on each triton: at four views, chunks of 2048 elements over
#: 4 warps spill 4 B on triton 3.4 (sm_90, 16-bit); 2048 over 8 warps, 1024 over 4 and 4096
#: over 4 or 8 spill 4 to 12 B on 3.3, 3.5, 3.6 or 3.9; 1024 over 8 warps on none of 3.3 to 3.9
#: (benchmarks/results/compile/: 3.3.1, 3.4.0, 3.5.1, 3.6.0, 3.7.1, 3.9.0)
STANDARDIZE_CHUNK_ELEMENTS = 1024


def standardize_tile(d_pad: int, views: int, interpreting: bool) -> StandardizeConfig:
    """The standardisation kernel's tile for rows of ``d_pad`` padded features and ``views``
    views; the interpreter takes small tiles (numpy is fastest on them) and any width."""
    v_block = 1 << (views - 1).bit_length()
    whole = 1 << (d_pad - 1).bit_length()
    if interpreting:  # num_warps is not used there
        if v_block * whole <= 256:
            return StandardizeConfig(whole, True, 1)
        return StandardizeConfig(min(whole, 64), False, 1)
    if v_block * whole <= STANDARDIZE_SINGLE_PASS_ELEMENTS:
        return StandardizeConfig(whole, True, 8 if v_block * whole >= 4096 else 4)
    block = min(whole, max(64, STANDARDIZE_CHUNK_ELEMENTS // v_block))
    return StandardizeConfig(block, False, 8)


def row_for(arch: str, kind: str, rows: int, sharded: bool = False) -> Row:
    """The row that applies to ``rows`` = P stacked rows (``sharded``: for one rank of the
    sharded mode, whose ``rows`` is the size of its share, P_local sqrt(W))."""
    row = next(row for row in table_rows(arch, kind) if rows <= row.max_rows)
    return _SHARDED_ROWS.get((arch, kind, row.max_rows), row) if sharded else row

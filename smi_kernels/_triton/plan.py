r"""The launch plan of one problem: tiles, split, padding, workspace layout. Shapes only.

A plan depends on (architecture, SM count, V, N, D, dtype, float32 matmul precision, need_grad,
and for the sharded mode the world size W and the rank's side of its half block) and nothing
else, so it is computed once per shape and cached: the hot path does a dictionary look-up, no
device query. The compile report and the performance model read the same plan.

Layout, with P = V N stacked rows (row p = u N + i), B = ``BLOCK``:

    NB     = ceil(P / B)                   row blocks; P_pad = NB B rows of zh (zero rows after P)
    D_pad  = D rounded up to the K step    zero columns after D, so the forward's K-loop and the
                                           backward's row loads need no mask and stay vectorised
    tiles  = NB (NB + 1) / 2               upper-triangular tiles (pb <= qb) of S and of G
             + K NB^2 (+ half)             sharded: this rank's other blocks (K = (W - 1) // 2,
                                           see smi_kernels/schedule.py)
    split  = K-loop pieces per tile        > 1 only when tiles alone leave SMs idle

One workspace (a byte buffer, every segment 256-byte aligned) holds what the forward writes:

    zh            (P_pad, D_pad)           input dtype (float32 for float32 and float64: acc)
    s, projected  (P,)                     accumulator dtype
    rho, a        (V, V, N)                positive pairs and dL_align / drho
    align         (N,)                     L_align per sample
    red           (tiles,)                 L_red per tile
    split partial (split, tiles, B, B)     float32 / float64 partial S tiles (split > 1 only)
    G             (stored, B, B)           input dtype; stored = NB (NB + 1) / 2 \
                                           (+ (W - 1) NB^2 sharded)                  \ only when
    radial slots  (slots, P_pad)           accumulator dtype; slots = NB              > need_grad
                                           (sharded: (W + K + 2 half) NB)           /
    radial        (P_pad,)                 accumulator dtype                       /
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from smi_kernels import schedule
from smi_kernels._triton import configs

ALIGN = 256
#: K-loop pieces of a split tile are at least this many K steps long (a shorter piece spends
#: more on its epilogue store than on its products)
MIN_STEPS_PER_SPLIT = 4


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, float32 for every other dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Segment:
    """A typed slice of the workspace: ``offset`` bytes in, ``shape`` of ``dtype``."""

    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True, eq=False)
class Plan:
    """Everything the launches of one problem need, from shapes alone. Plans are cached, one
    object per problem, and compare and hash by identity."""

    arch: str
    kind: str
    sm_count: int
    views: int
    n: int
    d: int
    dtype: torch.dtype
    need_grad: bool
    world: int
    upper: bool
    forward: tuple[configs.ForwardConfig, ...]
    backward: tuple[configs.BackwardConfig, ...]
    d_pad: int
    split: int
    k_per_split: int
    segments: dict[str, Segment]
    workspace_bytes: int

    @functools.cached_property
    def rows(self) -> int:
        """P = V N."""
        return self.views * self.n

    @functools.cached_property
    def block(self) -> int:
        return self.forward[0].BLOCK

    @functools.cached_property
    def halves(self) -> int:
        """Column halves the kernels hold an output tile in: 2 from 128-wide tiles on the GPU (the
        epilogue of a whole 128 x 128 tile spills registers), else 1; the interpreter's larger
        tiles (32) take 2 as well, so that the tests run both forms."""
        return 2 if self.block >= (32 if self.arch == "interpreter" else 128) else 1

    @functools.cached_property
    def backward_halves(self) -> int:
        """Column halves of the backward's output tile: as ``halves``, for BLOCK_D."""
        wide = 32 if self.arch == "interpreter" else 128
        return 2 if self.backward[0].BLOCK_D >= wide else 1

    @functools.cached_property
    def num_blocks(self) -> int:
        return math.ceil(self.rows / self.block)

    @functools.cached_property
    def rows_pad(self) -> int:
        return self.num_blocks * self.block

    @functools.cached_property
    def triangle_tiles(self) -> int:
        """NB (NB + 1) / 2: the upper tiles of the local S."""
        return schedule.triangle_tiles(self.num_blocks)

    @functools.cached_property
    def tiles(self) -> int:
        """Forward programs (before the split), one L_red partial each: the local triangle, and
        sharded, this rank's other blocks (``schedule.forward_tiles``)."""
        return schedule.forward_tiles(self.num_blocks, self.world, self.upper)

    @functools.cached_property
    def stored_tiles(self) -> int:
        """G tiles stored: the triangle, and sharded, NB^2 for each other rank's columns."""
        return schedule.stored_tiles(self.num_blocks, self.world)

    @functools.cached_property
    def sharded(self) -> bool:
        return self.world > 1

    @functools.cached_property
    def accumulator(self) -> torch.dtype:
        return accumulator(self.dtype)

    @functools.cached_property
    def storage(self) -> torch.dtype:
        """dtype of zh and G: the input dtype."""
        return self.dtype

    @functools.cached_property
    def precision(self) -> str:
        """``input_precision`` of tl.dot: tf32 for the tensor-core classes, ieee otherwise
        (Triton leaves 16-bit operands as they are under "tf32")."""
        return "ieee" if self.kind == "ieee" else "tf32"


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def choose_split(
    tiles: int, d_pad: int, block_k: int, sm_count: int, min_steps: int = MIN_STEPS_PER_SPLIT
) -> tuple[int, int]:
    """``(split, k_per_split)``: pieces of the K-loop per tile so that tiles x split programs
    cover ``sm_count`` SMs, each piece a whole number of K steps, none shorter than
    ``min_steps`` steps (unless the whole loop is shorter)."""
    steps = d_pad // block_k
    wanted = max(1, -(-sm_count // tiles))
    split = max(1, min(wanted, steps // min_steps))
    k_per_split = -(-steps // split) * block_k
    return -(-d_pad // k_per_split), k_per_split


@functools.lru_cache(maxsize=256)
def make_plan(
    arch: str,
    sm_count: int,
    views: int,
    n: int,
    d: int,
    dtype: torch.dtype,
    precision: str,
    need_grad: bool,
    world: int = 1,
    upper: bool = True,
) -> Plan:
    """The plan of V = ``views`` views of (n, d) in ``dtype`` (see the module docstring); with
    ``world`` > 1, of one rank of the sharded mode (``upper``: rank < world / 2)."""
    kind = configs.arithmetic(dtype, precision)
    # the row of the table by the size of the work: sharded, a rank forms P_local^2 W / 2
    # entries, the triangle of a local problem of P_local sqrt(W) rows (at 8 ranks of 512 rows:
    # 1448, the large tiles, which halve the L2 traffic per multiply-add of the 64-row tiles)
    size = views * n if world == 1 else math.isqrt(world * (views * n) ** 2)
    row = configs.row_for(arch, kind, size, world > 1)
    forward, backward = row.forward, row.backward
    p = views * n
    block = forward[0].BLOCK
    nb = math.ceil(p / block)
    p_pad = nb * block
    upper = upper or not schedule.has_half(world)  # only even W tells the two sides apart
    tiles = schedule.forward_tiles(nb, world, upper)
    # one D_pad for every forward candidate: the largest K step (a multiple of every other)
    k_step = max(c.BLOCK_K for c in forward)
    d_pad = _round_up(d, k_step)
    # the interpreter splits even short loops, so that small test problems run the split path
    min_steps = 1 if arch == "interpreter" else MIN_STEPS_PER_SPLIT
    split, k_per_split = choose_split(tiles, d_pad, forward[0].BLOCK_K, sm_count, min_steps)
    acc = accumulator(dtype)
    shapes: list[tuple[str, tuple[int, ...], torch.dtype]] = [
        ("zh", (p_pad, d_pad), dtype),
        ("s", (p,), acc),
        ("projected", (p,), acc),
        ("rho", (views, views, n), acc),
        ("align_grad", (views, views, n), acc),
        ("align", (n,), acc),
        ("red", (tiles,), acc),
    ]
    if split > 1:
        shapes.append(("split_partial", (split, tiles, block, block), acc))
    if need_grad:
        shapes += [
            ("g", (schedule.stored_tiles(nb, world), block, block), dtype),
            ("radial_slots", (schedule.radial_slots(nb, world), p_pad), acc),
            ("radial", (p_pad,), acc),
        ]
    segments: dict[str, Segment] = {}
    offset = 0
    for name, shape, dt in shapes:
        segments[name] = Segment(offset, shape, dt)
        offset = _round_up(offset + segments[name].nbytes, ALIGN)
    return Plan(
        arch=arch,
        kind=kind,
        sm_count=sm_count,
        views=views,
        n=n,
        d=d,
        dtype=dtype,
        need_grad=need_grad,
        world=world,
        upper=upper,
        forward=forward,
        backward=backward,
        d_pad=d_pad,
        split=split,
        k_per_split=k_per_split,
        segments=segments,
        workspace_bytes=max(offset, ALIGN),
    )


def segment(workspace: torch.Tensor, plan: Plan, name: str) -> torch.Tensor:
    """The typed view of segment ``name`` of a workspace (a uint8 tensor)."""
    seg = plan.segments[name]
    return workspace[seg.offset : seg.offset + seg.nbytes].view(seg.dtype).view(seg.shape)


@functools.lru_cache(maxsize=16)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


#: SMs assumed under the interpreter: a few, so that small test problems split their K-loop
INTERPRETER_SMS = 8


def sm_count(device: torch.device) -> int:
    """SMs of a CUDA device (queried once per device), ``INTERPRETER_SMS`` elsewhere."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


@functools.lru_cache(maxsize=16)
def _architecture(index: int) -> str:
    return configs.architecture(torch.device("cuda", index))


def device_architecture(device: torch.device) -> str:
    """``configs.architecture`` cached per device."""
    if device.type != "cuda":
        return "interpreter"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _architecture(index)


def plan_for(
    views: int,
    n: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    need_grad: bool,
    world: int = 1,
    upper: bool = True,
    precision: str | None = None,
) -> Plan:
    """The cached plan of a problem on ``device`` at ``precision`` (default: the current float32
    matmul precision); ``world``, ``upper``: one rank of the sharded mode."""
    arch, sms = device_architecture(device), sm_count(device)
    if precision is None:
        precision = torch.get_float32_matmul_precision()
    if world == 1:  # one cache key for the local mode, whoever asks
        return make_plan(arch, sms, views, n, d, dtype, precision, need_grad)
    return make_plan(arch, sms, views, n, d, dtype, precision, need_grad, world, upper)

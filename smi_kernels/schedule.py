r"""The sharded mode's schedule: who forms which block of the global S, how the Triton kernels
number their tiles and store G, and which messages the ranks exchange.

Everything here is integer arithmetic on (W, rank, P_local or NB): both backends
(:mod:`smi_kernels.sharded`, :mod:`smi_kernels._triton.sharded`), the launch plan, the memory
model and the FLOP model read it from here. The kernels keep one mirror of the tile numbering
in registers (``smi_kernels/_triton/gram.py``, ``sharded_tile``); the tests hold the two equal.

Blocks (docs/design.md, section 5). W ranks of ``P_local`` rows each; block (r, r') of S pairs
the rows of ranks r and r'. Rank r forms

    the diagonal block (r, r)     its own triangle, the positives, all of L_align
    K = (W - 1) // 2 whole blocks (r, r + t mod W) for column-rank offsets t = 1..K
    even W: the half block        shared with rank r + W/2: the upper rank (r < W/2) forms its
                                  rows against the partner's rows [0, h), the lower rank its
                                  rows [h, P_local) against all of the upper rank's rows
                                  (h = P_local // 2; the Triton path splits by tiles instead:
                                  the upper triangle with the diagonal tiles / the strict upper
                                  triangle)

and receives the G of the blocks at offsets W - K..W - 1 (formed by those ranks) and of the
other half of its half block. Every pair of ranks is formed once: P_local^2 W / 2 entries a rank,
1/W of the global triangle.

Tiles (Triton, NB row blocks of B rows a rank). Forward tile ``idx`` of one rank: its triangle
(t = 0, NB (NB + 1) / 2 tiles, column by column), then the K whole blocks (NB^2 tiles each,
column by column), then its share of the half block (upper rank: the triangle with the diagonal;
lower: the strict triangle). Stored G: the triangle, then one NB^2-tile slot per offset
t = 1..W-1 (:func:`band_start`): the block as formed here (row-major, t <= K), the block a peer
formed (its tile (qb, pb), read transposed, t >= W - K), and for the half offset the upper
rank's triangle followed by the lower rank's strict triangle. Radial slots (rows of P_pad sums):
"own" W NB rows (row sums by column-rank offset and column block), "send" (K + h) NB rows (the
column sums of the blocks formed here, sent to their column rank), "half" h NB rows (the column
sums of the partner's half, received).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: a whole axis of a block (rows or columns)
ALL = slice(None)
#: (column-rank offset t, rows of this rank, columns of rank r + t): a block or part of one
Block = tuple[int, slice, slice]
#: (peer, workspace segment, first row, rows): one message of the Triton path
Message = tuple[int, str, int, int]


def full_blocks(world: int) -> int:
    """K = (W - 1) // 2: the whole blocks each rank forms besides its own."""
    return (world - 1) // 2


def has_half(world: int) -> bool:
    """Even W > 1: one block shared with rank r + W/2, split between the two."""
    return world > 1 and world % 2 == 0


def half_blocks(world: int) -> int:
    """What one rank forms, in halves of a P_local x P_local block: its triangle (1), K whole
    blocks (2 each) and, for even W, its half of one more (1). W for every W."""
    return 1 + 2 * full_blocks(world) + has_half(world)


def half_split(p_local: int) -> int:
    """h: the upper rank of a half block forms its rows x the partner's rows [0, h), the lower
    rank its rows [h, P_local) x all of the upper rank's rows (the PyTorch path)."""
    return p_local // 2


@dataclass(frozen=True)
class Schedule:
    """Which blocks of S rank ``rank`` of ``world`` forms (see the module docstring).

    Column-rank offsets t = 1..W-1 (the block of columns of rank ``(rank + t) mod W``):
    ``computed`` whole here, ``received`` (their G block comes from that rank), and for even W
    the ``half`` offset W/2, whose block is split with that rank (``upper`` = rank < W/2).

    Example:
        >>> from smi_kernels.schedule import Schedule
        >>> s = Schedule(world=4, rank=1)
        >>> list(s.computed), list(s.received), s.half, s.upper
        ([1], [3], 2, True)
    """

    world: int
    rank: int

    @property
    def full(self) -> int:
        """K = (W - 1) // 2: whole blocks formed by every rank besides its own."""
        return full_blocks(self.world)

    @property
    def has_half(self) -> bool:
        return has_half(self.world)

    @property
    def half(self) -> int:
        """The half offset W/2 (meaningful for even W)."""
        return self.world // 2

    @property
    def upper(self) -> bool:
        """This rank forms the upper share of its half block (rank < W/2)."""
        return self.rank < self.world // 2

    @property
    def computed(self) -> range:
        return range(1, self.full + 1)

    @property
    def received(self) -> range:
        return range(self.world - self.full, self.world)

    def peer(self, offset: int) -> int:
        """The rank whose rows are the columns at ``offset``."""
        return (self.rank + offset) % self.world

    def formed_blocks(self, p_local: int) -> list[Block]:
        """The blocks between ranks formed here, by rows: whole blocks, then this rank's part
        of the half block."""
        blocks = [(t, ALL, ALL) for t in self.computed]
        if self.has_half:
            h = half_split(p_local)
            if self.upper:
                blocks.append((self.half, ALL, slice(0, h)))
            else:
                blocks.append((self.half, slice(h, p_local), ALL))
        return blocks

    def received_blocks(self, p_local: int) -> list[Block]:
        """The blocks of this rank's band formed by other ranks (in this rank's frame): whole
        blocks, then the partner's part of the half block (the lower rank formed its rows
        [h, P) x all of ours; the upper rank all its rows x our rows [0, h))."""
        blocks = [(t, ALL, ALL) for t in self.received]
        if self.has_half:
            h = half_split(p_local)
            if self.upper:
                blocks.append((self.half, ALL, slice(h, p_local)))
            else:
                blocks.append((self.half, slice(0, h), ALL))
        return blocks


# ---------------------------------------------------------------- the Triton path's tiles


def triangle_tiles(num_blocks: int) -> int:
    """NB (NB + 1) / 2: the upper tiles (pb <= qb) of one rank's own S."""
    return num_blocks * (num_blocks + 1) // 2


def triangle_tile(t: int) -> tuple[int, int]:
    """(pb, qb) of upper tile t, numbered column by column: t = qb (qb + 1) / 2 + pb."""
    qb = (math.isqrt(8 * t + 1) - 1) // 2
    return t - qb * (qb + 1) // 2, qb


def forward_tiles(num_blocks: int, world: int = 1, upper: bool = True) -> int:
    """Forward tiles of one rank: its triangle NB (NB + 1) / 2, then (sharded over W ranks) K
    whole NB x NB blocks, then for even W its share of the half block: NB (NB + 1) / 2 tiles on
    the upper rank (rank < W/2), NB (NB - 1) / 2 on the lower."""
    triangle = triangle_tiles(num_blocks)
    half = 0
    if has_half(world):
        half = triangle if upper else triangle - num_blocks
    return triangle + full_blocks(world) * num_blocks**2 + half


def stored_tiles(num_blocks: int, world: int = 1) -> int:
    """G tiles one rank stores: its triangle and NB^2 for each other rank's columns."""
    return triangle_tiles(num_blocks) + (world - 1) * num_blocks**2


def band_start(num_blocks: int, offset: int) -> int:
    """The first stored G tile of the block at column-rank offset ``offset`` >= 1."""
    return triangle_tiles(num_blocks) + (offset - 1) * num_blocks**2


def radial_slots(num_blocks: int, world: int = 1) -> int:
    """Rows of radial sums one rank keeps: (W + K + 2 h) NB (NB for the local mode)."""
    return (world + full_blocks(world) + 2 * has_half(world)) * num_blocks


def slot_rows(num_blocks: int, world: int, part: str) -> range:
    """Rows of the radial slots: "own" (row sums by column-rank offset and column block,
    W NB), "send" (column sums of the blocks formed here, (K + h) NB), "half" (the column sums
    of the half block received from the partner, h NB)."""
    own = world * num_blocks
    send = (full_blocks(world) + has_half(world)) * num_blocks
    if part == "own":
        return range(0, own)
    if part == "send":
        return range(own, own + send)
    if part == "half":
        return range(own + send, own + send + has_half(world) * num_blocks)
    raise ValueError(f"part must be 'own', 'send' or 'half', got {part!r}")


def tile(idx: int, num_blocks: int, world: int, upper: bool) -> tuple[int, int, int, int, int]:
    """Forward tile ``idx`` of one rank: ``(pb, qb, t, stored tile, column slot)``: its row and
    column blocks, the column-rank offset, where its G goes and the slot row of its column
    radial sums (its own rows for t = 0, the rows sent to rank r + t otherwise). The kernels'
    ``sharded_tile`` computes the same in registers."""
    triangle = triangle_tiles(num_blocks)
    square = num_blocks * num_blocks
    if idx < triangle:
        pb, qb = triangle_tile(idx)
        return pb, qb, 0, idx, pb
    j = idx - triangle
    if j < full_blocks(world) * square:
        block, within = divmod(j, square)
        qb, pb = divmod(within, num_blocks)  # column by column
        t = block + 1
        stored = band_start(num_blocks, t) + pb * num_blocks + qb  # stored row-major
    else:
        h = j - full_blocks(world) * square
        pb, qb = triangle_tile(h)
        qb += not upper  # the lower rank's strict triangle: tile h is (pb, qb + 1)
        t = world // 2
        stored = band_start(num_blocks, t) + (not upper) * triangle + h
    return pb, qb, t, stored, (world + t - 1) * num_blocks + pb


def messages(schedule: Schedule, num_blocks: int) -> tuple[list[Message], list[Message]]:
    """``(sends, receives)`` of the Triton path, each ``(peer, segment, first row, rows)`` of
    the workspace: the G tiles ("g") and column sums ("radial_slots") of the blocks this rank
    formed go to the rank of their columns; those of the blocks its peers formed land where its
    own tiles for that offset would be. Messages of no rows (NB = 1 leaves the lower rank no
    tile of the half block; NB is the same on every rank, so both sides drop it) are left out.
    """
    nb, world = num_blocks, schedule.world
    square, triangle = nb * nb, triangle_tiles(nb)
    own = slot_rows(nb, world, "own").start
    send = slot_rows(nb, world, "send").start
    sends: list[Message] = []
    receives: list[Message] = []
    for t in schedule.computed:
        peer = schedule.peer(t)
        sends.append((peer, "g", band_start(nb, t), square))
        sends.append((peer, "radial_slots", send + (t - 1) * nb, nb))
    for t in schedule.received:
        peer = schedule.peer(t)
        receives.append((peer, "g", band_start(nb, t), square))
        receives.append((peer, "radial_slots", own + t * nb, nb))
    if schedule.has_half:
        t = schedule.half
        peer = schedule.peer(t)
        upper_part = (band_start(nb, t), triangle)
        lower_part = (band_start(nb, t) + triangle, triangle - nb)
        mine, theirs = (upper_part, lower_part) if schedule.upper else (lower_part, upper_part)
        sends += [(peer, "g", *mine), (peer, "radial_slots", send + (t - 1) * nb, nb)]
        half = slot_rows(nb, world, "half").start
        receives += [(peer, "g", *theirs), (peer, "radial_slots", half, nb)]
    return [m for m in sends if m[3]], [m for m in receives if m[3]]

"""The sharded mode's schedule (``smi_kernels/schedule.py``): its blocks, its tiles and its
messages fit together, and the kernels' in-register tile numbering (``gram.sharded_tile``)
is the schedule's, for W = 1..8 ranks and NB = 1..4 row blocks a rank.
"""

from __future__ import annotations

import pytest
import torch

from smi_kernels import schedule
from smi_kernels.schedule import Schedule

try:
    import triton
    import triton.language as tl

    from smi_kernels._triton.gram import sharded_tile
except ImportError:
    triton = None
needs_triton = pytest.mark.skipif(triton is None, reason="triton does not import")

WORLDS = range(1, 9)
NUM_BLOCKS = range(1, 5)


def test_blocks_formed_here_are_received_there() -> None:
    """PyTorch path: each block part rank r forms at offset t is the part its peer receives at
    offset W - t, rows and columns swapped; a rank's band is covered once."""
    p_local = 7
    for world in WORLDS:
        for rank in range(world):
            ranks = Schedule(world, rank)
            for t, rows, cols in ranks.formed_blocks(p_local):
                peer = Schedule(world, ranks.peer(t))
                assert (world - t, cols, rows) in peer.received_blocks(p_local)
            covered = torch.zeros(world, p_local, p_local, dtype=torch.int64)
            for t, rows, cols in ranks.formed_blocks(p_local) + ranks.received_blocks(p_local):
                covered[t][rows, cols] += 1
            assert bool((covered[1:] == 1).all()), (world, rank)


@pytest.mark.parametrize("world", WORLDS)
def test_tiles_and_messages(world: int) -> None:
    """Triton path: a rank's forward tiles go to distinct stored tiles of its own band; every
    message one rank sends is a receive of the same size, in the same order, at its peer; the
    ranks' tiles cover the global triangle once."""
    for nb in NUM_BLOCKS:
        sends, receives = {}, {}
        for rank in range(world):
            ranks = Schedule(world, rank)
            count = schedule.forward_tiles(nb, world, ranks.upper)
            tiles = [schedule.tile(idx, nb, world, ranks.upper) for idx in range(count)]
            stored = [tile[3] for tile in tiles]
            assert len(set(stored)) == count
            assert max(stored) < schedule.stored_tiles(nb, world)
            assert all(0 <= pb < nb and 0 <= qb < nb for pb, qb, *_ in tiles)
            slots = schedule.radial_slots(nb, world)
            assert all(tile[4] < slots for tile in tiles)
            sends[rank], receives[rank] = schedule.messages(ranks, nb)
        for rank in range(world):
            for peer in range(world):
                out = [(name, count) for to, name, _, count in sends[rank] if to == peer]
                into = [(name, count) for of, name, _, count in receives[peer] if of == rank]
                assert out == into, (world, nb, rank, peer)
        # every tile of the global triangle (W NB row blocks) is formed on one rank
        shares = [schedule.forward_tiles(nb, world, Schedule(world, r).upper) for r in range(world)]
        assert sum(shares) == schedule.triangle_tiles(world * nb)
        assert schedule.half_blocks(world) == world


@pytest.mark.parametrize("world", WORLDS)
@needs_triton
def test_kernels_number_tiles_as_the_schedule(world: int) -> None:
    """``gram.sharded_tile`` (run by a probe kernel, every tile of one rank at once) against
    ``schedule.tile``: row and column block, offset, stored tile and column slot."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for nb in NUM_BLOCKS:
        for upper in (True, False):
            count = schedule.forward_tiles(nb, world, upper)
            out = torch.full((count, 5), -1, dtype=torch.int64, device=device)
            probe[(1,)](out, count, nb, world, int(upper), BLOCK=triton.next_power_of_2(count))
            expected = [list(schedule.tile(idx, nb, world, upper)) for idx in range(count)]
            assert out.tolist() == expected, (world, nb, upper)


if triton is not None:

    @triton.jit
    def probe(out_ptr, count, num_blocks, world, upper, BLOCK: tl.constexpr):
        idx = tl.arange(0, BLOCK)
        pb, qb, t, tile, col_slot = sharded_tile(idx, num_blocks, world, upper)
        ok = idx < count
        row = out_ptr + 5 * idx.to(tl.int64)
        tl.store(row, pb.to(tl.int64), mask=ok)
        tl.store(row + 1, qb.to(tl.int64), mask=ok)
        tl.store(row + 2, t.to(tl.int64), mask=ok)
        tl.store(row + 3, tile.to(tl.int64), mask=ok)
        tl.store(row + 4, col_slot.to(tl.int64), mask=ok)

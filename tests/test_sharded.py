"""``gather_distributed="sharded"``: the global-batch loss with each rank computing its share.

Both backends (the Triton kernels under the interpreter here), float64 unless said:

* real gloo process groups of 2, 3 and 4 ranks (``python this_file.py --launch``, every rank
  forked from one launcher): loss, terms and gradients against one process on the whole batch
  and against gather mode, also with rank-dependent incoming gradients and three views, and
  with local batches that span two and three row blocks of the Triton tile (for even W the
  half block is then split between its two ranks over several blocks); DDP parameter
  gradients; float32 and 16-bit inputs at design.md §6 tolerances; the FLOP counter's per-rank
  work (1/W of gather mode's, by the registered formulas on the Triton path); the largest tensor
  a rank creates; uneven inputs raise on every rank;
* a one-rank gloo group inside the test process: the sharded mode is the local mode, bitwise;
* the schedule (every pair of rank blocks formed exactly once) and the cost model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import EPS, LAMBDA, TOLERANCE, fork_ranks, join_gloo, run_launcher, smi_loss_terms
from helpers import relative_error as rel
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from smi_kernels import SMILoss, flops, memory, smi_loss, smi_loss_with_terms
from smi_kernels.schedule import Schedule, half_split

N_LOCAL = 4
IN_DIM = 10
OUT_DIM = 6
TIMEOUT_S = 400
WORLDS = (2, 3, 4)
BACKENDS = ("torch", "triton")
#: D of the lower-precision checks (at D = 6, 16-bit zh alone moves L_red by 4%, local mode too)
WIDE = 64
LOW_PRECISION = {
    dtype: TOLERANCE[dtype] for dtype in (torch.float32, torch.bfloat16, torch.float16)
}
RTOL = 1e-9
#: view counts of the reduction="mean" checks
MEAN_VIEWS = (2, 3, 4)
#: local batches spanning this many row blocks of the Triton tile: block count -> views (three
#: views: an odd P_local, so the PyTorch path's half split h = P_local // 2 is uneven too)
SEVERAL_BLOCKS = {2: 2, 3: 3}
#: their D: the cost is in the tiles, not in the features
NARROW = 8
#: (L, L_align, L_red) weights of their backward: the redundancy gradient as large as the rest
BLOCKS_WEIGHTS = (1.0, 0.0, 1.0)


# ---------------------------------------------------------------- shared by workers and tests


def global_views(
    world: int, views: int = 2, seed: int = 1234, d: int = OUT_DIM, n: int = N_LOCAL
) -> list[torch.Tensor]:
    """``views`` correlated embeddings of the whole batch (world * n, d)."""
    gen = torch.Generator().manual_seed(seed + world)
    z = torch.randn(world * n, d, generator=gen, dtype=torch.float64)
    return [
        z + 0.5 * torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(views)
    ]


def global_inputs(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the encoder for two views of the whole batch."""
    gen = torch.Generator().manual_seed(99 + world)
    x = torch.randn(world * N_LOCAL, IN_DIM, generator=gen, dtype=torch.float64)
    noise = [0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    return x + noise[0], x + noise[1]


def make_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, OUT_DIM)).double()


def local_rows(t: torch.Tensor, rank: int, n: int = N_LOCAL) -> torch.Tensor:
    return t[rank * n : (rank + 1) * n]


def several_blocks_plan(world: int, blocks: int):
    """The Triton plan (under the interpreter, rank 0 of W) of the smallest local batch whose
    P_local = V n rows span ``blocks`` row blocks of the tile, the last one more than half full."""
    from smi_kernels._triton.plan import plan_for

    views = SEVERAL_BLOCKS[blocks]
    for n in range(1, 1000):
        plan = plan_for(views, n, NARROW, torch.float64, torch.device("cpu"), True, world)
        if plan.num_blocks == blocks and 2 * plan.rows > (2 * blocks - 1) * plan.block:
            return plan
    raise AssertionError(f"no local batch spans {blocks} blocks at W = {world}")


def several_blocks_views(world: int, blocks: int) -> tuple[int, list[torch.Tensor]]:
    """``(n, views of the whole batch)`` of the case of ``blocks`` row blocks a rank."""
    n = several_blocks_plan(world, blocks).n
    return n, global_views(world, SEVERAL_BLOCKS[blocks], seed=31 * blocks, d=NARROW, n=n)


def coefficients(rank: int) -> tuple[float, float, float]:
    """Rank-dependent weights of (loss, alignment, redundancy) in the backward."""
    return (1.0 + rank, 0.25 * rank, -0.5 if rank % 2 else 2.0)


# ---------------------------------------------------------------- the worker


def _terms_and_grads(views, mode, backend, weights=(1.0, 0.0, 0.0), reduction="sum"):
    leaves = [v.clone().requires_grad_() for v in views]
    out = smi_loss_with_terms(
        *leaves,
        lambda_param=LAMBDA,
        eps=EPS,
        backend=backend,
        gather_distributed=mode,
        reduction=reduction,
    )
    (weights[0] * out.loss + weights[1] * out.alignment + weights[2] * out.redundancy).backward()
    return torch.stack([t.detach() for t in out]), [leaf.grad.clone() for leaf in leaves]


def _ddp_grads(world: int, rank: int, mode, backend: str):
    from torch.nn.parallel import DistributedDataParallel

    x_a, x_b = (local_rows(x, rank) for x in global_inputs(world))
    model = DistributedDataParallel(make_encoder())
    z = model(torch.cat([x_a, x_b]))
    loss = SMILoss(LAMBDA, EPS, gather_distributed=mode, backend=backend)(
        z[:N_LOCAL], z[N_LOCAL:]
    )
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


class _LargestOutput(TorchDispatchMode):
    """The largest number of elements of any tensor an op creates."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _flops(views, mode, backend) -> tuple[int, int]:
    """MACs the FLOP counter sees in the forward and in the backward of one call."""
    leaves = [v.clone().requires_grad_() for v in views]
    with FlopCounterMode(display=False) as forward:
        out = smi_loss(*leaves, lambda_param=LAMBDA, eps=EPS, backend=backend,
                       gather_distributed=mode)  # fmt: skip
    with FlopCounterMode(display=False) as backward:
        out.backward()
    return forward.get_total_flops() // 2, backward.get_total_flops() // 2


def _largest(views, backend) -> int:
    leaves = [v.clone().requires_grad_() for v in views]
    with _LargestOutput() as largest:
        out = smi_loss(*leaves, backend=backend, gather_distributed="sharded")
        out.backward()
    return largest.largest


def _error(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return "no error"


def worker(world: int, rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    join_gloo(store, rank, world, timeout_s=120)
    try:
        res: dict[str, object] = {"rank": rank}
        z_a, z_b = (local_rows(z, rank) for z in global_views(world))

        # uneven inputs first: the error must come on every rank, and the group must still work
        short = N_LOCAL - 1 if rank == world - 1 else N_LOCAL
        res["uneven_n"] = _error(
            lambda: smi_loss(z_a[:short], z_b[:short], gather_distributed="sharded")
        )
        wide = torch.randn(N_LOCAL, OUT_DIM + (rank == 0), dtype=torch.float64)
        res["uneven_d"] = _error(lambda: smi_loss(wide, wide + 1, gather_distributed="sharded"))
        third = [z_a, z_b, z_a + 1] if rank == 0 else [z_a, z_b]
        res["uneven_views"] = _error(lambda: smi_loss(*third, gather_distributed="sharded"))
        leaf = z_a.clone().requires_grad_(rank == 0)  # a gradient on rank 0 only
        res["uneven_grad"] = _error(lambda: smi_loss(leaf, z_b, gather_distributed="sharded"))

        three = [local_rows(z, rank) for z in global_views(world, views=3, seed=7)]
        for backend in BACKENDS:
            for mode in ("sharded", True):
                key = f"{backend}_{mode}"
                res[f"{key}_terms"], res[f"{key}_grads"] = _terms_and_grads(
                    [z_a, z_b], mode, backend
                )
                _, res[f"{key}_weighted_grads"] = _terms_and_grads(
                    [z_a, z_b], mode, backend, coefficients(rank)
                )
                res[f"{key}_ddp"] = _ddp_grads(world, rank, mode, backend)
                res[f"{key}_flops"] = _flops([z_a, z_b], mode, backend)
                for v in MEAN_VIEWS:
                    mean_views = [local_rows(z, rank) for z in global_views(world, views=v)]
                    res[f"{key}_mean{v}"] = _terms_and_grads(
                        mean_views, mode, backend, reduction="mean"
                    )
            res[f"{backend}_three_terms"], res[f"{backend}_three_grads"] = _terms_and_grads(
                three, "sharded", backend, (1, 1, 0)
            )
            with torch.no_grad():
                res[f"{backend}_no_grad_loss"] = smi_loss(
                    z_a, z_b, backend=backend, gather_distributed="sharded"
                )
            for blocks in SEVERAL_BLOCKS:
                n, views = several_blocks_views(world, blocks)
                res[f"{backend}_blocks{blocks}"] = _terms_and_grads(
                    [local_rows(z, rank, n) for z in views], "sharded", backend, BLOCKS_WEIGHTS
                )
            wide_views = [local_rows(z, rank) for z in global_views(world, d=WIDE)]
            for dtype in LOW_PRECISION:
                low = [z.to(dtype) for z in wide_views]
                res[f"{backend}_{dtype}"] = _terms_and_grads(low, "sharded", backend)
        res["torch_largest"] = _largest([z_a, z_b], "torch")
        torch.save(res, out)
    finally:
        dist.destroy_process_group()


def launch(out_dir: str) -> int:
    """Fork every rank of every world size from one process and wait for them; the exit status.

    Each process pays about 6 s of CPU to import torch and torch._dynamo (DDP's constructor
    imports it); forking after the imports pays that once for all the ranks.
    """
    import torch._dynamo  # noqa: F401
    import triton  # noqa: F401

    return fork_ranks(
        WORLDS,
        lambda world, rank: worker(
            world, rank, f"{out_dir}/store{world}", f"{out_dir}/w{world}r{rank}.pt"
        ),
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """Run every world size once (one launcher process, one forked process per rank)."""
    if not hasattr(os, "fork"):
        pytest.skip("the gloo workers are forked from one launcher (no os.fork here)")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton backend needs a GPU or TRITON_INTERPRET=1")
    tmp = tmp_path_factory.mktemp("sharded")
    run_launcher(__file__, [str(tmp)], TIMEOUT_S, "sharded workers")
    return tmp


@pytest.fixture(params=WORLDS, ids=lambda w: f"W{w}")
def job(request, launched: Path) -> tuple[int, list[dict]]:
    """``(world, per-rank results in rank order)`` of one world size."""
    world = request.param
    return world, [torch.load(launched / f"w{world}r{rank}.pt") for rank in range(world)]


def reference_terms_and_grads(views, weights=(1.0, 0.0, 0.0)):
    """The single process on the whole batch: (L, L_align, L_red) and dL/dz of every view."""
    leaves = [v.clone().requires_grad_() for v in views]
    align, red = smi_loss_terms(*leaves, eps=EPS)
    loss = align + LAMBDA * red
    (weights[0] * loss + weights[1] * align + weights[2] * red).backward()
    return torch.stack([loss, align, red]).detach(), [leaf.grad for leaf in leaves]


# ---------------------------------------------------------------- real process groups


@pytest.mark.parametrize("mode", ["sharded", True], ids=["sharded", "gather"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_reduction_is_the_global_batch_mean(job, backend, mode):
    """reduction="mean" divides by the pair counts of the global batch (W N samples)."""
    from smi_kernels.loss import pair_counts

    world, ranks = job
    for v in MEAN_VIEWS:
        views = global_views(world, views=v)
        align_count, red_count = pair_counts(v, world * N_LOCAL)
        leaves = [z.clone().requires_grad_() for z in views]
        align, red = smi_loss_terms(*leaves, eps=EPS)
        align, red = align / align_count, red / red_count
        loss = align + LAMBDA * red
        loss.backward()
        want = torch.stack([loss, align, red]).detach()
        for rank, res in enumerate(ranks):
            terms, grads = res[f"{backend}_{mode}_mean{v}"]
            assert rel(terms, want) < RTOL, (v, rank)
            for got, leaf in zip(grads, leaves, strict=True):
                assert rel(got, world * local_rows(leaf.grad, rank)) < RTOL, (v, rank)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_terms_and_grads_equal_one_process_on_the_whole_batch(job, backend):
    world, ranks = job
    terms, grads = reference_terms_and_grads(global_views(world))
    for rank, res in enumerate(ranks):
        assert rel(res[f"{backend}_sharded_terms"], terms) < RTOL
        for got, want in zip(res[f"{backend}_sharded_grads"], grads, strict=True):
            # the convention of gather mode: this rank's rows get world_size * dL/dz_local
            assert rel(got, world * local_rows(want, rank)) < RTOL
        assert rel(res[f"{backend}_no_grad_loss"], terms[0]) < RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_equals_gather_mode(job, backend):
    _, ranks = job
    for res in ranks:
        sharded, gather = f"{backend}_sharded", f"{backend}_True"
        assert rel(res[f"{sharded}_terms"], res[f"{gather}_terms"]) < RTOL
        for key in ("grads", "weighted_grads"):
            for got, want in zip(res[f"{sharded}_{key}"], res[f"{gather}_{key}"], strict=True):
                assert rel(got, want) < RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_dependent_incoming_gradients(job, backend):
    """Ranks weighting (L, L_align, L_red) differently: every rank's rows get
    sum_r' c_r' d(L, L_align, L_red)/dz_local, as the gather's all-reduce gives."""
    world, ranks = job
    total = [sum(coefficients(r)[k] for r in range(world)) for k in range(3)]
    _, grads = reference_terms_and_grads(global_views(world), total)
    for rank, res in enumerate(ranks):
        for got, want in zip(res[f"{backend}_sharded_weighted_grads"], grads, strict=True):
            assert rel(got, local_rows(want, rank)) < RTOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_views(job, backend):
    world, ranks = job
    terms, grads = reference_terms_and_grads(global_views(world, views=3, seed=7), (1, 1, 0))
    for rank, res in enumerate(ranks):
        assert rel(res[f"{backend}_three_terms"], terms) < RTOL
        for got, want in zip(res[f"{backend}_three_grads"], grads, strict=True):
            assert rel(got, world * local_rows(want, rank)) < RTOL


@pytest.mark.parametrize("blocks", list(SEVERAL_BLOCKS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_several_blocks_per_rank(job, backend, blocks):
    """Local batches spanning two and three row blocks of the Triton tile: the rank's triangle,
    its whole blocks and, for even W, its share of the half block (the upper triangle with the
    diagonal tiles on rank r < W/2, the strict upper triangle on rank r + W/2) each over
    several tiles. Terms and gradients against one process on the whole batch."""
    world, ranks = job
    assert several_blocks_plan(world, blocks).num_blocks == blocks
    n, views = several_blocks_views(world, blocks)
    terms, grads = reference_terms_and_grads(views, BLOCKS_WEIGHTS)
    for rank, res in enumerate(ranks):
        got_terms, got_grads = res[f"{backend}_blocks{blocks}"]
        assert rel(got_terms, terms) < RTOL, f"rank {rank}"
        for got, want in zip(got_grads, grads, strict=True):
            assert rel(got, world * local_rows(want, rank, n)) < RTOL, f"rank {rank}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_grads_equal_one_process_and_gather_mode(job, backend):
    world, ranks = job
    x_a, x_b = global_inputs(world)
    model = make_encoder()
    loss = smi_loss(model(x_a), model(x_b), lambda_param=LAMBDA, eps=EPS)
    model.zero_grad(set_to_none=True)
    loss.backward()
    expected = [p.grad for p in model.parameters()]
    for res in ranks:
        sharded_loss, sharded = res[f"{backend}_sharded_ddp"]
        gather_loss, gathered = res[f"{backend}_True_ddp"]
        assert rel(sharded_loss, loss.detach()) < RTOL
        assert rel(gather_loss, loss.detach()) < RTOL
        for got, other, want in zip(sharded, gathered, expected, strict=True):
            assert rel(got, want) < RTOL
            assert rel(got, other) < RTOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(LOW_PRECISION), ids=str)
def test_lower_precision_inputs(job, backend, dtype):
    """float32 and 16-bit inputs against the float64 reference at design.md §6 tolerances;
    the gradients come back in the input dtype, the loss in float32."""
    world, ranks = job
    views = [v.to(dtype).double() for v in global_views(world, d=WIDE)]  # the ranks' inputs
    terms, grads = reference_terms_and_grads(views)
    tol = LOW_PRECISION[dtype]
    for rank, res in enumerate(ranks):
        got_terms, got_grads = res[f"{backend}_{dtype}"]
        assert got_terms.dtype == torch.float32
        assert rel(got_terms, terms) < tol
        for got, want in zip(got_grads, grads, strict=True):
            assert got.dtype == dtype
            assert rel(got, world * local_rows(want, rank)) < tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_flop_counter_per_rank_work(job, backend):
    """The FLOP counter's multiply-adds of one rank, forward and backward. Triton: the
    registered formulas of its ops, exactly 1/W of gather mode's (the fused counts). PyTorch
    path: the matrix products themselves, at most 1/W of gather mode's."""
    world, ranks = job
    n, d, v = N_LOCAL, OUT_DIM, 2
    p_local = v * n
    for res in ranks:
        sharded = res[f"{backend}_sharded_flops"]
        gather = res[f"{backend}_True_flops"]
        if backend == "triton":
            assert sharded == flops.distributed_macs(n, d, world, v, mode="sharded")
            assert gather == flops.distributed_macs(n, d, world, v, mode="gather")
            assert world * sharded[0] == gather[0]
            assert world * sharded[1] == gather[1]
        else:
            # own blocks u <= v, K whole blocks, half a block for even W; G_sym Z by pieces
            half = p_local * half_split(p_local) if world % 2 == 0 else 0
            lower = p_local * (p_local - half_split(p_local)) if world % 2 == 0 else 0
            own = flops.naive_forward_macs(n, d, v) // d
            full = (world - 1) // 2 * p_local**2
            assert sharded[0] in {(own + full + half) * d, (own + full + lower) * d}
            assert sharded[1] == flops.sharded_backward_macs(n, d, world, v)
            assert world * sharded[0] <= gather[0]
            assert world * sharded[1] == gather[1]


def test_no_tensor_larger_than_the_band(job):
    """PyTorch path: no rank creates a tensor of more elements than its P_local x P_global band
    (the gathered zh aside: P_global x D, D >= P_local here)."""
    world, ranks = job
    p_local, d = 2 * N_LOCAL, OUT_DIM
    for res in ranks:
        assert res["torch_largest"] <= max(p_local * world * p_local, world * p_local * d)


@pytest.mark.parametrize("world", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [256, 2048])
def test_triton_stores_no_more_than_the_band(world, n):
    """Triton: the stored G of one rank (its triangle and W - 1 square blocks of tiles) is at
    most its P_local x P_global band; S is never stored (split-K partials aside, whose tiles
    are this rank's own)."""
    from smi_kernels._triton.plan import make_plan

    for upper in (True, False):
        plan = make_plan("sm90", 132, 2, n, 8192, torch.bfloat16, "highest", True, world, upper)
        g = plan.segments["g"]
        assert g.shape[0] * plan.block**2 <= plan.rows * world * plan.rows
        assert plan.tiles <= plan.stored_tiles


def test_uneven_inputs_raise_on_every_rank(job):
    world, ranks = job
    for res in ranks:
        assert "same number of views, the same (N, D)" in res["uneven_n"]
        assert f"rank {world - 1}: 2 views of ({N_LOCAL - 1}, {OUT_DIM})" in res["uneven_n"]
        assert f"rank 0: 2 views of ({N_LOCAL}, {OUT_DIM + 1})" in res["uneven_d"]
        assert "rank 0: 3 views" in res["uneven_views"]
        assert "a gradient on every rank or on none" in res["uneven_grad"]
        assert f"rank 0: 2 views of ({N_LOCAL}, {OUT_DIM}) torch.float64, with a gradient" in (
            res["uneven_grad"]
        )
        assert f"rank {world - 1}: 2 views of ({N_LOCAL}, {OUT_DIM}) torch.float64, without" in (
            res["uneven_grad"]
        )


# ---------------------------------------------------------------- one rank, in this process


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_rank_is_the_local_mode_bitwise(one_rank_group, dtype, backend):
    views = [v.to(dtype) for v in global_views(1, views=3)]
    outs = {}
    for mode in (False, "sharded"):
        leaves = [v.clone().requires_grad_() for v in views]
        out = smi_loss_with_terms(*leaves, gather_distributed=mode, backend=backend)
        (out.loss + out.alignment).backward()
        outs[mode] = [*out, *(leaf.grad for leaf in leaves)]
    for local, sharded in zip(outs[False], outs["sharded"], strict=True):
        assert torch.equal(local, sharded)


# ---------------------------------------------------------------- schedule and cost model


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 6, 7, 8])
def test_every_pair_of_rank_blocks_is_formed_once(world):
    """Whole blocks: rank r forms (r, r + t) for t = 1..K and receives (r, r + t) for the other
    t but W/2; the half block of an even W is split in two."""
    formed: dict[tuple[int, int], int] = {}
    for rank in range(world):
        schedule = Schedule(world, rank)
        for t in schedule.computed:
            pair = tuple(sorted((rank, schedule.peer(t))))
            formed[pair] = formed.get(pair, 0) + 2
        if schedule.has_half:
            pair = tuple(sorted((rank, schedule.peer(schedule.half))))
            formed[pair] = formed.get(pair, 0) + 1
        assert set(schedule.computed).isdisjoint(schedule.received)
        assert len(schedule.computed) + len(schedule.received) + schedule.has_half == world - 1
    assert formed == {(a, b): 2 for a in range(world) for b in range(a + 1, world)}


def test_mode_validation():
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="'sharded', got 'shard'"):
        SMILoss(gather_distributed="shard")
    with pytest.raises(TypeError, match="bool or the string 'sharded', got int"):
        smi_loss(z_a, z_b, gather_distributed=1)
    # no process group: the local loss, bitwise (the world-of-one result, as lightly does)
    assert torch.equal(SMILoss(gather_distributed="sharded")(z_a, z_b), smi_loss(z_a, z_b))
    assert torch.equal(
        smi_loss(z_a, z_b, gather_distributed="sharded", backend="triton"),
        smi_loss(z_a, z_b, backend="triton"),
    )
    assert "gather_distributed='sharded'" in repr(SMILoss(gather_distributed="sharded"))


def test_distributed_macs():
    n, d, world = 256, 8192, 8
    local = flops.distributed_macs(n, d, world, mode="local")
    gather = flops.distributed_macs(n, d, world, mode="gather")
    sharded = flops.distributed_macs(n, d, world, mode="sharded")
    assert local == (flops.fused_forward_macs(n, d), flops.fused_backward_macs(n, d))
    assert gather == (
        flops.fused_forward_macs(world * n, d),
        flops.fused_backward_macs(world * n, d),
    )
    p_local, p_global = 2 * n, 2 * world * n
    assert sharded == (p_global**2 * d // (2 * world), p_local * p_global * d)
    assert (world * sharded[0], world * sharded[1]) == gather  # 1/W of each
    for w in (1, 2, 3, 5, 7):
        assert w * sum(flops.distributed_macs(4, 5, w, 3, mode="sharded")) == sum(
            flops.distributed_macs(4, 5, w, 3, mode="gather")
        )
    with pytest.raises(ValueError, match="mode must be one of"):
        flops.distributed_macs(n, d, world, mode="ring")


def test_memory_model_covers_the_sharded_mode():
    estimate = memory.sharded_estimate(256, 8192, 2, 8, torch.float32, need_grad=True)
    assert estimate.gradient_matrix == 4 * 512 * 4096
    assert estimate.standardized >= 4 * 4096 * 8192  # the gathered zh
    no_grad = memory.sharded_estimate(256, 8192, 2, 8, torch.float32, need_grad=False)
    assert no_grad.gradient_matrix == 0

    from smi_kernels._triton.plan import make_plan

    for world, n in ((8, 256), (3, 1000), (2, 2048)):
        plan = make_plan("sm90", 132, 2, n, 8192, torch.bfloat16, "highest", True, world)
        triton = memory.sharded_estimate(
            n, 8192, 2, world, torch.bfloat16, True, "triton", plan.block
        )
        assert triton.gradient_matrix == plan.segments["g"].nbytes
        assert triton.partials == plan.segments["radial_slots"].nbytes
        assert triton.gradient_matrix <= 2 * plan.rows * world * plan.rows  # the band, bfloat16


def test_benchmark_table_shows_the_saving():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "flops.py"
    spec = importlib.util.spec_from_file_location("benchmarks_flops_sharded", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    rows = {row["mode"]: row for row in bench.distributed_rows(2048, 8192, 8)}
    assert rows["gather"]["backward_macs"] == 8 * rows["sharded"]["backward_macs"]
    assert rows["gather"]["forward_macs"] == 8 * rows["sharded"]["forward_macs"]
    assert rows["sharded"]["gather_over_mode"] == 8.0  # W with W = 8
    text = bench.format_distributed_table(list(rows.values()), 2048, 8192, 8)
    assert "| sharded | 'sharded'" in text and "17.1799" in text and "8.5899" in text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--launch":
        raise SystemExit(launch(sys.argv[2]))
    raise SystemExit(f"usage: {sys.argv[0]} --launch OUT_DIR")

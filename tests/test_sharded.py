"""``gather_distributed="sharded"``: the global-batch loss with each rank computing its rows of S.

Three kinds of test, float64 throughout:

* in one process, with a communicator that plays one rank of W (the other ranks' zh handed in,
  no summing): the shares of all ranks add up to the global loss and terms, and the per-rank
  gradients make up the global gradient; the FLOP counter sees 1/W of gather mode's backward
  and P_local P_global D in the forward; no tensor larger than P_local x P_global is created;
* real gloo process groups of 2 and 4 ranks (``python this_file.py --worker``, as in
  ``test_distributed.py``, one launch per world size): loss, terms and gradients against one
  process on the whole batch and against gather mode, also with rank-dependent incoming
  gradients and three views; DDP parameter gradients; uneven inputs raise on every rank;
* a one-rank gloo group inside the test process: the sharded mode is the local mode, bitwise.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import reference.smi as ref
from smi_kernels import SMILoss, flops, memory, smi_loss, smi_loss_with_terms
from smi_kernels._torch import smi_torch, standardize_rows
from smi_kernels.sharded import smi_sharded

N_LOCAL = 4
IN_DIM = 10
OUT_DIM = 6
LAMBDA = 5e-3
EPS = 1e-4
TIMEOUT_S = 150
WORLDS = (2, 4)
RTOL = 1e-9


# ---------------------------------------------------------------- shared by workers and tests


def global_views(world: int, views: int = 2, seed: int = 1234) -> list[torch.Tensor]:
    """``views`` correlated embeddings of the whole batch (world * N_LOCAL, OUT_DIM)."""
    gen = torch.Generator().manual_seed(seed + world)
    z = torch.randn(world * N_LOCAL, OUT_DIM, generator=gen, dtype=torch.float64)
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


def local_rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * N_LOCAL : (rank + 1) * N_LOCAL]


def coefficients(rank: int) -> tuple[float, float, float]:
    """Rank-dependent weights of (loss, alignment, redundancy) in the backward."""
    return (1.0 + rank, 0.25 * rank, -0.5 if rank % 2 else 2.0)


# ---------------------------------------------------------------- the worker


def _terms_and_grads(views, mode, weights=(1.0, 0.0, 0.0)):
    leaves = [v.clone().requires_grad_() for v in views]
    out = smi_loss_with_terms(
        *leaves, lambda_param=LAMBDA, eps=EPS, backend="auto", gather_distributed=mode
    )
    (weights[0] * out.loss + weights[1] * out.alignment + weights[2] * out.redundancy).backward()
    return torch.stack([t.detach() for t in out]), [leaf.grad.clone() for leaf in leaves]


def _ddp_grads(world: int, rank: int, mode):
    from torch.nn.parallel import DistributedDataParallel

    x_a, x_b = (local_rows(x, rank) for x in global_inputs(world))
    model = DistributedDataParallel(make_encoder())
    z = model(torch.cat([x_a, x_b]))
    loss = SMILoss(LAMBDA, EPS, gather_distributed=mode)(z[:N_LOCAL], z[N_LOCAL:])
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def _error(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return "no error"


def worker(world: int, rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
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

        for mode in ("sharded", True):
            res[f"{mode}_terms"], res[f"{mode}_grads"] = _terms_and_grads([z_a, z_b], mode)
            _, res[f"{mode}_weighted_grads"] = _terms_and_grads(
                [z_a, z_b], mode, coefficients(rank)
            )
            res[f"{mode}_ddp"] = _ddp_grads(world, rank, mode)
        three = [local_rows(z, rank) for z in global_views(world, views=3, seed=7)]
        res["three_terms"], res["three_grads"] = _terms_and_grads(three, "sharded", (1, 1, 0))
        with torch.no_grad():
            res["no_grad_loss"] = smi_loss(z_a, z_b, gather_distributed="sharded")
        torch.save(res, out)
    finally:
        dist.destroy_process_group()


def launch(out_dir: str) -> int:
    """Fork every rank of every world size from one process and wait for them; the exit status.

    Each process pays about 6 s of CPU to import torch and torch._dynamo (DDP's constructor
    imports it); forking after the imports pays that once for all the ranks. Nothing has run on
    torch's thread pools before the fork, and each rank makes its own process group after it.
    """
    import torch._dynamo  # noqa: F401

    children = {}
    for world in WORLDS:
        for rank in range(world):
            pid = os.fork()
            if pid == 0:  # the rank
                code = 1
                try:
                    worker(world, rank, f"{out_dir}/store{world}", f"{out_dir}/w{world}r{rank}.pt")
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


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """Run every world size once (one launcher process, one forked process per rank)."""
    if not hasattr(os, "fork"):
        pytest.skip("the gloo workers are forked from one launcher (no os.fork here)")
    tmp = tmp_path_factory.mktemp("sharded")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--launch", str(tmp)],
        env=env,
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a hang is killed with every rank it forked
    )
    try:
        log = proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        pytest.fail(f"sharded workers hung for more than {TIMEOUT_S} s")
    assert proc.returncode == 0, f"the sharded workers failed:\n{log}"
    return tmp


@pytest.fixture(params=WORLDS, ids=lambda w: f"W{w}")
def job(request, launched: Path) -> tuple[int, list[dict]]:
    """``(world, per-rank results in rank order)`` of one world size."""
    world = request.param
    return world, [torch.load(launched / f"w{world}r{rank}.pt") for rank in range(world)]


def rel(out: torch.Tensor, want: torch.Tensor) -> float:
    return float((out - want).norm() / want.norm())


def reference_terms_and_grads(views, weights=(1.0, 0.0, 0.0)):
    """The single process on the whole batch: (L, L_align, L_red) and dL/dz of every view."""
    leaves = [v.clone().requires_grad_() for v in views]
    align, red = ref.smi_loss_terms(*leaves, eps=EPS)
    loss = align + LAMBDA * red
    (weights[0] * loss + weights[1] * align + weights[2] * red).backward()
    return torch.stack([loss, align, red]).detach(), [leaf.grad for leaf in leaves]


# ---------------------------------------------------------------- real process groups


def test_loss_terms_and_grads_equal_one_process_on_the_whole_batch(job):
    world, ranks = job
    terms, grads = reference_terms_and_grads(global_views(world))
    for rank, res in enumerate(ranks):
        assert rel(res["sharded_terms"], terms) < RTOL
        for got, want in zip(res["sharded_grads"], grads, strict=True):
            # the convention of gather mode: this rank's rows get world_size * dL/dz_local
            assert rel(got, world * local_rows(want, rank)) < RTOL
        assert rel(res["no_grad_loss"], terms[0]) < RTOL


def test_sharded_equals_gather_mode(job):
    _, ranks = job
    for res in ranks:
        assert rel(res["sharded_terms"], res["True_terms"]) < RTOL
        for key in ("grads", "weighted_grads"):
            for got, want in zip(res[f"sharded_{key}"], res[f"True_{key}"], strict=True):
                assert rel(got, want) < RTOL


def test_rank_dependent_incoming_gradients(job):
    """Ranks weighting (L, L_align, L_red) differently: every rank's rows get
    sum_r' c_r' d(L, L_align, L_red)/dz_local, as the gather's all-reduce gives."""
    world, ranks = job
    total = [sum(coefficients(r)[k] for r in range(world)) for k in range(3)]
    _, grads = reference_terms_and_grads(global_views(world), total)
    for rank, res in enumerate(ranks):
        for got, want in zip(res["sharded_weighted_grads"], grads, strict=True):
            assert rel(got, local_rows(want, rank)) < RTOL


def test_three_views(job):
    world, ranks = job
    terms, grads = reference_terms_and_grads(global_views(world, views=3, seed=7), (1, 1, 0))
    for rank, res in enumerate(ranks):
        assert rel(res["three_terms"], terms) < RTOL
        for got, want in zip(res["three_grads"], grads, strict=True):
            assert rel(got, world * local_rows(want, rank)) < RTOL


def test_ddp_grads_equal_one_process_and_gather_mode(job):
    world, ranks = job
    x_a, x_b = global_inputs(world)
    model = make_encoder()
    loss = smi_loss(model(x_a), model(x_b), lambda_param=LAMBDA, eps=EPS)
    model.zero_grad(set_to_none=True)
    loss.backward()
    expected = [p.grad for p in model.parameters()]
    for res in ranks:
        sharded_loss, sharded = res["sharded_ddp"]
        gather_loss, gathered = res["True_ddp"]
        assert rel(sharded_loss, loss.detach()) < RTOL
        assert rel(gather_loss, loss.detach()) < RTOL
        for got, other, want in zip(sharded, gathered, expected, strict=True):
            assert rel(got, want) < RTOL
            assert rel(got, other) < RTOL


def test_uneven_inputs_raise_on_every_rank(job):
    world, ranks = job
    for res in ranks:
        assert "same number of views, the same (N, D)" in res["uneven_n"]
        assert f"rank {world - 1}: 2 views of ({N_LOCAL - 1}, {OUT_DIM})" in res["uneven_n"]
        assert f"rank 0: 2 views of ({N_LOCAL}, {OUT_DIM + 1})" in res["uneven_d"]
        assert "rank 0: 3 views" in res["uneven_views"]


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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_rank_is_the_local_mode_bitwise(one_rank_group, dtype):
    views = [v.to(dtype) for v in global_views(1, views=3)]
    outs = {}
    for mode in (False, "sharded"):
        leaves = [v.clone().requires_grad_() for v in views]
        out = smi_loss_with_terms(*leaves, gather_distributed=mode)
        (out.loss + out.alignment).backward()
        outs[mode] = [*out, *(leaf.grad for leaf in leaves)]
    for local, sharded in zip(outs[False], outs["sharded"], strict=True):
        assert torch.equal(local, sharded)


# ---------------------------------------------------------------- one rank of W, simulated


class OneRankOf:
    """Plays rank ``rank`` of a group whose zh are given: the all-gather returns them (with this
    rank's own zh in its place); the all-reduce returns this rank's values alone."""

    def __init__(self, rank: int, zh_all: torch.Tensor) -> None:
        self.rank = rank
        self.world_size = zh_all.shape[0]
        self.zh_all = zh_all

    def all_gather(self, local: torch.Tensor) -> torch.Tensor:
        out = self.zh_all.clone()
        out[self.rank] = local
        return out

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        return values


def rank_views(views: list[torch.Tensor], rank: int, n: int) -> list[torch.Tensor]:
    return [v[rank * n : (rank + 1) * n] for v in views]


def every_zh(views: list[torch.Tensor], world: int, n: int) -> torch.Tensor:
    """(W, V, n, D): the standardised rows of every rank, as the all-gather would deliver."""
    return torch.stack(
        [standardize_rows(torch.stack(rank_views(views, r, n)))[0] for r in range(world)]
    )


@pytest.mark.parametrize("world, v_count", [(1, 2), (2, 2), (3, 3), (4, 2)])
def test_shares_add_up_to_the_global_loss_and_gradient(world, v_count):
    n = 3
    gen = torch.Generator().manual_seed(world * 10 + v_count)
    base = torch.randn(world * n, 9, generator=gen, dtype=torch.float64)
    views = [base + 0.4 * torch.randn(base.shape, generator=gen, dtype=torch.float64)]
    views += [base + 0.4 * torch.randn(base.shape, generator=gen, dtype=torch.float64)]
    views += [torch.randn(base.shape, generator=gen, dtype=torch.float64)] * (v_count - 2)
    zh_all = every_zh(views, world, n)
    weights = (1.0, 0.3, -2.0)
    total = torch.zeros(3, dtype=torch.float64)
    grads: list[list[torch.Tensor]] = [[] for _ in views]
    for rank in range(world):
        leaves = [v.clone().requires_grad_() for v in rank_views(views, rank, n)]
        share = smi_sharded(leaves, LAMBDA, EPS, comm=OneRankOf(rank, zh_all))
        (weights[0] * share[0] + weights[1] * share[1] + weights[2] * share[2]).backward()
        total += share.detach()
        for k, leaf in enumerate(leaves):
            grads[k].append(leaf.grad)
    terms, expected = reference_terms_and_grads(views, weights)
    # each rank's share of L_align is its positives; L_red's shares add up to L_red
    assert rel(total, terms) < 1e-12
    for got, want in zip(grads, expected, strict=True):
        assert rel(torch.cat(got), want) < 1e-12


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-2)]
)
def test_lower_precision_inputs(dtype, tol):
    """Half inputs are standardised and multiplied in float32 (zh is gathered in float32); the
    gradients come back in the input dtype. Against the float64 reference (SPEC section 6)."""
    world, n = 3, 4
    gen = torch.Generator().manual_seed(11)
    base = torch.randn(world * n, 24, generator=gen, dtype=torch.float64)
    views = [base + 0.5 * torch.randn(base.shape, generator=gen, dtype=torch.float64)]
    views.append(base + 0.5 * torch.randn(base.shape, generator=gen, dtype=torch.float64))
    views = [v.to(dtype) for v in views]
    zh_all = every_zh([v.float() for v in views], world, n)  # as each rank computes them
    total = torch.zeros(3)
    grads: list[list[torch.Tensor]] = [[], []]
    for rank in range(world):
        leaves = [v.clone().requires_grad_() for v in rank_views(views, rank, n)]
        share = smi_sharded(leaves, LAMBDA, EPS, comm=OneRankOf(rank, zh_all))
        assert share.dtype == torch.float32
        share[0].backward()
        total += share.detach()
        for k, leaf in enumerate(leaves):
            assert leaf.grad.dtype == dtype
            grads[k].append(leaf.grad)
    terms, expected = reference_terms_and_grads([v.double() for v in views])
    assert rel(total.double(), terms) < tol
    for got, want in zip(grads, expected, strict=True):
        assert rel(torch.cat(got).double(), want) < tol


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


def _one_rank(world: int, v_count: int, n: int, d: int, rank: int = 1):
    gen = torch.Generator().manual_seed(5)
    views = [torch.randn(world * n, d, generator=gen, dtype=torch.float64) for _ in range(v_count)]
    leaves = [v.clone().requires_grad_() for v in rank_views(views, rank, n)]
    return views, leaves, OneRankOf(rank, every_zh(views, world, n))


def test_flop_counter_per_rank_work():
    world, v_count, n, d = 4, 2, 8, 16
    views, leaves, comm = _one_rank(world, v_count, n, d)
    with FlopCounterMode(display=False) as forward:
        out = smi_sharded(leaves, LAMBDA, EPS, comm=comm)
    with FlopCounterMode(display=False) as backward:
        out[0].backward()
    sharded = (forward.get_total_flops() // 2, backward.get_total_flops() // 2)
    assert sharded == flops.distributed_macs(n, d, world, v_count, mode="sharded")

    # gather mode on the PyTorch path: one process on the whole (gathered) batch
    whole = [v.clone().requires_grad_() for v in views]
    with FlopCounterMode(display=False) as forward:
        out = smi_torch(whole, LAMBDA, EPS)
    with FlopCounterMode(display=False) as backward:
        out[0].backward()
    gather = (forward.get_total_flops() // 2, backward.get_total_flops() // 2)
    p_global = world * v_count * n
    assert gather == (flops.naive_forward_macs(world * n, d, v_count), p_global**2 * d)

    # backward: exactly 1/W of gather mode's G_sym Z (of the fused formula too)
    assert world * sharded[1] == gather[1]
    assert world * sharded[1] == flops.fused_backward_macs(world * n, d, v_count)
    # forward: 1/W of the full square S; 2/W of the fused triangle (band entries between two
    # ranks are formed on both)
    assert world * sharded[0] == p_global**2 * d
    assert world * sharded[0] == 2 * flops.fused_forward_macs(world * n, d, v_count)


def test_no_tensor_larger_than_the_band():
    world, v_count, n, d = 4, 2, 5, 7
    p_local, p_global = v_count * n, world * v_count * n
    _, leaves, comm = _one_rank(world, v_count, n, d)
    saved: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(t.shape))
        return t

    with _LargestOutput() as largest, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        smi_sharded(leaves, LAMBDA, EPS, comm=comm)[0].backward()
    assert largest.largest == p_local * p_global  # the G band; S is formed n x P_global at a time
    assert (p_local, p_global) in saved
    assert all(math.prod(shape) <= p_local * p_global for shape in saved)
    estimate = memory.sharded_estimate(n, d, v_count, world, torch.float64, need_grad=True)
    assert estimate.gradient_matrix == 8 * p_local * p_global


# ---------------------------------------------------------------- API and cost model


def test_mode_validation():
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="'sharded', got 'shard'"):
        SMILoss(gather_distributed="shard")
    with pytest.raises(TypeError, match="bool or the string 'sharded', got int"):
        smi_loss(z_a, z_b, gather_distributed=1)
    for call in (
        lambda: SMILoss(gather_distributed="sharded", backend="triton"),
        lambda: smi_loss(z_a, z_b, gather_distributed="sharded", backend="triton"),
        lambda: smi_loss_with_terms(z_a, z_b, gather_distributed="sharded", backend="triton"),
    ):
        with pytest.raises(ValueError, match="runs on the PyTorch path for now"):
            call()
    with pytest.raises(RuntimeError, match=r"'sharded' needs an initialised torch\.distributed"):
        SMILoss(gather_distributed="sharded")(z_a, z_b)
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
    assert sharded == ((2 * n) * (2 * world * n) * d,) * 2
    assert 4 * sum(gather) == 3 * world * sum(sharded)  # forward + backward: 3W/4 times less
    with pytest.raises(ValueError, match="mode must be one of"):
        flops.distributed_macs(n, d, world, mode="ring")


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
    assert rows["gather"]["forward_macs"] == 4 * rows["sharded"]["forward_macs"]
    assert rows["sharded"]["gather_over_mode"] == 6.0  # 3W/4 with W = 8
    text = bench.format_distributed_table(list(rows.values()), 2048, 8192, 8)
    assert "| sharded | 'sharded'" in text and "17.1799" in text


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--launch":
        raise SystemExit(launch(sys.argv[2]))
    raise SystemExit(f"usage: {sys.argv[0]} --launch OUT_DIR")

"""``gather_distributed`` and DDP with two real processes (gloo on the CPU, float64).

The file is its own worker: the module-scoped fixture starts ``python this_file.py --worker``
twice (rank 0 and rank 1), rendezvous through a ``file://`` store, with a hard timeout so a hang
fails the test instead of blocking CI. Each rank computes

* the default-mode loss on its local batch, and the local-loss input gradients;
* the ``gather_distributed=True`` loss on its local batch, and the gradients that reach its
  local rows (the gather's backward returns ``world_size * dL/dz_local``);
* one DDP backward of an MLP encoder with ``gather_distributed=True``, and one with the default,

and saves them; the tests compare them with one process that sees the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import EPS, LAMBDA, join_gloo, smi_loss_terms
from helpers import relative_error as rel
from torch import nn

from smi_kernels import SMILoss, smi_loss
from smi_kernels import reference as ref

WORLD = 2
N_LOCAL = 6
IN_DIM = 10
OUT_DIM = 12
TIMEOUT_S = 90
RTOL = 1e-9


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of the encoder (x_a, x_b) and two embeddings (z_a, z_b) for the whole batch."""
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(WORLD * N_LOCAL, IN_DIM, generator=gen, dtype=torch.float64)
    x_a = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x_b = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    z = torch.randn(WORLD * N_LOCAL, OUT_DIM, generator=gen, dtype=torch.float64)
    z_a = z + 0.5 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
    z_b = z + 0.5 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
    return x_a, x_b, z_a, z_b


def make_encoder() -> nn.Module:
    """The same small MLP on every rank and in the single-process reference."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, 16), nn.Tanh(), nn.Linear(16, OUT_DIM)).double()


def local_rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * N_LOCAL : (rank + 1) * N_LOCAL]


def encoder_grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def ddp_grads(model: nn.Module, loss_fn: SMILoss, x_a: torch.Tensor, x_b: torch.Tensor):
    """One forward (both views in one call, so DDP sees one forward per backward) + backward."""
    n = x_a.shape[0]
    z = model(torch.cat([x_a, x_b]))
    loss = loss_fn(z[:n], z[n:])
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    join_gloo(store, rank, WORLD, timeout_s=60)
    try:
        x_a, x_b, z_a, z_b = global_batch()
        x_a, x_b = local_rows(x_a, rank), local_rows(x_b, rank)
        results: dict[str, object] = {"rank": rank}

        # (a) default mode: the local batch only
        za = local_rows(z_a, rank).clone().requires_grad_()
        zb = local_rows(z_b, rank).clone().requires_grad_()
        loss = smi_loss(za, zb, lambda_param=LAMBDA, eps=EPS, backend="torch")
        loss.backward()
        results["local_loss"] = loss.detach()
        results["local_grads"] = (za.grad.clone(), zb.grad.clone())

        # (b) gathered: the global batch, the gradient of this rank's rows
        za = local_rows(z_a, rank).clone().requires_grad_()
        zb = local_rows(z_b, rank).clone().requires_grad_()
        gathered = SMILoss(LAMBDA, EPS, gather_distributed=True, backend="torch")
        out_terms = gathered.forward_with_terms(za, zb)
        out_terms.loss.backward()
        results["gather_loss"] = out_terms.loss.detach()
        results["gather_terms"] = (out_terms.alignment.detach(), out_terms.redundancy.detach())
        results["gather_grads"] = (za.grad.clone(), zb.grad.clone())

        # (b) DDP with gather_distributed=True, (c) DDP in the default mode
        for key, loss_fn in (
            ("ddp_gather", gathered),
            ("ddp_local", SMILoss(LAMBDA, EPS, backend="torch")),
        ):
            model = DistributedDataParallel(make_encoder())
            loss, grads = ddp_grads(model, loss_fn, x_a, x_b)
            results[f"{key}_loss"] = loss
            results[f"{key}_grads"] = grads
        torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run the two-rank job once; the per-rank results, in rank order."""
    tmp = tmp_path_factory.mktemp("dist")
    store = tmp / "store"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(rank), str(store), str(tmp / f"r{rank}.pt")],
            env=env,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD)
    ]
    logs = []
    try:
        for proc in procs:
            try:
                logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
            except subprocess.TimeoutExpired:
                pytest.fail(f"distributed worker hung for more than {TIMEOUT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{log}"
    return [torch.load(tmp / f"r{rank}.pt") for rank in range(WORLD)]


def test_default_mode_is_the_local_loss(ranks):
    _, _, z_a, z_b = global_batch()
    for rank, res in enumerate(ranks):
        za = local_rows(z_a, rank).clone().requires_grad_()
        zb = local_rows(z_b, rank).clone().requires_grad_()
        expected = ref.smi_loss(za, zb, lambda_param=LAMBDA, eps=EPS)
        expected.backward()
        assert rel(res["local_loss"], expected.detach()) < RTOL
        assert rel(res["local_grads"][0], za.grad) < RTOL
        assert rel(res["local_grads"][1], zb.grad) < RTOL
    # the two ranks' batches differ, so their losses must too (not a gathered loss)
    assert not torch.allclose(ranks[0]["local_loss"], ranks[1]["local_loss"])


def test_gathered_loss_is_the_global_loss(ranks):
    _, _, z_a, z_b = global_batch()
    za, zb = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    align, red = smi_loss_terms(za, zb, eps=EPS)
    expected = align + LAMBDA * red
    expected.backward()
    for rank, res in enumerate(ranks):
        assert rel(res["gather_loss"], expected.detach()) < RTOL
        assert rel(res["gather_terms"][0], align.detach()) < RTOL
        assert rel(res["gather_terms"][1], red.detach()) < RTOL
        # documented convention: the rows of this rank get world_size * dL/dz_local
        assert rel(res["gather_grads"][0], WORLD * local_rows(za.grad, rank)) < RTOL
        assert rel(res["gather_grads"][1], WORLD * local_rows(zb.grad, rank)) < RTOL


def test_ddp_gathered_grads_equal_one_process_on_the_whole_batch(ranks):
    x_a, x_b, _, _ = global_batch()
    model = make_encoder()
    expected_loss = smi_loss(model(x_a), model(x_b), lambda_param=LAMBDA, eps=EPS)
    expected = encoder_grads(model, expected_loss)
    for res in ranks:
        assert rel(res["ddp_gather_loss"], expected_loss.detach()) < RTOL
        for got, want in zip(res["ddp_gather_grads"], expected, strict=True):
            assert rel(got, want) < RTOL


def test_ddp_default_grads_are_the_mean_of_the_local_grads(ranks):
    x_a, x_b, _, _ = global_batch()
    per_rank = []
    for rank in range(WORLD):
        model = make_encoder()
        xa, xb = local_rows(x_a, rank), local_rows(x_b, rank)
        loss = smi_loss(model(xa), model(xb), lambda_param=LAMBDA, eps=EPS)
        per_rank.append(encoder_grads(model, loss))
    expected = [torch.stack(gs).mean(0) for gs in zip(*per_rank, strict=True)]
    # the mean differs from any one rank's gradient (so the averaging is really checked)
    assert rel(per_rank[0][0], expected[0]) > 1e-3
    for res in ranks:
        for got, want in zip(res["ddp_local_grads"], expected, strict=True):
            assert rel(got, want) < RTOL


def test_gather_without_process_group_is_the_local_loss():
    """As lightly's losses do: with no process group the global batch is the local one."""
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    z_a = torch.randn(4, 8, requires_grad=True)
    z_b = torch.randn(4, 8)
    local = SMILoss()(z_a, z_b)
    (grad_local,) = torch.autograd.grad(local, z_a)
    gathered = SMILoss(gather_distributed=True)(z_a, z_b)
    (grad_gathered,) = torch.autograd.grad(gathered, z_a)
    assert torch.equal(gathered, local) and torch.equal(grad_gathered, grad_local)
    assert torch.equal(smi_loss(z_a, z_b, gather_distributed=True), local)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} --worker RANK STORE_FILE OUT_FILE")

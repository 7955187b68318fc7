"""Messages for plausible mistakes, and the limits the package enforces before it allocates.

Views packed into one argument; double backward (the message names something the wheel ships,
and that something is twice differentiable); ``TRITON_INTERPRET=1`` set after triton was
imported; a PyTorch-path request larger than the memory available.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import randn

import smi_kernels.reference as packaged
from reference import smi_loss as reference_loss
from smi_kernels import SMILoss, memory, smi_loss, smi_loss_with_terms

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


# -- views packed into one argument ----------------------------------------------------------------

APIS = {
    "smi_loss": smi_loss,
    "smi_loss_with_terms": smi_loss_with_terms,
    "SMILoss": SMILoss(),
    "reference": packaged.smi_loss,
}


@pytest.mark.parametrize("api", list(APIS.values()), ids=list(APIS))
@pytest.mark.parametrize("pack", ["list", "tuple", "stacked"])
def test_views_packed_in_one_argument(api, pack: str) -> None:
    z_a, z_b = randn(4, 6), randn(4, 6, seed=1)
    packed = {"list": [z_a, z_b], "tuple": (z_a, z_b), "stacked": torch.stack([z_a, z_b])}[pack]
    with pytest.raises(ValueError, match=r"at least two views, got 1") as info:
        api(packed)
    message = str(info.value)
    assert "separate arguments" in message
    assert "loss_fn(*views)" in message
    if pack == "stacked":
        assert "(2, 4, 6)" in message and "z.unbind(0)" in message
    else:
        assert f"one {pack} of 2 items" in message


def test_list_next_to_a_view_names_the_calling_convention() -> None:
    with pytest.raises(TypeError, match=r"view 1 must be a torch\.Tensor, got list.*loss_fn"):
        smi_loss(randn(4, 6), [randn(4, 6), randn(4, 6)])


def test_one_plain_view_gets_no_packing_hint() -> None:
    with pytest.raises(ValueError, match=r"at least two views, got 1$"):
        smi_loss(randn(4, 6))


# -- double backward points to something the wheel ships -------------------------------------------


def test_double_backward_message_names_a_shipped_function() -> None:
    a = randn(6, 8, dtype=F64).requires_grad_()
    b = randn(6, 8, dtype=F64, seed=1)
    with pytest.raises(RuntimeError, match="double backward") as info:
        torch.autograd.grad(smi_loss(a, b), a, create_graph=True)
    named = re.search(r"use (smi_kernels(?:\.\w+)+)\.(\w+)", str(info.value))
    assert named is not None, str(info.value)
    module = importlib.import_module(named.group(1))
    assert module.__file__ is not None and Path(module.__file__).parent == ROOT / "smi_kernels"
    assert callable(getattr(module, named.group(2)))


def test_packaged_reference_matches_the_package_and_the_repository_reference() -> None:
    views = [randn(7, 11, dtype=F64, seed=k) for k in range(3)]
    for lambda_param, eps in ((5e-3, 1e-4), (0.3, 0.05)):
        out = packaged.smi_loss_with_terms(*views, lambda_param=lambda_param, eps=eps)
        fast = smi_loss_with_terms(*views, lambda_param=lambda_param, eps=eps, backend="torch")
        for got, want in zip(out, fast, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        expected = reference_loss(*views, lambda_param=lambda_param, eps=eps)
        torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=0)


def test_packaged_reference_is_twice_differentiable() -> None:
    a = randn(5, 7, dtype=F64).requires_grad_()
    b = randn(5, 7, dtype=F64, seed=1).requires_grad_()
    # a large eps keeps m smooth on the scale of gradcheck's finite differences
    assert torch.autograd.gradgradcheck(lambda x, y: packaged.smi_loss(x, y, eps=0.1), (a, b))
    (grad,) = torch.autograd.grad(packaged.smi_loss(a, b), a, create_graph=True)
    grad.pow(2).sum().backward()
    assert b.grad is not None and bool(torch.isfinite(b.grad).all())


def test_packaged_reference_validates_like_the_package() -> None:
    with pytest.raises(ValueError, match=r"eps must be finite and > 0"):
        packaged.smi_loss(randn(4, 6), randn(4, 6), eps=0.0)
    with pytest.raises(ValueError, match=r"same shape"):
        packaged.smi_loss(randn(4, 6), randn(5, 6))


# -- TRITON_INTERPRET set after triton was imported ------------------------------------------------

LATE_INTERPRETER = """
import os, sys
import torch
{before}
os.environ["TRITON_INTERPRET"] = "1"
from smi_kernels import smi_loss
try:
    smi_loss(torch.randn(8, 16), torch.randn(8, 16), backend="triton")
except RuntimeError as error:
    print("RAISED", error)
else:
    print("RAN")
"""


@pytest.mark.parametrize(
    "before",
    ["import triton", "import smi_kernels._triton.op"],
    ids=["triton-imported", "kernels-imported"],
)
def test_interpreter_set_after_triton_import_is_explained(before: str) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = textwrap.dedent(LATE_INTERPRETER.format(before=before))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "RAISED" in proc.stdout, proc.stdout + proc.stderr
    assert "TRITON_INTERPRET=1 was set after triton was imported" in proc.stdout
    assert "before triton is first imported" in proc.stdout


def test_interpreter_set_before_import_is_not_flagged() -> None:
    pytest.importorskip("triton")
    import smi_kernels.loss as loss_module

    if not loss_module.interpreter_enabled():
        pytest.skip("this session runs the kernels compiled (a GPU), not interpreted")
    assert not loss_module.interpreter_set_too_late()


# -- the PyTorch path refuses what cannot fit, before allocating -----------------------------------


def test_small_requests_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # a training step of the usual size does not ask the OS (or the GPU) what is free
    def unexpected() -> int:
        raise AssertionError("asked for the available memory")

    monkeypatch.setattr(memory, "_host_available_bytes", unexpected)
    smi_loss(randn(256, 128).requires_grad_(), randn(256, 128, seed=1)).backward()


def test_cpu_available_bytes_is_known() -> None:
    available = memory.available_bytes(torch.device("cpu"))
    if sys.platform.startswith("linux"):
        assert available is not None
    if available is not None:
        assert 0 < available < 2**60
    assert memory.available_bytes(torch.device("meta")) is None


@pytest.mark.parametrize("need_grad", [True, False])
def test_cpu_request_larger_than_memory_is_refused_before_allocating(
    monkeypatch: pytest.MonkeyPatch, need_grad: bool
) -> None:
    # N = 40,000, D = 64: the PyTorch path would ask the allocator for 25.6 GB and die there.
    # Here the available memory is pretended to be 16 GiB; the views themselves are small
    # enough to build (2 x 40,000 x 64 float32 = 20 MB)
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: 16 * 2**30)
    allocations: list[tuple[int, ...]] = []

    def no_mm(*args, **kwargs):
        allocations.append(tuple(args[0].shape))
        raise AssertionError("the forward started")

    monkeypatch.setattr(torch, "mm", no_mm)
    z_a = randn(40_000, 64).requires_grad_(need_grad)
    z_b = randn(40_000, 64, seed=1)
    with pytest.raises(torch.OutOfMemoryError) as info:
        smi_loss(z_a, z_b)
    message = str(info.value)
    assert "forward (PyTorch path) needs" in message and "16.00 GiB are free" in message
    assert "2 views of (40000, 64)" in message and "smi_kernels.memory" in message
    needed = float(re.search(r"needs ([0-9.]+) GiB", message).group(1))
    assert needed == pytest.approx(59.7 if need_grad else 35.8, abs=0.1)
    assert not allocations


def test_cpu_request_that_fits_is_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "TORCH_PATH_CHECK_FROM", 0)  # check even this small request
    estimate = memory.torch_estimate(64, 32, 2, torch.float32, need_grad=True)
    needed = estimate.stacked_input + estimate.forward_new
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: needed)
    smi_loss(randn(64, 32).requires_grad_(), randn(64, 32, seed=1)).backward()
    monkeypatch.setattr(memory, "_host_available_bytes", lambda: needed - 1)
    with pytest.raises(torch.OutOfMemoryError):
        smi_loss(randn(64, 32).requires_grad_(), randn(64, 32, seed=1))


def test_memory_model_of_the_pytorch_path_matches_what_it_allocates() -> None:
    # the forward's live storage, followed op by op (the benchmark's meter), against the model,
    # where the N x N terms dominate (as they do wherever the check refuses anything); the
    # model leaves out a few N x D temporaries of the positive pairs
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import harness

    n, d = 256, 16
    z_a, z_b = randn(n, d).requires_grad_(), randn(n, d, seed=1).requires_grad_()
    peak = harness.measure_live_peak(
        lambda a, b: smi_loss(a, b, backend="torch"), z_a, z_b, backward=False
    )
    estimate = memory.torch_estimate(n, d, 2, torch.float32, need_grad=True)
    modelled = estimate.stacked_input + estimate.forward_new
    assert 0.9 * modelled <= peak <= 1.05 * modelled, (peak, modelled)

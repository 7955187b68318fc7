"""Mixed precision: SMI under autocast, and half-precision inputs without it.

Under autocast the loss behaves like ``torch.matmul``: float32 views are computed in the autocast
dtype, the loss comes back as a float32 scalar and the gradients of float32 leaves as float32.
Half inputs (bfloat16/float16) without autocast give a float32 loss and gradients in the input
dtype. Tolerance (docs/design.md, section 6): 2e-2 relative against float32/float64.
"""

from __future__ import annotations

import pytest
import torch
from helpers import BACKENDS, needs_gpu, relative_error
from torch import nn

from smi_kernels import SMILoss, smi_loss
from smi_kernels import reference as ref

AMP_RTOL = 2e-2
N, D, IN_DIM = 32, 64, 48


def views(device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 views of one batch, correlated as augmentations are (rho about 0.8)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    z_a = x + 0.5 * torch.randn(N, D, generator=gen)
    z_b = x + 0.5 * torch.randn(N, D, generator=gen)
    return z_a.to(device), z_b.to(device)


def encoder_batch(device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    enc = nn.Linear(IN_DIM, D).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(N, IN_DIM, generator=gen)
    x_a = x + 0.3 * torch.randn(N, IN_DIM, generator=gen)
    x_b = x + 0.3 * torch.randn(N, IN_DIM, generator=gen)
    return enc, x_a.to(device), x_b.to(device)


def check_autocast_leaves(device: str, amp_dtype: torch.dtype, backend: str) -> None:
    z_a, z_b = views(device)
    leaves = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_()]
    loss_fn = SMILoss(backend=backend)
    expected = loss_fn(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves)

    with torch.autocast(device, dtype=amp_dtype):
        out = loss_fn.forward_with_terms(*leaves)
    assert out.loss.dtype == torch.float32
    assert out.loss.shape == ()
    assert out.alignment.dtype == torch.float32
    assert out.redundancy.dtype == torch.float32
    grads = torch.autograd.grad(out.loss, leaves)
    for grad, want in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        assert torch.isfinite(grad).all()
        assert relative_error(grad, want) < AMP_RTOL
    assert relative_error(out.loss, expected) < AMP_RTOL
    # the computation really ran in the low precision: not bitwise the float32 result
    assert not torch.equal(out.loss.detach(), expected.detach())


def check_autocast_encoder(device: str, amp_dtype: torch.dtype, backend: str) -> None:
    enc, x_a, x_b = encoder_batch(device)
    params = list(enc.parameters())
    loss_fn = SMILoss(backend=backend)
    expected = loss_fn(enc(x_a), enc(x_b))
    expected_grads = torch.autograd.grad(expected, params)

    with torch.autocast(device, dtype=amp_dtype):
        z_a, z_b = enc(x_a), enc(x_b)
        assert z_a.dtype == amp_dtype  # autocast runs the Linear in the low precision
        loss = loss_fn(z_a, z_b)
    assert loss.dtype == torch.float32
    assert loss.shape == ()
    grads = torch.autograd.grad(loss, params)
    assert relative_error(loss, expected) < AMP_RTOL
    for grad, want in zip(grads, expected_grads, strict=True):
        assert grad.dtype == torch.float32
        assert relative_error(grad, want) < AMP_RTOL


def check_half_inputs(device: str, dtype: torch.dtype, backend: str) -> None:
    z_a, z_b = views(device)
    a = z_a.to(dtype).requires_grad_()
    b = z_b.to(dtype).requires_grad_()
    loss = smi_loss(a, b, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert a.grad.dtype == dtype and b.grad.dtype == dtype

    # against float64 on the same (rounded) inputs
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    expected = ref.smi_loss(a64, b64)
    expected.backward()
    assert relative_error(loss, expected) < AMP_RTOL
    assert relative_error(a.grad, a64.grad) < AMP_RTOL
    assert relative_error(b.grad, b64.grad) < AMP_RTOL


def test_cpu_autocast_bf16_float32_leaves():
    check_autocast_leaves("cpu", torch.bfloat16, "torch")


def test_cpu_autocast_bf16_through_linear_encoder():
    check_autocast_encoder("cpu", torch.bfloat16, "torch")


def test_cpu_autocast_keeps_float64():
    z_a, z_b = views()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = smi_loss(z_a.double(), z_b.double())
    assert loss.dtype == torch.float64
    assert relative_error(loss, ref.smi_loss(z_a.double(), z_b.double())) < 1e-12


def test_cpu_autocast_error_comes_from_the_encoder_not_the_loss():
    """With the same bfloat16 embeddings, the loss under autocast adds little error of its own."""
    enc, x_a, x_b = encoder_batch()
    params = list(enc.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_a, z_b = enc(x_a), enc(x_b)
        loss = smi_loss(z_a, z_b)
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    expected = ref.smi_loss(z_a.double(), z_b.double())
    expected_grads = torch.autograd.grad(expected, params)
    assert relative_error(loss, expected) < 1e-3
    for grad, want in zip(grads, expected_grads, strict=True):
        assert relative_error(grad, want) < 5e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_half_inputs_without_autocast(dtype):
    check_half_inputs("cpu", dtype, "torch")


AMP_DTYPES = [torch.bfloat16, torch.float16]


def on_gpu(test):
    """A GPU test, over both backends."""
    for mark in (pytest.mark.parametrize("backend", BACKENDS), needs_gpu, pytest.mark.gpu):
        test = mark(test)
    return test


@on_gpu
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES)
def test_cuda_autocast_float32_leaves(backend, amp_dtype):
    check_autocast_leaves("cuda", amp_dtype, backend)


@on_gpu
@pytest.mark.parametrize("amp_dtype", AMP_DTYPES)
def test_cuda_autocast_through_linear_encoder(backend, amp_dtype):
    check_autocast_encoder("cuda", amp_dtype, backend)


@on_gpu
@pytest.mark.parametrize("dtype", AMP_DTYPES)
def test_cuda_half_inputs_without_autocast(backend, dtype):
    check_half_inputs("cuda", dtype, backend)

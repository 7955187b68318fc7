"""Bitwise determinism of the loss, its two terms and the input gradients.

* Run to run: 20 calls in one process give identical bytes, on the PyTorch path (CPU) and on the
  Triton path (under the interpreter without a GPU), for every dtype.
* Process to process: the same computation in two fresh Python processes, same seed, gives
  identical bytes (no dependence on addresses, allocation order, hash seeds or first-call
  state such as kernel compilation or autotuning).
* On a GPU (marked ``gpu``, skipped without CUDA): 100 calls on each path. The Triton path reduces
  its per-program partial sums in a fixed order (no float atomics), so it must be bitwise
  reproducible there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import BACKENDS, CUDA, DTYPES

from smi_kernels import smi_loss_with_terms

#: (V, N, D) per backend: the interpreter is slow, so its problem is small but spans several
#: tiles of the Gram (BLOCK 16) and several feature chunks
SHAPES = {"torch": (3, 48, 96), "triton": (3, 11, 40)}


def offset_views(shape, dtype, seed, device="cpu") -> list[torch.Tensor]:
    """Views with a common offset and a near-duplicate pair: the numerically busy paths."""
    v, n, d = shape
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=gen, dtype=torch.float64)
    base[1] = base[0] + 1e-3 * torch.randn(d, generator=gen, dtype=torch.float64)
    views = []
    for _ in range(v):
        view = base + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64) + 3.0
        views.append(view.to(device=device, dtype=dtype).requires_grad_())
    return views


def fingerprint(outputs, grads) -> bytes:
    """The raw bytes of (L, L_align, L_red) and of every gradient."""
    tensors = [t.detach().reshape(-1) for t in outputs] + [g.reshape(-1) for g in grads]
    return b"".join(t.contiguous().cpu().view(torch.uint8).numpy().tobytes() for t in tensors)


def compute(views, backend: str) -> bytes:
    out = smi_loss_with_terms(*views, backend=backend)
    grads = torch.autograd.grad(out.loss, views)
    assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)
    return fingerprint([out.loss, out.alignment, out.redundancy], grads)


def repeated(backend: str, dtype: torch.dtype, calls: int, shape=None, device="cpu") -> None:
    views = offset_views(shape or SHAPES[backend], dtype, seed=1234, device=device)
    first = compute(views, backend)
    for call in range(1, calls):
        again = compute(views, backend)
        assert again == first, f"call {call} differs from call 0 ({backend}, {dtype}, {device})"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_twenty_calls_bitwise_identical(backend: str, dtype: torch.dtype) -> None:
    repeated(backend, dtype, calls=20)


def test_fingerprint_sees_a_one_ulp_change() -> None:
    """The comparison is of bits: one ulp in one gradient entry changes the fingerprint."""
    views = offset_views(SHAPES["torch"], torch.float32, seed=1234)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = [g.clone() for g in torch.autograd.grad(out.loss, views)]
    before = fingerprint([out.loss], grads)
    grads[2][5, 7] = torch.nextafter(grads[2][5, 7], torch.tensor(float("inf")))
    assert fingerprint([out.loss], grads) != before


CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests"]
    from tests.test_determinism import DTYPES, SHAPES, compute, offset_views

    backend = sys.argv[1]
    digests = {}
    for dtype in DTYPES:
        views = offset_views(SHAPES[backend], dtype, seed=1234)
        digests[str(dtype)] = hashlib.sha256(compute(views, backend)).hexdigest()
    print(json.dumps(digests))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_fresh_processes_bitwise_identical(backend: str) -> None:
    """Both children run every dtype; they start together (each pays its own imports)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "SMI_KERNELS_AUTOTUNE"}
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, backend, root],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for child in children:
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert set(results[0]) == {str(dtype) for dtype in DTYPES}
    assert results[0] == results[1]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_hundred_calls_bitwise_identical_on_gpu(backend: str, dtype: torch.dtype) -> None:
    # several tiles of every kernel, with ragged edges
    repeated(backend, dtype, calls=100, shape=(3, 300, 520), device="cuda")

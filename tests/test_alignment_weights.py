"""The alignment weights of the backward, pair by pair: V = 3 and 4 views of unequal agreement.

The gradient of row (u, i) takes ``a^{uv}_i zh^v_i`` from every partner view v != u, with the
weight ``a^{uv}_i = dL_align / drho^{uv}_i`` of its own pair. Views that agree with view 0 to
different degrees (noise 0.2, 0.5, 1.0, 2.0 around a common signal) give every pair its own
alignment term and weights, so that a row weighted with another pair's ``a`` (partner view 0
with the weight of (0, 1), say) moves the gradient. Both backends, float64, against the
reference: the terms, and the gradients of L_align alone and of a combination of the three
outputs with unequal incoming gradients (c_align != c_red != 1).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import BACKENDS, DEVICE, EPS, LAMBDA, TOLERANCE, relative_error, smi_loss_terms

from smi_kernels import smi_loss_with_terms
from smi_kernels.reference import standardize

NOISE = (0.2, 0.5, 1.0, 2.0)
#: incoming gradients of (L, L_align, L_red)
WEIGHTS = (0.3, -2.0, 7.0)
TOL = TOLERANCE[torch.float64]


def agreeing_views(v: int, n: int, d: int, seed: int) -> list[torch.Tensor]:
    """``v`` float64 views of one signal, view u with noise ``NOISE[u]``."""
    gen = torch.Generator().manual_seed(seed)
    signal = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return [
        (signal + NOISE[u] * torch.randn(n, d, generator=gen, dtype=torch.float64))
        .to(DEVICE)
        .requires_grad_()
        for u in range(v)
    ]


def pair_correlations(views: list[torch.Tensor]) -> list[float]:
    """The mean rho^{uv} of each pair u < v."""
    zh = [standardize(view.detach().cpu()) for view in views]
    pairs = itertools.combinations(range(len(zh)), 2)
    return [float((zh[a] * zh[b]).sum(-1).mean()) for a, b in pairs]


# the interpreter evaluates both sides of tl.where: 0 / 0 in a branch that is not taken
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("v", [3, 4])
@pytest.mark.parametrize("backend", BACKENDS)
def test_alignment_weights_of_every_pair(backend: str, v: int) -> None:
    if backend == "triton" and DEVICE == "cuda":
        pytest.skip("float64 runs on the PyTorch path on the GPU")
    views = agreeing_views(v, 6, 16, seed=v)
    rho = sorted(pair_correlations(views))
    assert min(b - a for a, b in itertools.pairwise(rho)) > 0.04, rho  # no two pairs alike

    exact = [view.detach().cpu().requires_grad_() for view in views]
    align, red = smi_loss_terms(*exact, eps=EPS)
    terms = (align + LAMBDA * red, align, red)
    out = smi_loss_with_terms(*views, lambda_param=LAMBDA, eps=EPS, backend=backend)
    for name, term, ref in zip(("loss", "L_align", "L_red"), out, terms, strict=True):
        assert relative_error(term.detach().cpu(), ref.detach()) < TOL, name

    def combine(outputs) -> torch.Tensor:
        return sum(w * t for w, t in zip(WEIGHTS, outputs, strict=True))

    cases = {"L_align": (out.alignment, align), "the combination": (combine(out), combine(terms))}
    for what, (got, want) in cases.items():
        grads = torch.autograd.grad(got, views, retain_graph=True)
        refs = torch.autograd.grad(want, exact, retain_graph=True)
        for u, (grad, ref) in enumerate(zip(grads, refs, strict=True)):
            error = relative_error(grad.cpu(), ref)
            assert error < TOL, f"gradient of {what}, view {u}: relative error {error:.2e}"

"""The float64 reference (smi_kernels.reference) against values and gradients derived by hand.

Everything the other tests compare against rests on the reference, so it is checked here against
numbers that do not come from it: closed forms for inputs whose correlations are known exactly
(identical views, orthogonal rows, small integer rows), and the closed-form gradient of
docs/design.md, section 2 (the G table, ``dZ = G_sym Z``, then the row-standardisation backward),
written out in this file independently of both the reference and the package.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import EPS, LAMBDA, smi_loss_terms
from torch import Tensor

from smi_kernels.reference import smi_loss, standardize

F64 = torch.float64


def m(rho: float, eps: float = EPS) -> float:
    """``m(rho) = -1/2 log(1 - rho^2 + eps)`` in plain Python floats."""
    return -0.5 * math.log(1.0 - rho * rho + eps)


def assert_close(actual: Tensor | float, expected: float, rel: float = 1e-10) -> None:
    """Relative comparison; 1e-10 rather than a few ulps because at rho = 1 the transform has
    slope 1/eps, so the last-bit rounding of a computed rho = 1 - 2^-53 shows at ~1e-12."""
    value = float(actual.detach()) if isinstance(actual, Tensor) else float(actual)
    assert math.isfinite(value), f"non-finite value {value}"
    assert abs(value - expected) <= rel * abs(expected), (value, expected)


def rows(*values: tuple[float, ...]) -> Tensor:
    return torch.tensor(values, dtype=F64)


def hadamard(order: int) -> Tensor:
    """Sylvester's Hadamard matrix: rows 1.. are zero-mean and mutually orthogonal."""
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < order:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


# -- values by hand ---------------------------------------------------------------------------

# three centred rows of norm sqrt(2) with correlations rho12 = rho13 = 1/2, rho23 = -1/2
X1, X2, X3 = (1.0, 0.0, -1.0), (1.0, -1.0, 0.0), (0.0, 1.0, -1.0)


@pytest.mark.parametrize("eps", [1e-4, 1e-2], ids=["eps1e-4", "eps1e-2"])
def test_identical_views_two_samples(eps: float) -> None:
    """z_A = z_B: the positives have rho = 1, so m = -1/2 log(eps); rho12 = 1/2 everywhere else."""
    z = rows(X1, X2)
    align, red = smi_loss_terms(z, z.clone(), eps=eps)
    m_one = -0.5 * math.log(eps)
    assert_close(align, 2 * (1 - m_one) ** 2)
    # off-diagonal of AB, AA and BB: two entries each, all with rho = 1/2
    assert_close(red, 6 * m(0.5, eps) ** 2)
    loss = smi_loss(z, z.clone(), lambda_param=0.25, eps=eps)
    assert_close(loss, 2 * (1 - m_one) ** 2 + 0.25 * 6 * m(0.5, eps) ** 2)


def test_identical_views_three_samples_affine_invariant() -> None:
    """Each row scaled by a positive factor and shifted: standardisation undoes it. A view
    multiplied by -1 turns the positives into rho = -1, where m is the same (m is even)."""
    z = rows(X1, X2, X3)
    scale = torch.tensor([[3.0], [0.5], [7.0]], dtype=F64)
    shift = torch.tensor([[10.0], [-4.0], [0.25]], dtype=F64)
    for other in (z * scale + shift, -z * scale + shift):
        align, red = smi_loss_terms(z, other)
        assert_close(align, 3 * (1 - m(1.0)) ** 2)
        # |rho| = 1/2 on all 6 off-diagonal entries of each of the three matrices
        assert_close(red, 18 * m(0.5) ** 2)


@pytest.mark.parametrize("n", [2, 3, 7], ids=lambda n: f"N{n}")
def test_orthogonal_zero_mean_rows(n: int) -> None:
    """Every row orthogonal to every other (positives included): rho = 0, m = -1/2 log(1+eps)."""
    h = hadamard(16)[1 : 2 * n + 1] * 2.5 + 1.0  # zero-mean rows, then one common affine map
    a, b = h[:n], h[n:]
    align, red = smi_loss_terms(a, b)
    m_zero = -0.5 * math.log(1 + EPS)
    assert m_zero == pytest.approx(m(0.0))
    assert_close(align, n * (1 - m_zero) ** 2)
    assert_close(red, 3 * n * (n - 1) * m_zero**2)


# N = 2 by hand. Centred rows: a1 -> (-1, 0, 1), a2 -> (1, -1, 0), b1 -> (-1, -1, 2),
# b2 -> (1, -1, 0); norms sqrt2, sqrt2, sqrt6, sqrt2. Correlations:
#   rho(a1, b1) = 3 / sqrt12 = sqrt3 / 2     rho(a2, b2) = 1
#   rho(a1, b2) = -1/2                      rho(a2, b1) = 0
#   rho(a1, a2) = -1/2                      rho(b1, b2) = 0
A_HAND = ((1.0, 2.0, 3.0), (3.0, 1.0, 2.0))
B_HAND = ((0.0, 0.0, 3.0), (2.0, 0.0, 1.0))


def test_two_samples_by_hand() -> None:
    a, b = rows(*A_HAND), rows(*B_HAND)
    za, zb = standardize(a), standardize(b)
    expected_rho = torch.tensor([[math.sqrt(3) / 2, -0.5], [0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(za @ zb.T, expected_rho, rtol=0, atol=1e-15)

    align, red = smi_loss_terms(a, b)
    expected_align = (1 - m(math.sqrt(3) / 2)) ** 2 + (1 - m(1.0)) ** 2
    # AB off-diagonal: m(-1/2)^2 + m(0)^2; AA: 2 m(-1/2)^2; BB: 2 m(0)^2
    expected_red = 3 * m(0.5) ** 2 + 3 * m(0.0) ** 2
    assert_close(align, expected_align)
    assert_close(red, expected_red)
    assert_close(smi_loss(a, b), expected_align + LAMBDA * expected_red)
    # and the arguments are passed through
    assert_close(
        smi_loss(a, b, lambda_param=2.0, eps=0.5),
        (1 - m(math.sqrt(3) / 2, 0.5)) ** 2
        + (1 - m(1.0, 0.5)) ** 2
        + 2.0 * 3 * (m(0.5, 0.5) ** 2 + m(0.0, 0.5) ** 2),
    )


def test_three_views_by_hand() -> None:
    """V = 3 with C = A: pairs AB, AC, BC and self matrices AA, BB, CC, every one counted once."""
    a, b = rows(*A_HAND), rows(*B_HAND)
    align, red = smi_loss_terms(a, b, a.clone())
    align_ab = (1 - m(math.sqrt(3) / 2)) ** 2 + (1 - m(1.0)) ** 2
    # AB and BC (= BA) have the same alignment; AC has rho = 1 on both positives
    assert_close(align, 2 * align_ab + 2 * (1 - m(1.0)) ** 2)
    # m(1/2)^2: AB 1, AC 2, BC 1, AA 2, CC 2; m(0)^2: AB 1, BC 1, BB 2
    assert_close(red, 8 * m(0.5) ** 2 + 4 * m(0.0) ** 2)


@pytest.mark.parametrize("v", [3, 4], ids=lambda v: f"V{v}")
def test_many_views_sum_over_pairs(v: int) -> None:
    """L_align and L_red of V views from two-view evaluations: a pair (u, v) gives
    ``cross_uv + self_u + self_v`` and ``red(z, z) = 3 self(z)``, so
    ``red_V = sum_{u<v} red(z_u, z_v) - (V - 2) sum_u self_u``."""
    generator = torch.Generator().manual_seed(3)
    views = [torch.randn(6, 9, generator=generator, dtype=F64) for _ in range(v)]
    align, red = smi_loss_terms(*views)
    pair_align = sum(
        smi_loss_terms(views[i], views[j])[0] for i, j in itertools.combinations(range(v), 2)
    )
    pair_red = sum(
        smi_loss_terms(views[i], views[j])[1] for i, j in itertools.combinations(range(v), 2)
    )
    self_red = sum(smi_loss_terms(z, z)[1] / 3 for z in views)
    assert_close(align, float(pair_align))
    assert_close(red, float(pair_red - (v - 2) * self_red))
    # and with the views permuted the terms do not change
    align_p, red_p = smi_loss_terms(*reversed(views))
    assert_close(align_p, float(align))
    assert_close(red_p, float(red))


# -- the closed form of docs/design.md, section 2 ---------------------------------------------


def entry_classes(v: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Masks over p < q of (P x P): positives, cross-view negatives, same-view pairs."""
    p = v * n
    index = torch.arange(p)
    view, sample = index // n, index % n
    upper = index[:, None] < index[None, :]
    same_view = view[:, None] == view[None, :]
    same_sample = sample[:, None] == sample[None, :]
    positive = upper & ~same_view & same_sample
    cross = upper & ~same_view & ~same_sample
    self_pair = upper & same_view
    return positive, cross, self_pair


def closed_form(
    views: list[Tensor], lambda_param: float, eps: float, self_weight: float = 2.0
) -> tuple[Tensor, list[Tensor]]:
    """Loss and input gradients of docs/design.md, section 2, by hand in float64 (no autograd).

    ``self_weight`` is the factor of the same-view entries (2: each unordered pair appears twice
    in the self matrices); it is a parameter only so that a test can show a wrong one is seen.
    """
    v, n = len(views), views[0].shape[0]
    z = torch.cat(views).to(F64)
    centred = z - z.mean(1, keepdim=True)
    s = centred.norm(dim=1, keepdim=True).clamp(min=1e-12)
    zh = centred / s
    rho = (zh @ zh.T).clamp(-1.0, 1.0)
    t = 1.0 - rho**2 + eps
    m_s = -0.5 * torch.log(t)
    dm = rho / t
    positive, cross, self_pair = entry_classes(v, n)
    zero = torch.zeros_like(rho)
    f = (
        torch.where(positive, (1 - m_s) ** 2, zero)
        + torch.where(cross, lambda_param * m_s**2, zero)
        + torch.where(self_pair, self_weight * lambda_param * m_s**2, zero)
    )
    g = (
        torch.where(positive, -2 * (1 - m_s) * dm, zero)
        + torch.where(cross, 2 * lambda_param * m_s * dm, zero)
        + torch.where(self_pair, 2 * self_weight * lambda_param * m_s * dm, zero)
    )
    g_sym = g + g.T
    dzh = g_sym @ zh
    dz = (dzh - dzh.mean(1, keepdim=True) - zh * (zh * dzh).sum(1, keepdim=True)) / s
    return f.sum(), list(dz.split(n))


SHAPES = [(2, 2, 3), (2, 5, 8), (2, 16, 33), (3, 4, 7), (3, 12, 20), (4, 6, 5), (4, 9, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "V{}-N{}-D{}".format(*s))
@pytest.mark.parametrize(
    ("lambda_param", "eps"), [(5e-3, 1e-4), (0.7, 1e-2)], ids=["default", "lam0.7-eps1e-2"]
)
def test_closed_form_gradient_matches_autograd(
    shape: tuple[int, int, int], lambda_param: float, eps: float
) -> None:
    v, n, d = shape
    generator = torch.Generator().manual_seed(n * 1000 + d * 10 + v)
    views = [
        (torch.randn(n, d, generator=generator, dtype=F64) * 3 + 1).requires_grad_()
        for _ in range(v)
    ]
    loss = smi_loss(*views, lambda_param=lambda_param, eps=eps)
    grads = torch.autograd.grad(loss, views)
    loss_cf, grads_cf = closed_form([x.detach() for x in views], lambda_param, eps)
    assert_close(loss, float(loss_cf), rel=1e-12)
    for k, (grad, grad_cf) in enumerate(zip(grads, grads_cf, strict=True)):
        assert torch.isfinite(grad).all() and torch.isfinite(grad_cf).all()
        error = float((grad - grad_cf).norm() / grad_cf.norm())
        assert error <= 1e-10, f"view {k}: relative error {error:.3e}"


def test_closed_form_detects_a_wrong_table() -> None:
    """The comparison above can fail: the self pairs weighted like the cross pairs (factor 1
    instead of 2) move the loss and the gradients far beyond the tolerance."""
    generator = torch.Generator().manual_seed(11)
    views = [torch.randn(5, 6, generator=generator, dtype=F64).requires_grad_() for _ in range(2)]
    loss = smi_loss(*views, lambda_param=1.0)
    grads = torch.autograd.grad(loss, views)
    loss = loss.detach()
    loss_wrong, grads_wrong = closed_form([x.detach() for x in views], 1.0, EPS, self_weight=1.0)
    assert abs(float(loss - loss_wrong)) > 1e-3 * abs(float(loss))
    error = max(float((g - w).norm() / g.norm()) for g, w in zip(grads, grads_wrong, strict=True))
    assert error > 1e-3

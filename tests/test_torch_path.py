"""The PyTorch path (``backend="torch"``) against the float64 reference.

Each case is compared with an independent float64 evaluation: smi_kernels.reference run with
autograd on the same inputs cast to float64. Relative error ``||out - ref|| / ||ref||`` of the loss,
of the two terms and of every input gradient, within design.md section 6 (tighter for float32 here):
float64 1e-10, float32 1e-5, bfloat16/float16 2e-2.

Shapes with D >= 16 are well conditioned for random data and take those tolerances as they are.
With few features random samples are often nearly collinear (|rho| -> 1, where m' -> 1/eps), and
the loss itself amplifies rounding: there the tolerance of the 16/32-bit inputs grows by a
condition number computed from the inputs (``condition_numbers``). D = 2 is degenerate (every rho
is +-1 and the exact gradient is 0): its gradients are compared with an absolute tolerance.
"""

from __future__ import annotations

import functools
import math

import helpers
import pytest
import torch
from helpers import DTYPES, EPS, LAMBDA, relative_error, smi_loss_terms
from helpers import reference_terms_and_grads as reference
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from smi_kernels import SMILoss, smi_loss, smi_loss_with_terms

F64 = torch.float64
#: the shared table, tighter for float32: this path evaluates every dtype in float32 or float64
TOLERANCE = {**helpers.TOLERANCE, torch.float32: 1e-5}
# float32 arithmetic: the path computes the 16-bit inputs in float32 too
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24}


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def shape_id(shape: tuple[int, int, int]) -> str:
    return "V{}-N{}-D{}".format(*shape)


def assert_relative(out: Tensor, ref: Tensor, tol: float, what: str) -> None:
    error = relative_error(out, ref)
    assert error <= tol, f"{what}: relative error {error:.3e} > {tol:.1e}"


#: views on the CPU, where this path is tested whatever the machine
make_views = functools.partial(helpers.make_views, device="cpu")


def reference_term_grads(views: list[Tensor], term: int) -> tuple[Tensor, ...]:
    exact = [view.detach().to(F64).requires_grad_() for view in views]
    return torch.autograd.grad(smi_loss_terms(*exact, eps=EPS)[term], exact)


def sensitivity(
    views: list[Tensor], lambda_param: float = LAMBDA, eps: float = EPS
) -> tuple[float, Tensor, Tensor]:
    """``(kappa_loss, row_sensitivity, dz)`` of SMI at ``views``, float64, from design.md §2.

    With ``L = sum_{p<q} f_pq(S_pq)``, ``G = f'`` and ``H = f''`` in S, an error of about u in
    each S_pq moves L by ``u sum |G_pq|`` and the gradient of row p by ``u row_sensitivity_p``,
    ``row_sensitivity_p = sum_q (|H_pq| + |G_pq|) / s_p``; ``kappa_loss = 1 + sum |G| / L``.
    """
    v, n = len(views), views[0].shape[0]
    z = torch.cat([view.detach().to(F64) for view in views])
    centred = z - z.mean(1, keepdim=True)
    s = centred.norm(dim=1).clamp(min=1e-12)
    zh = centred / s[:, None]
    rho = (zh @ zh.T).clamp(-1, 1)
    t = 1 - rho**2 + eps
    m, dm, ddm = -0.5 * t.log(), rho / t, (t + 2 * rho**2) / t**2
    index = torch.arange(v * n)
    same_view = (index[:, None] // n) == (index[None, :] // n)
    positive = ~same_view & ((index[:, None] % n) == (index[None, :] % n))
    weight = torch.where(same_view, 2 * lambda_param, lambda_param)  # per unordered pair
    weight.fill_diagonal_(0.0)
    f = torch.where(positive, (1 - m) ** 2, weight * m**2)
    g = torch.where(positive, -2 * (1 - m) * dm, 2 * weight * m * dm)
    h = torch.where(positive, 2 * dm**2 - 2 * (1 - m) * ddm, 2 * weight * (dm**2 + m * ddm))
    g.fill_diagonal_(0.0)
    h.fill_diagonal_(0.0)
    kappa_loss = 1 + float(g.triu(1).abs().sum() / f.triu(1).sum())
    dzh = g @ zh
    dz = (dzh - dzh.mean(1, keepdim=True) - zh * (zh * dzh).sum(1, keepdim=True)) / s[:, None]
    return kappa_loss, (h.abs() + g.abs()).sum(1) / s, dz


def condition_numbers(views: list[Tensor]) -> tuple[float, float]:
    """``(kappa_loss, kappa_grad)``, ``kappa_grad = ||row_sensitivity|| / ||dL/dz||``."""
    kappa_loss, rows, dz = sensitivity(views)
    return kappa_loss, float(rows.norm() / dz.norm().clamp_min(1e-300))


# -- the shape x dtype matrix ------------------------------------------------------------------

SHAPES = [
    (2, 2, 16),
    (2, 3, 1000),
    (2, 17, 31),
    (2, 64, 128),
    (2, 100, 999),
    (3, 2, 257),
    (3, 9, 100),
    (3, 50, 513),
    (4, 5, 64),
    (4, 33, 17),
    (4, 100, 1000),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    v, n, d = shape
    tol = TOLERANCE[dtype]
    views = make_views(v, n, d, dtype, seed=n * 7919 + d * 31 + v)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(out.loss, views)
    loss_ref, align_ref, red_ref, grads_ref = reference(views)

    out_dtype = F64 if dtype == F64 else torch.float32
    assert out.loss.dtype == out.alignment.dtype == out.redundancy.dtype == out_dtype
    assert out.loss.shape == ()
    assert_relative(out.loss, loss_ref, tol, "loss")
    assert_relative(out.alignment, align_ref, tol, "alignment")
    # L_red sums m^2 ~ rho^4 / 4 over entries with small rho, and ``log(1 + eps - rho^2)``
    # rounds t = 1 + eps - rho^2 to a float32 ulp of 1 first: ~1e-5 relative error in float32
    # (the loss weights it by lambda, so it stays under 1e-5). design.md, section 6, bound: 1e-4.
    red_tol = 1e-4 if dtype != F64 and tol < 1e-4 else tol
    assert_relative(out.redundancy, red_ref, red_tol, "redundancy")
    for k, (grad, grad_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        assert grad.dtype == dtype and grad.shape == (n, d)
        assert_relative(grad, grad_ref, tol, f"gradient of view {k}")
    # the scalar API is the same computation
    assert torch.equal(smi_loss(*views, backend="torch"), out.loss)


SMALL_D_SHAPES = [(2, 2, 3), (2, 7, 3), (2, 40, 4), (3, 6, 5), (3, 11, 8), (4, 3, 6), (4, 20, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", SMALL_D_SHAPES, ids=shape_id)
def test_few_features_within_conditioned_tolerance(
    shape: tuple[int, int, int], dtype: torch.dtype
) -> None:
    """D in 3..8: nearly collinear samples are common, so the tolerance of the 16/32-bit inputs
    grows with the condition numbers: ``TOLERANCE + 8 u kappa_loss`` for the loss and
    ``TOLERANCE + 2 u kappa_grad`` for the gradients (u of the float32 arithmetic; kappa_grad sums
    absolute values and is already pessimistic). float64 keeps 1e-10."""
    v, n, d = shape
    views = make_views(v, n, d, dtype, seed=n * 101 + d * 13 + v)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(out.loss, views)
    loss_ref, _, _, grads_ref = reference(views)
    kappa_loss, kappa_grad = condition_numbers(views)
    tol_loss = tol_grad = TOLERANCE[dtype]
    if dtype != F64:
        u = UNIT_ROUNDOFF[torch.float32]
        tol_loss += 8 * u * kappa_loss
        tol_grad += 2 * u * kappa_grad
    assert_relative(out.loss, loss_ref, tol_loss, f"loss (kappa {kappa_loss:.1e})")
    for k, (grad, grad_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        assert_relative(grad, grad_ref, tol_grad, f"gradient of view {k} (kappa {kappa_grad:.1e})")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 9, 2), (3, 5, 2), (4, 30, 2)], ids=shape_id)
def test_two_features_degenerate(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    """D = 2: every standardised row is +-(1, -1)/sqrt(2), every rho is +-1 and the exact
    gradient is 0. The loss is compared relatively (conditioned by m'(1) = 1/eps in 16/32-bit),
    the gradient absolutely: float64 to roundoff, the others finite."""
    v, n, _ = shape
    generator = torch.Generator().manual_seed(n * 3 + v)
    views = []
    for _ in range(v):
        first = torch.randn(n, 1, generator=generator)
        # the two features differ by at least 1 (either sign): no row is constant after rounding
        gap = (1 + torch.rand(n, 1, generator=generator)) * torch.randn(
            n, 1, generator=generator
        ).sign()
        views.append(torch.cat([first, first + gap], 1).to(dtype).requires_grad_())
    assert all(bool((x[:, 0] != x[:, 1]).all()) for x in views)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(out.loss, views)
    loss_ref, _, _, _ = reference(views)
    # closed form: every positive has |rho| = 1 and every other entry too
    m_one = -0.5 * math.log(EPS)
    pairs = v * (v - 1) // 2
    exact = pairs * n * (1 - m_one) ** 2 + LAMBDA * (pairs + v) * n * (n - 1) * m_one**2
    assert float(loss_ref) == pytest.approx(exact, rel=1e-10)
    if dtype == F64:
        assert_relative(out.loss, loss_ref, 1e-10, "loss")
    else:
        kappa_loss, _ = condition_numbers(views)
        tol = TOLERANCE[dtype] + 8 * UNIT_ROUNDOFF[torch.float32] * kappa_loss
        assert_relative(out.loss, loss_ref, tol, f"loss (kappa {kappa_loss:.1e})")
    # the exact gradient is 0; what comes out is the roundoff of G Z (|G| up to
    # 2 (m(1) - 1) / eps ~ 7e4) left by the projection, divided by s_p: per row at most a few u
    # times the row's sensitivity
    _, rows, _ = sensitivity(views)
    u = UNIT_ROUNDOFF[F64 if dtype == F64 else torch.float32]
    bound = 64 * u * rows.view(v, n)
    for k, grad in enumerate(grads):
        assert torch.isfinite(grad).all(), f"gradient of view {k} is not finite"
        row_norm = grad.to(F64).norm(dim=1)
        assert (row_norm <= bound[k]).all(), f"gradient of view {k}: {row_norm} > {bound[k]}"


@pytest.mark.parametrize(
    ("lambda_param", "eps"),
    [(0.0, 1e-4), (0.05, 1e-2), (1.0, 1e-6)],
    ids=["lam0", "lam.05", "lam1"],
)
def test_hyperparameters_are_used(lambda_param: float, eps: float) -> None:
    views = make_views(3, 12, 40, F64, seed=5)
    out = smi_loss_with_terms(*views, lambda_param=lambda_param, eps=eps, backend="torch")
    grads = torch.autograd.grad(out.loss, views)
    loss_ref, align_ref, red_ref, grads_ref = reference(views, lambda_param, eps)
    assert_relative(out.loss, loss_ref, 1e-10, "loss")
    assert_relative(out.alignment, align_ref, 1e-10, "alignment")
    assert_relative(out.redundancy, red_ref, 1e-10, "redundancy")
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert_relative(grad, grad_ref, 1e-10, "gradient")


def test_module_matches_functional() -> None:
    views = make_views(2, 10, 24, torch.float32, seed=8, requires_grad=False)
    module = SMILoss(lambda_param=0.02, eps=1e-3, backend="torch")
    expected = smi_loss_with_terms(*views, lambda_param=0.02, eps=1e-3, backend="torch")
    assert torch.equal(module(*views), expected.loss)
    got = module.forward_with_terms(*views)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    loss_ref, _, _, _ = reference(views, 0.02, 1e-3)
    assert_relative(got.loss, loss_ref, 1e-5, "loss")


# -- which inputs require grad -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("v", "which"), [(2, 0), (2, 1), (3, 1), (4, 3)], ids=["V2-a", "V2-b", "V3-mid", "V4-last"]
)
def test_only_one_view_requires_grad(v: int, which: int) -> None:
    full = make_views(v, 9, 20, torch.float32, seed=21)
    loss_full = smi_loss(*full, backend="torch")
    loss_full.backward()
    partial = [x.detach().clone().requires_grad_(k == which) for k, x in enumerate(full)]
    loss = smi_loss(*partial, backend="torch")
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(loss, loss_full)
    for k, x in enumerate(partial):
        if k == which:
            assert x.grad is not None
            assert torch.equal(x.grad, full[k].grad)
        else:
            assert x.grad is None


def saved_numel(fn) -> tuple[object, int]:
    """Run ``fn`` recording what autograd saves; returns its result and the saved element count."""
    saved: list[int] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return result, sum(saved)


class OutputShapes(TorchDispatchMode):
    """Records the shape of every tensor that an aten op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.shapes.append(tuple(leaf.shape))
        return out


def test_no_view_requires_grad_saves_nothing() -> None:
    v, n, d = 2, 16, 24
    p = v * n
    views = make_views(v, n, d, torch.float32, seed=4, requires_grad=False)
    with OutputShapes() as log:
        out, numel = saved_numel(lambda: smi_loss_with_terms(*views, backend="torch"))
    assert numel == 0
    assert out.loss.grad_fn is None and not out.loss.requires_grad
    assert (p, p) not in log.shapes, "G (P x P) was built although no view requires grad"
    assert (n, n) in log.shapes  # the log does see the blocks of S
    # with gradients: G is built and saved, and the values are the same
    with_grad = [x.clone().requires_grad_() for x in views]
    with OutputShapes() as log_grad:
        out_grad, numel_grad = saved_numel(lambda: smi_loss_with_terms(*with_grad, backend="torch"))
    assert (p, p) in log_grad.shapes
    assert numel_grad >= p * p  # the hook does see the path's saves
    for a, b in zip(out, out_grad, strict=True):
        assert torch.equal(a, b.detach())


def test_no_grad_mode_saves_nothing() -> None:
    """Views that require grad, evaluated under ``torch.no_grad()`` (e.g. logging the terms)."""
    views = make_views(2, 16, 24, torch.float32, seed=4)
    with torch.no_grad():
        out, numel = saved_numel(lambda: smi_loss(*views, backend="torch"))
    assert numel == 0 and out.grad_fn is None


def test_no_grad_mode_builds_no_g() -> None:
    views = make_views(2, 16, 24, torch.float32, seed=4)  # P = 32, D != P
    with torch.no_grad(), OutputShapes() as log:
        smi_loss(*views, backend="torch")
    assert (16, 16) in log.shapes  # the blocks of S are seen
    assert (32, 32) not in log.shapes, "G was built under no_grad"


# -- the terms are differentiable --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=dtype_id)
@pytest.mark.parametrize("term", [1, 2], ids=["alignment", "redundancy"])
def test_each_term_differentiates(term: int, dtype: torch.dtype) -> None:
    views = make_views(3, 14, 50, dtype, seed=17)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(out[term], views)
    grads_ref = reference_term_grads(views, term - 1)
    for k, (grad, grad_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        assert_relative(grad, grad_ref, TOLERANCE[dtype], f"d term{term} / d view {k}")


def test_weighted_combination_of_outputs() -> None:
    """Incoming gradients on all three outputs at once: 0.3 L - 2 L_align + 7 L_red."""
    views = make_views(2, 11, 30, F64, seed=29)
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(0.3 * out.loss - 2.0 * out.alignment + 7.0 * out.redundancy, views)
    exact = [view.detach().requires_grad_() for view in views]
    align, red = smi_loss_terms(*exact, eps=EPS)
    total = 0.3 * (align + LAMBDA * red) - 2.0 * align + 7.0 * red
    for grad, grad_ref in zip(grads, torch.autograd.grad(total, exact), strict=True):
        assert_relative(grad, grad_ref, 1e-10, "gradient")


# -- gradcheck ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 5, 7), (3, 3, 5), (3, 4, 6)], ids=shape_id)
def test_gradcheck(shape: tuple[int, int, int]) -> None:
    v, n, d = shape
    views = make_views(v, n, d, F64, seed=n + d + v)

    def all_outputs(*xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(smi_loss_with_terms(*xs, lambda_param=0.1, backend="torch"))

    assert torch.autograd.gradcheck(all_outputs, views, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_double_backward_is_refused() -> None:
    """Second derivatives (gradient penalties, Hessian-vector products) are refused with a clear
    error, never silently wrong: gradgradcheck and an HVP both raise."""
    views = make_views(2, 4, 5, F64, seed=2)

    def loss(*xs: Tensor) -> Tensor:
        return smi_loss(*xs, backend="torch")

    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.gradgradcheck(loss, views, eps=1e-6, atol=1e-7, rtol=1e-5)
    a, b = views
    total = loss(a, b.detach()) + (a**3).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(total, a, create_graph=True)


# -- float32 accuracy where plain formulas would cancel -----------------------------------------


def test_redundancy_term_float32_within_1e5() -> None:
    views = make_views(2, 100, 999, torch.float32, seed=100 * 7919 + 999 * 31 + 2)
    out = smi_loss_with_terms(*views, backend="torch")
    _, _, red_ref, _ = reference(views)
    assert_relative(out.redundancy, red_ref, 1e-5, "redundancy")


def test_anti_aligned_positives_float32() -> None:
    """``smi(x, -y) = smi(x, y)`` exactly in real arithmetic; with y = x + noise both are equally
    well conditioned, and the aligned one is accurate to ~1e-8 in float32."""
    generator = torch.Generator().manual_seed(31)
    x = torch.randn(8, 3, generator=generator)
    y = x + 1e-4 * torch.randn(8, 3, generator=generator)
    for other in (y, -y):
        out = smi_loss_with_terms(x, other, backend="torch")
        _, align_ref, _, _ = reference([x, other])
        assert_relative(out.alignment, align_ref, 1e-5, "alignment")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", [(3, 10, 48), (4, 8, 100)], ids=shape_id)
def test_rows_on_large_offsets_float32(shape: tuple[int, int, int], seed: int) -> None:
    """Every row on its own offset of +-3e3 .. 3e5 (float32 spacing up to 0.03 against a spread
    of 1): the first mean is rounded to a few ulp of the offset, which the second centring pass
    removes. Terms and gradients within 1e-5 (about 2e-7 today, 8e-4 with one pass)."""
    v, n, d = shape
    gen = torch.Generator().manual_seed(seed)
    views = []
    for base in helpers.make_views(v, n, d, F64, seed=seed, requires_grad=False):
        offset = 10.0 ** (3.5 + 2.0 * torch.rand(n, 1, generator=gen, dtype=F64))
        sign = torch.where(torch.rand(n, 1, generator=gen, dtype=F64) < 0.5, -1.0, 1.0)
        views.append((base + sign * offset).to(torch.float32).requires_grad_())
    out = smi_loss_with_terms(*views, backend="torch")
    grads = torch.autograd.grad(out.loss, views)
    *terms_ref, grads_ref = helpers.reference_terms_and_grads(views)
    for name, term, ref in zip(("loss", "alignment", "redundancy"), out, terms_ref, strict=True):
        assert_relative(term, ref, TOLERANCE[torch.float32], name)
    for k, (grad, grad_ref) in enumerate(zip(grads, grads_ref, strict=True)):
        assert_relative(grad, grad_ref, TOLERANCE[torch.float32], f"gradient of view {k}")

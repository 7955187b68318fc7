"""What SMI accepts and refuses, and how it treats awkward but valid input.

Every validation rule is exercised through the functional API (``smi_loss`` and
``smi_loss_with_terms``) and through ``SMILoss`` (its constructor for hyperparameters, its forward
for views); every message must name the offending value or shape. Then: non-contiguous inputs,
non-finite inputs, constant rows, and the refusal of ``backend="triton"`` where it cannot run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from helpers import randn
from torch import Tensor

import smi_kernels.loss as loss_module
from smi_kernels import SMILoss, smi_loss, smi_loss_with_terms
from smi_kernels.reference import smi_loss as reference_loss

F64 = torch.float64

Api = Callable[..., Tensor]


def functional(*views: object, **kwargs: object) -> Tensor:
    return smi_loss(*views, **kwargs)


def with_terms(*views: object, **kwargs: object) -> Tensor:
    return smi_loss_with_terms(*views, **kwargs).loss


def module(*views: object, **kwargs: object) -> Tensor:
    """Hyperparameters go to the constructor, views to forward (validated there)."""
    return SMILoss(**kwargs)(*views)


APIS = [functional, with_terms, module]
API_IDS = ["smi_loss", "smi_loss_with_terms", "SMILoss"]


@pytest.fixture(params=APIS, ids=API_IDS)
def api(request: pytest.FixtureRequest) -> Api:
    return request.param


# -- views -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1], ids=["no-views", "one-view"])
def test_fewer_than_two_views(api: Api, count: int) -> None:
    views = [randn(4, 6) for _ in range(count)]
    with pytest.raises(ValueError, match=rf"at least two views, got {count}\b"):
        api(*views)


def test_view_that_is_not_a_tensor(api: Api) -> None:
    with pytest.raises(TypeError, match=r"view 1 must be a torch\.Tensor, got list"):
        api(randn(4, 6), [[1.0] * 6] * 4)


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((4, 6), (4, 7)), ((4, 6), (5, 6)), ((4, 6), (6, 4))],
    ids=["features", "samples", "transposed"],
)
def test_different_shapes(api: Api, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> None:
    pattern = rf"same shape.*{re.escape(str(shape_a))}.*{re.escape(str(shape_b))}"
    with pytest.raises(ValueError, match=pattern):
        api(randn(*shape_a), randn(*shape_b))


def test_different_shapes_in_third_view(api: Api) -> None:
    with pytest.raises(ValueError, match=r"view 2 is \(4, 5\)"):
        api(randn(4, 6), randn(4, 6), randn(4, 5))


@pytest.mark.parametrize(
    ("dtype_a", "dtype_b"),
    [(torch.float32, F64), (torch.float16, torch.bfloat16), (F64, torch.float32)],
    ids=["f32-f64", "f16-bf16", "f64-f32"],
)
def test_different_dtypes(api: Api, dtype_a: torch.dtype, dtype_b: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"same dtype.*{dtype_a}.*{dtype_b}"):
        api(randn(4, 6, dtype=dtype_a), randn(4, 6, dtype=dtype_b))


def test_different_devices(api: Api) -> None:
    with pytest.raises(ValueError, match=r"same device.*view 0 is on cpu.*view 1 is on meta"):
        api(randn(4, 6), torch.empty(4, 6, device="meta"))
    with pytest.raises(ValueError, match=r"view 0 is on meta.*view 1 is on cpu"):
        api(torch.empty(4, 6, device="meta"), randn(4, 6))


@pytest.mark.parametrize("shape", [(), (6,), (2, 3, 4), (1, 4, 6)], ids=["0d", "1d", "3d", "3d-1"])
def test_not_two_dimensional(api: Api, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"2-D.*got shape {re.escape(str(shape))}"):
        api(randn(*shape), randn(*shape))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((1, 6), r"N >= 2 samples.*\(1, 6\)"),
        ((0, 5), r"N >= 2 samples.*\(0, 5\)"),
        ((6, 1), r"D >= 2 features.*\(6, 1\)"),
        ((5, 0), r"D >= 2 features.*\(5, 0\)"),
        ((1, 1), r"N >= 2 samples.*\(1, 1\)"),
    ],
    ids=["N1", "empty-N0", "D1", "empty-D0", "N1-D1"],
)
def test_too_few_samples_or_features(api: Api, shape: tuple[int, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        api(randn(*shape), randn(*shape))


@pytest.mark.parametrize(
    "dtype",
    [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64, torch.complex128],
    ids=lambda dtype: str(dtype).removeprefix("torch."),
)
def test_non_floating_dtypes(api: Api, dtype: torch.dtype) -> None:
    views = [torch.ones(4, 6, dtype=dtype), torch.zeros(4, 6, dtype=dtype)]
    with pytest.raises(TypeError, match=rf"view 0 has dtype {re.escape(str(dtype))}"):
        api(*views)


# -- hyperparameters and backend ----------------------------------------------------------------


BAD_VALUES = [
    ("lambda_param", -0.1, r"lambda_param must be finite and >= 0, got -0\.1"),
    ("lambda_param", -1e-30, r"lambda_param.*got -1e-30"),
    ("lambda_param", math.nan, r"lambda_param.*got nan"),
    ("lambda_param", math.inf, r"lambda_param.*got inf"),
    ("lambda_param", -math.inf, r"lambda_param.*got -inf"),
    ("eps", 0.0, r"eps must be finite and > 0, got 0\.0"),
    ("eps", -1e-4, r"eps.*got -0\.0001"),
    ("eps", math.nan, r"eps.*got nan"),
    ("eps", math.inf, r"eps.*got inf"),
]


@pytest.mark.parametrize(
    ("name", "value", "pattern"), BAD_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_VALUES]
)
def test_bad_hyperparameter_values(api: Api, name: str, value: float, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        api(randn(4, 6), randn(4, 6), **{name: value})


BAD_TYPES = [
    ("lambda_param", "0.1", "str"),
    ("lambda_param", None, "NoneType"),
    ("lambda_param", [0.1], "list"),
    ("lambda_param", True, "bool"),
    ("lambda_param", torch.tensor(0.1), "Tensor"),
    ("eps", "1e-4", "str"),
    ("eps", None, "NoneType"),
    ("eps", 1e-4j, "complex"),
    ("eps", False, "bool"),
]


@pytest.mark.parametrize(
    ("name", "value", "type_name"), BAD_TYPES, ids=[f"{n}-{t}" for n, _, t in BAD_TYPES]
)
def test_non_number_hyperparameters(api: Api, name: str, value: object, type_name: str) -> None:
    with pytest.raises(TypeError, match=rf"{name} must be a float, got {type_name}"):
        api(randn(4, 6), randn(4, 6), **{name: value})


@pytest.mark.parametrize("backend", ["cuda", "Torch", "", "triton "], ids=repr)
def test_unknown_backend(api: Api, backend: str) -> None:
    with pytest.raises(
        ValueError, match=rf"backend must be one of .*got {re.escape(repr(backend))}"
    ):
        api(randn(4, 6), randn(4, 6), backend=backend)


def test_valid_hyperparameters_are_accepted() -> None:
    """The boundaries of the rules: lambda_param = 0, ints, tiny eps are fine."""
    a, b = randn(4, 6, seed=1), randn(4, 6, seed=2)
    for kwargs in ({"lambda_param": 0}, {"lambda_param": 0.0, "eps": 1}, {"eps": 1e-300}):
        assert torch.isfinite(smi_loss(a, b, **kwargs))
        assert torch.isfinite(SMILoss(**kwargs)(a, b))


def test_triton_backend_on_cpu_without_interpreter(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loss_module, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(loss_module, "triton_available", lambda: True)
    with pytest.raises(ValueError, match=r"backend='triton' needs CUDA tensors \(got device cpu\)"):
        api(randn(4, 6), randn(4, 6), backend="triton")
    # "auto" takes the PyTorch path there and works
    assert torch.isfinite(api(randn(4, 6), randn(4, 6, seed=1), backend="auto"))


def test_triton_backend_without_triton(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "triton_available", lambda: False)
    with pytest.raises(ValueError, match=r"backend='triton' needs the triton package"):
        api(randn(4, 6), randn(4, 6), backend="triton")


# -- non-contiguous inputs ----------------------------------------------------------------------


def transposed(base: Tensor) -> Tensor:
    return base.T  # base is (D, N)


def column_slice(base: Tensor) -> Tensor:
    return base[:, ::2]  # base is (N, 2D)


def window(base: Tensor) -> Tensor:
    return base[3:-2, 1:-4]  # an interior window: storage offset and row stride


def overlapping(base: Tensor) -> Tensor:
    return base.as_strided((9, 13), (2, 1))  # a Hankel-like view of a 1-D buffer


def expanded(base: Tensor) -> Tensor:
    # stride 0 along the samples, then a per-row offset: still a view-derived, odd-strided input
    return base.expand(9, 13) * torch.linspace(1.0, 2.0, 9, dtype=base.dtype)[:, None]


LAYOUTS = [
    (transposed, (13, 9)),
    (column_slice, (9, 26)),
    (window, (14, 18)),
    (overlapping, (40,)),
    (expanded, (1, 13)),
]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(("make", "base_shape"), LAYOUTS, ids=[f.__name__ for f, _ in LAYOUTS])
def test_non_contiguous_matches_contiguous(
    make: Callable[[Tensor], Tensor], base_shape: tuple[int, ...], dtype: torch.dtype
) -> None:
    base = randn(*base_shape, dtype=dtype, seed=7).requires_grad_()
    other = randn(9, 13, dtype=dtype, seed=8).requires_grad_()
    view = make(base)
    assert view.shape == (9, 13)
    if make is not expanded:
        assert not view.is_contiguous()
    out = smi_loss_with_terms(view, other, backend="torch")
    grad_base, grad_other = torch.autograd.grad(out.loss, (base, other))

    base_c = base.detach().clone().requires_grad_()
    other_c = other.detach().clone().requires_grad_()
    out_c = smi_loss_with_terms(make(base_c).contiguous(), other_c, backend="torch")
    grad_base_c, grad_other_c = torch.autograd.grad(out_c.loss, (base_c, other_c))

    rtol = 1e-12 if dtype == F64 else 1e-6
    for a, b in zip(out, out_c, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=0)
    torch.testing.assert_close(grad_base, grad_base_c, rtol=rtol, atol=rtol * 1e-3)
    torch.testing.assert_close(grad_other, grad_other_c, rtol=rtol, atol=rtol * 1e-3)
    assert bool(grad_base.abs().sum() > 0)
    # and against the reference on the contiguous float64 copy (the expanded view has identical
    # samples after standardisation, rho = 1 where m' = 1/eps: float32 rounding shows at ~1e-4)
    ref = reference_loss(make(base.detach()).double().contiguous(), other.detach().double())
    tol = 1e-10 if dtype == F64 else (1e-3 if make is expanded else 1e-5)
    assert float(abs(out.loss.detach().double() - ref) / ref) <= tol


def test_non_contiguous_both_views_and_three_views() -> None:
    bases = [randn(20, 12, dtype=F64, seed=k).requires_grad_() for k in range(3)]
    views = [b.T[:, ::2] for b in bases]  # (12, 10), strides (1, 24)
    loss = smi_loss(*views, backend="torch")
    grads = torch.autograd.grad(loss, bases)
    copies = [b.detach().clone().requires_grad_() for b in bases]
    loss_c = smi_loss(*[c.T[:, ::2].contiguous() for c in copies], backend="torch")
    grads_c = torch.autograd.grad(loss_c, copies)
    torch.testing.assert_close(loss, loss_c, rtol=1e-12, atol=0)
    for g, g_c in zip(grads, grads_c, strict=True):
        torch.testing.assert_close(g, g_c, rtol=1e-12, atol=1e-15)
        assert bool((g[1::2] == 0).all())  # the rows of the base that were skipped
        assert bool((g[::2] != 0).any())


# -- non-finite input ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", [0, 1], ids=["view0", "view1"])
def test_non_finite_input_gives_nan(api: Api, value: float, which: int, dtype: torch.dtype) -> None:
    views = [randn(5, 7, dtype=dtype, seed=k) for k in range(2)]
    views[which][2, 3] = value
    loss = api(*views, backend="torch")
    assert torch.isnan(loss), f"non-finite input gave {float(loss)}"
    terms = smi_loss_with_terms(*views, backend="torch")
    assert not torch.isfinite(terms.alignment) and not torch.isfinite(terms.redundancy)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_check_finite_raises(value: float) -> None:
    a, b = randn(5, 7), randn(5, 7, seed=1)
    b[1, 1] = value
    b[4, 0] = value
    with pytest.raises(ValueError, match=r"view 1 holds 2 non-finite values"):
        smi_loss(a, b, check_finite=True)
    with pytest.raises(ValueError, match=r"view 1 holds 2 non-finite values"):
        smi_loss_with_terms(a, b, check_finite=True)
    with pytest.raises(ValueError, match=r"view 1 holds 2 non-finite values"):
        SMILoss(check_finite=True)(a, b)
    # finite input passes the check and gives the unchecked value
    assert torch.equal(smi_loss(a, a * 2, check_finite=True), smi_loss(a, a * 2))


def test_nan_input_backward_does_not_raise() -> None:
    a, b = randn(5, 7).requires_grad_(), randn(5, 7, seed=1)
    b[0, 0] = math.nan
    loss = smi_loss(a, b, backend="torch")
    loss.backward()
    assert a.grad is not None and a.grad.shape == a.shape


@pytest.mark.parametrize(
    "row", ["constant-3e38", "seven-3e38-and-0", "pm-2e38"], ids=lambda row: row
)
def test_finite_inputs_near_float32_max_give_finite_loss(row: str) -> None:
    a, b = randn(4, 8, seed=1), randn(4, 8, seed=2)
    if row == "constant-3e38":
        b[1] = 3e38
    elif row == "seven-3e38-and-0":
        b[1] = 3e38
        b[1, 0] = 0.0
    else:
        b[1] = 2e38 * torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    assert torch.isfinite(b).all()
    assert torch.isfinite(smi_loss(a, b, backend="torch"))


# -- constant rows ------------------------------------------------------------------------------

CONSTANT_CASES = ["one-row", "whole-view", "both-views", "zero-row"]
CONSTANT_DTYPES = [F64, torch.float32, torch.bfloat16, torch.float16]


def constant_views(case: str, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Two (6, 9) views with constant rows, and the (12,) mask of the constant rows."""
    a, b = randn(6, 9, dtype=dtype, seed=3), randn(6, 9, dtype=dtype, seed=4)
    if case == "one-row":
        b[2] = 1.5
    elif case == "whole-view":
        b[:] = -2.0
    elif case == "both-views":
        a[:] = 0.25
        b[:] = 7.0
    else:
        a[4] = 0.0
    constant = torch.cat([a, b]).float().std(dim=1) == 0
    assert constant.any()
    return a.requires_grad_(), b.requires_grad_(), constant


CONSTANT_PARAMS = [
    pytest.param(
        case,
        dtype,
        id=f"{case}-{str(dtype).removeprefix('torch.')}",
    )
    for case in CONSTANT_CASES
    for dtype in CONSTANT_DTYPES
]


@pytest.mark.parametrize(("case", "dtype"), CONSTANT_PARAMS)
def test_constant_rows_are_finite(case: str, dtype: torch.dtype) -> None:
    a, b, constant = constant_views(case, dtype)
    out = smi_loss_with_terms(a, b, backend="torch")
    assert all(bool(torch.isfinite(term)) for term in out)
    grads = torch.autograd.grad(out.loss, (a, b))
    for grad in grads:
        assert torch.isfinite(grad).all()
    # a constant row standardises to 0: rho = 0 against everything, like the reference
    ref = reference_loss(a.detach().double(), b.detach().double())
    tol = 1e-10 if dtype == F64 else 1e-5
    assert float(abs(out.loss.detach().double() - ref) / ref) <= tol
    if dtype == F64 and not constant.all():
        exact = [x.detach().double().requires_grad_() for x in (a, b)]
        grads_ref = torch.autograd.grad(reference_loss(*exact), exact)
        varying = ~constant
        grad = torch.cat(grads)[varying]
        grad_ref = torch.cat(grads_ref)[varying]
        assert float((grad - grad_ref).norm() / grad_ref.norm()) <= 1e-10


@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16], ids=str)
def test_constant_row_gradient_is_zero(dtype: torch.dtype) -> None:
    """Every rho of a constant row is exactly 0 and m'(0) = 0: its gradient is 0 (the reference
    gives exactly 0), so what the path returns there must be negligible beside the others."""
    a, b, constant = constant_views("whole-view", dtype)
    grads = torch.cat(torch.autograd.grad(smi_loss(a, b, backend="torch"), (a, b))).double()
    scale = float(grads[~constant].abs().max())
    assert scale > 0
    assert float(grads[constant].abs().max()) <= 1e-6 * scale


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("1", True), ("true", True), ("ON", True), ("0", False), ("false", False), ("", False)],
)
def test_interpreter_flag_read_as_triton_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert loss_module.interpreter_enabled() is enabled

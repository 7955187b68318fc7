"""The calling conventions of lightly's losses, and ``reduction``, as a lightly user meets them.

* views by position or as ``z_a=`` / ``z_b=``, through the same validation;
* ``gather_distributed=True`` or ``"sharded"`` in one process with no process group: the local
  loss (a world of one), as lightly's ``BarlowTwinsLoss`` computes;
* ``reduction="mean"``: each term over its own count of pairs, against the float64 reference,
  and a loss that no longer grows with the batch;
* lightly's own ``BarlowTwinsLoss`` beside ``SMILoss``, called the same ways (where lightly is
  installed: ``.ci/run`` installs it without its dependencies).
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from helpers import BACKENDS, EPS, LAMBDA, make_views, reference_terms_and_grads
from torch import nn

from smi_kernels import SMILoss, reference, smi_loss, smi_loss_with_terms
from smi_kernels.loss import pair_counts

#: float64 agreement of "mean" with the reference divided by the pair counts
RTOL = 1e-10
#: "mean" at N and at 4N on the same distribution: the losses' ratio stays within this factor
#: (measured 0.91 to 1.02 over the test's six draws; "sum" grows 3.6x to 4.1x there)
MEAN_FACTOR = 1.25


def views_of(v: int, n: int, d: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    """``v`` augmented views of one batch: a shared signal plus independent noise."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return [
        (base + 0.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)).to(dtype)
        for _ in range(v)
    ]


# ----------------------------------------------------------------------------- views by keyword


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_by_keyword_equal_views_by_position(backend):
    z_a, z_b = make_views(2, 6, 12, torch.float32, seed=1, requires_grad=False)
    loss_fn = SMILoss(backend=backend)
    want = loss_fn(z_a, z_b)
    for got in (
        loss_fn(z_a=z_a, z_b=z_b),
        loss_fn(z_a, z_b=z_b),
        loss_fn.forward_with_terms(z_a=z_a, z_b=z_b).loss,
        smi_loss(z_a=z_a, z_b=z_b, backend=backend),
        smi_loss_with_terms(z_a, z_b=z_b, backend=backend).loss,
    ):
        assert torch.equal(got, want)


def test_keyword_views_are_validated_as_positional_ones():
    z_a = torch.randn(6, 12)
    wrong = torch.randn(6, 13)
    for call in (
        lambda: SMILoss()(z_a=z_a, z_b=wrong),
        lambda: smi_loss(z_a=z_a, z_b=wrong),
    ):
        with pytest.raises(ValueError) as by_keyword:
            call()
        with pytest.raises(ValueError) as by_position:
            SMILoss()(z_a, wrong)
        assert str(by_keyword.value) == str(by_position.value)
        assert "view 1 is (6, 13)" in str(by_keyword.value)
    with pytest.raises(ValueError, match="at least two views, got 1"):
        SMILoss()(z_a=z_a)


def test_keyword_view_errors_name_the_accepted_names():
    z_a, z_b = torch.randn(6, 12), torch.randn(6, 12)
    with pytest.raises(TypeError, match=r"'z_c'.*keywords z_a and z_b"):
        SMILoss()(z_a, z_b, z_c=z_a)
    with pytest.raises(TypeError, match=r"'za'.*keywords z_a and z_b.*other keywords are lambda_"):
        smi_loss(za=z_a, z_b=z_b)
    with pytest.raises(TypeError, match="z_a given twice"):
        SMILoss()(z_a, z_b, z_a=z_a)
    with pytest.raises(TypeError, match="z_b= given without z_a"):
        SMILoss()(z_b=z_b)


# ----------------------------------------------------------------------------- no process group


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("mode", [True, "sharded"], ids=["gather", "sharded"])
def test_global_modes_without_process_group_are_the_local_loss(backend, reduction, mode):
    import torch.distributed as dist

    assert not (dist.is_available() and dist.is_initialized())
    views = make_views(2, 6, 12, torch.float32, seed=2)
    local = smi_loss_with_terms(*views, backend=backend, reduction=reduction)
    local_grads = torch.autograd.grad(local.loss, views)
    out = SMILoss(gather_distributed=mode, backend=backend, reduction=reduction)
    got = out.forward_with_terms(*views)
    grads = torch.autograd.grad(got.loss, views)
    for a, b in zip((*got, *grads), (*local, *local_grads), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- reduction


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [2, 3, 4])
def test_mean_is_each_term_over_its_count_of_pairs(backend, v):
    n = 7
    views = [z.requires_grad_() for z in views_of(v, n, 10, seed=v)]
    align_count, red_count = pair_counts(v, n)
    loss, align, red, _ = reference_terms_and_grads(views)
    want_align, want_red = align / align_count, red / red_count
    want_loss = want_align + LAMBDA * want_red
    exact = [z.detach().clone().requires_grad_() for z in views]
    ref_out = reference.smi_loss_with_terms(*exact, lambda_param=LAMBDA, eps=EPS)
    want_grads = torch.autograd.grad(
        ref_out.alignment / align_count + LAMBDA * ref_out.redundancy / red_count, exact
    )
    out = smi_loss_with_terms(*views, backend=backend, reduction="mean")
    grads = torch.autograd.grad(out.loss, views)
    terms = ((out.loss, want_loss), (out.alignment, want_align), (out.redundancy, want_red))
    for got, want in terms:
        assert abs(float(got.detach()) - float(want)) <= RTOL * abs(float(want))
    for got, want in zip(grads, want_grads, strict=True):
        assert float((got - want).norm() / want.norm()) < RTOL
    # "sum" is untouched
    assert abs(float(smi_loss(*views, backend=backend)) - float(loss)) <= RTOL * float(loss)


def test_mean_does_not_grow_with_the_batch():
    """Same distribution, N and 4N: "mean" stays within MEAN_FACTOR, "sum" grows ~4x (the
    alignment term, a sum over the N samples, dominates it)."""
    for n in (32, 64):
        for seed in range(3):
            small = views_of(2, n, 128, seed=seed, dtype=torch.float32)
            large = views_of(2, 4 * n, 128, seed=100 + seed, dtype=torch.float32)
            mean = [float(smi_loss(*views, reduction="mean")) for views in (small, large)]
            mean_ratio = mean[1] / mean[0]
            sum_ratio = float(smi_loss(*large) / smi_loss(*small))
            assert 1 / MEAN_FACTOR < mean_ratio < MEAN_FACTOR, (n, seed, mean_ratio)
            assert sum_ratio > 3, (n, seed, sum_ratio)


def test_mean_lambda_is_sum_lambda_rescaled():
    """The documented equivalence: "mean" with lambda is "sum" with
    lambda (V - 1) / ((V + 1) (N - 1)), divided by C(V, 2) N."""
    for v in (2, 3):
        views = views_of(v, 9, 16, seed=3)
        align_count, _ = pair_counts(v, 9)
        rescaled = LAMBDA * (v - 1) / ((v + 1) * (9 - 1))
        mean = smi_loss(*views, reduction="mean")
        summed = smi_loss(*views, lambda_param=rescaled) / align_count
        assert abs(float(mean - summed)) <= 1e-12 * float(summed)


def test_reduction_is_validated():
    z_a, z_b = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"reduction must be one of \('sum', 'mean'\), got 'avg'"):
        SMILoss(reduction="avg")
    with pytest.raises(ValueError, match=r"reduction must be one of \('sum', 'mean'\), got 'none'"):
        smi_loss(z_a, z_b, reduction="none")


def test_repr_lists_every_argument():
    text = repr(SMILoss(reduction="mean", check_finite=True))
    for name in inspect.signature(SMILoss.__init__).parameters:
        if name != "self":
            assert f"{name}=" in text, name
    assert "reduction='mean'" in text and "check_finite=True" in text


# ----------------------------------------------------------------------------- lightly beside SMI


def lightly_barlow_twins() -> type[nn.Module]:
    """lightly's ``BarlowTwinsLoss``. ``import lightly.loss`` needs torchvision (lightly 1.6:
    ``lightly.loss`` imports ``torchvision.ops.roi_align``), and PyPI's torchvision does not
    import beside a CPU torch; the module itself needs only torch, so it is loaded from its file
    where the package import fails."""
    spec = importlib.util.find_spec("lightly")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "lightly is not installed; .ci/run installs it: pip install --no-deps lightly==1.6.0"
        )
    try:
        from lightly.loss import BarlowTwinsLoss
    except ImportError:
        path = Path(spec.submodule_search_locations[0]) / "loss" / "barlow_twins_loss.py"
        module_spec = importlib.util.spec_from_file_location("lightly_barlow_twins_loss", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        BarlowTwinsLoss = module.BarlowTwinsLoss
    return BarlowTwinsLoss


def test_smi_is_called_as_lightly_barlow_twins_is():
    BarlowTwinsLoss = lightly_barlow_twins()
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64))
    x = torch.randn(32, 20)
    for loss_fn in (
        BarlowTwinsLoss(gather_distributed=True),
        SMILoss(gather_distributed=True),
        SMILoss(gather_distributed="sharded", reduction="mean"),
    ):
        z_a, z_b = encoder(x + 0.1 * torch.randn_like(x)), encoder(x + 0.1 * torch.randn_like(x))
        by_position = loss_fn(z_a, z_b)
        by_keyword = loss_fn(z_a=z_a, z_b=z_b)
        assert torch.equal(by_position, by_keyword), loss_fn
        encoder.zero_grad()
        by_keyword.backward()
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters()), loss_fn


def test_mean_scales_with_the_batch_as_lightly_barlow_twins_does():
    """lightly's loss does not grow with N; SMI "mean" neither, and "sum" does."""
    BarlowTwinsLoss = lightly_barlow_twins()
    losses: dict[str, list[float]] = {"barlow": [], "smi_mean": [], "smi_sum": []}
    for n in (32, 128, 512):
        z_a, z_b = views_of(2, n, 64, seed=n, dtype=torch.float32)
        losses["barlow"].append(float(BarlowTwinsLoss()(z_a, z_b)))
        losses["smi_mean"].append(float(SMILoss(reduction="mean")(z_a, z_b)))
        losses["smi_sum"].append(float(SMILoss()(z_a, z_b)))
    for key in ("barlow", "smi_mean"):
        assert max(losses[key]) / min(losses[key]) < 2.5, losses
    assert losses["smi_sum"][2] / losses["smi_sum"][0] > 10, losses

"""``SMILoss`` and the functional API: validation, backend choice, the optional gather.

The loss of V >= 2 views of shape (N, D), row i of every view from the same original sample, is
written out formula by formula in :mod:`smi_kernels.reference` (and in docs/design.md, section 1,
in the repository): ``L = L_align + lambda_param * L_red``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from smi_kernels import _checks
from smi_kernels._torch import autocast_available, smi_torch


class SMIOutput(NamedTuple):
    """The loss and its two terms, from one pass: ``loss = alignment + lambda * redundancy``."""

    loss: Tensor
    alignment: Tensor
    redundancy: Tensor


#: the keyword options of :func:`smi_loss` and :class:`SMILoss`, named when a keyword is unknown
OPTIONS = ("lambda_param", "eps", "backend", "check_finite", "gather_distributed", "reduction")


def triton_available() -> bool:
    """True when triton imports (Linux with a triton wheel)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value ("1", "true", "yes", "on", as Triton
    reads it): Triton kernels then run on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def interpreter_set_too_late() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now but triton was imported without it.

    Triton decides at decoration time whether a ``@triton.jit`` function is interpreted: its own
    library functions (``tl.sum``...) when triton is imported, the package's kernels when
    ``smi_kernels._triton`` is. Compiled-mode functions cannot run on CPU tensors.
    """
    if torch.compiler.is_compiling():
        return False  # the eager call before tracing has already checked
    try:
        from triton.language import standard
        from triton.runtime.jit import JITFunction
    except ImportError:
        return False
    # one of triton's library functions, and one of the package's kernels where imported (every
    # kernel module is decorated in the same import, so one stands for all): O(1) per call
    functions = [getattr(standard, "sum", None)]
    kernels = sys.modules.get("smi_kernels._triton.standardize")
    if kernels is not None:
        functions.append(getattr(kernels, "standardize_kernel", None))
    return any(isinstance(function, JITFunction) for function in functions)


def resolve_backend(backend: str, views: Sequence[Tensor]) -> str:
    """The backend that will run: "torch" or "triton".

    "auto" takes Triton for CUDA tensors of float32, bfloat16 or float16 when triton imports, and
    the PyTorch path otherwise (float64 on the GPU included). "triton" insists, and raises a
    ``ValueError`` where the kernels cannot run: CPU tensors without the Triton interpreter,
    or float64 on the GPU.
    """
    _checks.check_backend(backend)
    device = views[0].device
    dtype = views[0].dtype
    if backend == "torch":
        return "torch"
    if backend == "auto":
        use = device.type == "cuda" and dtype != torch.float64 and triton_available()
        return "triton" if use else "torch"
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package, which does not import here")
    if device.type == "cuda":
        if dtype == torch.float64:
            raise TypeError(
                "backend='triton' takes float32, bfloat16 or float16 on the GPU, got float64; "
                "use backend='torch' (or 'auto') for float64"
            )
        return "triton"
    if device.type == "cpu" and interpreter_enabled():
        if interpreter_set_too_late():
            raise RuntimeError(
                "backend='triton' on the CPU: TRITON_INTERPRET=1 was set after triton was "
                "imported (torch.compile and torch._inductor import it), so triton built its "
                "kernels for a GPU and they cannot run on CPU tensors. Set TRITON_INTERPRET=1 "
                "before triton is first imported: in the environment "
                "(TRITON_INTERPRET=1 python script.py), or in os.environ at the top of the "
                "script, before importing torch._inductor or calling torch.compile"
            )
        return "triton"
    raise ValueError(
        f"backend='triton' needs CUDA tensors (got device {device}); set TRITON_INTERPRET=1 "
        "before importing triton to run the kernels on the CPU under the interpreter"
    )


def autocast_dtype(views: Sequence[Tensor]) -> torch.dtype | None:
    """The dtype autocast asks for on the views' device, or None when autocast is off there."""
    device_type = views[0].device.type
    if not autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def pair_counts(v: int, n: int) -> tuple[int, int]:
    """How many terms each sum of the loss holds, for ``v`` views of ``n`` samples.

    ``L_align`` sums ``C(v, 2) n`` positive pairs; ``L_red`` sums the ``n (n - 1)`` off-diagonal
    entries of ``C(v, 2)`` cross matrices and ``v`` self matrices, ``v (v + 1) / 2 n (n - 1)`` in
    all. ``reduction="mean"`` divides each term by its own count.

    >>> pair_counts(2, 256)
    (256, 195840)
    """
    return v * (v - 1) // 2 * n, v * (v + 1) // 2 * n * (n - 1)


def _global_batch(views: Sequence[Tensor], gather_distributed: bool | str) -> int:
    """N of the batch the loss is defined on: the local N, or (sharded mode) W times it."""
    n = views[0].shape[0]
    if gather_distributed == "sharded":
        n *= torch.distributed.get_world_size()
    return n


def _smi(
    views: Sequence[Tensor],
    lambda_param: float,
    eps: float,
    backend: str,
    check_finite: bool,
    gather_distributed: bool | str,
    reduction: str = "sum",
) -> SMIOutput:
    _checks.check_hyperparameters(lambda_param, eps)
    _checks.check_gather_distributed(gather_distributed)
    _checks.check_backend(backend)
    _checks.check_reduction(reduction)
    _checks.check_views(views)
    if check_finite:
        _checks.check_finite_views(views)
    if gather_distributed is not False:
        from smi_kernels import distributed

        if not distributed.is_distributed():
            # as lightly's losses do: with no process group the global batch is the local one,
            # the world-of-one result of either global mode
            gather_distributed = False
        elif gather_distributed is True:
            views = distributed.gather_views(views)
    amp_dtype = autocast_dtype(views)
    if amp_dtype is not None and views[0].dtype == torch.float32:
        # like torch.matmul under autocast: the Gram runs in the autocast dtype, with float32
        # accumulation and a float32 loss
        views = [view.to(amp_dtype) for view in views]
    chosen = resolve_backend(backend, views)
    if gather_distributed == "sharded":
        from smi_kernels.sharded import smi_sharded

        out = smi_sharded(views, float(lambda_param), float(eps), backend=chosen)
    elif chosen == "triton":
        from smi_kernels._triton.op import smi_triton

        out = smi_triton(views, float(lambda_param), float(eps))
    else:
        out = smi_torch(views, float(lambda_param), float(eps))
    if reduction == "sum":
        return SMIOutput(out[0], out[1], out[2])
    align_count, red_count = pair_counts(len(views), _global_batch(views, gather_distributed))
    alignment, redundancy = out[1] / align_count, out[2] / red_count
    return SMIOutput(alignment + float(lambda_param) * redundancy, alignment, redundancy)


def smi_loss(
    *views: Tensor,
    lambda_param: float = 5e-3,
    eps: float = 1e-4,
    backend: str = "auto",
    check_finite: bool = False,
    gather_distributed: bool | str = False,
    reduction: str = "sum",
    **named_views: Tensor,
) -> Tensor:
    """SMI loss of two or more views, a scalar.

    Args:
        *views: tensors of shape (N, D), N >= 2, D >= 2, same shape, dtype and device;
            row i of every view comes from the same original sample. The first two may go by
            keyword instead, as ``z_a=`` and ``z_b=`` (lightly's names).
        lambda_param: weight of the redundancy term (default 5e-3, the Barlow Twins value).
        eps: keeps ``m(rho) = -1/2 log(1 - rho^2 + eps)`` finite at rho = +-1 (default 1e-4).
        backend: "auto" (Triton on CUDA, PyTorch elsewhere), "torch" or "triton".
        check_finite: raise ``ValueError`` on NaN/Inf input instead of returning NaN.
        gather_distributed: False (default): the local batch, no communication. True: the
            loss of the batch gathered from every rank, computed whole on each rank.
            "sharded": the same global loss and gradients, each rank computing only its own
            share of S and G (W times fewer multiply-adds per rank than True with W ranks, on
            either backend). Both global modes need a backward on every rank; with no
            initialised process group they compute the local loss (the world-of-one result),
            as lightly's losses do.
        reduction: "sum" (default): each term sums its pairs, as Barlow Twins does. "mean":
            each term is divided by its own count of pairs (:func:`pair_counts`: ``C(V, 2) N``
            for the alignment, ``V (V + 1) / 2 N (N - 1)`` for the redundancy, N of the global
            batch in the global modes), so the loss no longer grows with N. ``lambda_param``
            then weighs the mean redundancy entry against the mean alignment pair: "mean"
            with ``lambda_param`` is "sum" with ``lambda_param * (V - 1) / ((V + 1) (N - 1))``,
            divided by ``C(V, 2) N``.

    Returns:
        The loss: float64 for float64 views, float32 otherwise (half inputs accumulate in
        float32). Non-finite input gives a NaN loss unless ``check_finite`` is set.

    Examples:
        >>> import torch
        >>> from smi_kernels import smi_loss
        >>> z_a, z_b = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss = smi_loss(z_a, z_b)
    """
    views = _checks.collect_views(views, named_views, OPTIONS)
    return _smi(views, lambda_param, eps, backend, check_finite, gather_distributed, reduction).loss


def smi_loss_with_terms(
    *views: Tensor,
    lambda_param: float = 5e-3,
    eps: float = 1e-4,
    backend: str = "auto",
    check_finite: bool = False,
    gather_distributed: bool | str = False,
    reduction: str = "sum",
    **named_views: Tensor,
) -> SMIOutput:
    """``SMIOutput(loss, alignment, redundancy)`` from one pass; all three are differentiable.

    ``redundancy`` is unweighted: ``loss = alignment + lambda_param * redundancy``, with both
    terms reduced as ``reduction`` says. The ratio ``lambda_param * redundancy / alignment`` is
    the paper's redundancy-to-alignment diagnostic. Arguments as for :func:`smi_loss`.

    Examples:
        >>> import torch
        >>> from smi_kernels import smi_loss_with_terms
        >>> out = smi_loss_with_terms(torch.randn(8, 32), torch.randn(8, 32))
        >>> bool(torch.isclose(out.loss, out.alignment + 5e-3 * out.redundancy))
        True
    """
    views = _checks.collect_views(views, named_views, OPTIONS)
    return _smi(views, lambda_param, eps, backend, check_finite, gather_distributed, reduction)


class SMILoss(nn.Module):
    """Semantic Mutual Information loss (Mishra, Ballester, Karatzas, "SMI: Efficient
    Self-Supervised Learning via Mutual-Information-Inspired Dependency Optimization", arXiv
    2606.08332), as this package reads it: the paper's equations were lost, the reading is
    written out in the README's "The loss" and in :mod:`smi_kernels.reference`.

    Sample-level N x N correlations between the samples of a batch, passed through the Gaussian
    mutual-information transform ``m(rho) = -1/2 log(1 - rho^2 + eps)``; positives are aligned
    (``(1 - m)^2`` on the pairs of views of one sample) and redundancy is reduced (``m^2`` on every
    other pair, within and across views): ``L = L_align + lambda_param * L_red``.

    Args:
        lambda_param: redundancy weight, >= 0 (default 5e-3).
        eps: stabiliser of the transform, > 0 (default 1e-4).
        gather_distributed: False (default): each rank uses its local batch, the paper's
            setting, with no communication. True: all-gather the views from every rank (with
            gradients) and compute the loss of the global batch on every rank. "sharded": the
            same global loss and gradients, each rank computing only its share of S and G
            (see ``smi_kernels.sharded``). With no initialised process group, both global
            modes compute the local loss, as lightly's losses do.
        backend: "auto" | "torch" | "triton".
        check_finite: raise on NaN/Inf input (costs a device synchronisation).
        reduction: "sum" (default) or "mean": each term divided by its own count of pairs, so
            the loss does not grow with the batch (see :func:`smi_loss`).

    Examples:
        >>> import torch
        >>> from smi_kernels import SMILoss
        >>> loss_fn = SMILoss()
        >>> z_a, z_b = torch.randn(16, 64), torch.randn(16, 64)
        >>> loss = loss_fn(z_a, z_b)
        >>> loss_fn(z_a=z_a, z_b=z_b).item() == loss.item()  # lightly's keywords
        True
    """

    def __init__(
        self,
        lambda_param: float = 5e-3,
        eps: float = 1e-4,
        gather_distributed: bool | str = False,
        backend: str = "auto",
        check_finite: bool = False,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        _checks.check_hyperparameters(lambda_param, eps)
        _checks.check_backend(backend)
        _checks.check_gather_distributed(gather_distributed)
        _checks.check_reduction(reduction)
        self.lambda_param = float(lambda_param)
        self.eps = float(eps)
        self.gather_distributed = gather_distributed
        self.backend = backend
        self.check_finite = bool(check_finite)
        self.reduction = reduction

    def forward(self, *views: Tensor, **named_views: Tensor) -> Tensor:
        """The scalar loss of the views: ``loss_fn(z_a, z_b, *more_views)``, two or more
        tensors of shape (N, D); ``z_a`` and ``z_b`` may go by keyword."""
        return self.forward_with_terms(*views, **named_views).loss

    def forward_with_terms(self, *views: Tensor, **named_views: Tensor) -> SMIOutput:
        """``SMIOutput(loss, alignment, redundancy)`` of the views from one pass (views as for
        :meth:`forward`)."""
        return _smi(
            _checks.collect_views(views, named_views),
            self.lambda_param,
            self.eps,
            self.backend,
            self.check_finite,
            self.gather_distributed,
            self.reduction,
        )

    def extra_repr(self) -> str:
        """Every constructor argument, as ``repr(SMILoss(...))`` shows them."""
        return (
            f"lambda_param={self.lambda_param}, eps={self.eps}, "
            f"gather_distributed={self.gather_distributed!r}, backend={self.backend!r}, "
            f"check_finite={self.check_finite}, reduction={self.reduction!r}"
        )

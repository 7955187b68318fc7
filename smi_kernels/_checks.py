"""Validation of what a user passes to SMI: every message names the offending value."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "triton")
FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def check_hyperparameters(lambda_param: float, eps: float) -> None:
    """``lambda_param >= 0`` and finite; ``eps > 0`` and finite."""
    if isinstance(lambda_param, bool) or not isinstance(lambda_param, (int, float)):
        raise TypeError(f"lambda_param must be a float, got {type(lambda_param).__name__}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not math.isfinite(lambda_param) or lambda_param < 0:
        raise ValueError(f"lambda_param must be finite and >= 0, got {lambda_param}")
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be finite and > 0, got {eps}")


def check_backend(backend: str) -> None:
    """``backend`` is one of "auto", "torch", "triton"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_gather_distributed(gather_distributed: bool | str) -> None:
    """``gather_distributed`` is False (local), True (gather) or "sharded"."""
    if isinstance(gather_distributed, str):
        if gather_distributed != "sharded":
            raise ValueError(
                f"gather_distributed must be False, True or 'sharded', got {gather_distributed!r}"
            )
    elif not isinstance(gather_distributed, bool):
        raise TypeError(
            "gather_distributed must be a bool or the string 'sharded', got "
            f"{type(gather_distributed).__name__}"
        )


REDUCTIONS = ("sum", "mean")
#: the keyword names of the first two views, as lightly's losses take them: ``forward(z_a, z_b)``
VIEW_KEYWORDS = ("z_a", "z_b")


def check_reduction(reduction: str) -> None:
    """``reduction`` is "sum" or "mean"."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def collect_views(
    views: Sequence[Tensor], named: dict[str, Tensor], options: Sequence[str] = ()
) -> tuple[Tensor, ...]:
    """The views in order, from positional views and the keywords ``z_a`` and ``z_b``.

    ``loss_fn(a, b, c)``, ``loss_fn(z_a=a, z_b=b)`` and ``loss_fn(a, z_b=b)`` give the same
    views; the result then goes through :func:`check_views` like any positional call.
    """
    unknown = [name for name in named if name not in VIEW_KEYWORDS]
    if unknown:
        others = f"; the other keywords are {', '.join(options)}" if options else ""
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}: the views go by position or as the "
            f"keywords {' and '.join(VIEW_KEYWORDS)} (loss_fn(z_a, z_b, *more_views)){others}"
        )
    collected = list(views)
    for position, name in enumerate(VIEW_KEYWORDS):
        if name not in named:
            continue
        if position < len(views):
            raise TypeError(
                f"view {name} given twice: as positional view {position} and as {name}="
            )
        if position > len(collected):
            raise TypeError(
                f"{name}= given without {VIEW_KEYWORDS[position - 1]}: pass the views in order, "
                f"loss_fn(z_a, z_b, *more_views)"
            )
        collected.append(named[name])
    return tuple(collected)


SEPARATE_ARGUMENTS = (
    "; the views go in as separate arguments: loss_fn(z_a, z_b), or loss_fn(*views) for a "
    "list or tuple of views"
)


def _packed_hint(views: Sequence[object]) -> str:
    """What to say when the views came packed in one argument (a list, a tuple, or one tensor
    of stacked views), the usual way to end up with a single view."""
    if len(views) != 1:
        return ""
    packed = views[0]
    if isinstance(packed, (list, tuple)):
        return f" (one {type(packed).__name__} of {len(packed)} items){SEPARATE_ARGUMENTS}"
    if isinstance(packed, Tensor) and packed.dim() == 3:
        return (
            f" (one 3-D tensor of shape {tuple(packed.shape)}); stacked views go in as "
            "separate arguments: loss_fn(*z.unbind(0)), and a list of views as loss_fn(*views)"
        )
    return ""


def check_views(views: Sequence[Tensor]) -> None:
    """At least two views, each a 2-D floating tensor of the same shape, dtype and device,
    with N >= 2 samples and D >= 2 features."""
    if len(views) < 2:
        raise ValueError(f"SMI needs at least two views, got {len(views)}{_packed_hint(views)}")
    for k, view in enumerate(views):
        if not isinstance(view, Tensor):
            hint = SEPARATE_ARGUMENTS if isinstance(view, (list, tuple)) else ""
            raise TypeError(f"view {k} must be a torch.Tensor, got {type(view).__name__}{hint}")
    first = views[0]
    for k, view in enumerate(views):
        if view.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"view {k} has dtype {view.dtype}; SMI takes float64, float32, bfloat16 or float16"
            )
        if view.dim() != 2:
            raise ValueError(
                f"view {k} must be 2-D (N samples, D features), got shape {tuple(view.shape)}"
            )
        if view.shape != first.shape:
            raise ValueError(
                f"all views must have the same shape: view 0 is {tuple(first.shape)}, "
                f"view {k} is {tuple(view.shape)}"
            )
        if view.dtype != first.dtype:
            raise TypeError(
                f"all views must have the same dtype: view 0 is {first.dtype}, "
                f"view {k} is {view.dtype}"
            )
        if view.device != first.device:
            raise ValueError(
                f"all views must be on the same device: view 0 is on {first.device}, "
                f"view {k} is on {view.device}"
            )
    n, d = first.shape
    if n < 2:
        raise ValueError(f"SMI needs N >= 2 samples per view, got shape {tuple(first.shape)}")
    if d < 2:
        raise ValueError(f"SMI needs D >= 2 features per sample, got shape {tuple(first.shape)}")


def check_finite_views(views: Sequence[Tensor]) -> None:
    """Raise if any view holds NaN or Inf (this synchronises with the device)."""
    for k, view in enumerate(views):
        if not bool(torch.isfinite(view).all()):
            bad = int((~torch.isfinite(view)).sum())
            raise ValueError(f"view {k} holds {bad} non-finite values (NaN or Inf)")

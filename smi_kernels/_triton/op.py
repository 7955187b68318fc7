"""The Triton path: host functions, the eager autograd function, and the torch.library ops.

A step is four launches forward (standardisation, Gram tiles, [split-K epilogue,] the fixed-order
reduction) and one backward, with two allocations forward (the loss vector and one workspace,
see ``plan.py``) and one backward (dz). The host work per call is a cached plan look-up, the
two allocations and the launches: no device query, no copy of the views, no allocator
statistics. The memory model is checked once per shape; an allocation that fails later is
reported with the same explanation.

Two entries reach the same host functions:

* eager (no torch.compile, no dispatch mode such as FlopCounterMode or FakeTensorMode active):
  ``_SMITriton``, an autograd function that reads the views where they lie;
* otherwise the custom ops ``smi_kernels::smi_forward(z, lambda_param, eps, need_grad)`` on the
  stacked views z (V, N, D), returning ``[out, workspace]`` (``out`` = (L, L_align, L_red)), and
  ``smi_kernels::smi_backward``, with fake implementations, autograd and FLOP formulas, so
  torch.compile traces them without graph breaks and FLOP counters see them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from smi_kernels import flops, memory
from smi_kernels._math import float16_gradient_scale
from smi_kernels._torch import refuse_double_backward
from smi_kernels._triton import configs
from smi_kernels._triton.grad import gram_backward_kernel
from smi_kernels._triton.gram import (
    finalize_block,
    finalize_kernel,
    gram_epilogue_kernel,
    gram_forward_kernel,
)
from smi_kernels._triton.plan import Plan, accumulator, plan_for
from smi_kernels._triton.standardize import standardize_kernel

#: rows of the radial reduction per program of the finalize launch
RADIAL_BLOCK = 1024
#: views read in place (more are stacked into one buffer first)
MAX_VIEWS_IN_PLACE = 4


def allocate(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the ops write (one place, so a test can poison them all)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


class Pointer:
    """What a Triton launch needs of a tensor argument: its address and dtype. Typed views of the
    workspace cost a few microseconds each as tensors; on the GPU they are passed as these."""

    __slots__ = ("address", "dtype")

    def __init__(self, address: int, dtype: torch.dtype) -> None:
        self.address = address
        self.dtype = dtype

    def data_ptr(self) -> int:
        return self.address


def segments(workspace: Tensor, plan: Plan) -> dict[str, Tensor | Pointer]:
    """Typed views of the workspace segments: Pointers on the GPU, tensors elsewhere (the
    interpreter reads tensors)."""
    if not interpreting(plan):
        base = workspace.data_ptr()
        return {name: Pointer(base + seg.offset, seg.dtype) for name, seg in plan.segments.items()}
    views = {}
    for name, seg in plan.segments.items():
        raw = workspace[seg.offset : seg.offset + seg.nbytes]
        views[name] = raw.view(seg.dtype).view(seg.shape)
    return views


def pointers(seg: dict[str, Tensor | Pointer], *names: str) -> dict[str, Tensor | Pointer]:
    """Kernel arguments ``<name>_ptr``: the workspace segments ``names``."""
    return {f"{name}_ptr": seg[name] for name in names}


def interpreting(plan: Plan) -> bool:
    """True for the Triton interpreter (CPU tensors); the launches are the GPU's otherwise."""
    return plan.arch == "interpreter"


def widen_dot(plan: Plan) -> bool:
    """The interpreter's bfloat16 tl.dot is wrong (triton 3.9); widening the operands to float32
    first is exact, since bf16 x bf16 products are exact in float32."""
    return interpreting(plan) and plan.dtype == torch.bfloat16


def emulate_rtne(plan: Plan) -> bool:
    """The interpreter truncates float32 -> bfloat16 (see rounding.py)."""
    return interpreting(plan) and plan.dtype == torch.bfloat16


@functools.lru_cache(maxsize=64)
def g_scale(dtype: torch.dtype, eps: float) -> float:
    """The power of two G is stored times (float16 only, see _math.float16_gradient_scale)."""
    return float16_gradient_scale(eps) if dtype == torch.float16 else 1.0


def _compile_options(config, plan: Plan) -> dict:
    """num_warps / num_stages on the GPU; FMA contraction pinned on (Triton's default today,
    which it announced will change): the GPU results must not move with a Triton upgrade."""
    if interpreting(plan):
        return {}
    return {
        "num_warps": config.num_warps,
        "num_stages": config.num_stages,
        "enable_fp_fusion": True,
    }


_AUTOTUNED: dict[tuple, object] = {}


def _autotuned(kernel, tuning: tuple[triton.Config, ...]):
    key = (kernel, tuning)
    if key not in _AUTOTUNED:
        _AUTOTUNED[key] = triton.autotune(configs=list(tuning), key=["P", "N", "D_pad", "world"])(
            kernel
        )
    return _AUTOTUNED[key]


def forward_launcher(plan: Plan):
    """The Gram kernel with its tuning arguments bound: autotuned among the row's candidates
    with SMI_KERNELS_AUTOTUNE=1 on a GPU (the split and D_pad do not depend on them), else the
    first candidate."""
    if not interpreting(plan) and configs.autotune_enabled() and len(plan.forward) > 1:
        tuning = tuple(
            triton.Config({"BLOCK_K": c.BLOCK_K}, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in plan.forward
            if plan.k_per_split % c.BLOCK_K == 0
        )
        return _autotuned(gram_forward_kernel, tuning), {}
    first = plan.forward[0]
    return gram_forward_kernel, {"BLOCK_K": first.BLOCK_K, **_compile_options(first, plan)}


def backward_launcher(plan: Plan):
    """The backward kernel with its tuning arguments bound (as ``forward_launcher``); the grid
    depends on BLOCK_D, so autotuning keeps the first candidate's BLOCK_D."""
    first = plan.backward[0]
    if not interpreting(plan) and configs.autotune_enabled() and len(plan.backward) > 1:
        tuning = tuple(
            triton.Config(
                {
                    "BLOCK_Q": c.BLOCK_Q,
                    "BLOCK_D": first.BLOCK_D,
                    "EVEN_D": plan.d_pad % first.BLOCK_D == 0,
                },
                num_warps=c.num_warps,
                num_stages=c.num_stages,
            )
            for c in plan.backward
        )
        return _autotuned(gram_backward_kernel, tuning), {}
    options = {
        "BLOCK_Q": first.BLOCK_Q,
        "BLOCK_D": first.BLOCK_D,
        "EVEN_D": plan.d_pad % first.BLOCK_D == 0,
        **_compile_options(first, plan),
    }
    return gram_backward_kernel, options


def standardize_options(plan: Plan) -> dict:
    """Constexprs and compile options of the standardisation launch."""
    tile = configs.standardize_tile(plan.d_pad, plan.views, interpreting(plan))
    options = {
        "V": plan.views,
        "V_BLOCK": triton.next_power_of_2(plan.views),
        "BLOCK_D": tile.BLOCK_D,
        "SINGLE_PASS": tile.SINGLE_PASS,
        "EMULATE_RTNE": emulate_rtne(plan),
    }
    if not interpreting(plan):
        options.update(num_warps=tile.num_warps, enable_fp_fusion=True)
    return options


def view_offsets(views: Sequence[Tensor]) -> tuple[Tensor, list[int], int]:
    """``(base, [offsets of views 1..3], view_stride)``: where the views lie, in elements from
    view 0 (``base``). Contiguous views are read in place; more than ``MAX_VIEWS_IN_PLACE`` views,
    or a non-contiguous one, are stacked into one buffer first (``base`` then owns it, and
    view_stride is used), so every address stays valid while the kernel reads it."""
    if len(views) > MAX_VIEWS_IN_PLACE or not all(view.is_contiguous() for view in views):
        z = torch.stack(list(views))
        return z, [0, 0, 0], z.shape[1] * z.shape[2]
    base = views[0].data_ptr()
    size = views[0].element_size()
    offsets = [(view.data_ptr() - base) // size for view in views[1:]]
    return views[0], offsets + [0] * (3 - len(offsets)), 0


_CHECKED: set[tuple[Plan, torch.device]] = set()


def allocate_workspace(plan: Plan, device: torch.device) -> Tensor:
    """The forward's workspace, after the memory model's check (once per shape)."""
    if (plan, device) not in _CHECKED:
        memory.check_fits(plan.workspace_bytes, "forward", device)
        _CHECKED.add((plan, device))
    try:
        return allocate((plan.workspace_bytes,), torch.uint8, device)
    except torch.OutOfMemoryError as error:
        _CHECKED.discard((plan, device))
        raise torch.OutOfMemoryError(
            f"SMI forward needs a {plan.workspace_bytes / 2**30:.2f} GiB workspace on {device} "
            f"(V={plan.views}, N={plan.n}, D={plan.d}, {plan.dtype}) and the allocation failed; "
            "reduce N (per view), D or the number of views (see smi_kernels.memory for the model)"
        ) from error


@dataclass(frozen=True, eq=False)
class Launches:
    """Grids, kernels and keyword arguments of every launch of a plan (computed once per plan)."""

    standardize: tuple[tuple[int, ...], dict]
    forward: tuple[object, tuple[int, ...], dict]
    epilogue: tuple[tuple[int, ...], dict] | None
    finalize: tuple[tuple[int, ...], dict]
    backward: tuple[object, tuple[int, ...], dict] | None


@functools.lru_cache(maxsize=256)
def launches(plan: Plan, autotune: bool) -> Launches:
    """The launches of ``plan`` (``autotune``: SMI_KERNELS_AUTOTUNE is set)."""
    del autotune  # part of the cache key: the launchers read it
    common = {
        "NEED_GRAD": plan.need_grad,
        "SHARDED": plan.sharded,
        "EMULATE_RTNE": emulate_rtne(plan),
    }
    kernel, options = forward_launcher(plan)
    forward_options = {
        "BLOCK": plan.block,
        "HALVES": plan.halves,
        "SPLIT": plan.split,
        "INPUT_PRECISION": plan.precision,
        "WIDEN_DOT": widen_dot(plan),
        **common,
        **options,
    }
    epilogue = None
    if plan.split > 1:
        epilogue_options = {"BLOCK": plan.block, "HALVES": plan.halves, "SPLIT": plan.split}
        epilogue = (
            (plan.tiles,),
            {**epilogue_options, **common, **_compile_options(plan.forward[0], plan)},
        )
    radial_programs = triton.cdiv(plan.rows_pad, RADIAL_BLOCK) if plan.need_grad else 0
    finalize_options = {
        "BLOCK": finalize_block(max(plan.tiles, plan.n)),
        "BLOCK_R": RADIAL_BLOCK,
        "TILE": plan.block,
        "SHARDED": plan.sharded,
    }
    if not interpreting(plan):
        finalize_options["enable_fp_fusion"] = True
    finalize = ((1 + radial_programs,), finalize_options)
    backward = None
    if plan.need_grad:
        kernel_b, options_b = backward_launcher(plan)
        grid = (plan.num_blocks * triton.cdiv(plan.d, plan.backward[0].BLOCK_D),)
        options_b = {
            "V": plan.views,
            "BLOCK": plan.block,
            "HALVES": plan.backward_halves,
            "SHARDED": plan.sharded,
            "INPUT_PRECISION": plan.precision,
            "WIDEN_DOT": widen_dot(plan),
            "EMULATE_RTNE": emulate_rtne(plan),
            **options_b,
        }
        backward = (kernel_b, grid, options_b)
    return Launches(
        standardize=((plan.n + plan.rows_pad - plan.rows,), standardize_options(plan)),
        forward=(kernel, (plan.tiles * plan.split,), forward_options),
        epilogue=epilogue,
        finalize=finalize,
        backward=backward,
    )


def forward(
    views: Sequence[Tensor], lambda_param: float, eps: float, need_grad: bool
) -> tuple[Tensor, Tensor, Plan]:
    """``(out, workspace, plan)``: out = (L, L_align, L_red) of the views by the Triton kernels."""
    first = views[0]
    device = first.device
    n, d = first.shape
    plan = plan_for(len(views), n, d, first.dtype, device, need_grad)
    workspace = allocate_workspace(plan, device)
    out = allocate((3,), plan.accumulator, device)
    launch_forward(plan, views, workspace, out, lambda_param, eps)
    return out, workspace, plan


def launch_forward(
    plan: Plan,
    views: Sequence[Tensor],
    workspace: Tensor,
    out: Tensor,
    lambda_param: float,
    eps: float,
) -> None:
    """The forward launches of ``plan`` into ``workspace`` and ``out``."""
    run = launches(plan, configs.autotune_enabled())
    seg = segments(workspace, plan)
    launch_standardize(plan, run, seg, views, eps)
    launch_gram(plan, run, seg, seg["zh"], 0, eps)
    launch_finalize(plan, run, seg, out, lambda_param)


def launch_standardize(
    plan: Plan, run: Launches, seg: dict, views: Sequence[Tensor], eps: float
) -> None:
    """zh, s, the positive pairs and L_align of the views (the first launch of a forward)."""
    base, offsets, view_stride = view_offsets(views)
    grid, options = run.standardize
    standardize_kernel[grid](
        # the views
        z_ptr=base,
        view_offset_1=offsets[0],
        view_offset_2=offsets[1],
        view_offset_3=offsets[2],
        view_stride=view_stride,
        # out
        **pointers(seg, "zh", "s", "projected", "rho", "align_grad", "align"),
        # sizes and scalars
        N=plan.n,
        D=plan.d,
        D_pad=plan.d_pad,
        P=plan.rows,
        eps=eps,
        STACKED=view_stride != 0,
        **options,
    )


def launch_gram(
    plan: Plan, run: Launches, seg: dict, columns: Tensor | Pointer, rank: int, eps: float
) -> None:
    """The Gram tiles (and the split-K epilogue): L_red partials, G, the radial slots.
    ``columns``: zh itself, or (sharded) every rank's zh (W, P_pad, D_pad); ``rank`` its index."""
    scratch = seg["red"]  # a placeholder pointer for buffers a launch does not write
    g = seg["g"] if plan.need_grad else scratch
    slots = seg["radial_slots"] if plan.need_grad else scratch
    partial = seg["split_partial"] if plan.split > 1 else scratch
    # what the forward kernel and the split-K epilogue share
    arguments = {
        # pointers
        "g_ptr": g,
        "red_ptr": seg["red"],
        "radial_slots_ptr": slots,
        "split_partial_ptr": partial,
        # sizes
        "P": plan.rows,
        "P_pad": plan.rows_pad,
        "N": plan.n,
        "D_pad": plan.d_pad,
        "num_tiles": plan.tiles,
        "num_blocks": plan.num_blocks,
        # the rank in the sharded mode
        "world": plan.world,
        "rank": rank,
        "upper": int(plan.upper),
        # scalars
        "eps": eps,
        "g_scale": g_scale(plan.dtype, eps),
    }
    kernel, grid, options = run.forward
    kernel[grid](
        zh_ptr=seg["zh"],
        columns_ptr=columns,
        k_per_split=plan.k_per_split,
        **arguments,
        **options,
    )
    if run.epilogue is not None:
        grid, options = run.epilogue
        gram_epilogue_kernel[grid](**arguments, **options)


def launch_finalize(plan: Plan, run: Launches, seg: dict, out: Tensor, lambda_param: float) -> None:
    """L = L_align + lambda L_red (this rank's share, sharded) and the radial sums."""
    scratch = seg["red"]
    slots = seg["radial_slots"] if plan.need_grad else scratch
    radial = seg["radial"] if plan.need_grad else scratch
    grid, options = run.finalize
    finalize_kernel[grid](
        # the loss
        red_ptr=seg["red"],
        num_red=plan.tiles,
        align_ptr=seg["align"],
        num_align=plan.n,
        out_ptr=out,
        # the radial sums
        radial_slots_ptr=slots,
        radial_ptr=radial,
        num_blocks=plan.num_blocks,
        world=plan.world,
        upper=int(plan.upper),
        P_pad=plan.rows_pad,
        lambda_param=lambda_param,
        **options,
    )


def backward(
    grad_out: Tensor,
    workspace: Tensor,
    plan: Plan,
    lambda_param: float,
    eps: float,
    columns: Tensor | None = None,
    rank: int = 0,
) -> Tensor:
    """dz (V, N, D) from the forward's workspace and the gradient of (L, L_align, L_red);
    ``columns``, ``rank``: every rank's zh and this rank's index (sharded)."""
    # rows of D_pad: aligned, unmasked stores; the caller sees the (V, N, D) view
    dz = allocate((plan.views, plan.n, plan.d_pad), plan.dtype, workspace.device)
    if grad_out.dtype != plan.accumulator or not grad_out.is_contiguous():
        grad_out = grad_out.to(plan.accumulator).contiguous()
    seg = segments(workspace, plan)
    kernel, grid, options = launches(plan, configs.autotune_enabled()).backward
    kernel[grid](
        # pointers
        **pointers(seg, "zh", "s", "projected", "g", "radial", "rho", "align_grad"),
        columns_ptr=seg["zh"] if columns is None else columns,
        grad_out_ptr=grad_out,
        dz_ptr=dz,
        # sizes
        view_stride=plan.n * plan.d_pad,
        P=plan.rows,
        P_pad=plan.rows_pad,
        N=plan.n,
        D=plan.d,
        D_pad=plan.d_pad,
        num_blocks=plan.num_blocks,
        # the rank in the sharded mode
        world=plan.world,
        rank=rank,
        upper=int(plan.upper),
        # scalars
        lambda_param=lambda_param,
        inv_g_scale=1.0 / g_scale(plan.dtype, eps),
        **options,
    )
    return dz if plan.d_pad == plan.d else dz[..., : plan.d]


# ---------------------------------------------------------------- eager entry


class _SMITriton(torch.autograd.Function):
    """(L, L_align, L_red) of the views, reading them in place; the backward is one launch."""

    @staticmethod
    def forward(ctx, lambda_param: float, eps: float, need_grad: bool, *views: Tensor) -> Tensor:  # type: ignore[override]
        out, workspace, plan = forward(views, lambda_param, eps, need_grad)
        if need_grad:
            ctx.save_for_backward(workspace)
        ctx.plan = plan
        ctx.lambda_param = lambda_param
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        refuse_double_backward()
        (workspace,) = ctx.saved_tensors
        dz = backward(grad_out, workspace, ctx.plan, ctx.lambda_param, ctx.eps)
        needs = ctx.needs_input_grad[3:]
        return (None, None, None, *(dz[k] if needs[k] else None for k in range(len(needs))))


# ---------------------------------------------------------------- torch.library ops


@torch.library.custom_op("smi_kernels::smi_forward", mutates_args=())
def smi_forward(z: Tensor, lambda_param: float, eps: float, need_grad: bool) -> list[Tensor]:
    """Fused SMI forward on stacked views z (V, N, D): ``[out, workspace]``."""
    z = z.contiguous()
    out, workspace, _ = forward(z.unbind(0), lambda_param, eps, need_grad)
    return [out, workspace]


@smi_forward.register_fake
def _smi_forward_fake(z: Tensor, lambda_param: float, eps: float, need_grad: bool) -> list[Tensor]:
    plan = plan_for(*z.shape, z.dtype, z.device, need_grad)
    return [
        z.new_empty((3,), dtype=plan.accumulator),
        z.new_empty((plan.workspace_bytes,), dtype=torch.uint8),
    ]


@torch.library.custom_op("smi_kernels::smi_backward", mutates_args=())
def smi_backward(
    grad_out: Tensor,
    workspace: Tensor,
    z_shape: list[int],
    dtype: torch.dtype,
    precision: str,
    lambda_param: float,
    eps: float,
) -> Tensor:
    """dz (V, N, D) from smi_forward's workspace and the gradient of (L, L_align, L_red)."""
    plan = plan_for(*z_shape, dtype, workspace.device, True, precision=precision)
    return backward(grad_out, workspace, plan, lambda_param, eps)


@smi_backward.register_fake
def _smi_backward_fake(grad_out, workspace, z_shape, dtype, precision, lambda_param, eps) -> Tensor:
    return workspace.new_empty(tuple(z_shape), dtype=dtype)


def _setup_context(ctx, inputs, output) -> None:
    z, lambda_param, eps, need_grad = inputs
    ctx.lambda_param = lambda_param
    ctx.eps = eps
    ctx.need_grad = need_grad
    ctx.z_shape = list(z.shape)
    ctx.dtype = z.dtype
    ctx.precision = torch.get_float32_matmul_precision()
    if need_grad:
        ctx.save_for_backward(output[1])


def _backward(ctx, grads):
    refuse_double_backward()
    if not ctx.need_grad:
        raise RuntimeError(
            "smi_kernels::smi_forward ran with need_grad=False, so G was not stored; "
            "call it with need_grad=True to differentiate"
        )
    grad_out = grads[0]
    (workspace,) = ctx.saved_tensors
    if grad_out is None:
        grad_out = workspace.new_zeros(3, dtype=accumulator(ctx.dtype))
    dz = smi_backward(
        grad_out, workspace, ctx.z_shape, ctx.dtype, ctx.precision, ctx.lambda_param, ctx.eps
    )
    return dz, None, None, None


smi_forward.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.smi_kernels.smi_forward)
def _smi_forward_flops(z_shape, *args, **kwargs) -> int:
    return flops.flop_formula_forward(z_shape)


@register_flop_formula(torch.ops.smi_kernels.smi_backward)
def _smi_backward_flops(grad_shape, workspace_shape, z_shape, *args, **kwargs) -> int:
    v, n, d = z_shape
    return 2 * flops.fused_backward_macs(n, d, views=v)


def eager(device: torch.device) -> bool:
    """True when the autograd function can run directly: real tensors (not meta), not tracing,
    no dispatch mode (FlopCounterMode, FakeTensorMode, ...)."""
    return (
        device.type != "meta"
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
    )


def smi_triton(views: Sequence[Tensor], lambda_param: float, eps: float) -> Tensor:
    """``(L, L_align, L_red)`` by the Triton kernels, differentiable in every view."""
    need_grad = torch.is_grad_enabled() and any(view.requires_grad for view in views)
    if eager(views[0].device):
        return _SMITriton.apply(lambda_param, eps, need_grad, *views)
    z = torch.stack(list(views))
    return torch.ops.smi_kernels.smi_forward(z, lambda_param, eps, need_grad)[0]

"""The Triton path as torch.library custom ops: host functions, fake shapes, autograd, FLOPs.

``smi_kernels::smi_forward(z, lambda_param, eps, need_grad)`` takes the stacked views z (V, N, D)
and returns ``[out, zh, s, projected, rho, align_grad, g, radial]``; ``out`` = (L, L_align, L_red),
the rest is what the backward reads. ``smi_kernels::smi_backward`` returns dz (V, N, D).
A step is five launches: the stack of the views, standardisation, the Gram tiles, the fixed-order
reduction, and the backward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from smi_kernels import memory
from smi_kernels._math import float16_gradient_scale
from smi_kernels._torch import refuse_double_backward
from smi_kernels._triton import configs
from smi_kernels._triton.grad import gram_backward_kernel
from smi_kernels._triton.gram import finalize_block, finalize_kernel, gram_forward_kernel
from smi_kernels._triton.standardize import block_d, standardize_kernel


def _allocate(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the ops write (one place, so a test can poison them all)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _input_precision(dtype: torch.dtype) -> str:
    """float32: IEEE, or TF32 when torch allows it (as torch.matmul does). 16-bit operands always
    take the tensor cores (Triton's default "tf32" leaves them as they are); float64: IEEE."""
    if dtype == torch.float32:
        return "tf32" if torch.get_float32_matmul_precision() != "highest" else "ieee"
    return "ieee" if dtype == torch.float64 else "tf32"


def _widen_dot(device: torch.device, dtype: torch.dtype) -> bool:
    # the interpreter's bfloat16 tl.dot is wrong (triton 3.9); widening the operands to float32
    # first is exact, since bf16 x bf16 products are exact in float32
    return device.type != "cuda" and dtype == torch.bfloat16


def _emulate_rtne(device: torch.device, dtype: torch.dtype) -> bool:
    # the interpreter truncates float32 -> bfloat16 (see rounding.py)
    return device.type != "cuda" and dtype == torch.bfloat16


def _g_scale(dtype: torch.dtype, eps: float) -> float:
    return float16_gradient_scale(eps) if dtype == torch.float16 else 1.0


@functools.cache
def _autotuned_forward(candidates: tuple[configs.ForwardConfig, ...]):
    tuning = [
        triton.Config({"BLOCK_K": c.BLOCK_K}, num_warps=c.num_warps, num_stages=c.num_stages)
        for c in candidates
    ]
    return triton.autotune(configs=tuning, key=["P", "D"])(gram_forward_kernel)


@functools.cache
def _autotuned_backward(candidates: tuple[configs.BackwardConfig, ...]):
    tuning = [
        triton.Config({"BLOCK_D": c.BLOCK_D}, num_warps=c.num_warps, num_stages=c.num_stages)
        for c in candidates
    ]
    return triton.autotune(configs=tuning, key=["P", "D"])(gram_backward_kernel)


def _forward_launcher(candidates: Sequence[configs.ForwardConfig], device: torch.device):
    """The Gram kernel with its tuning arguments bound: autotuned among the table's candidates
    when SMI_KERNELS_AUTOTUNE=1 on a GPU, else the table's first candidate."""
    if device.type == "cuda" and configs.autotune_enabled() and len(candidates) > 1:
        return _autotuned_forward(tuple(candidates)), {}
    first = candidates[0]
    options = {"BLOCK_K": first.BLOCK_K}
    if device.type == "cuda":
        options.update(num_warps=first.num_warps, num_stages=first.num_stages)
    return gram_forward_kernel, options


def _backward_launcher(candidates: Sequence[configs.BackwardConfig], device: torch.device):
    """The backward kernel with its tuning arguments bound (as ``_forward_launcher``)."""
    if device.type == "cuda" and configs.autotune_enabled() and len(candidates) > 1:
        return _autotuned_backward(tuple(candidates)), {}
    first = candidates[0]
    options = {"BLOCK_D": first.BLOCK_D}
    if device.type == "cuda":
        options.update(num_warps=first.num_warps, num_stages=first.num_stages)
    return gram_backward_kernel, options


def _buffers(
    z_shape: Sequence[int], dtype: torch.dtype, device: torch.device, need_grad: bool
) -> tuple[int, int, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """Shapes and dtypes of every output of smi_forward (shared by the op and its fake)."""
    v, n, d = z_shape
    p = v * n
    acc = _accumulator(dtype)
    block = configs.tile_size(device, p, dtype)
    nb = triton.cdiv(p, block)
    shapes = {
        "out": ((3,), acc),
        "zh": ((v, n, d), dtype),
        "s": ((p,), acc),
        "projected": ((p,), acc),
        "rho": ((v, v, n), acc),
        "align_grad": ((v, v, n), acc),
        "g": ((nb * (nb + 1) // 2, block, block) if need_grad else (0, block, block), dtype),
        "radial": ((nb, nb * block) if need_grad else (0, nb * block), acc),
    }
    return block, nb, shapes


@torch.library.custom_op("smi_kernels::smi_forward", mutates_args=())
def smi_forward(z: Tensor, lambda_param: float, eps: float, need_grad: bool) -> list[Tensor]:
    """Fused SMI forward on stacked views z (V, N, D); see the module docstring."""
    v, n, d = z.shape
    p = v * n
    block, nb, shapes = _buffers(z.shape, z.dtype, z.device, need_grad)
    estimate = memory.triton_estimate(n, d, v, z.dtype, need_grad, block)
    memory.check_fits(estimate.forward_new, "forward", z.device)
    z = z.contiguous()
    out = {name: _allocate(shape, dt, z.device) for name, (shape, dt) in shapes.items()}
    interpreting = z.device.type != "cuda"
    align = _allocate((n,), _accumulator(z.dtype), z.device)
    red_partial = _allocate((nb * nb,), _accumulator(z.dtype), z.device)

    standardize_kernel[(n,)](
        z, out["zh"], out["s"], out["projected"], out["rho"], out["align_grad"], align,
        n, d, eps,
        V=v, V_BLOCK=triton.next_power_of_2(v), BLOCK_D=block_d(d, v, interpreting),
        EMULATE_RTNE=_emulate_rtne(z.device, z.dtype),
    )  # fmt: skip
    forward_candidates, _ = configs.candidates(configs.architecture(z.device), p, z.dtype)
    kernel, options = _forward_launcher(forward_candidates, z.device)
    g = out["g"] if need_grad else out["zh"]  # a placeholder pointer when G is not written
    radial = out["radial"] if need_grad else red_partial
    kernel[(nb, nb)](
        out["zh"], g, red_partial, radial,
        p, n, d, eps, _g_scale(z.dtype, eps), nb,
        BLOCK=block, NEED_GRAD=need_grad,
        INPUT_PRECISION=_input_precision(z.dtype), WIDEN_DOT=_widen_dot(z.device, z.dtype),
        EMULATE_RTNE=_emulate_rtne(z.device, z.dtype),
        **options,
    )  # fmt: skip
    finalize_kernel[(1,)](
        red_partial, nb * nb, align, n, out["out"], lambda_param,
        BLOCK=finalize_block(max(nb * nb, n)),
    )  # fmt: skip
    return list(out.values())


@smi_forward.register_fake
def _smi_forward_fake(z: Tensor, lambda_param: float, eps: float, need_grad: bool) -> list[Tensor]:
    _, _, shapes = _buffers(z.shape, z.dtype, z.device, need_grad)
    return [z.new_empty(shape, dtype=dt) for shape, dt in shapes.values()]


@torch.library.custom_op("smi_kernels::smi_backward", mutates_args=())
def smi_backward(
    grad_out: Tensor,
    zh: Tensor,
    s: Tensor,
    projected: Tensor,
    rho: Tensor,
    align_grad: Tensor,
    g: Tensor,
    radial: Tensor,
    lambda_param: float,
    eps: float,
) -> Tensor:
    """dz (V, N, D) from smi_forward's saved outputs and the gradient of (L, L_align, L_red)."""
    v, n, d = zh.shape
    p = v * n
    block = g.shape[-1]
    nb = radial.shape[0]
    memory.check_fits(zh.numel() * zh.element_size(), "backward", zh.device)
    dz = _allocate(zh.shape, zh.dtype, zh.device)
    _, backward_candidates = configs.candidates(configs.architecture(zh.device), p, zh.dtype)
    kernel, options = _backward_launcher(backward_candidates, zh.device)
    grad_out = grad_out.to(s.dtype).contiguous()

    def grid(meta: dict) -> tuple[int, int]:
        return nb, triton.cdiv(d, meta["BLOCK_D"])

    kernel[grid](
        zh, s, projected, g, radial, rho, align_grad, grad_out, dz,
        p, n, d, lambda_param, 1.0 / _g_scale(zh.dtype, eps), nb,
        V=v, BLOCK=block,
        INPUT_PRECISION=_input_precision(zh.dtype), WIDEN_DOT=_widen_dot(zh.device, zh.dtype),
        EMULATE_RTNE=_emulate_rtne(zh.device, zh.dtype),
        **options,
    )  # fmt: skip
    return dz


@smi_backward.register_fake
def _smi_backward_fake(
    grad_out: Tensor,
    zh: Tensor,
    s: Tensor,
    projected: Tensor,
    rho: Tensor,
    align_grad: Tensor,
    g: Tensor,
    radial: Tensor,
    lambda_param: float,
    eps: float,
) -> Tensor:
    return torch.empty_like(zh)


def _setup_context(ctx, inputs, output) -> None:
    _, lambda_param, eps, need_grad = inputs
    ctx.lambda_param = lambda_param
    ctx.eps = eps
    ctx.need_grad = need_grad
    if need_grad:
        ctx.save_for_backward(*output[1:])


def _backward(ctx, grads):
    refuse_double_backward()
    if not ctx.need_grad:
        raise RuntimeError(
            "smi_kernels::smi_forward ran with need_grad=False, so G was not stored; "
            "call it with need_grad=True to differentiate"
        )
    grad_out = grads[0]
    zh = ctx.saved_tensors[0]
    if grad_out is None:
        grad_out = zh.new_zeros(3, dtype=_accumulator(zh.dtype))
    dz = smi_backward(grad_out, *ctx.saved_tensors, ctx.lambda_param, ctx.eps)
    return dz, None, None, None


smi_forward.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.smi_kernels.smi_forward)
def _smi_forward_flops(z_shape, *args, **kwargs) -> int:
    from smi_kernels import flops

    v, n, d = z_shape
    return 2 * flops.fused_forward_macs(n, d, views=v)


@register_flop_formula(torch.ops.smi_kernels.smi_backward)
def _smi_backward_flops(grad_shape, zh_shape, *args, **kwargs) -> int:
    from smi_kernels import flops

    v, n, d = zh_shape
    return 2 * flops.fused_backward_macs(n, d, views=v)


def smi_triton(views: Sequence[Tensor], lambda_param: float, eps: float) -> Tensor:
    """``(L, L_align, L_red)`` by the Triton kernels, differentiable in every view."""
    need_grad = torch.is_grad_enabled() and any(view.requires_grad for view in views)
    z = torch.stack(list(views))
    return torch.ops.smi_kernels.smi_forward(z, lambda_param, eps, need_grad)[0]

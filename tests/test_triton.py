"""The Triton kernels against the float64 reference.

On a machine without a GPU these run on the CPU under the Triton interpreter (conftest.py sets
TRITON_INTERPRET=1), on small odd shapes; the tests marked ``gpu`` run at real sizes on CUDA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import helpers
import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from helpers import (
    CUDA,
    DEVICE,
    EPS,
    LAMBDA,
    TOLERANCE,
    interpreter_multiplies_float64,
    make_views,
    needs_float64_dot,
    needs_gpu,
    reference_terms_and_grads,
    relative_error,
    smi_loss_terms,
)

import smi_kernels._triton.op as op
from smi_kernels import smi_loss, smi_loss_with_terms
from smi_kernels._triton import configs
from smi_kernels._triton.gram import packed_tile_index, triangle_tile
from smi_kernels._triton.op import segments
from smi_kernels._triton.plan import INTERPRETER_SMS, make_plan

gpu = pytest.mark.gpu


def check_against_reference(views: list[torch.Tensor], tol: float) -> None:
    out = smi_loss_with_terms(*views, lambda_param=LAMBDA, eps=EPS, backend="triton")
    grads = torch.autograd.grad(out.loss, views)
    loss, align, red, ref_grads = reference_terms_and_grads(views)
    assert relative_error(out.loss, loss) < tol
    assert relative_error(out.alignment, align) < tol
    assert relative_error(out.redundancy, red) < tol
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad.dtype == views[0].dtype
        assert relative_error(grad, ref_grad) < tol


def test_the_expected_triton_is_imported() -> None:
    """.ci/run runs this file again on the lowest triton the dev extra allows, installed into a
    folder put first on PYTHONPATH, and names it in SMI_KERNELS_EXPECT_TRITON."""
    expected = os.environ.get("SMI_KERNELS_EXPECT_TRITON")
    if not expected:
        pytest.skip("SMI_KERNELS_EXPECT_TRITON is not set (.ci/run's lowest-triton run sets it)")
    release = triton.__version__.split("+")[0].split(".")
    assert release[: len(expected.split("."))] == expected.split("."), (
        f"triton {triton.__version__} imported from {triton.__file__}, expected {expected}"
    )


SHAPES = [(2, 2, 3), (2, 7, 33), (3, 13, 50), (4, 5, 17), (2, 37, 70), (3, 2, 129)]


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "V{}-N{}-D{}".format(*s))
def test_matches_reference(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    if CUDA and dtype == torch.float64:
        pytest.skip("float64 runs on the PyTorch path on the GPU")
    if dtype == torch.float64 and not interpreter_multiplies_float64():
        pytest.skip(needs_float64_dot.kwargs["reason"])
    v, n, d = shape
    check_against_reference(
        make_views(v, n, d, dtype, seed=v * 1000 + n * 10 + d), TOLERANCE[dtype]
    )


@needs_float64_dot
def test_each_term_differentiates() -> None:
    views = make_views(2, 9, 21, torch.float64, seed=3)
    out = smi_loss_with_terms(*views, eps=EPS, backend="triton")
    exact = [view.detach().requires_grad_() for view in views]
    align, red = smi_loss_terms(*exact, eps=EPS)
    for term, ref_term in ((out.alignment, align), (out.redundancy, red)):
        grads = torch.autograd.grad(term, views, retain_graph=True)
        ref_grads = torch.autograd.grad(ref_term, exact, retain_graph=True)
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            assert relative_error(grad, ref_grad) < 1e-10


@needs_float64_dot
def test_gradcheck_float64() -> None:
    if CUDA:
        pytest.skip("float64 kernels run under the interpreter only")
    views = make_views(2, 3, 5, torch.float64, seed=11)
    assert torch.autograd.gradcheck(
        lambda a, b: smi_loss(a, b, backend="triton"), views, eps=1e-6, atol=1e-7
    )


def test_only_one_view_requires_grad() -> None:
    a, b = make_views(2, 6, 10, torch.float32, seed=5)
    b = b.detach()
    loss = smi_loss(a, b, backend="triton")
    (grad,) = torch.autograd.grad(loss, [a])
    _, _, _, ref_grads = reference_terms_and_grads([a, b])
    assert relative_error(grad, ref_grads[0]) < 1e-4


def test_no_grad_stores_no_g() -> None:
    a, b = make_views(2, 6, 10, torch.float32, seed=5)
    with torch.no_grad():
        loss = smi_loss(a, b, backend="triton")
    assert loss.grad_fn is None
    z = torch.stack([a, b]).detach()
    _, workspace = torch.ops.smi_kernels.smi_forward(z, LAMBDA, EPS, False)
    plan = make_plan("interpreter", INTERPRETER_SMS, 2, 6, 10, torch.float32, "highest", False)
    assert "g" not in plan.segments and workspace.numel() == plan.workspace_bytes
    with_grad = make_plan("interpreter", INTERPRETER_SMS, 2, 6, 10, torch.float32, "highest", True)
    assert with_grad.workspace_bytes > plan.workspace_bytes


def assert_bitwise_repeatable(views: list[torch.Tensor], calls: int) -> None:
    """``calls`` evaluations of the loss and its gradients agree bit for bit."""
    first = None
    for _ in range(calls):
        loss = smi_loss(*views, backend="triton")
        grads = torch.autograd.grad(loss, views)
        current = torch.cat([loss.reshape(1).float(), *[g.float().flatten() for g in grads]])
        if first is None:
            first = current
        assert torch.equal(current, first)


def test_bitwise_deterministic() -> None:
    assert_bitwise_repeatable(make_views(3, 11, 40, torch.float32, seed=8), calls=20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 9, 45), (2, 40, 70)], ids=lambda s: "V{}-N{}-D{}".format(*s))
def test_every_output_element_is_written(monkeypatch, shape, dtype: torch.dtype) -> None:
    """Buffers start as all-ones bytes (NaN in every float dtype): a single element the kernels
    forget to write shows up. The shapes take the split-K path and the two-halves tiles."""

    def poisoned(shape, dtype, device):
        fill = 255 if dtype == torch.uint8 else float("nan")
        return torch.full(tuple(shape), fill, dtype=dtype, device=device)

    monkeypatch.setattr(op, "allocate", poisoned)
    v, n, d = shape
    views = make_views(v, n, d, dtype, seed=2)
    out, workspace, plan = op.forward([x.detach() for x in views], LAMBDA, EPS, True)
    assert plan.split > 1 or plan.halves == 2
    assert torch.isfinite(out).all()
    for name in plan.segments:
        assert torch.isfinite(segments(workspace, plan)[name]).all(), name
    loss = smi_loss(*views, backend="triton")
    grads = torch.autograd.grad(loss, views)
    assert all(torch.isfinite(g).all() for g in grads)


def test_constant_rows_are_finite() -> None:
    a, b = make_views(2, 6, 12, torch.float32, seed=4)
    with torch.no_grad():
        a[2] = 3.0
        b[2] = 3.0
        b[4] = -1.0
    out = smi_loss_with_terms(a, b, backend="triton")
    grads = torch.autograd.grad(out.loss, [a, b])
    assert torch.isfinite(out.loss) and all(torch.isfinite(g).all() for g in grads)
    loss = reference_terms_and_grads([a, b])[0]
    assert relative_error(out.loss, loss) < 1e-4


def test_non_finite_input_gives_nan() -> None:
    a, b = make_views(2, 5, 8, torch.float32, seed=1)
    with torch.no_grad():
        a[1, 3] = float("nan")
    assert torch.isnan(smi_loss(a, b, backend="triton"))


def test_matches_torch_path() -> None:
    views = make_views(3, 17, 31, torch.float32, seed=21)
    triton_out = smi_loss_with_terms(*views, backend="triton")
    torch_out = smi_loss_with_terms(*views, backend="torch")
    for x, y in zip(triton_out, torch_out, strict=True):
        assert relative_error(x, y) < 1e-5


def test_custom_op_registration() -> None:
    """Schema, fake (meta) implementation and autograd registration agree with the kernels."""
    z = torch.stack(make_views(2, 5, 9, torch.float32, seed=0)).detach().requires_grad_()
    torch.library.opcheck(
        torch.ops.smi_kernels.smi_forward,
        (z, LAMBDA, EPS, True),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_flop_counter_sees_fused_cost() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    v, n, d = 2, 8, 24
    views = make_views(v, n, d, torch.float32, seed=0)
    with FlopCounterMode(display=False) as counter:
        smi_loss(*views, backend="triton").backward()
    counts = counter.get_flop_counts()["Global"]
    p = v * n
    assert counts[torch.ops.smi_kernels.smi_forward] == 2 * (p * p * d // 2)
    assert counts[torch.ops.smi_kernels.smi_backward] == 2 * p * p * d


def test_compile_fullgraph_no_recompile() -> None:
    torch._dynamo.reset()
    compiles = 0

    def counting_backend(gm, example_inputs):
        nonlocal compiles
        compiles += 1
        return gm.forward

    @torch.compile(backend=counting_backend, fullgraph=True)
    def step(a, b):
        return smi_loss(a, b, backend="triton")

    for seed in range(3):
        a, b = make_views(2, 6, 10, torch.float32, seed=seed)
        loss = step(a, b)
        loss.backward()
        assert relative_error(loss, reference_terms_and_grads([a, b])[0]) < 1e-4
    assert compiles == 1
    torch._dynamo.reset()


def test_packed_tile_index_is_64_bit() -> None:
    """The offset arithmetic of the packed G buffer does not wrap at 2^31."""

    @triton.jit
    def probe(out_ptr, pb, qb, BLOCK: tl.constexpr):
        tile = packed_tile_index(pb, qb)
        tl.store(out_ptr, tile * (BLOCK * BLOCK))

    for pb, qb, block in [(0, 0, 16), (3, 7, 32), (40000, 40001, 128)]:
        out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
        probe[(1,)](out, pb, qb, BLOCK=block)
        expected = (qb * (qb + 1) // 2 + pb) * block * block
        assert int(out.item()) == expected
    assert expected > 2**31


def test_triangle_tiles_cover_the_upper_triangle_once() -> None:
    """Program t -> tile (pb, qb): every upper tile exactly once, numbered column by column,
    up to 46,000 blocks a side (2^30 tiles; the float square root is corrected exactly)."""

    @triton.jit
    def probe(out_ptr, first, COUNT: tl.constexpr):
        t = first + tl.arange(0, COUNT)
        pb, qb = triangle_tile(t)
        tl.store(out_ptr + 2 * tl.arange(0, COUNT), pb)
        tl.store(out_ptr + 2 * tl.arange(0, COUNT) + 1, qb)

    for first, count in [(0, 64), (46000 * 46001 // 2 - 64, 64), (123456789, 64)]:
        out = torch.zeros(2 * count, dtype=torch.int32, device=DEVICE)
        probe[(1,)](out, first, COUNT=count)
        pairs = out.view(count, 2).tolist()
        for k, (pb, qb) in enumerate(pairs):
            assert 0 <= pb <= qb and qb * (qb + 1) // 2 + pb == first + k


#: (V, N, D) of the end-to-end tile numbering check: P = 60 rows in 4 row blocks (10 tiles), and
#: P = 24 in 2 blocks (3 tiles), whose K-loop is split (the epilogue kernel numbers them too)
NUMBERING_SHAPES = [(3, 20, 24), (2, 12, 64)]


@pytest.mark.skipif(CUDA, reason="replaces the interpreter's square root")
@needs_float64_dot
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize("shape", NUMBERING_SHAPES, ids=lambda s: "V{}-N{}-D{}".format(*s))
def test_tile_numbering_end_to_end_when_the_square_root_lands_one_off(monkeypatch, shape) -> None:
    """The float square root of ``triangle_tile`` first lands one off at tile 10,619,135 (8 t + 1
    rounded to float32; 4,608 row blocks, P > 73,712 rows at the interpreter's tile of 16), out
    of reach here. So the interpreter's correctly rounded square root is replaced by one that lands
    the column block one low, right, or one high (tile t mod 3), and the loss, its terms and
    its gradients must still match the reference: the exact correction puts every tile back."""
    from triton.runtime import interpreter

    landed: list[int] = []

    def one_off(self, arg):
        root = np.sqrt(arg.data)
        tile = np.rint((arg.data.astype(np.float64) - 1.0) / 8.0).astype(np.int64)
        shift = 2 * (tile % 3) - 2  # (root - 1) / 2 moves by -1, 0, +1
        landed.extend(shift.ravel().tolist())
        return interpreter.TensorHandle((root + shift).astype(root.dtype), arg.dtype.scalar)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_precise_sqrt", one_off)
    v, n, d = shape
    views = helpers.make_views(v, n, d, torch.float64, seed=n + d)
    plan = make_plan("interpreter", INTERPRETER_SMS, v, n, d, torch.float64, "highest", True)
    assert plan.num_blocks >= 2
    out = smi_loss_with_terms(*views, lambda_param=LAMBDA, eps=EPS, backend="triton")
    grads = torch.autograd.grad(out.loss, views)
    assert {-2, 0, 2} <= set(landed), "the tile numbering no longer takes tl.sqrt_rn"
    *terms, ref_grads = helpers.reference_terms_and_grads(views, LAMBDA, EPS)
    tol = helpers.TOLERANCE[torch.float64]
    for name, term, ref in zip(("loss", "L_align", "L_red"), out, terms, strict=True):
        assert helpers.relative_error(term.detach(), ref) < tol, name
    for u, (grad, ref) in enumerate(zip(grads, ref_grads, strict=True)):
        assert helpers.relative_error(grad, ref) < tol, f"gradient of view {u}"


def test_every_table_row_shares_one_tile_size() -> None:
    """Forward, stored G and backward use one BLOCK, so autotuning may not change it; every
    autotune candidate's K step divides the padded width of the row's default."""
    for arch in ("sm80", "sm90"):
        for kind in configs.ARITHMETIC:
            for row in configs.table_rows(arch, kind):
                assert len({c.BLOCK for c in row.forward}) == 1
                assert row.forward and row.backward
                for c in row.backward:
                    assert c.BLOCK_Q <= row.forward[0].BLOCK
                    assert row.forward[0].BLOCK % c.BLOCK_Q == 0
    for row in configs.table_rows("interpreter", "any"):
        assert len({c.BLOCK for c in row.forward}) == 1


@needs_float64_dot
@pytest.mark.parametrize("layout", ["chunks", "reversed", "strided", "five-views", "stacked"])
def test_views_are_read_where_they_lie(layout: str) -> None:
    """The standardisation reads each view at its own address: chunks of one tensor, a view
    allocated before view 0 (negative offset), non-contiguous views, more than four views."""
    gen = torch.Generator().manual_seed(7)
    n, d = 9, 21
    if layout == "chunks":
        views = list(torch.randn(2 * n, d, generator=gen, dtype=torch.float64).chunk(2))
    elif layout == "reversed":
        b = torch.randn(n, d, generator=gen, dtype=torch.float64)
        a = torch.randn(n, d, generator=gen, dtype=torch.float64)
        views = [a, b]
    elif layout == "strided":
        views = [torch.randn(d, n, generator=gen, dtype=torch.float64).T for _ in range(3)]
    elif layout == "five-views":
        views = [torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(5)]
    else:
        views = list(torch.randn(4, n, d, generator=gen, dtype=torch.float64).unbind(0))
    views = [view.requires_grad_() for view in views]
    check_against_reference(views, TOLERANCE[torch.float64])


def test_eager_and_custom_op_entries_agree_bitwise() -> None:
    """The eager autograd function and the torch.library op run the same launches."""
    from torch.utils.flop_counter import FlopCounterMode

    views = make_views(2, 11, 30, torch.float32, seed=12)
    eager = smi_loss_with_terms(*views, backend="triton")
    eager_grads = torch.autograd.grad(eager.loss, views)
    with FlopCounterMode(display=False):  # a dispatch mode: the custom op runs
        traced = smi_loss_with_terms(*views, backend="triton")
        traced_grads = torch.autograd.grad(traced.loss, views)
    for x, y in zip((*eager, *eager_grads), (*traced, *traced_grads), strict=True):
        assert torch.equal(x, y)


def test_memory_check_refuses_before_allocating(monkeypatch) -> None:
    from smi_kernels import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    monkeypatch.setattr(op, "_CHECKED", set())
    views = make_views(2, 8, 16, torch.float32, seed=0)
    with pytest.raises(torch.OutOfMemoryError, match="GiB"):
        smi_loss(*views, backend="triton")


def test_allocation_failure_is_explained(monkeypatch) -> None:
    def failing(shape, dtype, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(op, "allocate", failing)
    views = make_views(2, 8, 16, torch.float32, seed=0)
    with pytest.raises(torch.OutOfMemoryError, match="workspace"):
        smi_loss(*views, backend="triton")


# ---------------------------------------------------------------- real GPU, real sizes


@gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["highest", "high"])
@pytest.mark.parametrize(
    "shape", [(2, 256, 8192), (2, 2048, 8192), (3, 1000, 2049), (2, 8192, 1024), (2, 512, 16384)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gpu_real_sizes(shape, dtype, precision) -> None:
    if precision == "high" and dtype != torch.float32:
        pytest.skip("matmul precision applies to float32 only")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        tol = 1e-3 if (dtype == torch.float32 and precision == "high") else TOLERANCE[dtype]
        v, n, d = shape
        check_against_reference(make_views(v, n, d, dtype, seed=n + d), tol)
    finally:
        torch.set_float32_matmul_precision(previous)


@gpu
@needs_gpu
def test_gpu_bitwise_deterministic_100_calls() -> None:
    assert_bitwise_repeatable(make_views(2, 1024, 4096, torch.bfloat16, seed=0), calls=100)


@gpu
@needs_gpu
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="no compute-sanitizer")
def test_gpu_compute_sanitizer_clean() -> None:
    script = (
        "import torch\nfrom smi_kernels import smi_loss\n"
        "a = torch.randn(37, 70, device='cuda', requires_grad=True)\n"
        "b = torch.randn(37, 70, device='cuda', requires_grad=True)\n"
        "smi_loss(a, b, backend='triton').backward()\ntorch.cuda.synchronize()\n"
    )
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    result = subprocess.run(
        ["compute-sanitizer", "--error-exitcode", "1", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

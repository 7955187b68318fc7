"""Memory safety and launch-order independence of every kernel, under the bounds checker.

``tests/bounds.py`` runs the Triton interpreter in a checked mode: every masked-in load and store
must fall inside a tensor argument of its launch (as the view it is), and the programs of a
launch run in natural, reversed or a fixed random order, a byte written by one program and
touched by another of the same launch being reported. Here:

* the checker is checked: planted faults in small kernels of this file (a load past a view, a
  store past one, a read of a gap between the rows of a strided view, a read of what another
  program of the launch writes) are each reported, and a correct kernel is not;
* every kernel of the package runs under it, in the three orders, with the loss, its terms and
  every gradient bitwise identical to the natural order's (and near the float64 reference where
  the project's tolerance holds): a fast subset here, the ``slow`` sweep over views, N, D,
  dtypes, gradients and layouts of the input views (``SMI_KERNELS_SLOW_TESTS=1``); the sharded
  mode on 2, 3 and 4 gloo ranks, the checker active in every rank (``python
  tests/test_bounds.py --launch OUT fast|slow``; fast: natural and permuted order);
* the GPU's argument form: the workspace segments that the GPU receives as raw addresses lie
  inside the workspace and do not overlap, for every plan of the compile report's matrix, and
  they are the interpreter's views' addresses.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import bounds
import pytest
import torch
from helpers import (
    TOLERANCE,
    TRITON,
    fork_ranks,
    make_views,
    needs_triton,
    reference_terms_and_grads,
    relative_error,
    run_launcher,
)

pytestmark = needs_triton
#: the tests that run kernels under the checker (the GPU argument form needs no interpreter)
needs_checker = pytest.mark.skipif(
    TRITON and not bounds.SUPPORTED, reason=f"the bounds checker: {bounds.UNSUPPORTED_REASON}"
)

if TRITON:
    import triton
    import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
ORDERS = bounds.ORDERS


# ---------------------------------------------------------------- the checker is checked

if TRITON:

    @triton.jit
    def copy_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr, MASK_LOAD: tl.constexpr,
                    STORE_BOUND: tl.constexpr):  # fmt: skip
        """y[:n] = x[:n]; MASK_LOAD off: the load is not masked (reads past x); STORE_BOUND 1:
        the store's mask is ``offs <= n`` (one past y)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        if MASK_LOAD:
            x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
        else:
            x = tl.load(x_ptr + offs)
        tl.store(y_ptr + offs, x, mask=offs < n + STORE_BOUND)

    @triton.jit
    def rows_kernel(x_ptr, y_ptr, ROWS: tl.constexpr, COLS: tl.constexpr, STRIDE: tl.constexpr):
        """y (ROWS, COLS) = x read with a row stride of STRIDE elements."""
        r = tl.arange(0, ROWS)[:, None]
        c = tl.arange(0, COLS)[None, :]
        tl.store(y_ptr + r * COLS + c, tl.load(x_ptr + r * STRIDE + c))

    @triton.jit
    def chained_kernel(x_ptr, out_ptr):
        """out[i] = x[i] + out[i - 1]: program i reads what program i - 1 writes."""
        i = tl.program_id(0)
        previous = tl.load(out_ptr + i - 1, mask=i > 0, other=0.0)
        tl.store(out_ptr + i, tl.load(x_ptr + i) + previous)


def _planted() -> bounds.Checker:
    """A checker whose counters stay out of the session's summary (its faults are planted)."""
    return bounds.Checker(report=False)


@needs_checker
def test_a_correct_kernel_passes_and_is_counted():
    storage = torch.arange(32, dtype=torch.float32)
    x, y = storage[:10], torch.zeros(10)
    with _planted() as checker:
        copy_kernel[(1,)](x, y, 10, BLOCK=16, MASK_LOAD=True, STORE_BOUND=0)
    assert torch.equal(y, x)
    # masked-out lanes (6 of 16, inside x's storage but past the view) are not accesses
    assert (checker.totals.loads, checker.totals.stores) == (10, 10)
    assert checker.totals.kernels == {"copy_kernel": 1} and not checker.totals.violations


@needs_checker
def test_planted_out_of_bounds_load_is_reported():
    # x is the first 10 elements of a 32-element storage: the load past it reads memory that
    # exists (no crash), but lies outside the argument as the view it is
    storage = torch.arange(32, dtype=torch.float32)
    x, y = storage[:10], torch.zeros(16)
    with _planted(), pytest.raises(Exception) as caught:
        copy_kernel[(1,)](x, y, 16, BLOCK=16, MASK_LOAD=False, STORE_BOUND=0)
    message = str(caught.value)
    print(message)
    assert "out-of-bounds load in copy_kernel, program (0, 0, 0): 4 B at x_ptr + 40 B " in message
    assert "(element 10); past its end; the nearest argument is x_ptr (float32, 10 elements, " in (
        message
    )
    assert "6 of 16 masked-in lanes outside every argument" in message


@needs_checker
def test_planted_out_of_bounds_store_is_reported_and_not_carried_out():
    storage = torch.zeros(32)
    y = storage[:10]
    x = torch.arange(12, dtype=torch.float32)
    with _planted(), pytest.raises(Exception) as caught:
        copy_kernel[(3,)](x, y, 10, BLOCK=4, MASK_LOAD=True, STORE_BOUND=1)
    message = str(caught.value)
    print(message)
    assert "out-of-bounds store in copy_kernel, program (2, 0, 0): 4 B at y_ptr + 40 B " in message
    assert "past its end; the nearest argument is y_ptr (float32, 10 elements, [0, 40) B)" in (
        message
    )
    assert "1 of 3 masked-in lanes outside every argument" in message
    assert storage[10] == 0  # raised before the store


@needs_checker
def test_planted_read_of_a_gap_in_a_strided_view_is_reported():
    storage = torch.arange(32, dtype=torch.float32)
    x = storage.view(4, 8)[:, :4]  # 4 rows of 4, a gap of 4 elements after each
    y = torch.zeros(4, 8)
    with _planted(), pytest.raises(Exception) as caught:
        rows_kernel[(1,)](x, y, ROWS=4, COLS=8, STRIDE=8)  # reads whole rows of the storage
    message = str(caught.value)
    print(message)
    assert "out-of-bounds load in rows_kernel, program (0, 0, 0): 4 B at x_ptr + 16 B" in message
    nearest = "the nearest argument is x_ptr (float32, 16 elements, 4 runs in [0, 112) B)"
    assert f"in a gap between its elements; {nearest}" in message
    assert "16 of 32 masked-in lanes" in message
    with _planted() as checker:  # the view's own elements only: no violation
        rows_kernel[(1,)](x, y, ROWS=4, COLS=4, STRIDE=8)
    assert torch.equal(y.view(-1)[:16].view(4, 4), x) and not checker.totals.violations


@needs_checker
@pytest.mark.parametrize("order", ORDERS)
def test_planted_order_dependent_read_is_reported(order):
    x = torch.arange(1, 9, dtype=torch.float32)
    out = torch.zeros(8)
    with _planted() as checker, checker.ordered(order), pytest.raises(Exception) as caught:
        chained_kernel[(8,)](x, out)
    message = str(caught.value)
    print(message)
    assert "order-dependent access in chained_kernel: program (1, 0, 0) reads out_ptr + 0 B, " in (
        message
    )
    assert "which program (0, 0, 0) of the same launch writes (28 such bytes)" in message


@needs_checker
def test_planted_order_dependence_changes_the_result_under_another_order():
    """Without the race report, the reversed or permuted order alone shows the dependence."""
    x = torch.arange(1, 9, dtype=torch.float32)
    results = {}
    with bounds.Checker(races=False, report=False) as checker:
        for order in ORDERS:
            out = torch.zeros(8)
            with checker.ordered(order):
                chained_kernel[(8,)](x, out)
            results[order] = out
    assert torch.equal(results["natural"], torch.cumsum(x, 0))
    assert not torch.equal(results["reversed"], results["natural"])
    assert not torch.equal(results["permuted"], results["natural"])


@needs_checker
def test_the_permutation_is_fixed_and_runs_every_program_once():
    seen = {}
    with bounds.Checker(races=False, report=False) as checker:
        for order in ORDERS:
            programs = []
            original = checker.program

            def spy(x, y, z, original=original, programs=programs):
                programs.append(original(x, y, z))
                return programs[-1]

            checker.program = spy
            with checker.ordered(order):
                chained_kernel[(2, 3, 2)](torch.zeros(12), torch.zeros(12))
            checker.program = original
            seen[order] = programs
    everything = sorted((x, y, z) for x in range(2) for y in range(3) for z in range(2))
    assert seen["natural"] == everything
    assert seen["reversed"] == everything[::-1]
    assert sorted(seen["permuted"]) == everything and seen["permuted"] not in (
        everything, everything[::-1])  # fmt: skip


# ---------------------------------------------------------------- the package's kernels


@dataclass(frozen=True)
class Case:
    """One problem: V views of (N, D) in ``dtype``; ``layout`` of the input views: "separate"
    tensors, "slices" of one buffer (in reverse order, a NaN row between them: read where they
    lie, at negative offsets from view 0) or "columns" of a wider buffer (non-contiguous: the op
    stacks them first)."""

    views: int
    n: int
    d: int
    dtype: torch.dtype
    grad: bool = True
    layout: str = "separate"

    def __str__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (f"V{self.views}-N{self.n}-D{self.d}-{dtype}-{'grad' if self.grad else 'nograd'}"
                f"-{self.layout}")  # fmt: skip

    def inputs(self, seed: int = 0) -> list[torch.Tensor]:
        values = make_views(self.views, self.n, self.d, self.dtype, seed=seed,
                            requires_grad=False)  # fmt: skip
        v, n, d = self.views, self.n, self.d
        if self.layout == "separate":
            return [x.requires_grad_(self.grad) for x in values]
        if self.layout == "slices":
            buffer = torch.full((v * (n + 1) + 1, d), float("nan"), dtype=self.dtype)
            rows = [slice(1 + (v - 1 - u) * (n + 1), 1 + (v - 1 - u) * (n + 1) + n)
                    for u in range(v)]  # fmt: skip
        else:
            buffer = torch.full((n, v * d + 3), float("nan"), dtype=self.dtype)
            rows = [(slice(None), slice(u * d, (u + 1) * d)) for u in range(v)]
        for u in range(v):
            buffer[rows[u]] = values[u]
        buffer.requires_grad_(self.grad)
        return [buffer[rows[u]] for u in range(v)]


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

#: the fast subset (CI): together every kernel and every path of each (see
#: test_the_matrix_reaches_every_path): N = 2; D at one K step, odd below and above it; split K
#: and not; 16- and 32-row tiles (one and two column halves); the chunked standardisation;
#: EVEN_D on and off; stacked views; no gradient; views read where they lie
FAST = (
    Case(2, 2, 32, F32),
    Case(3, 11, 41, BF16, layout="slices"),
    Case(2, 33, 45, F32),
    Case(5, 7, 33, F16, grad=False),
    Case(4, 4, 17, F16, layout="columns"),
)

#: (V, N, D) of the slow sweep, each run in three dtypes, the gradient and the layout rotating
#: so that every dtype meets every (gradient, layout) pair
SLOW_SHAPES = (
    (2, 2, 5), (2, 2, 31), (3, 2, 33), (4, 3, 32), (2, 8, 64), (3, 8, 17), (4, 8, 63),
    (5, 4, 33), (6, 3, 130), (8, 2, 7), (2, 33, 17), (2, 33, 65), (3, 22, 16), (4, 17, 48),
    (2, 40, 130), (3, 30, 3),
)  # fmt: skip
LAYOUTS = ("separate", "slices", "columns")
_ROTATION = [(grad, layout) for layout in LAYOUTS for grad in (True, False)]
SLOW = tuple(
    Case(v, n, d, dtype, *_ROTATION[(k + j) % len(_ROTATION)])
    for k, (v, n, d) in enumerate(SLOW_SHAPES)
    for j, dtype in enumerate((F32, BF16, F16))
)


def compute(case: Case, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """(L, L_align, L_red) and, with a gradient, dL/dz of every view, by the Triton kernels."""
    from smi_kernels import smi_loss_with_terms

    if not case.grad:
        with torch.no_grad():
            out = smi_loss_with_terms(*views, backend="triton")
        return [t.detach() for t in out]
    out = smi_loss_with_terms(*views, backend="triton")
    grads = torch.autograd.grad(out.loss, views)
    return [*(t.detach() for t in out), *grads]


def raw(tensors: list[torch.Tensor]) -> list[bytes]:
    return [t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() for t in tensors]


def check_case(checker: bounds.Checker, case: Case) -> None:
    views = case.inputs()
    results = {}
    for order in ORDERS:
        with checker.ordered(order):
            results[order] = compute(case, views)
    natural = results["natural"]
    for order in ORDERS[1:]:
        for k, (got, want) in enumerate(zip(raw(results[order]), raw(natural), strict=True)):
            assert got == want, f"{case}: output {k} differs between the {order} and natural order"
    # and the values are the loss of these views (a view misread would be far off), within the
    # project's tolerance where it holds: 16-bit inputs from D = 16 (at a few features, zh and G
    # stored in 16 bits move L_red by percents and the gradients by more)
    assert all(torch.isfinite(t).all() for t in natural), case
    if case.dtype != F32 and case.d < 16:
        return
    loss, align, red, grads = reference_terms_and_grads(views)
    tol = TOLERANCE[case.dtype]
    for got, want in zip(natural, [loss, align, red, *(grads if case.grad else ())], strict=True):
        assert relative_error(got, want) < tol, case


@pytest.mark.parametrize("case", FAST, ids=str)
def test_kernels_in_bounds_and_order_independent(bounds_checker, case):
    check_case(bounds_checker, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=str)
def test_kernels_in_bounds_and_order_independent_sweep(bounds_checker, case):
    check_case(bounds_checker, case)


def _paths(case: Case, world: int = 1, upper: bool = True) -> set[str]:
    """The kernels and code paths a case's launches take (from its plan, nothing run)."""
    from smi_kernels._triton import op
    from smi_kernels._triton.plan import plan_for

    plan = plan_for(case.views, case.n, case.d, case.dtype, CPU, case.grad, world, upper)
    run = op.launches(plan, False)
    stacked = case.views > op.MAX_VIEWS_IN_PLACE or case.layout == "columns"
    paths = {
        "standardize", f"SINGLE_PASS={run.standardize[1]['SINGLE_PASS']}", f"STACKED={stacked}",
        f"gram_forward SPLIT>1={plan.split > 1}", f"gram_forward HALVES={plan.halves}",
        f"NEED_GRAD={plan.need_grad}", "finalize", f"dtype={case.dtype}",
        f"layout={case.layout}", f"padding rows={plan.rows_pad > plan.rows}",
    }  # fmt: skip
    if run.epilogue is not None:
        paths |= {"gram_epilogue", f"gram_epilogue HALVES={plan.halves}"}
    if run.backward is not None:
        paths |= {"gram_backward", f"EVEN_D={run.backward[2]['EVEN_D']}"}
    return paths


def _shape_classes(case: Case) -> set[str]:
    """V, N and D classes of the issue's matrix that a case stands for."""
    from smi_kernels._triton.plan import plan_for

    plan = plan_for(case.views, case.n, case.d, case.dtype, CPU, case.grad)
    k_step = plan.forward[0].BLOCK_K
    d_class = "below" if case.d < k_step else "at" if case.d == k_step else "above"
    return {
        f"V={min(case.views, 5)}", f"D {d_class} one K step", f"D odd={case.d % 2 == 1}",
        f"N=2={case.n == 2}", f"past two tiles={plan.rows > 2 * plan.block}",
    }  # fmt: skip


def test_the_matrix_reaches_every_path():
    """The fast subset alone runs every kernel and every path; with the slow sweep, every V,
    N and D class of the matrix in every dtype."""
    every_path = set().union(*(_paths(c) for c in FAST))
    for flag in ("SINGLE_PASS", "STACKED", "gram_forward SPLIT>1", "NEED_GRAD", "EVEN_D",
                 "padding rows"):  # fmt: skip
        assert {f"{flag}=True", f"{flag}=False"} <= every_path, flag
    assert {
        "gram_forward HALVES=1",
        "gram_forward HALVES=2",
        "gram_epilogue HALVES=1",
        "gram_epilogue HALVES=2",
        "standardize",
        "finalize",
        "gram_backward",
    } <= every_path
    assert {f"dtype={d}" for d in (F32, BF16, F16)} | {f"layout={x}" for x in LAYOUTS} <= (
        every_path
    )
    classes = {(c.dtype, x) for c in FAST + SLOW for x in _shape_classes(c)}
    wanted = {"V=2", "V=3", "V=4", "V=5", "D below one K step", "D at one K step",
              "D above one K step", "D odd=True", "N=2=True", "past two tiles=True"}  # fmt: skip
    for dtype in (F32, BF16, F16):
        assert {(dtype, x) for x in wanted} <= classes, dtype
    assert {(c.grad, c.layout, c.dtype) for c in SLOW} == {
        (g, x, d) for g in (True, False) for x in LAYOUTS for d in (F32, BF16, F16)
    }
    sharded = set().union(*(_paths(c, w, u) for c in SHARDED_FAST + SHARDED_SLOW
                            for w in WORLDS for u in (True, False)))  # fmt: skip
    assert {
        "gram_forward SPLIT>1=True",
        "gram_forward SPLIT>1=False",
        "gram_forward HALVES=2",
        "gram_epilogue",
        "gram_backward",
        "NEED_GRAD=False",
        "STACKED=True",
    } <= sharded


# ---------------------------------------------------------------- the sharded mode, 2-4 ranks

WORLDS = (2, 3, 4)
#: the problems of one rank (N rows of each view per rank) and the orders they run in. Fast: two
#: row blocks of 16 rows a rank, split K at 2 and 3 ranks and not at 4, in the natural and the
#: permuted order; slow: the 32-row tiles, 16-bit dtypes, three and five views, no gradient,
#: views read where they lie or stacked, in all three orders
SHARDED_FAST = (Case(2, 9, 40, F32),)
SHARDED_ORDERS = {"fast": ("natural", "permuted"), "slow": ORDERS}
SHARDED_SLOW = (
    Case(2, 20, 20, F32),  # 32-row tiles (two halves) at 3 and 4 ranks
    Case(3, 5, 33, BF16),
    Case(5, 3, 17, F16, grad=False),
    Case(2, 9, 40, F16, layout="slices"),
    Case(4, 4, 9, BF16, layout="columns"),
)
SHARDED_TIMEOUT_S = 600


def sharded_compute(case: Case, rank: int, world: int) -> list[torch.Tensor]:
    from smi_kernels import smi_loss_with_terms

    full = dataclasses.replace(case, n=case.n * world).inputs(seed=world)
    views = [v.detach()[rank * case.n : (rank + 1) * case.n].clone() for v in full]
    views = [v.requires_grad_(case.grad) for v in views]
    with torch.set_grad_enabled(case.grad):
        out = smi_loss_with_terms(*views, backend="triton", gather_distributed="sharded")
    results = [t.detach() for t in out]
    if case.grad:
        results += torch.autograd.grad(out.loss, views)
    return results


def sharded_worker(world: int, rank: int, store: str, out: str, cases, orders) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))  # fmt: skip
    try:
        outputs: dict[str, dict[str, list[bytes]]] = {}
        # violations are recorded, not raised: every rank reaches its collectives
        with bounds.Checker(collect=True, report=False) as checker:
            for case in cases:
                outputs[str(case)] = {}
                for order in orders:
                    with checker.ordered(order):
                        outputs[str(case)][order] = raw(sharded_compute(case, rank, world))
        torch.save({"outputs": outputs, "totals": checker.totals.as_dict()}, out)
    finally:
        dist.destroy_process_group()


def launch(out_dir: str, which: str) -> int:
    """Fork every rank of every world size from one process (the checker is installed in each)
    and wait for them; the exit status."""
    import smi_kernels._triton.op  # noqa: F401  (imported once, before the fork)

    cases = SHARDED_FAST if which == "fast" else SHARDED_SLOW
    return fork_ranks(
        WORLDS,
        lambda world, rank: sharded_worker(
            world, rank, f"{out_dir}/store{world}", f"{out_dir}/w{world}r{rank}.pt", cases,
            SHARDED_ORDERS[which],
        ),
    )


def run_sharded(tmp: Path, which: str) -> dict[tuple[int, int], dict]:
    if not hasattr(os, "fork"):
        pytest.skip("the gloo workers are forked from one launcher (no os.fork here)")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the bounds checker runs under the Triton interpreter (TRITON_INTERPRET=1)")
    run_launcher(__file__, [str(tmp), which], SHARDED_TIMEOUT_S, "sharded workers")
    results = {}
    for world in WORLDS:
        for rank in range(world):
            results[(world, rank)] = torch.load(tmp / f"w{world}r{rank}.pt")
            bounds.SESSION.add(bounds.Totals.from_dict(results[(world, rank)]["totals"]))
    return results


@pytest.fixture(scope="module")
def sharded_fast(tmp_path_factory):
    return run_sharded(tmp_path_factory.mktemp("bounds_sharded"), "fast")


@pytest.fixture(scope="module")
def sharded_slow(tmp_path_factory):
    return run_sharded(tmp_path_factory.mktemp("bounds_sharded_slow"), "slow")


def check_sharded(results: dict[tuple[int, int], dict], cases, orders) -> None:
    for (world, rank), res in results.items():
        totals = bounds.Totals.from_dict(res["totals"])
        assert not totals.violations, f"W={world} rank {rank}:\n" + "\n".join(totals.violations)
        assert totals.launches and totals.kernels["gram_backward_kernel"] >= 1
        for case in cases:
            outputs = res["outputs"][str(case)]
            assert list(outputs) == list(orders)
            for order in orders[1:]:
                assert outputs[order] == outputs["natural"], (
                    f"W={world} rank {rank} {case}: the {order} order differs from the natural"
                )


@needs_checker
def test_sharded_kernels_in_bounds_and_order_independent(sharded_fast):
    check_sharded(sharded_fast, SHARDED_FAST, SHARDED_ORDERS["fast"])
    variants = collections.Counter()
    for res in sharded_fast.values():
        variants.update(res["totals"]["variants"])
    assert any("'SHARDED': 'True'" in v for v in variants)


@needs_checker
@pytest.mark.slow
def test_sharded_kernels_in_bounds_and_order_independent_sweep(sharded_slow):
    check_sharded(sharded_slow, SHARDED_SLOW, SHARDED_ORDERS["slow"])


# ---------------------------------------------------------------- the GPU's argument form

GPU_FORM = r"""
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
for folder in ("benchmarks", "tools"):
    if (root / folder / "kernel_report.py").exists():
        sys.path.insert(0, str(root / folder))
        break
import kernel_report as kr
from smi_kernels._triton import op

plans = []
segments, record_step = op.segments, kr.record_step

def recording_segments(workspace, plan):
    out = segments(workspace, plan)
    plans[-1]["workspace"].append([workspace.data_ptr(), workspace.shape[0]])
    plans[-1]["pointers"].append({name: [p.data_ptr(), str(p.dtype)] for name, p in out.items()})
    return out

def recording_step(plan):
    plans.append({"workspace": [], "pointers": [], "launches": [], "world": plan.world,
                  "arch": plan.arch, "dtype": str(plan.dtype), "rows": plan.rows, "d": plan.d,
                  "need_grad": plan.need_grad, "workspace_bytes": plan.workspace_bytes,
                  "segments": {name: [s.offset, s.nbytes, str(s.dtype)]
                               for name, s in plan.segments.items()}})
    launches = record_step(plan)
    for launch in launches:
        params = launch.kernel.arg_names
        args = list(zip(params, launch.args)) + list(launch.kwargs.items())
        plans[-1]["launches"].append({
            "kernel": launch.name,
            "pointers": [[name, a.data_ptr()] for name, a in args if isinstance(a, op.Pointer)],
            "others": [[name, a.data_ptr()] for name, a in args
                       if hasattr(a, "data_ptr") and not isinstance(a, op.Pointer)],
        })
    return launches

op.segments = recording_segments
kr.record_step = recording_step
kr.report_launch = lambda launch, arch: {}  # the launches as made, nothing compiled
kr.run(list(kr.LIMITS), list(kr.SETTINGS), kr.PROBLEMS, every=True, echo=False)
report_plans = len(plans)
for problem in kr.PROBLEMS:  # the same problems without a gradient
    for arch, limit in kr.LIMITS.items():
        for dtype, precision in kr.SETTINGS.values():
            recording_step(kr.make_plan(arch, limit["sms"], problem.views, problem.n, problem.d,
                                        dtype, precision, False, problem.world))
print(json.dumps({"report_plans": report_plans, "plans": plans}))
"""


@pytest.fixture(scope="module")
def gpu_form() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", GPU_FORM, str(ROOT)], capture_output=True,
                            text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_gpu_workspace_segments_lie_inside_the_workspace_and_do_not_overlap(gpu_form):
    """Every plan of the compile report's matrix (sm_90 and sm_80, every setting, problem and
    autotune candidate; and each without a gradient): its segments are 256-byte aligned, inside
    the workspace and disjoint; the raw addresses the GPU launches receive are exactly the
    segments' (address = workspace + offset, same dtype), and no other argument points into the
    workspace."""
    plans = gpu_form["plans"]
    assert gpu_form["report_plans"] >= 2 * 4 * 6 and len(plans) > gpu_form["report_plans"]
    pointer_args = 0
    for plan in plans:
        label = f"{plan['arch']} {plan['dtype']} P={plan['rows']} D={plan['d']} W={plan['world']}"
        size = plan["workspace_bytes"]
        extents = sorted((offset, offset + nbytes, name)
                         for name, (offset, nbytes, _) in plan["segments"].items())  # fmt: skip
        for (start, end, name), following in zip(extents, [*extents[1:], None], strict=True):
            assert start % 256 == 0 and 0 <= start <= end <= size, (label, name)
            if following is not None:
                assert end <= following[0], f"{label}: {name} overlaps {following[2]}"
        assert plan["workspace"], label
        for (base, nbytes), pointers in zip(plan["workspace"], plan["pointers"], strict=True):
            assert nbytes == size, label
            for name, (address, dtype) in pointers.items():
                offset, _, seg_dtype = plan["segments"][name]
                assert (address - base, dtype) == (offset, seg_dtype), (label, name)
        bases = {base for base, _ in plan["workspace"]}
        starts = {base + offset: name for base in bases
                  for name, (offset, _, _) in plan["segments"].items()}  # fmt: skip
        for launch in plan["launches"]:
            for param, address in launch["pointers"]:
                assert address in starts, f"{label}: {launch['kernel']}.{param} at {address}"
                pointer_args += 1
            for param, address in launch["others"]:
                assert not any(b <= address < b + size for b in bases), (
                    f"{label}: {launch['kernel']}.{param} points into the workspace"
                )
    assert pointer_args > 1000
    launches = sum(len(plan["launches"]) for plan in plans)
    print(f"{len(plans)} plans, {launches} launches, {pointer_args} raw-address arguments checked")


@pytest.mark.parametrize("case", FAST + SHARDED_FAST, ids=str)
def test_interpreter_views_are_the_gpu_segments(case):
    """The views the interpreter (and so the bounds checker) runs on are the GPU's segments:
    the same byte offsets in the workspace, sizes and dtypes."""
    from smi_kernels._triton import op
    from smi_kernels._triton.plan import plan_for

    for world in (1, 2):
        plan = plan_for(case.views, case.n, case.d, case.dtype, CPU, case.grad, world)
        workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8)
        views = op.segments(workspace, plan)
        pointers = op.segments(workspace, dataclasses.replace(plan, arch="sm90"))
        assert views.keys() == pointers.keys() == plan.segments.keys()
        for name, view in views.items():
            seg = plan.segments[name]
            assert view.data_ptr() == pointers[name].data_ptr() == workspace.data_ptr() + seg.offset
            assert view.dtype == pointers[name].dtype and view.nbytes == seg.nbytes


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--launch":
        raise SystemExit(launch(sys.argv[2], sys.argv[3]))
    raise SystemExit(f"usage: {sys.argv[0]} --launch OUT_DIR fast|slow")

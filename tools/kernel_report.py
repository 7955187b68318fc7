"""Compile every Triton kernel the package launches for a GPU target, on a machine without one.

    python tools/kernel_report.py                  # the full matrix, sm_90 and sm_80
    python tools/kernel_report.py --quick          # the default configs only

For each launch of a problem, the launch is recorded exactly as ``smi_kernels._triton.op`` makes
it (its plan, its arguments, its constexprs and options: the op's own host functions run with
stand-in tensors and the launch is captured instead of sent to a driver), then compiled with
Triton's own binder and ``triton.compile(..., target=GPUTarget("cuda", cc, 32))``. Reported per
kernel x config x dtype x target:

* compiles, and shared memory (``metadata.shared``) against the architecture's per-block limit;
* registers and spill bytes from the wheel's own ``ptxas -v`` on the generated PTX;
* the instruction mix of the PTX: ``wgmma`` / ``mma.sync`` / FMA, ``cp.async`` / TMA;
* resident CTAs per SM (registers, shared memory, threads).

No GPU and no driver are needed. Must run without ``TRITON_INTERPRET`` (the interpreter replaces
the kernels). Writes ``benchmarks/results/compile/triton-<version>.{md,json}`` with ``--write``.

Runs on triton 3.3 and newer (the triton of torch 2.7, the oldest torch the package takes): the
binder's steps that 3.5 gathered into ``JITFunction._pack_args`` are taken as 3.3 and 3.4's own
launcher takes them, and the ptxas log is read from Triton's own ptxas call on every version.
An older triton is refused in one line; so is a run in which not one launch compiles (the
tool's own calls broken by a Triton API change, not a finding about the kernels), and nothing is
written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_report.py compiles for a GPU: run it without TRITON_INTERPRET=1")

import torch
import triton

#: the oldest triton the report runs on (torch 2.7's)
OLDEST_TRITON = (3, 3)


def triton_version() -> tuple[int, int]:
    """(major, minor) of the imported triton."""
    major, minor = re.match(r"(\d+)\.(\d+)", triton.__version__).groups()
    return int(major), int(minor)


if __name__ == "__main__" and triton_version() < OLDEST_TRITON:
    sys.exit(
        f"kernel_report.py runs on triton >= {'.'.join(map(str, OLDEST_TRITON))}; "
        f"this is triton {triton.__version__}"
    )

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from smi_kernels._triton import op  # noqa: E402
from smi_kernels._triton.plan import Plan, make_plan  # noqa: E402

#: per-architecture limits (CUDA programming guide, compute capabilities 8.0 and 9.0)
LIMITS = {
    "sm90": {"cc": 90, "smem_block": 232448, "smem_sm": 233472, "regs_sm": 65536,
             "threads_sm": 2048, "ctas_sm": 32, "sms": 132},
    "sm80": {"cc": 80, "smem_block": 166912, "smem_sm": 167936, "regs_sm": 65536,
             "threads_sm": 2048, "ctas_sm": 32, "sms": 108},
}  # fmt: skip

#: dtype x float32 matmul precision: the four arithmetic settings of the Triton path
SETTINGS = {
    "float32-ieee": (torch.float32, "highest"),
    "float32-tf32": (torch.float32, "high"),
    "bfloat16": (torch.bfloat16, "highest"),
    "float16": (torch.float16, "highest"),
}


class StandIn:
    """A tensor as the host functions see it: dtype, shape, address (256-byte aligned)."""

    def __init__(self, dtype: torch.dtype, shape: tuple[int, ...] = (1,), address: int = 1 << 20):
        self.dtype = dtype
        self.shape = tuple(shape)
        self.address = address

    def data_ptr(self) -> int:
        return self.address

    def element_size(self) -> int:
        return self.dtype.itemsize

    def is_contiguous(self) -> bool:
        return True

    def contiguous(self) -> StandIn:
        return self

    def __getitem__(self, index) -> StandIn:
        return self  # a view of the same storage: only its address and dtype are read

    def to(self, dtype: torch.dtype) -> StandIn:
        return StandIn(dtype, self.shape, self.address)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")


@dataclass
class Launch:
    """One recorded kernel launch."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def meta(self) -> dict:
        """The meta-parameters and compile options: the keyword arguments that are not the
        kernel's runtime arguments (pointers, sizes, scalars)."""
        runtime = {param.name for param in self.kernel.params if not param.is_constexpr}
        return {k: v for k, v in self.kwargs.items() if k not in runtime}


@contextmanager
def recording() -> Iterator[list[Launch]]:
    """Capture JIT launches (and stand-in allocations) instead of running them."""
    launches: list[Launch] = []
    jit_run = triton.runtime.jit.JITFunction.run
    allocate = op.allocate

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, tuple(grid), args, dict(kwargs)))

    def stack(tensors):  # more than four views are stacked into one buffer first
        first = tensors[0]
        return StandIn(first.dtype, (len(tensors), *first.shape), 1 << 26)

    triton.runtime.jit.JITFunction.run = record
    op.allocate = lambda shape, dtype, device: StandIn(dtype, tuple(shape), 1 << 24)
    torch_stack, torch.stack = torch.stack, stack
    try:
        yield launches
    finally:
        triton.runtime.jit.JITFunction.run = jit_run
        op.allocate = allocate
        torch.stack = torch_stack


def record_step(plan: Plan) -> list[Launch]:
    """The launches of one forward + backward of ``plan``, as the op makes them (sharded: those
    of rank 0, as ``smi_kernels._triton.sharded`` makes them, the collectives left out)."""
    n, d = plan.n, plan.d
    # separately allocated views: view u at its own aligned address
    views = [StandIn(plan.dtype, (n, d), (1 << 30) * (u + 1)) for u in range(plan.views)]
    workspace = StandIn(torch.uint8, (plan.workspace_bytes,), 1 << 28)
    out = StandIn(plan.accumulator, (3,), 1 << 22)
    with recording() as launches:
        if plan.sharded:
            columns = StandIn(plan.dtype, (plan.world, plan.rows_pad, plan.d_pad), 1 << 36)
            run, seg = op.launches(plan, False), op.segments(workspace, plan)
            op.launch_standardize(plan, run, seg, views, 1e-4)
            op.launch_gram(plan, run, seg, columns, 0, 1e-4)
            op.launch_finalize(plan, run, seg, out, 5e-3)
        else:
            columns = None
            op.launch_forward(plan, views, workspace, out, 5e-3, 1e-4)
        if plan.need_grad:
            op.backward(StandIn(plan.accumulator, (3,)), workspace, plan, 5e-3, 1e-4, columns)
    return launches


def pack_args(fn, backend, kwargs, bound_args, specialization, options):
    """``(options, signature, constexprs, attrs)`` of a bound launch: ``JITFunction._pack_args``
    (triton >= 3.5), or on 3.3 and 3.4 the same steps as their ``JITFunction.run`` takes them."""
    if hasattr(fn, "_pack_args"):
        return fn._pack_args(backend, kwargs, bound_args, specialization, options)
    from triton.runtime.jit import find_paths_if, get_iterable_path

    options = backend.parse_options(kwargs)
    sigkeys = [x.name for x in fn.params]
    sigvals = [x[0] for x in specialization]
    signature = dict(zip(sigkeys, sigvals, strict=True))
    constexprs = find_paths_if(sigvals, lambda _, val: val == "constexpr")
    constexprs = {path: get_iterable_path(list(bound_args.values()), path) for path in constexprs}
    attrvals = [x[1] for x in specialization]
    attrs = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
    attrs = {k: backend.parse_attr(get_iterable_path(attrvals, k)) for k in attrs}
    return options, signature, constexprs, attrs


class _PtxasLog:
    """Stands for the ``subprocess`` module in Triton's NVIDIA backend while it compiles: runs
    every command as ``subprocess.run`` does, and keeps the ``-v`` log of a ptxas call, which
    Triton writes to a temporary file and deletes (3.5 added ``knobs.nvidia.dump_ptxas_log``;
    this reads the same file on every version)."""

    def __init__(self) -> None:
        self.log = ""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    def run(self, command, *args, **kwargs):
        result = subprocess.run(command, *args, **kwargs)
        stderr = kwargs.get("stderr")
        if "-v" in command and "ptxas" in Path(str(command[0])).name:
            with open(stderr.name) as log:
                self.log += log.read()
        return result


@contextmanager
def ptxas_log(backend) -> Iterator[_PtxasLog]:
    """Every compile inside compiles anew (a cached kernel would skip ptxas and its log), and
    the log of ``backend``'s own ptxas call is kept."""
    # the globals of the module the backend was loaded from (3.3 loads it from its file, not as
    # triton.backends.nvidia.compiler, which would be another copy)
    module = type(backend).make_cubin.__globals__
    capture = _PtxasLog()
    always = os.environ.get("TRITON_ALWAYS_COMPILE")
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # read by triton 3.3 and by knobs on >= 3.4
    module["subprocess"] = capture
    try:
        yield capture
    finally:
        module["subprocess"] = subprocess
        if always is None:
            del os.environ["TRITON_ALWAYS_COMPILE"]
        else:
            os.environ["TRITON_ALWAYS_COMPILE"] = always


def compile_launch(launch: Launch, cc: int):
    """``(compiled kernel, ptxas -v log)`` of a recorded launch for compute capability ``cc``:
    ``triton.compile`` with the signature, constexprs and specialisation attributes that Triton's
    own binder derives from the launch's arguments. The log is the one of Triton's own ptxas
    call (the wheel's ptxas, Triton's flags)."""
    fn = launch.kernel
    target = GPUTarget("cuda", cc, 32)
    backend = make_backend(target)
    binder = triton.runtime.jit.create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.kwargs)
    kwargs.setdefault("debug", False)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = pack_args(
        fn, backend, kwargs, bound_args, specialization, options
    )
    source = ASTSource(fn, signature, constexprs, attrs)
    with ptxas_log(backend) as log, contextlib.redirect_stdout(io.StringIO()):
        compiled = triton.compile(source, target=target, options=options.__dict__)
    return compiled, log.log


def ptxas_usage(log: str) -> dict[str, int]:
    """Registers, spill bytes and stack frame from a ``ptxas -v`` log."""
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return {
        "registers": int(registers.group(1)) if registers else -1,
        "spill_stores": int(spills.group(1)) if spills else 0,
        "spill_loads": int(spills.group(2)) if spills else 0,
        "stack": int(stack.group(1)) if stack else 0,
    }


def instruction_mix(ptx: str) -> dict[str, Any]:
    """What the PTX multiplies with and how it loads."""
    wgmma = len(re.findall(r"\bwgmma\.mma_async", ptx))
    mma = len(re.findall(r"\bmma\.sync", ptx))
    fma = len(re.findall(r"\bfma\.rn\.f(32|64)", ptx))
    kind = "wgmma" if wgmma else "mma.sync" if mma else "fma" if fma else "none"
    return {
        "mma": kind,
        "wgmma": wgmma,
        "mma_sync": mma,
        "fma": fma,
        "cp_async": len(re.findall(r"\bcp\.async\.(ca|cg)", ptx)),
        "tma": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
    }


def resident_ctas(arch: str, registers: int, shared: int, num_warps: int) -> int:
    """CTAs per SM that registers, shared memory and threads allow."""
    limit = LIMITS[arch]
    threads = 32 * num_warps
    per_warp = -(-max(registers, 1) * 32 // 256) * 256  # registers are allocated per warp
    by_regs = limit["regs_sm"] // (per_warp * num_warps)
    by_smem = limit["smem_sm"] // (shared + 1024) if shared else limit["ctas_sm"]
    by_threads = limit["threads_sm"] // threads
    return min(by_regs, by_smem, by_threads, limit["ctas_sm"])


def report_launch(launch: Launch, arch: str) -> dict[str, Any]:
    """Compile one launch for ``arch`` and measure it."""
    limit = LIMITS[arch]
    row: dict[str, Any] = {"kernel": launch.name, "grid": list(launch.grid)}
    row["config"] = {k: v for k, v in launch.meta.items() if k.isupper() or k.startswith("num_")}
    try:
        compiled, log = compile_launch(launch, limit["cc"])
    except Exception as error:  # a config that cannot compile is a finding, not a crash
        row.update(compiles=False, error=f"{type(error).__name__}: {str(error)[:300]}")
        return row
    ptx = compiled.asm["ptx"]
    shared = int(compiled.metadata.shared)
    usage = ptxas_usage(log)
    num_warps = int(compiled.metadata.num_warps)
    row.update(
        compiles=True,
        shared=shared,
        shared_limit=limit["smem_block"],
        fits=shared <= limit["smem_block"],
        num_warps=num_warps,
        num_stages=int(compiled.metadata.num_stages),
        **usage,
        **instruction_mix(ptx),
        ctas_per_sm=resident_ctas(arch, usage["registers"], shared, num_warps),
    )
    return row


@dataclass(frozen=True)
class Problem:
    views: int
    n: int
    d: int
    world: int = 1  # > 1: rank 0 of the sharded mode over this many ranks


#: one problem per row of the config table (P <= 1024 and above), a width that is not a
#: multiple of 16, four views (the standardisation's chunked, multi-pass form), and the sharded
#: mode at the paper's per-GPU batch on 4 ranks (the small-tile row) and 8 ranks (the large-tile
#: row, split K): the SHARDED variants of the Gram, epilogue, finalize and backward kernels
PROBLEMS = (
    Problem(2, 256, 8192),
    Problem(2, 2048, 8192),
    Problem(2, 2048, 1000),
    Problem(4, 256, 8192),
    Problem(2, 256, 8192, world=4),
    Problem(2, 256, 8192, world=8),
)
QUICK_PROBLEMS = (
    Problem(2, 256, 8192),
    Problem(2, 2048, 8192),
    Problem(2, 2048, 1000),
    Problem(2, 256, 8192, world=8),
)


def candidate_plans(plan: Plan, every: bool) -> Iterator[tuple[str, Plan]]:
    """The default plan, and with ``every`` one plan per autotune candidate (forward and backward
    candidates taken pairwise; the split and padding stay the default plan's, as under
    autotuning)."""
    yield "default", plan
    if not every:
        return
    forward, backward = plan.forward, plan.backward
    for k in range(1, max(len(forward), len(backward))):
        f = forward[min(k, len(forward) - 1)]
        b = backward[min(k, len(backward) - 1)]
        if plan.k_per_split % f.BLOCK_K:
            continue
        yield f"candidate {k}", dataclasses.replace(plan, forward=(f,), backward=(b,))


def run(
    archs: list[str],
    settings: list[str],
    problems,
    every: bool,
    kernels: set[str] | None = None,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Compile and measure the launches of each (arch, setting, problem); ``kernels`` keeps only
    the launches of those kernels."""
    rows = []
    for arch in archs:
        for setting in settings:
            dtype, precision = SETTINGS[setting]
            for problem in problems:
                plan = make_plan(arch, LIMITS[arch]["sms"], problem.views, problem.n, problem.d,
                                 dtype, precision, True, problem.world)  # fmt: skip
                seen = set()
                for label, variant in candidate_plans(plan, every):
                    for launch in record_step(variant):
                        if kernels is not None and launch.name not in kernels:
                            continue
                        key = (launch.name, json.dumps(launch.meta, sort_keys=True, default=str))
                        if label != "default" and key in seen:
                            continue
                        seen.add(key)
                        row = report_launch(launch, arch)
                        row.update(arch=arch, setting=setting, views=problem.views, n=problem.n,
                                   d=problem.d, rows=plan.rows, world=problem.world,
                                   which=label)  # fmt: skip
                        rows.append(row)
                        if echo:
                            print(_line(row), flush=True)
    return rows


def verdict(row: dict[str, Any]) -> str:
    if not row["compiles"]:
        return "FAILS"
    problems = []
    if not row["fits"]:
        problems.append("smem")
    if row["spill_stores"] or row["spill_loads"]:
        problems.append("spills")
    return "ok" if not problems else "+".join(problems)


def _config_text(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in row["config"].items() if k not in ("EMULATE_RTNE",
                    "WIDEN_DOT", "NEED_GRAD", "V", "V_BLOCK", "INPUT_PRECISION", "SHARDED",
                    "TILE"))  # fmt: skip


def _rows_text(row: dict[str, Any]) -> str:
    """P, and for the sharded mode the number of ranks (P is then P_local)."""
    world = row.get("world", 1)
    return f"{row['rows']}" if world == 1 else f"{row['rows']} x W{world}"


def _line(row: dict[str, Any]) -> str:
    head = (f"{row['arch']} {row['setting']:<13} P={_rows_text(row):<8} D={row['d']:<5} "
            f"{row['which']:<11} {row['kernel']:<22}")  # fmt: skip
    if not row["compiles"]:
        return f"{head} FAILS {row['error'][:120]}"
    return (f"{head} smem {row['shared']:>6}/{row['shared_limit']} regs {row['registers']:>3} "
            f"spill {row['spill_stores']:>4}/{row['spill_loads']:<4} {row['mma']:<8} "
            f"cp.async {row['cp_async']:>3} tma {row['tma']} ctas/SM {row['ctas_per_sm']} "
            f"{verdict(row)}  [{_config_text(row)}]")  # fmt: skip


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| arch | setting | P | D | which | kernel | config | smem (B) | regs | spills "
             "(st/ld) | MMA | cp.async | TMA | CTAs/SM | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        if not row["compiles"]:
            lines.append(f"| {row['arch']} | {row['setting']} | {_rows_text(row)} | {row['d']} | "
                         f"{row['which']} | {row['kernel']} | {_config_text(row)} | | | | | | | | "
                         f"FAILS: {row['error'][:80]} |")  # fmt: skip
            continue
        lines.append(
            f"| {row['arch']} | {row['setting']} | {_rows_text(row)} | {row['d']} | "
            f"{row['which']} | {row['kernel']} | {_config_text(row)} | "
            f"{row['shared']} / {row['shared_limit']} | "
            f"{row['registers']} | {row['spill_stores']}/{row['spill_loads']} | {row['mma']} | "
            f"{row['cp_async']} | {row['tma']} | {row['ctas_per_sm']} | {verdict(row)} |"
        )
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    defaults = [r for r in rows if r["which"] == "default"]
    return {
        "launches": len(rows),
        "default_launches": len(defaults),
        "fail_to_compile": sum(not r["compiles"] for r in rows),
        "over_shared_memory": sum(r["compiles"] and not r["fits"] for r in rows),
        "default_with_spills": sum(
            r["compiles"] and (r["spill_stores"] or r["spill_loads"]) > 0 for r in defaults
        ),
        "with_spills": sum(
            r["compiles"] and (r["spill_stores"] or r["spill_loads"]) > 0 for r in rows
        ),
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    parser.add_argument("--setting", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--quick", action="store_true", help="default configs only")
    parser.add_argument(
        "--write",
        action="store_true",
        help="write benchmarks/results/compile/triton-<version>.{md,json}",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compile")
    return parser.parse_args(argv)


def toolchain_error(arch: str) -> str | None:
    """Why this triton cannot run the report (None when it can): the first launch of a small
    step, compiled for ``arch``. A Triton API the tool relies on that has moved fails here, once,
    instead of in every launch."""
    plan = make_plan(arch, LIMITS[arch]["sms"], 2, 256, 1024, torch.float32, "highest", False)
    try:
        compile_launch(record_step(plan)[0], LIMITS[arch]["cc"])
    except Exception as error:
        return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    error = toolchain_error(args.arch[0])
    if error is not None:
        print(f"kernel_report.py cannot compile with triton {triton.__version__} "
              f"({error}); nothing run, nothing written", file=sys.stderr)  # fmt: skip
        return 2
    start = time.perf_counter()
    problems = QUICK_PROBLEMS if args.quick else PROBLEMS
    rows = run(args.arch, args.setting, problems, every=not args.quick)
    elapsed = time.perf_counter() - start
    totals = summary(rows)
    header = (
        f"# Kernel compile report: triton {triton.__version__}, torch {torch.__version__}\n\n"
        f"`python tools/kernel_report.py{' --quick' if args.quick else ''}` "
        f"({elapsed:.0f} s, no GPU). Targets: {', '.join(args.arch)}. Each launch of a "
        "forward + backward step compiled as the op makes it; registers and spills from "
        "ptxas -v, shared memory from the compiled metadata.\n\n"
        f"Totals: {json.dumps(totals)}"
    )
    print(json.dumps(totals))
    if rows and totals["fail_to_compile"] == len(rows):
        print(f"kernel_report.py: not one launch compiled on triton {triton.__version__}, "
              f"nothing written: {rows[0]['error'][:200]}", file=sys.stderr)  # fmt: skip
        return 1
    if args.write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"triton-{triton.__version__}"
        Path(f"{stem}.md").write_text(markdown(rows, header))
        payload = {"triton": triton.__version__, "torch": torch.__version__,
                   "seconds": elapsed, "totals": totals, "rows": rows}  # fmt: skip
        Path(f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str))
        print(f"wrote {stem}.md and .json")
    bad = totals["fail_to_compile"] + totals["over_shared_memory"] + totals["default_with_spills"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

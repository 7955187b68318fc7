"""Validate and benchmark smi-kernels on any CUDA GPU, in one command of at most 300 s (hard).

    PYTHONPATH=. python benchmarks/gpu_check.py --out-dir OUT         # every stage, 300 s
    PYTHONPATH=. python benchmarks/gpu_check.py --quick --out-dir OUT # the target cases, 180 s
    PYTHONPATH=. python benchmarks/gpu_check.py --skip rates sweep model --budget 150 --out-dir OUT
    PYTHONPATH=. python benchmarks/gpu_check.py --skip tests sanitizer --budget 240 --out-dir OUT
    python benchmarks/gpu_check.py --cpu-smoke   # developers: every stage on the CPU, 100 s

It runs from the checkout: ``PYTHONPATH=.``, no install, no package index, no ``bench`` extra
(fvcore, matplotlib, tabulate, tqdm; without matplotlib there are no plots, and nothing else
changes). Results go to ``--out-dir`` (default ``benchmarks/results/<gpu-name-slug>/``; for
--cpu-smoke a new temporary folder): on a machine that is handed back after the run, name the
folder that is kept. The report is rewritten after every stage, so a run that is stopped keeps
what it did.

Time. ``--budget`` (default 300 s; 180 s with --quick, 100 s with --cpu-smoke) is the wall time
of the whole run, from its start to its last write, and it is hard. The stages that run share
it in proportion to ``SHARES`` (a skipped stage's share goes to the others), on a schedule: a
stage may use time that the stages before it left, never the time of those after it, and is cut
at the end of its slot (its subprocess killed, or the stage interrupted in process). Each sweep
point gets an equal part of the time the sweep has left and is cut at the end of it. A watchdog
ends the process a few seconds past the budget, whatever it is doing. A short budget still
runs every stage. On a rented GPU, make two calls, validation (the third line above) then speed
(the fourth): with the machine's start 540 s, and a rerun of the longer one fits in 900 s
(README, "Validate a GPU in fifteen minutes").

Stages; a stage that fails or is cut is recorded and the others still run:

    environment  torch, triton, CUDA, driver, GPU                           -> env.json
    tests        ``pytest -m gpu`` (the GPU-marked tests)                   -> pytest.log
    sanitizer    compute-sanitizer (memcheck) on small forward + backward   -> sanitizer.log
                 (skipped with a note when compute-sanitizer is not found)
    rates        the device's own rates: torch.mm (bf16, TF32, FP32) at the target shapes, a
                 1 GiB copy (HBM), a Triton kernel re-reading a 16 MiB buffer (L2), the host
                 time of one fused step at N = 256 (steps queued without synchronising)
                                                                            -> measured_rates.json
    sweep        forward + backward time and peak memory of the performance targets' cases (and,
                 without --quick, an N sweep at D = 8192) for SMI fused, the eager SMI
                 reference, torch.compile of it, Barlow Twins, VICReg and NT-Xent
                 (``harness.measure_point``: ``triton.testing.do_bench`` medians,
                 ``torch.cuda.max_memory_allocated``)
    model        the performance model (``tools/model.py``) re-evaluated with the measured rates,
                 its predictions beside the measurements; target / predicted / measured / verdict
    report       gpu_check.md, and the plots where matplotlib imports     -> gpu_check_*.png

Writes into the output folder: gpu_check.json, gpu_check.md, env.json, pytest.log,
sanitizer.log, measured_rates.json and the PNG plots.

Exit status: 0 every stage passed and every target was met (--cpu-smoke: every stage passed;
CPU times are not held to GPU targets); 1 a stage failed or was cut, or the watchdog stopped
the run; 2 the stages passed but a target was missed; 3 no CUDA GPU (one line, nothing run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: the harness, and the performance model of ``tools/`` that the predictions come from
sys.path[:0] = [str(BENCHMARKS), str(REPO / "tools")]
NO_GPU = 3

#: wall seconds of the whole run (start-up included): by default, with --quick, --cpu-smoke
BUDGET_S = 300
QUICK_BUDGET_S = 180
SMOKE_BUDGET_S = 100
#: each stage's share of the budget, in the order the stages run; the shares of the stages that
#: run are scaled to fill the budget less ``RESERVE``
SHARES = {
    "tests": 0.30,
    "sanitizer": 0.15,
    "rates": 0.10,
    "sweep": 0.30,
    "model": 0.05,
    "report": 0.05,
}
#: the CPU smoke run's: there the tests are one file whose GPU tests skip, and the interpreted
#: sweep is the long stage
SMOKE_SHARES = {"tests": 0.15, "rates": 0.05, "sweep": 0.60, "model": 0.10, "report": 0.10}
#: share of the budget kept for the last write; the stages share what is left of the budget
#: once the start (imports, the environment stage) is done
RESERVE = 0.03
#: the environment stage's own limit (nvidia-smi and git are asked with shorter timeouts)
ENVIRONMENT_S = 30.0
#: the watchdog ends the process this many seconds past the budget: a stage stuck in C code,
#: where the in-process interruption cannot reach it
WATCHDOG_GRACE_S = 5
#: a sweep point is not started with a part shorter than this
MIN_POINT_S = 2.0
#: the packages of the ``bench`` extra, recorded in env.json as importable or not
BENCH_EXTRA = ("fvcore", "matplotlib", "tabulate", "tqdm")


def _no_gpu_reason() -> str | None:
    """Why this machine cannot run the check (None when it can)."""
    try:
        import torch
    except Exception as error:  # a broken install is reported, not raised
        return f"torch does not import ({type(error).__name__}: {error})"
    try:
        if not torch.cuda.is_available():
            return "no CUDA GPU visible (torch.cuda.is_available() is False)"
    except Exception as error:
        return f"CUDA is not usable ({type(error).__name__}: {error})"
    return None


# ------------------------------------------------------------------ stages


@dataclass
class Stage:
    """The outcome of one stage."""

    name: str
    status: str = "not run"  # passed, failed, skipped, timeout
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timeout")


class StageError(Exception):
    """A stage's own failure, with a one-line reason (no traceback needed)."""


class Skip(Exception):
    """A stage that cannot run here, with the reason."""


class OutOfTime(BaseException):
    """Raised in the main thread when a stage or a sweep point reaches the end of its time. A
    BaseException, so that the measuring code's ``except Exception`` does not swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Any:
    """Interrupt the block with ``OutOfTime`` after ``seconds`` (SIGALRM, main thread; where
    the platform has no interval timer, the watchdog alone bounds the run)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise OutOfTime(f"cut at the end of its {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def warm_imports() -> None:
    """Import now, before any slot starts, what the stages would import on first use (dynamo
    and inductor: seconds): an import cut half-way by the end of a slot would leave a partly
    initialised module behind for every later stage."""
    import harness  # noqa: F401
    import model  # noqa: F401
    import torch._dynamo
    import torch._inductor  # noqa: F401
    import triton.testing  # noqa: F401

    import smi_kernels._triton.op  # noqa: F401


def schedule(
    begin: float, end: float, running: Sequence[str], shares: dict[str, float] = SHARES
) -> dict[str, float]:
    """The time (``time.monotonic``) at which each running stage's slot ends: the time from
    ``begin`` to ``end`` shared in proportion to the ``shares`` of the stages that run."""
    total = sum(shares[name] for name in running)
    ends, at = {}, begin
    for name in running:
        at += (end - begin) * shares[name] / total
        ends[name] = at
    return ends


def watchdog(seconds: float, out_dir: Path) -> threading.Timer:
    """A daemon timer that ends the process after ``seconds``; what was written stays."""

    def stop() -> None:
        print(
            f"[gpu_check] stopped by the watchdog, {WATCHDOG_GRACE_S} s past the budget; the "
            f"report written so far is in {out_dir}",
            flush=True,
        )
        os._exit(1)

    timer = threading.Timer(max(seconds, 0.0), stop)
    timer.daemon = True
    timer.start()
    return timer


def run_stage(
    name: str, fn: Callable[[], dict[str, Any]], log: Path, limit: float | None = None
) -> Stage:
    """Run one stage; every exception becomes a recorded failure (its traceback in ``log``).
    With ``limit``, the stage is interrupted after that many seconds and recorded as cut
    (``timeout``); a stage that bounds itself (a subprocess, the sweep's points) passes None."""
    stage = Stage(name)
    start = time.perf_counter()
    print(f"[gpu_check] {name} ..." + (f" (up to {limit:.0f} s)" if limit else ""), flush=True)
    try:
        with time_limit(limit) if limit is not None else contextlib.nullcontext():
            stage.data = fn() or {}
        stage.status = stage.data.pop("_status", "passed")
        stage.detail = stage.data.pop("_detail", "")
    except OutOfTime as cut:
        stage.status, stage.detail = "timeout", str(cut)
    except Skip as reason:
        stage.status, stage.detail = "skipped", str(reason)
    except StageError as error:
        stage.status, stage.detail = "failed", str(error)
    except Exception as error:
        stage.status = "failed"
        stage.detail = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        with log.open("a") as handle:
            handle.write(f"--- stage {name}\n{traceback.format_exc()}\n")
    stage.seconds = time.perf_counter() - start
    print(f"[gpu_check] {name}: {stage.status} ({stage.seconds:.0f} s) {stage.detail}", flush=True)
    return stage


def run_logged(
    command: Sequence[str], log: Path, timeout: float, env: dict[str, str]
) -> int | None:
    """Run ``command`` in its own process group, output to ``log``; None on timeout (the group
    is killed)."""
    with log.open("w") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(
            list(command),
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            handle.write(f"\n[gpu_check] killed after {timeout:.0f} s (time budget)\n")
            return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the GPU stages must run the compiled kernels
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _importable(name: str) -> bool:
    """True when the module imports (the ``bench`` extra is optional here)."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def stage_environment(device: Any, out_dir: Path) -> dict[str, Any]:
    """Versions of everything that decides the numbers."""
    import torch
    import triton

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "smi_kernels_from": str(Path(__import__("smi_kernels").__file__).parent),
        "bench_extra": {name: _importable(name) for name in BENCH_EXTRA},
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        env["smi_kernels"] = version("smi-kernels")
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            l2_bytes=getattr(props, "L2_cache_size", None),
        )
        with contextlib.suppress(Exception):
            query = "driver_version,clocks.max.sm,clocks.max.mem,power.limit"
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            fields = [x.strip() for x in smi.stdout.splitlines()[device.index or 0].split(",")]
            env.update(
                dict(
                    zip(
                        ("driver", "sm_clock_max", "mem_clock_max", "power_limit"),
                        fields,
                        strict=False,
                    )
                )
            )
    else:
        env["gpu"] = None
    (out_dir / "env.json").write_text(json.dumps(env, indent=1) + "\n")
    gpu = env.get("gpu") or "cpu"
    return env | {"_detail": f"{gpu}, torch {env['torch']}, triton {env['triton']}"}


def stage_tests(out_dir: Path, budget: float, smoke: bool = False) -> dict[str, Any]:
    """``pytest -m gpu``; the compute-sanitizer test is left to the sanitizer stage. The CPU
    smoke run takes tests/test_triton.py alone, whose GPU tests skip there: it checks the
    command and the reading of its log, not the collection of every test file."""
    log = out_dir / "pytest.log"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        "-q",
        "-rfEs",
        "-p",
        "no:cacheprovider",
        "-k",
        "not compute_sanitizer",
        "tests/test_triton.py" if smoke else "tests",
    ]
    code = run_logged(command, log, budget, _child_env())
    text = log.read_text(errors="replace")
    summary = next(
        (
            line.strip("= ")
            for line in reversed(text.splitlines())
            if re.search(r"\d+ (passed|failed|skipped|error|deselected)", line)
        ),
        "no summary line",
    )
    data = {"returncode": code, "summary": summary, "log": log.name}
    if code is None:
        return data | {"_status": "timeout", "_detail": f"over {budget:.0f} s; {summary}"}
    if code == 5:
        raise StageError("no GPU test was collected (pytest exit 5)")
    if code != 0:
        raise StageError(f"pytest exit {code}: {summary} (see {log.name})")
    return data | {"_detail": summary}


SANITIZER_SCRIPT = """
import torch
from smi_kernels import smi_loss
for views, n, d, dtype in ((2, 37, 70, torch.float32), (3, 64, 300, torch.bfloat16)):
    zs = [torch.randn(n, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(views)]
    smi_loss(*zs, backend="triton").backward()
torch.cuda.synchronize()
print("sanitizer case done")
"""


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, under $CUDA_HOME, or in /usr/local/cuda/bin."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "compute-sanitizer").exists():
            return str(Path(root) / "bin" / "compute-sanitizer")
    return None


def stage_sanitizer(out_dir: Path, budget: float) -> dict[str, Any]:
    """memcheck over a small forward + backward (two and three views, a split-K plan)."""
    binary = find_sanitizer()
    if binary is None:
        raise Skip("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    log = out_dir / "sanitizer.log"
    env = _child_env() | {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    command = [
        binary,
        "--tool",
        "memcheck",
        "--error-exitcode",
        "1",
        sys.executable,
        "-c",
        SANITIZER_SCRIPT,
    ]
    code = run_logged(command, log, budget, env)
    text = log.read_text(errors="replace")
    summary = next((line for line in text.splitlines() if "ERROR SUMMARY" in line), "")
    data = {"returncode": code, "summary": summary, "binary": binary, "log": log.name}
    if code is None:
        return data | {"_status": "timeout", "_detail": f"over {budget:.0f} s"}
    if code != 0 or "sanitizer case done" not in text:
        raise StageError(f"compute-sanitizer exit {code}: {summary or 'see ' + log.name}")
    return data | {"_detail": summary}


def _time_s(step: Callable[[], None], device: Any, mode: str = "min") -> float:
    import harness

    if device.type == "cuda":
        return harness.time_cuda_ms(step, mode=mode) * 1e-3
    times = harness.time_cpu_interleaved({"x": step}, min_run_time=0.2, min_rounds=3)["x"]
    return min(times)


def _copy_rate(device: Any) -> float:
    """Bytes/s (read + written) of a 1 GiB device-to-device copy (128 MiB on the CPU)."""
    import torch

    size = 2**30 if device.type == "cuda" else 2**27
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    return 2 * size / _time_s(lambda: dst.copy_(src), device)


def _triton_host_s(device: Any, point: Point, steps: int = 50) -> float:
    """Host seconds of one fused forward + backward step: the wall time of ``steps`` steps
    queued without synchronising (5 launches a step: the queue never fills), per step."""
    import torch

    from smi_kernels import smi_loss

    views = [
        torch.randn(
            point.n, point.d, device=device, dtype=model_dtype(point.dtype)
        ).requires_grad_()
        for _ in range(2)
    ]

    def step() -> None:
        for view in views:
            view.grad = None
        smi_loss(*views, backend="triton").backward()

    for _ in range(5):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    torch.cuda.synchronize(device)
    return seconds


def l2_read_kernel() -> Any:
    """A Triton kernel that reads every BLOCK-chunk of x once per round, ``repeats`` rounds,
    each program a different chunk every round, and stores its running sums (so that nothing is
    optimised away)."""
    import triton
    import triton.language as tl

    @triton.jit
    def l2_read(x_ptr, out_ptr, chunks, repeats, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        programs = tl.num_programs(0)
        offsets = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), tl.float32)
        for r in range(repeats):
            # a chunk that moves with r, so that no load is loop-invariant
            for c in range(pid, chunks, programs):
                chunk = (c + r * 7) % chunks
                acc += tl.load(x_ptr + chunk * BLOCK + offsets)
        tl.store(out_ptr + pid * BLOCK + offsets, acc)

    return l2_read


def _l2_read_rate(device: Any) -> float:
    """Bytes/s of ``l2_read_kernel`` over a 16 MiB buffer, 64 rounds: after the first round the
    buffer is in L2, so this is the rate at which tile loads can come from L2."""
    import torch

    kernel = l2_read_kernel()
    block, repeats = 2048, 64
    x = torch.ones(16 * 2**20 // 4, device=device, dtype=torch.float32)
    chunks = x.numel() // block
    programs = torch.cuda.get_device_properties(device).multi_processor_count * 8
    out = torch.empty(programs * block, device=device, dtype=torch.float32)

    def step() -> None:
        kernel[(programs,)](x, out, chunks, repeats, BLOCK=block, num_warps=8)

    return repeats * x.numel() * 4 / _time_s(step, device)


def stage_rates(device: Any, points: Sequence[Point]) -> dict[str, Any]:
    """The device's rates as the model names them (``model.DeviceRates`` fields): the GEMM
    rates at the shapes of target (a) (bf16) and (c) (TF32, FP32), as the harness's roofline."""
    import torch

    rates: dict[str, Any] = {}
    errors: list[str] = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        from smi_kernels._triton import configs

        rates.update(
            name=props.name,
            arch=configs.architecture(device),
            sms=props.multi_processor_count,
            registers_per_sm=getattr(props, "regs_per_multiprocessor", 65536),
            threads_per_sm=getattr(props, "max_threads_per_multi_processor", 2048),
        )
        shared = getattr(props, "shared_memory_per_multiprocessor", None)
        if shared:
            rates["shared_memory_per_sm"] = int(shared)
        if getattr(props, "L2_cache_size", 0):
            rates["l2_reuse_bytes"] = int(props.L2_cache_size) // 2
    a = next(p for p in points if p.label == "a")
    c = next(p for p in points if p.label == "c")
    gemms = {
        "tensor_16bit": (torch.bfloat16, "highest", a.n, a.d),
        "tensor_tf32": (torch.float32, "high", c.n, c.d),
        "fp32_fma": (torch.float32, "highest", c.n, c.d),
    }
    previous = torch.get_float32_matmul_precision()
    for name, (dtype, precision, n, d) in gemms.items():
        try:
            torch.set_float32_matmul_precision(precision)
            # (2N, D) @ (D, 2N): the shape of the SMI Gram, as the harness's roofline
            left = torch.randn(2 * n, d, device=device, dtype=dtype)
            right = torch.randn(d, 2 * n, device=device, dtype=dtype)
            seconds = _time_s(lambda x=left, y=right: torch.mm(x, y), device)
            rates[name] = 2 * (2 * n) * (2 * n) * d / seconds
            del left, right
        except Exception as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
        finally:
            torch.set_float32_matmul_precision(previous)
    try:
        rates["hbm"] = _copy_rate(device)
    except Exception as error:
        errors.append(f"hbm: {type(error).__name__}: {error}")
    if device.type == "cuda":
        try:
            rates["l2"] = _l2_read_rate(device)
        except Exception as error:
            errors.append(f"l2: {type(error).__name__}: {error}")
        try:
            small = next(p for p in points if p.label == "b")
            rates["triton_host_s"] = _triton_host_s(device, small)
        except Exception as error:
            errors.append(f"triton_host_s: {type(error).__name__}: {error}")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    detail = ", ".join(
        f"{k} {_si(v)}"
        for k, v in rates.items()
        if k in ("tensor_16bit", "tensor_tf32", "fp32_fma", "hbm", "l2")
    )
    if "triton_host_s" in rates:
        detail += f", Triton host {rates['triton_host_s'] * 1e6:.0f} us/step"
    data: dict[str, Any] = {"rates": rates, "errors": errors}
    if errors:
        return data | {"_status": "failed", "_detail": "; ".join(errors)[:300]}
    return data | {"_detail": detail + " (flop/s, bytes/s)"}


@dataclass(frozen=True)
class Point:
    """One (N, D, dtype, precision) of the sweep, with the losses timed there."""

    label: str
    n: int
    d: int
    dtype: str
    precision: str
    losses: tuple[str, ...]


ALL_LOSSES = ("smi_fused", "smi_reference", "smi_reference_compiled", "barlow", "vicreg", "ntxent")


def sweep_points(quick: bool, smoke: bool) -> list[Point]:
    """The target cases first, then (without --quick) an N sweep at D = 8192, bf16."""
    import model

    if smoke:  # the CPU smoke run: tiny shapes, each loss once but the compiled reference
        # (its C++ build on the CPU would take most of the smoke's time); the interpreted fused
        # op, seconds a step, last, where the points before it leave their time to it
        every = tuple(key for key in ALL_LOSSES if key != "smi_reference_compiled")
        return [
            Point("b", 8, 32, "float32", "highest", ("smi_reference", "barlow")),
            Point("c", 24, 32, "float32", "highest", ("smi_reference",)),
            Point("a", 16, 32, "float32", "highest", every),
        ]
    extra = () if quick else ("vicreg", "ntxent")
    points = []
    for case in model.CASES:
        keys = model.CASE_KEYS[case.label]
        if case.label in ("a", "b"):
            keys = tuple(dict.fromkeys((*keys, "smi_reference_compiled", "barlow", *extra)))
        points.append(Point(case.label, case.n, case.d, case.dtype, case.precision, keys))
    if not quick:
        for n in (512, 1024, 4096):
            points.append(Point("sweep", n, 8192, "bfloat16", "highest", ALL_LOSSES))
    return points


def stage_sweep(
    device: Any, points: Sequence[Point], end: float, min_run_time: float, smoke: bool = False
) -> dict[str, Any]:
    """Time and peak memory of every point's losses (``harness.measure_point``). Each point gets
    an equal part of the time left before ``end`` (``time.monotonic``) and is cut at the end of
    it; a point whose part would be shorter than ``MIN_POINT_S`` is skipped. The CPU smoke run
    times one round of each loss: its times say nothing, its code paths are the GPU's."""
    import harness
    import torch

    losses = {loss.key: loss for loss in harness.losses(device)}
    if device.type != "cuda":  # the CPU smoke run: the op under the Triton interpreter
        losses["smi_fused"] = harness.SMI_FUSED_OP
    timing: dict[str, Any] = {"rounds": 1, "retries": 0} if smoke else {}
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    cut: list[str] = []
    previous = torch.get_float32_matmul_precision()
    for index, point in enumerate(points):
        part = (end - time.monotonic()) / (len(points) - index)
        where = f"{point.label} N={point.n} D={point.d} {point.dtype}"
        if part < MIN_POINT_S:
            skipped.append(where)
            continue
        chosen = [losses[key] for key in point.losses if key in losses]
        print(
            f"[gpu_check]   {where} ({point.precision}, up to {part:.0f} s): "
            f"{', '.join(point.losses)}",
            flush=True,
        )
        try:
            torch.set_float32_matmul_precision(point.precision)
            with time_limit(part):
                gemm, results = harness.measure_point(
                    chosen, point.n, point.d, model_dtype(point.dtype), device, min_run_time,
                    **timing,
                )  # fmt: skip
        except OutOfTime:
            cut.append(f"{where} at {part:.0f} s")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        finally:
            torch.set_float32_matmul_precision(previous)
        for loss, result in zip(chosen, results, strict=True):
            rows.append(
                dataclasses.asdict(point)
                | {"loss": loss.key, "name": loss.name, "gemm_flops": gemm}
                | result
            )
    failed = [f"{r['loss']}@{r['label']}:{r['status']}" for r in rows if r["status"] != "ok"]
    data: dict[str, Any] = {"rows": rows, "skipped": skipped, "cut": cut}
    detail = f"{len(rows)} measurements"
    if cut:
        detail += f"; cut at the end of their part: {', '.join(cut)}"
    if skipped:
        detail += f"; skipped for time: {', '.join(skipped)}"
    if failed:
        return data | {"_status": "failed", "_detail": f"{detail}; not ok: {', '.join(failed)}"}
    return data | {"_detail": detail}


def model_dtype(name: str) -> Any:
    import harness

    return harness.DTYPES[name]


def measured_rates(rates: dict[str, Any]) -> Any:
    """The model's rates with the measured ones in (``model.with_rates``)."""
    import model

    known = {k: v for k, v in rates.items() if k in (*model.RATE_FIELDS, "name", "arch")}
    return model.with_rates(model.H100_SXM, **known)


def stage_model(rates_data: dict[str, Any], sweep_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The model at assumed and measured rates, beside every measurement; the targets."""
    import model

    assumed = model.H100_SXM
    measured = measured_rates(rates_data) if rates_data else assumed
    comparisons = []
    for row in sweep_rows:
        if row["loss"] not in model.MODELLED:
            continue
        entry = {k: row[k] for k in ("label", "n", "d", "dtype", "precision", "loss", "name")}
        entry |= {"measured_ms": row.get("time_ms"), "measured_peak_bytes": row.get("peak_bytes")}
        for tag, rates in (("assumed", assumed), ("measured_rates", measured)):
            step = model.predict(
                row["loss"], row["n"], row["d"], row["dtype"], row["precision"], rates
            )
            entry[f"predicted_ms_{tag}"] = step.time_s * 1e3
            entry[f"predicted_peak_bytes_{tag}"] = step.peak_bytes
        if entry["measured_ms"] and entry["predicted_ms_measured_rates"]:
            entry["measured_over_predicted"] = (
                entry["measured_ms"] / entry["predicted_ms_measured_rates"]
            )
        comparisons.append(entry)
    targets = []
    rows_by_case: dict[str, list[dict[str, Any]]] = {}
    for row in sweep_rows:
        rows_by_case.setdefault(row["label"], []).append(row)
    predicted_rows = {
        (r.target.case.label, r.target.metric): r for r in model.evaluate_targets(measured)
    }
    for target in model.TARGETS:
        case = target.case
        mine = rows_by_case.get(case.label, [])
        times = {r["loss"]: r["time_ms"] * 1e-3 for r in mine if r.get("time_ms")}
        peaks = {r["loss"]: r["peak_bytes"] for r in mine if r.get("peak_bytes")}
        rates = measured
        gemm = next((r["gemm_flops"] for r in mine if r.get("gemm_flops")), None)
        if gemm:  # the roofline at this very shape, as the harness measures it
            field_name = (
                "tensor_16bit"
                if case.dtype != "float32"
                else ("tensor_tf32" if case.precision != "highest" else "fp32_fma")
            )
            rates = model.with_rates(measured, **{field_name: gemm})
        value = model.metrics(case, times, peaks, rates).get(target.metric) if times else None
        row = predicted_rows[(case.label, target.metric)]
        row.measured = value
        targets.append(row)
    missed = [r for r in targets if r.measured_passes is False]
    unmeasured = [r for r in targets if r.measured is None]
    data = {
        "rates": {k: getattr(measured, k) for k in model.RATE_FIELDS},
        "measured_rate_fields": list(measured.measured),
        "comparisons": comparisons,
        "targets": [r.to_json() for r in targets],
        "targets_table": model.targets_table(targets, measured=True),
    }
    detail = f"{len(targets) - len(missed) - len(unmeasured)} targets met, {len(missed)} missed"
    if unmeasured:
        detail += f", {len(unmeasured)} not measured"
    return data | {"_detail": detail, "_targets": targets}


# ------------------------------------------------------------------ report


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _si(value: float | None) -> str:
    """1.23 T, 456 G, ...: a rate in flop/s or bytes/s."""
    if not value:
        return "-"
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{value / factor:.3g} {prefix}"
    return f"{value:.3g}"


def markdown(payload: dict[str, Any]) -> str:
    """gpu_check.md: stages, targets, predicted vs measured, rates."""
    env = payload["environment"]
    flags = " --quick" * payload["quick"] + " --cpu-smoke" * payload["cpu_smoke"]
    if payload.get("budget"):
        flags += f" --budget {payload['budget']:.0f}"
    title = env.get("gpu") or ("CPU smoke run (no GPU)" if payload["cpu_smoke"] else "no GPU")
    lines = [
        f"# gpu_check: {title}",
        "",
        f"`python benchmarks/gpu_check.py{flags}` "
        f"({payload['seconds']:.0f} s). torch {env.get('torch')}, CUDA {env.get('torch_cuda')}, "
        f"triton {env.get('triton')}, driver {env.get('driver', '-')}, commit "
        f"{env.get('git_commit', '-')[:12]}.",
        "",
        "| stage | status | seconds | detail |",
        "|---|---|---:|---|",
    ]
    for stage in payload["stages"]:
        detail = stage["detail"].replace("|", "/")
        lines.append(f"| {stage['name']} | {stage['status']} | {stage['seconds']:.0f} | {detail} |")
    model_stage = payload["model"]
    if model_stage.get("targets_table"):
        lines += [
            "",
            "## Targets",
            "",
            "Predicted: the model at the rates measured here. Measured: this run.",
            "",
            model_stage["targets_table"],
        ]
    comparisons = model_stage.get("comparisons") or []
    if comparisons:
        lines += [
            "",
            "## Every measurement beside the model",
            "",
            "Time: forward + backward per step (median). Peak: bytes allocated above the "
            "inputs during one step. Predicted at the assumed H100 rates and at the rates "
            "measured here.",
            "",
            "| case | N | D | dtype | loss | measured ms | predicted ms (measured rates) | "
            "predicted ms (assumed H100) | measured / predicted | peak MiB measured | "
            "peak MiB predicted |",
            "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c in comparisons:
            peak = c["measured_peak_bytes"] / 2**20 if c["measured_peak_bytes"] else None
            predicted_peak = c["predicted_peak_bytes_measured_rates"]
            lines.append(
                f"| {c['label']} | {c['n']} | {c['d']} | {c['dtype']} {c['precision']} | "
                f"{c['name']} | {_fmt(c['measured_ms'], '.3f')} | "
                f"{_fmt(c['predicted_ms_measured_rates'], '.3f')} | "
                f"{_fmt(c['predicted_ms_assumed'], '.3f')} | "
                f"{_fmt(c.get('measured_over_predicted'), '.2f')} | {_fmt(peak, ',.1f')} | "
                f"{_fmt(predicted_peak / 2**20 if predicted_peak else None, ',.1f')} |"
            )
    rates = payload["rates"].get("rates") or {}
    if rates:
        import model

        lines += [
            "",
            "## Rates (flop/s, bytes/s)",
            "",
            "| rate | assumed (H100 SXM) | measured |",
            "|---|---:|---:|",
        ]
        for key in ("tensor_16bit", "tensor_tf32", "fp32_fma", "hbm", "l2"):
            lines.append(f"| {key} | {_si(getattr(model.H100_SXM, key))} | {_si(rates.get(key))} |")
        if rates.get("triton_host_s"):
            lines.append(
                f"| Triton host time per step | {model.H100_SXM.triton_host_s * 1e6:.0f} us | "
                f"{rates['triton_host_s'] * 1e6:.0f} us |"
            )
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """Measured vs predicted time and peak memory per case; time vs N; predicted vs measured.
    Raises ``Skip`` where matplotlib (the ``bench`` extra) is not installed."""
    try:
        import matplotlib
    except ImportError as error:
        raise Skip("matplotlib is not installed (the bench extra): no plots") from error

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = payload["environment"].get("gpu") or "cpu"
    comparisons = payload["model"].get("comparisons") or []
    written: list[Path] = []
    if not comparisons:
        return written
    keys = list(dict.fromkeys(c["loss"] for c in comparisons))
    colours = {key: f"C{i}" for i, key in enumerate(keys)}
    labels = list(dict.fromkeys(c["label"] for c in comparisons if c["label"] != "sweep"))

    for metric, unit, filename, what in (
        ("ms", 1.0, "gpu_check_targets_time.png", "forward + backward time per step, ms"),
        ("peak_bytes", 2**20, "gpu_check_targets_memory.png", "peak memory above the inputs, MiB"),
    ):
        fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 4.4), squeeze=False)
        for ax, label in zip(axes[0], labels, strict=True):
            rows = [c for c in comparisons if c["label"] == label]
            for i, c in enumerate(rows):
                measured = c[f"measured_{metric}"]
                predicted = c[f"predicted_{metric}_measured_rates"]
                if measured:
                    ax.bar(i, measured / unit, color=colours[c["loss"]], label=c["name"])
                if predicted:
                    ax.plot(i, predicted / unit, "kx", markersize=9)
            ax.set_yscale("log")
            ax.set_xticks(
                range(len(rows)), [c["name"] for c in rows], rotation=45, ha="right", fontsize=7
            )
            first = rows[0]
            ax.set_title(
                f"({label}) N={first['n']} D={first['d']}\n{first['dtype']} {first['precision']}",
                fontsize=9,
            )
            ax.set_ylabel(what, fontsize=8)
        fig.suptitle(f"{device}: measured (bars), model at measured rates (x)", fontsize=10)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    sweep = [
        c for c in comparisons if c["dtype"] == "bfloat16" and c["d"] == 8192 and c["measured_ms"]
    ]
    if len({c["n"] for c in sweep}) >= 3:
        fig, ax = plt.subplots(figsize=(6.5, 4.6))
        for key in keys:
            points = sorted(
                (c["n"], c["measured_ms"], c["predicted_ms_measured_rates"])
                for c in sweep
                if c["loss"] == key
            )
            if not points:
                continue
            ns, measured, predicted = zip(*points, strict=True)
            name = next(c["name"] for c in sweep if c["loss"] == key)
            ax.plot(ns, measured, "o-", color=colours[key], label=f"{name}")
            ax.plot(ns, predicted, "--", color=colours[key], alpha=0.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N samples per view (D = 8192)")
        ax.set_ylabel("forward + backward time per step, ms")
        ax.set_title(f"{device}, bfloat16: measured (solid), model (dashed)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / "gpu_check_time_vs_n.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    pairs = [c for c in comparisons if c["measured_ms"] and c["predicted_ms_measured_rates"]]
    if pairs:
        fig, ax = plt.subplots(figsize=(5.4, 5))
        for c in pairs:
            ax.plot(
                c["predicted_ms_measured_rates"], c["measured_ms"], "o", color=colours[c["loss"]]
            )
        low = min(min(c["measured_ms"], c["predicted_ms_measured_rates"]) for c in pairs)
        high = max(max(c["measured_ms"], c["predicted_ms_measured_rates"]) for c in pairs)
        ax.plot([low, high], [low, high], "k--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted ms (model, measured rates)")
        ax.set_ylabel("measured ms")
        ax.set_title(f"{device}: step time, every case and loss", fontsize=9)
        handles = [
            plt.Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                color=colours[k],
                label=next(c["name"] for c in pairs if c["loss"] == k),
            )
            for k in keys
            if any(c["loss"] == k for c in pairs)
        ]
        ax.legend(handles=handles, fontsize=7)
        fig.tight_layout()
        path = out_dir / "gpu_check_predicted_vs_measured.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    stages = ("tests", "sanitizer", "rates", "sweep", "model")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the target cases only, two baselines fewer, smaller budgets",
    )
    parser.add_argument("--skip", nargs="+", choices=stages, default=[], help="stages to skip")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"wall seconds for the whole run, hard (default {BUDGET_S}; --quick "
        f"{QUICK_BUDGET_S}; --cpu-smoke {SMOKE_BUDGET_S}); every stage that runs gets its share",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where the results go: name the folder that is kept on a machine that is handed "
        "back (default benchmarks/results/<gpu-name-slug>/; --cpu-smoke: a new temporary folder)",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="developers: run the stages on the CPU at tiny shapes (Triton interpreter)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages; see the module docstring for the exit status."""
    start = time.monotonic()
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels on the CPU
    else:
        reason = _no_gpu_reason()
        if reason is not None:
            print(f"gpu_check: {reason}; nothing to check (run it on a machine with a CUDA GPU)")
            return NO_GPU
    budget = args.budget or (
        SMOKE_BUDGET_S if args.cpu_smoke else QUICK_BUDGET_S if args.quick else BUDGET_S
    )

    import harness
    import torch

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.out_dir is not None:
        out_dir = args.out_dir
    elif args.cpu_smoke:  # never into the committed results
        out_dir = Path(tempfile.mkdtemp(prefix="gpu_check_smoke_"))
    else:
        out_dir = BENCHMARKS / "results" / harness.device_slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    errors_log = out_dir / "stage_errors.log"
    errors_log.unlink(missing_ok=True)
    guard = watchdog(start + budget + WATCHDOG_GRACE_S - time.monotonic(), out_dir)
    skip = set(args.skip) | ({"sanitizer"} if args.cpu_smoke else set())
    running = [name for name in SHARES if name not in skip]
    ends: dict[str, float] = {}
    stages: dict[str, Stage] = {}
    targets: list[Any] = []

    def payload() -> dict[str, Any]:
        def data(name: str) -> dict[str, Any]:
            return stages[name].data if name in stages else {}

        return {
            "quick": args.quick,
            "cpu_smoke": args.cpu_smoke,
            "budget": budget,
            "seconds": time.monotonic() - start,
            "environment": data("environment"),
            "stages": [
                {k: v for k, v in dataclasses.asdict(s).items() if k != "data"}
                for s in stages.values()
            ],
            "rates": data("rates"),
            "sweep": data("sweep"),
            "model": data("model"),
        }

    def write() -> None:
        current = payload()
        (out_dir / "gpu_check.json").write_text(json.dumps(current, indent=1, default=str) + "\n")
        (out_dir / "gpu_check.md").write_text(markdown(current))

    def stage(name: str, fn: Callable[[], dict[str, Any]], bounded: bool = False) -> Stage:
        """Run ``name`` in its slot (``bounded``: it cuts itself at the end of its slot)."""
        if name in skip:
            reason = "CPU smoke run" if args.cpu_smoke and name == "sanitizer" else "--skip"
            result = Stage(name, "skipped", detail=reason)
        elif ends[name] - time.monotonic() < 1:
            result = Stage(name, "skipped", detail="no time left in its slot")
            print(f"[gpu_check] {name}: skipped, no time left in its slot", flush=True)
        else:
            limit = None if bounded else ends[name] - time.monotonic()
            result = run_stage(name, fn, errors_log, limit)
        stages[name] = result
        write()
        return result

    def slot(name: str) -> float:
        return ends[name] - time.monotonic()

    stages["environment"] = run_stage(
        "environment", lambda: stage_environment(device, out_dir), errors_log, ENVIRONMENT_S
    )
    write()
    try:
        warm_imports()
    except Exception as error:  # the stage that needs the module reports it in its slot
        print(f"[gpu_check] an import failed before the stages: {type(error).__name__}: {error}")
    # the stages share what is left of the budget after the start, less the last write's
    shares = SMOKE_SHARES if args.cpu_smoke else SHARES
    ends.update(schedule(time.monotonic(), start + budget * (1 - RESERVE), running, shares))
    print(
        f"[gpu_check] budget {budget:.0f} s, into {out_dir}; the stages' slots end at "
        + ", ".join(f"{name} {ends[name] - start:.0f} s" for name in running),
        flush=True,
    )
    stage("tests", lambda: stage_tests(out_dir, slot("tests"), args.cpu_smoke), bounded=True)
    stage("sanitizer", lambda: stage_sanitizer(out_dir, slot("sanitizer")), bounded=True)
    points = sweep_points(args.quick, args.cpu_smoke)
    rates = stage("rates", lambda: stage_rates(device, points))
    if rates.data.get("rates"):
        (out_dir / "measured_rates.json").write_text(json.dumps(rates.data, indent=1) + "\n")
    min_run_time = 0.0 if args.cpu_smoke else 0.4
    sweep = stage(
        "sweep",
        lambda: stage_sweep(device, points, ends["sweep"], min_run_time, args.cpu_smoke),
        bounded=True,
    )

    def model_stage() -> dict[str, Any]:
        data = stage_model(rates.data.get("rates") or {}, sweep.data.get("rows") or [])
        targets.extend(data.pop("_targets", []))
        return data

    stage("model", model_stage)
    report = stage("report", lambda: {"plots": [p.name for p in plot(payload(), out_dir)]})
    guard.cancel()

    if stages["model"].data.get("targets_table"):
        print("\n" + stages["model"].data["targets_table"])
    written = report.data.get("plots") or []
    print(
        f"\n[gpu_check] wrote {out_dir}: gpu_check.json, gpu_check.md"
        + "".join(f", {name}" for name in written)
        + f" ({time.monotonic() - start:.0f} s of {budget:.0f})"
    )
    failed = [s.name for s in stages.values() if s.failed]
    missed = [t for t in targets if t.measured_passes is False]
    if failed:
        print(f"[gpu_check] FAILED stages: {', '.join(failed)}")
        return 1
    if missed and not args.cpu_smoke:
        print(f"[gpu_check] targets missed: {len(missed)}")
        return 2
    measured_any = any(t.measured is not None for t in targets)
    print("[gpu_check] all stages passed" + ("" if measured_any else " (no target measured)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the benchmark scripts share: the import path, the losses compared, a live-memory meter,
and the measurement of one (N, D, dtype) point (time with its spread, peak memory, the GEMM
rate of the same shape).

The scripts run from a fresh clone as ``python benchmarks/<name>.py``: importing this module puts
the repository root on ``sys.path`` so that ``reference`` (not an installed package) imports.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import reference  # noqa: E402
from smi_kernels import flops as cost_model  # noqa: E402

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Loss:
    """One loss as the benchmarks see it: a callable of two views (N, D) returning a scalar."""

    key: str
    name: str
    fn: LossFn
    gather_layer: bool  # the loss all-gathers the embeddings of every device
    global_batch_norm: bool  # the official recipe synchronises batch norm across devices
    communication: str  # what the loss itself exchanges between devices
    cuda_only: bool = False


def smi_fused_op() -> Callable[[list[Tensor], float, float], Tensor] | None:
    """``smi_triton`` (the custom op ``smi_kernels::smi_forward`` behind a stack), or None when
    the Triton path does not import here."""
    try:
        from smi_kernels._triton.op import smi_triton
    except Exception:
        return None
    if not hasattr(torch.ops.smi_kernels, "smi_forward"):
        return None
    return smi_triton


def _smi_reference(z_a: Tensor, z_b: Tensor) -> Tensor:
    return reference.smi_loss(z_a, z_b)


def _smi_torch(z_a: Tensor, z_b: Tensor) -> Tensor:
    from smi_kernels import smi_loss

    return smi_loss(z_a, z_b, backend="torch")


def _smi_triton(z_a: Tensor, z_b: Tensor) -> Tensor:
    from smi_kernels import smi_loss

    return smi_loss(z_a, z_b, backend="triton")


def _smi_fused_any_device(z_a: Tensor, z_b: Tensor) -> Tensor:
    # the custom op itself, for tracing on the meta device: smi_loss picks its backend from the
    # device, and smi_triton takes the op only under a dispatch mode (fvcore's jit tracer is not)
    z = torch.stack([z_a, z_b])
    need_grad = torch.is_grad_enabled() and (z_a.requires_grad or z_b.requires_grad)
    out = torch.ops.smi_kernels.smi_forward(z, 5e-3, 1e-4, need_grad)[0]  # (L, L_align, L_red)
    return out[0]


# Gather layer and global batch norm as in the official training code: Barlow Twins all-reduces
# its D x D cross-correlation and converts the model to SyncBatchNorm (the loss's own batch norm
# included); VICReg all-gathers the embeddings (FullGatherLayer) under SyncBatchNorm; SimCLR
# gathers the negatives from every replica and uses global batch norm. SMI: none of these.
BARLOW = Loss(
    "barlow", "Barlow Twins", reference.barlow_twins_loss, False, True, "all-reduce c (D x D)"
)
BARLOW_BATCH_NORM = Loss(
    "barlow_bn",
    "Barlow Twins + BN op",
    reference.barlow_twins_loss_batch_norm,
    False,
    True,
    "all-reduce c (D x D)",
)
VICREG = Loss("vicreg", "VICReg", reference.vicreg_loss, True, True, "all-gather z")
NTXENT = Loss("ntxent", "NT-Xent", reference.ntxent_loss, True, True, "all-gather z")
NTXENT_FOUR_PRODUCTS = Loss(
    "ntxent_4",
    "NT-Xent (4 products)",
    reference.ntxent_loss_four_products,
    True,
    True,
    "all-gather z",
)
SMI_REFERENCE = Loss("smi_reference", "SMI (reference)", _smi_reference, False, False, "none")
SMI_TORCH = Loss("smi_torch", "SMI PyTorch path", _smi_torch, False, False, "none")
SMI_FUSED = Loss("smi_fused", "SMI fused", _smi_triton, False, False, "none", cuda_only=True)
SMI_FUSED_OP = Loss("smi_fused", "SMI fused", _smi_fused_any_device, False, False, "none")


class LiveMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once, over the ops run under this mode.

    Every op output's storage is recorded with a weak reference; after each op the storages
    that died are dropped; ``peak`` is the largest total. The storages of ``exclude`` (the
    inputs) count zero, so views of them (``z.T``) add nothing. Autograd's saved
    tensors keep their storages alive, so the backward's working set is included when the
    backward runs under the mode. Not seen: scratch memory inside one kernel (a BLAS workspace)
    and allocator rounding. Works on the meta device (no memory is touched there).
    """

    def __init__(self, exclude: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        for tensor in exclude:
            ref = StorageWeakRef(tensor.untyped_storage())
            self._live[ref.cdata] = (ref, 0)
        self.current = 0
        self.peak = 0

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        known = self._live.get(ref.cdata)
        if known is not None and not known[0].expired():
            return
        nbytes = storage.nbytes()
        self._live[ref.cdata] = (ref, nbytes)
        self.current += nbytes

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, Tensor):
                self._track(item)
        self.peak = max(self.peak, self.current)
        self._sweep()
        return out


def measure_live_peak(fn: LossFn, z_a: Tensor, z_b: Tensor, backward: bool = True) -> int:
    """Peak bytes of storage created by one forward (+ backward) of ``fn``, inputs excluded."""
    with LiveMemory(exclude=(z_a, z_b)) as meter:
        loss = fn(z_a, z_b)
        if backward:
            loss.backward()
        del loss
    return meter.peak


# ------------------------------------------------------------------ measuring one point

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

SMI_REFERENCE_COMPILED_KEY = "smi_reference_compiled"


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name as a path-safe slug (``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def losses(device: torch.device) -> list[Loss]:
    """The losses timed on ``device``, fused first (CUDA only). The reference is handed to
    torch.compile when the compiled loss first runs (the call imports dynamo, seconds)."""
    compiled: list[Callable[..., Tensor]] = []

    def run_compiled(z_a: Tensor, z_b: Tensor) -> Tensor:
        if not compiled:
            compiled.append(torch.compile(reference.smi_loss))
        return compiled[0](z_a, z_b)

    smi_compiled = Loss(
        SMI_REFERENCE_COMPILED_KEY,
        "SMI reference + torch.compile",
        run_compiled,
        False,
        False,
        "none",
    )
    chosen = [
        SMI_FUSED,
        SMI_TORCH,
        SMI_REFERENCE,
        smi_compiled,
        BARLOW,
        VICREG,
        NTXENT,
    ]
    return [loss for loss in chosen if device.type == "cuda" or not loss.cuda_only]


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(error: BaseException) -> tuple[str, str]:
    status = "oom" if _is_oom(error) else "error"
    return status, f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def time_cuda_ms(step: Callable[[], None], mode: str = "median") -> float:
    """Milliseconds of ``step`` by ``triton.testing.do_bench``: the median (or with
    ``mode="min"`` the fastest) over CUDA-event timings, L2 flushed in between."""
    import triton.testing

    return float(triton.testing.do_bench(step, warmup=25, rep=100, return_mode=mode))


def time_cuda_quantiles_ms(step: Callable[[], None]) -> list[float]:
    """``[min, q1, median, q3, max]`` milliseconds of ``step`` by ``triton.testing.do_bench``."""
    import triton.testing

    quantiles = [0.0, 0.25, 0.5, 0.75, 1.0]
    return [
        float(t) for t in triton.testing.do_bench(step, warmup=25, rep=100, quantiles=quantiles)
    ]


def summary_ms(seconds: Sequence[float]) -> list[float]:
    """``[min, q1, median, q3, max]`` of per-step seconds, in milliseconds."""
    ms = sorted(1e3 * t for t in seconds)
    if len(ms) == 1:
        return ms * 5
    q1, median, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return [ms[0], q1, median, q3, ms[-1]]


def spread(quantiles: Sequence[float]) -> float:
    """The noise of one timing: interquartile range over median."""
    return (quantiles[3] - quantiles[1]) / quantiles[2] if quantiles[2] > 0 else math.inf


def time_cpu_interleaved(
    steps: dict[str, Callable[[], None]], min_run_time: float, min_rounds: int = 5
) -> dict[str, list[float]]:
    """Seconds of every step, run in alternation: each round runs each step once, until
    ``min_rounds`` rounds are done and every step has had ``min_run_time`` seconds. On a
    machine shared with other work, load that comes and goes then falls on every loss alike
    instead of on whichever was being timed at the time. A step that raises leaves the rotation
    (its error is stored under ``"<key>:error"`` as a one-item list holding the exception)."""
    times: dict[str, list[float]] = {key: [] for key in steps}
    active = dict(steps)
    rounds = 0
    while active:
        for key, step in list(active.items()):
            start = time.perf_counter()
            try:
                step()
            except Exception as error:
                times[f"{key}:error"] = [error]  # type: ignore[list-item]
                del active[key]
                continue
            times[key].append(time.perf_counter() - start)
        rounds += 1
        if rounds >= min_rounds and all(sum(times[key]) >= min_run_time for key in active):
            break
    return times


def peak_bytes(
    fn: LossFn, z_a: Tensor, z_b: Tensor, device: torch.device, compiled: bool
) -> int | None:
    """Peak bytes above the inputs of one step (None: not measurable here)."""
    z_a.grad = z_b.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn(z_a, z_b).backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        z_a.grad = z_b.grad = None
        return peak
    if compiled:
        return None
    peak = measure_live_peak(fn, z_a, z_b)
    z_a.grad = z_b.grad = None
    return peak


def model_macs(key: str, n: int, d: int) -> int | None:
    """Multiply-adds of one step by the cost model (fused and PyTorch-path rows only)."""
    if key == "smi_fused":
        return cost_model.fused_forward_macs(n, d) + cost_model.fused_backward_macs(n, d)
    if key == "smi_torch":
        # the PyTorch path multiplies the V(V+1)/2 blocks forward and G_sym Z backward
        return cost_model.naive_forward_macs(n, d) + cost_model.fused_backward_macs(n, d)
    return None


GEMM = "gemm"


def _loss_step(
    loss: Loss, n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> tuple[Callable[[], None], Tensor, Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    z_a, z_b = (
        torch.randn(n, d, generator=generator).to(device=device, dtype=dtype).requires_grad_()
        for _ in range(2)
    )

    def step() -> None:
        z_a.grad = z_b.grad = None
        loss.fn(z_a, z_b).backward()

    return step, z_a, z_b


def _gemm_step(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    # torch.mm on (P, D) @ (D, P), P = 2N: the shape of the SMI Gram
    a = torch.randn(2 * n, d, device=device, dtype=dtype)
    b = torch.randn(d, 2 * n, device=device, dtype=dtype)

    def step() -> None:
        torch.mm(a, b)

    return step


@dataclass
class _Timing:
    """One timing pass over the steps of a point: quantiles per loss, errors, the GEMM time."""

    quantiles: dict[str, list[float]]
    rounds: dict[str, int]
    errors: dict[str, BaseException]
    gemm_s: float | None

    @property
    def worst_spread(self) -> float:
        return max((spread(q) for q in self.quantiles.values()), default=0.0)


def _time_steps(
    steps: dict[str, Callable[[], None]], device: torch.device, min_run_time: float, rounds: int
) -> _Timing:
    timing = _Timing({}, {}, {}, None)
    if device.type == "cuda":
        for key, step in steps.items():
            try:
                if key == GEMM:
                    timing.gemm_s = time_cuda_ms(step, mode="min") * 1e-3
                else:
                    timing.quantiles[key] = time_cuda_quantiles_ms(step)
            except Exception as error:
                if key != GEMM:
                    timing.errors[key] = error
            torch.cuda.empty_cache()
        return timing
    times = time_cpu_interleaved(steps, min_run_time, rounds)
    for key, seconds in times.items():
        if key.endswith(":error"):
            timing.errors[key.removesuffix(":error")] = seconds[0]  # type: ignore[assignment]
        elif key == GEMM:
            timing.gemm_s = min(seconds) if seconds else None
        elif seconds:
            timing.quantiles[key] = summary_ms(seconds)
            timing.rounds[key] = len(seconds)
    return timing


def measure_point(
    chosen: Sequence[Loss],
    n: int,
    d: int,
    dtype: torch.dtype,
    device: torch.device,
    min_run_time: float,
    progress: Any = None,
    rounds: int = 5,
    max_spread: float = 0.10,
    retries: int | None = None,
) -> tuple[float | None, list[dict[str, Any]]]:
    """The GEMM rate (flop/s, fastest run) and one result row per loss at one (N, D, dtype).

    The point is timed again, up to ``retries`` times (default: 2 on the CPU, none on CUDA,
    whose event timings are steady), while any loss's spread (interquartile range over median)
    exceeds ``max_spread``; the least noisy pass is kept, and its rows say whether they were
    ``accepted``."""
    if retries is None:
        retries = 0 if device.type == "cuda" else 2
    rows: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], None]] = {}
    tensors: dict[str, tuple[Tensor, Tensor]] = {}
    for loss in chosen:
        row: dict[str, Any] = {"status": "ok", "error": None, "time_ms": None, "peak_bytes": None}
        rows[loss.key] = row
        try:
            step, z_a, z_b = _loss_step(loss, n, d, dtype, device)
            start = time.perf_counter()
            step()  # warm-up: compilation, autotuning, allocator
            _synchronize(device)
            row["first_call_s"] = time.perf_counter() - start
            steps[loss.key], tensors[loss.key] = step, (z_a, z_b)
        except Exception as error:  # one configuration failing must not end the sweep
            row["status"], row["error"] = _error(error)
    try:
        steps[GEMM] = _gemm_step(n, d, dtype, device)
    except Exception as error:
        if not _is_oom(error):
            raise

    best: _Timing | None = None
    gemm_s: float | None = None
    attempts = 0
    for attempt in range(1, retries + 2):
        attempts = attempt
        timing = _time_steps(steps, device, min_run_time, rounds)
        for key, error in timing.errors.items():
            if key in rows:
                rows[key]["status"], rows[key]["error"] = _error(error)
            steps.pop(key, None)
        if timing.gemm_s is not None:
            gemm_s = timing.gemm_s if gemm_s is None else min(gemm_s, timing.gemm_s)
        if best is None or timing.worst_spread < best.worst_spread:
            best = timing
        if best.worst_spread <= max_spread:
            break
    assert best is not None
    for key, quantiles in best.quantiles.items():
        if rows[key]["status"] != "ok":
            continue
        minimum, q1, median, q3, maximum = quantiles
        rows[key].update(
            time_ms=median,
            time_min_ms=minimum,
            time_q1_ms=q1,
            time_q3_ms=q3,
            time_max_ms=maximum,
            spread=spread(quantiles),
            accepted=spread(quantiles) <= max_spread,
            rounds=best.rounds.get(key),
            attempts=attempts,
        )
    if progress is not None:
        progress.update(len(chosen) // 2)

    gemm_rate = 2 * (2 * n) * (2 * n) * d / gemm_s if gemm_s else None
    for loss in chosen:
        row = rows[loss.key]
        if row["status"] == "ok" and loss.key in tensors:
            try:
                compiled = loss.key == SMI_REFERENCE_COMPILED_KEY
                row["peak_bytes"] = peak_bytes(loss.fn, *tensors[loss.key], device, compiled)
            except Exception as error:
                row["status"], row["error"] = _error(error)
        macs = model_macs(loss.key, n, d)
        if macs is not None and row["time_ms"] is not None and gemm_rate:
            row["achieved_flops"] = 2 * macs / (row["time_ms"] * 1e-3)
            row["roofline_pct"] = 100 * row["achieved_flops"] / gemm_rate
    if progress is not None:
        progress.update(len(chosen) - len(chosen) // 2)
    del steps, tensors
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return gemm_rate, [rows[loss.key] for loss in chosen]

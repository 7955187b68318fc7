"""Forward + backward time and peak memory of SMI (fused, PyTorch path, reference) and baselines.

    python benchmarks/speed.py                 # full sweep on CUDA, reduced sweep on the CPU
    python benchmarks/speed.py --quick         # the reduced sweep anywhere
    python benchmarks/speed.py --n 64 128 --d 256 --dtypes float32 --out-dir /tmp/speed

One step is ``loss_fn(z_a, z_b).backward()`` on two views (N, D) that require grad.

Time, the median over many steps, with its spread (min, quartiles, max):
    CUDA  ``triton.testing.do_bench`` (CUDA events, L2 flushed between steps, grads reset)
    CPU   wall clock of single steps, the losses of one (N, D) run in alternation, round after
          round (at least --rounds rounds and --min-run-time seconds each): on a machine
          shared with other work, load that comes and goes falls on every loss alike (timing
          one loss after another, as ``torch.utils.benchmark`` blocks would, let it land on
          one loss)

Noise: the spread of a timing is its interquartile range over its median. A point where any
loss spreads more than --max-spread (default 10%) is measured again, up to --retries times; a
point still too noisy is marked rejected. A run with a rejected point, or started on a busy
machine (1-minute load average above --max-load a core), is rejected as a whole: it writes to
``<out-dir>/rejected/`` and exits with status 1, so that a noisy run never replaces the results
in ``<out-dir>``. A low spread does not prove a quiet machine (steady load slows every step
alike), hence the load check. The page and the plots name the machine (CPU model,
cores, torch threads, torch version), the load average before and after, and the spread.

Peak memory, bytes above what was allocated before the step (the inputs do not count; the
gradients of the inputs do):
    CUDA  ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
          bytes allocated before the step (the caching allocator's own view)
    CPU   the storage of every tensor alive at once, followed op by op under a dispatch mode
          (``harness.LiveMemory``): autograd's saved tensors and every temporary between ops
          are seen, scratch memory inside one kernel is not. Compiled code allocates its
          buffers outside the dispatcher, so the torch.compile row has no CPU memory figure.

Sweep: every (N, D) of ``--n`` x ``--d`` with ``--grid full``; with ``--grid cross`` only the N
sweep at ``--fixed-d`` and the D sweep at ``--fixed-n`` (what the plots draw). Out of memory is
recorded as "oom" and the sweep goes on.

GEMM roofline: for every (dtype, N, D) the rate of ``torch.mm`` on (P, D) @ (D, P), P = 2N, is
measured in the same run (its fastest run); the SMI fused and PyTorch-path rows report their
achieved rate (the cost model's multiply-adds, two flops each, over the measured time) as a
percentage of it.

Writes ``<out-dir>/speed.json``, ``speed.md`` and ``time_vs_n.png``, ``time_vs_d.png``,
``memory_vs_n.png``; ``out-dir`` defaults to ``benchmarks/results/<device>/``. ``speed.md``
ends with a one-line summary at (--fixed-n, --fixed-d), the line the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # puts the repository root on sys.path (for `reference`)
import torch
from harness import DTYPES, device_slug, losses, measure_point

FULL_N = (256, 512, 1024, 2048, 4096)
FULL_D = (2048, 8192, 16384)
FULL_DTYPES = ("float32", "bfloat16")
FULL_FIXED = (1024, 8192)  # (N of the D sweep, D of the N sweep)
QUICK_N = (128, 256, 512, 1024, 2048)
QUICK_D = (512, 1024, 2048, 4096)
QUICK_DTYPES = ("float32",)
QUICK_FIXED = (512, 2048)


def sweep_points(
    ns: Sequence[int], ds: Sequence[int], grid: str, fixed_n: int, fixed_d: int
) -> list[tuple[int, int]]:
    """The (N, D) points: the full grid, or the N sweep at fixed D and the D sweep at fixed N."""
    if grid == "full":
        points = [(n, d) for n in ns for d in ds]
    else:
        points = [(n, fixed_d) for n in ns] + [(fixed_n, d) for d in ds]
    return sorted(set(points), key=lambda point: (point[0] * point[1], point))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: CPU model and cores (and the GPU), torch, Python, the OS."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_line(payload: dict[str, Any]) -> str:
    """One line naming the machine, for the page and the plots."""
    m = payload["machine"]
    text = f"{m['cpu']}, {m['cores_usable']} cores, {m['torch_threads']} torch threads"
    if "gpu" in m:
        text = f"{m['gpu']}; host {text}"
    return f"{text}; torch {m['torch']}, Python {m['python']}, {m['os']}"


def noise_line(payload: dict[str, Any]) -> str:
    """One line on the noise: the spread limit, the worst spread, the load average."""
    rows = [row for row in payload["results"] if row.get("spread") is not None]
    worst = max((row["spread"] for row in rows), default=0.0)
    rejected = sum(not row["accepted"] for row in rows)
    text = (
        f"spread (IQR / median) limit {100 * payload['max_spread']:.0f}%, worst "
        f"{100 * worst:.1f}%, {rejected} of {len(rows)} timings rejected"
    )
    before, after = payload.get("load_before"), payload.get("load_after")
    if before and after:
        text += f"; load average (1 min) {before[0]:.2f} before, {after[0]:.2f} after"
    return text


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The whole sweep: the JSON payload."""
    from tqdm import tqdm

    points = sweep_points(args.n, args.d, args.grid, args.fixed_n, args.fixed_d)
    chosen = [loss for loss in losses(device) if not args.losses or loss.key in args.losses]
    total = len(args.dtypes) * len(points) * len(chosen)
    results: list[dict[str, Any]] = []
    roofline: list[dict[str, Any]] = []
    load_before = _load_average()
    with tqdm(total=total, desc="speed", unit="run") as progress:
        for dtype_name in args.dtypes:
            for n, d in points:
                progress.set_postfix_str(f"{dtype_name} N={n} D={d}")
                rate, rows = measure_point(
                    chosen,
                    n,
                    d,
                    DTYPES[dtype_name],
                    device,
                    args.min_run_time,
                    progress,
                    rounds=args.rounds,
                    max_spread=args.max_spread,
                    retries=args.retries,
                )
                roofline.append({"dtype": dtype_name, "n": n, "d": d, "gemm_flops": rate})
                for loss, row in zip(chosen, rows, strict=True):
                    results.append(
                        {"loss": loss.key, "name": loss.name, "dtype": dtype_name, "n": n, "d": d}
                        | row
                    )
    _add_speedups(results)
    rejections = []
    noisy = sum(row.get("accepted") is False for row in results)
    if noisy:
        rejections.append(
            f"{noisy} timings spread more than {100 * args.max_spread:.0f}% (IQR / median) "
            f"after {args.retries} retries"
        )
    cores = machine(device)["cores_usable"] or 1
    if load_before and load_before[0] > args.max_load * cores:
        rejections.append(
            f"the machine was busy before the run: load average {load_before[0]:.2f} on "
            f"{cores} cores (limit {args.max_load} a core; wait for it to fall, or raise "
            "--max-load)"
        )
    return {
        "device": device_slug(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
        ),
        "machine": machine(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "step": "loss_fn(z_a, z_b).backward(), two views (N, D) requiring grad",
        "timer": (
            "triton.testing.do_bench quantiles (CUDA events)"
            if device.type == "cuda"
            else "per-step wall-clock times, the losses of one (N, D) run in alternation "
            f"(>= {args.rounds} rounds, >= {args.min_run_time} s a loss)"
        ),
        "memory": (
            "torch.cuda.max_memory_allocated above the bytes allocated before the step"
            if device.type == "cuda"
            else "peak storage of tensors alive at once, op by op (harness.LiveMemory); "
            "inputs excluded; not available for torch.compile"
        ),
        "max_spread": args.max_spread,
        "retries": args.retries,
        "max_load": args.max_load,
        "load_before": load_before,
        "load_after": _load_average(),
        "accepted": not rejections,
        "rejected_because": rejections,
        "grid": args.grid,
        "fixed_n": args.fixed_n,
        "fixed_d": args.fixed_d,
        "roofline": roofline,
        "results": results,
    }


def _add_speedups(results: list[dict[str, Any]]) -> None:
    reference_ms = {
        (row["dtype"], row["n"], row["d"]): row["time_ms"]
        for row in results
        if row["loss"] == "smi_reference" and row["time_ms"]
    }
    for row in results:
        base = reference_ms.get((row["dtype"], row["n"], row["d"]))
        row["speedup_vs_reference"] = base / row["time_ms"] if base and row["time_ms"] else None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def summary(payload: dict[str, Any]) -> str | None:
    """The line the README quotes: SMI's fast path against the reference at (fixed N, fixed D)
    of the first dtype, medians with their interquartile ranges; None when a row is missing
    or was rejected."""
    dtype = sorted({row["dtype"] for row in payload["results"]})[0]
    at = {
        row["loss"]: row
        for row in payload["results"]
        if row["dtype"] == dtype
        and (row["n"], row["d"]) == (payload["fixed_n"], payload["fixed_d"])
        and row["status"] == "ok"
        and row.get("accepted")
    }
    fast = [key for key in ("smi_fused", "smi_torch") if key in at]
    if "smi_reference" not in at or not fast:
        return None

    def timing(row: dict[str, Any]) -> str:
        return (
            f"{row['name']} {row['time_ms']:.1f} ms "
            f"(IQR {row['time_q1_ms']:.1f}-{row['time_q3_ms']:.1f})"
        )

    parts = [f"{timing(at[key])}, {at[key]['speedup_vs_reference']:.2f}x" for key in fast]
    return (
        f"Summary: {payload['device_name'] or payload['device']}, {dtype}, "
        f"N = {payload['fixed_n']}, D = {payload['fixed_d']}, forward + backward: "
        + "; ".join(parts)
        + f"; {timing(at['smi_reference'])}."
    )


def markdown(payload: dict[str, Any]) -> str:
    """``speed.md``: the machine and the noise, one table per dtype (a row per (N, D, loss)),
    and the summary line."""
    verdict = (
        "accepted: every timing within the spread limit, the machine quiet before the run"
        if payload["accepted"]
        else "REJECTED: " + "; ".join(payload["rejected_because"])
    )
    lines = [
        f"# Forward + backward: {payload['device_name'] or payload['device']}",
        "",
        f"Machine: {machine_line(payload)}.",
        "",
        f"Noise: {noise_line(payload)}. Run {verdict}.",
        "",
        f"Timer: {payload['timer']}; time is the median, IQR its interquartile range, spread "
        f"the IQR over the median. Memory: {payload['memory']}. Speed-up: SMI reference time / "
        "this time. Roofline: the cost model's multiply-adds (2 flops each) over the time, as a "
        "share of the measured torch.mm rate (fastest run) on (2N, D) @ (D, 2N) of the same "
        "dtype. float32 matmul precision: "
        f"{payload['float32_matmul_precision']}.",
        "",
    ]
    rates = {(r["dtype"], r["n"], r["d"]): r["gemm_flops"] for r in payload["roofline"]}
    for dtype in sorted({row["dtype"] for row in payload["results"]}):
        lines += [
            f"## {dtype}",
            "",
            "| N | D | loss | time ms | IQR ms | spread % | peak MiB | x vs reference "
            "| GEMM GFLOP/s | % roofline |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in payload["results"]:
            if row["dtype"] != dtype:
                continue
            if row["status"] != "ok":
                time_cell, iqr, spread_cell = row["status"].upper(), "-", "-"
            else:
                time_cell = _cell(row["time_ms"], ".3f")
                if row.get("accepted") is False:
                    time_cell += " (rejected)"
                iqr = (
                    f"{row['time_q1_ms']:.3f}-{row['time_q3_ms']:.3f}"
                    if row.get("time_q1_ms") is not None
                    else "-"
                )
                spread_cell = _cell(
                    100 * row["spread"] if row.get("spread") is not None else None, ".1f"
                )
            rate = rates.get((dtype, row["n"], row["d"])) if "roofline_pct" in row else None
            peak = row["peak_bytes"] / 2**20 if row["peak_bytes"] is not None else None
            lines.append(
                f"| {row['n']} | {row['d']} | {row['name']} | {time_cell} | {iqr} "
                f"| {spread_cell} | {_cell(peak, ',.1f')} "
                f"| {_cell(row['speedup_vs_reference'], '.2f')} "
                f"| {_cell(rate / 1e9 if rate else None, ',.0f')} "
                f"| {_cell(row.get('roofline_pct'), '.1f')} |"
            )
        lines.append("")
    line = summary(payload)
    if line is not None:
        lines += [line, ""]
    return "\n".join(lines)


def plot(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """Time vs N (at fixed D), time vs D (at fixed N), peak memory vs N; one line per loss.
    Times carry their interquartile range as error bars; a rejected timing is an open marker.
    The machine and the noise are written under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [row for row in payload["results"] if row["status"] == "ok"]
    dtypes = sorted({row["dtype"] for row in payload["results"]})
    names = {row["loss"]: row["name"] for row in payload["results"]}
    colours = {key: f"C{index}" for index, key in enumerate(names)}  # one colour a loss
    figures = [
        ("time_vs_n.png", "n", "d", payload["fixed_d"], "time_ms", "forward + backward, ms"),
        ("time_vs_d.png", "d", "n", payload["fixed_n"], "time_ms", "forward + backward, ms"),
        ("memory_vs_n.png", "n", "d", payload["fixed_d"], "peak_bytes", "peak memory, MiB"),
    ]
    caption = f"{machine_line(payload)}\n{noise_line(payload)}"
    written = []
    for filename, x_key, fixed_key, fixed_value, y_key, y_label in figures:
        fig, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 5.2), squeeze=False)
        for ax, dtype in zip(axes[0], dtypes, strict=True):
            for key, name in names.items():
                chosen = sorted(
                    (
                        row
                        for row in results
                        if row["loss"] == key
                        and row["dtype"] == dtype
                        and row[fixed_key] == fixed_value
                        and row[y_key] is not None
                    ),
                    key=lambda row: row[x_key],
                )
                if not chosen:
                    continue
                xs = [row[x_key] for row in chosen]
                if y_key == "peak_bytes":
                    ys = [row[y_key] / 2**20 for row in chosen]
                    ax.plot(xs, ys, marker="o", label=name, color=colours[key])
                    continue
                ys = [row["time_ms"] for row in chosen]
                low = [row["time_ms"] - row.get("time_q1_ms", row["time_ms"]) for row in chosen]
                high = [row.get("time_q3_ms", row["time_ms"]) - row["time_ms"] for row in chosen]
                ax.errorbar(
                    xs, ys, yerr=[low, high], marker="o", capsize=3, label=name, color=colours[key]
                )
                rejected = [(x, y) for x, y, row in zip(xs, ys, chosen, strict=True)
                            if row.get("accepted") is False]  # fmt: skip
                if rejected:
                    label = None if "rejected" in ax.get_legend_handles_labels()[1] else "rejected"
                    ax.scatter(*zip(*rejected, strict=True), s=90, facecolors="none",
                               edgecolors="red", zorder=5, label=label)  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"{x_key.upper()} ({fixed_key.upper()} = {fixed_value})")
            ax.set_ylabel(y_label + (", median and IQR" if y_key == "time_ms" else ""))
            ax.set_title(f"{payload['device']}, {dtype}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
        fig.text(0.01, 0.01, caption, fontsize=7, va="bottom", ha="left", wrap=True)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        path = out_dir / filename
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def parse_args(argv: Sequence[str] | None, device: torch.device) -> argparse.Namespace:
    """Arguments, with the sweep's defaults chosen by the device (reduced on the CPU)."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        allow_abbrev=False,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--quick", action="store_true", help="the reduced sweep (CPU default)")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="samples per view")
    parser.add_argument("--d", type=int, nargs="+", default=None, help="features")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=None)
    parser.add_argument("--grid", choices=("full", "cross"), default=None)
    parser.add_argument("--fixed-n", type=int, default=None, help="N of the D sweep and its plot")
    parser.add_argument("--fixed-d", type=int, default=None, help="D of the N sweep and its plot")
    parser.add_argument("--losses", nargs="+", default=None, help="keys to run (default: all)")
    parser.add_argument(
        "--min-run-time", type=float, default=0.4, help="CPU: seconds of steps per loss and pass"
    )
    parser.add_argument("--rounds", type=int, default=10, help="CPU: at least this many steps")
    parser.add_argument(
        "--max-spread",
        type=float,
        default=0.10,
        help="largest accepted interquartile range over median of a timing",
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="passes again over a point that spreads too much"
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=0.5,
        help="largest 1-minute load average a usable core before the run",
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    quick = args.quick or device.type != "cuda"
    ns = QUICK_N if quick else FULL_N
    ds = QUICK_D if quick else FULL_D
    fixed_n, fixed_d = QUICK_FIXED if quick else FULL_FIXED
    args.n = sorted(args.n or ns)
    args.d = sorted(args.d or ds)
    args.dtypes = args.dtypes or list(QUICK_DTYPES if quick else FULL_DTYPES)
    args.grid = args.grid or ("cross" if quick else "full")
    args.fixed_n = args.fixed_n or (fixed_n if fixed_n in args.n else args.n[len(args.n) // 2])
    args.fixed_d = args.fixed_d or (fixed_d if fixed_d in args.d else args.d[len(args.d) // 2])
    if min(args.n) < 2 or min(args.d) < 2:
        parser.error(f"need N >= 2 and D >= 2, got --n {args.n} --d {args.d}")
    if args.rounds < 2 or args.retries < 0 or args.max_spread <= 0:
        parser.error("need --rounds >= 2, --retries >= 0 and --max-spread > 0")
    if args.out_dir is None:
        args.out_dir = harness.REPO_ROOT / "benchmarks" / "results" / device_slug(device)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep, write JSON, markdown and plots, print the markdown. A rejected run writes
    to ``<out-dir>/rejected/`` and returns 1."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--device", default=None)
    known, _ = pre.parse_known_args(argv)
    device = torch.device(known.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = parse_args(argv, device)

    start = time.perf_counter()
    payload = run(args, device)
    payload["seconds"] = time.perf_counter() - start
    out_dir = args.out_dir if payload["accepted"] else args.out_dir / "rejected"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(payload)
    (out_dir / "speed.md").write_text(table + "\n")
    written = plot(payload, out_dir)
    print(table)
    print(f"wrote {out_dir / 'speed.json'}, speed.md, " + ", ".join(p.name for p in written))
    print(f"({payload['seconds']:.0f} s)")
    if not payload["accepted"]:
        print(
            f"run rejected: {'; '.join(payload['rejected_because'])}. Its files are in "
            f"{out_dir}, not in {args.out_dir}. Run again on a quieter machine.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

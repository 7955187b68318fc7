"""The paper's Table 2, reproduced: GFLOPs of each loss as fvcore counts them, on the CPU.

    python benchmarks/flops.py [--n 2048] [--d 8192] [--devices 8] [--json PATH]

Setting (the paper's section 3.2): two views of shape (N, D) = (2048, 8192). fvcore's
``FlopCountAnalysis`` traces each loss with ``torch.jit.trace`` and counts one multiply-add of
a matrix product as one flop; element-wise work is not counted. The views are tensors on the
meta device: the graph is traced with its real shapes but no arithmetic runs, so the whole table
takes seconds. ``torch.utils.flop_counter.FlopCounterMode`` (two flops per multiply-add, halved
here) counts the same graphs a second, independent way.

Readings:
    global       the loss on the whole batch of N, one process
    per device   the batch split over --devices devices of N / devices each. Barlow Twins
                 all-reduces its cross-correlation, VICReg and NT-Xent gather the embeddings of
                 every device, so their cost stays the global one; SMI computes its loss locally
                 on each device with no communication: devices x (the count at N / devices).

SMI fused: fvcore cannot see inside a Triton kernel; the custom op ``smi_kernels::smi_forward``
appears in the traced graph as one node and is counted by the package's cost-model handle
(``smi_kernels.flops.fvcore_handles``). FlopCounterMode uses the op's registered FLOP formula.

Peak memory: storage alive at once during forward + backward, measured by following every op's
output storages on the meta device (``harness.LiveMemory``); the inputs are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # puts the repository root on sys.path (for `reference`)
import torch
import torch.fx.experimental._config as fx_config
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import reference
from smi_kernels import flops as cost_model

# Table 2 of the paper (GFLOPs as printed, truncated to two decimals). The only typed numbers.
PAPER_GFLOPS = {"barlow": 137.43, "vicreg": 274.87, "ntxent": 103.07, "smi_reference": 12.88}

GIGA = 10**9
MATMUL_OPS = ("aten.mm.default", "aten.bmm.default", "aten.addmm.default")


class _Module(torch.nn.Module):
    """A loss as a module of two views (what fvcore's tracer wants)."""

    def __init__(self, fn: harness.LossFn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return self.fn(z_a, z_b)


def _views(n: int, d: int, device: str = "meta", requires_grad: bool = False) -> tuple[Tensor, ...]:
    return tuple(torch.empty(n, d, device=device, requires_grad=requires_grad) for _ in range(2))


def _meta_context():
    # boolean-mask indexing (the reference's off-diagonal selection) calls nonzero, whose output
    # size depends on the data; on meta tensors it is allowed to assume every element is selected
    # (N^2 instead of N^2 - N elements in an element-wise step: no matrix product changes)
    return fx_config.patch(meta_nonzero_assume_all_nonzero=True)


def fvcore_count(fn: harness.LossFn, n: int, d: int, device: str = "meta") -> dict[str, int]:
    """fvcore's count of one forward of ``fn`` on two views (n, d), by operator (MACs)."""
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(_Module(fn), _views(n, d, device))
    analysis.set_op_handle(**cost_model.fvcore_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with _meta_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracer warnings about python values in the graph
        return dict(analysis.by_operator())


def flop_counter_macs(fn: harness.LossFn, n: int, d: int, device: str = "meta") -> int:
    """``FlopCounterMode``'s count of one forward (two flops per multiply-add), halved."""
    with _meta_context(), FlopCounterMode(display=False) as counter:
        fn(*_views(n, d, device))
    return counter.get_total_flops() // 2


class _MatmulShapes(TorchDispatchMode):
    """Records the output shape of every matrix product the forward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        if str(func) in MATMUL_OPS:
            self.shapes.append(tuple(out.shape))
        return out


def matrices(fn: harness.LossFn, n: int, d: int) -> dict[str, int]:
    """Off-diagonal entries and float32 bytes of the matrices the forward's products produce."""
    with _meta_context(), _MatmulShapes() as recorder:
        fn(*_views(n, d))
    entries = 0
    elements = 0
    for shape in recorder.shapes:
        rows, cols = shape[-2:]
        batch = 1
        for size in shape[:-2]:
            batch *= size
        entries += batch * (rows * cols - min(rows, cols))
        elements += batch * rows * cols
    return {"off_diagonal_entries": entries, "matrix_bytes": 4 * elements}


def fused_matrices(n: int, d: int) -> dict[str, int]:
    """The fused op never writes S: its entries are the strict upper triangle, P (P - 1) / 2,
    computed tile by tile in registers. What it stores of size P x P is G (the gradient of the
    loss in S, packed upper tiles, only when a gradient is needed): the bytes of that segment of
    the op's workspace at float32, on an H100's plan (sm_90, 132 SMs; float32 at the default
    matmul precision)."""
    from smi_kernels._triton.plan import make_plan

    p = 2 * n
    plan = make_plan("sm90", 132, 2, n, d, torch.float32, "highest", True)
    return {"off_diagonal_entries": p * (p - 1) // 2, "matrix_bytes": plan.segments["g"].nbytes}


def peak_memory(fn: harness.LossFn, n: int, d: int) -> int:
    """Peak live bytes of forward + backward on meta views (n, d), inputs excluded."""
    z_a, z_b = _views(n, d, requires_grad=True)
    with _meta_context():
        return harness.measure_live_peak(fn, z_a, z_b)


def _barlow_with_batch_norm_op(z_a: Tensor, z_b: Tensor, lambda_param: float = 5.1e-3) -> Tensor:
    """Barlow Twins with the standardisation as ``aten::batch_norm`` (the official
    ``nn.BatchNorm1d(D, affine=False)``), to show what fvcore adds for that op."""

    def bn(z: Tensor) -> Tensor:
        return F.batch_norm(z, None, None, training=True, eps=reference.barlow.BATCH_NORM_EPS)

    c = bn(z_a).T @ bn(z_b) / z_a.shape[0]
    on_diag = (torch.diagonal(c) - 1.0).pow(2).sum()
    return on_diag + lambda_param * reference.barlow.off_diagonal(c).pow(2).sum()


def _truncate(macs: int) -> float:
    """GFLOPs truncated to two decimals, as the paper prints them."""
    return (macs // 10**7) / 100


def build_rows(n: int, d: int, devices: int) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per loss, and notes on what could not be counted."""
    if n % devices:
        raise ValueError(f"--n {n} must be a multiple of --devices {devices}")
    local_n = n // devices
    notes: list[str] = []
    losses = [harness.BARLOW, harness.VICREG, harness.NTXENT, harness.SMI_REFERENCE]
    fused = harness.smi_fused_op()
    if fused is not None:
        losses.append(harness.SMI_FUSED_OP)
    else:
        notes.append(
            "SMI fused: the custom op torch.ops.smi_kernels.smi_forward is not registered here "
            "(smi_kernels._triton.op does not import), so its row is left out."
        )
    rows = []
    for loss in losses:
        by_op = fvcore_count(loss.fn, n, d)
        macs = sum(by_op.values())
        local = not (loss.gather_layer or loss.global_batch_norm)
        per_device = devices * sum(fvcore_count(loss.fn, local_n, d).values()) if local else macs
        paper = PAPER_GFLOPS.get(loss.key)
        shapes = fused_matrices(n, d) if loss is harness.SMI_FUSED_OP else matrices(loss.fn, n, d)
        rows.append(
            {
                "key": loss.key,
                "loss": loss.name,
                "counted_by": (
                    "fvcore: cost-model handle of smi_kernels::smi_forward"
                    if loss is harness.SMI_FUSED_OP
                    else "fvcore: aten matmul handles"
                ),
                "fvcore_by_operator": by_op,
                "fvcore_macs": macs,
                "fvcore_gflops": macs / GIGA,
                "flop_counter_macs": flop_counter_macs(loss.fn, n, d),
                "per_device_reading": "local, no communication" if local else "global",
                "per_device_macs": per_device,
                "per_device_gflops": per_device / GIGA,
                "paper_gflops": paper,
                "agrees_with_paper": None if paper is None else _truncate(per_device) == paper,
                **shapes,
                "peak_bytes": peak_memory(loss.fn, n, d),
                "gather_layer": loss.gather_layer,
                "global_batch_norm": loss.global_batch_norm,
                "communication": loss.communication,
            }
        )
    return rows, notes


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def format_table(rows: Sequence[dict[str, Any]], n: int, d: int, devices: int) -> str:
    """The rows as a text table (tabulate)."""
    from tabulate import tabulate

    local_n = n // devices
    headers = [
        "loss",
        f"fvcore GFLOPs\n(2 x {n} x {d})",
        "FlopCounter\nGFLOPs",
        f"per device\n{devices} x {local_n}",
        "paper",
        "agree\n(trunc. 2dp)",
        "off-diag\nentries",
        "matrix MiB\n(fp32)",
        "peak MiB\nfwd+bwd",
        "gather\nlayer",
        "global\nBN",
        "loss\ncommunication",
    ]
    body = []
    for row in rows:
        agree = row["agrees_with_paper"]
        body.append(
            [
                row["loss"] + (" *" if row["key"] == "smi_fused" else ""),
                f"{row['fvcore_gflops']:.4f}",
                f"{row['flop_counter_macs'] / GIGA:.4f}",
                f"{row['per_device_gflops']:.4f}",
                "-" if row["paper_gflops"] is None else f"{row['paper_gflops']:.2f}",
                "-" if agree is None else _yes_no(agree),
                f"{row['off_diagonal_entries']:,}",
                f"{row['matrix_bytes'] / 2**20:,.1f}",
                f"{row['peak_bytes'] / 2**20:,.1f}",
                _yes_no(row["gather_layer"]),
                _yes_no(row["global_batch_norm"]),
                row["communication"],
            ]
        )
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def explain(rows: Sequence[dict[str, Any]], n: int, d: int, devices: int) -> str:
    """The paragraph under the table, its numbers taken from the rows."""
    by_key = {row["key"]: row for row in rows}
    local_n = n // devices
    smi = by_key["smi_reference"]
    ntxent = by_key["ntxent"]
    text = (
        f"SMI: the paper's {PAPER_GFLOPS['smi_reference']:.2f} is the per-device reading: the "
        f"global batch of {n} split over {devices} devices of {local_n}, each computing its loss "
        f"locally with no gather layer, {devices} x 3 x {local_n}^2 x {d} = "
        f"{smi['per_device_gflops']:.4f} GFLOPs. At the full batch of {n} the naive SMI graph "
        f"(AB, AA, BB blocks, 3 N^2 D) costs {smi['fvcore_gflops']:.4f}, as NT-Xent "
        f"({ntxent['fvcore_gflops']:.4f}) does."
    )
    if "smi_fused" in by_key:
        fused = by_key["smi_fused"]
        text += (
            f" The fused kernel's forward computes only the upper triangle of S = Z Z^T "
            f"(P^2 D / 2 with P = 2N): {fused['fvcore_gflops']:.4f} at the full batch and "
            f"{fused['per_device_gflops']:.4f} in the per-device reading."
        )
    else:
        text += (
            f" The fused kernel's forward would cost "
            f"{cost_model.fused_forward_macs(n, d) / GIGA:.4f} (cost model; op not registered)."
        )
    return text


def explain_counting(n: int, d: int) -> str:
    """What fvcore does and does not count, shown with Barlow's batch norm."""
    with_op = sum(fvcore_count(_barlow_with_batch_norm_op, n, d).values())
    barlow = sum(fvcore_count(reference.barlow_twins_loss, n, d).values())
    return (
        "Counting: fvcore counts matrix products (one multiply-add = one flop) and a few named "
        "ops; element-wise work is free. Our Barlow Twins writes the batch standardisation out "
        "element-wise; the official nn.BatchNorm1d would appear as aten::batch_norm, which "
        f"fvcore counts too: {with_op / GIGA:.4f} instead of {barlow / GIGA:.4f} GFLOPs. The "
        "paper's 137.43 is the cross-correlation product alone."
    )


# --- per-rank cost of the distributed modes (smi_kernels.flops.distributed_macs) -------------

DISTRIBUTED_MODES = (
    ("local", "False", "none"),
    ("gather", "True", "all-gather of z; all-reduce of dz (P_global x D) in the backward"),
    (
        "sharded",
        "'sharded'",
        "all-gather of zh; three tiny collectives (shapes, shares, incoming gradients)",
    ),
)


def distributed_rows(n: int, d: int, devices: int, views: int = 2) -> list[dict[str, Any]]:
    """Per-rank multiply-adds of SMI's three distributed modes, the global batch of ``n`` per
    view split over ``devices`` ranks (cost model: fused counts for local and gather, the band
    P_local x P_global for sharded)."""
    local_n = n // devices
    gather_total = sum(cost_model.distributed_macs(local_n, d, devices, views, mode="gather"))
    rows = []
    for mode, flag, communication in DISTRIBUTED_MODES:
        forward, backward = cost_model.distributed_macs(local_n, d, devices, views, mode=mode)
        rows.append(
            {
                "mode": mode,
                "gather_distributed": flag,
                "batch": "local" if mode == "local" else "global",
                "forward_macs": forward,
                "backward_macs": backward,
                "total_macs": forward + backward,
                "gather_over_mode": gather_total / (forward + backward),
                "communication": communication,
            }
        )
    return rows


def format_distributed_table(rows: Sequence[dict[str, Any]], n: int, d: int, devices: int) -> str:
    """The distributed rows as a text table, with a line on what it shows."""
    from tabulate import tabulate

    body = [
        [
            row["mode"],
            row["gather_distributed"],
            row["batch"],
            f"{row['forward_macs'] / GIGA:.4f}",
            f"{row['backward_macs'] / GIGA:.4f}",
            f"{row['total_macs'] / GIGA:.4f}",
            f"{row['gather_over_mode']:.2f}",
            row["communication"],
        ]
        for row in rows
    ]
    headers = [
        "mode",
        "gather_distributed",
        "loss of",
        "forward\nGMACs/rank",
        "backward\nGMACs/rank",
        "fwd+bwd\nGMACs/rank",
        "gather /\nmode",
        "communication per step",
    ]
    table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    return (
        f"Per-rank multiply-adds of the distributed modes: {n} samples per view over {devices} "
        f"ranks of {n // devices}, D = {d}, two views (smi_kernels.flops.distributed_macs)\n\n"
        f"{table}\n\n"
        "gather and sharded compute the same global-batch loss and gradients; sharded computes "
        "only each rank's rows of S against all columns (forward 1/W of the full square S, 2/W "
        "of gather's upper triangle; backward exactly 1/W of gather's G_sym Z)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="samples per view (global batch)")
    parser.add_argument("--d", type=int, default=8192, help="features (projector width)")
    parser.add_argument("--devices", type=int, default=8, help="devices of the per-device reading")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.n < 2 or args.d < 2 or args.devices < 1:
        parser.error(
            f"need --n >= 2, --d >= 2, --devices >= 1; got {args.n}, {args.d}, {args.devices}"
        )
    if args.n % args.devices or args.n // args.devices < 2:
        parser.error(f"--n {args.n} must split into --devices {args.devices} batches of >= 2")

    start = time.perf_counter()
    rows, notes = build_rows(args.n, args.d, args.devices)
    counting = explain_counting(args.n, args.d)
    elapsed = time.perf_counter() - start

    print(
        f"GFLOPs of one forward pass, two views of ({args.n}, {args.d}), counted by fvcore on "
        "meta tensors (1 multiply-add = 1 flop)\n"
    )
    print(format_table(rows, args.n, args.d, args.devices))
    print()
    if any(row["key"] == "smi_fused" for row in rows):
        print(
            "* SMI fused: fvcore cannot see inside a Triton kernel; the op "
            "smi_kernels::smi_forward is counted by the package's cost-model handle "
            "(smi_kernels.flops.fvcore_handles, P^2 D / 2), FlopCounter by its registered formula."
        )
    for note in notes:
        print("Note:", note)
    print(
        "per device: Barlow Twins all-reduces its cross-correlation, VICReg and NT-Xent gather "
        "the embeddings of every device, so their cost stays the global one; the SMI rows are "
        "devices x (the count at the local batch), with no communication.\n"
        "gather layer / global BN: as in each method's official training code (the paper's GL "
        "and GBN columns).\n"
        "agree: ours truncated to two decimals, as the paper prints, equals the paper's number.\n"
        "off-diag entries / matrix MiB: of the matrices the forward's matrix products produce "
        "(fused: the upper triangle of S, never stored; MiB is its stored G).\n"
        "peak MiB: tensor storage alive at once over forward + backward, followed op by op on the "
        "meta device, inputs excluded (no allocator rounding or BLAS workspace).\n"
    )
    print(explain(rows, args.n, args.d, args.devices))
    print()
    print(counting)
    print()
    distributed = distributed_rows(args.n, args.d, args.devices)
    print(format_distributed_table(distributed, args.n, args.d, args.devices))
    print(f"\n({elapsed:.1f} s)")

    if args.json is not None:
        payload = {
            "setting": {
                "n": args.n,
                "d": args.d,
                "views": 2,
                "devices": args.devices,
                "local_n": args.n // args.devices,
                "dtype": "float32",
                "convention": "fvcore: one multiply-add = one flop",
            },
            "rows": rows,
            "notes": notes,
            "explanation": explain(rows, args.n, args.d, args.devices),
            "counting": counting,
            "distributed_modes": distributed,
            "seconds": elapsed,
            "torch": torch.__version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

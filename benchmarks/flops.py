"""The paper's Table 2, reproduced: GFLOPs of each loss as fvcore counts them, on the CPU.

    python benchmarks/flops.py [--n 2048] [--d 8192] [--devices 8] [--wide] [--json PATH]

Needs the bench extra (fvcore, tabulate): ``pip install -e ".[bench]"``.

Setting (the paper's section 3.2): two views of shape (N, D) = (2048, 8192). fvcore's
``FlopCountAnalysis`` traces each loss with ``torch.jit.trace`` and counts one multiply-add of
a matrix product as one flop, plus a few named ops (``aten::batch_norm``); element-wise work is
not counted. The views are tensors on the meta device: the graph is traced with its real shapes
but no arithmetic runs, so the whole table takes seconds. ``torch.utils.flop_counter.
FlopCounterMode`` (two flops per multiply-add, halved here) counts the same graphs a second,
independent way (``--wide``).

Readings:
    1 process    the loss on the whole batch of N
    devices      the batch split over --devices devices of N / devices each, the work of all the
                 devices summed. SMI computes its loss locally on each device with no
                 communication: devices x (the count at N / devices). Barlow Twins all-reduces
                 its cross-correlation and NT-Xent gathers the embeddings, each device computing
                 its share: the one-process count. VICReg gathers the embeddings and every device
                 recomputes the covariances of the whole batch: devices x the one-process count.

Where the paper's count and the official code's differ, both are rows: NT-Xent with three
products (the paper's 103.08: BA read as the transpose of AB) and with four (SimCLR's code and
lightly's ``NTXentLoss``: 137.44); Barlow Twins without and with its ``nn.BatchNorm1d`` as an op
that fvcore counts (137.44 and 137.57). The paper's column appears only at its setting (the
defaults); rows are the ``ROWS`` table, one ``RowSpec`` each.

SMI fused: fvcore cannot see inside a Triton kernel; the custom op ``smi_kernels::smi_forward``
appears in the traced graph as one node and is counted by the package's cost-model handle
(``smi_kernels.flops.fvcore_handles``). FlopCounterMode uses the op's registered FLOP formula.

Peak memory: storage alive at once during forward + backward, measured by following every op's
output storages on the meta device (``harness.LiveMemory``); the inputs are not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import textwrap
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # puts the repository root on sys.path (for `reference`)
import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from smi_kernels import flops as cost_model

# Table 2 of the paper (GFLOPs as printed, truncated to two decimals). The only typed numbers.
PAPER_GFLOPS = {"barlow": 137.43, "vicreg": 274.87, "ntxent": 103.07, "smi_reference": 12.88}
PAPER_SETTING = (2048, 8192, 8)  # (N, D, devices) of the paper's Table 2

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


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: a loss, how its cost spreads over devices, what the paper printed.

    ``per_device`` is how the devices of the per-device reading share the work:
        "local"       each device computes the loss on its own N / devices batch, no
                      communication: devices x (the count at N / devices)
        "split"       each device computes its share of the global computation (its rows
                      against the gathered batch, or its part of an all-reduced sum): the
                      devices together do the global count
        "replicated"  each device recomputes the global computation: devices x the global count
    ``paper_reading`` says which of the two counts the paper's number is: "global" (one process,
    the whole batch) or "per device".
    """

    loss: harness.Loss
    per_device: str
    paper_key: str | None
    paper_reading: str | None
    note: str
    label: str | None = None  # the table's name, when not the loss's own


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        harness.BARLOW,
        "split",
        "barlow",
        "global",
        "the D x D cross-correlation, N D^2 (the paper's count); each device multiplies its "
        "rows and c is all-reduced",
    ),
    RowSpec(
        harness.BARLOW_BATCH_NORM,
        "split",
        None,
        None,
        "the same loss with the official nn.BatchNorm1d, an aten::batch_norm op that fvcore "
        "counts too (4 flops an element): fvcore's count of the official code",
    ),
    RowSpec(
        harness.VICREG,
        "replicated",
        "vicreg",
        "global",
        "the two D x D covariances, 2 N D^2 (the paper's count, one process); the official "
        "code gathers the embeddings of every device (FullGatherLayer) and every device "
        "recomputes both covariances of the whole batch",
    ),
    RowSpec(
        harness.NTXENT,
        "split",
        "ntxent",
        "global",
        "the paper's count: the similarity blocks AB, AA, BB, 3 N^2 D (BA read as the "
        "transpose of AB)",
        label="NT-Xent (3 products)",
    ),
    RowSpec(
        harness.NTXENT_FOUR_PRODUCTS,
        "split",
        None,
        None,
        "what SimCLR's official code and lightly's NTXentLoss compute: BA multiplied as well "
        "(lightly: one 2N x 2N product), 4 N^2 D",
    ),
    RowSpec(
        harness.SMI_REFERENCE,
        "local",
        "smi_reference",
        "per device",
        "the naive graph AB, AA, BB, 3 N^2 D; per device, each device its own batch with no "
        "gather layer (the paper's reading)",
    ),
    RowSpec(
        harness.SMI_FUSED_OP,
        "local",
        None,
        None,
        "the fused kernel's forward: the upper triangle of S = Z Z^T, P^2 D / 2 with P = 2N "
        "(fvcore cannot see inside a Triton kernel: the custom op is counted by the package's "
        "cost-model handle, smi_kernels.flops.fvcore_handles; FlopCounter by its registered "
        "formula)",
    ),
)


def is_paper_setting(n: int, d: int, devices: int) -> bool:
    """The paper's Table 2 setting: two views of (2048, 8192), the per-device reading on 8."""
    return (n, d, devices) == PAPER_SETTING


def _truncate(macs: int) -> float:
    """GFLOPs truncated to two decimals, as the paper prints them."""
    return (macs // 10**7) / 100


def build_rows(n: int, d: int, devices: int) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per ``ROWS`` entry, and notes on what could not be counted. The paper's numbers
    are attached only at the paper's setting."""
    if n % devices:
        raise ValueError(f"--n {n} must be a multiple of --devices {devices}")
    local_n = n // devices
    at_paper = is_paper_setting(n, d, devices)
    notes: list[str] = []
    specs = list(ROWS)
    if harness.smi_fused_op() is None:
        specs = [spec for spec in specs if spec.loss is not harness.SMI_FUSED_OP]
        notes.append(
            "SMI fused: the custom op torch.ops.smi_kernels.smi_forward is not registered here "
            "(smi_kernels._triton.op does not import: triton is not installed), so its row is "
            "left out. Install triton to get it back: pip install -e \".[triton]\" (or the dev "
            "extra, pip install -e \".[dev]\"); the row needs no GPU."
        )
    rows = []
    for spec in specs:
        loss = spec.loss
        by_op = fvcore_count(loss.fn, n, d)
        macs = sum(by_op.values())
        if spec.per_device == "local":
            per_device = devices * sum(fvcore_count(loss.fn, local_n, d).values())
        elif spec.per_device == "replicated":
            per_device = devices * macs
        else:
            per_device = macs
        paper = PAPER_GFLOPS.get(spec.paper_key) if at_paper and spec.paper_key else None
        compared = per_device if spec.paper_reading == "per device" else macs
        shapes = fused_matrices(n, d) if loss is harness.SMI_FUSED_OP else matrices(loss.fn, n, d)
        rows.append(
            {
                "key": loss.key,
                "loss": spec.label or loss.name,
                "note": spec.note,
                "counted_by": (
                    "fvcore: cost-model handle of smi_kernels::smi_forward"
                    if loss is harness.SMI_FUSED_OP
                    else "fvcore: aten handles"
                ),
                "fvcore_by_operator": by_op,
                "fvcore_macs": macs,
                "fvcore_gflops": macs / GIGA,
                "flop_counter_macs": flop_counter_macs(loss.fn, n, d),
                "per_device_reading": spec.per_device,
                "per_device_macs": per_device,
                "per_device_gflops": per_device / GIGA,
                "paper_gflops": paper,
                "paper_reading": spec.paper_reading if paper is not None else None,
                "agrees_with_paper": None if paper is None else _truncate(compared) == paper,
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


def _agree_cell(row: dict[str, Any]) -> str:
    if row["agrees_with_paper"] is None:
        return "-"
    where = "1 process" if row["paper_reading"] == "global" else "devices"
    return f"{_yes_no(row['agrees_with_paper'])}, {where}"


def format_table(
    rows: Sequence[dict[str, Any]], n: int, d: int, devices: int, wide: bool = False
) -> str:
    """The rows as a text table (tabulate): within 100 columns, or every column with ``wide``.
    The paper's column appears only at the paper's setting."""
    from tabulate import tabulate

    local_n = n // devices
    with_paper = any(row["paper_gflops"] is not None for row in rows)
    columns: list[tuple[str, Any]] = [
        ("loss", lambda row: row["loss"] + (" *" if row["key"] == "smi_fused" else "")),
        (f"GFLOPs\n1 process\n2 x {n} x {d}", lambda row: _gflops(row["fvcore_gflops"])),
        (
            f"GFLOPs\n{devices} device{'s' if devices > 1 else ''}\nx {local_n}",
            lambda row: _gflops(row["per_device_gflops"]),
        ),
    ]
    if with_paper:
        columns += [
            (
                "paper",
                lambda row: "-" if row["paper_gflops"] is None else f"{row['paper_gflops']:.2f}",
            ),
            ("agree\n(trunc. 2dp)", _agree_cell),
        ]
    columns.append(("peak MiB\nfwd+bwd", lambda row: f"{row['peak_bytes'] / 2**20:,.1f}"))
    if wide:
        columns += [
            ("FlopCounter\nGFLOPs", lambda row: _gflops(row["flop_counter_macs"] / GIGA)),
            ("off-diag\nentries", lambda row: f"{row['off_diagonal_entries']:,}"),
            ("matrix MiB\n(fp32)", lambda row: f"{row['matrix_bytes'] / 2**20:,.1f}"),
            ("gather\nlayer", lambda row: _yes_no(row["gather_layer"])),
            ("global\nBN", lambda row: _yes_no(row["global_batch_norm"])),
            ("loss\ncommunication", lambda row: row["communication"]),
        ]
    body = [[cell(row) for _, cell in columns] for row in rows]
    headers = [header for header, _ in columns]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def row_notes(rows: Sequence[dict[str, Any]]) -> str:
    """What each row counts, wrapped to 100 columns."""
    width = max(len(row["loss"]) for row in rows) + 2
    lines = []
    for row in rows:
        text = textwrap.wrap(row["note"], 100 - width - 2)
        lines.append(f"  {row['loss']:<{width}}{text[0]}")
        lines += [" " * (width + 2) + line for line in text[1:]]
    return "\n".join(lines)


def _gflops(value: float) -> str:
    """Four decimals, as the paper's scale needs; three significant digits below 0.01."""
    return f"{value:.4f}" if value >= 0.01 else f"{value:.3g}"


def explain(rows: Sequence[dict[str, Any]], n: int, d: int, devices: int) -> str:
    """The paragraph under the table, its numbers taken from the rows."""
    by_key = {row["key"]: row for row in rows}
    local_n = n // devices
    smi = by_key["smi_reference"]
    ntxent = by_key["ntxent"]
    ntxent_4 = by_key["ntxent_4"]
    reading = (
        f"SMI: the paper's {PAPER_GFLOPS['smi_reference']:.2f} is the per-device reading"
        if is_paper_setting(n, d, devices)
        else "SMI, per device"
    )
    text = (
        f"{reading}: the global batch of {n} split over {devices} devices of {local_n}, each "
        f"computing its loss locally with no gather layer, {devices} x 3 x {local_n}^2 x {d} = "
        f"{_gflops(smi['per_device_gflops'])} GFLOPs. At the full batch of {n} the naive SMI "
        f"graph (AB, AA, BB blocks, 3 N^2 D) costs {_gflops(smi['fvcore_gflops'])}, as NT-Xent "
        f"counted the paper's way ({_gflops(ntxent['fvcore_gflops'])}); NT-Xent as its "
        f"official code computes it costs {_gflops(ntxent_4['fvcore_gflops'])}."
    )
    if "smi_fused" in by_key:
        fused = by_key["smi_fused"]
        text += (
            f" The fused kernel's forward computes only the upper triangle of S = Z Z^T "
            f"(P^2 D / 2 with P = 2N): {_gflops(fused['fvcore_gflops'])} at the full batch and "
            f"{_gflops(fused['per_device_gflops'])} in the per-device reading."
        )
    else:
        text += (
            f" The fused kernel's forward would cost "
            f"{_gflops(cost_model.fused_forward_macs(n, d) / GIGA)} (cost model; op not "
            "registered: install triton, pip install -e \".[triton]\", to measure it)."
        )
    return text


def _missing_requirements() -> list[str]:
    return [name for name in ("fvcore", "tabulate") if importlib.util.find_spec(name) is None]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Arguments; a batch that does not split evenly over the devices is refused here."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=PAPER_SETTING[0], help="samples per view")
    parser.add_argument("--d", type=int, default=PAPER_SETTING[1], help="features per sample")
    parser.add_argument(
        "--devices", type=int, default=PAPER_SETTING[2], help="devices of the per-device reading"
    )
    parser.add_argument("--wide", action="store_true", help="every column (wider than 100)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.n < 2 or args.d < 2 or args.devices < 1:
        parser.error(
            f"need --n >= 2, --d >= 2, --devices >= 1; got {args.n}, {args.d}, {args.devices}"
        )
    if args.n % args.devices:
        below = args.n - args.n % args.devices
        parser.error(
            f"--n {args.n} does not divide by --devices {args.devices} "
            f"({args.n} = {args.devices} x {args.n // args.devices} + {args.n % args.devices}); "
            f"the per-device reading needs equal batches: try --n {below or args.devices} "
            f"or --n {below + args.devices}"
        )
    if args.n // args.devices < 2:
        parser.error(
            f"--n {args.n} over --devices {args.devices} leaves {args.n // args.devices} "
            "sample per device; SMI needs at least 2"
        )
    missing = _missing_requirements()
    if missing:
        parser.exit(
            2,
            f"benchmarks/flops.py needs {' and '.join(missing)}, which the bench extra "
            'installs: pip install -e ".[bench]" (or ".[dev]")\n',
        )
    return args


# --- per-rank cost of the distributed modes (smi_kernels.flops.distributed_macs) -------------

DISTRIBUTED_MODES = (
    ("local", "False", "none"),
    ("gather", "True", "all-gather of z; all-reduce of dz (P_global x D) in the backward"),
    (
        "sharded",
        "'sharded'",
        "all-gather of zh; G blocks of the shared pairs point to point (P_local x P_global / 2); "
        "three tiny collectives",
    ),
)


def distributed_rows(n: int, d: int, devices: int, views: int = 2) -> list[dict[str, Any]]:
    """Per-rank multiply-adds of SMI's three distributed modes, the global batch of ``n`` per
    view split over ``devices`` ranks (cost model: fused counts for local and gather, each
    rank's share of the pairs and its rows of G_sym Z for sharded)."""
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


def format_distributed_table(
    rows: Sequence[dict[str, Any]], n: int, d: int, devices: int, wide: bool = False
) -> str:
    """The distributed rows as a text table, with a line on what it shows (the communication
    column only with ``wide``: the table stays within 100 columns by default)."""
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
        ]
        + ([row["communication"]] if wide else [])
        for row in rows
    ]
    headers = [
        "mode",
        "gather_\ndistributed",
        "loss of",
        "forward\nGMACs/rank",
        "backward\nGMACs/rank",
        "fwd+bwd\nGMACs/rank",
        "gather /\nmode",
    ] + (["communication per step"] if wide else [])
    table = tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    intro = (
        f"Per-rank multiply-adds of the distributed modes: {n} samples per view over {devices} "
        f"ranks of {n // devices}, D = {d}, two views (smi_kernels.flops.distributed_macs)"
    )
    outro = (
        "gather and sharded compute the same global-batch loss and gradients; sharded forms each "
        "pair of rank blocks of S on one rank (forward 1/W of gather's upper triangle) and only "
        "its own rows of G_sym Z (backward 1/W): W times less work per rank."
    )
    return (
        "\n".join(textwrap.wrap(intro, 100))
        + f"\n\n{table}\n\n"
        + "\n".join(textwrap.wrap(outro, 100))
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and write --json)."""
    args = parse_args(argv)
    n, d, devices = args.n, args.d, args.devices

    start = time.perf_counter()
    rows, notes = build_rows(n, d, devices)
    elapsed = time.perf_counter() - start

    print(
        f"GFLOPs of one forward pass, two views of ({n}, {d}), counted by fvcore on meta tensors\n"
        "(1 multiply-add = 1 flop)\n"
    )
    print(format_table(rows, n, d, devices, wide=args.wide))
    print()
    print("Rows:")
    print(row_notes(rows))
    print()
    for note in notes:
        print("Note:", note)
    per_device = (
        f"{devices} devices x {n // devices}: what the devices do together when the batch of "
        f"{n} is split over {devices} (the per-device reading): SMI rows {devices} x (the count "
        f"at {n // devices}), no communication; VICReg {devices} x the one-process count (every "
        "device recomputes the gathered covariances); the others their one-process count "
        "(each device computes its share)."
    )
    print("\n".join(textwrap.wrap(per_device, 100)))
    if any(row["paper_gflops"] is not None for row in rows):
        print(
            "agree: ours truncated to two decimals, as the paper prints, equals the paper's "
            "number,\n  in the reading the paper used (1 process or devices)."
        )
    else:
        print(
            f"paper: not shown; the paper's Table 2 is at --n {PAPER_SETTING[0]} --d "
            f"{PAPER_SETTING[1]} --devices {PAPER_SETTING[2]} (the defaults)."
        )
    print(
        "peak MiB: tensor storage alive at once over forward + backward, followed op by op on "
        "the meta\n  device, inputs excluded (no allocator rounding or BLAS workspace)."
    )
    if not args.wide:
        print(
            "--wide adds: FlopCounter GFLOPs, off-diagonal entries and fp32 MiB of the "
            "matrices the\n  products produce, gather layer, global batch norm, communication."
        )
    print()
    print("\n".join(textwrap.wrap(explain(rows, n, d, devices), 100)))
    print()
    distributed = distributed_rows(n, d, devices)
    print(format_distributed_table(distributed, n, d, devices, wide=args.wide))
    print(f"\n({elapsed:.1f} s)")

    if args.json is not None:
        payload = {
            "setting": {
                "n": n,
                "d": d,
                "views": 2,
                "devices": devices,
                "local_n": n // devices,
                "dtype": "float32",
                "convention": "fvcore: one multiply-add = one flop",
            },
            "paper_setting": is_paper_setting(n, d, devices),
            "rows": rows,
            "notes": notes,
            "explanation": explain(rows, n, d, devices),
            "distributed_modes": distributed,
            "seconds": elapsed,
            "torch": torch.__version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Performance model of one SMI training step (forward + backward) on an H100 SXM, from shapes.

    python tools/model.py               # the performance targets at the assumed H100 SXM rates
    python tools/model.py --write       # + benchmarks/results/model/h100.{md,json}

Nothing here touches a GPU: the Triton path is read from ``smi_kernels._triton.plan.make_plan``
(tiles, split, padding, workspace: the plan the op launches with, never a copy of its numbers)
and the baselines are traced op by op on the meta device. ``benchmarks/gpu_check.py`` prints
these predictions next to its measurements, re-evaluated with the rates it measured: what it
needs is what this model keeps.

The Triton path, per launch (V views of (N, D), P = V N, B = BLOCK, NB = P_pad / B):

    standardize_kernel    N + P_pad - P programs; reads the views once (1 pass, or 5 when the
                          (V, D) tile does not fit in registers: re-reads hit L2), writes zh
    gram_forward_kernel   tiles x split programs; each loads 2 B k_piece elements of zh and
                          computes the full B x B tile (diagonal tiles and padding included)
    gram_epilogue_kernel  split > 1 only: tiles programs summing split fp32 partial tiles
    finalize_kernel       1 + ceil(P_pad / 1024) programs: loss sum, radial sums over NB slots
    gram_backward_kernel  NB ceil(D / BLOCK_D) programs; each loads B P_pad of G and
                          BLOCK_D P_pad of zh, then V rows of zh per output row, writes dz

Time of a launch = max(compute, HBM bytes / HBM rate, L2 bytes / L2 rate) + launch latency.
Compute follows the waves: programs fill sms x CTAs-per-SM slots in launch order; an SM holding
L programs of one wave takes L t / min(1, L share), t the time of one program alone at the SM's
share of the rate and share what one CTA can use of its SM (below); plus a pipeline fill and
epilogue latency per wave. The step's GPU time is the sum over launches; the step time is
max(GPU time, host time): the host runs ahead of the GPU unless something synchronises.

HBM traffic (compulsory: inputs read once, outputs written once) plus re-reads; L2 reuse rules:
* an operand no larger than ``L2_REUSE_BYTES`` stays in L2 for the whole launch: read once;
* a larger one is re-read from HBM once per wave, for the part of it that wave reads: the
  programs of one wave start together and walk their K-loops at the same pace, so the blocks
  they share are fetched once per wave, and nothing survives from one wave to the next.
L2 traffic is every tile load and store of every program.

The baselines (eager reference, torch.compile of it, Barlow Twins, VICReg, NT-Xent) are traced
op by op under a dispatch mode on the meta device, forward and autograd backward: each aten op
that is not a view is one kernel (more for the boolean-mask ops, below); a matrix product costs
its multiply-adds at the cuBLAS rate of its dtype (wave-quantised on 128 x 128 output tiles), any
other op its bytes (each distinct input storage read once, outputs written once) at L2 rate when
they fit in ``L2_REUSE_BYTES`` (the previous kernel's output is still there), else at HBM rate.
Host time: per op, per view, per graph call. ``m[mask]`` on CUDA runs ``nonzero`` inside the op
and synchronises with the host; the step is then a sum over the segments between
synchronisations of max(host, GPU).

torch.compile of the reference (torch 2.13, found with ``torch._dynamo.explain`` on the CPU): the
boolean-mask index inside the loop of ``smi_loss_with_terms`` is a graph break that makes dynamo
skip that frame, so only ``standardize`` and ``dependency`` are compiled (each its own graph, one
fused kernel forward reading its inputs and writing its output once, one backward reading the
incoming gradient and the saved input and writing the input gradient); the matrix products, masks
and reductions of ``smi_loss_with_terms`` run eagerly.

Peak memory: Triton path = plan.workspace_bytes + dz (P D) + the loss vector. Baselines: the
storages alive at once, op by op (``harness.LiveMemory``), plus the scratch that CUDA kernels
allocate inside one op (not visible to a dispatch mode; ``INDEX_SCRATCH_BYTES``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness  # puts the repository root on sys.path (for `reference`)
import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._pytree import tree_flatten

import reference
from smi_kernels import flops as cost_model
from smi_kernels._triton import op as triton_op
from smi_kernels._triton.plan import Plan, make_plan

# ------------------------------------------------------------------ rates of an H100 SXM5 80GB
# Peaks are the datasheet's (dense, boost clock); "achievable" is what a well-tiled kernel
# sustains, the number the model divides by. All of them are assumptions until
# benchmarks/gpu_check.py measures the device (torch.mm, a large copy) and re-evaluates.

#: bf16/fp16 dense tensor-core peak (132 SMs x 4096 flop/clk x 1.83 GHz)
BF16_PEAK = 989.4e12
#: what cuBLAS and a wgmma kernel with 128 x 128+ tiles sustain on large GEMMs (~74% of peak)
BF16_ACHIEVABLE = 730e12
#: TF32 dense tensor-core peak: half the bf16 rate
TF32_PEAK = 494.7e12
#: TF32 sustained: about half the bf16 rate
TF32_ACHIEVABLE = 370e12
#: FP32 on CUDA cores (FMA), peak: 132 SMs x 128 lanes x 2 flop x 1.98 GHz
FP32_PEAK = 66.9e12
#: FP32 FMA sustained by SGEMM-like kernels (tl.dot at "ieee", cuBLAS at "highest"); uncertain
FP32_ACHIEVABLE = 45e12
#: HBM3 peak, 5 stacks
HBM_PEAK = 3.35e12
#: HBM3 sustained by a large copy (read + write bytes over time)
HBM_ACHIEVABLE = 3.0e12
#: L2 read bandwidth under load from all SMs. UNCERTAIN: chips and cheese measured ~5.5 TB/s on
#: the H100 PCIe (114 SMs, lower clocks), which scales to ~7 TB/s for the SXM; Triton's own
#: 128 x 128-tile GEMMs, which need ~9-10 TB/s at their measured rate, suggest more. Range
#: below; to be corrected by measurement (gpu_check.py does not measure it yet).
L2_BANDWIDTH = 8.5e12
L2_BANDWIDTH_RANGE = (7.0e12, 10.0e12)
#: bytes of one operand that stay in L2 for a whole launch: half of the 50 MiB, since H100's L2
#: is two partitions and a line read by SMs of both may be held twice
L2_REUSE_BYTES = 25 * 2**20
#: GPU-side cost of one kernel launch in a stream: launch, ramp-up and drain of the grid
LAUNCH_LATENCY_S = 3e-6
#: per wave of a tiled kernel: the pipeline's first loads (~1 us of memory latency before the
#: first MMA) and the epilogue's stores, not overlapped when the SM holds one CTA
WAVE_LATENCY_S = 1e-6
#: share of its SM's tensor-core rate that one CTA of one warpgroup (4 warps) sustains; two
#: warpgroups (8 warps) saturate it. An assumption (one warpgroup cannot hide its own
#: epilogue and issue gaps)
WARPGROUP_SHARE = 0.75
#: CUDA-core (FMA) kernels: warps per SM needed to saturate the FMA pipes (2 per scheduler)
FMA_SATURATING_WARPS = 8
#: CUDA-core work per entry of an S tile in the forward epilogue (clamp, log1p with its
#: division, the class masks, the L_red term, G, the radial sums), in FMA-equivalent flops
EPILOGUE_FLOPS_PER_ENTRY = 40
#: the same per element of the standardisation (scale, two centrings, norm, zh, pair sums)
STANDARDIZE_FLOPS_PER_ELEMENT = 16
#: per element of the backward's row-wise epilogue (partners, radial term, 1 / s)
BACKWARD_EPILOGUE_FLOPS_PER_ELEMENT = 8
#: host (CPU) time of one Triton forward + backward step: the budget on a modern server CPU
#: (cached plan, two allocations, five launches). A parameter: measured without Triton's
#: launcher by tools/host_overhead.py, with it by benchmarks/gpu_check.py on a GPU
TRITON_HOST_S = 40e-6
#: host time of one eager op: Python, dispatcher, autograd recording, the launch call
EAGER_FORWARD_OP_HOST_S = 7e-6
#: host time of one op run by the autograd engine in the backward (C++, no Python)
EAGER_BACKWARD_OP_HOST_S = 4e-6
#: host time of a view (no kernel)
VIEW_HOST_S = 1.5e-6
#: host time of one call of a compiled graph (guards, the AOT autograd wrapper), forward; the
#: backward call of the same graph costs about half
COMPILED_GRAPH_HOST_S = 25e-6
#: one host synchronisation (``nonzero`` inside a boolean-mask index): the device-to-host copy
#: and the GPU idle until the host launches again
SYNC_S = 15e-6
#: cuBLAS output tile of the baselines' matrix products, for their wave quantisation (below
#: ``sms`` tiles cuBLAS splits K and fills the GPU)
CUBLAS_TILE = 128
#: scratch bytes per selected element that a boolean-mask index allocates inside the op on
#: CUDA: ``nonzero`` writes (K, 2) int64 indices. The gather reads them back.
INDEX_SCRATCH_BYTES = 16
#: index_put(accumulate=True) (the backward of ``m[mask]``) on CUDA: nonzero's 16 B, then a
#: linear int64 index, its sorted copy, the original positions and an iota for the sort:
#: ~48 B per element (uncertain: the sort's temporary storage is not counted)
INDEX_PUT_SCRATCH_BYTES = 48
#: kernels run by one boolean-mask index (nonzero: count, scan, write; the gather) and by one
#: index_put(accumulate) (nonzero, linear index, a radix sort of several passes, the put)
INDEX_KERNELS = 4
INDEX_PUT_KERNELS = 10
#: bytes moved per byte of scratch: the index writes and reads its indices once; the sort of
#: index_put passes over its keys and values several times
INDEX_SCRATCH_PASSES = 2
INDEX_PUT_SCRATCH_PASSES = 4


@dataclass(frozen=True)
class DeviceRates:
    """Rates and costs the model assumes for one GPU (flop/s, bytes/s, seconds).

    ``measured`` names the fields that came from a measurement (see :func:`with_rates`).

    Example:
        >>> rates = with_rates(H100_SXM, hbm=2.9e12)
        >>> rates.hbm, rates.measured
        (2900000000000.0, ('hbm',))
    """

    name: str = "H100 SXM5 80GB (assumed rates)"
    arch: str = "sm90"  # the config table the plan reads (``configs.architecture``)
    sms: int = 132
    tensor_16bit: float = BF16_ACHIEVABLE
    tensor_tf32: float = TF32_ACHIEVABLE
    fp32_fma: float = FP32_ACHIEVABLE
    hbm: float = HBM_ACHIEVABLE
    l2: float = L2_BANDWIDTH
    l2_reuse_bytes: int = L2_REUSE_BYTES
    shared_memory_per_sm: int = 233472
    registers_per_sm: int = 65536
    threads_per_sm: int = 2048
    max_ctas_per_sm: int = 32
    launch_s: float = LAUNCH_LATENCY_S
    wave_latency_s: float = WAVE_LATENCY_S
    triton_host_s: float = TRITON_HOST_S
    eager_forward_op_host_s: float = EAGER_FORWARD_OP_HOST_S
    eager_backward_op_host_s: float = EAGER_BACKWARD_OP_HOST_S
    view_host_s: float = VIEW_HOST_S
    compiled_graph_host_s: float = COMPILED_GRAPH_HOST_S
    sync_s: float = SYNC_S
    measured: tuple[str, ...] = ()

    def matmul_rate(self, dtype: torch.dtype, precision: str) -> float:
        """The sustained matrix-product rate of ``dtype`` at a float32 matmul precision."""
        if dtype in (torch.bfloat16, torch.float16):
            return self.tensor_16bit
        if dtype == torch.float32 and precision != "highest":
            return self.tensor_tf32
        return self.fp32_fma


H100_SXM = DeviceRates()

RATE_FIELDS = tuple(
    f.name for f in dataclasses.fields(DeviceRates) if f.name not in ("name", "arch", "measured")
)


def with_rates(rates: DeviceRates, **values: float) -> DeviceRates:
    """``rates`` with some fields replaced by measured values (recorded in ``measured``)."""
    labels = {"name", "arch"}
    unknown = sorted(set(values) - set(RATE_FIELDS) - labels)
    if unknown:
        raise ValueError(f"unknown rate fields {unknown}; known: {', '.join(RATE_FIELDS)}")
    measured = tuple(dict.fromkeys((*rates.measured, *(k for k in values if k not in labels))))
    typed = {k: type(getattr(rates, k))(v) for k, v in values.items()}
    return dataclasses.replace(rates, **typed, measured=measured)


# ------------------------------------------------------------------ estimates


@dataclass(frozen=True)
class LaunchEstimate:
    """One kernel launch (or one op of a baseline) and its predicted time."""

    kernel: str
    phase: str  # "forward" or "backward"
    programs: int
    ctas_per_sm: int
    flops: float  # what the tiles compute (padding, full diagonal tiles), matrix units
    minimal_macs: int  # the cost model's multiply-adds of this launch (design.md, section 2)
    cuda_core_flops: float  # element-wise work, FMA-equivalent flops
    hbm_bytes: float
    l2_bytes: float
    compute_s: float  # waves of programs, per-wave latency included
    hbm_s: float
    l2_s: float
    time_s: float  # max(compute, hbm, l2) + launch latency
    waves: float  # programs / (sms x ctas_per_sm)
    wave_efficiency: float  # ideal compute time / the wave model's (tail effect)
    kernels: int = 1


@dataclass(frozen=True)
class StepEstimate:
    """One forward + backward step of a loss."""

    key: str
    name: str
    n: int
    d: int
    dtype: str
    precision: str
    launches: tuple[LaunchEstimate, ...]
    gpu_s: float
    host_s: float
    time_s: float
    peak_bytes: int | None  # tensors alive at once + in-op scratch (what CUDA's allocator sees)
    peak_tensor_bytes: int | None  # tensors alive at once only (harness.LiveMemory)
    matmul_macs: int

    @property
    def kernels(self) -> int:
        return sum(launch.kernels for launch in self.launches)


def _wave_time(programs: int, ctas: int, sms: int, program_s: float, share: float) -> float:
    """Compute time of ``programs`` equal programs, ``ctas`` resident per SM: full waves, then
    the partial last wave, where the busiest SM holds ceil(rest / sms) programs."""
    if programs == 0 or program_s == 0:
        return 0.0
    slots = sms * ctas
    full, rest = divmod(programs, slots)
    time = full * ctas * program_s / min(1.0, ctas * share)
    if rest:
        load = -(-rest // sms)
        time += load * program_s / min(1.0, load * share)
    return time


def _estimate(
    rates: DeviceRates,
    kernel: str,
    phase: str,
    *,
    programs: int,
    ctas: int,
    hbm_bytes: float,
    l2_bytes: float,
    matrix_rate: float = 0.0,
    flops_per_program: float = 0.0,
    cuda_core_flops_per_program: float = 0.0,
    share: float = 1.0,
    minimal_macs: int = 0,
    tiled: bool = False,
) -> LaunchEstimate:
    """A launch of ``programs`` equal programs (see the module docstring for the time)."""
    program_s = cuda_core_flops_per_program / (rates.fp32_fma / rates.sms)
    if flops_per_program:
        program_s += flops_per_program / (matrix_rate / rates.sms)
    slots = rates.sms * ctas
    compute = _wave_time(programs, ctas, rates.sms, program_s, share)
    ideal = programs * program_s / rates.sms
    wave_count = -(-programs // slots)
    if tiled:
        compute += wave_count * rates.wave_latency_s
    hbm_s = hbm_bytes / rates.hbm
    l2_s = l2_bytes / rates.l2
    return LaunchEstimate(
        kernel=kernel,
        phase=phase,
        programs=programs,
        ctas_per_sm=ctas,
        flops=programs * flops_per_program,
        minimal_macs=minimal_macs,
        cuda_core_flops=programs * cuda_core_flops_per_program,
        hbm_bytes=hbm_bytes,
        l2_bytes=l2_bytes,
        compute_s=compute,
        hbm_s=hbm_s,
        l2_s=l2_s,
        time_s=max(compute, hbm_s, l2_s) + rates.launch_s,
        waves=programs / slots,
        wave_efficiency=ideal / compute if compute > 0 and ideal > 0 else 1.0,
    )


# ------------------------------------------------------------------ the Triton path


def resident_ctas(rates: DeviceRates, shared: int, registers: int, num_warps: int) -> int:
    """CTAs per SM that shared memory, registers and threads allow (the rule of
    ``tools/kernel_report.py``: registers allocated per warp in units of 256, 1 KiB of
    shared memory reserved per CTA)."""
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = rates.registers_per_sm // (per_warp * num_warps)
    by_shared = rates.shared_memory_per_sm // (shared + 1024) if shared else rates.max_ctas_per_sm
    by_threads = rates.threads_per_sm // (32 * num_warps)
    return max(1, min(by_registers, by_shared, by_threads, rates.max_ctas_per_sm))


#: registers a thread of a wgmma kernel holds beside its accumulator for the epilogue
#: (transform, masks, G store, radial sums; the backward's partner rows)
EPILOGUE_REGISTERS = 110


def estimated_registers(accumulator_per_thread: float, matrix: str, epilogue: bool = True) -> int:
    """Registers per thread of a tiled kernel (nothing is compiled here). Calibrated on
    ``tools/kernel_report.py --quick --arch sm90`` (triton 3.9, the config table of
    commit 09e7640): wgmma kernels need their fp32 accumulator plus ``EPILOGUE_REGISTERS``
    (report: accumulator 32 -> 145-157, 64 -> 211-244 registers), twice the accumulator
    without an epilogue (split-K pieces: 32 -> 64); FMA kernels hold operand fragments, about
    4 x the accumulator, + 32 with an epilogue (32 -> 128 split, 149-168). Only the CTAs per SM
    depend on it; the estimate gives the report's CTAs per SM for every sm_90 launch of the
    current table but the finalize kernel's (no matter: one wave)."""
    if matrix == "tensor":
        needed = (
            accumulator_per_thread + EPILOGUE_REGISTERS if epilogue else 2 * accumulator_per_thread
        )
    else:
        needed = 4 * accumulator_per_thread + (32 if epilogue else 0)
    return min(255, int(needed))


def _matrix_engine(plan: Plan, rates: DeviceRates) -> tuple[str, float]:
    if plan.kind == "ieee":
        return "fma", rates.fp32_fma
    return "tensor", rates.tensor_16bit if plan.kind == "mma16" else rates.tensor_tf32


def _cta_share(matrix: str, num_warps: int) -> float:
    if matrix == "tensor":
        return min(1.0, WARPGROUP_SHARE * num_warps / 4)
    return min(1.0, num_warps / FMA_SATURATING_WARPS)


def _pipeline_stages(matrix: str, num_stages: int) -> int:
    # shared-memory buffers of the K-loop: num_stages for wgmma, num_stages - 1 for FMA dots
    # (the sm_90 compile report of the current configs shows both)
    return num_stages if matrix == "tensor" else max(1, num_stages - 1)


def triangle_tile(t: int) -> tuple[int, int]:
    """(pb, qb) of upper tile t, numbered column by column (as ``gram.triangle_tile``)."""
    qb = (math.isqrt(8 * t + 1) - 1) // 2
    return t - qb * (qb + 1) // 2, qb


def _piece_columns(plan: Plan, piece: int) -> int:
    return min(plan.k_per_split, plan.d_pad - piece * plan.k_per_split)


def forward_zh_hbm_bytes(plan: Plan, slots: int, reuse_bytes: int) -> int:
    """Bytes of zh the forward reads from HBM: once if zh fits in L2, else once per wave for the
    (row block, K piece) slabs that wave's programs read."""
    e = plan.dtype.itemsize
    zh = plan.rows_pad * plan.d_pad * e
    if zh <= reuse_bytes:
        return zh
    programs = plan.tiles * plan.split
    total = 0
    for start in range(0, programs, slots):
        slabs = set()
        for pid in range(start, min(start + slots, programs)):
            piece, t = divmod(pid, plan.tiles)
            pb, qb = triangle_tile(t)
            slabs.update(((pb, piece), (qb, piece)))
        total += sum(plan.block * _piece_columns(plan, piece) * e for _, piece in slabs)
    return total


def backward_hbm_reads(plan: Plan, slots: int, reuse_bytes: int) -> tuple[int, int]:
    """(G bytes, zh bytes) the backward reads from HBM, by the same rule as the forward: a wave
    (programs numbered row block first) reads the G tiles of its row blocks and the zh slabs
    of its feature blocks."""
    e = plan.dtype.itemsize
    nb, block = plan.num_blocks, plan.block
    block_d = plan.backward[0].BLOCK_D
    d_blocks = -(-plan.d // block_d)
    programs = nb * d_blocks
    g_total = plan.tiles * block * block * e
    zh_total = plan.rows_pad * plan.d_pad * e
    g_fits, zh_fits = g_total <= reuse_bytes, zh_total <= reuse_bytes
    g_bytes = g_total if g_fits else 0
    zh_bytes = zh_total if zh_fits else 0
    if g_fits and zh_fits:
        return g_bytes, zh_bytes
    for start in range(0, programs, slots):
        rows, features = set(), set()
        for pid in range(start, min(start + slots, programs)):
            db, pb = divmod(pid, nb)
            rows.add(pb)
            features.add(db)
        if not g_fits:
            # tiles (i, j), i <= j, with i or j among the wave's row blocks
            outside = nb - len(rows)
            touched = plan.tiles - outside * (outside + 1) // 2
            g_bytes += touched * block * block * e
        if not zh_fits:
            zh_bytes += sum(
                plan.rows_pad * min(block_d, plan.d_pad - db * block_d) * e for db in features
            )
    return g_bytes, zh_bytes


def triton_launches(plan: Plan, rates: DeviceRates = H100_SXM) -> list[LaunchEstimate]:
    """The launches of one forward (+ backward when ``plan.need_grad``) of ``plan``."""
    e = plan.dtype.itemsize
    a = plan.accumulator.itemsize
    v, n, d, p = plan.views, plan.n, plan.d, plan.rows
    block, nb, tiles = plan.block, plan.num_blocks, plan.tiles
    matrix, matrix_rate = _matrix_engine(plan, rates)
    vectors_out = (2 * p + 2 * v * v * n + n) * a  # s, projected, rho, align_grad, align
    g_out = tiles * block * block * e if plan.need_grad else 0
    slots_out = nb * plan.rows_pad * a if plan.need_grad else 0
    launches = []

    # standardisation: one program per sample (its V rows), one per padding row of zh
    options = triton_op.standardize_options(plan)
    passes = 1 if options["SINGLE_PASS"] else 5
    warps = options.get("num_warps", 4)
    per_thread = options["V_BLOCK"] * options["BLOCK_D"] / (32 * warps)
    programs = n + plan.rows_pad - p
    inputs = v * n * d * e
    zh = plan.rows_pad * plan.d_pad * e
    launches.append(
        _estimate(
            rates,
            "standardize_kernel",
            "forward",
            programs=programs,
            ctas=resident_ctas(rates, 64, int(per_thread) + 64, warps),
            hbm_bytes=inputs + zh + vectors_out,
            l2_bytes=passes * inputs + zh + vectors_out,
            cuda_core_flops_per_program=STANDARDIZE_FLOPS_PER_ELEMENT
            * passes
            * inputs
            / e
            / programs,
        )
    )

    # Gram forward: tiles x split programs, each the full B x B tile over its K piece
    fwd = plan.forward[0]
    shared = _pipeline_stages(matrix, fwd.num_stages) * 2 * block * fwd.BLOCK_K * e
    registers = estimated_registers(block * block / (32 * fwd.num_warps), matrix, plan.split == 1)
    ctas = resident_ctas(rates, shared, registers, fwd.num_warps)
    if plan.split > 1:
        stores = plan.split * tiles * block * block * a  # fp32 partial tiles
    else:
        stores = g_out + slots_out + tiles * a
    launches.append(
        _estimate(
            rates,
            "gram_forward_kernel",
            "forward",
            programs=tiles * plan.split,
            ctas=ctas,
            hbm_bytes=forward_zh_hbm_bytes(plan, rates.sms * ctas, rates.l2_reuse_bytes) + stores,
            l2_bytes=2 * block * plan.d_pad * e * tiles + stores,
            matrix_rate=matrix_rate,
            # K pieces are k_per_split long, the last one shorter: the mean piece
            flops_per_program=2.0 * block * block * plan.d_pad / plan.split,
            cuda_core_flops_per_program=0
            if plan.split > 1
            else EPILOGUE_FLOPS_PER_ENTRY * block**2,
            share=_cta_share(matrix, fwd.num_warps),
            minimal_macs=cost_model.fused_forward_macs(n, d, views=v),
            tiled=True,
        )
    )

    if plan.split > 1:
        partials = plan.split * tiles * block * block * a
        registers = estimated_registers(block * block / (32 * fwd.num_warps), "fma")
        launches.append(
            _estimate(
                rates,
                "gram_epilogue_kernel",
                "forward",
                programs=tiles,
                ctas=resident_ctas(rates, 1024, registers, fwd.num_warps),
                # the partials were written by the previous launch: re-read from L2 if they fit
                hbm_bytes=(partials if partials > rates.l2_reuse_bytes else 0)
                + g_out
                + slots_out
                + tiles * a,
                l2_bytes=partials + g_out + slots_out + tiles * a,
                cuda_core_flops_per_program=(EPILOGUE_FLOPS_PER_ENTRY + plan.split) * block**2,
            )
        )

    radial_programs = -(-plan.rows_pad // triton_op.RADIAL_BLOCK) if plan.need_grad else 0
    small = (tiles + n + 3) * a + (slots_out + plan.rows_pad * a if plan.need_grad else 0)
    launches.append(
        _estimate(
            rates,
            "finalize_kernel",
            "forward",
            programs=1 + radial_programs,
            ctas=rates.max_ctas_per_sm,
            hbm_bytes=small,
            l2_bytes=small,
        )
    )
    if not plan.need_grad:
        return launches

    # backward: dZ = G_sym Z on BLOCK x BLOCK_D output tiles, K-loop over P_pad in BLOCK_Q slices
    bwd = plan.backward[0]
    block_d = bwd.BLOCK_D
    stage = (block * bwd.BLOCK_Q + bwd.BLOCK_Q * block_d) * e
    shared = _pipeline_stages(matrix, bwd.num_stages) * stage
    registers = estimated_registers(block * block_d / (32 * bwd.num_warps), matrix)
    ctas = resident_ctas(rates, shared, registers, bwd.num_warps)
    d_blocks = -(-d // block_d)
    programs = nb * d_blocks
    zh_columns = sum(min(block_d, plan.d_pad - db * block_d) for db in range(d_blocks))
    loop_loads = (programs * block + nb * zh_columns) * plan.rows_pad * e  # G slices, zh slices
    # dz rows have D_pad columns (aligned stores); the epilogue reads V zh rows of the same width
    columns = min(d_blocks * block_d, plan.d_pad)
    rows_out = v * n * columns * e
    vectors_in = (3 * p + 2 * v * v * n + plan.rows_pad) * a
    g_hbm, zh_hbm = backward_hbm_reads(plan, rates.sms * ctas, rates.l2_reuse_bytes)
    launches.append(
        _estimate(
            rates,
            "gram_backward_kernel",
            "backward",
            programs=programs,
            ctas=ctas,
            hbm_bytes=g_hbm + zh_hbm + rows_out + vectors_in,
            l2_bytes=loop_loads + (v + 1) * rows_out + vectors_in,
            matrix_rate=matrix_rate,
            flops_per_program=2.0 * block * block_d * plan.rows_pad,
            cuda_core_flops_per_program=BACKWARD_EPILOGUE_FLOPS_PER_ELEMENT * v * block * block_d,
            share=_cta_share(matrix, bwd.num_warps),
            minimal_macs=cost_model.fused_backward_macs(n, d, views=v),
            tiled=True,
        )
    )
    return launches


def triton_peak_bytes(plan: Plan) -> int:
    """Bytes the Triton path allocates in one step: the workspace, dz (V, N, D_pad) and the loss
    vector (the eager autograd entry reads the views in place: no stacked copy). When
    D_pad > D the gradients are (N, D) views of dz with padded rows, which autograd clones to
    the inputs' layout after the workspace is freed."""
    out = 3 * plan.accumulator.itemsize
    if not plan.need_grad:
        return plan.workspace_bytes + out
    e = plan.dtype.itemsize
    dz = plan.views * plan.n * plan.d_pad * e
    clone = plan.views * plan.n * plan.d * e if plan.d_pad != plan.d else 0
    return max(plan.workspace_bytes + dz, dz + clone) + out


def triton_step(
    n: int,
    d: int,
    dtype: torch.dtype,
    precision: str = "highest",
    rates: DeviceRates = H100_SXM,
    views: int = 2,
) -> StepEstimate:
    """The fused path: one forward + backward of V = ``views`` views of (n, d), planned for
    ``rates.arch`` and ``rates.sms`` as the op would plan it on that device."""
    plan = make_plan(rates.arch, rates.sms, views, n, d, dtype, precision, True)
    launches = tuple(triton_launches(plan, rates))
    gpu = sum(launch.time_s for launch in launches)
    return StepEstimate(
        key="smi_fused",
        name="SMI fused (Triton)",
        n=n,
        d=d,
        dtype=_dtype_name(dtype),
        precision=precision,
        launches=launches,
        gpu_s=gpu,
        host_s=rates.triton_host_s,
        time_s=max(gpu, rates.triton_host_s),
        peak_bytes=triton_peak_bytes(plan),
        peak_tensor_bytes=triton_peak_bytes(plan),
        matmul_macs=cost_model.fused_forward_macs(n, d, views)
        + cost_model.fused_backward_macs(n, d, views),
    )


# ------------------------------------------------------------------ traced baselines


@dataclass(frozen=True)
class OpRecord:
    """One aten op of a traced baseline step."""

    op: str
    phase: str
    region: str | None
    macs: int
    read_bytes: int
    write_bytes: int
    scratch_bytes: int
    scratch_passes: int
    kernels: int
    syncs: int
    view: bool
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RegionCall:
    """One call of a function that torch.compile compiles as its own graph."""

    region: str
    input_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class Trace:
    """The ops of one forward + backward of a baseline, with its peak memory."""

    ops: tuple[OpRecord, ...]
    regions: tuple[RegionCall, ...]
    peak_tensor_bytes: int
    peak_bytes: int


_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "lift_fresh"}
#: ops that take a tensor argument for its shape, dtype or device only
_NO_READ = {
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "zeros_like",
    "ones_like",
    "full_like",
    "empty_like",
    "scalar_tensor",
    "eye",
    "zeros",
    "ones",
    "full",
    "arange",
}
_MATMUL = {"mm", "addmm", "bmm", "matmul"}


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _storage_bytes(t: Tensor) -> int:
    try:
        return min(_nbytes(t), t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return _nbytes(t)


def _matmul_macs(name: str, args: Sequence[Any], out: Any) -> int:
    tensors = [x for x in args if isinstance(x, Tensor)]
    if name == "addmm":
        tensors = tensors[1:]
    a, b = tensors[0], tensors[1]
    if name == "bmm":
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return math.prod(a.shape[:-1]) * a.shape[-1] * b.shape[-1]


def _bool_index(args: Sequence[Any]) -> bool:
    indices = args[1] if len(args) > 1 else None
    return isinstance(indices, list | tuple) and any(
        isinstance(x, Tensor) and x.dtype == torch.bool for x in indices
    )


class _TraceMode(harness.LiveMemory):
    """``harness.LiveMemory`` that also records every op's cost and the in-op scratch."""

    def __init__(self, exclude: Sequence[Tensor]) -> None:
        super().__init__(exclude=exclude)
        self.records: list[OpRecord] = []
        self.region: str | None = None
        self.node_regions: dict[Any, str] = {}
        self.region_calls: list[RegionCall] = []
        self.peak_with_scratch = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        before = self.current
        out = super().__torch_dispatch__(func, types, args, kwargs)
        node = torch._C._current_autograd_node()
        phase = "backward" if node is not None else "forward"
        region = self.node_regions.get(node) if node is not None else self.region
        name = func.overloadpacket.__name__.rstrip("_")
        returns = func._schema.returns
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        outs = [x for x in tree_flatten(out)[0] if isinstance(x, Tensor)]
        written = 0 if view else sum(_nbytes(x) for x in outs)
        seen, read = set(), 0
        for x in tree_flatten((args, kwargs))[0]:
            if isinstance(x, Tensor):
                key = StorageWeakRef(x.untyped_storage()).cdata
                if key not in seen:
                    seen.add(key)
                    read += _storage_bytes(x)
        macs = _matmul_macs(name, args, out) if name in _MATMUL else 0
        scratch, passes, kernels, syncs = 0, 0, 0 if view or name in _NO_KERNEL else 1, 0
        if name == "index" and _bool_index(args):
            selected = outs[0].numel() if outs else 0
            scratch, passes = INDEX_SCRATCH_BYTES * selected, INDEX_SCRATCH_PASSES
            kernels, syncs = INDEX_KERNELS, 1
        elif name == "index_put" and _bool_index(args):
            selected = args[2].numel() if len(args) > 2 and isinstance(args[2], Tensor) else 0
            scratch, passes = INDEX_PUT_SCRATCH_BYTES * selected, INDEX_PUT_SCRATCH_PASSES
            kernels, syncs = INDEX_PUT_KERNELS, 1
        self.peak_with_scratch = max(self.peak_with_scratch, before + written + scratch)
        if view or name in _NO_READ:
            read = 0
        shape = tuple(outs[0].shape) if outs else ()
        self.records.append(
            OpRecord(
                name,
                phase,
                region,
                macs,
                read,
                written,
                scratch,
                passes,
                kernels,
                syncs,
                view,
                shape,
            )
        )
        return out

    @contextlib.contextmanager
    def region_of(self, module: Any, attribute: str) -> Iterator[None]:
        """Tag the ops of ``module.attribute`` (forward, and their autograd nodes backward)."""
        original = getattr(module, attribute)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            outer, self.region = self.region, attribute
            try:
                out = original(*args, **kwargs)
            finally:
                self.region = outer
            inputs = [x for x in args if isinstance(x, Tensor)]
            stop = {x.grad_fn for x in inputs if x.grad_fn is not None}
            stack = [out.grad_fn] if isinstance(out, Tensor) and out.grad_fn is not None else []
            while stack:
                node = stack.pop()
                if (
                    node in stop
                    or node in self.node_regions
                    or type(node).__name__ == "AccumulateGrad"
                ):
                    continue
                self.node_regions[node] = attribute
                stack.extend(child for child, _ in node.next_functions if child is not None)
            self.region_calls.append(
                RegionCall(attribute, sum(_nbytes(x) for x in inputs), _nbytes(out))
            )
            return out

        setattr(module, attribute, wrapped)
        try:
            yield
        finally:
            setattr(module, attribute, original)


#: the losses the model traces: speed.py's keys -> (name, the function of two views)
BASELINES: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "smi_reference": ("SMI reference (eager)", reference.smi_loss),
    "smi_reference_compiled": ("SMI reference + torch.compile", reference.smi_loss),
    "barlow": ("Barlow Twins", reference.barlow_twins_loss),
    "vicreg": ("VICReg", reference.vicreg_loss),
    "ntxent": ("NT-Xent", reference.ntxent_loss),
}

#: the functions torch.compile compiles as graphs of their own in the reference (see the module
#: docstring): ``smi_loss_with_terms`` itself is skipped at its boolean-mask graph break
COMPILED_REGIONS = ("standardize", "dependency")


@functools.lru_cache(maxsize=64)
def trace(key: str, n: int, d: int, dtype: torch.dtype) -> Trace:
    """Forward + backward of baseline ``key`` on two (n, d) views, traced on the meta device."""
    import torch.fx.experimental._config as fx_config

    import smi_kernels.reference as smi_module

    fn = BASELINES[key][1]
    views = [torch.empty(n, d, device="meta", dtype=dtype, requires_grad=True) for _ in range(2)]
    mode = _TraceMode(exclude=views)
    regions = [mode.region_of(smi_module, name) for name in COMPILED_REGIONS]
    # boolean masks select every element on the meta device (N^2 instead of N^2 - N)
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True), contextlib.ExitStack() as stack:
        for region in regions:
            stack.enter_context(region)
        with mode:
            loss = fn(*views)
            loss.backward()
            del loss
    return Trace(
        tuple(mode.records),
        tuple(mode.region_calls),
        mode.peak,
        max(mode.peak, mode.peak_with_scratch),
    )


def _op_estimate(record: OpRecord, rates: DeviceRates, matmul_rate: float) -> LaunchEstimate:
    moved = record.read_bytes + record.write_bytes + record.scratch_bytes * record.scratch_passes
    bandwidth = rates.l2 if moved <= rates.l2_reuse_bytes else rates.hbm
    compute, efficiency, programs = 0.0, 1.0, 0
    if record.macs:
        programs = math.prod(-(-x // CUBLAS_TILE) for x in record.shape[-2:]) if record.shape else 1
        # below one wave cuBLAS splits K and fills the GPU; above, the last wave is partial
        efficiency = (
            1.0 if programs < rates.sms else programs / (-(-programs // rates.sms) * rates.sms)
        )
        compute = 2 * record.macs / matmul_rate / efficiency
    memory = moved / bandwidth
    return LaunchEstimate(
        kernel=record.op,
        phase=record.phase,
        programs=programs,
        ctas_per_sm=1,
        flops=2.0 * record.macs,
        minimal_macs=record.macs,
        cuda_core_flops=0.0,
        hbm_bytes=moved if bandwidth == rates.hbm else 0.0,
        l2_bytes=moved,
        compute_s=compute,
        hbm_s=moved / rates.hbm if bandwidth == rates.hbm else 0.0,
        l2_s=moved / rates.l2,
        time_s=max(compute, memory) + record.kernels * rates.launch_s,
        waves=programs / rates.sms if programs else 0.0,
        wave_efficiency=efficiency,
        kernels=record.kernels,
    )


def _host_s(record: OpRecord, rates: DeviceRates) -> float:
    if record.view:
        return rates.view_host_s if record.phase == "forward" else 0.0
    if record.phase == "forward":
        return rates.eager_forward_op_host_s
    return rates.eager_backward_op_host_s


def baseline_step(
    key: str,
    n: int,
    d: int,
    dtype: torch.dtype,
    precision: str = "highest",
    rates: DeviceRates = H100_SXM,
) -> StepEstimate:
    """A traced baseline (see ``BASELINES``): eager, or for ``smi_reference_compiled`` the
    reference with ``COMPILED_REGIONS`` fused by torch.compile."""
    traced = trace(key, n, d, dtype)
    compiled = key == "smi_reference_compiled"
    matmul_rate = rates.matmul_rate(dtype, precision)
    launches: list[LaunchEstimate] = []
    segments: list[list[float]] = [[0.0, 0.0]]  # [host, gpu] between synchronisations
    syncs = 0
    for record in traced.ops:
        if compiled and record.region in COMPILED_REGIONS:
            continue
        estimate = _op_estimate(record, rates, matmul_rate)
        if estimate.kernels:
            launches.append(estimate)
        segments[-1][0] += _host_s(record, rates)
        segments[-1][1] += estimate.time_s if estimate.kernels else 0.0
        if record.syncs:
            syncs += record.syncs
            segments.append([0.0, 0.0])
    if compiled:
        fused: list[LaunchEstimate] = []
        for call in traced.regions:
            forward = call.input_bytes + call.output_bytes
            backward = 2 * call.input_bytes + call.output_bytes
            for phase, moved in (("forward", forward), ("backward", backward)):
                record = OpRecord(
                    f"compiled {call.region}",
                    phase,
                    call.region,
                    0,
                    moved,
                    0,
                    0,
                    0,
                    1,
                    0,
                    False,
                    (),
                )
                fused.append(_op_estimate(record, rates, matmul_rate))
        launches.extend(fused)
        # the compiled graphs run inside the first segment's host/GPU overlap
        segments[0][0] += len(traced.regions) * 1.5 * rates.compiled_graph_host_s
        segments[0][1] += sum(x.time_s for x in fused)
    gpu = sum(x.time_s for x in launches)
    host = sum(seg[0] for seg in segments)
    time = sum(max(h, g) for h, g in segments) + syncs * rates.sync_s
    return StepEstimate(
        key=key,
        name=BASELINES[key][0],
        n=n,
        d=d,
        dtype=_dtype_name(dtype),
        precision=precision,
        launches=tuple(launches),
        gpu_s=gpu,
        host_s=host,
        time_s=time,
        peak_bytes=None if compiled else traced.peak_bytes,
        peak_tensor_bytes=None if compiled else traced.peak_tensor_bytes,
        matmul_macs=sum(r.macs for r in traced.ops),
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


DTYPES = harness.DTYPES

#: the keys ``predict`` knows (speed.py's loss keys)
MODELLED = ("smi_fused", *BASELINES)


def predict(
    key: str,
    n: int,
    d: int,
    dtype: torch.dtype | str,
    precision: str = "highest",
    rates: DeviceRates = H100_SXM,
) -> StepEstimate:
    """The predicted step of loss ``key`` (one of ``MODELLED``) on two views of (n, d).

    Example:
        >>> step = predict("smi_fused", 2048, 8192, "bfloat16")
        >>> [launch.kernel for launch in step.launches][-1], step.time_s > step.host_s
        ('gram_backward_kernel', True)
    """
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if key == "smi_fused":
        return triton_step(n, d, dtype, precision, rates)
    if key in BASELINES:
        return baseline_step(key, n, d, dtype, precision, rates)
    raise KeyError(f"no model for {key!r}; modelled: {', '.join(MODELLED)}")


# ------------------------------------------------------------------ the targets


@dataclass(frozen=True)
class Case:
    """One problem of the targets (two views)."""

    label: str
    n: int
    d: int
    dtype: str
    precision: str = "highest"


@dataclass(frozen=True)
class Target:
    """One performance target: ``metric`` compared with ``threshold``."""

    case: Case
    metric: str
    description: str
    threshold: float
    at_least: bool  # True: predicted >= threshold passes; False: <=


CASE_A = Case("a", 2048, 8192, "bfloat16")
CASE_B = Case("b", 256, 8192, "bfloat16")
CASE_C = Case("c", 4096, 8192, "float32", "highest")
CASE_C_TF32 = Case("c-tf32", 4096, 8192, "float32", "high")
CASES = (CASE_A, CASE_B, CASE_C, CASE_C_TF32)

TARGETS = (
    Target(CASE_A, "roofline_fraction", "fraction of the GEMM roofline", 0.65, True),
    Target(CASE_A, "speedup_vs_smi_reference", "speed-up vs eager reference", 2.0, True),
    Target(
        CASE_A,
        "speedup_vs_smi_reference_compiled",
        "speed-up vs torch.compile(reference)",
        1.3,
        True,
    ),
    Target(CASE_B, "speedup_vs_smi_reference", "speed-up vs eager reference", 5.0, True),
    Target(CASE_B, "speedup_vs_barlow", "speed-up vs Barlow Twins", 10.0, True),
    Target(CASE_B, "memory_ratio_barlow", "Barlow Twins peak memory / SMI's", 20.0, True),
    Target(
        CASE_C, "memory_ratio_vs_smi_reference", "SMI peak memory / eager reference's", 0.4, False
    ),
    Target(
        CASE_C_TF32,
        "memory_ratio_vs_smi_reference",
        "SMI peak memory / eager reference's (TF32)",
        0.4,
        False,
    ),
)

#: what each case predicts (the keys the metrics need)
CASE_KEYS = {
    "a": ("smi_fused", "smi_reference", "smi_reference_compiled"),
    "b": ("smi_fused", "smi_reference", "barlow"),
    "c": ("smi_fused", "smi_reference"),
    "c-tf32": ("smi_fused", "smi_reference"),
}


def gemm_roofline_s(case: Case, rates: DeviceRates) -> float:
    """The GEMM roofline of a case: the fused path's minimal multiply-adds (6 N^2 D for two
    views) at the dense GEMM rate of its dtype."""
    macs = cost_model.fused_forward_macs(case.n, case.d) + cost_model.fused_backward_macs(
        case.n, case.d
    )
    return 2 * macs / rates.matmul_rate(DTYPES[case.dtype], case.precision)


def metrics(
    case: Case,
    times: dict[str, float | None],
    peaks: dict[str, float | None],
    rates: DeviceRates,
) -> dict[str, float | None]:
    """Every target metric of a case from step times (s) and peak bytes per loss key."""
    fused_t, fused_m = times.get("smi_fused"), peaks.get("smi_fused")
    out: dict[str, float | None] = {}
    out["roofline_fraction"] = gemm_roofline_s(case, rates) / fused_t if fused_t else None
    for key, value in times.items():
        if key != "smi_fused":
            out[f"speedup_vs_{key}"] = value / fused_t if value and fused_t else None
    for key, value in peaks.items():
        if key != "smi_fused":
            out[f"memory_ratio_{key}"] = value / fused_m if value and fused_m else None
            out[f"memory_ratio_vs_{key}"] = fused_m / value if value and fused_m else None
    return out


@dataclass
class TargetRow:
    """A target with its prediction (central rates, and the L2 bandwidth range)."""

    target: Target
    predicted: float | None
    low: float | None  # the range over the uncertain assumptions (see evaluate_targets)
    high: float | None
    measured: float | None = None

    @staticmethod
    def _passes(target: Target, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= target.threshold if target.at_least else value <= target.threshold

    @property
    def predicted_passes(self) -> bool | None:
        return self._passes(self.target, self.predicted)

    @property
    def measured_passes(self) -> bool | None:
        return self._passes(self.target, self.measured)

    @property
    def margin(self) -> float | None:
        """predicted / threshold, oriented so that > 1 passes."""
        if self.predicted is None:
            return None
        ratio = self.predicted / self.target.threshold
        return ratio if self.target.at_least else 1 / ratio

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "case": dataclasses.asdict(t.case),
            "metric": t.metric,
            "description": t.description,
            "threshold": t.threshold,
            "at_least": t.at_least,
            "predicted": self.predicted,
            "predicted_range": [self.low, self.high],
            "predicted_passes": self.predicted_passes,
            "margin": self.margin,
            "measured": self.measured,
            "measured_passes": self.measured_passes,
        }


def predict_case(case: Case, rates: DeviceRates) -> dict[str, StepEstimate]:
    """The steps a case's targets need, by loss key."""
    dtype = DTYPES[case.dtype]
    return {
        key: predict(key, case.n, case.d, dtype, case.precision, rates)
        for key in CASE_KEYS[case.label]
    }


def case_metrics(case: Case, rates: DeviceRates, peak: str = "scratch") -> dict[str, float | None]:
    """The metrics of a case; ``peak`` "scratch" counts the baselines' in-op scratch in their
    peak memory (what CUDA's allocator sees), "tensors" only the tensors alive at once."""
    steps = predict_case(case, rates)
    times = {k: s.time_s for k, s in steps.items()}
    peaks: dict[str, float | None] = {
        k: s.peak_bytes if peak == "scratch" else s.peak_tensor_bytes for k, s in steps.items()
    }
    return metrics(case, times, peaks, rates)


def evaluate_targets(rates: DeviceRates = H100_SXM) -> list[TargetRow]:
    """Every target, predicted at ``rates``, with its range over the two least certain
    assumptions: the L2 bandwidth (``L2_BANDWIDTH_RANGE``, unless measured) and whether the
    baselines' in-op scratch counts in their peak memory."""
    central = {c.label: case_metrics(c, rates) for c in CASES}
    variants = [rates]
    if "l2" not in rates.measured:
        variants = [dataclasses.replace(rates, l2=value) for value in L2_BANDWIDTH_RANGE]
    spread = [
        {c.label: case_metrics(c, variant, peak) for c in CASES}
        for variant in variants
        for peak in ("scratch", "tensors")
    ]
    rows = []
    for t in TARGETS:
        values = [v[t.case.label].get(t.metric) for v in spread]
        values = [x for x in values if x is not None]
        rows.append(
            TargetRow(
                t,
                central[t.case.label].get(t.metric),
                min(values, default=None),
                max(values, default=None),
            )
        )
    return rows


# ------------------------------------------------------------------ report


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if metric == "roofline_fraction" else f"{value:.2f}"


def _verdict(passes: bool | None) -> str:
    return "-" if passes is None else ("meets" if passes else "MISSES")


def _case_text(case: Case) -> str:
    precision = f", {case.precision}" if case.dtype == "float32" else ""
    return f"({case.label}) N={case.n}, D={case.d}, {case.dtype}{precision}"


def targets_table(rows: Sequence[TargetRow], measured: bool = False) -> str:
    """Markdown: target / predicted (L2 range) / [measured] / verdict."""
    head = "| case | target | threshold | predicted | range | verdict |"
    rule = "|---|---|---:|---:|---:|---|"
    if measured:
        head = "| case | target | threshold | predicted | measured | verdict (measured) |"
    lines = [head, rule]
    for row in rows:
        t = row.target
        sign = ">=" if t.at_least else "<="
        threshold = f"{sign} {_value(t.metric, t.threshold)}"
        if measured:
            lines.append(
                f"| {_case_text(t.case)} | {t.description} | {threshold} | "
                f"{_value(t.metric, row.predicted)} | {_value(t.metric, row.measured)} | "
                f"{_verdict(row.measured_passes)} |"
            )
        else:
            span = f"{_value(t.metric, row.low)} - {_value(t.metric, row.high)}"
            lines.append(
                f"| {_case_text(t.case)} | {t.description} | {threshold} | "
                f"{_value(t.metric, row.predicted)} | {span} | {_verdict(row.predicted_passes)} |"
            )
    return "\n".join(lines)


def markdown(rates: DeviceRates = H100_SXM) -> str:
    """The targets at ``rates`` (``benchmarks/results/model/h100.md``)."""
    return "\n".join(
        [
            f"# Performance model: {rates.name}",
            "",
            "Generated by `python tools/model.py --write` (no GPU: shapes, the kernel plan and "
            "the assumed rates of `tools/model.py`). `python benchmarks/gpu_check.py` measures "
            "the same targets and re-evaluates this model with the rates it measures.",
            "",
            targets_table(evaluate_targets(rates)),
            "",
            "GEMM roofline: the fused path's minimal multiply-adds (6 N^2 D for two views) at the "
            "dense GEMM rate of the dtype, over the predicted fused step time. Range: the same "
            "metric with the L2 bandwidth at both ends of its assumed range, and with the "
            "baselines' peak memory with and without the scratch their CUDA kernels allocate "
            "inside an op. The rules of the model are in the docstring of `tools/model.py`.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print the targets table; ``--write`` writes it with its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument(
        "--write", action="store_true", help="write benchmarks/results/model/h100.{md,json}"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=harness.REPO_ROOT / "benchmarks" / "results" / "model"
    )
    args = parser.parse_args(argv)
    rows = evaluate_targets(H100_SXM)
    print(targets_table(rows))
    if args.write:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        report = {
            "device": H100_SXM.name,
            "rates": {k: getattr(H100_SXM, k) for k in RATE_FIELDS},
            "targets": [row.to_json() for row in rows],
        }
        (args.out_dir / "h100.md").write_text(markdown(H100_SXM))
        (args.out_dir / "h100.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out_dir / 'h100.md'} and h100.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

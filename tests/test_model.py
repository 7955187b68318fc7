"""The performance model (tools/model.py) and the GPU check's no-GPU path, on the CPU.

The model's arithmetic is checked on cases small enough to count by hand, against the cost model
of smi_kernels/flops.py and against the launches the op really makes (kernel_report's
recorder). Tile sizes are read from the plan, never written here: the config table may change.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from benchmark_modules import load as load_benchmark

from smi_kernels import flops as cost_model
from smi_kernels._triton.plan import make_plan

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
TOOLS = ROOT / "tools"
SMS = 132


@pytest.fixture(scope="module")
def model() -> ModuleType:
    return load_benchmark("model")


def _plan(n: int, d: int, dtype: torch.dtype = torch.bfloat16, precision: str = "highest"):
    return make_plan("sm90", SMS, 2, n, d, dtype, precision, True)


PROBLEMS = [
    (256, 8192, torch.bfloat16, "highest"),
    (2048, 8192, torch.bfloat16, "highest"),
    (300, 1000, torch.float32, "highest"),
    (1024, 4096, torch.float32, "high"),
    (1500, 777, torch.float16, "highest"),
]


# --- waves and tiles ------------------------------------------------------------------------


def test_wave_time_by_hand(model) -> None:
    wave = model._wave_time
    # one program per SM, the SM saturated by one CTA: one wave of t
    assert wave(132, 1, 132, 1.0, 1.0) == 1.0
    # one program more: a second, almost empty wave costs a full t (the tail)
    assert wave(133, 1, 132, 1.0, 1.0) == 2.0
    # 144 programs, 3 slots per SM: 12 SMs hold two; a CTA uses 3/4 of its SM, two saturate it
    assert wave(144, 3, 132, 1.0, 0.75) == pytest.approx(2.0)
    # 132 programs alone at 3/4 of their SM each
    assert wave(132, 3, 132, 1.0, 0.75) == pytest.approx(1 / 0.75)
    # two full waves of one CTA per SM
    assert wave(264, 1, 132, 1.0, 1.0) == 2.0
    assert wave(0, 1, 132, 1.0, 1.0) == 0.0


def test_triangle_numbering(model) -> None:
    seen = set()
    for t in range(210):
        pb, qb = model.triangle_tile(t)
        assert 0 <= pb <= qb
        assert qb * (qb + 1) // 2 + pb == t
        seen.add((pb, qb))
    assert len(seen) == 210  # 20 x 21 / 2: every upper tile of a 20-block grid once


def test_resident_ctas_rule(model) -> None:
    rates = model.H100_SXM
    # threads: 2048 per SM, 8 warps = 256 threads -> at most 8
    assert model.resident_ctas(rates, 0, 32, 8) == 8
    # registers: 255 a thread, 8 warps -> 65536 / (8192 * 8) = 1
    assert model.resident_ctas(rates, 0, 255, 8) == 1
    # shared memory: 64 KiB + 1 KiB reserved -> 3 in 228 KiB
    assert model.resident_ctas(rates, 65536, 64, 4) == 3


@pytest.mark.parametrize("n, d, dtype, precision", PROBLEMS)
def test_launch_counts_follow_the_plan(model, n, d, dtype, precision) -> None:
    plan = _plan(n, d, dtype, precision)
    launches = {x.kernel: x for x in model.triton_launches(plan)}
    assert launches["standardize_kernel"].programs == n + plan.rows_pad - plan.rows
    assert launches["gram_forward_kernel"].programs == plan.tiles * plan.split
    assert ("gram_epilogue_kernel" in launches) == (plan.split > 1)
    if plan.split > 1:
        assert launches["gram_epilogue_kernel"].programs == plan.tiles
    block_d = plan.backward[0].BLOCK_D
    assert launches["gram_backward_kernel"].programs == plan.num_blocks * math.ceil(d / block_d)
    for launch in launches.values():
        slots = SMS * launch.ctas_per_sm
        assert launch.waves == pytest.approx(launch.programs / slots)
        assert 0 < launch.wave_efficiency <= 1 + 1e-12


RECORD_SCRIPT = """
import json, math, sys
import torch
sys.path.insert(0, sys.argv[1])
import kernel_report, model
from smi_kernels._triton.plan import make_plan
out = []
for n, d, dtype, precision in json.loads(sys.argv[2]):
    torch.set_float32_matmul_precision(precision)
    plan = make_plan("sm90", 132, 2, n, d, getattr(torch, dtype), precision, True)
    recorded = [[x.name, math.prod(x.grid)] for x in kernel_report.record_step(plan)]
    modelled = [[x.kernel, x.programs] for x in model.triton_launches(plan)]
    out.append([recorded, modelled])
print(json.dumps(out))
"""


def test_launches_match_what_the_op_launches() -> None:
    """The model's launches and grids are the op's own, recorded by kernel_report (which needs
    Triton without its interpreter: a subprocess)."""
    problems = [[n, d, str(dtype).removeprefix("torch."), p] for n, d, dtype, p in PROBLEMS]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", RECORD_SCRIPT, str(TOOLS), json.dumps(problems)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=BENCHMARKS.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for recorded, modelled in json.loads(result.stdout.strip().splitlines()[-1]):
        assert modelled == recorded


# --- FLOPs and bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("n, d, dtype, precision", PROBLEMS)
def test_flops_against_the_cost_model(model, n, d, dtype, precision) -> None:
    plan = _plan(n, d, dtype, precision)
    launches = {x.kernel: x for x in model.triton_launches(plan)}
    forward, backward = launches["gram_forward_kernel"], launches["gram_backward_kernel"]
    # the minimal part is flops.py's
    assert forward.minimal_macs == cost_model.fused_forward_macs(n, d)
    assert backward.minimal_macs == cost_model.fused_backward_macs(n, d)
    # what the tiles compute: every upper tile in full over D_pad, every output tile over P_pad
    b = plan.block
    assert forward.flops == pytest.approx(2 * b * b * plan.d_pad * plan.tiles)
    block_d = plan.backward[0].BLOCK_D
    programs = plan.num_blocks * math.ceil(d / block_d)
    assert backward.flops == pytest.approx(2 * b * block_d * plan.rows_pad * programs)
    # padding and the full diagonal tiles only add work
    assert forward.flops >= 2 * forward.minimal_macs
    assert backward.flops >= 2 * backward.minimal_macs
    step = model.triton_step(n, d, dtype, precision)
    assert step.matmul_macs == cost_model.fused_forward_macs(n, d) + cost_model.fused_backward_macs(
        n, d
    )


@pytest.mark.parametrize("n, d, dtype, precision", PROBLEMS)
def test_l2_bytes_by_hand(model, n, d, dtype, precision) -> None:
    plan = _plan(n, d, dtype, precision)
    e, a, b = plan.dtype.itemsize, plan.accumulator.itemsize, plan.block
    launches = {x.kernel: x for x in model.triton_launches(plan)}
    loads = 2 * b * plan.d_pad * e * plan.tiles  # 2 B x K-piece elements per program
    if plan.split > 1:
        stores = plan.split * plan.tiles * b * b * a
    else:
        stores = plan.tiles * b * b * e + plan.num_blocks * plan.rows_pad * a + plan.tiles * a
    assert launches["gram_forward_kernel"].l2_bytes == loads + stores
    # backward: (BLOCK + BLOCK_D) x P_pad elements per program in its K-loop, at least
    block_d = plan.backward[0].BLOCK_D
    programs = plan.num_blocks * math.ceil(d / block_d)
    lower = programs * b * plan.rows_pad * e + plan.num_blocks * d * plan.rows_pad * e
    assert launches["gram_backward_kernel"].l2_bytes >= lower
    # HBM never more than L2 for the tiled launches, never less than the compulsory traffic
    zh = plan.rows_pad * plan.d_pad * e
    for kernel in ("gram_forward_kernel", "gram_backward_kernel"):
        assert zh <= launches[kernel].hbm_bytes <= launches[kernel].l2_bytes


def test_forward_hbm_rereads_by_hand(model) -> None:
    plan = _plan(2048, 8192)
    assert plan.split == 1
    e, b = plan.dtype.itemsize, plan.block
    slab = b * plan.d_pad * e
    zh = plan.rows_pad * plan.d_pad * e
    # zh fits in L2: read once
    assert model.forward_zh_hbm_bytes(plan, 1, zh) == zh
    # one wave holds every program: every row block is fetched once
    assert model.forward_zh_hbm_bytes(plan, plan.tiles, 0) == plan.num_blocks * slab
    # one program a wave: diagonal tiles fetch one block, the others two
    expected = (2 * plan.tiles - plan.num_blocks) * slab
    assert model.forward_zh_hbm_bytes(plan, 1, 0) == expected


def test_backward_hbm_reads_by_hand(model) -> None:
    plan = _plan(2048, 8192)
    e, b = plan.dtype.itemsize, plan.block
    g = plan.tiles * b * b * e
    zh = plan.rows_pad * plan.d_pad * e
    # both fit: once each
    assert model.backward_hbm_reads(plan, 1, 10**12) == (g, zh)
    # one wave over everything: once each as well
    programs = plan.num_blocks * math.ceil(plan.d / plan.backward[0].BLOCK_D)
    assert model.backward_hbm_reads(plan, programs, 0) == (g, zh)
    # one program a wave: each reads the NB tiles of its row block of G_sym and its zh slab
    g_reads, zh_reads = model.backward_hbm_reads(plan, 1, 0)
    assert g_reads == programs * plan.num_blocks * b * b * e
    assert zh_reads == programs * plan.rows_pad * plan.backward[0].BLOCK_D * e


# --- time: monotone in the problem and the rates -------------------------------------------


def test_time_monotone_in_shape(model) -> None:
    times_n = [model.triton_step(n, 4096, torch.bfloat16).gpu_s for n in (256, 512, 1024, 2048)]
    times_d = [model.triton_step(1024, d, torch.bfloat16).gpu_s for d in (1024, 2048, 4096, 8192)]
    assert times_n == sorted(times_n)
    assert times_d == sorted(times_d)


def test_time_monotone_in_rates(model) -> None:
    base = model.triton_step(2048, 8192, torch.bfloat16).time_s
    slower_l2 = model.with_rates(model.H100_SXM, l2=5e12)
    faster = model.with_rates(model.H100_SXM, tensor_16bit=900e12, l2=20e12, hbm=4e12)
    assert model.triton_step(2048, 8192, torch.bfloat16, rates=slower_l2).time_s > base
    assert model.triton_step(2048, 8192, torch.bfloat16, rates=faster).time_s < base
    # bf16 is faster than fp32 at the same shape, TF32 faster than FMA
    fp32 = model.triton_step(1024, 4096, torch.float32, "highest").time_s
    tf32 = model.triton_step(1024, 4096, torch.float32, "high").time_s
    bf16 = model.triton_step(1024, 4096, torch.bfloat16).time_s
    assert bf16 < tf32 < fp32


def test_launch_time_is_max_plus_latency(model) -> None:
    rates = model.H100_SXM
    for x in model.triton_launches(_plan(256, 8192), rates):
        assert x.time_s == pytest.approx(max(x.compute_s, x.hbm_s, x.l2_s) + rates.launch_s)
        assert x.hbm_s == pytest.approx(x.hbm_bytes / rates.hbm)
        assert x.l2_s == pytest.approx(x.l2_bytes / rates.l2)


# --- memory ---------------------------------------------------------------------------------


def test_triton_peak_is_workspace_plus_dz(model) -> None:
    plan = _plan(4096, 8192, torch.float32)
    assert plan.d_pad == plan.d
    expected = plan.workspace_bytes + 2 * 4096 * plan.d_pad * 4 + 3 * 4
    assert model.triton_peak_bytes(plan) == expected
    assert model.triton_step(4096, 8192, torch.float32).peak_bytes == expected
    # padded rows: dz holds D_pad columns; the (N, D) gradients are cloned out of it
    plan = _plan(300, 1000, torch.float32)
    dz = 2 * 300 * plan.d_pad * 4
    expected = max(plan.workspace_bytes + dz, dz + 2 * 300 * 1000 * 4) + 3 * 4
    assert plan.d_pad > plan.d and model.triton_peak_bytes(plan) == expected


# --- traced baselines -----------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(16, 40), (24, 8)])
def test_traced_matmuls_against_the_cost_model(model, n, d) -> None:
    f32 = torch.float32
    smi = model.trace("smi_reference", n, d, f32)
    # naive forward 3 N^2 D, autograd two products per block: 6 N^2 D
    macs = sum(r.macs for r in smi.ops)
    assert macs == cost_model.naive_forward_macs(n, d) + cost_model.naive_backward_macs(n, d)
    forward = sum(r.macs for r in smi.ops if r.phase == "forward")
    assert forward == cost_model.naive_forward_macs(n, d)
    barlow = model.trace("barlow", n, d, f32)
    assert sum(r.macs for r in barlow.ops) == 3 * cost_model.barlow_macs(n, d)
    vicreg = model.trace("vicreg", n, d, f32)
    assert sum(r.macs for r in vicreg.ops) == 3 * cost_model.vicreg_macs(n, d)


def test_traced_reference_structure(model) -> None:
    n, d = 32, 48
    traced = model.trace("smi_reference", n, d, torch.float32)
    # one boolean-mask index per N x N block forward, one index_put per block backward
    assert sum(r.op == "index" and r.syncs for r in traced.ops) == 3
    assert sum(r.op == "index_put" and r.syncs for r in traced.ops) == 3
    # the regions torch.compile fuses: 2 standardisations, 3 transforms
    calls = [c.region for c in traced.regions]
    assert calls.count("standardize") == 2 and calls.count("dependency") == 3
    assert any(r.region == "dependency" and r.phase == "backward" for r in traced.ops)
    # the tensor-level peak is harness.LiveMemory's; scratch only adds
    harness = sys.modules["harness"]
    views = [torch.empty(n, d, device="meta", requires_grad=True) for _ in range(2)]
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        live = harness.measure_live_peak(model.BASELINES["smi_reference"][1], *views)
    assert traced.peak_tensor_bytes == live
    assert traced.peak_bytes >= traced.peak_tensor_bytes


def test_compiled_reference_keeps_matmuls_fuses_regions(model) -> None:
    eager = model.predict("smi_reference", 64, 128, "float32")
    compiled = model.predict("smi_reference_compiled", 64, 128, "float32")
    assert compiled.matmul_macs == eager.matmul_macs
    assert compiled.kernels < eager.kernels
    assert compiled.gpu_s < eager.gpu_s


# --- rates, targets, CLI --------------------------------------------------------------------


def test_rates_from_measurements(model) -> None:
    rates = model.with_rates(model.H100_SXM, hbm=2.5e12, sms=114)
    assert rates.hbm == 2.5e12 and rates.sms == 114 and set(rates.measured) == {"hbm", "sms"}
    with pytest.raises(ValueError, match="unknown rate"):
        model.with_rates(model.H100_SXM, warp_speed=1.0)


def test_metrics_arithmetic(model) -> None:
    case = model.CASE_A
    rates = model.H100_SXM
    roofline = model.gemm_roofline_s(case, rates)
    assert roofline == pytest.approx(2 * 6 * case.n**2 * case.d / rates.tensor_16bit)
    out = model.metrics(
        case,
        {"smi_fused": 2 * roofline, "smi_reference": 6 * roofline},
        {"smi_fused": 100, "barlow": 2500, "smi_reference": 400},
        rates,
    )
    assert out["roofline_fraction"] == pytest.approx(0.5)
    assert out["speedup_vs_smi_reference"] == pytest.approx(3.0)
    assert out["memory_ratio_barlow"] == pytest.approx(25.0)
    assert out["memory_ratio_vs_smi_reference"] == pytest.approx(0.25)


def test_targets_cover_the_cases(model) -> None:
    metrics = {(t.case.label, t.metric) for t in model.TARGETS}
    assert ("a", "roofline_fraction") in metrics
    assert ("b", "memory_ratio_barlow") in metrics
    assert ("c", "memory_ratio_vs_smi_reference") in metrics
    for case in model.CASES:
        assert "smi_fused" in model.CASE_KEYS[case.label]


# --- gpu_check ------------------------------------------------------------------------------


def test_gpu_check_without_gpu_says_so_in_one_line() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=BENCHMARKS.parent,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert "GPU" in output


def test_gpu_check_report_and_stage_failures(tmp_path) -> None:
    """A failing stage is recorded, not raised; the report renders from a partial payload."""
    check = load_benchmark("gpu_check")
    log = tmp_path / "errors.log"

    def broken() -> dict:
        raise RuntimeError("boom")

    stage = check.run_stage("broken", broken, log)
    assert stage.failed and "boom" in stage.detail and "Traceback" in log.read_text()
    skipped = check.run_stage("skip", lambda: (_ for _ in ()).throw(check.Skip("why")), log)
    assert skipped.status == "skipped" and not skipped.failed
    points = check.sweep_points(quick=True, smoke=False)
    assert {p.label for p in points} >= {"a", "b", "c"}
    payload = {
        "quick": True,
        "cpu_smoke": False,
        "seconds": 1.0,
        "environment": {"gpu": "Test GPU", "torch": torch.__version__},
        "stages": [{"name": "broken", "status": "failed", "seconds": 0.0, "detail": "boom"}],
        "rates": {},
        "sweep": {},
        "model": {},
    }
    text = check.markdown(payload)
    assert "Test GPU" in text and "| broken | failed |" in text
    assert check.plot(payload, tmp_path) == []


def test_compile_assumption_graph_break() -> None:
    """The model's torch.compile reading: dynamo breaks the reference's graph at the
    boolean-mask index (data-dependent nonzero); if a torch upgrade stops breaking there, the
    compiled model (COMPILED_REGIONS) must be revisited."""
    import torch._dynamo

    from smi_kernels import reference

    views = [torch.randn(8, 16, requires_grad=True) for _ in range(2)]
    explanation = torch._dynamo.explain(reference.smi_loss)(*views)
    assert explanation.graph_break_count >= 1
    torch._dynamo.reset()


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), reason="runs the kernel interpreted"
)
def test_gpu_check_l2_kernel_reads_every_chunk_every_round() -> None:
    check = load_benchmark("gpu_check")
    kernel = check.l2_read_kernel()
    block, chunks, programs, repeats = 16, 5, 3, 4
    x = torch.arange(chunks * block, dtype=torch.float32)
    out = torch.zeros(programs * block)
    kernel[(programs,)](x, out, chunks, repeats, BLOCK=block)
    expected = repeats * x.view(chunks, block).sum(0)
    assert torch.allclose(out.view(programs, block).sum(0), expected)

"""The benchmark scripts and the baselines they compare SMI with (CPU, fast).

fvcore's counts on the traced graphs against the formulas of docs/design.md, section 4; the
paper's Table 2 at its own setting; the JSON the scripts write; the reference baselines against
independent re-implementations and values known in closed form.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from benchmark_modules import load as load_benchmark
from torch.utils.flop_counter import FlopCounterMode

import reference
from smi_kernels import flops as cost_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SHAPES = [(8, 12), (16, 40), (24, 8)]


@pytest.fixture(scope="module")
def bench_flops() -> ModuleType:
    return load_benchmark("flops")


@pytest.fixture(scope="module")
def bench_speed() -> ModuleType:
    return load_benchmark("speed")


# --- the cost model -------------------------------------------------------------------------


def test_cost_model_formulas() -> None:
    n, d = 2048, 8192
    assert cost_model.naive_forward_macs(n, d) == 3 * n * n * d
    assert cost_model.naive_forward_macs(n, d, views=3) == 6 * n * n * d
    assert cost_model.fused_forward_macs(n, d) == (2 * n) ** 2 * d // 2 == 2 * n * n * d
    assert cost_model.fused_backward_macs(n, d) == 4 * n * n * d
    assert cost_model.naive_backward_macs(n, d) == 6 * n * n * d
    assert cost_model.barlow_macs(n, d) == n * d * d
    assert cost_model.vicreg_macs(n, d) == 2 * n * d * d
    assert cost_model.ntxent_macs(n, d) == 3 * n * n * d
    assert cost_model.flop_formula_forward((2, n, d)) == 2 * cost_model.fused_forward_macs(n, d)
    assert cost_model.flop_formula_backward((3,), (2, n, d)) == 8 * n * n * d
    assert set(cost_model.fvcore_handles()) == {cost_model.FORWARD_OP, cost_model.BACKWARD_OP}
    with pytest.raises(ValueError, match="positive"):
        cost_model.fused_forward_macs(0, d)


# --- fvcore on the real graphs against docs/design.md, section 4 ------------------------


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_fvcore_counts_match_spec(bench_flops: ModuleType, n: int, d: int) -> None:
    expected = {
        reference.barlow_twins_loss: n * d * d,
        reference.vicreg_loss: 2 * n * d * d,
        reference.ntxent_loss: 3 * n * n * d,
        bench_flops.harness.SMI_REFERENCE.fn: 3 * n * n * d,
    }
    for fn, macs in expected.items():
        on_meta = bench_flops.fvcore_count(fn, n, d)
        assert sum(on_meta.values()) == macs, (fn, on_meta)
        assert set(on_meta) == {"matmul"}  # only the products are counted
        # tracing real CPU tensors gives the same count as the meta tensors the script uses
        assert bench_flops.fvcore_count(fn, n, d, device="cpu") == on_meta
        assert bench_flops.flop_counter_macs(fn, n, d) == macs


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_fused_op_counted_by_cost_model(bench_flops: ModuleType, n: int, d: int) -> None:
    if bench_flops.harness.smi_fused_op() is None:
        pytest.skip("smi_kernels::smi_forward is not registered here")
    fused = bench_flops.harness.SMI_FUSED_OP.fn
    assert bench_flops.fvcore_count(fused, n, d) == {"smi_forward": 2 * n * n * d}
    assert bench_flops.flop_counter_macs(fused, n, d) == 2 * n * n * d


def test_reference_smi_three_views_counts() -> None:
    n, d = 6, 10
    views = [torch.empty(n, d, device="meta") for _ in range(3)]
    with torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True):
        with FlopCounterMode(display=False) as counter:
            reference.smi_loss(*views)
    assert counter.get_total_flops() == 2 * cost_model.naive_forward_macs(n, d, views=3)


@pytest.fixture(scope="module")
def paper_rows(bench_flops: ModuleType) -> list[dict]:
    rows, _ = bench_flops.build_rows(2048, 8192, 8)
    return rows


def test_paper_table_2_reproduced(bench_flops: ModuleType, paper_rows: list[dict]) -> None:
    by_key = {row["key"]: row for row in paper_rows}
    for key, paper in bench_flops.PAPER_GFLOPS.items():
        assert by_key[key]["agrees_with_paper"] is True, by_key[key]
        assert by_key[key]["paper_gflops"] == paper
    assert by_key["smi_reference"]["per_device_macs"] == 8 * 3 * 256**2 * 8192
    assert by_key["smi_reference"]["paper_reading"] == "per device"
    assert by_key["smi_reference"]["fvcore_macs"] == by_key["ntxent"]["fvcore_macs"]
    if "smi_fused" in by_key:
        assert by_key["smi_fused"]["fvcore_macs"] == 2 * 2048**2 * 8192
        assert by_key["smi_fused"]["per_device_macs"] == 8 * 2 * 256**2 * 8192


def test_official_counts_beside_the_papers(paper_rows: list[dict]) -> None:
    by_key = {row["key"]: row for row in paper_rows}
    n, d = 2048, 8192
    # NT-Xent as SimCLR's code and lightly compute it: four products, 137.44
    assert by_key["ntxent_4"]["fvcore_macs"] == 4 * n * n * d
    assert f"{by_key['ntxent_4']['fvcore_gflops']:.2f}" == "137.44"
    # Barlow Twins with its batch norm as an op, which fvcore counts: 137.57
    assert by_key["barlow_bn"]["fvcore_by_operator"] == {
        "matmul": n * d * d,
        "batch_norm": 8 * n * d,
    }
    assert f"{by_key['barlow_bn']['fvcore_gflops']:.2f}" == "137.57"
    # VICReg per device: every device recomputes the gathered covariances
    assert by_key["vicreg"]["per_device_macs"] == 8 * 2 * n * d * d
    assert by_key["vicreg"]["paper_reading"] == "global"
    for key in ("ntxent_4", "barlow_bn"):
        assert by_key[key]["paper_gflops"] is None and by_key[key]["agrees_with_paper"] is None
        assert by_key[key]["note"]


def test_flops_table_width(bench_flops: ModuleType, paper_rows: list[dict]) -> None:
    narrow = bench_flops.format_table(paper_rows, 2048, 8192, 8)
    assert max(len(line) for line in narrow.splitlines()) <= 100
    assert "paper" in narrow.splitlines()[0]
    wide = bench_flops.format_table(paper_rows, 2048, 8192, 8, wide=True)
    assert "FlopCounter" in wide and "communication" in wide
    notes = bench_flops.row_notes(paper_rows)
    assert max(len(line) for line in notes.splitlines()) <= 100


def test_flops_json_schema(bench_flops: ModuleType, tmp_path: Path, capsys) -> None:
    path = tmp_path / "flops.json"
    assert bench_flops.main(["--n", "32", "--d", "16", "--devices", "4", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SMI (reference)" in out and "per-device reading" in out
    # away from the paper's setting, no paper column and no paper numbers
    assert "paper: not shown" in out and "12.88" not in out and "agree" not in out
    assert max(len(line) for line in out.splitlines()) <= 100
    payload = json.loads(path.read_text())
    assert payload["setting"] == {
        "n": 32,
        "d": 16,
        "views": 2,
        "devices": 4,
        "local_n": 8,
        "dtype": "float32",
        "convention": "fvcore: one multiply-add = one flop",
    }
    assert payload["paper_setting"] is False
    keys = [row["key"] for row in payload["rows"]]
    assert keys[:6] == ["barlow", "barlow_bn", "vicreg", "ntxent", "ntxent_4", "smi_reference"]
    fields = {
        "loss": str,
        "note": str,
        "counted_by": str,
        "fvcore_by_operator": dict,
        "fvcore_macs": int,
        "fvcore_gflops": float,
        "flop_counter_macs": int,
        "per_device_reading": str,
        "per_device_macs": int,
        "per_device_gflops": float,
        "off_diagonal_entries": int,
        "matrix_bytes": int,
        "peak_bytes": int,
        "gather_layer": bool,
        "global_batch_norm": bool,
        "communication": str,
    }
    for row in payload["rows"]:
        for field, kind in fields.items():
            assert isinstance(row[field], kind), (row["key"], field)
        if row["key"] != "barlow_bn":  # FlopCounterMode does not count batch_norm
            assert row["fvcore_macs"] == row["flop_counter_macs"]
        assert row["paper_gflops"] is None and row["agrees_with_paper"] is None
    rows = {row["key"]: row for row in payload["rows"]}
    assert rows["smi_reference"]["per_device_macs"] == 4 * 3 * 8**2 * 16
    assert rows["smi_reference"]["off_diagonal_entries"] == 3 * (32 * 32 - 32)
    assert rows["barlow"]["off_diagonal_entries"] == 16 * 16 - 16
    assert rows["barlow"]["per_device_macs"] == rows["barlow"]["fvcore_macs"]
    assert rows["vicreg"]["per_device_macs"] == 4 * rows["vicreg"]["fvcore_macs"]
    assert rows["ntxent_4"]["fvcore_macs"] == 4 * 32 * 32 * 16


def test_flops_rejects_uneven_split(bench_flops: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_flops.main(["--n", "100", "--devices", "3"])
    err = capsys.readouterr().err
    assert "--n 100 does not divide by --devices 3" in err and "--n 99 or --n 102" in err
    with pytest.raises(SystemExit):
        bench_flops.main(["--n", "8", "--devices", "8"])
    assert "leaves 1 sample per device" in capsys.readouterr().err


def test_flops_help_shows_defaults(bench_flops: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_flops.main(["--help"])
    out = capsys.readouterr().out
    for default in ("(default: 2048)", "(default: 8192)", "(default: 8)"):
        assert default in out


def test_flops_names_the_extra_when_fvcore_is_missing(
    bench_flops: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(bench_flops, "_missing_requirements", lambda: ["fvcore"])
    with pytest.raises(SystemExit) as info:
        bench_flops.main(["--n", "32", "--d", "16", "--devices", "4"])
    assert info.value.code == 2
    assert 'needs fvcore, which the bench extra installs: pip install -e ".[bench]"' in (
        capsys.readouterr().err
    )


# --- speed.py writes its files ----------------------------------------------------------------


def test_speed_writes_json_markdown_and_plots(bench_speed: ModuleType, tmp_path: Path) -> None:
    argv = [
        "--device", "cpu", "--n", "8", "16", "--d", "16", "32", "--dtypes", "float32",
        "--grid", "full", "--losses", "smi_torch", "smi_reference", "barlow",
        "--min-run-time", "0.01", "--max-spread", "1000", "--max-load", "1000",
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert bench_speed.main(argv) == 0
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["device"] == "cpu" and payload["accepted"] is True
    assert {"cpu", "cores", "cores_usable", "torch_threads", "torch", "python"} <= set(
        payload["machine"]
    )
    assert {(r["n"], r["d"]) for r in payload["roofline"]} == {(8, 16), (8, 32), (16, 16), (16, 32)}
    assert len(payload["results"]) == 4 * 3
    for row in payload["results"]:
        assert row["status"] == "ok", row
        assert row["time_ms"] > 0 and row["peak_bytes"] > 0
        assert row["time_min_ms"] <= row["time_q1_ms"] <= row["time_ms"] <= row["time_q3_ms"]
        assert row["time_q3_ms"] <= row["time_max_ms"] and row["rounds"] >= 10
        assert row["accepted"] is True and row["spread"] >= 0
    torch_rows = [row for row in payload["results"] if row["loss"] == "smi_torch"]
    assert all(row["roofline_pct"] > 0 for row in torch_rows)
    reference_rows = [row for row in payload["results"] if row["loss"] == "smi_reference"]
    assert all(row["speedup_vs_reference"] == 1.0 for row in reference_rows)
    page = (tmp_path / "speed.md").read_text()
    assert "| N | D | loss | time ms | IQR ms | spread % |" in page
    assert f"Machine: {payload['machine']['cpu']}" in page and "Noise: spread" in page
    assert payload["machine"]["torch"] in page
    assert "Summary: " in page and "N = 16, D = 32" in page  # the middle of each sweep
    for name in ("time_vs_n.png", "time_vs_d.png", "memory_vs_n.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _fake_timer(per_step_seconds: list[float]):
    def timer(steps, min_run_time, min_rounds=5):
        return {key: list(per_step_seconds) for key in steps}

    return timer


def test_speed_rejects_a_noisy_run(
    bench_speed: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = []

    def noisy(steps, min_run_time, min_rounds=5):
        passes.append(1)
        return _fake_timer([1e-3, 1e-3, 1e-3, 5e-3, 9e-3, 9e-3, 9e-3])(steps, min_run_time)

    monkeypatch.setattr(bench_speed.harness, "time_cpu_interleaved", noisy)
    argv = [
        "--device", "cpu", "--n", "8", "--d", "16", "--losses", "smi_torch", "smi_reference",
        "--retries", "2", "--max-load", "1000", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    assert bench_speed.main(argv) == 1
    assert len(passes) == 3  # the first pass and two retries
    assert not (tmp_path / "speed.json").exists()  # the results in out-dir stay as they were
    payload = json.loads((tmp_path / "rejected" / "speed.json").read_text())
    assert payload["accepted"] is False and "spread more than 10%" in payload["rejected_because"][0]
    assert all(row["accepted"] is False and row["attempts"] == 3 for row in payload["results"])
    page = (tmp_path / "rejected" / "speed.md").read_text()
    assert "REJECTED" in page and "(rejected)" in page and "Summary:" not in page


def test_speed_accepts_a_steady_run_and_checks_theload_benchmark(
    bench_speed: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        bench_speed.harness, "time_cpu_interleaved", _fake_timer([1e-3] * 6 + [1.05e-3])
    )
    argv = [
        "--device", "cpu", "--n", "8", "--d", "16", "--losses", "smi_torch", "smi_reference",
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    monkeypatch.setattr(bench_speed, "_load_average", lambda: [0.0, 0.0, 0.0])
    assert bench_speed.main(argv) == 0
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["accepted"] is True
    assert all(row["attempts"] == 1 and row["spread"] == 0.0 for row in payload["results"])
    page = (tmp_path / "speed.md").read_text()
    assert "SMI PyTorch path 1.0 ms (IQR 1.0-1.0), 1.00x" in page
    # the same run on a busy machine is rejected, whatever the spread says
    monkeypatch.setattr(bench_speed, "_load_average", lambda: [100.0, 100.0, 100.0])
    assert bench_speed.main(argv) == 1
    payload = json.loads((tmp_path / "rejected" / "speed.json").read_text())
    assert "the machine was busy before the run" in payload["rejected_because"][0]


def test_speed_help_shows_defaults(bench_speed: ModuleType, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_speed.main(["--device", "cpu", "--help"])
    out = capsys.readouterr().out
    assert "(default: 0.1)" in out and "(default: 10)" in out


def test_speed_records_failures(bench_speed: ModuleType) -> None:
    def broken(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    harness = bench_speed.harness
    chosen = [harness.Loss("broken", "broken", broken, False, False, "none"), harness.SMI_TORCH]
    rate, rows = bench_speed.measure_point(chosen, 4, 4, torch.float32, torch.device("cpu"), 0.0)
    assert rows[0]["status"] == "oom" and rows[0]["time_ms"] is None
    assert rows[1]["status"] == "ok" and rows[1]["time_ms"] > 0 and rate > 0

    calls = []

    def fails_later() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    timer = bench_speed.harness.time_cpu_interleaved
    times = timer({"late": fails_later, "fine": lambda: None}, 0.0)
    assert len(times["late"]) == 2 and len(times["fine"]) == 5
    assert isinstance(times["late:error"][0], RuntimeError)


def test_live_memory_sees_saved_tensors() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import harness

    n = 64
    z_a = torch.randn(n, 32, requires_grad=True)
    z_b = torch.randn(n, 32, requires_grad=True)
    # the N x N product is alive at once with its square (saved for backward): >= 2 N^2 floats
    peak = harness.measure_live_peak(lambda a, b: (a @ b.T).pow(2).sum(), z_a, z_b)
    assert peak >= 2 * n * n * 4


# --- the reference baselines -------------------------------------------------------------------


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _views(n: int = 24, d: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=generator, dtype=torch.float64)
    z_b = z_a + 0.7 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return 3.0 * z_a + 1.0, z_b - 2.0


def _assert_same_values_and_gradients(fn, other, *args) -> None:
    inputs = [arg.clone().requires_grad_() for arg in args]
    twins = [arg.clone().requires_grad_() for arg in args]
    value, expected = fn(*inputs), other(*twins)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(value, inputs)
    expected_grads = torch.autograd.grad(expected, twins)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


def test_barlow_matches_batchnorm_module_version() -> None:
    def barlow_with_module(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        bn = torch.nn.BatchNorm1d(z_a.shape[1], affine=False, dtype=torch.float64).train()
        c = torch.einsum("ik,il->kl", bn(z_a), bn(z_b)) / z_a.shape[0]
        diagonal = torch.diagonal(c)
        return ((1 - diagonal) ** 2).sum() + 5.1e-3 * ((c**2).sum() - (diagonal**2).sum())

    _assert_same_values_and_gradients(reference.barlow_twins_loss, barlow_with_module, *_views())


def test_barlow_batch_norm_op_variant_matches() -> None:
    _assert_same_values_and_gradients(
        reference.barlow_twins_loss, reference.barlow_twins_loss_batch_norm, *_views()
    )


def test_barlow_decorrelated_identical_views() -> None:
    # columns of a Hadamard matrix (the all-ones one dropped): zero mean, unit variance,
    # orthogonal; c = I / (1 + eps) exactly, so the off-diagonal term vanishes
    z = _hadamard(16)[:, 1:]
    d = z.shape[1]
    eps = reference.barlow.BATCH_NORM_EPS
    expected = d * (1.0 - 1.0 / (1.0 + eps)) ** 2
    torch.testing.assert_close(
        reference.barlow_twins_loss(z, z, lambda_param=1e6), torch.tensor(expected).double()
    )
    assert reference.barlow.off_diagonal(torch.arange(9.0).view(3, 3)).tolist() == [
        1.0, 2.0, 3.0, 5.0, 6.0, 7.0
    ]  # fmt: skip


def test_vicreg_matches_direct_formulas() -> None:
    def vicreg_direct(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        d = z_a.shape[1]
        invariance = ((z_a - z_b) ** 2).mean()
        variance = sum(F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean() / 2 for z in (z_a, z_b))
        covariance = 0.0
        for z in (z_a, z_b):
            cov = torch.cov(z.T)  # unbiased, like the official (N - 1) divisor
            covariance = covariance + ((cov**2).sum() - (torch.diagonal(cov) ** 2).sum()) / d
        return 25 * invariance + 25 * variance + covariance

    small = [0.2 * view for view in _views(seed=1)]  # std below 1: the hinge is active
    _assert_same_values_and_gradients(reference.vicreg_loss, vicreg_direct, *small)
    _assert_same_values_and_gradients(reference.vicreg_loss, vicreg_direct, *_views(seed=2))


def test_vicreg_zero_for_identical_decorrelated_unit_views() -> None:
    z = 2.0 * _hadamard(16)[:, 1:]  # std 2 > 1, orthogonal centred columns
    assert reference.vicreg_loss(z, z).item() == 0.0


def test_ntxent_matches_2n_similarity_matrix_version() -> None:
    def ntxent_2n(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5):
        n = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        similarity = z @ z.T / temperature
        similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool), -math.inf)
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(similarity, positives)

    _assert_same_values_and_gradients(reference.ntxent_loss, ntxent_2n, *_views())


def test_ntxent_four_products_matches_three(bench_flops: ModuleType) -> None:
    _assert_same_values_and_gradients(
        reference.ntxent_loss, reference.ntxent_loss_four_products, *_views()
    )
    n, d = 16, 40
    assert bench_flops.fvcore_count(reference.ntxent_loss_four_products, n, d) == {
        "matmul": 4 * n * n * d
    }


def test_ntxent_orthogonal_identical_views_known_value() -> None:
    n, t = 8, 0.5
    z = torch.eye(n, dtype=torch.float64)  # positive similarity 1, every negative 0
    expected = -1 / t + math.log(math.exp(1 / t) + (2 * n - 2))
    torch.testing.assert_close(
        reference.ntxent_loss(z, z, temperature=t), torch.tensor(expected).double()
    )


@pytest.mark.parametrize(
    "fn",
    [
        reference.barlow_twins_loss,
        reference.barlow_twins_loss_batch_norm,
        reference.vicreg_loss,
        reference.ntxent_loss,
        reference.ntxent_loss_four_products,
    ],
)
def test_baselines_reject_mismatched_views(fn) -> None:
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.randn(4, 3), torch.randn(5, 3))

"""benchmarks/gpu_check.py on this CPU: its time budget and the smoke run.

The budget is hard and shared in proportion: every stage that runs gets its slot, a short
budget included; a stage or a sweep point that reaches the end of its slot is cut. The smoke run
goes the way a GPU machine without a package index runs the check: from the checkout
(``PYTHONPATH=.``), without the ``bench`` extra (fvcore, matplotlib, tabulate and tqdm made
unimportable), and into a temporary folder, never into the committed results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from benchmark_modules import load as load_benchmark

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def check():
    return load_benchmark("gpu_check")


def test_default_budget_fits_a_rented_gpu(check) -> None:
    """The README's arithmetic against 900 s of GPU time: a start of up to 120 s, 15 s to bring
    each call's results back, and one rerun; for the default run, and for the two-call plan
    (validation 150 s, then speed 240 s) with a rerun of the longer call."""
    start, transfer = 120, 15
    assert check.BUDGET_S <= 300
    assert start + 2 * (check.BUDGET_S + transfer) <= 900
    assert start + (150 + transfer) + 2 * (240 + transfer) <= 900


@pytest.mark.parametrize("budget", [60, 150, 300])
def test_every_stage_gets_a_share_in_proportion(check, budget: int) -> None:
    running = list(check.SHARES)
    ends = check.schedule(0.0, budget, running)
    begin = 0.0
    for name in running:
        slot, begin = ends[name] - begin, ends[name]
        assert slot == pytest.approx(budget * check.SHARES[name] / sum(check.SHARES.values()))
    assert ends[running[-1]] == pytest.approx(budget)
    assert ends["tests"] >= 0.25 * budget  # --budget 60: 18 s for the tests


def test_a_skipped_stage_gives_its_share_to_the_others(check) -> None:
    speed_only = ["rates", "sweep", "model", "report"]
    ends = check.schedule(0.0, 240, speed_only)
    assert ends["report"] == pytest.approx(240)
    assert ends["sweep"] - ends["rates"] == pytest.approx(240 * 0.30 / 0.50)


def test_a_stage_is_cut_at_the_end_of_its_slot(check, tmp_path: Path) -> None:
    def forever() -> dict:
        while True:
            try:
                time.sleep(0.01)
            except Exception:  # the measuring code's handlers do not swallow the cut
                pass

    start = time.monotonic()
    stage = check.run_stage("stuck", forever, tmp_path / "log", limit=0.5)
    assert time.monotonic() - start < 2
    assert stage.status == "timeout" and stage.failed and "cut" in stage.detail


def test_a_sweep_point_is_cut_at_the_end_of_its_part(check, monkeypatch) -> None:
    import harness  # on sys.path once gpu_check is loaded
    import torch

    def slow(chosen, *args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(harness, "measure_point", slow)
    points = [check.Point("a", 8, 16, "float32", "highest", ("smi_reference",))] * 2
    start = time.monotonic()
    data = check.stage_sweep(torch.device("cpu"), points, time.monotonic() + 5, 0.0, smoke=True)
    assert time.monotonic() - start < 7
    assert len(data["cut"]) == 2 and not data["rows"]


def test_cpu_smoke_from_the_checkout_without_the_bench_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "no-bench-extra"
    for name in ("fvcore", "matplotlib", "tabulate", "tqdm"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {name!r}'!r}, name={name!r})\n"
        )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), "."])
    before = sorted(RESULTS.rglob("*"))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    written = re.search(r"wrote (\S+): gpu_check.json", output)
    out_dir = Path(written.group(1)) if written else None
    try:
        assert result.returncode == 0, output[-4000:]
        assert seconds < 120, f"{seconds:.0f} s"
        assert out_dir is not None and out_dir.is_relative_to(tempfile.gettempdir())
        assert sorted(RESULTS.rglob("*")) == before  # nothing into the committed results
        env_json = json.loads((out_dir / "env.json").read_text())
        assert not any(env_json["bench_extra"].values())  # the bench extra was not there
        assert Path(env_json["smi_kernels_from"]) == ROOT / "smi_kernels"
        payload = json.loads((out_dir / "gpu_check.json").read_text())
        status = {s["name"]: s["status"] for s in payload["stages"]}
        assert status == {
            "environment": "passed",
            "tests": "passed",
            "sanitizer": "skipped",
            "rates": "passed",
            "sweep": "passed",
            "model": "passed",
            "report": "skipped",  # no matplotlib: no plots, nothing else missing
        }
        assert payload["sweep"]["rows"]  # (on a loaded machine a point may be cut at its part)
    finally:
        if out_dir is not None and out_dir.is_relative_to(tempfile.gettempdir()):
            shutil.rmtree(out_dir, ignore_errors=True)

"""The Triton kernels compiled for sm_90 and sm_80 on this CPU-only machine (no driver needed).

A representative subset of ``tools/kernel_report.py`` (the full matrix is its committed
output under ``benchmarks/results/compile/``): the default configs of the Gram kernels, at the
paper's per-GPU batch (P = 512, split K) and at P = 4096, in bfloat16, TF32 and IEEE float32,
plus every autotune candidate of the bfloat16 P = 4096 row on sm_90, and the sharded mode's
kernels (rank 0 of 8, P_local = 512, bfloat16, every candidate). They must compile, fit the
architecture's shared memory and spill nothing; the bfloat16, float16 and TF32 Gram kernels must
use wgmma on sm_90 from P >= 2048. The compile runs in a subprocess: the test session runs Triton
under its interpreter, which replaces the kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
sys.path.insert(0, {bench!r})
import kernel_report as kr
gram = {{"gram_forward_kernel", "gram_epilogue_kernel", "gram_backward_kernel"}}
rows = []
rows += kr.run(["sm90"], ["bfloat16", "float32-tf32"], [kr.Problem(2, 2048, 8192)], every=False,
               kernels=gram, echo=False)
rows += kr.run(["sm90"], ["bfloat16"], [kr.Problem(2, 2048, 8192)], every=True, kernels=gram,
               echo=False)
rows += kr.run(["sm90", "sm80"], ["bfloat16"], [kr.Problem(2, 256, 8192)], every=False,
               kernels=gram, echo=False)
rows += kr.run(["sm80"], ["float32-ieee", "float32-tf32"], [kr.Problem(2, 2048, 1000)],
               every=False, kernels=gram, echo=False)
rows += kr.run(["sm90"], ["float16"], [kr.Problem(2, 2048, 8192)], every=False,
               kernels={{"standardize_kernel", "finalize_kernel"}}, echo=False)
rows += kr.run(["sm90", "sm80"], ["bfloat16"], [kr.Problem(2, 256, 8192, world=8)], every=True,
               kernels=gram | {{"finalize_kernel"}}, echo=False)
print(json.dumps(rows, default=str))
"""


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(bench=str(REPO / "tools"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def describe(row: dict) -> str:
    world = f" of W={row['world']}" if row.get("world", 1) > 1 else ""
    return f"{row['arch']} {row['setting']} P={row['rows']}{world} {row['which']} {row['kernel']}"


def test_every_launch_compiles(rows: list[dict]) -> None:
    assert rows
    failed = [describe(r) + ": " + r.get("error", "") for r in rows if not r["compiles"]]
    assert not failed


def test_shared_memory_fits_every_candidate(rows: list[dict]) -> None:
    over = [f"{describe(r)}: {r['shared']} > {r['shared_limit']}" for r in rows if not r["fits"]]
    assert not over


def test_default_configs_spill_nothing(rows: list[dict]) -> None:
    spills = [
        f"{describe(r)}: {r['spill_stores']}/{r['spill_loads']} B at {r['registers']} registers"
        for r in rows
        if r["which"] == "default" and (r["spill_stores"] or r["spill_loads"])
    ]
    assert not spills


def test_tensor_core_gram_kernels_use_wgmma_on_sm90(rows: list[dict]) -> None:
    gram = ("gram_forward_kernel", "gram_backward_kernel")
    checked = [
        r
        for r in rows
        if r["arch"] == "sm90"
        and r["rows"] >= 2048
        and r["kernel"] in gram
        and r["setting"] in ("bfloat16", "float16", "float32-tf32")
    ]
    assert len(checked) >= 4
    assert all(r["mma"] == "wgmma" for r in checked), [describe(r) for r in checked]


def test_sharded_kernels_compile_to_tensor_cores(rows: list[dict]) -> None:
    """The SHARDED variants of the Gram and backward kernels: wgmma on sm_90, mma.sync on sm_80
    (spills and shared memory are checked with the others above)."""
    gram = ("gram_forward_kernel", "gram_backward_kernel")  # (the split-K epilogue has no dot)
    sharded = [r for r in rows if r.get("world", 1) == 8 and r["kernel"] in gram]
    assert {r["kernel"] for r in sharded} == set(gram)
    for r in sharded:
        assert r["mma"] == ("wgmma" if r["arch"] == "sm90" else "mma.sync"), describe(r)


def test_split_k_runs_at_the_paper_batch(rows: list[dict]) -> None:
    """P = 512: the Gram grid is split over D so that it covers the SMs."""
    forward = [r for r in rows if r["rows"] == 512 and r["kernel"] == "gram_forward_kernel"]
    assert forward
    for r in forward:
        sms = 132 if r["arch"] == "sm90" else 108
        assert r["grid"][0] >= sms, describe(r)


REFUSAL = """
import sys
sys.path.insert(0, {bench!r})
import kernel_report as kr

def broken(launch, cc):
    raise AttributeError("'JITFunction' object has no attribute '_pack_args'")

kr.compile_launch = broken
sys.exit(kr.main(["--quick", "--write", "--out", {out!r}]))
"""


def test_a_toolchain_it_cannot_drive_is_refused_in_one_line(tmp_path: Path) -> None:
    """A Triton API the tool relies on that has moved: one line, nothing compiled, nothing
    written (not a report of every launch failing)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = REFUSAL.format(bench=str(REPO / "tools"), out=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2
    assert len(output.splitlines()) == 1 and "_pack_args" in output, output
    assert not list(tmp_path.iterdir())

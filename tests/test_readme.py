"""The README holds: its quickstart runs as pasted, its API table lists every export, it names
the paper and says up front that the loss is this project's reading, and every number it quotes
comes from a committed results file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import smi_kernels

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FLOPS_TXT = ROOT / "benchmarks" / "results" / "flops" / "flops.txt"
SPEED_DIR = ROOT / "benchmarks" / "results" / "cpu"
EXAMPLE_MD = ROOT / "examples" / "results" / "train_ssl.md"
EXAMPLE_JSON = ROOT / "examples" / "results" / "train_ssl.json"
REGENERATE = "python benchmarks/speed.py"


def section(title: str) -> str:
    """The text of the README section ``## title``, up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match is not None, f"no section {title!r}"
    return match.group(1)


def block(name: str) -> str:
    """The text between ``<!-- name:begin ... -->`` and ``<!-- name:end -->``."""
    match = re.search(rf"<!-- {name}:begin[^>]*-->(.*?)<!-- {name}:end -->", README, re.S)
    assert match is not None, f"no {name} block"
    return match.group(1)


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_quickstart_runs_as_pasted() -> None:
    code = re.search(r"```python\n(.*?)```", section("Quickstart"), re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README quickstart", "exec"), namespace)
    loss = namespace["loss"]
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and bool(torch.isfinite(loss))
    assert namespace["z_a"].grad is not None  # type: ignore[union-attr]


def test_api_table_lists_every_export() -> None:
    api = section("API")
    for name in smi_kernels.__all__:
        assert re.search(rf"\| `{re.escape(name)}[`(]", api), f"{name} missing from the API table"
    for module in ("smi_kernels.reference", "smi_kernels.memory", "smi_kernels.flops"):
        assert f"`{module}`" in api


def test_paper_named_and_reading_stated_at_the_top() -> None:
    top = README[: README.index("## Install")]
    title = "SMI: Efficient Self-Supervised Learning via Mutual-Information-Inspired Dependency"
    assert title in normalised(top)
    assert "2606.08332" in top
    assert "equations were lost" in top and "[The loss](#the-loss)" in top
    assert "## The loss" in README


def test_gpu_section() -> None:
    gpu = normalised(section("With a GPU"))
    for phrase in (
        "float32, bfloat16 or float16",
        'torch.set_float32_matmul_precision("high")',
        '"highest"',
        "python benchmarks/gpu_check.py",
        "benchmarks/results/<gpu-name>/",
        "smi_kernels/_triton/__init__.py",
    ):
        assert phrase in gpu, phrase


def test_extras_named() -> None:
    install = normalised(section("Install"))
    for extra in ("`bench`", "`examples`", "`dev`", '".[triton]"'):
        assert extra in install, extra
    assert "benchmarks/speed.py" in README and "benchmarks/results/" in README


def test_flops_numbers_come_from_the_committed_output() -> None:
    quoted = re.findall(r"\d+\.\d{4}", block("flops"))
    assert len(quoted) >= 8
    committed = FLOPS_TXT.read_text()
    for number in quoted:
        assert number in committed, f"{number} is not in {FLOPS_TXT.relative_to(ROOT)}"


def test_speed_numbers_come_from_the_committed_results() -> None:
    text = block("speed")
    page = (SPEED_DIR / "speed.md").read_text()
    for number in re.findall(r"\d+(?:\.\d+)?(?= ms|x\b)", text):
        assert number in page, f"{number} is not in benchmarks/results/cpu/speed.md"
    summaries = [line for line in page.splitlines() if line.startswith("Summary: ")]
    for line in summaries:  # an accepted run's summary is quoted as it stands
        assert normalised(line) in normalised(text), (
            "paste the Summary line of benchmarks/results/cpu/speed.md into the README's speed "
            "block"
        )


def test_committed_speed_results_were_accepted() -> None:
    payload = json.loads((SPEED_DIR / "speed.json").read_text())
    if "accepted" not in payload:
        assert "predate" in block("speed")  # the README says so, and quotes no number
        pytest.skip(f"the committed CPU results predate the spread check; regenerate: {REGENERATE}")
    assert payload["accepted"] is True, payload.get("rejected_because")


def test_example_numbers_come_from_the_committed_results() -> None:
    text = block("example")
    report = EXAMPLE_MD.read_text()
    rows = [line.strip() for line in text.splitlines() if line.strip().startswith("| ")]
    assert len(rows) >= 10
    for row in rows:  # the tables are the report's rows, pasted
        assert row in report, f"{row!r} is not in {EXAMPLE_MD.relative_to(ROOT)}"
    prose = "\n".join(line for line in text.splitlines() if not line.strip().startswith("|"))
    quoted = re.findall(r"[+-]?\d+\.\d+", prose)
    assert len(quoted) >= 5
    for number in quoted:
        assert number in report, f"{number} is not in {EXAMPLE_MD.relative_to(ROOT)}"


def test_example_separates_and_was_run_as_documented() -> None:
    results = json.loads(EXAMPLE_JSON.read_text())
    assert not results["config"]["smoke"]
    assert results["config"]["seeds"] >= 5
    # the stand-in tells learning from no learning: the untrained encoder's linear accuracy is
    # at least 10 points below the best SSL method's
    assert results["separation"]["gap"] >= 0.10
    minutes = results["timing"]["total_seconds"] / 60
    assert minutes <= 45
    assert f"{minutes:.1f} min" in normalised(block("example"))
    assert set(results["final"]) >= {"smi", "barlow", "vicreg", "ntxent", "random", "supervised"}


def test_alignment_optimum_stated_as_computed() -> None:
    loss = normalised(section("The loss"))
    results = json.loads(EXAMPLE_JSON.read_text())["alignment_optimum"]
    rho = math.sqrt(1 + 1e-4 - math.exp(-2))
    assert f"{rho:.3f}" in loss and "sqrt(1 + eps - e^-2)" in loss
    assert results["eps"] == 1e-4 and abs(results["rho"] - rho) < 1e-12
    # identical views: M_ii = -log(eps) / 2, so each sample costs (1 + log(eps) / 2)^2
    n = results["n"]
    assert abs(results["identical_alignment"] - n * (1 + math.log(1e-4) / 2) ** 2) < 1e-2
    assert f"{results['identical_loss']:.0f}" in loss
    assert f"N = {n}, D = {results['d']}" in loss


def test_compile_and_model_numbers_come_from_the_committed_results() -> None:
    compile_dir = ROOT / "benchmarks" / "results" / "compile"
    for version in ("3.9.0", "3.6.0"):
        report = (compile_dir / f"triton-{version}.md").read_text()
        totals = json.loads(re.search(r"Totals: (\{.*\})", report).group(1))
        assert f"all {totals['launches']} launches" in normalised(block("compile"))
        assert totals["fail_to_compile"] == totals["over_shared_memory"] == 0
        assert totals["with_spills"] == 0
        assert version in block("compile")
    model = (ROOT / "benchmarks" / "results" / "model" / "h100.md").read_text()
    quoted = re.findall(r"\d+\.\d+", block("model"))
    assert quoted
    for number in quoted:
        assert number in model, number

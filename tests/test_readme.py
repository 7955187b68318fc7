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
COMPILE_DIR = ROOT / "benchmarks" / "results" / "compile"
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


def compile_totals(version: str) -> dict[str, int]:
    """The Totals line of the committed compile report of triton ``version``."""
    report = (COMPILE_DIR / f"triton-{version}.md").read_text()
    return json.loads(re.search(r"Totals: (\{.*\})", report).group(1))


def release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def version_rows() -> dict[str, list[str]]:
    """The rows of the README's version matrix, by triton version."""
    rows = {}
    for line in block("versions").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if re.fullmatch(r"\d+\.\d+\.\d+", cells[0]):
            rows[cells[0]] = cells
    return rows


def test_version_matrix_quotes_every_committed_compile_report() -> None:
    """A row for every committed report and a report for every row; its columns are the report's
    Totals: launches, failing to compile, over shared memory, spilling (of them defaults)."""
    rows = version_rows()
    committed = {path.stem.removeprefix("triton-") for path in COMPILE_DIR.glob("triton-*.md")}
    assert set(rows) == committed
    for version, cells in rows.items():
        totals = compile_totals(version)
        launches, failing, over, spilling = cells[2:6]
        assert int(launches) == totals["launches"], version
        assert int(failing) == totals["fail_to_compile"], version
        assert int(over) == totals["over_shared_memory"], version
        assert spilling == f"{totals['with_spills']} ({totals['default_with_spills']})", version


def test_version_matrix_spans_the_declared_versions() -> None:
    """The oldest row is the triton of the oldest torch (the floor of the ``triton`` extra), and
    the README names the ``dev`` extra's floor, the lowest triton CI runs the interpreter on."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    def floor(requirements: list[str]) -> str:
        (spec,) = [r for r in requirements if r.startswith("triton")]
        return re.search(r">=([\d.]+)", spec).group(1)

    oldest = min(version_rows(), key=release)
    assert release(oldest)[:2] == release(floor(extras["triton"]))
    install = normalised(section("Install"))
    assert f"triton >= {floor(extras['dev'])}" in install
    assert f"lowest it allows, {floor(extras['dev'])}.0" in install


def test_compile_and_model_numbers_come_from_the_committed_results() -> None:
    """Every triton of the matrix: every launch compiles and fits, no default config spills,
    and the autotune candidates that spill are counted in the README with their size."""
    text = normalised(block("compile"))
    for version in version_rows():
        totals = compile_totals(version)
        assert f"all {totals['launches']} launches" in text
        assert totals["fail_to_compile"] == totals["over_shared_memory"] == 0
        assert totals["default_with_spills"] == 0
        assert version in text
        rows = json.loads((COMPILE_DIR / f"triton-{version}.json").read_text())["rows"]
        sizes = {r["spill_stores"] for r in rows if r["compiles"] and r["spill_stores"]}
        if totals["with_spills"]:
            (size,) = sizes
            assert f"{version}: {totals['with_spills']} launches, {size} B each" in text
    model = (ROOT / "benchmarks" / "results" / "model" / "h100.md").read_text()
    quoted = re.findall(r"\d+\.\d+", block("model"))
    assert quoted
    for number in quoted:
        assert number in model, number

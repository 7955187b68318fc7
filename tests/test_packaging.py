"""What a user installs: the declared requirements, the wheel and the sdist.

The wheel and the sdist are built once from a copy of the working tree (``python -m build
--no-isolation``: the setuptools of this environment, no download). The check that the declared
minimum torch resolves with the other requirements asks PyPI (``pip install --dry-run``): it runs
only with ``SMI_KERNELS_NETWORK_TESTS=1``, which ``.ci/run`` sets when PyPI answers.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def torch_requirement() -> Requirement:
    (requirement,) = [Requirement(r) for r in PROJECT["dependencies"] if r.startswith("torch")]
    return requirement


def minimum(requirement: Requirement) -> Version:
    (spec,) = [spec for spec in requirement.specifier if spec.operator == ">="]
    return Version(spec.version)


# -- the declared requirements ------------------------------------------------------------------


def test_requirements_are_what_the_package_imports() -> None:
    # torch is the one requirement; triton is an extra (torch's CUDA wheels bring their own, a
    # CPU install never imports it); numpy is not imported at all
    names = {Requirement(r).name for r in PROJECT["dependencies"]}
    assert names == {"torch"}
    extras = PROJECT["optional-dependencies"]
    assert {Requirement(r).name for r in extras["triton"]} == {"triton"}
    examples = {Requirement(r).name for r in extras["examples"]}
    assert examples >= {"mnist1d", "scikit-learn", "matplotlib"}
    stdlib = set(sys.stdlib_module_names)
    lazy_optional = {"triton", "fvcore"}  # imported inside functions, from an extra
    for path in (ROOT / "smi_kernels").rglob("*.py"):
        tree = ast.parse(path.read_text())
        in_functions = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                where = f"{path.relative_to(ROOT)} imports {module}"
                in_triton_path = path.parent.name == "_triton"
                if top in stdlib | {"torch", "smi_kernels"} or (top == "triton" and in_triton_path):
                    continue
                assert top in lazy_optional and id(node) in in_functions, where
                if top == "triton":  # outside the Triton path: only loss.py's lazy checks
                    assert path.name == "loss.py", where


def test_cpu_path_does_not_import_triton() -> None:
    code = (
        "import sys, torch; from smi_kernels import smi_loss; "
        "smi_loss(torch.randn(8, 16), torch.randn(8, 16)).item(); "
        "assert 'triton' not in sys.modules, 'triton imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_build_backend_supports_the_license_expression() -> None:
    # setuptools < 77 refuses ``license = "MIT"`` ("must be valid exactly by one definition")
    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert setuptools.name == "setuptools" and minimum(setuptools) >= Version("77")
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # PEP 639


# -- the wheel and the sdist --------------------------------------------------------------------


def _source_tree(destination: Path) -> Path:
    """The files a fresh clone (or the sdist) has: tracked and untracked-but-not-ignored."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        for name in filter(None, listed):
            source = ROOT / name.decode()
            if source.is_file():
                target = destination / name.decode()
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    else:
        ignored = shutil.ignore_patterns(
            "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info"
        )
        shutil.copytree(ROOT, destination, ignore=ignored, dirs_exist_ok=True)
    return destination


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs the build package (the dev extra)")
    source = _source_tree(tmp_path_factory.mktemp("clone"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_metadata_and_license(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "smi_kernels/reference.py" in names and "smi_kernels/py.typed" in names
    assert not any(n.startswith(("reference/", "tests/", "benchmarks/")) for n in names)
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Author"] == "smi-kernels developers"
    classifiers = metadata.get_all("Classifier")
    for classifier in (
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3.11",
    ):
        assert classifier in classifiers
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    unconditional = {r.name for r in requires if r.marker is None}
    assert unconditional == {"torch"}  # no numpy, no triton for a CPU install
    assert set(metadata.get_all("Provides-Extra")) >= {"triton", "bench", "examples", "dev"}


def test_wheel_runs_the_quickstart_outside_the_repository(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = built
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    proc = subprocess.run(
        [*install, "--target", str(site), str(wheel)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("```python\n", 1)[1].split("```")[0]
    check = (
        "\nimport smi_kernels, pathlib\n"
        f"assert pathlib.Path(smi_kernels.__file__).is_relative_to({str(site)!r})\n"
        "print(float(loss))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    env["PYTHONPATH"] = str(site)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", quickstart + check],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def test_sdist_carries_what_its_tests_need(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, sdist = built
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.iterdir()
    for needed in (
        "LICENSE",
        "conftest.py",
        "reference/smi.py",
        "tests/test_messages.py",
        "benchmarks/flops.py",
        "benchmarks/results/flops/flops.txt",
        "examples/train_ssl.py",
    ):
        assert (unpacked / needed).is_file(), needed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(unpacked)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and "collected" in summary, proc.stdout[-3000:]
    assert not re.search(r"\d+ errors?", summary), summary


# -- the declared minimum resolves (PyPI) -------------------------------------------------------


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("SMI_KERNELS_NETWORK_TESTS") != "1",
    reason="asks PyPI; set SMI_KERNELS_NETWORK_TESTS=1 (.ci/run does when PyPI answers)",
)
def test_declared_minimum_resolves(tmp_path: Path) -> None:
    # the oldest torch the package declares, with every other requirement and the triton extra:
    # pip resolves metadata only (nothing is downloaded beyond it, nothing installed)
    torch_min = f"torch=={minimum(torch_requirement())}"
    others = [r for r in PROJECT["dependencies"] if not r.startswith("torch")]
    others += PROJECT["optional-dependencies"]["triton"]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), torch_min, *others]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert Version(resolved["torch"]) == minimum(torch_requirement())
    if sys.platform.startswith("linux"):
        (triton,) = [Requirement(r) for r in PROJECT["optional-dependencies"]["triton"]]
        assert Version(resolved["triton"]) in triton.specifier

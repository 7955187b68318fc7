"""examples/train_ssl.py: the MNIST-1D study's ``--smoke`` run (the whole pipeline, its own
checks, the files, the committed results untouched), its pieces (data cache, split,
augmentations) and its messages for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPT = EXAMPLES / "train_ssl.py"
MODULES = ("train_ssl.py", "ssl_data.py", "ssl_train.py", "ssl_report.py")
PLOTS = ("eigenspectrum", "grad_norm", "ratio", "lambda_std", "lambda_accuracy")

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")
pytest.importorskip("mnist1d")


@pytest.fixture(scope="module")
def study():
    """The example's modules, imported from examples/."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import ssl_data
        import train_ssl

        yield train_ssl, ssl_data
    finally:
        sys.path.remove(str(EXAMPLES))


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_smoke_runs_the_whole_pipeline(tmp_path: Path) -> None:
    committed = digest(EXAMPLES / "results")
    out_dir = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out-dir", str(out_dir)]
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the script's own checks: SMI's alignment term falls, no run collapses, every accuracy is
    # well above chance, loss = alignment + lambda * redundancy, every file written
    assert "smoke checks passed" in proc.stdout
    assert "step" in proc.stderr  # the progress bar

    for name in PLOTS:
        png = out_dir / f"train_ssl_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    results = json.loads((out_dir / "train_ssl.json").read_text())
    assert set(results["final"]) == {"smi", "barlow", "vicreg", "ntxent", "supervised", "random"}
    for run in results["final"].values():
        assert len(run["linear"]) == len(run["few_shot"]) == len(run["knn"]) == 2  # two seeds
    assert len(results["paired"]["linear"]["diffs"]) == 2
    for name, grid in results["grid"].items():
        assert grid["winner"] in grid["values"], name
    assert results["eps_sweep"]["values"] == [1e-6, 1e-4, 1e-2]
    report = (out_dir / "train_ssl.md").read_text()
    for label in ("SMI", "Barlow Twins", "VICReg", "NT-Xent", "random init", "supervised"):
        assert f"| {label}" in report, label
    assert "Paired difference SMI - Barlow Twins" in report

    assert digest(EXAMPLES / "results") == committed  # the smoke run never writes there


def test_smoke_refuses_the_committed_results(study, capsys) -> None:
    train_ssl, _ = study
    with pytest.raises(SystemExit):
        train_ssl.parse_args(["--smoke", "--out-dir", str(EXAMPLES / "results")])
    assert "never writes into the committed results" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "smi,simclr"], "unknown method 'simclr'; choose from smi,barlow,vicreg"),
        (["--methods", ""], "unknown method"),
        (["--epochs", "0"], "--epochs must be positive, got 0"),
        (["--epochs", "-3"], "--epochs must be positive, got -3"),
        (["--batch-size", "0"], "--batch-size must be at least 2"),
        (["--batch-size", "-64"], "--batch-size must be at least 2"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--device", "tpu"], "--device must be cpu or cuda"),
    ],
)
def test_bad_arguments_are_named(study, capsys, argv: list[str], message: str) -> None:
    train_ssl, _ = study
    with pytest.raises(SystemExit) as stop:
        train_ssl.parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused(study, capsys) -> None:
    train_ssl, _ = study
    with pytest.raises(SystemExit):
        train_ssl.parse_args(["--device", "cuda"])
    assert "--device cuda, but CUDA is not available" in capsys.readouterr().err


def test_missing_mnist1d_names_the_extra(study, tmp_path: Path, monkeypatch) -> None:
    train_ssl, _ = study
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # import mnist1d raises ImportError
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(SystemExit) as stop:
        train_ssl.main(["--methods", "smi", "--out-dir", str(tmp_path / "out")])
    assert "needs the mnist1d package" in str(stop.value)
    assert 'pip install "smi-kernels[examples]"' in str(stop.value)
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_mnist1d_is_generated_once_and_cached(study, tmp_path: Path, monkeypatch) -> None:
    _, ssl_data = study
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = ssl_data.load_mnist1d()
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    assert sorted(set(data["y"].tolist())) == list(range(10))
    cached = tmp_path / "smi-kernels" / "mnist1d-default-seed42.npz"
    assert cached.is_file()
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # the second load needs no generator
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    again = ssl_data.load_mnist1d()
    for key, value in data.items():
        assert (again[key] == value).all(), key


def test_validation_split_is_stratified_and_disjoint(study) -> None:
    _, ssl_data = study
    x = torch.arange(1000, dtype=torch.float32).view(100, 10).numpy()
    y = torch.arange(100).remainder(10).numpy()
    fit, val = ssl_data.validation_split(x, y, 0.2, seed=0)
    assert len(fit.y) == 80 and len(val.y) == 20
    assert sorted(val.y.tolist()) == sorted(list(range(10)) * 2)  # two of every class
    fit_rows = {int(r) for r in fit.x[:, 0]}
    val_rows = {int(r) for r in val.x[:, 0]}
    assert not fit_rows & val_rows and len(fit_rows | val_rows) == 100


def test_augment_draws_different_views_reproducibly(study) -> None:
    _, ssl_data = study
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    aug = ssl_data.Augment()
    a = ssl_data.augment(x, torch.Generator().manual_seed(1), aug)
    b = ssl_data.augment(x, torch.Generator().manual_seed(1), aug)
    c = ssl_data.augment(x, torch.Generator().manual_seed(2), aug)
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b)  # the generator decides everything
    assert not torch.allclose(a, c)
    # no transformation at all: the signal comes back (resampling at the integer grid)
    still = ssl_data.Augment(0, 0, 0, 0, 0, 0, 0)
    assert torch.allclose(ssl_data.augment(x, torch.Generator(), still), x, atol=1e-5)
    # a shift alone resamples every position by the same offset, circularly: each sample's
    # weights sum to one, so every signal keeps its sum
    shift = ssl_data.Augment(8.0, 0, 0, 0, 0, 0, 0)
    moved = ssl_data.augment(x, torch.Generator().manual_seed(3), shift)
    assert torch.allclose(moved.sum(dim=1), x.sum(dim=1), atol=1e-4)
    assert not torch.allclose(moved, x)


def test_copy_outside_the_repository_needs_reference_or_smi_alone(tmp_path: Path) -> None:
    # the package importable, the repository's reference/ not: a user's copy of the scripts
    site = tmp_path / "site"
    site.mkdir()
    (site / "smi_kernels").symlink_to(ROOT / "smi_kernels", target_is_directory=True)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in MODULES:
        (copy / name).write_text((EXAMPLES / name).read_text())
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(site))
    cmd = [sys.executable, str(copy / "train_ssl.py"), "--methods", "smi,barlow"]
    cmd += ["--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "reference/ of the smi-kernels repository" in proc.stderr
    assert "--methods smi" in proc.stderr
    assert "MNIST-1D" not in proc.stdout and not (tmp_path / "out").exists()  # nothing ran

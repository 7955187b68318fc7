"""examples/train_ssl.py runs end to end (two steps per loss) and writes its curves and results;
``--help`` shows the defaults; a copy outside the repository stops before training when the
Barlow Twins reference it compares with is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_ssl.py"


def test_train_ssl_example_runs(tmp_path):
    out_dir = tmp_path / "out"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--epochs",
        "1",
        "--max-steps",
        "2",
        "--batch-size",
        "32",
        "--proj-dim",
        "64",
        "--losses",
        "smi,barlow",
        "--out-dir",
        str(out_dir),
    ]
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    png = out_dir / "train_ssl_curves.png"
    assert png.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000

    results = json.loads((out_dir / "train_ssl_results.json").read_text())
    assert set(results["probe"]) == {"smi", "barlow", "random"}
    for acc in results["probe"].values():
        assert 0.1 <= acc <= 1.0  # ten classes: anything but a broken pipeline beats chance
    smi = results["history"]["smi"]
    assert len(smi["loss"]) == 1
    # the logged terms are consistent: loss = alignment + lambda * redundancy
    lam = float(results["args"]["lambda_param"])
    assert abs(smi["loss"][0] - (smi["alignment"][0] + lam * smi["redundancy"][0])) < 1e-3 * abs(
        smi["loss"][0]
    )
    for key in ("embed_std", "grad_norm", "ratio"):
        assert smi[key][0] > 0
    barlow = results["history"]["barlow"]
    lam_b = float(results["args"]["barlow_lambda"])
    expected = barlow["alignment"][0] + lam_b * barlow["redundancy"][0]
    assert abs(barlow["loss"][0] - expected) < 1e-3 * abs(barlow["loss"][0])

    # the printed table names every encoder
    for name in ("smi", "barlow", "random init"):
        assert name in proc.stdout


def test_train_ssl_help_shows_defaults() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for default in ("(default: 50)", "(default: 256)", "(default: 0.005)", "(default: ssl_out)"):
        assert default in proc.stdout


def test_copy_outside_the_repository_checks_barlow_before_training(tmp_path: Path) -> None:
    # the package importable, the repository's reference/ not: a user's copy of the script
    site = tmp_path / "site"
    site.mkdir()
    (site / "smi_kernels").symlink_to(ROOT / "smi_kernels", target_is_directory=True)
    copy = tmp_path / "elsewhere" / "train_ssl.py"
    copy.parent.mkdir()
    copy.write_text(SCRIPT.read_text())
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(site))
    cmd = [sys.executable, str(copy), "--epochs", "1", "--max-steps", "1", "--batch-size", "32"]
    cmd += ["--proj-dim", "16", "--losses", "smi,barlow", "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "needs reference/barlow.py" in proc.stderr and "--losses smi" in proc.stderr
    assert "epoch" not in proc.stderr and "digits:" not in proc.stdout  # nothing trained
    assert not (tmp_path / "out").exists()

"""The shape of the repository: what git tracks, and how the package's modules depend on each
other.

* No build output or large binary is tracked: no file over 1 MB, no wheel, shared object or
  tarball (a clone stays small, and results are text or small plots).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the largest file the repository may track, in bytes
MAX_TRACKED_BYTES = 1_000_000
#: build outputs and archives, never tracked
BINARY_SUFFIXES = (".whl", ".so", ".tar.gz")


def tracked_files() -> list[Path]:
    """The files git tracks (skips outside a git checkout, e.g. in an unpacked sdist)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("git ls-files failed: not a git checkout")
    return [ROOT / name.decode() for name in listed.stdout.split(b"\0") if name]


def test_no_large_or_binary_file_is_tracked() -> None:
    files = tracked_files()
    assert files
    binaries = [f.relative_to(ROOT) for f in files if f.name.endswith(BINARY_SUFFIXES)]
    assert not binaries, f"build outputs tracked: {binaries}"
    large = [
        f"{f.relative_to(ROOT)} ({f.stat().st_size:,} bytes)"
        for f in files
        if f.is_file() and f.stat().st_size > MAX_TRACKED_BYTES
    ]
    assert not large, f"files over {MAX_TRACKED_BYTES:,} bytes tracked: {large}"

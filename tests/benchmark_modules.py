"""Load a script of ``benchmarks/`` or ``tools/`` as a module (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
TOOLS = ROOT / "tools"


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` (what a user runs) or else ``tools/<name>.py`` (the project's own
    evidence), imported as ``benchmarks_<name>``."""
    path = BENCHMARKS / f"{name}.py"
    if not path.exists():
        path = TOOLS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module

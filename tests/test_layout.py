"""The shape of the repository: what git tracks, and how the package's modules depend on each
other.

* No build output or large binary is tracked: no file over 1 MB, no wheel, shared object or
  tarball (a clone stays small, and results are text or small plots).
* The modules of ``smi_kernels`` import each other one way: the graph of their imports (those
  inside functions included) has no cycle.
* No module uses another's private names (``op._allocate``): what modules share is public
  inside the package (a private *module*, ``smi_kernels._triton``, is fine).
* The design document is the one the code cites: every "design.md, section N" (or "§N") names a
  section that ``docs/design.md`` has, and no message the package raises names a file the wheel
  does not ship.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "smi_kernels"

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


# -- the package's imports ---------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_module(dotted: str) -> str | None:
    """The package module a dotted name lies in (its longest prefix that is one), or None."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in SOURCES:
            return ".".join(parts[:end])
    return None


def imports(path: Path) -> list[tuple[str, str | None, str | None]]:
    """``(module, name, alias)`` of every import of a package module in ``path``, at module
    level or inside a function: ``from m import name as alias`` or ``import m as alias``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            if node.module and imported_module(node.module):
                for alias in node.names:
                    found.append((node.module, alias.name, alias.asname or alias.name))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if imported_module(alias.name):
                    found.append((alias.name, None, alias.asname))
    return found


def dependencies() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a package's ``__init__`` only when named)."""
    graph: dict[str, set[str]] = {}
    for name, path in SOURCES.items():
        targets = set()
        for module, imported, _ in imports(path):
            submodule = f"{module}.{imported}" if imported else None
            targets.add(submodule if submodule in SOURCES else imported_module(module))
        graph[name] = targets - {name}
    return graph


def test_package_imports_have_no_cycle() -> None:
    graph = dependencies()
    assert "smi_kernels.schedule" in graph["smi_kernels._triton.plan"]
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names() -> None:
    found = []
    for name, path in SOURCES.items():
        bound: dict[str, str] = {}  # local name -> the package module it stands for
        for module, imported, alias in imports(path):
            dotted = f"{module}.{imported}" if imported else module
            if imported and dotted not in SOURCES and private(imported):
                found.append(f"{name}: from {module} import {imported}")
            if dotted in SOURCES and alias:
                bound[alias] = dotted
            elif dotted in SOURCES:  # import smi_kernels.x binds smi_kernels
                bound[dotted.split(".")[0]] = dotted.split(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not private(node.attr):
                continue
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if not isinstance(base, ast.Name) or base.id not in bound:
                continue
            dotted = ".".join([bound[base.id], *chain])
            owner = imported_module(dotted)
            if owner is not None and owner != name and dotted not in SOURCES:
                found.append(f"{name}: {ast.unparse(node)}")
    assert not found, found


# -- the design document -------------------------------------------------------------------------

DESIGN = ROOT / "docs" / "design.md"
CITATION = re.compile(r"design\.md(?:,?\s+sections?\s+|\s*§)(\d+)(?:\s+and\s+(\d+))?")


def test_design_sections_cited_exist() -> None:
    sections = set(re.findall(r"^## (\d+)\. ", DESIGN.read_text(), re.M))
    assert sections == {str(n) for n in range(1, len(sections) + 1)}
    cited = {}
    for folder in ("smi_kernels", "tests", "benchmarks", "tools", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # this file names what it looks for
            text = path.read_text()
            assert not re.search(r"\bSPEC\b", text), f"{path.relative_to(ROOT)} cites SPEC"
            for match in CITATION.finditer(" ".join(text.split())):
                cited.setdefault(path.relative_to(ROOT), set()).update(filter(None, match.groups()))
    assert cited, "nothing cites docs/design.md"
    missing = {str(path): sorted(n - sections) for path, n in cited.items() if n - sections}
    assert not missing, f"sections cited that docs/design.md does not have: {missing}"


def test_package_messages_name_only_what_the_wheel_ships() -> None:
    """A string in a ``raise`` of the package names no file outside it (``docs/``, ``tests/``,
    ``benchmarks/``, a ``.md``): the user who reads the message has the wheel, not the
    repository."""
    found = []
    for name, path in SOURCES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            text = " ".join(
                part.value
                for part in ast.walk(node.exc)
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if re.search(r"\.md\b|\b(docs|tests|benchmarks|tools|examples)/", text):
                found.append(f"{name}: {text[:120]}")
    assert not found, found

"""The divisions of the standardisation that must be exact, checked in the PTX for sm_90 and sm_80.

On the GPU float32 ``/`` compiles to ``div.full.f32`` (about 2 ulp; a division by a constant
may become a ``div.approx`` reciprocal), and under the interpreter it is numpy's correctly
rounded division: a plain ``/`` where the numerics need an exact quotient passes every CPU test
that runs the kernels. So ``standardize_kernel`` is compiled here, without a GPU, as the op
launches it (``tools/kernel_report.py``), in float32, in its single-pass form (V = 2,
D = 1000) and its chunked form (V = 2, D = 9000), and its PTX is read.

``exact_div`` (standardize.py) names the divisions that must be correctly rounded: by the row's
power of two (``x = z / a``) and by D (the two means). They are told apart from the divisions
that may be approximate (``c / ||c||``, ``(c a) / 1e-12``, ``rho / t``) by their divisor, traced
back through moves, selects and conversions to where it is made: the exponent mask 0x7F800000
of ``power_of_two_floor``, or the kernel parameter D. Every such division must be
``div.rn.f32``. No docstring asks for a correctly rounded square root: the one of the tile
numbering (``triangle_tile``, gram.py) is corrected exactly whatever its rounding, and the norm
of a row may be approximate.

The compile runs in a subprocess: the test session runs Triton under its interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the folder of kernel_report.py
REPORT_DIR = REPO / "tools"

SCRIPT = """
import json, sys
sys.path.insert(0, {report_dir!r})
import kernel_report as kr
from smi_kernels._triton.plan import make_plan

out = []
for arch in ("sm90", "sm80"):
    for views, d in ((2, 1000), (2, 9000)):  # one pass over D; chunks (D > 8192 for V = 2)
        plan = make_plan(arch, kr.LIMITS[arch]["sms"], views, 256, d,
                         *kr.SETTINGS["float32-ieee"], True)
        for launch in kr.record_step(plan):
            if launch.name != "standardize_kernel":
                continue
            compiled, _ = kr.compile_launch(launch, kr.LIMITS[arch]["cc"])
            params = [k for k, v in compiled.src.signature.items() if v != "constexpr"]
            out.append({{"arch": arch, "views": views, "d": d,
                         "single_pass": launch.kwargs["SINGLE_PASS"],
                         "d_param": f"standardize_kernel_param_{{params.index('D')}}",
                         "ptx": compiled.asm["ptx"]}})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled() -> list[dict]:
    """``standardize_kernel`` in float32 for sm_90 and sm_80, one pass and chunks: its PTX."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(report_dir=str(REPORT_DIR))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    kernels = json.loads(result.stdout.strip().splitlines()[-1])
    forms = {(k["arch"], k["single_pass"]) for k in kernels}
    assert forms == {(a, s) for a in ("sm90", "sm80") for s in (True, False)}, forms
    return kernels


# ---------------------------------------------------------------- reading the PTX

INSTRUCTION = re.compile(r"^(?:@!?%\w+\s+)?([a-z][\w.]*)\s+(.*);$")
EXPONENT_MASK = 0x7F800000
#: opcodes whose result is one of their operands' values: a divisor is traced through them
PASS_THROUGH = ("mov", "cvt", "selp")


def operands(text: str) -> list[str]:
    """The comma-separated operands of an instruction ({...} and [...] kept whole)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += (char in "{[") - (char in "}]")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def instructions(ptx: str) -> Iterator[tuple[str, list[str]]]:
    """``(opcode, operands)`` of every instruction (directives, labels, comments left out)."""
    for line in ptx.splitlines():
        match = INSTRUCTION.match(line.split("//")[0].strip())
        if match:
            yield match.group(1), operands(match.group(2))


def definitions(ptx: str) -> dict[str, list[tuple[str, list[str]]]]:
    """Register -> the instructions that write it (a loop-carried value has several)."""
    defs: dict[str, list[tuple[str, list[str]]]] = {}
    for opcode, ops in instructions(ptx):
        if ops and ops[0][:1] in "%{":
            for reg in ops[0].strip("{}").split(","):
                defs.setdefault(reg.strip(), []).append((opcode, ops[1:]))
    return defs


def immediate(operand: str) -> int | None:
    try:
        return int(operand, 0)
    except ValueError:
        return None


def origins(reg: str, defs: dict[str, list[tuple[str, list[str]]]]) -> set[str]:
    """Where the value of ``reg`` is made, through moves, selects and conversions: "power of
    two" (an exponent mask), a kernel parameter's name, or the opcode that computes it."""
    found: set[str] = set()
    stack, seen = [reg], set()
    while stack:
        r = stack.pop()
        if r in seen or not r.startswith("%"):
            continue  # an immediate is no origin
        seen.add(r)
        for opcode, ops in defs.get(r, [("undefined", [])]):
            base = opcode.split(".")[0]
            if base == "and" and immediate(ops[-1]) == EXPONENT_MASK:
                found.add("power of two")
            elif opcode.startswith("ld.param"):
                found.add(ops[0].strip("[]"))
            elif base in PASS_THROUGH:
                stack.extend(ops[:2] if base == "selp" else ops)  # not selp's predicate
            else:
                found.add(base)
    return found


def divisions(kernel: dict) -> list[tuple[str, str]]:
    """``(opcode, what it divides by)`` of every float32 division and reciprocal: "the power of
    two", "D", or "other" (a division allowed to be approximate)."""
    defs = definitions(kernel["ptx"])
    out = []
    for opcode, ops in instructions(kernel["ptx"]):
        if not (opcode.startswith(("div.", "rcp.")) and opcode.endswith(".f32")):
            continue
        roots = origins(ops[-1], defs)
        what = (
            "the power of two" if "power of two" in roots
            else "D" if kernel["d_param"] in roots
            else "other"
        )  # fmt: skip
        out.append((opcode, what))
    return out


def describe(kernel: dict) -> str:
    form = "one pass" if kernel["single_pass"] else "chunks"
    return f"{kernel['arch']} V={kernel['views']} D={kernel['d']} {form}"


# ---------------------------------------------------------------- the checks


@pytest.mark.parametrize("divisor", ["the power of two", "D"])
def test_exact_divisions_are_correctly_rounded(compiled: list[dict], divisor: str) -> None:
    """x = z / a (a the row's power of two) and the means (divisor D): ``div.rn.f32`` only, in
    both forms on both architectures; no ``div.full``, ``div.approx`` or ``rcp.approx``."""
    for kernel in compiled:
        found = [opcode for opcode, what in divisions(kernel) if what == divisor]
        assert found, f"{describe(kernel)}: no division by {divisor} in the PTX"
        wrong = sorted({opcode for opcode in found if opcode != "div.rn.f32"})
        assert not wrong, f"{describe(kernel)}: division by {divisor} compiled to {wrong}"


def test_the_other_divisions_may_stay_approximate(compiled: list[dict]) -> None:
    """The premise, and what the classification leaves out: the kernel's plain ``/``
    (``c / ||c||``, ``rho / t``) compiles to an approximate division, so a plain ``/`` in place
    of ``exact_div`` would show above."""
    for kernel in compiled:
        other = {opcode for opcode, what in divisions(kernel) if what == "other"}
        assert "div.full.f32" in other, f"{describe(kernel)}: {sorted(other)}"


def test_the_tracer_finds_the_divisor_d() -> None:
    """The tracing on a hand-written fragment: D loaded, converted and selected into a divisor;
    the exponent mask through a move; a square root is an origin of its own."""
    ptx = """
        ld.param.b32 	%r17, [k_param_12];
        cvt.rn.f32.s32 	%r495, %r17;
        selp.f32 	%r496, %r495, 0f3F800000, %p1;
        div.rn.f32 	%r497, %r494, %r496;
        and.b32 	%r331, %r324, 2139095040;
        mov.b32 	%r333, %r331;
        div.full.f32 	%r335, %r33, %r333; // begin inline asm
        sqrt.approx.ftz.f32 	%r932, %r925;
        @%p2 div.full.f32 	%r946, %r708, %r932;
    """
    kernel = {"ptx": ptx, "d_param": "k_param_12"}
    assert divisions(kernel) == [
        ("div.rn.f32", "D"),
        ("div.full.f32", "the power of two"),
        ("div.full.f32", "other"),
    ]

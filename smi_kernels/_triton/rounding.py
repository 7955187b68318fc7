"""Stores in the storage dtype, rounding to nearest even as the GPU does.

The Triton interpreter (checked with triton 3.9) converts float32 to bfloat16 by truncation, which
shrinks every stored zh towards zero and biases the loss by about 2^-8 per factor. Under the
interpreter, bfloat16 stores therefore round in integer arithmetic first:

    bits(x) + 0x7FFF + (bit 16 of x), low 16 bits cleared    (round half to even)

after which the truncating conversion is exact. On the GPU the flag is off and ``.to`` rounds.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def to_storage(x, dtype: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    """``x`` (float32) converted to ``dtype``, rounded to nearest even."""
    if EMULATE_RTNE:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)

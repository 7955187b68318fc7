"""Readable autograd implementations of SMI and the losses it is compared with.

These are the specification in code: short, float64-capable, written for clarity rather than
speed. The package's fast paths are tested against them; the benchmarks time them.
"""

from reference.smi import smi_loss, smi_loss_terms

__all__ = ["smi_loss", "smi_loss_terms"]

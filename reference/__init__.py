"""Readable autograd implementations of SMI and the losses it is compared with.

These are the specification in code: short, float64-capable, written for clarity rather than
speed. The package's fast paths are tested against them; the benchmarks time them.
"""

from reference.barlow import barlow_twins_loss
from reference.ntxent import ntxent_loss
from reference.smi import smi_loss, smi_loss_terms
from reference.vicreg import vicreg_loss

__all__ = ["barlow_twins_loss", "ntxent_loss", "smi_loss", "smi_loss_terms", "vicreg_loss"]

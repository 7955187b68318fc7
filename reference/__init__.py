"""Readable autograd implementations of SMI and the losses it is compared with.

These are the specification in code: short, float64-capable, written for clarity rather than
speed. The package's fast paths are tested against them; the benchmarks time them.
"""

from reference.barlow import barlow_twins_loss, barlow_twins_loss_batch_norm
from reference.ntxent import ntxent_loss, ntxent_loss_four_products
from reference.smi import smi_loss, smi_loss_terms
from reference.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "barlow_twins_loss_batch_norm",
    "ntxent_loss",
    "ntxent_loss_four_products",
    "smi_loss",
    "smi_loss_terms",
    "vicreg_loss",
]

"""Readable autograd implementations of the losses SMI is compared with, and SMI's own.

Short, float64-capable, written for clarity rather than speed: the benchmarks time them. SMI's
reference ships with the package (:mod:`smi_kernels.reference`, re-exported here); the package's
fast paths are tested against it.
"""

from reference.barlow import barlow_twins_loss, barlow_twins_loss_batch_norm
from reference.ntxent import ntxent_loss, ntxent_loss_four_products
from reference.smi import smi_loss
from reference.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "barlow_twins_loss_batch_norm",
    "ntxent_loss",
    "ntxent_loss_four_products",
    "smi_loss",
    "vicreg_loss",
]

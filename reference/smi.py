"""SMI's reference is the package's own, :mod:`smi_kernels.reference` (shipped with the wheel),
re-exported here beside the losses it is compared with."""

from smi_kernels.reference import dependency, smi_loss, smi_loss_with_terms, standardize

__all__ = ["dependency", "smi_loss", "smi_loss_with_terms", "standardize"]

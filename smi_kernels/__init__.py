"""smi-kernels: fused kernels for the SMI self-supervised loss (Semantic Mutual Information).

>>> import torch
>>> from smi_kernels import SMILoss
>>> loss = SMILoss()(torch.randn(16, 64), torch.randn(16, 64))
"""

from smi_kernels.loss import SMILoss, SMIOutput, resolve_backend, smi_loss, smi_loss_with_terms

__version__ = "0.2.0"

__all__ = [
    "SMILoss",
    "SMIOutput",
    "__version__",
    "resolve_backend",
    "smi_loss",
    "smi_loss_with_terms",
]

"""What the benchmark scripts share: the import path, the losses compared, a live-memory meter.

The scripts run from a fresh clone as ``python benchmarks/<name>.py``: importing this module puts
the repository root on ``sys.path`` so that ``reference`` (not an installed package) imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import reference  # noqa: E402

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Loss:
    """One loss as the benchmarks see it: a callable of two views (N, D) returning a scalar."""

    key: str
    name: str
    fn: LossFn
    gather_layer: bool  # the loss all-gathers the embeddings of every device
    global_batch_norm: bool  # the official recipe synchronises batch norm across devices
    communication: str  # what the loss itself exchanges between devices
    cuda_only: bool = False


def smi_fused_op() -> Callable[[list[Tensor], float, float], Tensor] | None:
    """``smi_triton`` (the custom op ``smi_kernels::smi_forward`` behind a stack), or None when
    the Triton path does not import here."""
    try:
        from smi_kernels._triton.op import smi_triton
    except Exception:
        return None
    if not hasattr(torch.ops.smi_kernels, "smi_forward"):
        return None
    return smi_triton


def _smi_reference(z_a: Tensor, z_b: Tensor) -> Tensor:
    return reference.smi_loss(z_a, z_b)


def _smi_torch(z_a: Tensor, z_b: Tensor) -> Tensor:
    from smi_kernels import smi_loss

    return smi_loss(z_a, z_b, backend="torch")


def _smi_triton(z_a: Tensor, z_b: Tensor) -> Tensor:
    from smi_kernels import smi_loss

    return smi_loss(z_a, z_b, backend="triton")


def _smi_fused_any_device(z_a: Tensor, z_b: Tensor) -> Tensor:
    # the custom op itself, for tracing on the meta device: smi_loss picks its backend from the
    # device, and smi_triton takes the op only under a dispatch mode (fvcore's jit tracer is not)
    z = torch.stack([z_a, z_b])
    need_grad = torch.is_grad_enabled() and (z_a.requires_grad or z_b.requires_grad)
    out = torch.ops.smi_kernels.smi_forward(z, 5e-3, 1e-4, need_grad)[0]  # (L, L_align, L_red)
    return out[0]


# Gather layer and global batch norm as in the official training code: Barlow Twins all-reduces
# its D x D cross-correlation and converts the model to SyncBatchNorm (the loss's own batch norm
# included); VICReg all-gathers the embeddings (FullGatherLayer) under SyncBatchNorm; SimCLR
# gathers the negatives from every replica and uses global batch norm. SMI: none of these.
BARLOW = Loss(
    "barlow", "Barlow Twins", reference.barlow_twins_loss, False, True, "all-reduce c (D x D)"
)
BARLOW_BATCH_NORM = Loss(
    "barlow_bn",
    "Barlow Twins + BN op",
    reference.barlow_twins_loss_batch_norm,
    False,
    True,
    "all-reduce c (D x D)",
)
VICREG = Loss("vicreg", "VICReg", reference.vicreg_loss, True, True, "all-gather z")
NTXENT = Loss("ntxent", "NT-Xent", reference.ntxent_loss, True, True, "all-gather z")
NTXENT_FOUR_PRODUCTS = Loss(
    "ntxent_4",
    "NT-Xent (4 products)",
    reference.ntxent_loss_four_products,
    True,
    True,
    "all-gather z",
)
SMI_REFERENCE = Loss("smi_reference", "SMI (reference)", _smi_reference, False, False, "none")
SMI_TORCH = Loss("smi_torch", "SMI PyTorch path", _smi_torch, False, False, "none")
SMI_FUSED = Loss("smi_fused", "SMI fused", _smi_triton, False, False, "none", cuda_only=True)
SMI_FUSED_OP = Loss("smi_fused", "SMI fused", _smi_fused_any_device, False, False, "none")


class LiveMemory(TorchDispatchMode):
    """Peak bytes of tensor storage alive at once, over the ops run under this mode.

    Every op output's storage is recorded with a weak reference; after each op the storages
    that died are dropped; ``peak`` is the largest total. The storages of ``exclude`` (the
    inputs) count zero, so views of them (``z.T``) add nothing. Autograd's saved
    tensors keep their storages alive, so the backward's working set is included when the
    backward runs under the mode. Not seen: scratch memory inside one kernel (a BLAS workspace)
    and allocator rounding. Works on the meta device (no memory is touched there).
    """

    def __init__(self, exclude: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        for tensor in exclude:
            ref = StorageWeakRef(tensor.untyped_storage())
            self._live[ref.cdata] = (ref, 0)
        self.current = 0
        self.peak = 0

    def _track(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        known = self._live.get(ref.cdata)
        if known is not None and not known[0].expired():
            return
        nbytes = storage.nbytes()
        self._live[ref.cdata] = (ref, nbytes)
        self.current += nbytes

    def _sweep(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, Tensor):
                self._track(item)
        self.peak = max(self.peak, self.current)
        self._sweep()
        return out


def measure_live_peak(fn: LossFn, z_a: Tensor, z_b: Tensor, backward: bool = True) -> int:
    """Peak bytes of storage created by one forward (+ backward) of ``fn``, inputs excluded."""
    with LiveMemory(exclude=(z_a, z_b)) as meter:
        loss = fn(z_a, z_b)
        if backward:
            loss.backward()
        del loss
    return meter.peak

"""MNIST-1D for the self-supervised study: generated offline, cached, split, and augmented.

MNIST-1D (Greydanus, 2020) is ten 1-D digit templates of 12 points, each padded, dilated,
scaled, translated, given correlated and i.i.d. noise, sheared and resampled to 40 points. The
``mnist1d`` package's own generator (``make_dataset`` with its default arguments and seed 42:
4000 training and 1000 test signals) makes it here; its download function is never called. The
arrays are cached under the user's cache folder (``$XDG_CACHE_HOME/smi-kernels/`` or
``~/.cache/smi-kernels/``), so the package is needed once per machine.

:func:`augment` draws the views from the same family of transformations, written in torch and
applied to a whole batch at once with per-sample parameters: circular shift, dilation and a
smooth local warp of the time axis (one linear resampling), amplitude scale, shear (a linear
ramp), correlated (Gaussian-filtered) and i.i.d. noise.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATA_SEED = 42  # make_dataset's default seed, fixed here explicitly
INSTALL_HINT = 'pip install "smi-kernels[examples]" (or pip install -e ".[examples]" in a clone)'


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/smi-kernels`` (``~/.cache/smi-kernels`` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "smi-kernels"


def generate_mnist1d(seed: int = DATA_SEED) -> dict[str, np.ndarray]:
    """MNIST-1D from the ``mnist1d`` package's generator, default arguments, the given seed."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as missing:
        raise SystemExit(
            f"the MNIST-1D study needs the mnist1d package ({missing}): install the example's "
            f"dependencies with {INSTALL_HINT}"
        ) from missing
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)
    return {
        "x": np.asarray(data["x"], dtype=np.float32),
        "y": np.asarray(data["y"], dtype=np.int64),
        "x_test": np.asarray(data["x_test"], dtype=np.float32),
        "y_test": np.asarray(data["y_test"], dtype=np.int64),
    }


def load_mnist1d(seed: int = DATA_SEED) -> dict[str, np.ndarray]:
    """The cached arrays ``x, y, x_test, y_test``, generated (and cached) on first use."""
    path = cache_dir() / f"mnist1d-default-seed{seed}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return {key: cached[key] for key in ("x", "y", "x_test", "y_test")}
    data = generate_mnist1d(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written to a temporary name and renamed: two processes generating at once both succeed
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **data)
    os.replace(tmp, path)
    return data


def fingerprint(data: dict[str, np.ndarray]) -> str:
    """A short digest of the arrays (recorded with the results: which data they came from)."""
    import hashlib

    digest = hashlib.sha256()
    for key in ("x", "y", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(data[key]).tobytes())
    return digest.hexdigest()[:16]


@dataclass
class Split:
    """Signals (n, 40) as float32 tensors and labels as numpy arrays."""

    x: Tensor
    y: np.ndarray


def validation_split(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[Split, Split]:
    """A stratified ``(fit, validation)`` split of the training set (the test set is untouched)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        val_idx.append(rng.choice(idx, size=round(fraction * len(idx)), replace=False))
    val = np.sort(np.concatenate(val_idx))
    fit = np.setdiff1d(np.arange(len(y)), val)
    return Split(torch.from_numpy(x[fit]), y[fit]), Split(torch.from_numpy(x[val]), y[val])


@dataclass(frozen=True)
class Augment:
    """Ranges of the view transformations (MNIST-1D's own family; the generator's values where
    it has one: scale 0.4, correlated noise 0.25 filtered at sigma 2, i.i.d. noise ...)."""

    max_shift: float = 8.0  # circular shift, samples (of 40)
    dilation: float = 0.2  # time axis stretched by a factor in [1 - d, 1 + d]
    warp: float = 1.5  # amplitude of the smooth local warp, samples
    scale: float = 0.4  # amplitude times 1 + scale * (u - 1/2)
    shear: float = 1.0  # minus coeff * linspace(-1/2, 1/2), coeff = shear * (u - 1/2)
    corr_noise: float = 0.25  # std of the noise before the Gaussian filter (sigma 2)
    iid_noise: float = 0.05  # std of the i.i.d. noise


def gaussian_kernel(sigma: float, device: torch.device) -> Tensor:
    """A normalised 1-D Gaussian filter of radius 4 sigma, shaped for ``conv1d``."""
    radius = math.ceil(4 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return (kernel / kernel.sum()).view(1, 1, -1)


def smooth_noise(shape: tuple[int, int], sigma: float, gen: torch.Generator, device) -> Tensor:
    """Gaussian noise filtered along the signal (circularly) with a Gaussian of ``sigma``."""
    kernel = gaussian_kernel(sigma, device)
    noise = torch.randn(shape, generator=gen).to(device).unsqueeze(1)
    radius = kernel.shape[-1] // 2
    return F.conv1d(F.pad(noise, (radius, radius), mode="circular"), kernel).squeeze(1)


def augment(x: Tensor, gen: torch.Generator, aug: Augment) -> Tensor:
    """One random view of every signal of the batch ``x`` (B, L); randomness from ``gen``.

    The time axis is resampled at ``pos(t) = c + (t - c) / s + w(t) - k`` (dilation s about the
    centre c, smooth warp w, shift k), circularly, with linear interpolation; then the amplitude
    is scaled, a shear ramp and the two noises are added.
    """
    b, length = x.shape
    device = x.device

    def uniform(lo: float, hi: float) -> Tensor:
        return (lo + (hi - lo) * torch.rand(b, 1, generator=gen)).to(device)

    t = torch.arange(length, dtype=torch.float32, device=device).expand(b, length)
    centre = (length - 1) / 2
    stretch = uniform(1 - aug.dilation, 1 + aug.dilation)
    warp = smooth_noise((b, length), 4.0, gen, device)
    warp = aug.warp * warp / warp.std(dim=1, keepdim=True).clamp(min=1e-6)
    pos = centre + (t - centre) / stretch + warp - uniform(-aug.max_shift, aug.max_shift)
    left = torch.floor(pos)
    frac = pos - left
    left = left.long().remainder(length)
    right = (left + 1).remainder(length)
    view = (1 - frac) * x.gather(1, left) + frac * x.gather(1, right)

    view = view * uniform(1 - aug.scale / 2, 1 + aug.scale / 2)
    ramp = torch.linspace(-0.5, 0.5, length, device=device)
    view = view - aug.shear * uniform(-0.5, 0.5) * ramp
    view = view + aug.corr_noise * smooth_noise((b, length), 2.0, gen, device)
    return view + aug.iid_noise * torch.randn((b, length), generator=gen).to(device)

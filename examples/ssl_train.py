"""Models, losses, the training loop and the frozen-encoder probes of the MNIST-1D study.

- :class:`Encoder`: a small 1-D CNN (four conv blocks, global average pooling); its pooled
  features are what the probes read.
- :func:`projector`: the paper's projector, Linear-BN-ReLU, Linear-BN-ReLU, Linear, of width D.
- :data:`METHODS`: SMI (the package's ``SMILoss``) and Barlow Twins, VICReg and NT-Xent (the
  repository's ``reference/``), each with the one hyperparameter its grid varies.
- :func:`train`: one run (an SSL method, or the supervised anchor), logging per epoch the loss,
  its alignment and redundancy terms, their ratio, the spread of the normalised embeddings and
  the gradient norm (also per step).
- :func:`evaluate`: linear probe on every label, few-shot linear probe, k-NN.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from ssl_data import Augment, augment
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from smi_kernels import SMILoss

NUM_CLASSES = 10


# ------------------------------------------------------------------------------------- models
class Encoder(nn.Module):
    """Four 1-D conv blocks (kernel 5 then 3; the last three strided) and global average
    pooling: ``(B, 40)`` signals to ``(B, 4 * width)`` features."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
            conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
            return [conv, nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(1, width, 5, 1),
            *block(width, 2 * width, 3, 2),
            *block(2 * width, 2 * width, 3, 2),
            *block(2 * width, 4 * width, 3, 2),
        )
        self.out_dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x.unsqueeze(1)).mean(dim=2)


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """The paper's projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear, all of width ``dim``."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
        nn.BatchNorm1d(dim),
        nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False),
    )


def make_encoder(seed: int, width: int) -> Encoder:
    """The encoder at the initialisation of ``seed`` (the random anchor uses it untrained)."""
    torch.manual_seed(seed)
    return Encoder(width)


# --------------------------------------------------------------------------------------- loss
def reference_losses() -> dict[str, Callable]:
    """Barlow Twins, VICReg and NT-Xent from the repository's ``reference/``."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "reference").is_dir() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))  # run from the repository
    try:
        from reference.barlow import barlow_twins_loss, batch_standardize, off_diagonal
        from reference.ntxent import ntxent_loss
        from reference.vicreg import vicreg_loss
    except ImportError as exc:  # a copy outside the repository
        raise SystemExit(
            "Barlow Twins, VICReg and NT-Xent come from reference/ of the smi-kernels repository "
            "(run the script from a clone); pass --methods smi to study SMI alone"
        ) from exc
    return {
        "barlow": barlow_twins_loss,
        "standardize": batch_standardize,
        "off_diagonal": off_diagonal,
        "vicreg": vicreg_loss,
        "ntxent": ntxent_loss,
    }


@dataclass(frozen=True)
class Method:
    """An SSL method and the hyperparameter its grid varies (the others at their defaults)."""

    name: str
    label: str
    param: str
    grid: tuple[float, ...]


METHODS = {
    "smi": Method("smi", "SMI", "lambda", (5e-3, 2e-2, 0.1, 0.3, 1.0)),
    "barlow": Method("barlow", "Barlow Twins", "lambda", (5.1e-3, 1e-2, 2e-2, 5e-2, 0.1)),
    "vicreg": Method("vicreg", "VICReg", "sim_coeff", (5.0, 10.0, 25.0, 50.0, 100.0)),
    "ntxent": Method("ntxent", "NT-Xent", "temperature", (0.05, 0.1, 0.2, 0.5, 1.0)),
}
ANCHORS = {"random": "random init (untrained)", "supervised": "supervised (upper bound)"}


def criterion(method: str, value: float, eps: float) -> Callable[[Tensor, Tensor], tuple]:
    """``f(z_a, z_b) -> (loss, alignment, redundancy)`` where ``redundancy`` carries its weight
    (SMI, Barlow Twins: lambda times the off-diagonal sum; VICReg: the covariance term, with
    the invariance term as alignment; NT-Xent: the log-sum-exp over negatives, with the
    positive's similarity as alignment). The gradient comes from the loss alone: the package's
    SMILoss or the reference implementation; the terms of the references are recomputed for
    the log under ``no_grad``."""
    if method == "smi":
        smi = SMILoss(lambda_param=value, eps=eps)

        def smi_terms(z_a: Tensor, z_b: Tensor) -> tuple:
            out = smi.forward_with_terms(z_a, z_b)
            return out.loss, out.alignment, value * out.redundancy

        return smi_terms
    ref = reference_losses()
    if method == "barlow":

        def barlow_terms(z_a: Tensor, z_b: Tensor) -> tuple:
            loss = ref["barlow"](z_a, z_b, lambda_param=value)
            with torch.no_grad():
                c = ref["standardize"](z_a).T @ ref["standardize"](z_b) / z_a.shape[0]
                on = (torch.diagonal(c) - 1).pow(2).sum()
                off = ref["off_diagonal"](c).pow(2).sum()
            return loss, on, value * off

        return barlow_terms
    if method == "vicreg":

        def vicreg_terms(z_a: Tensor, z_b: Tensor) -> tuple:
            loss = ref["vicreg"](z_a, z_b, sim_coeff=value)
            with torch.no_grad():
                n, d = z_a.shape
                x, y = z_a - z_a.mean(0), z_b - z_b.mean(0)
                cov = sum(ref["off_diagonal"](v.T @ v / (n - 1)).pow(2).sum() / d for v in (x, y))
            return loss, value * F.mse_loss(z_a.detach(), z_b.detach()), cov

        return vicreg_terms
    if method == "ntxent":

        def ntxent_terms(z_a: Tensor, z_b: Tensor) -> tuple:
            loss = ref["ntxent"](z_a, z_b, temperature=value)
            with torch.no_grad():
                pos = (F.normalize(z_a, dim=1) * F.normalize(z_b, dim=1)).sum(1) / value
                align = -pos.mean()
            return loss, align, loss.detach() - align

        return ntxent_terms
    raise ValueError(f"unknown method {method!r}")


def normalised_std(z: Tensor) -> Tensor:
    """Mean over features of the std across the batch of the L2-normalised embeddings
    (0 when collapsed; about 1/sqrt(D) for a spread-out embedding)."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


# ---------------------------------------------------------------------------------- training
@dataclass
class RunConfig:
    """One training run: an SSL method with its hyperparameter, or ``"supervised"``."""

    method: str
    value: float | None = None
    eps: float = 1e-4
    seed: int = 0
    epochs: int = 20
    batch_size: int = 64
    proj_dim: int = 512
    width: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_steps: int = 0  # cap on steps per epoch (0: a full pass)
    augment: Augment = field(default_factory=Augment)

    def steps_per_epoch(self, n: int) -> int:
        steps = n // self.batch_size
        return min(steps, self.max_steps) if self.max_steps else steps


def warmup_cosine(total: int, warmup: float = 0.1) -> Callable[[int], float]:
    """Learning-rate factor of step ``i``: linear warm-up over the first 10% of ``total``
    steps, then a cosine decay to zero."""
    ramp = max(1, round(warmup * total))

    def factor(i: int) -> float:
        if i < ramp:
            return (i + 1) / ramp
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - ramp) / max(1, total - ramp))))

    return factor


HISTORY_KEYS = ("loss", "alignment", "redundancy", "ratio", "embed_std", "grad_norm")


def train(
    cfg: RunConfig, x: Tensor, y: np.ndarray, device: torch.device, tick: Callable[[], None]
) -> tuple[Encoder, dict[str, list[float]]]:
    """Train an encoder (and a projector, or a linear head for ``"supervised"``) on the signals
    ``x`` with AdamW (warm-up, then cosine decay); ``tick()`` after every step (the progress bar).

    Returns the encoder and its history: per-epoch means of :data:`HISTORY_KEYS` (``ratio`` is
    redundancy / alignment, both as :func:`criterion` weighs them) and ``grad_norm_steps``, the
    gradient norm of every step.
    """
    supervised = cfg.method == "supervised"
    encoder = make_encoder(cfg.seed, cfg.width).to(device)
    torch.manual_seed(cfg.seed + 1000)
    if supervised:
        head: nn.Module = nn.Linear(encoder.out_dim, NUM_CLASSES)
        labels = torch.as_tensor(y, device=device)
    else:
        head = projector(encoder.out_dim, cfg.proj_dim)
        loss_terms = criterion(cfg.method, cfg.value, cfg.eps)
    head = head.to(device)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.steps_per_epoch(len(x))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.epochs * steps))
    gen = torch.Generator().manual_seed(cfg.seed + 2000)
    data = x.to(device)
    history: dict[str, list[float]] = {k: [] for k in (*HISTORY_KEYS, "grad_norm_steps")}
    encoder.train()
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen).to(device)
        rows = []
        for step in range(steps):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if supervised:
                out = head(encoder(augment(data[idx], gen, cfg.augment)))
                loss = F.cross_entropy(out, labels[idx])
                align = red = std = torch.full((), float("nan"), device=device)
            else:
                views = torch.cat([augment(data[idx], gen, cfg.augment) for _ in range(2)])
                z_a, z_b = head(encoder(views)).chunk(2)
                loss, align, red = loss_terms(z_a, z_b)
                std = normalised_std(z_a)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            optimizer.step()
            schedule.step()
            rows.append(
                torch.stack([t.detach().float() for t in (loss, align, red, std, grad_norm)])
            )
            tick()
        values = torch.stack(rows).cpu().numpy().astype(float)  # one synchronisation per epoch
        loss_v, align_v, red_v, std_v, grad_v = values.T
        history["loss"].append(float(loss_v.mean()))
        history["alignment"].append(float(align_v.mean()))
        history["redundancy"].append(float(red_v.mean()))
        history["ratio"].append(float((red_v / np.maximum(np.abs(align_v), 1e-30)).mean()))
        history["embed_std"].append(float(std_v.mean()))
        history["grad_norm"].append(float(grad_v.mean()))
        history["grad_norm_steps"].extend(float(g) for g in grad_v)
        if not np.isfinite(loss_v).all():
            break  # diverged: the remaining epochs would only repeat the NaN
    return encoder, history


# ------------------------------------------------------------------------------------ probes
@torch.no_grad()
def features(encoder: Encoder, x: Tensor, device: torch.device) -> np.ndarray:
    """The frozen encoder's pooled features (eval mode), float64 numpy."""
    encoder.eval()
    out = [encoder(chunk.to(device)).float().cpu() for chunk in x.split(1024)]
    return torch.cat(out).double().numpy()


def logistic(f_fit: np.ndarray, y_fit: np.ndarray, scaler: StandardScaler, seed: int):
    clf = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)
    return clf.fit(scaler.transform(f_fit), y_fit)


@dataclass(frozen=True)
class ProbeConfig:
    """How the frozen features are read out."""

    shots: int = 10  # labels per class of the few-shot probe
    draws: int = 10  # few-shot draws averaged
    k: int = 10  # neighbours of the k-NN probe (cosine)


def evaluate(
    f_fit: np.ndarray,
    y_fit: np.ndarray,
    f_eval: np.ndarray,
    y_eval: np.ndarray,
    probe: ProbeConfig,
    seed: int,
    linear_only: bool = False,
) -> dict[str, float]:
    """Accuracies on ``(f_eval, y_eval)`` of three read-outs fitted on ``(f_fit, y_fit)``.

    ``linear``: logistic regression on every label (features standardised with the fit set's
    statistics). ``few_shot``: the same on ``probe.shots`` labels per class, mean over
    ``probe.draws`` draws. ``knn``: ``probe.k``-nearest neighbours by cosine similarity.
    """
    if not np.isfinite(f_fit).all() or not np.isfinite(f_eval).all():
        nan = float("nan")
        return {"linear": nan} if linear_only else {"linear": nan, "few_shot": nan, "knn": nan}
    # one BLAS thread: these problems are small, and on a shared machine BLAS threads that spin
    # on a descheduled peer make lbfgs up to a hundred times slower
    with threadpool_limits(1, user_api="blas"):
        return _evaluate(f_fit, y_fit, f_eval, y_eval, probe, seed, linear_only)


def _evaluate(f_fit, y_fit, f_eval, y_eval, probe: ProbeConfig, seed: int, linear_only: bool):
    scaler = StandardScaler().fit(f_fit)
    result = {
        "linear": float(
            logistic(f_fit, y_fit, scaler, seed).score(scaler.transform(f_eval), y_eval)
        )
    }
    if linear_only:
        return result
    rng = np.random.default_rng(seed)
    shots = []
    for _ in range(probe.draws):
        idx = np.concatenate(
            [
                rng.choice(np.flatnonzero(y_fit == c), probe.shots, replace=False)
                for c in range(NUM_CLASSES)
            ]
        )
        clf = logistic(f_fit[idx], y_fit[idx], scaler, seed)
        shots.append(clf.score(scaler.transform(f_eval), y_eval))
    result["few_shot"] = float(np.mean(shots))
    knn = KNeighborsClassifier(n_neighbors=probe.k, metric="cosine").fit(f_fit, y_fit)
    result["knn"] = float(knn.score(f_eval, y_eval))
    return result


def eigenspectrum(f: np.ndarray) -> list[float]:
    """Cumulative explained variance of the features' principal components (descending)."""
    centred = f - f.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(f))[::-1], 0, None)
    total = eig.sum()
    return (np.cumsum(eig) / total).tolist() if total > 0 else [float("nan")] * len(eig)

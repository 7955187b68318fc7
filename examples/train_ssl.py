"""Self-supervised training with SMILoss (and Barlow Twins for comparison) on sklearn's digits.

A small convolutional encoder and the paper's three-layer projector (Linear-BN-ReLU,
Linear-BN-ReLU, Linear) see two augmented views of every image (random resized crop, shift,
Gaussian noise) of scikit-learn's bundled 8x8 digits, upsampled (no download). After training,
a linear probe (logistic regression on the frozen encoder's features, held-out split) measures
what each loss learned, against the same encoder at random initialisation.

Per epoch it logs the loss terms (``SMILoss.forward_with_terms``: loss, alignment, redundancy),
the std across the batch of the L2-normalised embeddings (collapse drives it to 0; a spread-out
embedding sits near 1/sqrt(D)), the redundancy-to-alignment ratio ``lambda * L_red / L_align``
and the gradient norm, and writes the curves to ``<out-dir>/train_ssl_curves.png``.

    pip install -e ".[examples]"          # scikit-learn, matplotlib, tqdm, numpy
    python examples/train_ssl.py          # SMI and Barlow Twins; a few minutes on 2 CPU cores
    python examples/train_ssl.py --device cuda --epochs 100
    python examples/train_ssl.py --losses smi --lambda-param 5e-3 --eps 1e-4

The Barlow Twins comparison uses ``reference/barlow.py`` of the smi-kernels repository; a copy of
this script outside the repository trains SMI alone (``--losses smi``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# Busy-waiting OpenMP threads make this small model several times slower on a 2-core machine
# that another busy process shares (each parallel region spins on a descheduled peer); passive
# waiting avoids that. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler
    from tqdm import tqdm
except ImportError as missing:
    raise SystemExit(
        f"examples/train_ssl.py needs {missing.name}: install the example's dependencies with "
        'pip install "smi-kernels[examples]" (or pip install -e ".[examples]" in a clone)'
    ) from missing

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smi_kernels import SMILoss

LOSSES = ("smi", "barlow")


# --------------------------------------------------------------------------------------- data
def load_images(size: int, seed: int) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """Digits upsampled to size x size in [0, 1]; a stratified 70/30 train/test split."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.3, random_state=seed, stratify=digits.target
    )
    return images[idx_train], images[idx_test], digits.target[idx_train], digits.target[idx_test]


def augment(x: Tensor, gen: torch.Generator, noise: float = 0.1) -> Tensor:
    """One random view per image: resized crop (scale 0.5-1, aspect 3/4-4/3), shift, noise.

    The crop and the shift are one affine resampling per image (``grid_sample``); the shift moves
    the crop centre by up to 15% of the image. Randomness comes from ``gen`` (on the CPU).
    """
    b = x.shape[0]

    def uniform(lo: float, hi: float) -> Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=gen)).to(x.device)

    scale = uniform(0.5, 1.0)  # fraction of the area kept
    log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(scale * ratio).clamp(max=1.0)
    height = torch.sqrt(scale / ratio).clamp(max=1.0)
    # the crop's centre, anywhere the crop still fits, plus a shift of up to 15% of the image
    cx = (1.0 - width) * uniform(-1.0, 1.0) + uniform(-0.3, 0.3)
    cy = (1.0 - height) * uniform(-1.0, 1.0) + uniform(-0.3, 0.3)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = width, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    eps = torch.randn(view.shape, generator=gen).to(x.device)
    return view + noise * eps


# ------------------------------------------------------------------------------------- models
class Encoder(nn.Module):
    """Three 3x3 conv blocks (the last two strided) and global average pooling."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(1, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2)
        )
        self.out_dim = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean(dim=(2, 3))


def projector(in_dim: int, dim: int) -> nn.Sequential:
    """The paper's projector: Linear-BN-ReLU, Linear-BN-ReLU, Linear."""
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
    torch.manual_seed(seed)  # every run (and the random baseline) starts from the same weights
    return Encoder(width)


# --------------------------------------------------------------------------------------- loss
def barlow_reference():
    """``(barlow_twins_loss, batch_standardize)`` from the repository's reference/barlow.py."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "reference").is_dir() and str(repo) not in sys.path:
        sys.path.insert(0, str(repo))  # run from the repository
    try:
        from reference.barlow import barlow_twins_loss, batch_standardize
    except ImportError as exc:  # run from a copy outside the repository
        raise SystemExit(
            "the Barlow Twins comparison needs reference/barlow.py from the smi-kernels "
            "repository (run the script from a clone); pass --losses smi to train SMI only"
        ) from exc
    return barlow_twins_loss, batch_standardize


class LossWithTerms:
    """``(loss, alignment, redundancy, lambda)`` for SMI or the reference Barlow Twins loss."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        if name == "smi":
            self.smi = SMILoss(lambda_param=args.lambda_param, eps=args.eps)
            self.lambda_param = args.lambda_param
        else:
            barlow_twins_loss, batch_standardize = barlow_reference()
            self.barlow = barlow_twins_loss
            self.standardize = batch_standardize
            self.lambda_param = args.barlow_lambda

    def __call__(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.name == "smi":
            return self.smi.forward_with_terms(z_a, z_b)
        loss = self.barlow(z_a, z_b, lambda_param=self.lambda_param)
        # the two Barlow terms, for the log only: on-diagonal (1 - C_ii)^2, off-diagonal C_ij^2
        with torch.no_grad():
            n = z_a.shape[0]
            c = self.standardize(z_a).T @ self.standardize(z_b) / n
            on = (torch.diagonal(c) - 1).pow(2).sum()
            off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return loss, on, off


def normalised_std(z: Tensor) -> float:
    """Mean over features of the std across the batch of the L2-normalised embeddings."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean().item()


# ---------------------------------------------------------------------------------- training
def train(name: str, args: argparse.Namespace, train_x: Tensor) -> tuple[Encoder, dict]:
    device = torch.device(args.device)
    encoder = make_encoder(args.seed, args.width).to(device)
    torch.manual_seed(args.seed + 1)
    head = projector(encoder.out_dim, args.proj_dim).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    criterion = LossWithTerms(name, args)
    gen = torch.Generator().manual_seed(args.seed + 2)
    data = train_x.to(device)
    steps_per_epoch = len(data) // args.batch_size
    if args.max_steps:
        steps_per_epoch = min(steps_per_epoch, args.max_steps)
    total = args.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=total, pct_start=0.1
    )
    keys = ("loss", "alignment", "redundancy", "ratio", "embed_std", "grad_norm")
    history: dict[str, list[float]] = {k: [] for k in keys}
    encoder.train()
    head.train()
    bar = tqdm(total=total, desc=f"{name:>6}", file=sys.stderr, dynamic_ncols=True)
    for epoch in range(args.epochs):
        sums = dict.fromkeys(keys, 0.0)
        order = torch.randperm(len(data), generator=gen).to(device)
        for step in range(steps_per_epoch):
            x = data[order[step * args.batch_size : (step + 1) * args.batch_size]]
            x_a, x_b = augment(x, gen, args.noise), augment(x, gen, args.noise)
            z = head(encoder(torch.cat([x_a, x_b])))
            z_a, z_b = z.chunk(2)
            loss, align, red = criterion(z_a, z_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            optimizer.step()
            schedule.step()
            values = {
                "loss": loss.item(),
                "alignment": align.item(),
                "redundancy": red.item(),
                "ratio": criterion.lambda_param * red.item() / max(align.item(), 1e-30),
                "embed_std": normalised_std(z_a),
                "grad_norm": grad_norm.item(),
            }
            for k, v in values.items():
                sums[k] += v
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{values['loss']:.4g}")
        for k in keys:
            history[k].append(sums[k] / steps_per_epoch)
        tqdm.write(
            f"[{name}] epoch {epoch + 1:3d}  loss {history['loss'][-1]:9.4f}  "
            f"align {history['alignment'][-1]:9.4f}  red {history['redundancy'][-1]:10.2f}  "
            f"lambda*red/align {history['ratio'][-1]:7.3f}  "
            f"std(z/|z|) {history['embed_std'][-1]:.4f}  grad {history['grad_norm'][-1]:8.3f}",
            file=sys.stderr,
        )
    bar.close()
    return encoder, history


# ------------------------------------------------------------------------------------- probe
@torch.no_grad()
def features(encoder: Encoder, x: Tensor, device: torch.device) -> np.ndarray:
    encoder.eval()
    out = [encoder(chunk.to(device)).float().cpu() for chunk in x.split(512)]
    return torch.cat(out).numpy()


def logistic_accuracy(f_train, y_train, f_test, y_test, seed: int) -> float:
    scaler = StandardScaler().fit(f_train)
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(scaler.transform(f_train), y_train)
    return float(clf.score(scaler.transform(f_test), y_test))


def evaluate(encoder: Encoder, split, device: torch.device, seed: int) -> dict[str, float]:
    """Three read-outs of the frozen encoder's features on the held-out split.

    ``linear``: logistic regression on every training label (the standard linear probe).
    ``linear_5shot``: the same with 5 labels per class, mean over 5 draws (on digits, random
    convolutional features are already strong linear features, so the full-label probe sits
    near its ceiling; few labels show what the representation itself adds).
    ``knn``: 5-nearest-neighbour accuracy of the cosine similarity on the features.
    """
    train_x, test_x, train_y, test_y = split
    f_train, f_test = features(encoder, train_x, device), features(encoder, test_x, device)
    linear = logistic_accuracy(f_train, train_y, f_test, test_y, seed)
    rng = np.random.default_rng(seed)
    shots = []
    for _ in range(5):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(train_y == c), 5, replace=False) for c in range(10)]
        )
        shots.append(logistic_accuracy(f_train[idx], train_y[idx], f_test, test_y, seed))
    unit_train = f_train / np.linalg.norm(f_train, axis=1, keepdims=True).clip(1e-12)
    unit_test = f_test / np.linalg.norm(f_test, axis=1, keepdims=True).clip(1e-12)
    knn = KNeighborsClassifier(n_neighbors=5).fit(unit_train, train_y).score(unit_test, test_y)
    return {"linear": linear, "linear_5shot": float(np.mean(shots)), "knn": float(knn)}


# --------------------------------------------------------------------------------------- plot
TERMS = {  # each loss's own terms: different quantities, so each gets its own axes
    "smi": {
        "loss": "SMI loss",
        "alignment": "SMI alignment: sum_i (1 - M_ii)^2",
        "redundancy": "SMI redundancy: sum_{i!=j} M_ij^2 (N x N, 3 matrices)",
    },
    "barlow": {
        "loss": "Barlow Twins loss",
        "alignment": "Barlow on-diagonal: sum_k (1 - C_kk)^2",
        "redundancy": "Barlow off-diagonal: sum_{k!=l} C_kl^2 (D x D)",
    },
}
SHARED = [  # quantities with one meaning for every loss: one axes, a line per loss
    ("embed_std", "std of L2-normalised z", False),
    ("grad_norm", "gradient norm", True),
    ("ratio", "lambda * redundancy / alignment (each loss's own terms)", True),
]


def plot(histories: dict[str, dict], path: Path, args: argparse.Namespace) -> None:
    """One column per loss for its own terms (loss, alignment, redundancy: SMI's sums over
    N x N sample matrices and Barlow's over the D x D feature matrix are different quantities),
    and a last column for what both share, one line per loss."""
    names = list(histories)
    columns = len(names) + 1
    fig, axes = plt.subplots(3, columns, figsize=(4.6 * columns, 9), squeeze=False)
    colours = {name: f"C{index}" for index, name in enumerate(names)}
    for column, name in enumerate(names):
        hist = histories[name]
        for row, key in enumerate(("loss", "alignment", "redundancy")):
            ax = axes[row][column]
            epochs = np.arange(1, len(hist[key]) + 1)
            ax.plot(epochs, hist[key], marker="o", markersize=2, color=colours[name])
            ax.set_yscale("log")
            ax.set_title(TERMS[name][key], fontsize=9)
            ax.set_xlabel("epoch")
    for row, (key, title, log) in enumerate(SHARED):
        ax = axes[row][-1]
        for name, hist in histories.items():
            epochs = np.arange(1, len(hist[key]) + 1)
            ax.plot(epochs, hist[key], marker="o", markersize=2, label=name, color=colours[name])
        if key == "embed_std":
            ax.axhline(
                1 / math.sqrt(args.proj_dim),
                color="grey",
                ls="--",
                lw=0.8,
                label=f"1/sqrt(D) = {1 / math.sqrt(args.proj_dim):.3f}: spread out",
            )
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"SSL on digits {args.image_size}x{args.image_size}: SMI lambda={args.lambda_param} "
        f"eps={args.eps}, batch {args.batch_size}, projector {args.proj_dim}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--epochs", type=int, default=50, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=256, help="images per step (two views each)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--lambda-param", type=float, default=5e-3, help="SMI redundancy weight")
    p.add_argument("--eps", type=float, default=1e-4, help="SMI transform stabiliser")
    p.add_argument(
        "--barlow-lambda", type=float, default=5.1e-3, help="Barlow Twins off-diagonal weight"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data split and views")
    p.add_argument(
        "--out-dir", type=Path, default=Path("ssl_out"), help="curves and results go here"
    )
    p.add_argument(
        "--losses", default="smi,barlow", help=f"comma-separated subset of {','.join(LOSSES)}"
    )
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--proj-dim", type=int, default=256, help="projector width (all 3 layers)")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    p.add_argument("--image-size", type=int, default=16, help="digits upsampled to this side")
    p.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian noise")
    p.add_argument("--max-steps", type=int, default=0, help="cap on steps per epoch (0: none)")
    args = p.parse_args(argv)
    args.losses = [s.strip() for s in args.losses.split(",") if s.strip()]
    for name in args.losses:
        if name not in LOSSES:
            p.error(f"unknown loss {name!r}; choose from {LOSSES}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if "barlow" in args.losses:
        barlow_reference()  # before any training: a copy outside the repository stops here
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    split = load_images(args.image_size, args.seed)
    print(
        f"digits: {len(split[0])} train / {len(split[1])} test images, "
        f"{args.image_size}x{args.image_size}; device {device}, torch threads "
        f"{torch.get_num_threads()}"
    )

    start = time.perf_counter()
    histories: dict[str, dict] = {}
    probes: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name in args.losses:
        t0 = time.perf_counter()
        encoder, histories[name] = train(name, args, split[0])
        seconds[name] = time.perf_counter() - t0
        probes[name] = evaluate(encoder, split, device, args.seed)
    probes["random"] = evaluate(
        make_encoder(args.seed, args.width).to(device), split, device, args.seed
    )

    header = (
        f"{'encoder':<12} {'linear':>7} {'5-shot':>7} {'5-NN':>7} {'loss':>9} {'align':>9} "
        f"{'redund.':>10} {'ratio':>7} {'std(z/|z|)':>10} {'grad':>8} {'train s':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, probe in probes.items():
        row = (
            f"{name if name != 'random' else 'random init':<12} {probe['linear']:>7.4f} "
            f"{probe['linear_5shot']:>7.4f} {probe['knn']:>7.4f}"
        )
        if name in histories:
            h = histories[name]
            row += (
                f" {h['loss'][-1]:>9.3f} {h['alignment'][-1]:>9.3f} {h['redundancy'][-1]:>10.3f} "
                f"{h['ratio'][-1]:>7.3f} {h['embed_std'][-1]:>10.4f} {h['grad_norm'][-1]:>8.3f} "
                f"{seconds[name]:>8.1f}"
            )
        lines.append(row)
    print(
        "\nFrozen-encoder evaluation on the held-out 30% (linear: logistic regression on all "
        "training labels; 5-shot: 5 labels per class, mean of 5 draws; 5-NN: cosine k-NN):"
    )
    print("\n".join(lines))
    print(
        "(loss terms: last-epoch means; Barlow's align/redund. are its on- and off-diagonal sums; "
        f"ratio = lambda*redund./align; std(z/|z|) of a spread-out embedding ~ 1/sqrt(D) = "
        f"{1 / math.sqrt(args.proj_dim):.4f}, 0 when collapsed)"
    )

    png = args.out_dir / "train_ssl_curves.png"
    plot(histories, png, args)
    results = {
        "probe": {name: probe["linear"] for name, probe in probes.items()},
        "probes": probes,
        "train_seconds": seconds,
        "history": histories,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out_dir / "train_ssl_results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {png} ({time.perf_counter() - start:.1f} s)")
    return results


if __name__ == "__main__":
    main()

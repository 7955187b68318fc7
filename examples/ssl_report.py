"""Summaries, the markdown report and the plots of the MNIST-1D study (from its results dict)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

METRICS = ("linear", "few_shot", "knn")
PROBE_NAMES = {"linear": "linear", "few_shot": "few-shot", "knn": "k-NN"}


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1; 0 for a single value) of finite-or-not values."""
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def paired(a: list[float], b: list[float]) -> dict:
    """Per-seed differences ``a - b``: the values, mean, std, min, max and how many are > 0."""
    diffs = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).tolist()
    return {
        "diffs": diffs,
        **mean_std(diffs),
        "min": float(min(diffs)),
        "max": float(max(diffs)),
        "positive": int(sum(d > 0 for d in diffs)),
    }


def roughness(steps: list[float]) -> float:
    """Median of |log g_t - log g_(t-1)| over consecutive steps: how jagged a gradient-norm curve
    is, independent of its scale (a loss with 10x larger gradients has the same roughness)."""
    g = np.log(np.maximum(np.asarray(steps, dtype=float), 1e-30))
    return float(np.median(np.abs(np.diff(g)))) if len(g) > 1 else float("nan")


def components_for(cumulative: list[float], fraction: float = 0.9) -> int:
    """How many principal components explain ``fraction`` of the variance."""
    c = np.asarray(cumulative, dtype=float)
    return int(np.searchsorted(c, fraction) + 1) if np.isfinite(c).all() else -1


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def fmt(summary: dict[str, float]) -> str:
    """``mean ± std`` in accuracy points (percent)."""
    return f"{pct(summary['mean'])} ± {pct(summary['std'])}"


def markdown(results: dict, labels: dict[str, str]) -> str:
    """The report: headline table, paired difference, grids, sweeps and the analyses' numbers."""
    cfg = results["config"]
    final = results["final"]
    out = [
        "# Self-supervised study on MNIST-1D",
        "",
        f"Written by `python examples/train_ssl.py{' --smoke' if cfg['smoke'] else ''}`. "
        f"{results['data']['n_train']} training / {results['data']['n_test']} test signals "
        f"(MNIST-1D, `mnist1d` {results['data']['generator']}); encoder width {cfg['width']} "
        f"({cfg['feature_dim']} features), projector D = {cfg['proj_dim']}, batch N = "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs ({results['budget']['final_steps']} steps) "
        f"per run, {cfg['seeds']} seeds; device {results['timing']['device']}.",
        "",
        "## Frozen-encoder accuracy on the test split (%, mean ± std over seeds)",
        "",
        f"linear: logistic regression on all {results['data']['n_train']} labels; few-shot: "
        f"{cfg['shots']} labels per class, mean of {cfg['draws']} draws; k-NN: {cfg['k']} "
        "neighbours, cosine.",
        "",
        "| encoder | setting | linear | few-shot | k-NN |",
        "|---|---|---|---|---|",
    ]
    for name, run in final.items():
        setting = run.get("setting", "")
        cells = " | ".join(fmt(run["summary"][m]) for m in METRICS)
        out.append(f"| {labels[name]} | {setting} | {cells} |")
    if "paired" in results:
        p = results["paired"]
        out += [
            "",
            "## Paired difference SMI - Barlow Twins (points, same seed)",
            "",
            "| probe | per seed | mean ± std | min | max | SMI ahead |",
            "|---|---|---|---|---|---|",
        ]
        for m in METRICS:
            d = p[m]
            per_seed = ", ".join(f"{100 * x:+.1f}" for x in d["diffs"])
            spread = f"{100 * d['mean']:+.1f} ± {100 * d['std']:.1f}"
            out.append(
                f"| {PROBE_NAMES[m]} | {per_seed} | {spread} | {100 * d['min']:+.1f} | "
                f"{100 * d['max']:+.1f} | {d['positive']} of {len(d['diffs'])} |"
            )
    if "separation" in results:
        s = results["separation"]
        out += [
            "",
            f"Untrained encoder vs the best SSL method ({labels[s['best']]}), linear: "
            f"{100 * s['gap']:.1f} points.",
        ]
    out += [
        "",
        "## Hyperparameter grids (one seed, validation split of the training set)",
        "",
        f"Each method: {results['budget']['grid_runs_per_method']} runs of "
        f"{results['budget']['grid_steps']} steps; trained on {results['data']['n_fit']} "
        f"signals, linear probe on the other {results['data']['n_val']}.",
        "",
        "| method | parameter | values | validation linear (%) | chosen |",
        "|---|---|---|---|---|",
    ]
    for name, g in results["grid"].items():
        values = ", ".join(f"{v:g}" for v in g["values"])
        accs = ", ".join(pct(a) for a in g["val_linear"])
        out.append(f"| {labels[name]} | {g['param']} | {values} | {accs} | {g['winner']:g} |")
    if "lambda_sweep" in results:
        lam = results["lambda_sweep"]
        out += [
            "",
            "## SMI: lambda sweep (eps = 1e-4) and eps sweep",
            "",
            "The std of the L2-normalised embeddings, last epoch, times sqrt(D) (1: as spread as "
            "a random direction; 0: collapsed).",
            "",
            "| lambda | in the grid | validation linear (%) | embedding std x sqrt(D) | "
            "redundancy / alignment |",
            "|---|---|---|---|---|",
        ]
        for v, g, a, s, r in zip(
            lam["values"],
            lam["in_grid"],
            lam["val_linear"],
            lam["std_sqrt_d"],
            lam["ratio"],
            strict=True,
        ):
            out.append(f"| {v:g} | {'yes' if g else 'no'} | {pct(a)} | {s:.3f} | {r:.3g} |")
        eps = results["eps_sweep"]
        out += [
            "",
            f"| eps (lambda = {eps['lambda']:g}) | validation linear (%) | embedding std x sqrt(D) "
            "| rho at M_ii = 1 |",
            "|---|---|---|---|",
        ]
        for v, a, s, r in zip(
            eps["values"], eps["val_linear"], eps["std_sqrt_d"], eps["rho_opt"], strict=True
        ):
            out.append(f"| {v:g} | {pct(a)} | {s:.3f} | {r:.4f} |")
    opt = results["alignment_optimum"]
    out += [
        "",
        "## The alignment term's optimum",
        "",
        f"M_ii = 1 at rho = sqrt(1 + eps - e^-2) = {opt['rho']:.4f} (eps = {opt['eps']:g}); "
        f"identical views (`loss_fn(z, z.clone())`, N = {opt['n']}, D = {opt['d']}) give "
        f"rho = 1, M_ii = -log(eps) / 2 = {opt['m_at_one']:.3f} and a loss of "
        f"{opt['identical_loss']:.1f} (alignment {opt['identical_alignment']:.1f} = "
        f"N (1 + log(eps) / 2)^2).",
        "",
        "## Analyses (final runs)",
        "",
        "| method | grad norm (mean over steps) | roughness | redundancy / alignment, last "
        "epoch | its spread over epochs 2+ (CV) | components for 90% variance |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in final.items():
        a = run.get("analysis", {})
        cells = [
            f"{a['grad_norm']:.3g}" if "grad_norm" in a else "",
            f"{a['roughness']:.3f}" if "roughness" in a else "",
            f"{a['ratio_last']:.3g}" if "ratio_last" in a else "",
            f"{a['ratio_cv']:.3f}" if "ratio_cv" in a else "",
            str(a.get("components_90", "")),
        ]
        out.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Roughness: median |log g_t - log g_t-1| between consecutive steps (scale-free). The "
        "ratio is each loss's own weighted redundancy over its alignment term (SMI: lambda "
        "L_red / L_align; Barlow Twins: lambda off-diagonal / on-diagonal; VICReg: covariance / "
        "invariance), so its level is comparable within a method, not across.",
        "",
        f"Wall time: {results['timing']['total_seconds'] / 60:.1f} min "
        f"({results['timing']['threads']} torch threads).",
        "",
    ]
    return "\n".join(out)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grad_norm(results: dict, labels: dict[str, str], path: Path) -> None:
    """Per-step gradient norm of the seed-0 runs of SMI and Barlow Twins (faint) with its running
    mean over 25 steps: raw, and divided by its own mean (the shape of the curve, free of each
    loss's scale)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, name in enumerate(("smi", "barlow")):
        if name not in results["final"]:
            continue
        g = np.asarray(results["final"][name]["grad_norm_steps"], dtype=float)
        steps = np.arange(1, len(g) + 1)
        window = min(25, len(g))
        smooth = np.convolve(g, np.ones(window) / window, mode="valid")
        for ax, scale in zip(axes, (1.0, g.mean()), strict=True):
            ax.plot(steps, g / scale, lw=0.5, alpha=0.35, color=f"C{index}")
            ax.plot(
                steps[window - 1 :], smooth / scale, lw=1.5, color=f"C{index}", label=labels[name]
            )
    axes[0].set_yscale("log")
    axes[0].set_title("gradient norm per step (seed 0; line: mean of 25 steps)")
    axes[1].set_title("gradient norm / its mean over training")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    _save(fig, path)


def plot_lambda_std(results: dict, path: Path) -> None:
    """Std of the normalised embeddings over training, one line per lambda of the SMI sweep."""
    sweep = results["lambda_sweep"]
    d = results["config"]["proj_dim"]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(sweep["values"])))
    for value, curve, colour in zip(sweep["values"], sweep["std_curves"], colours, strict=True):
        epochs = np.arange(1, len(curve) + 1)
        std = np.asarray(curve) * math.sqrt(d)
        ax.plot(epochs, std, marker="o", ms=3, color=colour, label=f"λ = {value:g}")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="1/sqrt(D): spread out")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("std(z / |z|) x sqrt(D)")
    ax.set_title(f"SMI: embedding spread over training (eps = 1e-4, D = {d})")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def plot_lambda_accuracy(results: dict, path: Path) -> None:
    """Validation linear accuracy against the embedding std across the lambda sweep, and
    against eps across the eps sweep."""
    lam, eps = results["lambda_sweep"], results["eps_sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    acc = 100 * np.asarray(lam["val_linear"])
    ax.plot(lam["std_sqrt_d"], acc, "-", color="grey", lw=0.8)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(acc)))
    for v, s, a, colour in zip(lam["values"], lam["std_sqrt_d"], acc, colours, strict=True):
        ax.plot(s, a, "o", color=colour, label=f"λ = {v:g}")
    ax.legend(fontsize=8)
    ax.set_xlabel("std(z / |z|) x sqrt(D), last epoch")
    ax.set_ylabel("validation linear accuracy (%)")
    ax.set_title("SMI: accuracy against embedding spread (lambda sweep)", fontsize=10)
    ax = axes[1]
    eps_acc = 100 * np.asarray(eps["val_linear"])
    ax.semilogx(eps["values"], eps_acc, "o-")
    centre = float(np.nanmean(eps_acc))
    ax.set_ylim(centre - 5, centre + 5)  # the same 10-point window at every scale of noise
    ax.set_xlabel("eps")
    ax.set_ylabel("validation linear accuracy (%)")
    ax.set_title(f"SMI: eps sweep (λ = {eps['lambda']:g}; one seed a point)", fontsize=10)
    _save(fig, path)


def plot_ratio(results: dict, labels: dict[str, str], path: Path) -> None:
    """Redundancy / alignment over training, mean over seeds with the min-max band, one panel
    per method (each loss's own terms: levels are comparable within a panel only)."""
    names = [n for n in ("smi", "barlow", "vicreg") if n in results["final"]]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        curves = np.asarray(results["final"][name]["ratio_curves"], dtype=float)
        epochs = np.arange(1, curves.shape[1] + 1)
        ax.plot(epochs, curves.mean(0), marker="o", ms=3, color="C0")
        ax.fill_between(epochs, curves.min(0), curves.max(0), alpha=0.25, color="C0")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{labels[name]}: redundancy / alignment", fontsize=10)
    _save(fig, path)


def plot_eigenspectrum(results: dict, labels: dict[str, str], path: Path) -> None:
    """Cumulative explained variance of the frozen features' principal components."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, run in results["final"].items():
        c = np.asarray(run["eigenspectrum"], dtype=float)
        style = "--" if name in ("random", "supervised") else "-"
        ax.plot(np.arange(1, len(c) + 1), c, style, label=labels[name])
    ax.set_xscale("log")
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_title("Eigenspectrum of the encoder features (test split, seed 0)")
    ax.legend(fontsize=8)
    _save(fig, path)


def write_plots(results: dict, labels: dict[str, str], out_dir: Path, prefix: str) -> list[Path]:
    """Every plot the results allow; returns their paths."""
    paths = []

    def target(name: str) -> Path:
        paths.append(out_dir / f"{prefix}_{name}.png")
        return paths[-1]

    plot_eigenspectrum(results, labels, target("eigenspectrum"))
    if {"smi", "barlow"} & set(results["final"]):
        plot_grad_norm(results, labels, target("grad_norm"))
    if {"smi", "barlow", "vicreg"} & set(results["final"]):
        plot_ratio(results, labels, target("ratio"))
    if "lambda_sweep" in results:
        plot_lambda_std(results, target("lambda_std"))
        plot_lambda_accuracy(results, target("lambda_accuracy"))
    return paths

"""Self-supervised study on MNIST-1D: SMI against Barlow Twins, VICReg and NT-Xent.

A small 1-D CNN encoder and the paper's projector (Linear-BN-ReLU, Linear-BN-ReLU, Linear, width
D = 4 N) learn from two augmented views of MNIST-1D signals (generated offline by the ``mnist1d``
package and cached; augmentations from MNIST-1D's own family, in torch). Every SSL method gets
the same training budget and the same hyperparameter grid budget (one parameter, five values,
chosen on a validation split of the training set); then each trains on the whole training set
with several seeds, and the frozen encoder's features (not the projector's) are read on the test
split by a linear probe on every label, a few-shot linear probe and k-NN. Anchors: the same
encoder untrained (random init) and trained supervised (upper bound).

Written to ``--out-dir``: ``train_ssl.json`` (every number), ``train_ssl.md`` (the tables) and
plots: gradient norm over training (SMI vs Barlow Twins), embedding spread over training across
SMI's lambda sweep, accuracy against that spread (and the eps sweep), redundancy / alignment over
training, and the eigenspectrum of every method's features.

    pip install -e ".[examples]"     # mnist1d, scikit-learn, matplotlib, tqdm, numpy
    python examples/train_ssl.py     # the committed study: examples/results/ (2-core CPU: ~20 min)
    python examples/train_ssl.py --device cuda
    python examples/train_ssl.py --smoke   # the whole pipeline on a tiny budget (< 1 min)

Barlow Twins, VICReg and NT-Xent come from ``reference/`` of the smi-kernels repository; a copy
of this script outside the repository studies SMI alone (``--methods smi``).
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads make this small model several times slower on a machine that
# another busy process shares; passive waiting avoids that. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import matplotlib  # noqa: F401
    import numpy as np
    import sklearn  # noqa: F401
    from tqdm import tqdm
except ImportError as missing:
    raise SystemExit(
        f"examples/train_ssl.py needs {missing.name}: install the example's dependencies with "
        'pip install "smi-kernels[examples]" (or pip install -e ".[examples]" in a clone)'
    ) from missing

import torch
from ssl_data import Split, fingerprint, load_mnist1d, validation_split
from ssl_report import components_for, markdown, mean_std, paired, roughness, write_plots
from ssl_train import (
    ANCHORS,
    METHODS,
    ProbeConfig,
    RunConfig,
    eigenspectrum,
    evaluate,
    features,
    make_encoder,
    reference_losses,
    train,
)

from smi_kernels import SMILoss

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PREFIX = "train_ssl"
EPS_DEFAULT = 1e-4
LABELS = {**{name: m.label for name, m in METHODS.items()}, **ANCHORS}


@dataclass
class Study:
    """Everything that decides what the study trains and how it reads the encoders out."""

    methods: list[str]
    seeds: int = 5
    epochs: int = 8
    batch_size: int = 64
    proj_dim: int = 256
    width: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    eps_values: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    short_grid: bool = False  # each method's first and last grid value only
    lambda_extra: tuple[float, ...] = (1e-4, 1e-3)  # SMI's lambda sweep beyond its grid
    max_steps: int = 0  # cap on steps per epoch (0: full passes)
    n_train: int = 0  # 0: every training signal; else a subset (smoke)
    n_test: int = 0
    shots: int = 10
    draws: int = 10
    k: int = 10
    device: str = "cpu"
    out_dir: Path = RESULTS_DIR
    smoke: bool = False
    render_only: bool = False
    probe: ProbeConfig = field(init=False)

    def __post_init__(self) -> None:
        self.probe = ProbeConfig(self.shots, self.draws, self.k)

    def run(self, method: str, value: float | None, seed: int, eps: float = EPS_DEFAULT):
        """The :class:`RunConfig` of one run under this study's shared budget."""
        return RunConfig(
            method, value, eps, seed, self.epochs, self.batch_size, self.proj_dim, self.width,
            self.lr, self.weight_decay, self.max_steps,
        )  # fmt: skip

    def grid(self, method: str) -> tuple[float, ...]:
        values = METHODS[method].grid
        return (values[0], values[-1]) if self.short_grid else values


SMOKE = {
    "seeds": 2, "epochs": 3, "batch_size": 32, "proj_dim": 128, "width": 8, "max_steps": 6,
    "n_train": 800, "n_test": 400, "shots": 5, "draws": 2, "k": 5, "short_grid": True,
    "lambda_extra": (1e-4,), "eps_values": (1e-6, 1e-4, 1e-2),
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> Study:
    """The command line, checked: a bad value stops here with a message naming it."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated SSL methods")
    p.add_argument("--seeds", type=int, default=5, help="seeds of the final runs, per method")
    p.add_argument("--epochs", type=int, default=8, help="passes over the data, every run")
    p.add_argument("--batch-size", type=int, default=64, help="signals per step (N; two views)")
    p.add_argument("--proj-dim", type=int, default=256, help="projector width D")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out-dir", type=Path, default=None, help="default: examples/results/")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the whole pipeline on a tiny budget, into a temporary folder, with checks",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the markdown and the plots from --out-dir's train_ssl.json, train nothing",
    )
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        p.error(f"unknown method {', '.join(map(repr, unknown))}; choose from {','.join(METHODS)}")
    for name in ("seeds", "epochs", "proj_dim", "width"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if a.batch_size < 2:
        p.error(f"--batch-size must be at least 2 (positive, and a batch of one has no spread), "
                f"got {a.batch_size}")  # fmt: skip
    if not a.lr > 0:
        p.error(f"--lr must be positive, got {a.lr}")
    if a.device.startswith("cuda"):
        if not torch.cuda.is_available():
            p.error(f"--device {a.device}, but CUDA is not available (torch {torch.__version__})")
    elif a.device != "cpu":
        p.error(f"--device must be cpu or cuda[:index], got {a.device!r}")
    if a.render_only:
        return Study(methods, out_dir=a.out_dir or RESULTS_DIR, render_only=True)
    if a.smoke:
        out_dir = a.out_dir or Path(tempfile.mkdtemp(prefix="smi-ssl-smoke-"))
        if out_dir.resolve() == RESULTS_DIR.resolve():
            p.error("--smoke never writes into the committed results: pick another --out-dir")
        return Study(methods, device=a.device, out_dir=out_dir, smoke=True, lr=a.lr, **SMOKE)
    return Study(
        methods, a.seeds, a.epochs, a.batch_size, a.proj_dim, a.width, a.lr,
        device=a.device, out_dir=a.out_dir or RESULTS_DIR,
    )  # fmt: skip


class Progress:
    """One tqdm bar over every training step of the study (its ETA), and a log line per run."""

    def __init__(self, total: int) -> None:
        # a log file (not a terminal) gets a line every 15 s rather than every step
        interval = 0.1 if sys.stderr.isatty() else 15.0
        self.bar = tqdm(
            total=total, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=interval
        )

    def stage(self, text: str) -> None:
        self.bar.set_description(text)

    def tick(self) -> None:
        self.bar.update()

    def log(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)


def load_splits(study: Study) -> tuple[dict, Split, Split, Split, Split]:
    """MNIST-1D as (data info, train, test, fit, validation); fit + validation = train."""
    data = load_mnist1d()
    info = {"generator": "make_dataset(default args, seed 42)", "fingerprint": fingerprint(data)}
    x, y, x_test, y_test = data["x"], data["y"], data["x_test"], data["y_test"]
    if study.n_train:
        x, y = x[: study.n_train], y[: study.n_train]
    if study.n_test:
        x_test, y_test = x_test[: study.n_test], y_test[: study.n_test]
    train_set = Split(torch.from_numpy(x), y)
    test_set = Split(torch.from_numpy(x_test), y_test)
    fit, val = validation_split(x, y, study.val_fraction, seed=0)
    info.update(n_train=len(y), n_test=len(y_test), n_fit=len(fit.y), n_val=len(val.y))
    return info, train_set, test_set, fit, val


def plan(study: Study, n_fit: int, n_train: int) -> dict[str, int]:
    """Steps of every stage (the progress bar's total) and the per-run budgets."""
    grid_steps = study.epochs * study.run("smi", 0, 0).steps_per_epoch(n_fit)
    final_steps = study.epochs * study.run("smi", 0, 0).steps_per_epoch(n_train)
    grid_runs = len(study.grid(study.methods[0]))
    eps_runs = lambda_runs = 0
    if "smi" in study.methods:
        eps_runs = len(study.eps_values) - 1
        lambda_runs = len(set(study.lambda_extra) - set(study.grid("smi")))
    total = (len(study.methods) * grid_runs + eps_runs + lambda_runs) * grid_steps
    total += (len(study.methods) + 1) * study.seeds * final_steps  # SSL and supervised
    return {
        "grid_steps": grid_steps,
        "final_steps": final_steps,
        "grid_runs_per_method": grid_runs,
        "eps_runs": eps_runs,
        "lambda_extra_runs": lambda_runs,
        "total_steps": total,
    }


def last_std(history: dict) -> float:
    return history["embed_std"][-1] if history["embed_std"] else float("nan")


def validate(study, run: RunConfig, fit: Split, val: Split, device, progress: Progress):
    """Train ``run`` on the fit split; its linear-probe accuracy on the validation split and
    its history (without the per-step gradient norms)."""
    encoder, hist = train(run, fit.x, fit.y, device, progress.tick)
    f_fit, f_val = features(encoder, fit.x, device), features(encoder, val.x, device)
    acc = evaluate(f_fit, fit.y, f_val, val.y, study.probe, run.seed, linear_only=True)["linear"]
    hist.pop("grad_norm_steps")
    return acc, hist


def run_grids(study, fit: Split, val: Split, device, progress: Progress) -> dict:
    """Each method's grid at seed 0 on the fit split, scored by the linear probe on the
    validation split; the winner is the best validation accuracy."""
    grids = {}
    for name in study.methods:
        method = METHODS[name]
        entry = {"param": method.param, "values": [], "val_linear": [], "histories": []}
        for value in study.grid(name):
            progress.stage(f"grid {name} {method.param}={value:g}")
            acc, hist = validate(study, study.run(name, value, 0), fit, val, device, progress)
            entry["values"].append(value)
            entry["val_linear"].append(acc)
            entry["histories"].append(hist)
            progress.log(f"grid {name:>6} {method.param}={value:<7g} validation linear {acc:.3f}")
        scores = np.nan_to_num(np.asarray(entry["val_linear"]), nan=-1.0)
        entry["winner"] = entry["values"][int(np.argmax(scores))]
        grids[name] = entry
    return grids


def sweeps(study, grids: dict, fit: Split, val: Split, device, progress: Progress):
    """SMI's lambda sweep at eps = 1e-4 (its grid's runs and ``study.lambda_extra``) and eps
    sweep at the chosen lambda (the eps = 1e-4 point is the grid's run), scored as the grid is.
    Guidance only: the extra points choose nothing, and the final SMI runs keep eps = 1e-4."""
    g = grids["smi"]
    root_d = math.sqrt(study.proj_dim)
    runs = dict(zip(g["values"], zip(g["val_linear"], g["histories"], strict=True), strict=True))
    for value in study.lambda_extra:
        if value not in runs:
            progress.stage(f"lambda sweep lambda={value:g}")
            runs[value] = validate(study, study.run("smi", value, 0), fit, val, device, progress)
            progress.log(f"lambda sweep lambda={value:<7g} validation linear {runs[value][0]:.3f}")
    values = sorted(runs)
    lam = {
        "values": values,
        "in_grid": [v in g["values"] for v in values],
        "val_linear": [runs[v][0] for v in values],
        "std_curves": [runs[v][1]["embed_std"] for v in values],
        "std_sqrt_d": [last_std(runs[v][1]) * root_d for v in values],
        "ratio": [runs[v][1]["ratio"][-1] for v in values],
    }
    eps = {"lambda": g["winner"], "values": [], "val_linear": [], "std_sqrt_d": [], "rho_opt": []}
    for value in study.eps_values:
        if value == EPS_DEFAULT:
            acc, hist = runs[g["winner"]]
        else:
            progress.stage(f"eps sweep eps={value:g}")
            run = study.run("smi", g["winner"], 0, eps=value)
            acc, hist = validate(study, run, fit, val, device, progress)
            progress.log(f"eps sweep eps={value:<7g} validation linear {acc:.3f}")
        eps["values"].append(value)
        eps["val_linear"].append(acc)
        eps["std_sqrt_d"].append(last_std(hist) * root_d)
        eps["rho_opt"].append(math.sqrt(1 + value - math.exp(-2)))
    return lam, eps


def final_runs(study, grids, train_set: Split, test: Split, device, progress: Progress) -> dict:
    """Every method at its chosen value, and the two anchors, over ``study.seeds`` seeds, read
    out on the test split; seed 0's features give the eigenspectrum."""
    final: dict[str, dict] = {}
    names = [*study.methods, "supervised", "random"]
    for name in names:
        final[name] = {m: [] for m in ("linear", "few_shot", "knn", "train_seconds")}
        final[name].update(ratio_curves=[], grad_norm_mean=[], roughness=[])
        if name in grids:
            final[name]["setting"] = f"{grids[name]['param']} = {grids[name]['winner']:g}"
            if name == "smi":
                final[name]["setting"] += f", eps = {EPS_DEFAULT:g}"
    for seed in range(study.seeds):
        for name in names:
            run = final[name]
            t0 = time.perf_counter()
            if name == "random":
                encoder, hist = make_encoder(seed, study.width).to(device), None
            else:
                progress.stage(f"final {name} seed {seed}")
                value = grids[name]["winner"] if name in grids else None
                encoder, hist = train(
                    study.run(name, value, seed), train_set.x, train_set.y, device, progress.tick
                )
            run["train_seconds"].append(time.perf_counter() - t0)
            f_train, f_test = (
                features(encoder, train_set.x, device),
                features(encoder, test.x, device),
            )
            acc = evaluate(f_train, train_set.y, f_test, test.y, study.probe, seed)
            for metric, value in acc.items():
                run[metric].append(value)
            if hist is not None:
                run["grad_norm_mean"].append(float(np.mean(hist["grad_norm_steps"])))
                run["roughness"].append(roughness(hist["grad_norm_steps"]))
                if name != "supervised":
                    run["ratio_curves"].append(hist["ratio"])
            if seed == 0:
                run["eigenspectrum"] = eigenspectrum(f_test)
                if hist is not None:
                    run["history_seed0"] = {k: v for k, v in hist.items() if k != "grad_norm_steps"}
                    run["grad_norm_steps"] = hist["grad_norm_steps"]
            progress.log(
                f"final {name:>10} seed {seed}: linear {acc['linear']:.3f}  few-shot "
                f"{acc['few_shot']:.3f}  k-NN {acc['knn']:.3f}"
            )
    for name, run in final.items():
        run["summary"] = {m: mean_std(run[m]) for m in ("linear", "few_shot", "knn")}
        analysis = {"components_90": components_for(run["eigenspectrum"])}
        if run["grad_norm_mean"]:
            analysis["grad_norm"] = float(np.mean(run["grad_norm_mean"]))
            analysis["roughness"] = float(np.mean(run["roughness"]))
        if run["ratio_curves"] and name != "ntxent":
            curves = np.asarray(run["ratio_curves"], dtype=float)
            analysis["ratio_last"] = float(curves[:, -1].mean())
            later = curves[:, 1:] if curves.shape[1] > 1 else curves
            analysis["ratio_cv"] = float((later.std(1) / np.abs(later.mean(1))).mean())
        run["analysis"] = analysis
    return final


def alignment_optimum(eps: float = EPS_DEFAULT, n: int = 256, d: int = 2048) -> dict:
    """Where this reading's alignment term is optimal, and what identical views cost."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    out = SMILoss(eps=eps, backend="torch").forward_with_terms(z, z.clone())
    return {
        "eps": eps,
        "rho": math.sqrt(1 + eps - math.exp(-2)),
        "m_at_one": -0.5 * math.log(eps),
        "n": n,
        "d": d,
        "identical_loss": out.loss.item(),
        "identical_alignment": out.alignment.item(),
    }


def smoke_checks(results: dict, paths: list[Path]) -> list[str]:
    """What a tiny run must still show; failures as messages. Each bound sits far from both what
    this pipeline gives (the numbers in the comments) and what a broken one would give."""
    problems = []
    for path in paths:
        if not path.is_file() or path.stat().st_size < 1000:
            problems.append(f"{path} was not written")
    root_d = math.sqrt(results["config"]["proj_dim"])
    spreads = {
        f"{name} {results['grid'][name]['param']}={value:g}": h["embed_std"][-1] * root_d
        for name, histories in results["grid_histories"].items()
        for value, h in zip(results["grid"][name]["values"], histories, strict=True)
    }
    spreads.update(
        {f"final {n}": r["history_seed0"]["embed_std"][-1] * root_d
         for n, r in results["final"].items() if n in METHODS}
    )  # fmt: skip
    for run, spread in spreads.items():
        # std x sqrt(D) is about 1 for directions spread like random ones and 0 when collapsed;
        # these runs end between 0.38 (SMI) and 0.96
        if not spread > 0.15:
            problems.append(f"{run}: embedding std x sqrt(D) = {spread:.3f} (collapsed)")
    for name, run in results["final"].items():
        for metric in ("linear", "few_shot", "knn"):
            for acc in run[metric]:  # ten classes: chance is 0.1; these runs give 0.25-0.45
                if not 0.2 <= acc <= 1.0:
                    problems.append(f"{name}: {metric} accuracy {acc} out of [0.2, 1]")
    if "smi" in results["grid"]:
        hist = results["grid_histories"]["smi"][0]
        # at the grid's first lambda (5e-3, the package default) the alignment term falls about
        # sevenfold in these 18 steps
        if not hist["alignment"][-1] < 0.5 * hist["alignment"][0]:
            problems.append(f"SMI alignment did not fall: {hist['alignment']}")
        for loss, align, red in zip(
            hist["loss"], hist["alignment"], hist["redundancy"], strict=True
        ):
            if abs(loss - align - red) > 1e-4 * abs(loss):  # red is lambda * L_red
                problems.append(f"SMI loss {loss} != alignment {align} + lambda x L_red {red}")
    return problems


def render(results: dict, out_dir: Path) -> list[Path]:
    """Write the plots and the markdown report of ``results`` into ``out_dir``."""
    paths = write_plots(results, LABELS, out_dir, PREFIX)
    (out_dir / f"{PREFIX}.md").write_text(markdown(results, LABELS))
    return [*paths, out_dir / f"{PREFIX}.md"]


def main(argv: list[str] | None = None) -> dict:
    study = parse_args(argv)
    if study.render_only:
        results = json.loads((study.out_dir / f"{PREFIX}.json").read_text())
        paths = render(results, study.out_dir)
        print(f"wrote {', '.join(p.name for p in paths)} to {study.out_dir}")
        return results
    if set(study.methods) - {"smi"}:
        reference_losses()  # before anything runs: a copy outside the repository stops here
    start = time.perf_counter()
    device = torch.device(study.device)
    info, train_set, test, fit, val = load_splits(study)
    budget = plan(study, len(fit.y), len(train_set.y))
    study.out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"MNIST-1D {info['n_train']} train ({info['n_fit']} fit + {info['n_val']} validation) / "
        f"{info['n_test']} test; methods {','.join(study.methods)}; {study.seeds} seeds; "
        f"{budget['total_steps']} steps on {device} ({torch.get_num_threads()} torch threads); "
        f"writing {study.out_dir}",
        flush=True,
    )
    progress = Progress(budget["total_steps"])
    grids = run_grids(study, fit, val, device, progress)
    results: dict = {"grid": {}}
    if "smi" in study.methods:
        results["lambda_sweep"], results["eps_sweep"] = sweeps(
            study, grids, fit, val, device, progress
        )
    final = final_runs(study, grids, train_set, test, device, progress)
    progress.bar.close()

    config = {k: v for k, v in asdict(study).items() if k not in ("probe", "out_dir")}
    config["feature_dim"] = 4 * study.width
    results.update(config=config, data=info, budget=budget, final=final)
    results["grid"] = {
        n: {k: v for k, v in g.items() if k != "histories"} for n, g in grids.items()
    }
    results["grid_histories"] = {n: g["histories"] for n, g in grids.items()}
    if {"smi", "barlow"} <= set(study.methods):
        results["paired"] = {
            m: paired(final["smi"][m], final["barlow"][m]) for m in ("linear", "few_shot", "knn")
        }
    best = max(study.methods, key=lambda n: final[n]["summary"]["linear"]["mean"])
    gap = final[best]["summary"]["linear"]["mean"] - final["random"]["summary"]["linear"]["mean"]
    results["separation"] = {"best": best, "gap": gap}
    results["alignment_optimum"] = alignment_optimum()
    results["timing"] = {
        "total_seconds": time.perf_counter() - start,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    (study.out_dir / f"{PREFIX}.json").write_text(json.dumps(results, indent=1))
    paths = [*render(results, study.out_dir), study.out_dir / f"{PREFIX}.json"]

    print(markdown(results, LABELS).split("## Hyperparameter grids")[0])
    print(f"wrote {', '.join(p.name for p in paths)} to {study.out_dir} "
          f"({results['timing']['total_seconds'] / 60:.1f} min)")  # fmt: skip
    if study.smoke:
        problems = smoke_checks(results, paths)
        if problems:
            raise SystemExit("smoke check failed:\n  " + "\n  ".join(problems))
        print("smoke checks passed")
    return results


if __name__ == "__main__":
    main()

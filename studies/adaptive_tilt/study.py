#!/usr/bin/env python
"""Adaptive-tilt study: the paper's Fig. 3 (test accuracy against t) on a benchmark where the tilt bites,
with ``tilt="auto"`` at three ESS targets and the ablations that separate tilt from noise.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python studies/adaptive_tilt/study.py

runs (or resumes: finished runs are skipped, the SQLite sweep database remembers them) every run into
``results/adaptive-tilt/`` and writes there ``summary.md``, ``summary.csv``, ``paired.csv``,
``fig3-accuracy-vs-tilt.png``, ``auto-tilt-over-training.png`` and ``ess-vs-tilt.png``.
``--analyze-only`` redoes the tables and figures from the database. See docs/adaptive-tilt.md.

Setting (chosen so that the ESS at the paper's t falls below s, measured first; docs/adaptive-tilt.md):
MNIST-5k, 20% label noise (train and validation), MLP 256-256, SGD lr 0.01 momentum 0.9 wd 5e-4, batch 64,
label smoothing 0.1, 8 epochs, TSAM s = 3, rho = 0.05, noise_radius = 10, delta = t/2; 5 seeds; one thread.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

OUT_DIR = "results/adaptive-tilt"
SEEDS = [0, 1, 2, 3, 4]
EPOCHS = 8
NOISE_RADIUS = 10.0
RHO = 0.05
NUM_SAMPLES = 3
#: the paper's grid {0, 1, 5, 20, 100}, extended until the ESS is well below s
PAPER_TILTS = (0.0, 1.0, 5.0, 20.0, 100.0)
TILTS = PAPER_TILTS + (300.0, 1000.0)
TARGETS = (0.5, 0.8, 0.95)
MAX_TILT = 2000.0


def tsam_settings(**extra: Any) -> dict[str, Any]:
    return {"num_samples": NUM_SAMPLES, "rho": RHO, "noise_radius": NOISE_RADIUS, **extra}


def label_for_tilt(tilt: float) -> str:
    return f"tsam-t{tilt:g}"


def label_for_target(target: float) -> str:
    return f"auto-ess{target:g}"


def sweep_config(out_dir: str, seeds: list[int], epochs: int, limit: int | None) -> Any:
    from tiltedsam.harness.config import from_dict
    from tiltedsam.harness.sweep import SweepConfig

    variants: dict[str, dict[str, Any]] = {
        "sam": {"optimizer.name": "sam", "optimizer.settings": {"rho": RHO}},
        "tsam-s1": {"optimizer.name": "tsam",
                    "optimizer.settings": tsam_settings(tilt=0.0, num_samples=1)},
    }
    for tilt in TILTS:
        variants[label_for_tilt(tilt)] = {"optimizer.name": "tsam", "optimizer.settings": tsam_settings(tilt=tilt)}
    for target in TARGETS:
        variants[label_for_target(target)] = {
            "optimizer.name": "tsam",
            "optimizer.settings": tsam_settings(tilt="auto", target_ess=target, max_tilt=MAX_TILT)}
    base: dict[str, Any] = {
        "batch_size": 64, "label_smoothing": 0.1,
        "data": {"name": "mnist5k", "label_noise": 0.2, "clean_validation": False},
        "model": {"name": "mlp"},
        "optimizer": {"base": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "budget": {"kind": "epochs", "amount": epochs},
        "run": {"num_threads": 1},
    }
    if limit:
        base["data"]["limit"] = limit
    return from_dict(SweepConfig, {
        "name": "adaptive-tilt", "out_dir": out_dir, "optimizers": list(variants), "seeds": seeds,
        "workers": 1, "threads_per_worker": 1, "progress": True, "base": base, "variants": variants})


# ---------------------------------------------------------------------------------------------- analysis
def load_runs(out_dir: str) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> {result, epochs (metric rows in order)} for every finished run."""
    from tiltedsam.harness.sweep import iter_results, open_database

    connection = open_database(out_dir)
    try:
        runs: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for row in iter_results(connection):
            epochs = [json.loads(r["metrics"]) for r in connection.execute(
                "SELECT metrics FROM epochs WHERE run_key=? ORDER BY epoch", (row["run_key"],))]
            runs[row["label"]][row["seed"]] = {"result": row["result"], "epochs": epochs}
    finally:
        connection.close()
    return runs


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def _finite_mean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def _ci_half_width(values: list[float]) -> float:
    """Half-width of the t-based 95% interval of the mean (0 for fewer than two values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return 0.0
    return float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for label, by_seed in runs.items():
        seeds = sorted(by_seed)
        res = [by_seed[s]["result"] for s in seeds]
        ess = [float(np.nanmean([e["effective_sample_size"] for e in by_seed[s]["epochs"]])) for s in seeds]
        tilts = [_finite_mean([e["tilt"] for e in by_seed[s]["epochs"]]) for s in seeds]  # nan for SAM
        rows.append({
            "label": label, "seeds": len(seeds), "grad_evals_per_run": res[0]["grad_evals"],
            "tilt_mean": float(np.mean(tilts)),
            "best_val_test_acc": [r["best_val_test_acc"] for r in res],
            "best_val_acc": [r["best_val_acc"] for r in res],
            "final_test_acc": [r["final_test_acc"] for r in res],
            "ess_mean": float(np.mean(ess)),
            "train_seconds": float(np.mean([r["train_seconds"] for r in res])),
            "by_seed": dict(zip(seeds, res)),
        })
    return rows


def _order(label: str) -> tuple[int, float]:
    if label == "sam":
        return (0, 0.0)
    if label == "tsam-s1":
        return (1, 0.0)
    if label.startswith("tsam-t"):
        return (2, float(label[len("tsam-t"):]))
    return (3, -float(label[len("auto-ess"):]))


def analyze(out_dir: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tiltedsam._atomic import atomic_write
    from tiltedsam.harness.stats import paired_by_seed

    runs = load_runs(out_dir)
    rows = sorted(summarize(runs), key=lambda r: _order(r["label"]))
    by_label = {r["label"]: r for r in rows}
    out = Path(out_dir)

    def seed_map(label: str, key: str) -> dict[int, float]:
        return {s: res[key] for s, res in by_label[label]["by_seed"].items()}

    # ---- validation-selected t: mean over seeds of each run's best validation accuracy (the paper's rule)
    def select(labels: list[str]) -> str:
        return max(labels, key=lambda lb: (np.mean(by_label[lb]["best_val_acc"]), -_order(lb)[1]))

    paper_grid = [label_for_tilt(t) for t in PAPER_TILTS if label_for_tilt(t) in by_label]
    full_grid = [label_for_tilt(t) for t in TILTS if label_for_tilt(t) in by_label]
    autos = [label_for_target(a) for a in TARGETS if label_for_target(a) in by_label]
    chosen_paper = select(paper_grid) if paper_grid else None
    chosen_full = select(full_grid) if full_grid else None

    # ---- summary table
    columns = ["label", "grad evals/step", "mean t used", "mean ESS (of s)", "test acc % (best-val epoch)",
               "final-epoch test acc %", "val acc % (best epoch)", "train s/run"]
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    csv_rows = [["label", "grad_evals_per_step", "grad_evals_per_run", "tilt_mean", "ess_mean",
                 "best_val_test_acc_mean", "best_val_test_acc_sd", "final_test_acc_mean", "final_test_acc_sd",
                 "best_val_acc_mean", "seeds", "train_seconds_mean"]]
    for r in rows:
        steps = r["by_seed"][min(r["by_seed"])]["steps"]
        per_step = r["grad_evals_per_run"] // max(steps, 1)
        bt, bs = _mean_sd(r["best_val_test_acc"])
        ft, fs = _mean_sd(r["final_test_acc"])
        vm, _ = _mean_sd(r["best_val_acc"])
        ess_cell = f"{r['ess_mean']:.3f}" if r["label"] != "sam" else "–"
        tilt_cell = f"{r['tilt_mean']:.3g}" if r["label"] != "sam" else "–"
        md.append(f"| {r['label']} | {per_step} | {tilt_cell} | {ess_cell} | {100 * bt:.2f} ± {100 * bs:.2f} | "
                  f"{100 * ft:.2f} ± {100 * fs:.2f} | {100 * vm:.2f} | {r['train_seconds']:.1f} |")
        csv_rows.append([r["label"], per_step, r["grad_evals_per_run"], r["tilt_mean"], r["ess_mean"],
                         bt, bs, ft, fs, vm, r["seeds"], r["train_seconds"]])

    # ---- paired differences (best-val-epoch test accuracy), same seed = same data order, init and noise
    references = [("sam", "SAM"), ("tsam-t0", "TSAM t=0 (same noise, uniform weights)"),
                  ("tsam-s1", "TSAM s=1")]
    paired_md = ["| optimizer | reference | mean difference, points [95% CI] | verdict |", "|---|---|---|---|"]
    paired_csv = [["label", "reference", "n", "mean", "low", "high", "verdict"]]
    for ref, ref_name in references:
        if ref not in by_label:
            continue
        for r in rows:
            if r["label"] == ref:
                continue
            diff = paired_by_seed(seed_map(r["label"], "best_val_test_acc"), seed_map(ref, "best_val_test_acc"))
            paired_md.append(f"| {r['label']} | {ref_name} | {diff.text(scale=100)} | {diff.verdict()} |")
            paired_csv.append([r["label"], ref, diff.n, diff.mean, diff.low, diff.high, diff.verdict()])
    auto_vs_grid = []
    for chosen, grid_name in ((chosen_paper, "paper grid"), (chosen_full, "extended grid")):
        if chosen is None:
            continue
        for auto in autos:
            diff = paired_by_seed(seed_map(auto, "best_val_test_acc"), seed_map(chosen, "best_val_test_acc"))
            auto_vs_grid.append(f"| {auto} | {grid_name}'s validation pick {chosen} | {diff.text(scale=100)} | "
                                f"{diff.verdict()} |")
            paired_csv.append([auto, chosen, diff.n, diff.mean, diff.low, diff.high, diff.verdict()])

    # ---- tuning cost in gradient evaluations (per seed and over all seeds)
    def cost(labels: list[str]) -> int:
        return int(sum(by_label[lb]["grad_evals_per_run"] for lb in labels))

    n_seeds = max(r["seeds"] for r in rows)
    cost_md = ["| approach | runs per seed | gradient evaluations per seed | over all seeds |", "|---|---|---|---|"]
    for name, labels in ((f"grid over the paper's t {{0,1,5,20,100}} (picks {chosen_paper})", paper_grid),
                         (f"grid over t {{0,...,1000}} (picks {chosen_full})", full_grid)):
        if labels:
            cost_md.append(f"| {name} | {len(labels)} | {cost(labels):,} | {n_seeds * cost(labels):,} |")
    for auto in autos:
        cost_md.append(f"| {auto} (one run, target not tuned) | 1 | {cost([auto]):,} | {n_seeds * cost([auto]):,} |")

    # ---- figures
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8.5, 5))

    def xpos(t: float) -> float:
        return max(t, 0.3)  # t = 0 drawn at 0.3 on the log axis (labelled "0")

    grid_t = [float(lb[len("tsam-t"):]) for lb in full_grid]
    means = [100 * np.mean(by_label[lb]["best_val_test_acc"]) for lb in full_grid]
    halfs = [100 * _ci_half_width(by_label[lb]["best_val_test_acc"]) for lb in full_grid]
    ax.errorbar([xpos(t) for t in grid_t], means, yerr=halfs, marker="o", color=colors[0], capsize=3,
                label=f"TSAM s={NUM_SAMPLES}, fixed t (mean ± 95% CI, {n_seeds} seeds)")
    for t, m, lb in zip(grid_t, means, full_grid):
        ax.annotate(f"ESS {by_label[lb]['ess_mean']:.2f}", (xpos(t), m), textcoords="offset points", xytext=(0, 9),
                    ha="center", fontsize=8, color=colors[0])
    for i, auto in enumerate(autos):
        r = by_label[auto]
        m = 100 * np.mean(r["best_val_test_acc"])
        ax.errorbar([r["tilt_mean"]], [m], yerr=[100 * _ci_half_width(r["best_val_test_acc"])], marker="s",
                    color=colors[3 + i], capsize=3, linestyle="none",
                    label=f"auto, target ESS {auto[len('auto-ess'):]}·s (at its mean chosen t)")
        ax.annotate(f"ESS {r['ess_mean']:.2f}", (r["tilt_mean"], m), textcoords="offset points", xytext=(0, -14),
                    ha="center", fontsize=8, color=colors[3 + i])
    for lb, name, color in (("sam", "SAM (2 evals/step)", colors[1]), ("tsam-s1", "TSAM s=1 (one noisy sample)", colors[2])):
        if lb in by_label:
            m = 100 * np.mean(by_label[lb]["best_val_test_acc"])
            h = 100 * _ci_half_width(by_label[lb]["best_val_test_acc"])
            ax.axhline(m, color=color, linestyle="--", label=f"{name}: mean ± 95% CI")
            ax.axhspan(m - h, m + h, color=color, alpha=0.12)
    ax.set_xscale("log")
    ticks = [xpos(t) for t in grid_t]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in grid_t])
    ax.minorticks_off()
    ax.set_xlabel("tilt t (log scale; aggregation tilt t − δ = t/2)")
    ax.set_ylabel("test accuracy at the best-validation epoch (%)")
    ax.set_title("MNIST-5k, 20% label noise, MLP: TSAM test accuracy against t (noise radius 10, ρ 0.05)")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7.5, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out / "fig3-accuracy-vs-tilt.png")
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for i, auto in enumerate(autos):
        seeds = sorted(runs[auto])
        tilts = np.array([[e["tilt"] for e in runs[auto][s]["epochs"]] for s in seeds])
        ess = np.array([[e["effective_sample_size"] for e in runs[auto][s]["epochs"]] for s in seeds])
        epochs = np.arange(1, tilts.shape[1] + 1)
        for ax, values in ((ax1, tilts), (ax2, ess)):
            m = values.mean(0)
            ax.plot(epochs, m, marker="o", color=colors[3 + i], label=f"target ESS {auto[len('auto-ess'):]}·s")
            ax.fill_between(epochs, values.min(0), values.max(0), color=colors[3 + i], alpha=0.15)
        ax2.axhline(float(auto[len("auto-ess"):]) * NUM_SAMPLES, color=colors[3 + i], linestyle=":", linewidth=1)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("chosen tilt t (epoch mean over steps)")
    ax1.set_title("tilt chosen by tilt='auto' (mean, band: min-max over seeds)", fontsize=9)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(f"realised ESS of the step's weights (of s = {NUM_SAMPLES})")
    ax2.set_title("realised ESS (dotted: the target)", fontsize=9)
    ax2.set_ylim(1.0, NUM_SAMPLES + 0.05)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "auto-tilt-over-training.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for j, lb in enumerate(full_grid):
        seeds = sorted(runs[lb])
        ess = np.array([[e["effective_sample_size"] for e in runs[lb][s]["epochs"]] for s in seeds]).mean(0)
        ax.plot(np.arange(1, len(ess) + 1), ess, marker=".", label=f"t = {lb[len('tsam-t'):]}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"mean ESS per step (of s = {NUM_SAMPLES}; mean over seeds)")
    ax.set_title("how much the fixed tilts concentrate the weights", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(1.0, NUM_SAMPLES + 0.05)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="fixed tilt", title_fontsize=7)
    fig.tight_layout()
    _save(fig, out / "ess-vs-tilt.png")
    plt.close(fig)

    text = "\n".join([
        "# Adaptive tilt study", "",
        "MNIST-5k, 20% label noise, MLP, 8 epochs, TSAM s=3 rho=0.05 noise_radius=10; "
        f"{n_seeds} seeds; test accuracy at the best-validation epoch unless said otherwise.", "",
        "## Summary (mean ± sd over seeds)", "", *md, "",
        f"Validation-selected t: paper grid -> **{chosen_paper}**, extended grid -> **{chosen_full}** "
        "(highest mean best-epoch validation accuracy).", "",
        "## Paired differences (test accuracy at the best-validation epoch, percentage points)", "",
        *paired_md, *auto_vs_grid, "",
        "## Tuning cost", "", *cost_md, "",
        "Figures: fig3-accuracy-vs-tilt.png, auto-tilt-over-training.png, ess-vs-tilt.png.", ""])
    atomic_write(out / "summary.md", text)
    atomic_write(out / "summary.csv", _csv(csv_rows))
    atomic_write(out / "paired.csv", _csv(paired_csv))
    return text


def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return buffer.getvalue()


def _save(fig: Any, path: Path) -> None:
    """Write a figure atomically (temp file in the same folder, then rename)."""
    from tiltedsam._atomic import atomic_write_with

    atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=OUT_DIR)
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--limit", type=int, default=None, help="use only this many examples (smoke tests)")
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if not args.analyze_only:
        from tiltedsam.harness.sweep import run_sweep

        start = time.perf_counter()
        counts = run_sweep(sweep_config(args.out, list(range(args.seeds)), args.epochs, args.limit))
        print(f"sweep: {counts} in {time.perf_counter() - start:.0f} s", flush=True)
        if counts["failed"]:
            print(f"{counts['failed']} runs failed; see {args.out}/sweep.db", file=sys.stderr)
            return 1
    print(analyze(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

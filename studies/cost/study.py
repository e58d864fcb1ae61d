"""The equal-compute study of TSAM's cheap ascent variants (results in docs/cost.md).

Every optimizer gets the same budget of gradient evaluations (the harness's ``grad_evals`` budget):
what full TSAM (s = 3, Algorithm 2, 6 evaluations per step) spends in ``--epochs`` epochs. ERM, ESAM1
(= SAM run to that budget), TSAM with s = 1, full TSAM and each cheap variant (tsam-shared,
tsam-subbatch, tsam-lazy, tsam-shared-lazy), ``--seeds`` seeds each, on the setting where the tilt
matters (found by the adaptive-tilt study, docs/adaptive-tilt.md: mnist5k, 20% label noise, MLP 256-256,
noise_radius 10, t = 100; mean ESS about 2 of 3).

SAM at TSAM's *number of epochs* (a third of the budget) is not run separately: with a constant
learning rate SAM's run is exactly the first ``--epochs`` epochs of ESAM1's (same seed, same data order,
same updates), so its final and best-validation numbers are read from that prefix.

Per-step times are measured side by side in this run: every optimizer steps on the study's model and
a real mini-batch, round-robin (one step of each per round, so machine load hits all alike; the lazy
variants one whole refresh period per round, divided by its length), median over ``--timing-steps`` rounds.

    python studies/cost/study.py                  # the study (~20-30 min at 1 thread on a loaded 2-core VM)
    python studies/cost/study.py --quick          # smoke test: 2 seeds, small data, 1 epoch
    python studies/cost/study.py --report-only    # re-tabulate finished runs

Writes ``results/cost/``: ``runs/<label>/seed<k>/`` (config, metrics.csv, result.json; checkpoints are
deleted), ``summary.md``, ``summary.csv``, ``per_seed.csv``, ``timing.csv``, ``summary.json`` and
``accuracy_vs_evals.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from tiltedsam._atomic import atomic_write  # noqa: E402
from tiltedsam.harness.config import RunConfig, from_dict  # noqa: E402
from tiltedsam.harness.report import markdown_table, mean_std  # noqa: E402
from tiltedsam.harness.stats import minimal_detectable_effect, paired_difference  # noqa: E402
from tiltedsam.harness.train import read_result, summarize, train  # noqa: E402
from tiltedsam.optim.registry import create_optimizer, grad_evals_per_step  # noqa: E402

#: the setting where the tilt bites, from the adaptive-tilt study (docs/adaptive-tilt.md)
TILT, NOISE_RADIUS = 100.0, 10.0
TSAM_COMMON = {"tilt": TILT, "num_samples": 3, "rho": 0.05, "noise_radius": NOISE_RADIUS}
#: label -> (registry name, settings)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "erm": ("sgd", {}),
    "esam1": ("sam", {"rho": 0.05}),
    "tsam-s1": ("tsam", {**TSAM_COMMON, "num_samples": 1}),
    "tsam": ("tsam", dict(TSAM_COMMON)),
    "tsam-shared": ("tsam-shared", dict(TSAM_COMMON)),
    "tsam-subbatch": ("tsam-subbatch", dict(TSAM_COMMON)),
    "tsam-lazy": ("tsam-lazy", dict(TSAM_COMMON)),
    "tsam-shared-lazy": ("tsam-shared-lazy", dict(TSAM_COMMON)),
}
REFERENCE_EVALS = 6  # full TSAM's evaluations per step: the budget is its epochs
DISPLAY = {"erm": "ERM", "sam": "SAM (same epochs as TSAM)", "esam1": "ESAM1 (SAM, equal compute)",
           "tsam-s1": "TSAM s=1", "tsam": "TSAM s=3 (full)", "tsam-shared": "shared direction",
           "tsam-subbatch": "sub-batch f=0.25", "tsam-lazy": "lazy k=5", "tsam-shared-lazy": "shared + lazy k=5"}


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "mnist5k", "label_noise": 0.2, "clean_validation": False}
    if args.quick:
        data["limit"] = 1000
    return {"batch_size": 64, "label_smoothing": 0.1, "data": data,
            "model": {"name": "mlp", "options": {"hidden_sizes": [256, 256]}},
            "optimizer": {"base": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}}


def steps_per_epoch(args: argparse.Namespace) -> int:
    from tiltedsam.harness.data import load_dataset
    from tiltedsam.harness.train import dataset_kwargs

    config = from_dict(RunConfig, base_config(args))
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    return math.ceil(len(data.train) / config.batch_size)


def run_config(args: argparse.Namespace, label: str, seed: int, budget: int) -> RunConfig:
    name, settings = OPTIMIZERS[label]
    data = base_config(args)
    data["optimizer"].update({"name": name, "settings": settings})
    data.update({"seed": seed, "label": label, "budget": {"kind": "grad_evals", "amount": budget},
                 "run": {"out_dir": str(args.out / "runs" / label / f"seed{seed}"), "num_threads": 1,
                         "progress": False}})
    return from_dict(RunConfig, data)


def run_all(args: argparse.Namespace, budget: int) -> float:
    """Train every (seed, optimizer) not finished yet; returns the wall seconds spent."""
    from tqdm.auto import tqdm

    todo = [(seed, label) for seed in range(args.seeds) for label in OPTIMIZERS
            if not (args.out / "runs" / label / f"seed{seed}" / "result.json").is_file()]
    start = time.perf_counter()
    for seed, label in tqdm(todo, desc="cost study runs", unit="run"):
        config = run_config(args, label, seed, budget)
        run_dir = Path(config.run.out_dir)
        train(config, resume=(run_dir / "checkpoint.pt").is_file())
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # megabytes each; the metrics are what we keep
    return time.perf_counter() - start


# ------------------------------------------------------------------ side-by-side step times
def time_steps(args: argparse.Namespace, rounds: int, warmup: int = 5) -> list[dict[str, Any]]:
    """Median seconds per optimizer step of every optimizer, timed round-robin on the study's model."""
    from torch import nn

    from tiltedsam.harness.data import load_dataset
    from tiltedsam.harness.models import build_model
    from tiltedsam.harness.train import dataset_kwargs

    config = from_dict(RunConfig, base_config(args))
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    inputs, targets = next(iter(torch.utils.data.DataLoader(data.train, batch_size=config.batch_size, shuffle=False)))
    labels = ["erm", "sam"] + [label for label in OPTIMIZERS if label != "erm"]
    runs = []
    for label in labels:
        name, settings = ("sam", {"rho": 0.05}) if label == "sam" else OPTIMIZERS[label]
        torch.manual_seed(0)
        model = build_model(config.model.name, data, **config.model.options)
        optimizer = create_optimizer(name, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                     model=model, seed=0, **settings)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

        def closure(evaluation, model=model, loss_fn=loss_fn):
            x, y = evaluation.batch(inputs, targets)
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        runs.append((label, optimizer, closure))
    for _, optimizer, closure in runs:
        for _ in range(warmup):
            optimizer.step(closure)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label, optimizer, closure in runs:
            # lazy ascent costs more on its refresh steps: time a whole refresh period, per step
            period = getattr(getattr(optimizer, "sampler", None), "refresh_every", 1)
            start = time.perf_counter()
            for _ in range(period):
                optimizer.step(closure)
            seconds[label].append((time.perf_counter() - start) / period)
    sam = statistics.median(seconds["sam"])
    sgd = statistics.median(seconds["erm"])
    rows = []
    for label, optimizer, _ in runs:
        median = statistics.median(seconds[label])
        rows.append({"label": label, "ms_per_step": 1e3 * median, "ratio_to_sam": median / sam,
                     "ratio_to_sgd": median / sgd, "evals_per_step": optimizer.grad_evals_per_step,
                     "ideal_ratio_to_sam": optimizer.grad_evals_per_step / 2})
    return rows


# ------------------------------------------------------------------ aggregation
def read_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(handle)]


def collect(args: argparse.Namespace) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> {final, best, ess, train_seconds, steps, rows} for every finished run, plus "sam"."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for label in OPTIMIZERS:
        for seed in range(args.seeds):
            run_dir = args.out / "runs" / label / f"seed{seed}"
            if not (run_dir / "result.json").is_file():
                continue
            result, rows = read_result(run_dir), read_rows(run_dir)
            ess = [r["effective_sample_size"] for r in rows if math.isfinite(r["effective_sample_size"])]
            out.setdefault(label, {})[seed] = {
                "final": result["final_test_acc"], "best": result["best_val_test_acc"],
                "ess": float(np.mean(ess)) if ess else float("nan"), "train_seconds": result["train_seconds"],
                "steps": result["steps"], "grad_evals": result["grad_evals"], "rows": rows}
            if label == "esam1":  # SAM at TSAM's epochs = the first `epochs` epochs of ESAM1 (constant lr)
                prefix = rows[:args.epochs]
                summary = summarize(prefix)
                out.setdefault("sam", {})[seed] = {
                    "final": summary["final_test_acc"], "best": summary["best_val_test_acc"], "ess": 1.0,
                    "train_seconds": prefix[-1]["train_seconds"], "steps": int(prefix[-1]["step"]),
                    "grad_evals": prefix[-1]["grad_evals"], "rows": prefix}
    return out


def _evals(label: str) -> int | float:
    if label == "sam":
        return grad_evals_per_step("sam")
    name, settings = OPTIMIZERS[label]
    return grad_evals_per_step(name, **settings)


def _interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t interval of the mean (0 with one value)."""
    values = [v for v in values if math.isfinite(v)]
    if len(values) < 2:
        return (values[0] if values else float("nan")), 0.0
    diff = paired_difference(values, [0.0] * len(values))  # the one t-interval helper, against zero
    return diff.mean, diff.high - diff.mean


def _finite(value: Any) -> Any:
    """JSON the project writes holds no NaN/Infinity: non-finite numbers become null (recursively)."""
    from tiltedsam._json import finite_or_none  # imported late: the caller may put src/ on sys.path first

    return finite_or_none(value)


def tabulate(args: argparse.Namespace, runs: dict, timing: list[dict[str, Any]], wall_seconds: float | None) -> str:
    order = ["erm", "sam", "esam1", "tsam-s1", "tsam", "tsam-shared", "tsam-subbatch", "tsam-lazy", "tsam-shared-lazy"]
    order = [label for label in order if label in runs]
    times = {row["label"]: row for row in timing}
    summary_rows, csv_rows, json_out = [], [], {}
    for label in order:
        seeds = sorted(runs[label])
        final = [runs[label][s]["final"] for s in seeds]
        best = [runs[label][s]["best"] for s in seeds]
        (final_mean, final_std), (best_mean, best_std) = mean_std(final), mean_std(best)
        entry = {"seeds": seeds, "final_mean": final_mean, "final_std": final_std, "best_mean": best_mean, "best_std": best_std,
                 "ess": float(np.mean([runs[label][s]["ess"] for s in seeds])),
                 "train_seconds": float(np.mean([runs[label][s]["train_seconds"] for s in seeds])),
                 "steps": int(np.mean([runs[label][s]["steps"] for s in seeds])),
                 "grad_evals": float(np.mean([runs[label][s]["grad_evals"] for s in seeds]))}
        for key, ref in (("tsam", "tsam"), ("esam1", "esam1"), ("s1", "tsam-s1")):
            if ref in runs and label != ref:
                common = [s for s in seeds if s in runs[ref]]
                for metric in ("final", "best"):
                    diff = paired_difference([runs[label][s][metric] for s in common], [runs[ref][s][metric] for s in common])
                    entry[f"{metric}_vs_{key}"] = diff
        if label in times:
            entry.update({k: times[label][k] for k in ("ms_per_step", "ratio_to_sam", "ratio_to_sgd", "evals_per_step",
                                                        "ideal_ratio_to_sam")})
        json_out[label] = entry

    def pm(mean: float, std: float) -> str:
        return f"{100 * mean:.2f} ± {100 * std:.2f}" if math.isfinite(std) else f"{100 * mean:.2f}"

    def diff_text(entry: dict, key: str) -> str:
        diff = entry.get(key)
        if diff is None:
            return "—"
        mde = "" if diff.std is None else f", MDE {100 * minimal_detectable_effect(diff.std, diff.n):.2f}"
        return f"{diff.text(scale=100)} ({diff.verdict()}, uncorrected{mde})"

    header = ["optimizer", "evals/step", "steps", "final test acc %", "best-val test acc %",
              "Δ final vs TSAM [95% CI]", "Δ best-val vs TSAM", "Δ final vs ESAM1", "Δ best-val vs ESAM1",
              "Δ final vs s=1", "mean ESS", "ms/step", "× SAM (measured)", "× SAM (ideal)", "train s/run"]
    table_rows = []
    for label in order:
        e = json_out[label]
        t = times.get(label, {})
        table_rows.append([
            DISPLAY[label], f"{_evals(label)}", str(e["steps"]),
            pm(e["final_mean"], e["final_std"]), pm(e["best_mean"], e["best_std"]),
            diff_text(e, "final_vs_tsam"), diff_text(e, "best_vs_tsam"), diff_text(e, "final_vs_esam1"),
            diff_text(e, "best_vs_esam1"), diff_text(e, "final_vs_s1"), f"{e['ess']:.2f}",
            f"{t['ms_per_step']:.2f}" if t else "—", f"{t['ratio_to_sam']:.2f}" if t else "—",
            f"{t['ideal_ratio_to_sam']:.2f}" if t else "—", f"{e['train_seconds']:.1f}"])
        csv_rows.append({"label": label, "seeds": len(e["seeds"]), "steps": e["steps"], "grad_evals": e["grad_evals"],
                         "final_mean": e["final_mean"], "final_std": e["final_std"], "best_mean": e["best_mean"],
                         "best_std": e["best_std"], "ess": e["ess"], "train_seconds": e["train_seconds"],
                         **{f"{m}_vs_{k}_{part}": getattr(e.get(f"{m}_vs_{k}"), part, None)
                            for m in ("final", "best") for k in ("tsam", "esam1", "s1") for part in ("mean", "low", "high")},
                         **{k: t.get(k) for k in ("ms_per_step", "ratio_to_sam", "ratio_to_sgd", "evals_per_step")}})
    table = markdown_table(header, table_rows)

    timing_table = markdown_table(
        ["optimizer", "evals/step (ideal × SGD)", "ms/step", "× SGD", "× SAM", "ideal × SAM"],
        [[DISPLAY[row["label"]], row["evals_per_step"], f"{row['ms_per_step']:.2f}", f"{row['ratio_to_sgd']:.2f}",
          f"{row['ratio_to_sam']:.2f}", f"{row['ideal_ratio_to_sam']:.2f}"] for row in timing])

    verdicts = []
    if "tsam" in json_out:
        tsam = json_out["tsam"]
        for label in ("tsam-shared", "tsam-subbatch", "tsam-lazy", "tsam-shared-lazy"):
            if label not in json_out or label not in times:
                continue
            e = json_out[label]
            cheap = times[label]["ratio_to_sam"] <= 2.0
            checks = []
            for metric in ("final", "best"):
                # "within the seed spread of full TSAM": not below TSAM's mean minus one standard deviation
                # over seeds (being above it is fine: at equal compute a cheap variant takes more steps)
                within = e[f"{metric}_mean"] >= tsam[f"{metric}_mean"] - tsam[f"{metric}_std"]
                above_sam = all(e[f"{metric}_mean"] > json_out[ref][f"{metric}_mean"] for ref in ("sam", "esam1", "tsam-s1") if ref in json_out)
                checks.append(within and above_sam)
                e[f"{metric}_within_tsam_spread"], e[f"{metric}_above_sam_esam1_s1"] = within, above_sam
            e["meets_criterion"] = cheap and all(checks)
            verdicts.append(f"- {DISPLAY[label]}: {times[label]['ratio_to_sam']:.2f}× SAM's step "
                            f"({'≤' if cheap else '>'} 2×); final acc not below TSAM's seed spread: "
                            f"{e['final_within_tsam_spread']}, above SAM/ESAM1/s=1: {e['final_above_sam_esam1_s1']}; "
                            f"best-val acc not below the spread: {e['best_within_tsam_spread']}, above: {e['best_above_sam_esam1_s1']} "
                            f"-> **{'meets' if e['meets_criterion'] else 'does not meet'}** the criterion")

    machine = (f"{platform.platform()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread "
               f"(2-core VM shared with other jobs)")
    text = (f"# Equal-compute study of the cheap TSAM ascent variants\n\nMachine: {machine}. "
            f"Budget: {args.epochs} epochs of full TSAM = {json_out.get('tsam', {}).get('grad_evals', float('nan')):.0f} gradient "
            f"evaluations for every optimizer except SAM (TSAM's epochs: a third of it). Seeds: {args.seeds}. "
            + (f"Wall time of the training runs: {wall_seconds / 60:.1f} min.\n\n" if wall_seconds else "\n\n")
            + table + "\n\nStep time side by side (study model, one real mini-batch, median of "
            f"{args.timing_steps} round-robin steps):\n\n" + timing_table + "\n\nVerdicts:\n\n"
            + "\n".join(verdicts) + "\n")
    atomic_write(args.out / "summary.md", text)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(csv_rows[0]))
    writer.writeheader()
    writer.writerows(csv_rows)
    atomic_write(args.out / "summary.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "seed", "final_test_acc", "best_val_test_acc", "mean_ess", "steps", "grad_evals", "train_seconds"])
    for label in order:
        for seed, r in sorted(runs[label].items()):
            writer.writerow([label, seed, r["final"], r["best"], r["ess"], r["steps"], r["grad_evals"], r["train_seconds"]])
    atomic_write(args.out / "per_seed.csv", buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(timing[0]))
    writer.writeheader()
    writer.writerows(timing)
    atomic_write(args.out / "timing.csv", buffer.getvalue())
    serialisable = {label: {k: (vars(v) if hasattr(v, "verdict") else v) for k, v in e.items()} for label, e in json_out.items()}
    atomic_write(args.out / "summary.json", json.dumps(_finite({"machine": machine, "epochs": args.epochs, "seeds": args.seeds,
                                                             "wall_seconds": wall_seconds, "optimizers": serialisable,
                                                             "timing": timing}), indent=2) + "\n")
    return text


def plot(args: argparse.Namespace, runs: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"erm": ("tab:gray", "-"), "esam1": ("tab:blue", "-"), "tsam-s1": ("tab:cyan", "--"),
              "tsam": ("black", "-"), "tsam-shared": ("tab:red", "-"), "tsam-subbatch": ("tab:orange", "-."),
              "tsam-lazy": ("tab:green", "--"), "tsam-shared-lazy": ("tab:purple", ":")}
    for ax, column, title in ((axes[0], "test_acc", "test accuracy after each epoch"),
                              (axes[1], "val_acc", "validation accuracy (noisy labels) after each epoch")):
        for label, (color, style) in styles.items():
            if label not in runs:
                continue
            series = [runs[label][s]["rows"] for s in sorted(runs[label])]
            n = min(len(rows) for rows in series)
            x = np.array([series[0][i]["grad_evals"] for i in range(n)]) / 1000
            stats = [_interval([100 * rows[i][column] for rows in series]) for i in range(n)]
            mean = np.array([m for m, _ in stats])
            half = np.array([h for _, h in stats])
            name = DISPLAY[label] + (" (SAM = its first third, ◆)" if label == "esam1" else "")
            ax.plot(x, mean, color=color, linestyle=style, label=name, linewidth=1.6)
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.12)
            if label == "esam1" and n >= args.epochs:
                ax.plot(x[args.epochs - 1], mean[args.epochs - 1], marker="D", color=color, markersize=7)
        ax.set_xlabel("gradient evaluations (thousands, full-batch equivalents)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes:
        ax.set_ylabel("accuracy (%), mean over seeds; band: 95% t interval")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Equal compute: mnist5k, 20% label noise, MLP 256-256, t={TILT:g}, noise radius {NOISE_RADIUS:g}, "
                 f"{args.seeds} seeds")
    fig.tight_layout()
    path = args.out / "accuracy_vs_evals.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cost")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8, help="the budget: this many epochs of full TSAM (s=3)")
    parser.add_argument("--timing-steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 seeds, 1000 examples, 1 epoch")
    parser.add_argument("--report-only", action="store_true", help="only re-tabulate finished runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.epochs, args.timing_steps = 2, 2, 5
        if args.out == ROOT / "results" / "cost":
            args.out = ROOT / "results" / "cost-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    budget = REFERENCE_EVALS * args.epochs * steps_per_epoch(args)
    wall = None
    if not args.report_only:
        wall = run_all(args, budget)
    elif (args.out / "summary.json").is_file():  # keep the training wall time of the run that trained
        wall = json.loads((args.out / "summary.json").read_text()).get("wall_seconds")
    timing = time_steps(args, args.timing_steps)
    runs = collect(args)
    text = tabulate(args, runs, timing, wall)
    plot(args, runs)
    print(text)


if __name__ == "__main__":
    main()

"""ERM, SAM and TSAM fine-tuning pretrained MiniLM-L6 on Rotten Tomatoes, 3 seeds, sized for a 2-core CPU.

Partial fine-tuning: the embeddings and the lower 5 of the 6 encoder layers are frozen; their output for
every sentence is computed once and cached on disk (``<out>/cache``, a checksummed ``.npz``); the top
encoder layer (1.8M parameters) and a mean-pooled linear head are trained, with dropout 0.1 active in
the trained layer and the head (the same masks for every evaluation of a step). A seeded subset keeps
the 9 runs inside the compute budget: 3,200 snippets split 1,200 train / 400 validation / 1,600 test.
The split is the same for every seed (``split_seed = 0``); the seed changes the initialisation of the
head, the batch order, dropout and the optimizers' noise.

    OMP_NUM_THREADS=1 .venv/bin/python studies/text/study.py             # results/text/
    OMP_NUM_THREADS=1 .venv/bin/python studies/text/study.py --quick     # 2-minute smoke run

Writes ``summary.md`` / ``summary.csv`` / ``summary.json`` (test accuracy at the final and the best-
validation epoch, paired per-seed differences with 95% t intervals, seconds per epoch per optimizer),
``loss_curves.png`` and the run directories (``runs/<optimizer>-seed<k>``). Finished runs are reused, so
an interrupted study continues where it stopped. Needs the text extra (``pip install -e '.[text]'``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from tiltedsam._atomic import atomic_write, atomic_write_with
from tiltedsam.harness.config import RunConfig, from_dict
from tiltedsam.harness.stats import holm, minimal_detectable_effect, paired_difference
from tiltedsam.harness.train import read_result, train

OPTIMIZERS = {  # label -> (registry name, settings)
    "ERM": ("sgd", {}),
    "SAM": ("sam", {"rho": 0.05}),
    "TSAM": ("tsam", {"tilt": 20.0, "num_samples": 3, "rho": 0.05, "noise_radius": 1.0}),
}


def study_config(label: str, seed: int, args: argparse.Namespace) -> RunConfig:
    name, settings = OPTIMIZERS[label]
    return from_dict(RunConfig, {
        "seed": seed, "label": label, "batch_size": args.batch_size, "label_smoothing": 0.1,
        "data": {"name": "rotten_tomatoes", "limit": args.limit, "test_fraction": 0.5, "val_fraction": 0.125,
                 "options": {"tokenizer": "minilm", "seq_len": 64}},
        "model": {"name": "minilm", "options": {"train_layers": args.train_layers, "dropout": 0.1,
                                                "cache_dir": str(Path(args.out) / "cache")}},
        "optimizer": {"name": name, "base": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4,
                      "settings": settings, "same_dropout_masks": True},
        "budget": {"kind": "epochs", "amount": args.epochs},
        "run": {"out_dir": str(Path(args.out) / "runs" / f"{label.lower()}-seed{seed}"), "num_threads": 1,
                "progress": args.progress, "eval_batch_size": 500},
    })


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def build_cache(args: argparse.Namespace) -> float:
    """Tokenise, split and run the frozen layers over every sentence once (or find the cache on disk)."""
    from tiltedsam.harness.data import load_dataset
    from tiltedsam.harness.models import build_model
    from tiltedsam.harness.train import dataset_kwargs

    config = study_config("ERM", 0, args)
    start = time.perf_counter()
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    model = build_model(config.model.name, data, **config.model.options)
    seconds = time.perf_counter() - start
    record = Path(args.out) / "cache.json"
    if model.cache_source == "computed":
        atomic_write(record, json.dumps({"cache_seconds": seconds, "sentences": model.cache_size}) + "\n")
    elif record.is_file():  # found on disk: report what building it cost the first time
        seconds = json.loads(record.read_text())["cache_seconds"]
    print(f"frozen-layer cache: {model.cache_source} for {model.cache_size} sentences in {seconds:.1f} s "
          f"(train/val/test = {len(data.train)}/{len(data.val)}/{len(data.test)})", flush=True)
    return seconds


def summarise(args: argparse.Namespace, cache_seconds: float, study_seconds: float) -> dict:
    out = Path(args.out)
    labels = list(OPTIMIZERS)
    results = {label: {} for label in labels}
    curves = {label: {} for label in labels}
    for label in labels:
        for seed in args.seeds:
            run_dir = Path(study_config(label, seed, args).run.out_dir)
            results[label][seed] = read_result(run_dir)
            curves[label][seed] = read_metrics(run_dir)

    def per_seed(label: str, key: str) -> list[float]:
        return [results[label][s][key] for s in args.seeds]

    def epoch_seconds(label: str) -> list[float]:
        values = []
        for seed in args.seeds:
            previous = 0.0
            for row in curves[label][seed]:
                values.append(row["train_seconds"] - previous)
                previous = row["train_seconds"]
        return values

    rows = []
    for label in labels:
        row = {"optimizer": label, "grad_evals_per_step": results[label][args.seeds[0]]["grad_evals_per_step"]}
        for key in ("final_test_acc", "best_val_test_acc"):
            values = per_seed(label, key)
            row[f"{key}_mean"] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
            row[key + "_per_seed"] = values
        seconds = epoch_seconds(label)
        row["seconds_per_epoch_mean"] = statistics.fmean(seconds)
        row["seconds_per_epoch_std"] = statistics.stdev(seconds) if len(seconds) > 1 else None
        row["best_val_epoch_per_seed"] = per_seed(label, "best_val_epoch")
        rows.append(row)

    comparisons = []
    for label, reference in (("SAM", "ERM"), ("TSAM", "ERM"), ("TSAM", "SAM")):
        for key in ("final_test_acc", "best_val_test_acc"):
            diff = paired_difference(per_seed(label, key), per_seed(reference, key))
            comparisons.append({"comparison": f"{label} - {reference}", "metric": key, "mean": diff.mean,
                                "low": diff.low, "high": diff.high, "n": diff.n, "verdict": diff.verdict(),
                                "text_pp": diff.text(scale=100, digits=2, unit=" pp"), "p_value": diff.p_value,
                                "mde": None if diff.std is None else minimal_detectable_effect(diff.std, diff.n)})
    for entry, adjusted in zip(comparisons, holm([c["p_value"] if c["p_value"] is not None else 1.0
                                                   for c in comparisons])):
        entry["holm_p"] = adjusted  # Holm over the study's six comparisons

    summary = {
        "format": "tiltedsam.text-study/1",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python studies/text/study.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU VM, shared with other jobs; torch "
                   f"{torch.__version__}, 1 thread",
        "setting": {"train_layers": args.train_layers, "epochs": args.epochs, "limit": args.limit,
                    "batch_size": args.batch_size, "lr": args.lr, "seeds": list(args.seeds),
                    "optimizers": {k: {"name": v[0], **v[1]} for k, v in OPTIMIZERS.items()}},
        "cache_seconds": cache_seconds, "invocation_seconds": study_seconds,
        "runs_wall_seconds": sum(results[label][s]["wall_seconds"] for label in labels for s in args.seeds),
        "optimizers": rows, "paired_differences": comparisons,
    }
    atomic_write(out / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["optimizer", "grad_evals_per_step", "final_test_acc_mean", "final_test_acc_std",
                     "best_val_test_acc_mean", "best_val_test_acc_std", "seconds_per_epoch_mean",
                     "seconds_per_epoch_std"])
    for row in rows:
        writer.writerow([row["optimizer"], row["grad_evals_per_step"], row["final_test_acc_mean"],
                         row["final_test_acc_std"], row["best_val_test_acc_mean"], row["best_val_test_acc_std"],
                         row["seconds_per_epoch_mean"], row["seconds_per_epoch_std"]])
    atomic_write(out / "summary.csv", buffer.getvalue())

    def pct(mean: float, std: float | None) -> str:
        return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"

    lines = [
        "# MiniLM on Rotten Tomatoes: ERM vs SAM vs TSAM", "",
        f"Command: `{summary['command']}`  ", f"Machine: {summary['machine']}  ",
        f"Frozen-layer cache (built once): {cache_seconds:.0f} s; the {len(labels) * len(args.seeds)} runs: "
        f"{summary['runs_wall_seconds'] / 60:.1f} min (training + evaluation, model loading excluded); "
        f"this invocation: {study_seconds / 60:.1f} min.", "",
        f"Trained: top {args.train_layers} encoder layer(s) + head; {args.epochs} epochs; seeds {list(args.seeds)}; "
        "test accuracy in % (mean ± sd over seeds).", "",
        "| optimizer | evals/step | test acc, final epoch | test acc, best-val epoch | best-val epochs | s per epoch |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['optimizer']} | {row['grad_evals_per_step']} | "
                     f"{pct(row['final_test_acc_mean'], row['final_test_acc_std'])} | "
                     f"{pct(row['best_val_test_acc_mean'], row['best_val_test_acc_std'])} | "
                     f"{', '.join(str(int(e)) for e in row['best_val_epoch_per_seed'])} | "
                     f"{row['seconds_per_epoch_mean']:.1f} ± {(row['seconds_per_epoch_std'] or 0):.1f} |")
    lines += ["", "Paired per-seed differences (percentage points, 95% t interval over seeds):", "",
              "| comparison | metric | difference | verdict |", "|---|---|---|---|"]
    for c in comparisons:
        lines.append(f"| {c['comparison']} | {c['metric']} | {c['text_pp']} | {c['verdict']} |")
    atomic_write(out / "summary.md", "\n".join(lines) + "\n")
    plot_curves(out / "loss_curves.png", curves, args)
    return summary


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plot_curves(path: Path, curves: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The training loss is the mini-batch loss at each step's first evaluation point: θ for ERM and SAM, but
    # θ + δ₁ (a noise point) for TSAM, so only the validation/test panels compare like with like.
    panels = [("train_loss", "training loss (label-smoothed CE)\nat θ (ERM, SAM) / θ+δ₁ (TSAM)"),
              ("val_loss", "validation loss (CE at θ)"), ("test_loss", "test loss (CE at θ)"),
              ("test_acc", "test accuracy (%)")]
    figure, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    colors = {"ERM": "tab:gray", "SAM": "tab:blue", "TSAM": "tab:red"}
    styles = {"ERM": ("-", "o"), "SAM": ("--", "s"), "TSAM": (":", "^")}  # SAM and TSAM nearly coincide here
    for axis, (key, title) in zip(axes, panels):
        for label, runs in curves.items():
            epochs = [int(r["epoch"]) for r in runs[args.seeds[0]]]
            matrix = torch.tensor([[r[key] for r in runs[s]] for s in args.seeds], dtype=torch.float64)
            scale = 100.0 if key == "test_acc" else 1.0
            mean = matrix.mean(0) * scale
            spread = (matrix.std(0) if len(args.seeds) > 1 else torch.zeros_like(mean)) * scale
            axis.plot(epochs, mean, linestyle=styles[label][0], marker=styles[label][1], color=colors[label],
                      label=label, linewidth=2 if label == "SAM" else 1.5, markersize=7 if label == "SAM" else 5)
            axis.fill_between(epochs, mean - spread, mean + spread, color=colors[label], alpha=0.15)
        axis.set_xlabel("epoch")
        axis.set_ylabel(title)
        axis.set_xticks(epochs)
        axis.grid(alpha=0.3)
    axes[0].legend(title=f"mean ± sd, {len(args.seeds)} seeds")
    figure.suptitle(f"MiniLM-L6 on Rotten Tomatoes (top {args.train_layers} layer + head trained, "
                    f"{args.limit} snippets): ERM, SAM and TSAM (s=3, t=20, noise radius 1)")
    figure.tight_layout()
    atomic_write_with(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    plt.close(figure)


def noise_probe(args: argparse.Namespace, radii: tuple[float, ...] = (1.0, 10.0, 30.0), steps: int = 5) -> str:
    """Why TSAM ≈ SAM here: the spread of the s = 3 losses inside one TSAM step, for several noise radii.

    From the pretrained start (fresh head, seed 0), the same 5 mini-batches for every radius; reports the mean effective sample size of the tilted weights
    (3 = equal weights, i.e. no tilting) and the mean spread max_j L_j - min_j L_j.
    """
    from tiltedsam.harness.data import load_dataset
    from tiltedsam.harness.models import build_model
    from tiltedsam.harness.train import dataset_kwargs
    from tiltedsam.optim.registry import create_optimizer

    config = study_config("TSAM", 0, args)
    data = load_dataset(config.data.name, **dataset_kwargs(config))
    lines = ["| noise_radius | ‖θ_trained‖ | mean ESS of the 3 tilted weights | mean spread max L_j − min L_j |",
             "|---|---|---|---|"]
    for radius in radii:
        torch.manual_seed(0)
        model = build_model(config.model.name, data, **config.model.options)
        model.train()
        norm = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
        settings = {**OPTIMIZERS["TSAM"][1], "noise_radius": radius}
        optimizer = create_optimizer("tsam", model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4,
                                     seed=0, **settings)
        ess, spread = [], []
        for step in range(steps):
            index = torch.arange(step * args.batch_size, (step + 1) * args.batch_size)
            x, y = data.train.inputs[index], data.train.labels[index]

            def closure():
                loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
                loss.backward()
                return loss

            optimizer.step(closure)
            ess.append(optimizer.last_step.effective_sample_size)
            spread.append(max(optimizer.last_step.losses) - min(optimizer.last_step.losses))
        lines.append(f"| {radius:g} | {norm:.1f} | {statistics.fmean(ess):.3f} | {statistics.fmean(spread):.4f} |")
    table = "\n".join(lines) + "\n"
    atomic_write(Path(args.out) / "noise_probe.md", table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/text")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=3200, help="snippets used (half are the test set)")
    parser.add_argument("--train-layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--progress", action="store_true", help="tqdm bar per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 snippets, 1 epoch, 2 seeds")
    parser.add_argument("--noise-probe", action="store_true",
                        help="only: spread of TSAM's s losses per step for noise radius 1, 10, 30 (1 minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.epochs, args.seeds = 300, 1, [0, 1]
        if args.out == "results/text":
            args.out = "results/text-quick"
    torch.set_num_threads(1)
    if args.noise_probe:
        print(noise_probe(args))
        return 0
    start = time.perf_counter()
    cache_seconds = build_cache(args)
    for label in OPTIMIZERS:
        for seed in args.seeds:
            config = study_config(label, seed, args)
            run_dir = Path(config.run.out_dir)
            if (run_dir / "result.json").is_file():
                print(f"{label} seed {seed}: finished earlier, reused", flush=True)
                continue
            result = train(config, resume=True)
            print(f"{label} seed {seed}: final test acc {result['final_test_acc']:.4f}, best-val-epoch test acc "
                  f"{result['best_val_test_acc']:.4f}, {result['train_seconds']:.0f} s training", flush=True)
    summary = summarise(args, cache_seconds, time.perf_counter() - start)
    print((Path(args.out) / "summary.md").read_text())
    return 0 if summary else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Label-noise study: TSAM with t = 0 against TSAM with a calibrated fixed t, with a manipulation check.

One command per stage, each writing small per-seed files next to this script (``results/``, committed):

    python studies/label_noise/study.py time          # one run of each arm: seconds, to size the study
    python studies/label_noise/study.py calibrate     # pilot at t = 0: the t whose aggregation ESS is s/2
    python studies/label_noise/study.py tune          # learning rate per arm on the clean validation split
    python studies/label_noise/study.py main          # the pre-registered paired runs
    python studies/label_noise/study.py report --write   # docs/label-noise.md's tables from the files

The design (data, model, arms, endpoint, n, margin) is fixed in ``docs/label-noise.md``'s
pre-registered section; the constants below are that section in code.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tiltedsam import TSAM, effective_sample_size
from tiltedsam.harness.data import load_dataset
from tiltedsam.harness.stats import holm, minimal_detectable_effect, paired_by_seed, tost
from tiltedsam.tilt import tilt_for_ess

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

LABEL_NOISE = 0.4
VAL_FRACTION = 0.1  # 500 clean validation examples
TEST_FRACTION = 0.3  # 1,500 clean test examples
HIDDEN = 128
EPOCHS = 30
BATCH = 128
MOMENTUM = 0.9
NUM_SAMPLES = 3  # s
RHO = 0.05
RADIUS_FRACTION = 0.2  # noise radius = 0.2 ||theta_0||
LAST_K = 3  # primary endpoint: mean clean test accuracy over the last 3 epochs
LR_GRID = (0.01, 0.03, 0.1)
TUNE_SEEDS = (900, 901)
CALIBRATION_SEED = 950
MAIN_SEEDS = tuple(range(30))
MARGIN_POINTS = 0.5  # equivalence margin for TOST, points of accuracy
PROBE_DRAWS = 64  # fresh perturbations for the manipulation check


def data_splits(seed: int):
    return load_dataset("mnist5k", seed=seed, label_noise=LABEL_NOISE, val_fraction=VAL_FRACTION,
                        test_fraction=TEST_FRACTION, clean_validation=True)


def build_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def parameter_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))


def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def perturbed_losses(model: nn.Module, inputs, labels, radius: float, draws: int, seed: int) -> list[float]:
    """Training loss at ``theta + eps`` for fresh ``eps ~ N(0, I)`` clipped to global norm ``radius``
    (TSAM's noise distribution mu): the sample behind L^t and the Definition 3 variance."""
    generator = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    with torch.no_grad():
        for _ in range(draws):
            noise = [torch.randn(p.shape, generator=generator) for p in params]
            norm = float(torch.sqrt(sum((n ** 2).sum() for n in noise)))
            scale = min(1.0, radius / norm)
            for p, s, n in zip(params, saved, noise):
                p.copy_(s + scale * n)
            losses.append(float(loss_fn(model(inputs), labels)))
        for p, s in zip(params, saved):
            p.copy_(s)
    return losses


def tilted_statistics(losses: list[float], tilt: float) -> dict[str, float]:
    """L^t = (1/t) log mean exp(t L), the plain variance (Definition 3 at t = 0) and the t-weighted variance."""
    values = torch.tensor(losses, dtype=torch.float64)
    mean = float(values.mean())
    variance = float(values.var(unbiased=False))
    if tilt == 0:
        return {"tilted_loss": mean, "variance": variance, "tilted_variance": variance}
    log_mean = torch.logsumexp(tilt * values, 0) - math.log(len(losses))
    weights = torch.softmax(tilt * values, 0)
    weighted_mean = float((weights * values).sum())
    return {"tilted_loss": float(log_mean) / tilt, "variance": variance,
            "tilted_variance": float((weights * (values - weighted_mean) ** 2).sum())}


def train(seed: int, tilt: float, lr: float, epochs: int = EPOCHS, record_losses: bool = False,
          probe_tilt: float | None = None) -> dict:
    """One TSAM run (Algorithm 2 sampler, s = 3, delta = t/2); returns per-epoch accuracies and the probe."""
    torch.set_num_threads(1)
    splits = data_splits(seed)
    train_set, val_set, test_set = splits.train, splits.val, splits.test
    model = build_model(seed)
    theta0 = parameter_norm(model)
    radius = RADIUS_FRACTION * theta0
    optimizer = TSAM(model.parameters(), torch.optim.SGD, tilt=tilt, num_samples=NUM_SAMPLES, rho=RHO,
                     noise_radius=radius, seed=seed, lr=lr, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    n = len(train_set)
    history, step_losses, ess = [], [], []
    start = time.process_time()
    for epoch in range(epochs):
        permutation = torch.randperm(n, generator=order)
        for first in range(0, n, BATCH):
            index = permutation[first:first + BATCH]
            x, y = train_set.inputs[index], train_set.labels[index]

            def closure(x=x, y=y):
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss

            loss = optimizer.step(closure)
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"seed {seed} t={tilt} lr={lr}: loss {float(loss)} at epoch {epoch}")
            ess.append(optimizer.last_step.effective_sample_size)
            if record_losses:
                step_losses.append(list(optimizer.last_step.losses))
        history.append({"epoch": epoch + 1, "val_acc": accuracy(model, val_set.inputs, val_set.labels),
                        "test_acc": accuracy(model, test_set.inputs, test_set.labels)})
    seconds = time.process_time() - start
    noisy = train_set.labels != train_set.clean_labels
    with torch.no_grad():
        predicted = model(train_set.inputs).argmax(1)
    fitted = float((predicted[noisy] == train_set.labels[noisy]).float().mean())
    result = {"seed": seed, "tilt": tilt, "lr": lr, "theta0_norm": theta0, "noise_radius": radius,
              "radius_over_theta0": radius / theta0, "cpu_seconds": seconds, "history": history,
              "final_test_acc": history[-1]["test_acc"], "final_val_acc": history[-1]["val_acc"],
              "last_k_test_acc": statistics.fmean(h["test_acc"] for h in history[-LAST_K:]),
              "last_k_val_acc": statistics.fmean(h["val_acc"] for h in history[-LAST_K:]),
              "noisy_fitted": fitted, "median_ess": statistics.median(ess),
              "final_param_norm": parameter_norm(model)}
    if probe_tilt is not None:
        losses = perturbed_losses(model, train_set.inputs, train_set.labels, radius, PROBE_DRAWS, seed + 10_000)
        result.update({f"probe_{k}": v for k, v in tilted_statistics(losses, probe_tilt).items()})
        result["probe_tilt"] = probe_tilt
    if record_losses:
        result["step_losses"] = step_losses
    return result


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v for k, v in row.items() if k not in ("history", "step_losses")}
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat))
        if new:
            writer.writeheader()
        writer.writerow(flat)


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{k: (float(v) if k not in ("arm",) else v) for k, v in row.items()} for row in csv.DictReader(handle)]


def calibrated_tilt() -> float:
    return json.loads((RESULTS / "calibration.json").read_text())["tilt"]


def command_time(args) -> None:
    for tilt in (0.0, 20.0):
        r = train(0, tilt, 0.1, epochs=args.epochs)
        print(f"t={tilt}: {r['cpu_seconds']:.1f} CPU s for {args.epochs} epochs, test {100 * r['final_test_acc']:.1f}%, "
              f"noisy fitted {100 * r['noisy_fitted']:.1f}%, ESS {r['median_ess']:.2f}, r/|theta0| "
              f"{r['radius_over_theta0']:.2f} (|theta0| {r['theta0_norm']:.2f})", flush=True)


def command_calibrate(args) -> None:
    """Pilot at t = 0 (lr 0.03): per step, the aggregation tilt tau* whose weights over the s losses have
    ESS = s/2; the study's t is 2 * median(tau*) over the pilot's second half (delta = t/2, so tau = t/2)."""
    r = train(CALIBRATION_SEED, 0.0, 0.03, record_losses=True)
    losses = r["step_losses"][len(r["step_losses"]) // 2:]
    taus = [tilt_for_ess(torch.tensor(l, dtype=torch.float64), 0.5, max_tilt=1e6) for l in losses]
    taus = [float(t) for t in taus]
    tau = statistics.median(taus)
    tilt = 2 * tau
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(
        {"seed": CALIBRATION_SEED, "tau_median": tau, "tau_quartiles": statistics.quantiles(taus, n=4),
         "tilt": tilt, "steps": len(taus), "radius_over_theta0": r["radius_over_theta0"],
         "theta0_norm": r["theta0_norm"], "noise_radius": r["noise_radius"]}, indent=2) + "\n")
    print(f"calibrated t = {tilt:.3g} (median tau* {tau:.3g} over {len(taus)} steps)")


def command_tune(args) -> None:
    path = RESULTS / "tuning.csv"
    done = {(r["arm"], r["lr"], r["seed"]) for r in read_rows(path)} if path.exists() else set()
    for arm, tilt in (("t0", 0.0), ("tcal", calibrated_tilt())):
        for lr in LR_GRID:
            for seed in TUNE_SEEDS:
                if (arm, lr, seed) in done:
                    continue
                r = train(seed, tilt, lr)
                append_row(path, {"arm": arm, **r})
                print(f"tune {arm} lr={lr} seed={seed}: val {100 * r['last_k_val_acc']:.2f}", flush=True)


def tuned_lrs() -> dict[str, float]:
    rows = read_rows(RESULTS / "tuning.csv")
    chosen = {}
    for arm in ("t0", "tcal"):
        scores = {lr: statistics.fmean(r["last_k_val_acc"] for r in rows if r["arm"] == arm and r["lr"] == lr)
                  for lr in LR_GRID}
        chosen[arm] = max(LR_GRID, key=lambda lr: (scores[lr], -lr))  # ties: the smaller lr
    return chosen


def command_main(args) -> None:
    path = RESULTS / "main.csv"
    tilt, lrs = calibrated_tilt(), tuned_lrs()
    seeds = MAIN_SEEDS[: args.seeds]
    for seed in (reversed(seeds) if args.reverse else seeds):  # --reverse: a second process from the other end
        for arm, t in (("t0", 0.0), ("tcal", tilt)):
            done = {(r["arm"], int(r["seed"])) for r in read_rows(path)} if path.exists() else set()
            if (arm, seed) in done:
                continue
            r = train(seed, t, lrs[arm], probe_tilt=tilt)
            append_row(path, {"arm": arm, **r})
            print(f"main {arm} seed={seed}: test(last {LAST_K}) {100 * r['last_k_test_acc']:.2f} "
                  f"({r['cpu_seconds']:.0f} CPU s)", flush=True)


BEGIN, END = "<!-- results: generated by studies/label_noise/study.py report --write -->", "<!-- end of results -->"


def command_report(args) -> None:
    """Print the tables; with ``--write``, replace the generated block of docs/label-noise.md with them."""
    text = report_markdown()
    print(text)
    if args.write:
        doc = HERE.parents[1] / "docs" / "label-noise.md"
        content = doc.read_text()
        if BEGIN not in content or END not in content:
            raise SystemExit(f"error: {doc} has no generated block ({BEGIN!r} ... {END!r})")
        head, rest = content.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        tmp = doc.with_suffix(".md.tmp")
        tmp.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
        tmp.replace(doc)


def report_markdown() -> str:
    calibration = json.loads((RESULTS / "calibration.json").read_text())
    lrs = tuned_lrs()
    rows = read_rows(RESULTS / "main.csv")
    by_arm = {arm: {int(r["seed"]): r for r in rows if r["arm"] == arm} for arm in ("t0", "tcal")}

    def per_seed(arm, key, scale=1.0):
        return {s: scale * r[key] for s, r in by_arm[arm].items()}

    primary = paired_by_seed(per_seed("tcal", "last_k_test_acc", 100), per_seed("t0", "last_k_test_acc", 100))
    common = sorted(set(by_arm["t0"]) & set(by_arm["tcal"]))
    equivalence = tost([by_arm["tcal"][s]["last_k_test_acc"] * 100 for s in common],
                       [by_arm["t0"][s]["last_k_test_acc"] * 100 for s in common], MARGIN_POINTS)
    mde = minimal_detectable_effect(primary.std, primary.n)
    secondary = [("L^t at the final weights (t = calibrated)", "probe_tilted_loss", 1.0),
                 ("variance of L(θ+ε) (Definition 3, t = 0), ×10⁻⁶", "probe_variance", 1e6),
                 ("t-weighted variance of L(θ+ε), ×10⁻⁶", "probe_tilted_variance", 1e6),
                 ("noisy training labels fitted (%)", "noisy_fitted", 100.0),
                 ("final-epoch clean test accuracy (%)", "final_test_acc", 100.0),
                 ("median ESS of the training steps", "median_ess", 1.0)]
    diffs = [paired_by_seed(per_seed("tcal", key, scale), per_seed("t0", key, scale)) for _, key, scale in secondary]
    adjusted = holm([d.p_value for d in diffs])
    lines = [f"Calibrated t = {calibration['tilt']:.3g} (median τ* = {calibration['tau_median']:.3g} at ESS = s/2 "
             f"over {calibration['steps']} pilot steps, seed {calibration['seed']}); noise radius "
             f"{calibration['noise_radius']:.3f} = {calibration['radius_over_theta0']:.2f}‖θ₀‖ "
             f"(‖θ₀‖ = {calibration['theta0_norm']:.2f}). Learning rates chosen on the clean validation split: "
             f"t = 0 → {lrs['t0']}, t = calibrated → {lrs['tcal']}.", "",
             "**Primary endpoint** (clean test accuracy, mean of the last 3 epochs, points):", "",
             "| arm | n | mean ± sd |", "|---|---|---|"]
    for arm, name in (("t0", "TSAM t = 0"), ("tcal", f"TSAM t = {calibration['tilt']:.3g}")):
        values = [100 * r["last_k_test_acc"] for r in by_arm[arm].values()]
        lines.append(f"| {name} | {len(values)} | {statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} |")
    if primary.n < len(MAIN_SEEDS):
        lines += ["", f"**Incomplete: {primary.n} of the pre-registered {len(MAIN_SEEDS)} paired seeds have finished.** "
                  "The numbers below are interim; the pre-registered analysis is at n = "
                  f"{len(MAIN_SEEDS)} (rerun `study.py main` to complete it: finished seeds are skipped)."]
    lines += ["", f"Paired difference (calibrated − t = 0): **{primary.text()} points** (95% t interval, n = {primary.n}, "
              f"p = {primary.p_value:.2g}); sd of the differences {primary.std:.2f}; minimal detectable effect at this n "
              f"(80% power, α = 0.05): **{mde:.2f} points**. TOST against ±{MARGIN_POINTS} points: 90% interval "
              f"[{equivalence.low:+.2f}, {equivalence.high:+.2f}], p = {equivalence.p_value:.2g} → "
              + ("equivalent within the margin." if equivalence.equivalent else "equivalence not shown."), "",
              "**Manipulation check and secondary measures** (calibrated − t = 0, paired, Holm-adjusted p over these "
              f"{len(secondary)} rows; probe: {PROBE_DRAWS} fresh perturbations from μ at the final weights, full noisy "
              "training set):", "", "| measure | t = 0 mean | calibrated mean | difference [95% CI] | Holm p |",
              "|---|---|---|---|---|"]
    for (name, key, scale), diff, p in zip(secondary, diffs, adjusted):
        a = statistics.fmean(per_seed("t0", key, scale).values())
        b = statistics.fmean(per_seed("tcal", key, scale).values())
        lines.append(f"| {name} | {a:.4g} | {b:.4g} | {diff.text(digits=4 if abs(diff.mean) < 1 else 2)} | {p:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    timing = sub.add_parser("time")
    timing.add_argument("--epochs", type=int, default=EPOCHS)
    sub.add_parser("calibrate")
    sub.add_parser("tune")
    main_parser = sub.add_parser("main")
    main_parser.add_argument("--seeds", type=int, default=len(MAIN_SEEDS))
    main_parser.add_argument("--reverse", action="store_true", help="run the seeds from the last one down")
    report = sub.add_parser("report")
    report.add_argument("--write", action="store_true", help="also rewrite the generated block of docs/label-noise.md")
    args = parser.parse_args(argv)
    {"time": command_time, "calibrate": command_calibrate, "tune": command_tune, "main": command_main,
     "report": command_report}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])

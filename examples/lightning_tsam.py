"""TSAM (or any registered optimizer) in a PyTorch Lightning module, on a synthetic 3-class problem.

    python examples/lightning_tsam.py                      # TSAM, float32, ~10 s on one CPU core
    python examples/lightning_tsam.py --optimizer sam --accumulate 2 --precision bf16-mixed

Offline, no logger, nothing written to disk. Needs ``pip install 'tiltedsam[lightning]'``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from tiltedsam import create_optimizer, list_optimizers
from tiltedsam.integrations.lightning import PerturbationOptimizerMixin


class Classifier(PerturbationOptimizerMixin, L.LightningModule):
    gradient_clip_val = 5.0  # clips the combined gradient, before the base optimizer steps

    def __init__(self, optimizer: str = "tsam", accumulate: int = 1):
        super().__init__()
        self.optimizer_name = optimizer
        self.accumulate_micro_batches = accumulate  # micro-batches per optimizer step
        self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))

    def training_loss(self, batch, evaluation):
        x, y = evaluation.batch(*batch)  # the whole batch unless the optimizer asks for a fraction
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = create_optimizer(self.optimizer_name, self.parameters(), model=self, lr=0.1, momentum=0.9)
        steps = self.trainer.estimated_stepping_batches // self.accumulate_micro_batches
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def blobs(n: int = 600, seed: int = 0) -> TensorDataset:
    """Three overlapping Gaussian clusters in 10 dimensions (a few percent of the points are ambiguous)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    centres = 1.5 * torch.randn(3, 10, generator=gen)
    return TensorDataset(centres[y] + torch.randn(n, 10, generator=gen), y)


def accuracy(module: Classifier, data: TensorDataset) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return (module.net(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="tsam", choices=[entry["name"] for entry in list_optimizers()])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train = blobs()
    module = Classifier(args.optimizer, args.accumulate)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=args.epochs, precision=args.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, DataLoader(train, batch_size=32 // args.accumulate, shuffle=True))

    optimizer = module.optimizers().optimizer
    result = {"train_accuracy": accuracy(module, train), "steps": float(trainer.global_step),
              "gradient_evaluations": float(trainer.global_step * optimizer.grad_evals_per_step)}
    result.update({key.split("/", 1)[1]: float(value) for key, value in trainer.callback_metrics.items()
                   if key.startswith("optimizer/")})
    print(f"{args.optimizer}: {trainer.global_step} steps, {result['gradient_evaluations']:.0f} gradient evaluations, "
          f"train accuracy {result['train_accuracy']:.3f}, last objective {result['objective']:.4f}, "
          f"ESS {result['effective_sample_size']:.2f}")
    return result


if __name__ == "__main__":
    main()

"""Run by tests/test_lightning_integration.py: TSAM through Lightning's DDP strategy, 2 CPU processes (gloo).

Usage: python tests/lightning_ddp_script.py OUT_DIR. Lightning's "ddp" strategy starts rank 1 by running
this script again; every rank writes its parameters and the optimizer's step count to OUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import sys

import lightning.pytorch as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from tiltedsam import create_optimizer
from tiltedsam.integrations.lightning import PerturbationOptimizerMixin

WORLD = 2
MICRO_BATCH = 4  # per rank; 2 micro-batches per step: 16 examples per step over both ranks
SETTINGS = dict(tilt=5.0, num_samples=3, rho=0.05, noise_radius=0.3, lr=0.1, momentum=0.9)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def make_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=gen)
    x[1::2] *= 3.0  # the two ranks' shards differ, so their local losses (and tilted weights) would too
    return x, torch.randint(0, 3, (n,), generator=gen)


class Classifier(PerturbationOptimizerMixin, L.LightningModule):
    accumulate_micro_batches = 2

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def training_loss(self, batch, evaluation):
        x, y = evaluation.batch(*batch)
        return F.cross_entropy(self.net(x), y)

    def train_dataloader(self):
        # this rank's shard, in order (rank r: examples r, r + 2, r + 4, ...)
        x, y = make_data()
        shard = TensorDataset(x[self.global_rank::WORLD], y[self.global_rank::WORLD])
        return DataLoader(shard, batch_size=MICRO_BATCH, shuffle=False)

    def configure_optimizers(self):
        # seed=None: each rank would draw its own; the optimizer shares rank 0's
        torch.manual_seed(100 + self.global_rank)
        return create_optimizer("tsam", self.parameters(), model=self, **SETTINGS)


def main(out: str) -> None:
    module = Classifier()
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module)
    torch.save({"params": [p.detach().clone() for p in module.net.parameters()],
                "steps": module.optimizers().optimizer.step_count, "global_step": trainer.global_step},
               f"{out}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])

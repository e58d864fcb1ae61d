#!/usr/bin/env python
"""How much would TSAM's tilt bite at a trained model? (docs/adaptive-tilt.md)

    .venv/bin/python studies/adaptive_tilt/probe.py RUN_DIR NOISE_RADII RHOS

RUN_DIR is a finished ``tiltedsam train`` run on mnist5k with an MLP (20% label noise). For each noise
radius and rho it takes 15 training mini-batches, draws s = 5 perturbations per batch with TSAM's
Algorithm 2 sampler (``lr = 0``: the weights do not move) and prints the mean spread of the perturbed
losses, the median aggregation tilt whose weights have ESS = s/2 (``tilt_for_ess``) and the ESS at
aggregation tilts 10 and 50 (t = 20 and t = 100 with delta = t/2).
"""

from __future__ import annotations

import statistics
import sys

import torch

from tiltedsam.harness.checkpoints import load_checkpoint
from tiltedsam.harness.data import load_dataset
from tiltedsam.harness.models import build_model
from tiltedsam.optim import TSAM
from tiltedsam.tilt import effective_sample_size_at_tilt, tilt_for_ess


def main(run_dir: str, radii: str, rhos: str) -> None:
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(run_dir + "/checkpoint.pt")
    data = load_dataset("mnist5k", seed=0, label_noise=0.2)
    net = build_model("mlp", data)
    net.load_state_dict(checkpoint["model"])
    loader = torch.utils.data.DataLoader(data.train, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = [batch for _, batch in zip(range(15), loader)]
    for radius in (float(r) for r in radii.split(",")):
        for rho in (float(r) for r in rhos.split(",")):
            optimizer = TSAM(net.parameters(), lr=0.0, momentum=0.0, weight_decay=0.0, tilt=0.0, num_samples=5,
                             rho=rho, noise_radius=radius, seed=0)
            spreads, taus, ess10, ess50 = [], [], [], []
            for x, y in batches:
                def closure() -> torch.Tensor:
                    loss = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1)
                    loss.backward()
                    return loss

                optimizer.step(closure)
                losses = optimizer.last_step.losses
                spreads.append(statistics.pstdev(losses))
                taus.append(tilt_for_ess(losses, 0.5, max_tilt=1e5))
                ess10.append(effective_sample_size_at_tilt(losses, 10.0))
                ess50.append(effective_sample_size_at_tilt(losses, 50.0))
            print(f"noise radius {radius:g}, rho {rho:g}: sigma_L {statistics.mean(spreads):.4f}, median tau* "
                  f"(ESS = s/2) {statistics.median(taus):.1f}, ESS(tau=10) {statistics.mean(ess10):.2f}/5, "
                  f"ESS(tau=50) {statistics.mean(ess50):.2f}/5", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])

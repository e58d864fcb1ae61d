"""TSAM (or any registered optimizer) with the Hugging Face ``Trainer``, on a synthetic 3-class problem.

    python examples/hf_trainer_tsam.py                      # TSAM, float32, ~10 s on one CPU core
    python examples/hf_trainer_tsam.py --optimizer sam --accumulate 2 --bf16

Offline (a model defined here, no hub ids, ``report_to="none"``); checkpoints go to a temporary
directory that is removed at the end unless ``--out DIR`` is given. Needs ``pip install 'tiltedsam[hf]'``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from tiltedsam import create_optimizer, list_optimizers  # noqa: E402
from tiltedsam.integrations.hf import PerturbationTrainer  # noqa: E402


class Classifier(nn.Module):
    """Any module in the Trainer's convention works: keyword inputs, a dict with ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, x, labels):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Blobs(torch.utils.data.Dataset):
    """Three overlapping Gaussian clusters in 10 dimensions."""

    def __init__(self, n: int = 600, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=gen)
        self.x = 1.5 * torch.randn(3, 10, generator=gen)[self.y] + torch.randn(n, 10, generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def train(args: argparse.Namespace, out: str) -> dict[str, float]:
    torch.manual_seed(0)
    model, data = Classifier(), Blobs()
    optimizer = create_optimizer(args.optimizer, model.parameters(), model=model, lr=0.1, momentum=0.9)
    training = TrainingArguments(
        output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=32 // args.accumulate,
        gradient_accumulation_steps=args.accumulate, lr_scheduler_type="cosine", max_grad_norm=5.0,
        bf16=args.bf16, use_cpu=not torch.cuda.is_available(), logging_steps=10, save_strategy="epoch",
        report_to="none", disable_tqdm=True, remove_unused_columns=False, seed=0)
    trainer = PerturbationTrainer(model=model, args=training, train_dataset=data, optimizers=(optimizer, None))
    trainer.train()

    device = next(model.parameters()).device
    with torch.no_grad():
        accuracy = (model.net(data.x.to(device)).argmax(1).cpu() == data.y).float().mean().item()
    logged = [entry for entry in trainer.state.log_history if "optimizer/objective" in entry]
    result = {"train_accuracy": accuracy, "steps": float(trainer.state.global_step),
              "gradient_evaluations": float(trainer.state.global_step * optimizer.grad_evals_per_step)}
    result.update({key.split("/", 1)[1]: value for key, value in logged[-1].items() if key.startswith("optimizer/")})
    print(f"{args.optimizer}: {trainer.state.global_step} steps, {result['gradient_evaluations']:.0f} gradient "
          f"evaluations, train accuracy {accuracy:.3f}, objective {result['objective']:.4f} and ESS "
          f"{result['effective_sample_size']:.2f} (means over the last {training.logging_steps} steps)")
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", default="tsam", choices=[entry["name"] for entry in list_optimizers()])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--accumulate", type=int, default=1, help="gradient_accumulation_steps")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    parser.add_argument("--out", default=None, help="keep the Trainer's checkpoints here")
    args = parser.parse_args(argv)
    if args.out is not None:
        return train(args, args.out)
    with tempfile.TemporaryDirectory() as out:
        return train(args, out)


if __name__ == "__main__":
    main()

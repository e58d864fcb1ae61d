"""Training a tiltedsam optimizer through the Hugging Face ``Trainer`` equals our own ``step(closure)`` loop.

Offline: a tiny model defined here, no hub ids, ``HF_HUB_OFFLINE=1``, ``report_to="none"``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import TrainingArguments  # noqa: E402

from tiltedsam import create_optimizer  # noqa: E402
from tiltedsam.integrations.hf import PerturbationTrainer  # noqa: E402

BATCH = 8
STEPS = 4
OPTIMIZERS = {
    "sam": dict(rho=0.05),
    "tsam": dict(tilt=5.0, num_samples=3, rho=0.05, noise_radius=0.3),
}
BASE = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


class TinyClassifier(nn.Module):
    """A model in the Trainer's convention: keyword inputs, a dict with ``loss`` out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, labels):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class Examples(torch.utils.data.Dataset):
    def __init__(self, n: int = BATCH * STEPS) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def batches(size: int = BATCH):
    data = Examples()
    return [(data.x[i:i + size], data.y[i:i + size]) for i in range(0, len(data), size)]


def make_scheduler(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


def build(name: str, out, *, seed: int = 3, trainer_class=PerturbationTrainer, **arguments):
    model = TinyClassifier()
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=seed, **OPTIMIZERS[name], **BASE)
    settings = dict(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH, use_cpu=True,
                    train_sampling_strategy="sequential", report_to="none", save_strategy="no", logging_steps=1,
                    disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0)
    settings.update(arguments)
    trainer = trainer_class(model=model, args=TrainingArguments(**settings), train_dataset=Examples(),
                            optimizers=(optimizer, make_scheduler(optimizer)))
    return model, optimizer, trainer


def own_loop(name: str, data, *, autocast: torch.dtype | None = None) -> nn.Module:
    model = TinyClassifier()
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=3, **OPTIMIZERS[name], **BASE)
    scheduler = make_scheduler(optimizer)
    for x, y in data:
        def closure():
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = model(x, y)["loss"]
            loss.backward()
            return loss
        optimizer.step(closure)
        scheduler.step()
    return model


def assert_same_parameters(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), atol=atol, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_train_equals_step_closure_loop_and_logs_diagnostics(tmp_path, name):
    model, optimizer, trainer = build(name, tmp_path)
    trainer.train()
    assert trainer.state.global_step == STEPS and optimizer.step_count == STEPS
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE["lr"] * 0.5 ** (STEPS // 2))
    assert_same_parameters(model, own_loop(name, batches()))
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == STEPS
    for entry in logged:
        assert entry["optimizer/objective"] == pytest.approx(entry["loss"], rel=1e-5)
        assert 1.0 <= entry["optimizer/effective_sample_size"] <= OPTIMIZERS[name].get("num_samples", 1)
    if name == "tsam":
        assert all(entry["optimizer/tilt"] == OPTIMIZERS["tsam"]["tilt"] for entry in logged)


def test_accumulating_two_micro_batches_is_one_step_on_their_union(tmp_path):
    """gradient_accumulation_steps=2 with micro-batches of 4: each evaluation runs both micro-batches at
    the same point, each loss halved by the Trainer, so the step is the one on the 8-example union."""
    model, optimizer, trainer = build("tsam", tmp_path, per_device_train_batch_size=BATCH // 2,
                                      gradient_accumulation_steps=2)
    trainer.train()
    assert trainer.state.global_step == STEPS and optimizer.step_count == STEPS
    assert_same_parameters(model, own_loop("tsam", batches()))
    separate = own_loop("tsam", batches(BATCH // 2)[:STEPS])
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), separate.parameters())) > 1e-4


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_from_checkpoint_continues_exactly(tmp_path, name):
    """4 steps straight == 2 steps, checkpoint, a fresh model and optimizer (another seed) resuming to 4.
    The optimizer state the Trainer wrote must load with weights_only=True and carry the noise generator."""
    straight, _, trainer = build(name, tmp_path / "straight", save_strategy="steps", save_steps=2)
    trainer.train()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert state["step_count"] == 2 and "base_optimizer" in state
    if name == "tsam":
        assert state["generator"] is not None

    resumed, optimizer, trainer = build(name, tmp_path / "resumed", seed=99)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert optimizer.step_count == STEPS
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_bf16_matches_the_same_autocast_in_our_loop(tmp_path):
    model, _, trainer = build("tsam", tmp_path, bf16=True)
    trainer.train()
    assert_same_parameters(model, own_loop("tsam", batches(), autocast=torch.bfloat16), atol=1e-5)


def test_a_grad_scaler_overflow_skips_the_step_and_the_scaled_steps_are_exact(tmp_path):
    """accelerate's GradScaler path (fp16 needs CUDA, so the scaler is given to the CPU accelerator and the
    arithmetic stays float32). The first step's loss is multiplied by 2**120: its gradient overflows under
    the 2**20 scale, the evaluations stop (parameters restored, no step counted), the scaler skips the step
    and halves the scale, the scheduler does not step. The next three steps are exact (power-of-two
    scale), so the result is our own loop on batches 2..4."""

    class OverflowsFirst(PerturbationTrainer):
        def compute_loss(self, model, inputs, **kwargs):
            factor = 2.0**120 if self.state.global_step == 0 else 1.0
            return super().compute_loss(model, inputs, **kwargs) * factor

    model, optimizer, trainer = build("sam", tmp_path, trainer_class=OverflowsFirst,
                                      max_grad_norm=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=10**6)
    trainer.accelerator.scaler = scaler
    trainer.train()
    assert scaler.get_scale() == 2.0**19
    assert trainer.state.global_step == STEPS and optimizer.step_count == STEPS - 1
    assert_same_parameters(model, own_loop("sam", batches()[1:]))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")  # the reference's base_step
def test_clipping_applies_to_the_combined_gradient(tmp_path):
    model, _, trainer = build("sam", tmp_path, max_grad_norm=0.05)
    trainer.train()
    reference = TinyClassifier()
    optimizer = create_optimizer("sam", reference.parameters(), model=reference, seed=3, **OPTIMIZERS["sam"], **BASE)
    scheduler = make_scheduler(optimizer)
    for x, y in batches():
        for evaluation in optimizer.manual_step(apply=False):
            loss = reference(x, y)["loss"]
            loss.backward()
            evaluation.record(loss)
        nn.utils.clip_grad_norm_(reference.parameters(), 0.05)
        optimizer.base_step()
        scheduler.step()
    assert_same_parameters(model, reference)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_one_mixed_precision_step_on_cuda_equals_the_manual_recipe(tmp_path, precision):
    """One TSAM step through the Trainer on the GPU (fp16: accelerate's GradScaler) against the documented
    manual recipe: autocast each evaluation, scaler.scale(loss).backward(), scaler.step(base_optimizer)."""
    model, optimizer, trainer = build("tsam", tmp_path, max_steps=1, use_cpu=False, max_grad_norm=0.0,
                                      **{precision: True})
    trainer.train()
    assert trainer.state.global_step == 1 and optimizer.step_count == 1

    reference = TinyClassifier().cuda()
    manual = create_optimizer("tsam", reference.parameters(), model=reference, seed=3, **OPTIMIZERS["tsam"], **BASE)
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    x, y = (t.cuda() for t in batches()[0])
    for evaluation in manual.manual_step(apply=False):
        with torch.autocast("cuda", dtype=dtype):
            loss = reference(x, y)["loss"]
        scaler.scale(loss).backward()
        evaluation.record(loss)
    scaler.step(manual.base_optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_same_parameters(model, reference, atol=1e-4)


def test_a_plain_optimizer_or_none_is_refused(tmp_path):
    model = TinyClassifier()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none",
                             remove_unused_columns=False)
    with pytest.raises(TypeError, match="needs a tiltedsam optimizer"):
        PerturbationTrainer(model=model, args=args, train_dataset=Examples(),
                            optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None)).train()
    with pytest.raises(ValueError, match="optimizers="):
        PerturbationTrainer(model=model, args=args, train_dataset=Examples()).train()


def test_missing_extra_names_it(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "tiltedsam.integrations.hf")
    with pytest.raises(ImportError, match=r"pip install 'tiltedsam\[hf\]'"):
        importlib.import_module("tiltedsam.integrations.hf")


def test_example_script_trains_the_synthetic_problem():
    """examples/hf_trainer_tsam.py, one epoch: 600 examples in batches of 32 -> 19 TSAM steps of 6 evaluations."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hf_trainer_tsam.py"
    spec = importlib.util.spec_from_file_location("_example_hf_trainer_tsam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--epochs", "1"])
    assert result["steps"] == 19 and result["gradient_evaluations"] == 19 * 6
    assert result["train_accuracy"] >= 0.9  # three well separated clusters: chance is 1/3
    assert 1.0 <= result["effective_sample_size"] <= 3.0

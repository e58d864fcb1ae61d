"""Every evaluation of one SAM/TSAM step sees the same dropout masks (harness/dropout.py), and the next
step gets fresh ones. Tiny models with dropout; no transformers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiltedsam.harness.dropout import StepRngReplay
from tiltedsam.optim.registry import create_optimizer


class MaskRecorder:
    """Forward hook on every nn.Dropout: the positions it zeroed among the non-zero inputs, per call."""

    def __init__(self, model: nn.Module):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.calls.append(((inputs[0] != 0).detach().clone(), (output == 0).detach().clone()))

    @staticmethod
    def same(a, b) -> bool:
        both = a[0] & b[0]
        return bool(torch.equal(a[1] & both, b[1] & both)) and bool(both.any())


def tiny_model() -> nn.Module:
    # Linear outputs are non-zero almost surely, so every zero after the dropout is a dropped unit.
    return nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.5), nn.Tanh(), nn.Linear(32, 3))


@pytest.mark.parametrize("name, settings, evaluations", [
    ("sam", {"rho": 0.05}, 2),
    ("tsam", {"num_samples": 3, "tilt": 5.0}, 6),
])
@pytest.mark.parametrize("enabled", [True, False])
def test_masks_are_shared_within_a_step_and_fresh_across_steps(name, settings, evaluations, enabled):
    torch.manual_seed(0)
    model = tiny_model()
    optimizer = create_optimizer(name, model.parameters(), lr=0.1, seed=0, **settings)
    recorder = MaskRecorder(model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    replay = StepRngReplay(enabled)

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        replay.save()
        optimizer.step(replay.wrap(closure))
    assert len(recorder.calls) == 2 * evaluations
    first, second = recorder.calls[:evaluations], recorder.calls[evaluations:]
    within = [MaskRecorder.same(first[0], call) for call in first[1:]]
    if enabled:
        assert all(within), f"{name}: an evaluation of the step drew other dropout masks"
    else:  # the control: without the replay the masks differ, so the assertion above can fail
        assert not any(within)
    assert not MaskRecorder.same(first[0], second[0]), "the next step must draw fresh masks"


def test_rng_advances_by_one_evaluation_per_step():
    """After a replayed step the global RNG is where one evaluation would have left it."""
    torch.manual_seed(3)
    model = tiny_model()
    optimizer = create_optimizer("tsam", model.parameters(), lr=0.1, seed=0, num_samples=2)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    replay = StepRngReplay()
    start = torch.get_rng_state()
    replay.save()
    optimizer.step(replay.wrap(closure))
    after_step = torch.get_rng_state()
    torch.set_rng_state(start)
    model(x)  # one forward: one set of dropout draws
    assert torch.equal(after_step, torch.get_rng_state())


def test_restore_before_save_is_an_error_and_disabled_is_a_no_op():
    with pytest.raises(RuntimeError, match="before save"):
        StepRngReplay().restore()
    closure = lambda: 1.0  # noqa: E731
    assert StepRngReplay(enabled=False).wrap(closure) is closure


@pytest.mark.parametrize("same", [True, False])
def test_harness_train_replays_masks_per_step(same, tmp_path, monkeypatch):
    """The wiring in harness.train: one TSAM step (s = 2, 4 evaluations) of an MLP with dropout."""
    from tiltedsam.harness.config import RunConfig, from_dict
    from tiltedsam.harness.train import train

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = nn.Dropout.forward

    def recording_forward(self, x):
        out = original(self, x)
        if self.training:
            calls.append(((x != 0).detach().clone(), (out == 0).detach().clone()))
        return out

    monkeypatch.setattr(nn.Dropout, "forward", recording_forward)
    config = from_dict(RunConfig, {
        "seed": 0, "batch_size": 32, "data": {"name": "digits", "limit": 200},
        "model": {"name": "mlp", "options": {"hidden_sizes": [32], "dropout": 0.5}},
        "optimizer": {"name": "tsam", "settings": {"num_samples": 2}, "same_dropout_masks": same},
        "budget": {"kind": "steps", "amount": 1},
        "run": {"out_dir": str(tmp_path / "run"), "progress": False},
    })
    train(config)
    assert len(calls) == 4
    shared = [MaskRecorder.same(calls[0], call) for call in calls[1:]]
    assert all(shared) if same else not any(shared)

"""Behaviour only a GPU shows (``pytest -m cuda``; every test here skips cleanly without CUDA).

Run by ``benchmarks/gpu_check.sh``. One process, one device, no ``torch.distributed``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tiltedsam import SAM, TSAM
from tiltedsam.functional import draw_noise, snapshot

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"


def problem(seed: int = 0, batchnorm: bool = True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3, padding=1)] + ([nn.BatchNorm2d(8)] if batchnorm else []) + [
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)]
    model = nn.Sequential(*layers).to(DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(32, 3, 8, 8, device=DEVICE, generator=generator)
    y = torch.randint(0, 5, (32,), device=DEVICE, generator=generator)
    return model, x, y


def closure_for(model, x, y):
    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    return closure


def test_noise_generator_snapshots_and_gradients_live_on_the_device():
    model, x, y = problem()
    opt = TSAM(model.parameters(), lr=0.1, model=model, seed=1, num_samples=2)
    seen = []
    for evaluation in opt.manual_step():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        evaluation.record(loss)
        seen.append({p.device.type for p in model.parameters()} | {p.grad.device.type for p in model.parameters()})
    assert opt.generator.device.type == "cuda"
    assert all(devices == {"cuda"} for devices in seen)
    params = list(model.parameters())
    origin = snapshot(params)  # the driver's snapshot of theta
    assert {t.device.type for t in origin} == {"cuda"}
    noise = draw_noise(params, "gaussian", 0.5, opt.generator)
    assert {z.device.type for z in noise} == {"cuda"}
    assert {p.grad.device.type for p in model.parameters()} == {"cuda"}


def test_generator_state_round_trip_on_cuda_continues_bit_identically():
    model_a, x, y = problem()
    model_b = copy.deepcopy(model_a)
    opt_a = TSAM(model_a.parameters(), lr=0.1, momentum=0.9, model=model_a, seed=7, num_samples=2)
    for _ in range(2):
        opt_a.step(closure_for(model_a, x, y))
    model_b.load_state_dict(model_a.state_dict())
    opt_b = TSAM(model_b.parameters(), lr=0.1, momentum=0.9, model=model_b, seed=99, num_samples=2)
    state = opt_a.state_dict()
    assert state["generator"]["device_type"] == "cuda"
    opt_b.load_state_dict(state)
    for _ in range(2):
        opt_a.step(closure_for(model_a, x, y))
        opt_b.step(closure_for(model_b, x, y))
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)


def _train(model, opt, x, y, steps, dtype=None, scaler=None):
    for _ in range(steps):
        for evaluation in opt.manual_step(apply=scaler is None):
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            evaluation.record(loss)
        if scaler is not None:
            scaler.step(opt.base_optimizer)
            scaler.update()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_through_the_manual_api_matches_float32(dtype):
    """fp16 autocast with a GradScaler, and bf16 autocast, give the float32 update within their precision."""
    model_ref, x, y = problem()
    model_amp = copy.deepcopy(model_ref)
    settings = dict(lr=0.05, momentum=0.9, seed=3, num_samples=3, noise_radius=0.1, tilt=5.0)
    opt_ref = TSAM(model_ref.parameters(), model=model_ref, **settings)
    opt_amp = TSAM(model_amp.parameters(), model=model_amp, **settings)
    start = [p.detach().clone() for p in model_ref.parameters()]
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12) if dtype == torch.float16 else None
    _train(model_ref, opt_ref, x, y, 3)
    _train(model_amp, opt_amp, x, y, 3, dtype=dtype, scaler=scaler)
    if scaler is not None:
        assert scaler.get_scale() >= 2.0**11  # at most one skipped step: the updates were finite
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01  # relative to the size of the float32 update
    for s, p, q in zip(start, model_ref.parameters(), model_amp.parameters()):
        update = (p - s).norm()
        assert (q - p).norm() <= tolerance * update + 1e-6
    assert opt_amp.last_step.losses == pytest.approx(opt_ref.last_step.losses, rel=0.02)


def _synchronizing_calls(step) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("num_samples", [1, 3])
def test_a_tsam_step_synchronises_only_to_read_its_losses(num_samples):
    """Per sample: the perturbed loss (the weights need it) and the logged noise loss; nothing else."""
    model, x, y = problem()
    opt = TSAM(model.parameters(), lr=0.1, momentum=0.9, model=model, seed=0, num_samples=num_samples)
    opt.step(closure_for(model, x, y))  # warm-up: generator, momentum buffers, cuDNN
    count = _synchronizing_calls(lambda: opt.step(closure_for(model, x, y)))
    assert count <= 2 * num_samples


def test_a_sam_step_synchronises_only_to_read_its_losses():
    model, x, y = problem()
    opt = SAM(model.parameters(), lr=0.1, momentum=0.9, model=model)
    opt.step(closure_for(model, x, y))
    assert _synchronizing_calls(lambda: opt.step(closure_for(model, x, y))) <= 2


def test_batched_step_on_cuda_equals_the_loop_and_reads_losses_once():
    model_loop, x, y = problem()
    model_batched = copy.deepcopy(model_loop)
    settings = dict(lr=0.1, momentum=0.9, seed=2, num_samples=3, noise_radius=0.3, tilt=10.0)
    loop = TSAM(model_loop.parameters(), model=model_loop, **settings)
    batched = TSAM(model_batched.parameters(), model=model_batched, parallel_samples=True, **settings)
    for _ in range(2):
        loop.step(closure_for(model_loop, x, y))
        batched.step_batched(x, lambda output: F.cross_entropy(output, y))
    for p, q in zip(model_loop.state_dict().values(), model_batched.state_dict().values()):
        if p.is_floating_point():
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5)
    count = _synchronizing_calls(lambda: batched.step_batched(x, lambda output: F.cross_entropy(output, y)))
    assert count <= 2  # the s perturbed losses in one read, the s noise losses in another

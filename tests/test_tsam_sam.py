"""TSAM and SAM: equivalences, exact restore, manual API, state round trips, BatchNorm, validation."""

import copy
import math

import pytest
import torch
from torch import nn

from tiltedsam import ERM, SAM, TSAM, NonFiniteLossError, frozen_batchnorm_stats
from tiltedsam.functional import draw_noise, global_norm
from conftest import closure_for, tiny_classifier


def make_problem(seed=0, batchnorm=False):
    return tiny_classifier(seed, batchnorm=batchnorm)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b):
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def run_steps(opt, model, x, y, steps):
    for _ in range(steps):
        opt.step(closure_for(model, x, y))


def test_tsam_one_noiseless_sample_is_exactly_sam():
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    tsam = TSAM(model_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4,
                tilt=7.0, num_samples=1, rho=0.05, noise_radius=0.0)
    sam = SAM(model_b.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.05)
    for _ in range(5):
        tsam.step(closure_for(model_a, x, y))
        sam.step(closure_for(model_b, x, y))
    assert_same(params_of(model_a), params_of(model_b))


def test_sam_with_zero_rho_is_exactly_the_base_optimizer():
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    sam = SAM(model_a.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, rho=0.0)
    sgd = torch.optim.SGD(model_b.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        sam.step(closure_for(model_a, x, y))
        sgd.zero_grad()
        closure_for(model_b, x, y)()
        sgd.step()
    assert_same(params_of(model_a), params_of(model_b))


def test_erm_is_exactly_the_base_optimizer():
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    erm = ERM(model_a.parameters(), torch.optim.Adam, lr=1e-2)
    adam = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    for _ in range(3):
        erm.step(closure_for(model_a, x, y))
        adam.zero_grad()
        closure_for(model_b, x, y)()
        adam.step()
    assert_same(params_of(model_a), params_of(model_b))


def test_tsam_zero_tilt_weights_uniformly_and_inf_picks_the_max():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.01, tilt=0.0, num_samples=4, noise_radius=0.5, seed=1)
    opt.step(closure_for(model, x, y))
    assert opt.last_step.weights == pytest.approx([0.25] * 4)
    assert opt.last_step.effective_sample_size == pytest.approx(4.0)
    opt_inf = TSAM(model.parameters(), lr=0.01, tilt=math.inf, num_samples=4, noise_radius=0.5, seed=1)
    opt_inf.step(closure_for(model, x, y))
    losses = opt_inf.last_step.losses
    assert opt_inf.last_step.weights[losses.index(max(losses))] == 1.0
    assert opt_inf.last_step.objective == max(losses)


def test_tsam_gradient_is_the_tilted_average_of_sample_gradients():
    """Record each sample's gradient at theta+eps_j through the manual API and rebuild Algorithm 1's update."""
    model, x, y = make_problem()
    tilt, sample_tilt = 30.0, 10.0
    opt = TSAM(model.parameters(), lr=0.0, tilt=tilt, sample_tilt=sample_tilt, num_samples=3, noise_radius=0.5, seed=3)
    sample_grads, sample_losses = [], []
    for ev in opt.manual_step():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        ev.record(loss)
        if ev.label == "perturbed":
            sample_grads.append([p.grad.clone() for p in model.parameters()])
            sample_losses.append(loss.item())
    logits = (tilt - sample_tilt) * torch.tensor(sample_losses, dtype=torch.float64)
    w = torch.softmax(logits, 0)
    for i, p in enumerate(model.parameters()):
        expected = sum(float(w[j]) * sample_grads[j][i] for j in range(3))
        assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-7)
    assert opt.last_step.losses == pytest.approx(sample_losses)
    assert opt.last_step.weights == pytest.approx(w.tolist())
    assert opt.last_step.extra["sample_tilt"] == sample_tilt
    assert opt.sample_tilt == 10.0 and opt.aggregation_tilt == 20.0


def test_default_sample_tilt_is_half_the_tilt():
    model, _, _ = make_problem()
    opt = TSAM(model.parameters(), lr=0.1, tilt=8.0)
    assert opt.sample_tilt == 4.0 and opt.aggregation_tilt == 4.0
    opt.tilt = 2.0
    assert opt.sample_tilt == 1.0


@pytest.mark.parametrize("make", [
    lambda ps: TSAM(ps, lr=0.1, momentum=0.9, num_samples=3, noise_radius=0.3, seed=0),
    lambda ps: SAM(ps, lr=0.1, momentum=0.9, rho=0.1),
    lambda ps: SAM(ps, lr=0.1, momentum=0.9, rho=0.5, adaptive=True),
])
def test_parameters_are_restored_bit_exactly_before_the_base_step(make):
    model, x, y = make_problem()
    opt = make(list(model.parameters()))
    seen = []
    opt.base_optimizer.register_step_pre_hook(lambda o, a, k: seen.append(params_of(model)))
    for _ in range(3):
        before = params_of(model)
        opt.step(closure_for(model, x, y))
        assert_same(seen[-1], before)


def test_closure_is_called_two_s_times_and_step_returns_the_objective():
    model, x, y = make_problem()
    calls = []
    opt = TSAM(model.parameters(), lr=0.1, num_samples=4, tilt=3.0)
    assert opt.grad_evals_per_step == 8
    value = opt.step(closure_for(model, x, y, calls))
    assert len(calls) == 8
    from tiltedsam import tilted_mean
    assert float(value) == pytest.approx(float(tilted_mean(opt.last_step.losses, 3.0)))
    calls.clear()
    SAM(model.parameters(), lr=0.1).step(closure_for(model, x, y, calls))
    assert len(calls) == 2


def train_with_manual_api(model, opt, x, y, steps):
    for _ in range(steps):
        for ev in opt.manual_step():
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            ev.record(loss)


@pytest.mark.parametrize("cls,kw", [(TSAM, dict(num_samples=3, noise_radius=0.2, tilt=5.0)), (SAM, dict(rho=0.1))])
def test_manual_api_equals_closure_api(cls, kw):
    model_a, x, y = make_problem(batchnorm=True)
    model_b = copy.deepcopy(model_a)
    opt_a = cls(model_a.parameters(), lr=0.1, momentum=0.9, model=model_a, seed=5, **kw)
    opt_b = cls(model_b.parameters(), lr=0.1, momentum=0.9, model=model_b, seed=5, **kw)
    run_steps(opt_a, model_a, x, y, 4)
    train_with_manual_api(model_b, opt_b, x, y, 4)
    assert_same(params_of(model_a), params_of(model_b))
    assert_same(list(model_a.buffers()), list(model_b.buffers()))


def test_gradient_accumulation_in_the_manual_api():
    """Two half-batches accumulated per evaluation give the same update as the full batch (to rounding)."""
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = TSAM(model_a.parameters(), lr=0.1, num_samples=2, noise_radius=0.2, seed=2)
    opt_b = TSAM(model_b.parameters(), lr=0.1, num_samples=2, noise_radius=0.2, seed=2)
    run_steps(opt_a, model_a, x, y, 2)
    for _ in range(2):
        for ev in opt_b.manual_step():
            total = 0.0
            for xs, ys in zip(x.chunk(2), y.chunk(2)):
                loss = nn.functional.cross_entropy(model_b(xs), ys) / 2
                loss.backward()
                total += loss.item()
            ev.record(total)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_manual_api_with_a_grad_scaler_matches_the_closure_api():
    """A power-of-two loss scale is exact, so scaling/unscaling must not change the update at all."""
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    opt_a = TSAM(model_a.parameters(), lr=0.1, momentum=0.9, num_samples=2, noise_radius=0.2, seed=4)
    opt_b = TSAM(model_b.parameters(), lr=0.1, momentum=0.9, num_samples=2, noise_radius=0.2, seed=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=10**6)
    run_steps(opt_a, model_a, x, y, 3)
    for _ in range(3):
        for ev in opt_b.manual_step(apply=False):
            loss = nn.functional.cross_entropy(model_b(x), y)
            scaler.scale(loss).backward()
            ev.record(loss)
        scaler.step(opt_b.base_optimizer)
        scaler.update()
    assert_same(params_of(model_a), params_of(model_b))


def test_leaving_the_manual_loop_early_restores_parameters():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.1, num_samples=3, noise_radius=0.5)
    before = params_of(model)
    for ev in opt.manual_step():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        ev.record(loss)
        if ev.index == 2:
            break
    assert_same(params_of(model), before)


def test_missing_record_and_missing_closure_raise_clearly():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.1)
    before = params_of(model)
    with pytest.raises(RuntimeError, match="record"):
        for ev in opt.manual_step():
            nn.functional.cross_entropy(model(x), y).backward()
    assert_same(params_of(model), before)
    with pytest.raises(ValueError, match="needs a closure"):
        opt.step()


def test_nan_loss_raises_and_leaves_parameters_untouched():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.1, num_samples=3)
    before = params_of(model)
    calls = []

    def closure():
        calls.append(1)
        loss = nn.functional.cross_entropy(model(x), y)
        if len(calls) == 4:  # the loss of the second sample's perturbed point
            loss = loss * float("nan")
        loss.backward()
        return loss

    with pytest.raises(NonFiniteLossError, match="sample 1"):
        opt.step(closure)
    assert_same(params_of(model), before)
    ignoring = TSAM(model.parameters(), lr=0.1, num_samples=3, nonfinite="ignore")
    calls.clear()
    ignoring.step(closure)
    assert ignoring.last_step.weights[1] == 0.0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("cls,kw", [
    (TSAM, dict(num_samples=2, noise_radius=0.3, tilt=5.0)),
    (SAM, dict(rho=0.1)),
    (ERM, {}),
])
def test_state_dict_round_trip_continues_bit_identically(cls, kw, tmp_path):
    model, x, y = make_problem(batchnorm=True)
    opt = cls(model.parameters(), lr=0.1, momentum=0.9, model=model, seed=11, **kw)
    run_steps(opt, model, x, y, 3)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    run_steps(opt, model, x, y, 4)
    expected = params_of(model)

    fresh, _, _ = make_problem(seed=99, batchnorm=True)
    fresh_opt = cls(fresh.parameters(), lr=0.5, momentum=0.9, model=fresh, seed=0, **kw)
    saved = torch.load(path, weights_only=True)
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["opt"])
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    assert fresh_opt.param_groups is fresh_opt.base_optimizer.param_groups
    run_steps(fresh_opt, fresh, x, y, 4)
    assert_same(params_of(fresh), expected)


def test_state_dict_holds_base_state_and_generator_but_no_weight_copy():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.1, momentum=0.9)
    run_steps(opt, model, x, y, 1)
    sd = opt.state_dict()
    assert "momentum_buffer" in sd["base_optimizer"]["state"][0]
    assert sd["generator"]["state"].dtype == torch.uint8
    with pytest.raises(ValueError, match="saved by 'SAM'"):
        opt.load_state_dict({**SAM(model.parameters(), lr=0.1).state_dict()})
    with pytest.raises(ValueError, match="not a TSAM state dict"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_lr_scheduler_on_the_wrapper_drives_the_base_optimizer():
    model, x, y = make_problem()
    opt = TSAM(model.parameters(), lr=0.1, num_samples=1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.step(closure_for(model, x, y))
        scheduler.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_param_groups_with_their_own_learning_rates():
    model, x, y = make_problem()
    first, last = model[0], model[-1]
    opt = TSAM([{"params": first.parameters(), "lr": 0.0}, {"params": last.parameters()}], lr=0.1, num_samples=2)
    before_first, before_last = params_of(first), params_of(last)
    opt.step(closure_for(model, x, y))
    assert_same(params_of(first), before_first)
    assert not torch.equal(params_of(last)[0], before_last[0])
    extra = nn.Linear(2, 2)
    opt.add_param_group({"params": extra.parameters(), "lr": 0.3})
    assert opt.base_optimizer.param_groups[-1]["lr"] == 0.3 and len(opt.param_groups) == 3


def test_batchnorm_statistics_move_once_per_step():
    model, x, y = make_problem(batchnorm=True)
    bn = model[1]
    opt = TSAM(model.parameters(), lr=0.1, num_samples=3, noise_radius=0.5, model=model)
    # The expected statistics come from one train-mode forward at the first evaluation point theta + delta_1:
    reference = copy.deepcopy(model)
    ref_opt = TSAM(reference.parameters(), lr=0.1, num_samples=3, noise_radius=0.5, model=reference, seed=opt.seed)
    for ev in ref_opt.manual_step(apply=False):
        outputs = reference(x)
        if ev.index == 0:
            ref_mean = reference[1].running_mean.clone()
        loss = nn.functional.cross_entropy(outputs, y)
        loss.backward()  # every evaluation must produce gradients (a missing backward() is an error)
        ev.record(loss)
    opt.step(closure_for(model, x, y))
    assert int(bn.num_batches_tracked) == 1
    assert torch.equal(bn.running_mean, ref_mean)
    opt.step(closure_for(model, x, y))
    assert int(bn.num_batches_tracked) == 2


def test_frozen_batchnorm_stats_is_exact_and_restores_flags():
    model, x, _ = make_problem(batchnorm=True)
    buffers = [b.clone() for b in model.buffers()]
    with frozen_batchnorm_stats(model):
        model(x)
    assert_same(list(model.buffers()), buffers)
    assert model[1].track_running_stats


@pytest.mark.parametrize("kwargs,name", [
    (dict(tilt=-1.0), "tilt"),
    (dict(tilt=float("nan")), "tilt"),
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.5), "num_samples"),
    (dict(rho=-0.1), "rho"),
    (dict(rho=float("inf")), "rho"),
    (dict(noise_radius=-1.0), "noise_radius"),
    (dict(noise_std=-1.0), "noise_std"),
    (dict(tilt=1.0, sample_tilt=2.0), "sample_tilt"),
    (dict(sample_tilt=-0.5), "sample_tilt"),
    (dict(noise="laplace"), "noise"),
    (dict(nonfinite="skip"), "nonfinite"),
    (dict(sampler="nope"), "sampler"),
    (dict(seed=-3), "seed"),
])
def test_tsam_rejects_bad_arguments_naming_them(kwargs, name):
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match=name) as info:
        TSAM(model.parameters(), lr=0.1, **kwargs)
    bad_value = next(iter(kwargs.values())) if name != "sample_tilt" else kwargs["sample_tilt"]
    assert repr(bad_value) in str(info.value) or str(bad_value) in str(info.value)


@pytest.mark.parametrize("kwargs,name", [(dict(rho=-1.0), "rho"), (dict(adaptive="yes"), "adaptive"),
                                         (dict(adaptive_eta=-1.0), "adaptive_eta")])
def test_sam_rejects_bad_arguments_naming_them(kwargs, name):
    model, _, _ = make_problem()
    with pytest.raises(ValueError, match=name):
        SAM(model.parameters(), lr=0.1, **kwargs)


def test_base_optimizer_must_be_a_class():
    model, _, _ = make_problem()
    with pytest.raises(TypeError, match="class"):
        TSAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1))


def test_davda54_style_first_and_second_step_match_step():
    model_a, x, y = make_problem()
    model_b = copy.deepcopy(model_a)
    a = SAM(model_a.parameters(), lr=0.1, momentum=0.9, rho=0.1)
    b = SAM(model_b.parameters(), lr=0.1, momentum=0.9, rho=0.1)
    for _ in range(3):
        a.step(closure_for(model_a, x, y))
        closure_for(model_b, x, y)()
        b.first_step(zero_grad=True)
        closure_for(model_b, x, y)()
        b.second_step(zero_grad=True)
    assert_same(params_of(model_a), params_of(model_b))
    with pytest.raises(RuntimeError, match="first_step"):
        b.second_step()


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_stays_in_the_ball_and_is_reproducible(kind):
    params = [torch.zeros(50), torch.zeros(4, 5)]
    norms = []
    for seed in range(200):
        noise = draw_noise(params, kind, 0.7, torch.Generator().manual_seed(seed), std=0.05)
        norms.append(float(global_norm(noise)))
    assert max(norms) <= 0.7 + 1e-6
    again = draw_noise(params, kind, 0.7, torch.Generator().manual_seed(3), std=0.05)
    assert float(global_norm(again)) == pytest.approx(norms[3])
    if kind == "uniform":
        # uniform in a 70-dim ball: P(||z|| <= r u) = u^70, so the mean of norms/r is 70/71
        assert sum(norms) / len(norms) / 0.7 == pytest.approx(70 / 71, abs=0.01)
    else:
        # std 0.05 * sqrt(70) ~ 0.42 < 0.7: mostly unclipped
        assert sum(norms) / len(norms) == pytest.approx(0.05 * math.sqrt(70), rel=0.1)


def test_same_seed_same_trajectory_different_seed_different():
    def train(seed):
        model, x, y = make_problem()
        opt = TSAM(model.parameters(), lr=0.1, num_samples=2, noise_radius=0.5, seed=seed)
        run_steps(opt, model, x, y, 2)
        return params_of(model)

    assert_same(train(1), train(1))
    assert not torch.equal(train(1)[0], train(2)[0])


def test_tsam_trains_digits_to_a_stated_accuracy():
    from tiltedsam.quickstart import train_digits

    result = train_digits("tsam", epochs=6, seed=0, tilt=20.0, num_samples=3, rho=0.05, noise_radius=0.1)
    untrained_loss = math.log(10)
    assert result.final_train_loss < 0.3 * untrained_loss
    assert result.test_accuracy >= 0.90

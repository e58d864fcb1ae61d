"""The step driver every optimizer shares: which closures receive the evaluation, the warnings and errors a
user's loop gets (naming the optimizer, the evaluation and what to do), the settings it reads from a
constructor, and what a state dict needs to load."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from conftest import closure_for, tiny_classifier
from tiltedsam.optim import SAM, TSAM
from tiltedsam.optim.base import (Evaluation, PerturbationOptimizer, Point, Request, check_param_group,
                                  closure_takes_evaluation, resolve_base_optimizer)


def test_a_builtin_without_a_signature_is_called_without_the_evaluation():
    assert closure_takes_evaluation(max) is False  # inspect.signature(max) raises: keep closure()
    assert closure_takes_evaluation(lambda evaluation: 0) is True
    assert closure_takes_evaluation(lambda backward=True: 0) is False


def test_slicing_no_tensors_is_an_error_that_says_what_is_needed():
    evaluation = Evaluation(0, Request(Point.NOISE, batch_fraction=0.5))
    with pytest.raises(ValueError) as excinfo:
        evaluation.batch()
    assert str(excinfo.value).startswith("Evaluation.batch needs at least one tensor")
    rows = torch.arange(5)
    assert evaluation.batch(rows).tolist() == [0, 1, 2]  # ceil(0.5 * 5) rows


def test_unset_settings_of_a_param_group_are_not_checked():
    check_param_group({"params": [torch.zeros(())], "lr": None, "momentum": None, "betas": None})
    with pytest.raises(TypeError) as excinfo:  # a known numeric setting that is a string is named
        check_param_group({"lr": "fast"})
    assert "lr" in str(excinfo.value) and "'fast'" in str(excinfo.value)


def test_an_unknown_keyword_is_named_with_the_settings_the_optimizer_takes():
    model, _, _ = tiny_classifier()
    with pytest.raises(TypeError) as excinfo:
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, rhoo=0.05)
    message = str(excinfo.value)
    assert "'rhoo'" in message and "SGD" in message
    own = message.split("SAM takes ", 1)[1].split(";", 1)[0].split(", ")
    assert {"rho", "model", "seed", "distributed", "nonfinite"} <= set(own)
    base = message.split("SGD takes ", 1)[1].split(", ")
    assert {"lr", "momentum", "weight_decay"} <= set(base) and "params" not in base


class _Plumbed(PerturbationOptimizer):
    """A subclass whose constructor takes every plumbing keyword next to its one own setting."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, *, gamma: float = 0.5, model=None, seed=None,
                 distributed=None, nonfinite="raise", sampler_options=None, parallel_samples=False, **kw):
        super().__init__(params, base_optimizer, {"gamma": gamma}, model=model, seed=seed, **kw)


def test_setting_defaults_are_the_own_keyword_only_settings_without_the_plumbing():
    assert _Plumbed.setting_defaults() == {"gamma": 0.5}


def test_an_optimizer_over_frozen_parameters_only_says_so_on_step():
    model, x, y = tiny_classifier()
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05)
    with pytest.raises(ValueError) as excinfo:
        optimizer.step(closure_for(model, x, y))
    message = str(excinfo.value)
    assert message.startswith("SAM.step: none of its 4 parameters requires a gradient (requires_grad=False")
    assert "unfreeze some parameters or give the optimizer the trainable ones" in message


def test_a_closure_without_backward_is_named_with_the_optimizer_and_the_evaluation():
    model, x, y = tiny_classifier()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05)
    with pytest.raises(RuntimeError) as excinfo:
        optimizer.step(lambda: nn.functional.cross_entropy(model(x), y))
    message = str(excinfo.value)
    assert message.startswith("SAM: evaluation 0 ('clean')")
    assert "must call loss.backward() before returning the loss" in message


def test_a_full_batch_closure_without_argument_gets_no_warning():
    model, x, y = tiny_classifier()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step(closure_for(model, x, y))


def _sub_batch_warnings_of_two_steps():
    model, x, y = tiny_classifier()
    optimizer = TSAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05, num_samples=2, seed=0,
                     ascent_fraction=0.5)
    closure = closure_for(model, x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer.step(closure)
        optimizer.step(closure)
    return [w for w in caught if "whole batch" in str(w.message)]


def test_sub_batch_ascent_with_an_argumentless_closure_warns_once():
    relevant = _sub_batch_warnings_of_two_steps()
    assert len(relevant) == 1
    assert "fraction 0.5" in str(relevant[0].message)
    assert "saves nothing); define closure(evaluation) and slice with evaluation.batch(x, y)" in str(relevant[0].message)


def test_the_sub_batch_warning_points_at_the_callers_line():
    (warning,) = _sub_batch_warnings_of_two_steps()
    assert warning.filename == __file__  # attributed to the user's optimizer.step(...) line


def test_a_state_dict_without_optimizer_specific_extras_loads():
    model, x, y = tiny_classifier()
    optimizer = TSAM(model.parameters(), torch.optim.SGD, lr=0.1, num_samples=2, seed=0)
    optimizer.step(closure_for(model, x, y))
    state = optimizer.state_dict()
    del state["extra"]
    fresh = TSAM(model.parameters(), torch.optim.SGD, lr=0.1, num_samples=2, seed=1)
    fresh.load_state_dict(state)
    assert fresh.step_count == 1 and fresh.seed == 0
    fresh.step(closure_for(model, x, y))
    assert fresh.step_count == 2


# ---------------------------------------------------------------- the base optimizer
def test_a_base_optimizer_name_is_case_insensitive():
    assert resolve_base_optimizer("SGD") is torch.optim.SGD
    assert resolve_base_optimizer("AdamW") is torch.optim.AdamW
    factory = lambda groups, **kwargs: torch.optim.SGD(groups, **kwargs)  # noqa: E731
    assert resolve_base_optimizer(factory) is factory
    assert resolve_base_optimizer(torch.optim.RMSprop) is torch.optim.RMSprop


def test_an_unknown_base_optimizer_name_lists_the_known_ones():
    with pytest.raises(ValueError) as excinfo:
        resolve_base_optimizer("sgdd")
    message = str(excinfo.value)
    assert "'sgdd'" in message and "['adam', 'adamw', 'sgd']" in message
    assert "['adam', 'adamw', 'sgd'] (or pass a torch.optim.Optimizer class)" in message


@pytest.mark.parametrize("bad, named", [(3, "3"), (nn.Linear, "Linear"), (dict, "dict")])
def test_a_base_optimizer_that_is_no_optimizer_is_a_type_error_naming_it(bad, named):
    with pytest.raises(TypeError) as excinfo:
        resolve_base_optimizer(bad)
    message = str(excinfo.value)
    assert named in message and "['adam', 'adamw', 'sgd']" in message and "torch.optim.Optimizer class" in message


def test_an_optimizer_instance_is_refused_with_what_to_pass_instead():
    instance = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError) as excinfo:
        resolve_base_optimizer(instance)
    message = str(excinfo.value)
    assert "optimizer *class* (e.g. torch.optim.SGD)" in message and "got SGD instance" in message


def test_several_unknown_keywords_are_all_named_also_for_a_factory_without_a_name():
    model, _, _ = tiny_classifier()
    factory = functools.partial(torch.optim.SGD, momentum=0.0)
    with pytest.raises(TypeError) as excinfo:
        SAM(model.parameters(), factory, lr=0.1, tiltt=2, rhoo=0.05)
    message = str(excinfo.value)
    assert "'rhoo', 'tiltt' for SAM on base optimizer partial;" in message
    own = message.split("SAM takes ", 1)[1].split(";", 1)[0].split(", ")
    assert own == sorted(own) and {"distributed", "nonfinite", "rho"} <= set(own)
    base = message.split("partial takes ", 1)[1].split(", ")
    assert base == sorted(base) and {"lr", "momentum"} <= set(base)


def test_a_factory_taking_any_keyword_is_left_to_report_its_own_errors():
    model, _, _ = tiny_classifier()

    def factory(groups, **kwargs):
        raise LookupError(f"factory got {sorted(kwargs)}")

    with pytest.raises(LookupError, match=r"factory got \['lr', 'whatever'\]"):
        SAM(model.parameters(), factory, lr=0.1, whatever=1)


# ---------------------------------------------------------------- the constructor's own checks
def test_the_nonfinite_policy_defaults_to_raise_and_a_refusal_says_why():
    model, _, _ = tiny_classifier()
    assert SAM(model.parameters(), torch.optim.SGD, lr=0.1).nonfinite == "raise"
    with pytest.raises(ValueError) as excinfo:
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, nonfinite="ignore")
    message = str(excinfo.value)
    assert "nonfinite must be one of ['raise'] for SAM, got 'ignore': SAM updates from points it cannot drop" in message
    with pytest.raises(ValueError) as excinfo:
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, nonfinite="skip")
    assert str(excinfo.value).endswith("for SAM, got 'skip'")  # not a known policy at all: no reason to add


def test_the_seed_is_a_non_negative_integer():
    model, _, _ = tiny_classifier()
    assert SAM(model.parameters(), torch.optim.SGD, lr=0.1, seed=0).seed == 0
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(ValueError) as excinfo:
            SAM(model.parameters(), torch.optim.SGD, lr=0.1, seed=bad)
        assert f"seed must be an integer >= 0, got {bad!r}" in str(excinfo.value)


def test_a_missing_seed_is_drawn_from_torchs_global_generator():
    model, _, _ = tiny_classifier()
    seeds = []
    for manual in range(5):
        torch.manual_seed(manual)
        first = SAM(model.parameters(), torch.optim.SGD, lr=0.1).seed
        torch.manual_seed(manual)
        assert SAM(model.parameters(), torch.optim.SGD, lr=0.1).seed == first  # reproducible
        seeds.append(first)
    assert len(set(seeds)) == 5 and all(isinstance(s, int) and s >= 0 for s in seeds)
    assert max(seeds) > 2**32  # drawn from a 62-bit range, not a small one (P(fail) = 2^-150)


def test_local_ascent_needs_a_model_and_names_the_optimizer_without_ascent_evaluations():
    from tiltedsam.optim import ERM, DistributedSync

    model, _, _ = tiny_classifier()
    with pytest.raises(ValueError) as excinfo:
        SAM(model.parameters(), torch.optim.SGD, lr=0.1, distributed=DistributedSync(local_ascent=True))
    message = str(excinfo.value)
    assert message.startswith("DistributedSync(local_ascent=True) needs model= (the DistributedDataParallel module)")
    assert message.endswith("got model=NoneType for SAM")
    SAM(model.parameters(), torch.optim.SGD, lr=0.1, model=model, distributed=DistributedSync(local_ascent=True))
    with pytest.raises(ValueError) as excinfo:
        ERM(model.parameters(), torch.optim.SGD, lr=0.1, model=model, distributed=DistributedSync(local_ascent=True))
    assert str(excinfo.value).endswith("got model=Sequential for ERM, which has none")


# ---------------------------------------------------------------- parameter vectors
def test_the_norm_of_no_gradient_is_a_zero_scalar_and_none_counts_as_zero():
    from tiltedsam.functional import global_dot, global_norm

    for empty in ([], [None, None]):
        norm = global_norm(empty)
        assert norm.shape == () and norm.item() == 0.0
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])
    assert global_norm([a, None, b]).item() == pytest.approx(13.0, rel=1e-6)
    assert global_dot([a, None, b], [a, b, None]) == 25.0

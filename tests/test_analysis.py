"""Tests of tiltedsam.analysis: known spectra, full-Hessian agreement, restoration, Table-3 ordering, report/CLI."""

from __future__ import annotations

import ast
import json
import math
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from tiltedsam.analysis import (
    cross_objective,
    cross_objective_table,
    hessian_eigenvalues,
    hessian_trace,
    neighborhood_loss,
    take_batches,
    write_flatness_report,
)
from tiltedsam.analysis.neighborhood import bootstrap_standard_errors
from tiltedsam.analysis.report import ReportSettings

torch.set_num_threads(1)
DUMMY_BATCH = (torch.zeros(1, 1), torch.zeros(1))


class ParameterVector(nn.Module):
    """A model whose output is its own parameter vector: with ``loss(out) = f(out)`` the loss is f(theta)."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.theta


def quadratic_problem(dim: int = 12, seed: int = 0, eigenvalues: torch.Tensor | None = None):
    """L(theta) = 1/2 theta^T A theta with A = Q diag(eigenvalues) Q^T, Q a random rotation."""
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    if eigenvalues is None:
        eigenvalues = torch.linspace(-2.0, 20.0, dim, dtype=torch.float64) ** 1  # distinct, one negative part
    matrix = rotation @ torch.diag(eigenvalues) @ rotation.T
    matrix = (matrix + matrix.T) / 2
    model = ParameterVector(torch.randn(dim, generator=generator, dtype=torch.float64))
    return model, (lambda out, _targets: 0.5 * out @ matrix @ out), matrix


# ---------------------------------------------------------------------------------- quadratic truths
def test_quadratic_top_and_bottom_eigenvalues_match_the_matrix():
    eigenvalues = torch.tensor([-3.0, -1.0, 0.5, 1.0, 2.0, 3.5, 4.0, 6.0, 7.5, 9.0, 12.0, 15.0], dtype=torch.float64)
    model, loss, matrix = quadratic_problem(eigenvalues=eigenvalues)
    result = hessian_eigenvalues(model, loss, DUMMY_BATCH, k=5, smallest=2, tol=1e-10)
    expected = torch.linalg.eigvalsh(matrix)
    assert result.eigenvalues == pytest.approx(expected.flip(0)[:5].tolist(), abs=1e-8)
    assert result.smallest_eigenvalues == pytest.approx(expected[:2].tolist(), abs=1e-8)
    assert result.eigenvalues == sorted(result.eigenvalues, reverse=True)
    assert max(result.residuals + result.smallest_residuals) < 1e-8
    assert result.converged


def test_eigenvalue_residuals_expose_an_unconverged_run():
    model, loss, matrix = quadratic_problem(dim=40, eigenvalues=torch.linspace(1.0, 2.0, 40, dtype=torch.float64))
    result = hessian_eigenvalues(model, loss, DUMMY_BATCH, k=3, max_iter=4)
    assert not result.converged
    true_top = float(torch.linalg.eigvalsh(matrix)[-1])
    # each Ritz value lies within its residual of a true eigenvalue, and the residuals are not tiny
    assert abs(result.eigenvalues[0] - true_top) <= result.residuals[0] + 1e-12
    assert max(result.residuals) > 1e-3


def test_hutchinson_trace_is_within_its_standard_error():
    model, loss, matrix = quadratic_problem(dim=30, seed=3)
    truth = float(torch.trace(matrix))
    result = hessian_trace(model, loss, DUMMY_BATCH, num_samples=200, method="hutchinson", seed=1)
    assert result.standard_error > 0
    assert abs(result.estimate - truth) < 4 * result.standard_error
    assert result.num_samples == 200


def test_hutch_plus_plus_is_exact_for_low_rank_hessians():
    rank_five = torch.cat([torch.tensor([9.0, 7.0, 5.0, 3.0, 2.0], dtype=torch.float64), torch.zeros(25, dtype=torch.float64)])
    model, loss, matrix = quadratic_problem(dim=30, eigenvalues=rank_five)
    result = hessian_trace(model, loss, DUMMY_BATCH, num_samples=18, method="hutch++")
    assert result.estimate == pytest.approx(26.0, abs=1e-8)
    assert result.standard_error < 1e-8


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_neighborhood_mean_and_variance_match_gaussian_formulas(sigma):
    model, loss, matrix = quadratic_problem(dim=10, seed=5)
    theta = model.theta.detach()
    result = neighborhood_loss(model, loss, DUMMY_BATCH, [sigma], num_draws=400, seed=2)
    stats = result.by_sigma(sigma)
    # E[L(theta+eps)] = 1/2 theta^T A theta + 1/2 sigma^2 tr(A);
    # var = sigma^2 theta^T A^2 theta + 1/2 sigma^4 tr(A^2) for Gaussian eps
    mean = float(0.5 * theta @ matrix @ theta + 0.5 * sigma**2 * torch.trace(matrix))
    variance = float(sigma**2 * theta @ matrix @ matrix @ theta + 0.5 * sigma**4 * torch.trace(matrix @ matrix))
    assert abs(stats.mean - mean) < 4 * stats.mean_se
    assert abs(stats.variance - variance) < 4 * stats.variance_se
    assert result.clean_loss == pytest.approx(float(0.5 * theta @ matrix @ theta), rel=1e-12)
    # the closed-form standard errors agree with a bootstrap of the same draws
    draws = torch.tensor(stats.losses, dtype=torch.float64).unsqueeze(-1)
    boot = bootstrap_standard_errors(
        draws, lambda v: torch.stack([v[..., 0].mean(-1), v[..., 0].var(-1)], dim=-1), 2000,
        torch.Generator().manual_seed(0))
    assert stats.mean_se == pytest.approx(float(boot[0]), rel=0.15)
    assert stats.variance_se == pytest.approx(float(boot[1]), rel=0.25)


def test_sigma_zero_gives_zero_variance_and_tilted_statistics_are_consistent():
    model, loss, _ = quadratic_problem(dim=8)
    result = neighborhood_loss(model, loss, DUMMY_BATCH, [0.0, 0.2], num_draws=30, tilt=[0.0, 1.0, 5.0, 50.0])
    zero = result.by_sigma(0.0)
    assert zero.variance == 0.0 and zero.variance_se == 0.0
    assert all(t.variance == 0.0 for t in zero.tilted)
    assert zero.mean == result.clean_loss
    noisy = result.by_sigma(0.2)
    losses = torch.tensor(noisy.losses, dtype=torch.float64)
    by_tilt = {t.tilt: t for t in noisy.tilted}
    # t = 0 is the plain mean and the population variance (Def. 2)
    assert by_tilt[0.0].mean == pytest.approx(noisy.mean, rel=1e-12)
    assert by_tilt[0.0].variance == pytest.approx(noisy.variance * (len(losses) - 1) / len(losses), rel=1e-10)
    # L^t is non-decreasing in t and bounded by the largest draw; the tilted mean moves towards it
    objectives = [by_tilt[t].objective for t in (0.0, 1.0, 5.0, 50.0)]
    assert objectives == sorted(objectives) and objectives[-1] <= float(losses.max()) + 1e-12
    assert by_tilt[50.0].mean > by_tilt[0.0].mean
    assert by_tilt[50.0].effective_sample_size < by_tilt[0.0].effective_sample_size == pytest.approx(30)


def test_common_random_numbers_across_sigma():
    model, loss, _ = quadratic_problem(dim=6)
    linear = lambda out, _t: out.sum()  # noqa: E731  L(theta + sigma z) - L(theta) = sigma * sum(z)
    result = neighborhood_loss(model, linear, DUMMY_BATCH, [0.1, 0.2], num_draws=5)
    base = result.clean_loss
    small, large = (torch.tensor(s.losses) - base for s in result.statistics)
    assert torch.allclose(2 * small, large, atol=1e-12)


# ---------------------------------------------------------------------------------- a real network
def _tiny_mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    inputs = torch.randn(20, 3, dtype=torch.float64)
    targets = torch.randint(0, 2, (20,))
    return model, nn.CrossEntropyLoss(), inputs, targets


def _full_hessian(model, loss_fn, inputs, targets):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector):
        pieces = torch.split(vector, [math.prod(s) for s in shapes])
        params = {n: piece.view(s) for n, piece, s in zip(names, pieces, shapes)}
        return loss_fn(torch.func.functional_call(model, params, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_tiny_mlp_eigenvalues_match_the_full_hessian_for_a_batch_and_a_loader():
    model, loss_fn, inputs, targets = _tiny_mlp_problem()
    spectrum = torch.linalg.eigvalsh(_full_hessian(model, loss_fn, inputs, targets))
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    loader = torch.utils.data.DataLoader(dataset, batch_size=7)  # batches of 7, 7, 6: weighting matters
    for data in ((inputs, targets), loader):
        result = hessian_eigenvalues(model, loss_fn, data, k=3, smallest=1, tol=1e-10, max_iter=26)
        assert result.eigenvalues == pytest.approx(spectrum.flip(0)[:3].tolist(), abs=1e-7)
        assert result.smallest_eigenvalues == pytest.approx([float(spectrum[0])], abs=1e-7)
        trace = hessian_trace(model, loss_fn, data, num_samples=78, method="hutch++")
        assert abs(trace.estimate - float(spectrum.sum())) < max(4 * trace.standard_error, 1e-8)


# ---------------------------------------------------------------------------------- restoration
class NetWithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(8, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, inputs):
        return self.frozen(self.head(self.body(inputs)))


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()})


ANALYSES = {
    "neighborhood": lambda m, l, d, mode: neighborhood_loss(m, l, d, [0.0, 0.1], 3, tilt=2.0, mode=mode),
    "eigenvalues": lambda m, l, d, mode: hessian_eigenvalues(m, l, d, k=2, smallest=1, max_iter=8, mode=mode),
    "trace": lambda m, l, d, mode: hessian_trace(m, l, d, num_samples=6, mode=mode),
    "cross_objective": lambda m, l, d, mode: cross_objective(m, l, d, num_draws=4, mode=mode),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_analysis_restores_parameters_buffers_modes_grads_and_rng(name, mode):
    torch.manual_seed(1)
    model = NetWithState()
    inputs, targets = torch.randn(16, 5), torch.randint(0, 3, (16,))
    model.train()
    model(inputs).sum().backward()  # some grads present, BN statistics moved away from their init
    model.head.eval()  # a partly-eval model must stay partly eval
    before = _snapshot(model)
    rng = torch.get_rng_state()
    batches = [(inputs[:8], targets[:8]), (inputs[8:], targets[8:])]
    hessian_in_train_mode = mode == "train" and name in ("eigenvalues", "trace")
    with pytest.warns(UserWarning, match="active dropout") if hessian_in_train_mode else warnings.catch_warnings():
        if not hessian_in_train_mode:
            warnings.simplefilter("error")
        result = ANALYSES[name](model, nn.CrossEntropyLoss(), batches, mode)
    after = _snapshot(model)
    assert after[1] == before[1]
    for key, value in before[0].items():
        assert torch.equal(after[0][key], value), key
    for key, grad in before[2].items():
        assert (grad is None and after[2][key] is None) or torch.equal(after[2][key], grad), key
    assert torch.equal(torch.get_rng_state(), rng)
    if hasattr(result, "mode"):
        assert result.mode == mode


def test_state_is_restored_when_the_loss_fails_midway():
    model, _, _ = quadratic_problem(dim=4)
    original = model.theta.detach().clone()
    calls = []

    def flaky(out, _targets):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return out.sum()

    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        neighborhood_loss(model, flaky, DUMMY_BATCH, [1.0], num_draws=5)
    assert torch.equal(model.theta.detach(), original) and model.training


def test_train_mode_uses_batch_statistics_and_eval_mode_running_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model.eval()  # running stats are the init (0, 1): eval and train mode give different losses
    inputs = torch.randn(32, 4) * 3 + 2
    loss = lambda out, _t: (out**2).mean()  # noqa: E731
    evaluated = neighborhood_loss(model, loss, (inputs, torch.zeros(32)), [0.0], 2, mode="eval")
    trained = neighborhood_loss(model, loss, (inputs, torch.zeros(32)), [0.0], 2, mode="train")
    assert trained.clean_loss == pytest.approx(1.0, abs=1e-3)  # batch-normalised output: unit second moment
    assert abs(evaluated.clean_loss - trained.clean_loss) > 0.1
    assert (evaluated.mode, trained.mode) == ("eval", "train") and not model.training


# ---------------------------------------------------------------------------------- Table 3
def _isotropic_regression(scale: float = 2.0):
    """Least squares with inputs X = c I: L(w) = (c^2/d) ||w - y/c||^2, an isotropic quadratic, where the
    worst point of the rho-ball lies exactly along the gradient."""
    dim = 6
    torch.manual_seed(3)
    model = nn.Linear(dim, 1, bias=False).double()
    inputs = torch.eye(dim, dtype=torch.float64) * scale
    targets = torch.randn(dim, 1, dtype=torch.float64)
    return model, nn.MSELoss(), (inputs, targets)


def test_cross_objective_ordering_erm_tsam_sam_and_monotone_in_tilt():
    model, loss_fn, data = _isotropic_regression()
    rho = 0.3
    values = {}
    for tilt in (0.0, 0.5, 2.0, 20.0, math.inf):
        values[tilt] = cross_objective(model, loss_fn, data, rho=rho, tilt=tilt, num_draws=16, seed=4)
    erm, sam = values[0.0].erm, values[0.0].sam
    chain = [values[t].tsam for t in (0.0, 0.5, 2.0, 20.0, math.inf)]
    assert erm <= chain[0]  # antithetic pairs: each pair averages >= L(theta) for a convex loss
    assert chain == sorted(chain)
    assert chain[-1] <= sam
    # SAM's line search finds the exact worst point for an isotropic quadratic:
    # L(w) = (c^2/d) ||w - y/c||^2, max over the rho-ball = (c^2/d) (||w - y/c|| + rho)^2
    weight = model.weight.detach().flatten()
    targets = data[1].flatten()
    scale, dim = 2.0, weight.numel()
    distance = float(torch.linalg.vector_norm(weight - targets / scale))
    assert sam == pytest.approx(scale**2 / dim * (distance + rho) ** 2, rel=1e-10)
    assert values[0.0].sam_step == rho
    assert values[0.0].tsam_se > 0


def test_ascent_sampler_without_noise_lands_on_the_sam_point():
    # Algorithm 2 with zero noise radius: every draw is theta + rho g/||g||, SAM's single ascent point
    model, loss_fn, data = _isotropic_regression()
    result = cross_objective(model, loss_fn, data, rho=0.2, ascent_steps=1, radius=0.0, sampler="ascent",
                             tilt=3.0, num_draws=3)
    assert result.sampler == "ascent" and result.tsam == pytest.approx(result.sam, rel=1e-12)
    noisy = cross_objective(model, loss_fn, data, rho=0.2, radius=0.5, sampler="ascent", num_draws=5, tilt=0.0)
    ball = cross_objective(model, loss_fn, data, rho=0.2, radius=0.5, sampler="ball", num_draws=6, tilt=0.0)
    assert noisy.tsam > ball.tsam  # ascending from the noise raises the loss above the plain noise average


def test_cross_objective_table_has_rows_per_model_and_both_splits():
    model_a, loss_fn, data = _isotropic_regression()
    model_b, _, _ = _isotropic_regression(scale=1.0)
    table = cross_objective_table({"A": (model_a, loss_fn, data, data), "B": (model_b, loss_fn, data, None)},
                                  rho=0.1, num_draws=4)
    assert set(table.rows) == {"A", "B"} and set(table.rows["A"]) == {"train", "test"} and set(table.rows["B"]) == {"train"}
    text = table.to_markdown()
    assert "**train loss**" in text and "**test loss**" in text and "| A |" in text
    assert table.rows["A"]["train"].erm == table.rows["A"]["test"].erm  # same data, same numbers


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, l: neighborhood_loss(m, l, DUMMY_BATCH, [-0.1], 3), "sigmas must be"),
        (lambda m, l: neighborhood_loss(m, l, DUMMY_BATCH, [0.1], 0), "num_draws must be an int >= 1, got 0"),
        (lambda m, l: neighborhood_loss(m, l, DUMMY_BATCH, [0.1], 2, tilt=-1.0), "tilt must be >= 0"),
        (lambda m, l: neighborhood_loss(m, l, DUMMY_BATCH, [0.1], 2, mode="inference"), "mode must be 'eval'"),
        (lambda m, l: hessian_eigenvalues(m, l, DUMMY_BATCH, k=7), "asked for 7 eigenvalues of a 4-dimensional"),
        (lambda m, l: hessian_trace(m, l, DUMMY_BATCH, method="power"), "method must be one of"),
        (lambda m, l: cross_objective(m, l, DUMMY_BATCH, num_draws=3), "num_draws must be even"),
        (lambda m, l: neighborhood_loss(m, l, torch.zeros(3), [0.1], 2), "data must be an"),
        (lambda m, l: neighborhood_loss(m, lambda o, t: o, DUMMY_BATCH, [0.1], 2), "must return the scalar mean loss"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_problem(call, message):
    model, loss, _ = quadratic_problem(dim=4)
    with pytest.raises(ValueError, match=message):
        call(model, loss)


def test_take_batches_fixes_a_shuffling_loader():
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # take_batches is the remedy: it must not warn
        batches = take_batches(loader, max_batches=2)
    with pytest.warns(UserWarning, match="shuffling DataLoader"):
        neighborhood_loss(nn.Linear(1, 1), lambda o, t: o.mean(), loader, [0.0], 1, max_batches=2)
    assert len(batches) == 2 and [len(b[1]) for b in batches] == [3, 3]


def test_analysis_package_does_not_import_the_harness():
    root = Path(__file__).resolve().parents[1] / "src" / "tiltedsam" / "analysis"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [("." * node.level) + (node.module or "")] if isinstance(node, ast.ImportFrom) else [])
            assert not any("harness" in n for n in names), f"{path.name} imports {names}"


# ---------------------------------------------------------------------------------- report and CLI
def _two_tiny_models():
    torch.manual_seed(0)
    inputs, targets = torch.randn(24, 4), torch.randint(0, 3, (24,))
    test = (torch.randn(12, 4), torch.randint(0, 3, (12,)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=8)
    models = {}
    for label in ("ERM", "TSAM"):
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
        models[label] = (model, nn.CrossEntropyLoss(), loader, test)
    return models


FAST_SETTINGS = dict(sigmas=(0.0, 0.05, 0.1), num_draws=4, tilts=(1.0,), k=3, lanczos_max_iter=12,
                     trace_samples=9, cross_draws=4)


def test_write_flatness_report_end_to_end(tmp_path):
    models = _two_tiny_models()
    report = write_flatness_report(models, tmp_path / "out", ReportSettings(**FAST_SETTINGS, max_batches=2),
                                   metadata={"ERM": {"optimizer": "erm"}})
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["fig2.png", "report.json", "report.md"]  # no temp files left
    assert (out / "fig2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["models"]) == {"ERM", "TSAM"}
    erm = saved["models"]["ERM"]
    assert erm["meta"] == {"optimizer": "erm"} and erm["num_samples"] == {"train": 16, "test": 12}
    assert len(erm["hessian"]["eigenvalues"]) == 3 and erm["hessian"]["mode"] == "eval"
    assert [s["sigma"] for s in erm["neighborhood"]["statistics"]] == [0.0, 0.05, 0.1]
    assert set(erm["cross_objective"]) == {"train", "test"}
    assert set(erm["timings_s"]) == set(erm["cpu_timings_s"]) == {"neighborhood", "hessian", "trace", "cross_objective", "total"}
    markdown = (out / "report.md").read_text()
    for heading in ("Neighbourhood loss (Fig. 2)", "Top-3 Hessian eigenvalues", "Hessian trace",
                    "Cross-objective losses (Table 3)", "Time per analysis"):
        assert heading in markdown
    assert report["files"]["figure"].endswith("fig2.png")


def test_report_settings_validate():
    with pytest.raises(ValueError, match="analyses must be a non-empty subset"):
        ReportSettings(analyses=("hessian", "flatness"))
    with pytest.raises(ValueError, match="trace_method must be one of"):
        ReportSettings(trace_method="exact")


@pytest.fixture
def fake_loader(monkeypatch):
    """Install a stand-in for tiltedsam.harness.rundata.load_for_analysis (the harness may be absent)."""
    models = _two_tiny_models()
    loaded = []

    def load_for_analysis(path, device="cpu"):
        label = "ERM" if "erm" in str(path) else "TSAM"
        model, loss_fn, train, test = models[label]
        loaded.append((str(path), device))
        return types.SimpleNamespace(label=label, model=model, loss_fn=loss_fn, train=train, test=test,
                                     meta={"optimizer": label.lower()})

    try:
        import tiltedsam.harness.rundata as rundata  # noqa: F401

        monkeypatch.setattr("tiltedsam.harness.rundata.load_for_analysis", load_for_analysis)
    except ImportError:
        harness = types.ModuleType("tiltedsam.harness")
        rundata = types.ModuleType("tiltedsam.harness.rundata")
        rundata.load_for_analysis = load_for_analysis
        harness.rundata = rundata
        monkeypatch.setitem(sys.modules, "tiltedsam.harness", harness)
        monkeypatch.setitem(sys.modules, "tiltedsam.harness.rundata", rundata)
    return loaded


def test_cli_analyze_several_checkpoints(tmp_path, fake_loader, capsys):
    from tiltedsam.cli import main

    out = tmp_path / "cmp"
    code = main(["analyze", "runs/erm/ckpt.pt", "runs/tsam/ckpt.pt", "--out", str(out), "--sigmas", "0,0.05",
                 "--num-draws", "3", "--tilt", "1", "--tilt", "5", "--k", "2", "--lanczos-iters", "10",
                 "--trace-samples", "6", "--cross-draws", "4", "--max-batches", "1", "--mode", "train"])
    assert code == 0
    assert fake_loader == [("runs/erm/ckpt.pt", "cpu"), ("runs/tsam/ckpt.pt", "cpu")]
    saved = json.loads((out / "report.json").read_text())
    assert list(saved["models"]) == ["ERM", "TSAM"]
    assert saved["settings"]["mode"] == "train" and saved["settings"]["tilts"] == [1.0, 5.0]
    assert saved["models"]["TSAM"]["meta"]["checkpoint"] == "runs/tsam/ckpt.pt"
    assert len(saved["models"]["ERM"]["hessian"]["eigenvalues"]) == 2
    printed = capsys.readouterr().out
    assert "report.md" in printed and "Top-2 Hessian eigenvalues" in printed


def test_cli_rejects_bad_sigmas_and_duplicate_labels(tmp_path, fake_loader, capsys):
    from tiltedsam.cli import main

    with pytest.raises(SystemExit):
        main(["analyze", "a_erm", "--out", str(tmp_path), "--sigmas", "0,-1"])
    assert "sigmas" in capsys.readouterr().err
    code = main(["analyze", "x_erm", "y_erm", "--out", str(tmp_path / "dup"), "--only", "trace",
                 "--trace-samples", "3", "--max-batches", "1"])
    assert code == 0
    assert list(json.loads((tmp_path / "dup" / "report.json").read_text())["models"]) == ["ERM", "ERM (2)"]


def test_cli_without_the_harness_says_what_is_missing(tmp_path, monkeypatch):
    from tiltedsam.cli import main

    monkeypatch.setitem(sys.modules, "tiltedsam.harness", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "tiltedsam.harness.rundata", None)
    with pytest.raises(SystemExit, match="needs tiltedsam.harness"):
        main(["analyze", "ckpt.pt", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_cli_analyze_missing_checkpoint_is_a_clear_error(tmp_path):
    from tiltedsam.cli import main

    with pytest.raises(SystemExit, match="no checkpoint at"):
        main(["analyze", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")])

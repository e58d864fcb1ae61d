"""Training a tiltedsam optimizer through PyTorch Lightning equals our own ``step(closure)`` loop.

Every comparison runs the same model initialisation, optimizer seed and batches through ``Trainer.fit``
(with ``PerturbationOptimizerMixin``) and through a plain loop over ``optimizer.step(closure)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("lightning")
import lightning.pytorch as L  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from tiltedsam import create_optimizer  # noqa: E402
from tiltedsam.integrations.lightning import PerturbationOptimizerMixin  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
BATCHES = 4
OPTIMIZERS = {
    "sam": dict(rho=0.05),
    "tsam": dict(tilt=5.0, num_samples=3, rho=0.05, noise_radius=0.3),
    # direction-only evaluations on half of the batch: training_loss must slice with evaluation.batch
    "tsam-subbatch": dict(tilt=5.0, num_samples=2, rho=0.05, noise_radius=0.3, ascent_fraction=0.5),
}
BASE = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def make_data(n: int = BATCH * BATCHES) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def loader(batch_size: int = BATCH) -> DataLoader:
    return DataLoader(TensorDataset(*make_data()), batch_size=batch_size, shuffle=False)


def make_scheduler(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


class Classifier(PerturbationOptimizerMixin, L.LightningModule):
    def __init__(self, name: str, accumulate: int = 1, scheduler: bool = True, clip: float | None = None):
        super().__init__()
        self.net = make_net()
        self.name, self.scheduler = name, scheduler
        self.accumulate_micro_batches = accumulate
        self.gradient_clip_val = clip

    def training_loss(self, batch, evaluation):
        x, y = evaluation.batch(*batch)
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = create_optimizer(self.name, self.parameters(), model=self, seed=3, **OPTIMIZERS[self.name], **BASE)
        if not self.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": make_scheduler(optimizer), "interval": "step"}}


def trainer(**options) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    settings.update(options)
    return L.Trainer(**settings)


def own_loop(name: str, batches, *, scheduler: bool = True, clip: float | None = None) -> nn.Module:
    """The reference: ``optimizer.step(closure)`` on each batch, the scheduler after each step."""
    net = make_net()
    optimizer = create_optimizer(name, net.parameters(), model=net, seed=3, **OPTIMIZERS[name], **BASE)
    sched = make_scheduler(optimizer) if scheduler else None
    for x, y in batches:
        def closure(evaluation):
            x_used, y_used = evaluation.batch(x, y)
            loss = F.cross_entropy(net(x_used), y_used)
            loss.backward()
            return loss
        if clip is None:
            optimizer.step(closure)
        else:  # the clipped variant: evaluations, clip the combined gradient, base step
            for evaluation in optimizer.manual_step(apply=False):
                evaluation.record(closure(evaluation))
            nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.base_step()
        if sched is not None:
            sched.step()
    return net


def assert_same_parameters(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), atol=atol, rtol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_equals_step_closure_loop_with_a_scheduler(name):
    """SAM, TSAM and TSAM with sub-batch ascent (the mixin hands each Evaluation to training_loss)."""
    module = Classifier(name)
    fitted = trainer()
    fitted.fit(module, loader())
    assert fitted.global_step == BATCHES  # Lightning counts our optimizer steps
    optimizer = module.optimizers().optimizer
    assert optimizer.step_count == BATCHES
    assert optimizer.param_groups[0]["lr"] == pytest.approx(BASE["lr"] * 0.5 ** (BATCHES // 2))
    reference = own_loop(name, list(loader()))
    assert_same_parameters(module.net, reference)
    logged = fitted.callback_metrics
    assert "optimizer/objective" in logged and "optimizer/effective_sample_size" in logged
    if name.startswith("tsam"):
        assert float(logged["optimizer/tilt"]) == pytest.approx(OPTIMIZERS["tsam"]["tilt"])
        assert 1.0 <= float(logged["optimizer/effective_sample_size"]) <= OPTIMIZERS["tsam"]["num_samples"]


def test_an_epoch_interval_scheduler_steps_once_per_epoch():
    class EpochScheduled(Classifier):
        def configure_optimizers(self):
            optimizer = create_optimizer("sam", self.parameters(), model=self, seed=3, **OPTIMIZERS["sam"], **BASE)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    module = EpochScheduled("sam")
    trainer(max_epochs=2).fit(module, loader())
    assert module.optimizers().optimizer.param_groups[0]["lr"] == pytest.approx(BASE["lr"] * 0.25)
    net = make_net()
    optimizer = create_optimizer("sam", net.parameters(), model=net, seed=3, **OPTIMIZERS["sam"], **BASE)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        for x, y in loader():
            def closure():
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                return loss
            optimizer.step(closure)
        scheduler.step()
    assert_same_parameters(module.net, net)


def test_accumulating_two_micro_batches_is_one_step_on_their_union():
    """k = 2 micro-batches of 4 per step: every evaluation sees both at the same point, each loss halved,
    which is the step on the 8-example union (not two SAM steps, not the ascent of one micro-batch)."""
    module = Classifier("tsam", accumulate=2)
    fitted = trainer()
    fitted.fit(module, loader(batch_size=BATCH // 2))
    assert fitted.global_step == BATCHES
    reference = own_loop("tsam", list(loader()))
    assert_same_parameters(module.net, reference)
    # and it is not what stepping on each micro-batch separately would give
    separate = own_loop("tsam", list(loader(batch_size=BATCH // 2))[:BATCHES])
    assert max((p - q).abs().max().item() for p, q in zip(module.net.parameters(), separate.parameters())) > 1e-4


def test_clipping_applies_to_the_combined_gradient():
    module = Classifier("sam", scheduler=False, clip=0.05)
    trainer().fit(module, loader())
    assert_same_parameters(module.net, own_loop("sam", list(loader()), scheduler=False, clip=0.05))
    unclipped = own_loop("sam", list(loader()), scheduler=False)
    assert max((p - q).abs().max().item() for p, q in zip(module.net.parameters(), unclipped.parameters())) > 1e-4


@pytest.mark.parametrize("name", ["sam", "tsam"])
def test_checkpoint_resume_continues_exactly(tmp_path, name):
    """Two epochs in one go == one epoch, save, a fresh module and trainer resuming for the second epoch.
    The TSAM noise generator must round-trip: a reseeded one would draw different noise."""
    straight = Classifier(name)
    trainer(max_epochs=2).fit(straight, loader())

    first = Classifier(name)
    first_trainer = trainer(max_epochs=1)
    first_trainer.fit(first, loader())
    path = tmp_path / "half.ckpt"
    first_trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["optimizer_states"][0]
    assert state["step_count"] == BATCHES and "base_optimizer" in state
    if name == "tsam":
        assert state["generator"] is not None

    resumed = Classifier(name)
    trainer(max_epochs=2).fit(resumed, loader(), ckpt_path=str(path))
    assert resumed.optimizers().optimizer.step_count == 2 * BATCHES
    for p, q in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(p, q)


def test_bf16_mixed_matches_the_same_autocast_in_our_loop():
    """Lightning's bf16-mixed plugin autocasts each evaluation's forward; our loop does the same by hand."""
    module = Classifier("tsam", scheduler=False)
    trainer(precision="bf16-mixed").fit(module, loader())
    net = make_net()
    optimizer = create_optimizer("tsam", net.parameters(), model=net, seed=3, **OPTIMIZERS["tsam"], **BASE)
    for x, y in loader():
        def closure():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            return loss
        optimizer.step(closure)
    assert_same_parameters(module.net, net, atol=1e-5)


def test_a_grad_scaler_precision_plugin_unscales_before_the_base_step():
    """The 16-mixed path (GradScaler: scale each backward, unscale the combined gradient, scaler.step) on
    the CPU: a power-of-two scale is exact, so with float16 autocast switched off it equals float32."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    class Float32Scaled(MixedPrecision):
        def forward_context(self):  # keep float32 arithmetic; what is under test is the scaler's path
            return torch.autocast("cpu", enabled=False)

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=10**6)
    module = Classifier("tsam")
    trainer(plugins=[Float32Scaled("16-mixed", "cpu", scaler=scaler)]).fit(module, loader())
    assert scaler.get_scale() == 1024.0  # no overflow: every step was taken
    assert_same_parameters(module.net, own_loop("tsam", list(loader())))


def test_an_overflowing_gradient_under_a_grad_scaler_skips_the_step_like_any_optimizer():
    """The first step's loss is multiplied by 2**120, so under a 2**20 loss scale its gradient overflows
    float32: the evaluations stop at the inf gradient (parameters restored, no step counted), the scaler
    skips the base step and halves the scale, and the next three steps are exact (power-of-two scales).
    So the result is our own loop run on batches 2..4 only."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    class Float32Scaled(MixedPrecision):
        def forward_context(self):
            return torch.autocast("cpu", enabled=False)

    class OverflowsFirst(Classifier):
        def training_loss(self, batch, evaluation):
            factor = 2.0**120 if self.global_step == 0 else 1.0
            return super().training_loss(batch, evaluation) * factor

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=10**6)
    module = OverflowsFirst("sam", scheduler=False)
    fitted = trainer(plugins=[Float32Scaled("16-mixed", "cpu", scaler=scaler)])
    fitted.fit(module, loader())
    assert scaler.get_scale() == 2.0**19
    assert module.optimizers().optimizer.step_count == BATCHES - 1
    assert_same_parameters(module.net, own_loop("sam", list(loader())[1:], scheduler=False))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_one_mixed_precision_step_on_cuda_equals_the_manual_recipe(precision):
    """One TSAM step through Lightning on the GPU (16-mixed: its GradScaler) against the documented manual
    recipe: autocast each evaluation, scaler.scale(loss).backward(), scaler.step(base_optimizer)."""
    module = Classifier("tsam", scheduler=False)
    fitted = trainer(accelerator="gpu", precision=precision, max_steps=1)
    fitted.fit(module, loader())
    assert fitted.global_step == 1 and module.optimizers().optimizer.step_count == 1

    net = make_net().cuda()
    optimizer = create_optimizer("tsam", net.parameters(), model=net, seed=3, **OPTIMIZERS["tsam"], **BASE)
    dtype = torch.float16 if precision == "16-mixed" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    x, y = (t.cuda() for t in next(iter(loader())))
    for evaluation in optimizer.manual_step(apply=False):
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        evaluation.record(loss)
    scaler.step(optimizer.base_optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in module.net.parameters())
    assert_same_parameters(module.net, net, atol=1e-4)


def test_plain_optimizer_and_automatic_optimization_are_refused():
    class Plain(Classifier):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(TypeError, match="needs a tiltedsam optimizer"):
        trainer().fit(Plain("sam"), loader())
    with pytest.raises(ValueError, match="manual optimisation"):
        Classifier("sam").automatic_optimization = True


def test_missing_extra_names_it(monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "lightning", None)  # a None entry makes `import lightning...` fail
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "tiltedsam.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'tiltedsam\[lightning\]'"):
        importlib.import_module("tiltedsam.integrations.lightning")


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_ranks_identical_and_equal_one_process(tmp_path):
    """Lightning's "ddp" strategy, 2 gloo processes, TSAM with 2 micro-batches per step and rank-dependent
    global seeds: both ranks end bit-identical, equal (to rounding) to one process given the whole batch."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import lightning_ddp_script as script
    finally:
        sys.path.pop(0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "lightning_ddp_script.py"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(script.WORLD)]
    assert all(r["steps"] == 4 and r["global_step"] == 4 for r in ranks)
    for p, q in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(p, q)
    # one process: the same 4 steps on the 16-example union of each step's 4 micro-batches (2 per rank),
    # with the seed rank 0 drew (the ranks share it)
    x, y = script.make_data()
    net = script.make_net()
    torch.manual_seed(100)
    optimizer = create_optimizer("tsam", net.parameters(), model=net, **script.SETTINGS)
    shards = [(x[r::script.WORLD], y[r::script.WORLD]) for r in range(script.WORLD)]
    per_rank = 2 * script.MICRO_BATCH
    for start in range(0, len(x) // script.WORLD, per_rank):
        xs = torch.cat([sx[start:start + per_rank] for sx, _ in shards])
        ys = torch.cat([sy[start:start + per_rank] for _, sy in shards])

        def closure():
            loss = F.cross_entropy(net(xs), ys)
            loss.backward()
            return loss
        optimizer.step(closure)
    for p, q in zip(net.parameters(), ranks[0]["params"]):
        torch.testing.assert_close(p.detach(), q, atol=1e-6, rtol=1e-5)


def _load_example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_trains_the_synthetic_problem():
    """examples/lightning_tsam.py, one epoch: 600 examples in batches of 32 -> 19 TSAM steps of 6 evaluations."""
    result = _load_example("lightning_tsam").main(["--epochs", "1"])
    assert result["steps"] == 19 and result["gradient_evaluations"] == 19 * 6
    assert result["train_accuracy"] >= 0.9  # three well separated clusters: chance is 1/3


def test_docs_snippets_are_the_code_the_tests_and_examples_run():
    """Every Python block of docs/integrations.md that names a file in its first line is a verbatim excerpt of it."""
    import re

    text = (ROOT / "docs" / "integrations.md").read_text()
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", text, flags=re.S)
    assert {path for path, _ in blocks} >= {"examples/lightning_tsam.py", "examples/hf_trainer_tsam.py"}
    for path, body in blocks:
        source = (ROOT / path).read_text()
        for chunk in body.split("\n...\n"):
            assert chunk.strip("\n") in source, f"docs/integrations.md quotes {path} but it no longer says:\n{chunk}"


def test_import_tiltedsam_loads_no_framework():
    code = ("import sys, tiltedsam, tiltedsam.integrations, tiltedsam.integrations.common; "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

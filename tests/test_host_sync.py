"""No host-device synchronisation inside an optimizer step except reading the losses the weights need.

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``)
waits for every kernel queued before it. The test finds such reads on the CPU: a
``TorchDispatchMode`` marks every tensor computed from the parameters, their gradients or the
noise generator ("device data"), and every read of a marked tensor's value is recorded, except
reads of the loss tensors the closure returned. Host-built tensors (``torch.tensor(list_of_floats)``
for the diagnostics) are not marked: reading them costs nothing on a GPU either.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from tiltedsam import create_optimizer
from tiltedsam.functional import draw_noise, global_norm

_RANDOM_OPS = ("randn", "rand", "normal", "uniform", "bernoulli", "randint", "randperm", "exponential")


class HostReads(TorchDispatchMode):
    """Records every read of a device-data tensor's value on the host (see the module docstring)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        super().__init__()
        self.device_data = WeakIdKeyDictionary()
        self.loss_storages: set[int] = set()
        self.reads: list[tuple[str, tuple[int, ...]]] = []  # (how, shape) of each disallowed read
        self.loss_reads = 0
        self.mark(params)
        self._patched: dict[str, object] = {}

    def mark(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.device_data[t] = True

    def mark_loss(self, loss: torch.Tensor) -> None:
        self.loss_storages.add(loss.untyped_storage().data_ptr())

    def _is_device_data(self, t: torch.Tensor) -> bool:
        return t in self.device_data

    def _read(self, t: torch.Tensor, how: str) -> None:
        if not self._is_device_data(t):
            return
        if t.untyped_storage().data_ptr() in self.loss_storages:
            self.loss_reads += 1
        else:
            self.reads.append((how, tuple(t.shape)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default:  # .item(), float(t), bool(t), int(t)
            self._read(args[0], "scalar read")
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__.lstrip("_")
        if any(self._is_device_data(t) for t in inputs) or name.startswith(_RANDOM_OPS):
            self.mark(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out

    def __enter__(self):
        # .tolist() and .numpy() read the memory without dispatching an op: watch them directly
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._patched[method] = original

            def watched(tensor, *a, _original=original, _method=method, **k):
                self._read(tensor, _method)
                return _original(tensor, *a, **k)

            setattr(torch.Tensor, method, watched)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, original in self._patched.items():
            setattr(torch.Tensor, method, original)
        return super().__exit__(*exc)


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 3))
    x = torch.randn(8, 2, 5, 5)
    y = torch.randint(0, 3, (8,))
    return model, x, y


def _reads_during_one_step(name: str, **settings):
    model, x, y = _problem()
    opt = create_optimizer(name, model.parameters(), lr=0.1, momentum=0.9, model=model, seed=0, **settings)
    watcher: HostReads | None = None

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if watcher is not None:
            watcher.mark_loss(loss)
            watcher.mark(p.grad for p in model.parameters())
        return loss

    opt.step(closure)  # warm-up: creates the generator, momentum buffers
    watcher = HostReads(list(model.parameters()))
    with watcher:
        opt.step(closure)
    return watcher, opt


@pytest.mark.parametrize(
    "name, settings, weight_losses",
    [
        ("sgd", {}, 1),
        ("sam", {}, 2),  # the perturbed loss (update) and the clean one (logged, read after it)
        ("tsam", {"num_samples": 3}, 6),  # 3 perturbed losses (weights) + 3 noise losses (logged, read after)
        ("tsam", {"num_samples": 2, "noise": "uniform"}, 4),
        ("tsam", {"num_samples": 2, "sampler": "naive"}, 2),
        ("tsam", {"num_samples": 2, "tilt": float("inf"), "noise_radius": 0.0}, 4),
    ],
)
def test_a_step_reads_only_loss_values_on_the_host(name, settings, weight_losses):
    watcher, opt = _reads_during_one_step(name, **settings)
    assert watcher.reads == [], f"{name} {settings}: host reads of device tensors during a step: {watcher.reads}"
    assert watcher.loss_reads == weight_losses


def test_the_detector_catches_a_host_read_of_a_norm():
    """The check is not vacuous: the clipping of the old draw_noise (``float(global_norm(noise))``) is caught."""
    params = [torch.zeros(3, 4), torch.zeros(5)]
    watcher = HostReads(params)
    generator = torch.Generator().manual_seed(0)
    with watcher:
        noise = [torch.randn(p.shape, generator=generator) for p in params]
        float(global_norm(noise))
        noise[0].tolist()
        bool((noise[1] > 0).any())
    assert [how for how, _ in watcher.reads] == ["scalar read", "tolist", "scalar read"]


def test_draw_noise_clips_on_the_device_without_host_reads():
    params = [torch.zeros(30, 40), torch.zeros(7)]
    watcher = HostReads(params)
    for kind in ("gaussian", "uniform"):
        with watcher:
            noise = draw_noise(params, kind, 0.5, torch.Generator().manual_seed(1))
        assert watcher.reads == []
        norm = torch.sqrt(sum((z.double() ** 2).sum() for z in noise))
        # 1200 N(0,1) entries have norm ~35 >> 0.5: gaussian lands on the sphere; uniform is inside it
        assert norm <= 0.5 * (1 + 1e-6)
        if kind == "gaussian":
            assert norm == pytest.approx(0.5, rel=1e-6)

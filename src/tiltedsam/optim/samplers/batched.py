r"""EXPERIMENTAL: Algorithm 2 with the ``s`` perturbations evaluated in one batched pass (``torch.func``).

The ``s`` samples are independent given ``theta``, so both stages of Algorithm 2 can run for all of
them at once: the parameters get a leading dimension of size ``s`` and
``torch.func.vmap(torch.func.grad(...))`` evaluates the model once per stage (two passes instead of
``2 s``). Batching may pay on a GPU at small batch; on a CPU it does not (``benchmarks/README.md``).

**API.** A closure cannot be vmapped, so the batched path takes the model's inputs and a loss of its
output::

    opt = TSAM(model.parameters(), model=model, parallel_samples=True, lr=0.1)
    opt.step_batched(x, lambda output: F.cross_entropy(output, y))

``TSAM.step`` / ``manual_step`` keep working (they evaluate in a loop). The update equals the loop's up
to float rounding: the noise is drawn in the same order from the same generator (tested on CPU for an
MLP and a CNN with BatchNorm).

**Supported models:** any module whose forward is a function of its parameters, buffers and inputs
(``torch.func.functional_call``).

* BatchNorm in train mode: the first stage runs with the buffers stacked ``s`` times and copies sample
  1's back (the loop updates them in its first evaluation only); the second stage uses batch
  statistics without updating the buffers.
* Dropout: ``randomness="error"`` (default) refuses with a ``ValueError``; ``"different"`` draws
  independent masks per sample (not the loop's draws); ``"same"`` shares one mask across the samples.
* Not supported: ``torch.distributed`` (DDP's all-reduce lives in its backward hooks, which a
  functional call bypasses), data-dependent control flow, samplers other than ``"ascent"``.

**Memory:** ``s`` times the activations of one evaluation, plus ``s`` stacked parameter copies and
``s`` stacked gradients per stage (at ``s = 3`` on the CIFAR ResNet18, ~0.5 GiB plus 3x the
activations of batch 64).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from ...functional import NORM_EPS, check_hyperparameter
from ..base import frozen_batchnorm_stats
from .ascent import AscentSampler
from .base import SamplingContext

__all__ = ["BatchedAscentSampler", "RANDOMNESS"]

RANDOMNESS = ("error", "different", "same")


class BatchedAscentSampler(AscentSampler):
    """:class:`AscentSampler` whose ``s`` samples :meth:`~tiltedsam.optim.TSAM.step_batched` computes in one
    ``vmap`` pass per stage (:meth:`evaluate_all`, bound for one step); unbound, it draws as the loop sampler.
    Its :meth:`config` is the ascent sampler's: batching changes how the step is computed, not what it is.
    """

    def __init__(self, noise: str = "gaussian", noise_radius: float = 1.0, noise_std: float = 1.0) -> None:
        super().__init__(noise=noise, noise_radius=noise_radius, noise_std=noise_std)
        self.batch: dict[str, Any] | None = None  # what step_batched bound for this step

    def bind(self, model: nn.Module, inputs: tuple[Any, ...], loss_fn: Callable[[Any], Tensor], randomness: str) -> None:
        """Use ``model(*inputs)`` and ``loss_fn`` for the next step's draws."""
        check_hyperparameter("randomness", randomness, choices=RANDOMNESS)
        self.batch = {"model": model, "inputs": inputs, "loss_fn": loss_fn, "randomness": randomness}

    def unbind(self) -> None:
        self.batch = None

    def evaluate_all(self, ctx: SamplingContext, count: int) -> list[tuple[float, list[Tensor | None]]]:
        """The loss and gradient at each of ``count`` points ``theta + eps_j`` of Algorithm 2, in two
        batched passes: ``(L_j, grad L(theta + eps_j))`` in sample order (losses as floats, one host read)."""
        batch = self.batch
        assert batch is not None
        model: nn.Module = batch["model"]
        names = _parameter_names(model, ctx.params)
        optimized = set(names)
        frozen = {name: p.detach() for name, p in model.named_parameters() if name not in optimized}
        buffers = dict(model.named_buffers())
        theta = [p.detach() for p in ctx.params]

        # Stage 1 points theta + delta_j: the noise drawn in the loop's order from the same generator.
        points = [torch.stack(column) for column in zip(*(self._noisy_point(theta, ctx) for _ in range(count)))]
        tracks = model.training and any(_tracks_running_stats(m) for m in model.modules())
        stacked_buffers = {k: b.unsqueeze(0).expand(count, *b.shape).clone() for k, b in buffers.items()}
        grads, noise_losses = self._vmapped(model, names, points, frozen, stacked_buffers, buffer_dim=0)
        if tracks:  # the loop updates the statistics in its first evaluation only: sample 1's
            with torch.no_grad():
                for key, b in buffers.items():
                    b.copy_(stacked_buffers[key][0])

        # Ascent of Algorithm 2 per sample: theta + delta_j + rho g_j / ||g_j||  (global L2 norm per sample)
        with torch.no_grad():
            norms = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
            factor = ctx.rho / (norms + NORM_EPS)
            for point, g in zip(points, grads):
                point.add_(g * factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
        del grads

        # Stage 2 at theta + eps_j: batch statistics, no buffer update (as the loop's later evaluations).
        with frozen_batchnorm_stats(model):
            grads, losses = self._vmapped(model, names, points, frozen, buffers, buffer_dim=None)
        values = losses.detach().to(torch.float64).tolist()  # the weights need them: one host read
        for value in noise_losses.detach().to(torch.float64).tolist():  # logged only, computed by now
            ctx.record("noise_loss", value)
        return [(values[j], [g[j] for g in grads]) for j in range(count)]

    def _noisy_point(self, theta: list[Tensor], ctx: SamplingContext) -> list[Tensor]:
        noise = self.draw_noise(theta, ctx.generator)
        return [t.clone() for t in theta] if noise is None else [t + z for t, z in zip(theta, noise)]

    def _vmapped(self, model, names, points, frozen, buffers, *, buffer_dim):
        batch = self.batch
        assert batch is not None
        inputs, loss_fn = batch["inputs"], batch["loss_fn"]

        def loss_at(params: tuple[Tensor, ...], buffer_values: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            state = {**frozen, **dict(zip(names, params)), **buffer_values}
            loss = loss_fn(torch.func.functional_call(model, state, inputs))
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor, got {loss!r}")
            return loss.reshape(()), loss.detach().reshape(())

        evaluate = torch.func.vmap(torch.func.grad(loss_at, has_aux=True), in_dims=(0, buffer_dim),
                                   randomness=batch["randomness"])
        try:
            grads, losses = evaluate(tuple(points), buffers)
        except RuntimeError as error:
            if "randomness" in str(error):
                raise ValueError(
                    "the model draws random numbers (dropout?) in a batched TSAM step; pass randomness='different' "
                    "(independent draws per sample, not equal to the loop's) or 'same' to step_batched, or use step()"
                ) from error
            raise
        return list(grads), losses


def _parameter_names(model: nn.Module, params: list[Tensor]) -> list[str]:
    """The model's name of each optimizer parameter, in the optimizer's order."""
    by_id = {id(p): name for name, p in model.named_parameters()}
    missing = [tuple(p.shape) for p in params if id(p) not in by_id]
    if missing:
        raise ValueError(f"parameters of shapes {missing} are optimized but are not parameters of the model given to "
                         "TSAM(model=...): the batched step evaluates that model")
    return [by_id[id(p)] for p in params]


def _tracks_running_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats

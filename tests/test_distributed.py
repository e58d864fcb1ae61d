"""TSAM and SAM under DistributedDataParallel: two gloo processes on CPU against one process.

One spawned pair of ranks runs every scenario (process start-up dominates the cost); each rank saves
its results and the tests below compare them with single-process runs done here, in the test process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.func import functional_call, grad
from torch.nn.parallel import DistributedDataParallel

from tiltedsam.optim import ERM, SAM, TSAM
from tiltedsam.optim import distributed as distributed_module
from tiltedsam.optim.distributed import DistributedSync, resolve_distributed
from tiltedsam.optim.registry import create_optimizer, list_optimizers

WORLD = 2
REGISTERED = [entry["name"] for entry in list_optimizers()]  # new registry entries are covered automatically
GLOBAL_BATCH = 16
STEPS = 4
LR = 0.1
TSAM_SETTINGS = dict(tilt=20.0, num_samples=3, rho=0.05, noise_radius=0.3, noise_std=1.0)
SAM_SETTINGS = dict(rho=0.05)


# ---------------------------------------------------------------------- shared by ranks and reference
def make_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(6, 16)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, 6, generator=gen)
    x[GLOBAL_BATCH // 2:] *= 3.0  # the two halves differ, so their local losses (and tilted weights) differ
    y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=gen)
    return x, y


def shard(x: torch.Tensor, y: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    size = GLOBAL_BATCH // WORLD
    return x[rank * size:(rank + 1) * size], y[rank * size:(rank + 1) * size]


def train(kind: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, api: str, rng_seed: int,
          steps: int = STEPS, **options: Any) -> dict[str, Any]:
    """``steps`` optimizer steps on one fixed batch; ``seed=None`` unless given, drawn after
    ``torch.manual_seed(rng_seed)`` (different per rank in the workers: the library must share rank 0's)."""
    torch.manual_seed(rng_seed)
    if kind == "tsam":
        optimizer = TSAM(net.parameters(), lr=LR, model=net, **{**TSAM_SETTINGS, **options})
    elif kind == "sam":
        optimizer = SAM(net.parameters(), lr=LR, model=net, **{**SAM_SETTINGS, **options})
    else:
        optimizer = ERM(net.parameters(), lr=LR, model=net, **options)
    loss_fn = nn.CrossEntropyLoss()
    losses, weights = [], []
    for _ in range(steps):
        if api == "closure":
            def closure() -> torch.Tensor:
                loss = loss_fn(net(x), y)
                loss.backward()
                return loss
            optimizer.step(closure)
        else:
            for evaluation in optimizer.manual_step():
                loss = loss_fn(net(x), y)
                loss.backward()
                evaluation.record(loss)
        losses.append(list(optimizer.last_step.losses))
        weights.append(list(optimizer.last_step.weights))
    return {
        "params": [p.detach().clone() for p in net.parameters()],
        "buffers": [b.detach().clone() for b in net.buffers()],
        "losses": losses,
        "weights": weights,
        "seed": optimizer.seed,
    }


def train_registered(name: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, rng_seed: int,
                     steps: int = 3) -> list[torch.Tensor]:
    """A few closure steps of registered optimizer ``name`` with its default settings and ``seed=None``."""
    torch.manual_seed(rng_seed)
    optimizer = create_optimizer(name, net.parameters(), lr=LR, model=net)
    loss_fn = nn.CrossEntropyLoss()

    def closure() -> torch.Tensor:
        loss = loss_fn(net(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return [p.detach().clone() for p in net.parameters()]


class _CountingDist:
    """Stands in for ``torch.distributed`` inside the library module and counts its collectives."""

    def __init__(self) -> None:
        self.counts = {"all_reduce": 0, "broadcast": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(dist, name)

    def all_reduce(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["all_reduce"] += 1
        return dist.all_reduce(*args, **kwargs)

    def broadcast(self, *args: Any, **kwargs: Any) -> Any:
        self.counts["broadcast"] += 1
        return dist.broadcast(*args, **kwargs)


def count_collectives(kind: str, x: torch.Tensor, y: torch.Tensor, **options: Any) -> dict[str, int]:
    """Collectives of the first step of a new optimizer: DDP gradient syncs (one bucket per backward
    for this tiny model, counted by a comm hook) and the library's own all-reduces/broadcasts (the
    seed broadcast happens once per optimizer, in its first step)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    net = DistributedDataParallel(make_model())
    grad_syncs = [0]

    def counting_hook(state, bucket):  # no annotations: DDP checks them against dist.GradBucket
        grad_syncs[0] += 1
        return default_hooks.allreduce_hook(state, bucket)

    net.register_comm_hook(None, counting_hook)
    counter = _CountingDist()
    original = distributed_module.dist
    distributed_module.dist = counter
    try:
        train(kind, net, x, y, api="closure", rng_seed=5, steps=1, **options)
    finally:
        distributed_module.dist = original
    return dict(counter.counts, grad_syncs=grad_syncs[0])


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, y = shard(*make_data(), rank)
        results: dict[Any, Any] = {}
        for kind in ("tsam", "sam"):
            for api in ("closure", "manual"):
                net = DistributedDataParallel(make_model())
                results[kind, api] = train(kind, net, x, y, api=api, rng_seed=100 + rank)
        for name in REGISTERED:
            results["registry", name] = train_registered(name, DistributedDataParallel(make_model()), x, y,
                                                         rng_seed=100 + rank)
        # the failure mode: each rank tilts with its local losses (same explicit noise seed on both)
        results["local_losses"] = train("tsam", DistributedDataParallel(make_model()), x, y, api="closure",
                                        rng_seed=100, seed=7, distributed=False)
        results["global_losses"] = train("tsam", DistributedDataParallel(make_model()), x, y, api="closure",
                                         rng_seed=100, seed=7)
        # m-sharpness: per-rank ascent
        for kind in ("tsam", "sam"):
            net = DistributedDataParallel(make_model())
            results[kind, "local_ascent"] = train(kind, net, x, y, api="closure", rng_seed=100 + rank,
                                                  distributed=DistributedSync(local_ascent=True))
        # BatchNorm (per-rank batch statistics; DDP broadcasts rank 0's buffers at each forward)
        results["batchnorm"] = train("tsam", DistributedDataParallel(make_model(batchnorm=True)), x, y,
                                     api="manual", rng_seed=100 + rank)
        for kind in ("tsam", "sam"):
            results[kind, "collectives"] = count_collectives(kind, x, y)
            results[kind, "collectives_local_ascent"] = count_collectives(
                kind, x, y, distributed=DistributedSync(local_ascent=True))
        results["erm", "collectives"] = count_collectives("erm", x, y)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, Any]]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(out_dir / "init"), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def assert_params_equal(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=atol)


def flat(per_step: list[list[float]]) -> list[float]:
    return [value for step in per_step for value in step]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a, b))


@pytest.mark.parametrize("kind", ["tsam", "sam"])
@pytest.mark.parametrize("api", ["closure", "manual"])
def test_two_ranks_equal_one_process_with_the_whole_batch(ranks, kind, api):
    x, y = make_data()
    reference = train(kind, make_model(), x, y, api=api, rng_seed=100)  # rank 0's RNG seed
    for rank in ranks:
        result = rank[kind, api]
        if kind == "tsam":  # rank 1 drew another seed but uses rank 0's (SAM draws no noise)
            assert result["seed"] == reference["seed"]
        assert_params_equal(result["params"], reference["params"])
        # the losses that weight the samples are the global mini-batch losses
        assert flat(result["losses"]) == pytest.approx(flat(reference["losses"]), rel=1e-5, abs=1e-6)
        assert flat(result["weights"]) == pytest.approx(flat(reference["weights"]), rel=1e-4, abs=1e-6)
    # the ranks are identical to each other, bit for bit
    for p, q in zip(ranks[0][kind, api]["params"], ranks[1][kind, api]["params"]):
        assert torch.equal(p, q)
    # and the run moved the parameters (a comparison of untouched models would prove nothing)
    assert max_difference(reference["params"], [p.detach() for p in make_model().parameters()]) > 1e-3


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_optimizer_keeps_ranks_identical_and_equal_to_one_process(ranks, name):
    for p, q in zip(ranks[0]["registry", name], ranks[1]["registry", name]):
        assert torch.equal(p, q)
    x, y = make_data()
    reference = train_registered(name, make_model(), x, y, rng_seed=100)
    assert_params_equal(ranks[0]["registry", name], reference)


def test_local_losses_make_ranks_diverge_and_the_library_does_not(ranks):
    # the failure mode: with distributed=False each rank tilts with its own shard's losses
    local = [r["local_losses"] for r in ranks]
    assert local[0]["weights"][0] != pytest.approx(local[1]["weights"][0], abs=1e-3)
    assert max_difference(local[0]["params"], local[1]["params"]) > 1e-4
    # the library default all-reduces the losses: same weights, identical parameters
    shared = [r["global_losses"] for r in ranks]
    assert shared[0]["weights"] == shared[1]["weights"]
    for p, q in zip(shared[0]["params"], shared[1]["params"]):
        assert torch.equal(p, q)


def test_local_ascent_keeps_ranks_identical_and_changes_the_update(ranks):
    for kind in ("tsam", "sam"):
        for p, q in zip(ranks[0][kind, "local_ascent"]["params"], ranks[1][kind, "local_ascent"]["params"]):
            assert torch.equal(p, q)
        assert max_difference(ranks[0][kind, "local_ascent"]["params"], ranks[0][kind, "closure"]["params"]) > 1e-6


def test_sam_local_ascent_is_m_sharpness(ranks):
    """Per-rank ascent = the mean over shards of grad L_r(theta + rho g_r/||g_r||) (m-sharpness)."""
    x, y = make_data()
    model = make_model()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_fn = nn.CrossEntropyLoss()

    def shard_loss(theta: dict[str, torch.Tensor], xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, theta, (xs,)), ys)

    for _ in range(STEPS):
        update = {name: torch.zeros_like(p) for name, p in params.items()}
        for r in range(WORLD):
            xs, ys = shard(x, y, r)
            g = grad(shard_loss)(params, xs, ys)
            norm = torch.sqrt(sum((v**2).sum() for v in g.values()))
            perturbed = {name: params[name] + SAM_SETTINGS["rho"] * g[name] / (norm + 1e-12) for name in params}
            h = grad(shard_loss)(perturbed, xs, ys)
            for name in params:
                update[name] += h[name] / WORLD
        params = {name: params[name] - LR * update[name] for name in params}
    assert_params_equal(ranks[0]["sam", "local_ascent"]["params"], list(params.values()))


def test_batchnorm_ranks_stay_identical(ranks):
    first, second = ranks[0]["batchnorm"], ranks[1]["batchnorm"]
    for p, q in zip(first["params"] + first["buffers"], second["params"] + second["buffers"]):
        assert torch.equal(p, q)
    # running statistics moved once per step (not once per evaluation)
    num_batches_tracked = [b for b in first["buffers"] if b.dtype == torch.long]
    assert [int(b) for b in num_batches_tracked] == [STEPS]


def test_number_of_collectives_per_step(ranks):
    s = TSAM_SETTINGS["num_samples"]
    counts = ranks[0]
    # default: one gradient sync per backward (2 s), one scalar all-reduce per weighted loss (s), the
    # noise seed broadcast once; the noise-point losses are not communicated
    assert counts["tsam", "collectives"] == {"grad_syncs": 2 * s, "all_reduce": s, "broadcast": 1}
    assert counts["tsam", "collectives_local_ascent"] == {"grad_syncs": s, "all_reduce": s, "broadcast": 1}
    # SAM: two gradient syncs and the objective's loss; SAM draws no noise, so no seed broadcast
    assert counts["sam", "collectives"] == {"grad_syncs": 2, "all_reduce": 1, "broadcast": 0}
    assert counts["sam", "collectives_local_ascent"] == {"grad_syncs": 1, "all_reduce": 1, "broadcast": 0}
    assert counts["erm", "collectives"] == {"grad_syncs": 1, "all_reduce": 1, "broadcast": 0}


# ---------------------------------------------------------------------- single-process behaviour
def test_not_initialised_means_no_communication():
    sync = DistributedSync()
    assert not sync.is_active()
    assert sync.average_loss(torch.tensor(2.5)) == 2.5
    assert sync.shared_seed(123) == 123
    with pytest.raises(RuntimeError, match="not initialised"):
        DistributedSync(enabled=True).is_active()
    assert DistributedSync(enabled=False).average_loss(1.0) == 1.0


def test_bad_distributed_arguments():
    with pytest.raises(ValueError, match="distributed must be"):
        resolve_distributed("yes")
    with pytest.raises(ValueError, match="enabled must be"):
        DistributedSync(enabled="auto")
    with pytest.raises(ValueError, match="local_ascent must be"):
        DistributedSync(local_ascent=1)
    net = make_model()
    with pytest.raises(ValueError, match="needs model="):
        SAM(net.parameters(), lr=0.1, distributed=DistributedSync(local_ascent=True))
    with pytest.raises(ValueError, match="ascent evaluations"):
        ERM(net.parameters(), lr=0.1, model=net, distributed=DistributedSync(local_ascent=True))
    with pytest.raises(ValueError, match="scalar loss"):
        DistributedSync().average_loss(torch.ones(2))
    assert math.isnan(DistributedSync().average_loss(float("nan")))

r"""Two quadratic wells in ``d`` dimensions whose preference under the tilted objective flips with ``t``.

The loss is the lower of two quadratics with the same minimum value 0,

.. math:: L(\theta) = \min_k \tfrac12 (\theta - c_k)^\top H_k (\theta - c_k),

with well **A** (``c_A = -D/2\,e_1``) having ``num_sharp`` sharp directions (eigenvalue ``sharp``) and
the others flat (``flat``), and well **B** (``c_B = +D/2\,e_1``) isotropic (``isotropic \cdot I``).
The perturbations are TSAM's Gaussian noise clipped to norm ``r`` with a standard deviation so large
that every draw is clipped: ``\epsilon = r u`` with ``u`` uniform on the unit sphere. At a minimum
(with ``D`` large against ``r``, the other well never enters) ``L(c_k + \epsilon) = \tfrac{r^2}2 u^\top H_k u``:

* well B: the constant ``r^2 h_B / 2`` — zero variance;
* well A: mean ``r^2 \operatorname{tr} H_A / (2d)`` (lower than B's when ``tr H_A / d < h_B``) and a
  positive variance, so its tilted value (Eq. 3) ``L^t_A = \frac1t \log \mathbb E e^{t L}`` rises with
  ``t`` from that mean towards ``r^2 h_{\max}/2``.

Hence ``L^t_A < L^t_B`` below a flip tilt ``t^*`` and ``>`` above it: the objective prefers A for
``t < t^*`` and B for ``t > t^*`` (the paper's Sec. 3.2: a larger ``t`` favours the flatter, lower-variance
neighbourhood). :func:`ground_truth` estimates ``L^t`` at both minima by Monte Carlo and bisects for ``t^*``.

:func:`run_wells` then trains a single ``nn.Parameter`` from many starts near the boundary of the two
basins with the library's public optimizers (ERM, SAM, TSAM with the Algorithm 2 sampler, TSAM with the
naive sampler and many samples — close to the exact tilted gradient — and ``tilt="auto"``) and counts
where each run ends, with Wilson intervals. Gradient descent is local: a start deep in one basin stays
there whatever the objective; what the tilt can move is the boundary between the basins, since each
basin's smoothed floor is shifted by its own ``L^t`` (``L^t(\theta) \approx q_k(\theta) + L^t_k``), so
the boundary moves toward the well the objective dislikes. Exact ``L^t`` descent therefore ends in A
more often than ERM for ``t < t^*`` and less often for ``t > t^*``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["WellsProblem", "GroundTruth", "ground_truth", "WellsResult", "run_wells", "wilson_interval",
           "WELLS_OPTIMIZERS", "write_wells", "starts"]

#: optimizers the wells experiment runs; the ``tsam-*`` ones are run at every tilt of the grid
WELLS_OPTIMIZERS = ("erm", "sam", "tsam-alg2", "tsam-naive", "auto")
#: noise standard deviation as a multiple of the radius: every Gaussian draw is clipped onto the sphere
SPHERE_STD = 100.0


@dataclass(frozen=True)
class WellsProblem:
    """The two wells. ``dim >= 2``; well A's ``num_sharp`` sharp directions are axes ``1..num_sharp``
    (axis 0 joins the wells and is flat in A); ``radius`` is the noise radius ``r``; ``distance`` is ``D``."""

    dim: int = 4
    distance: float = 4.0
    radius: float = 0.5
    sharp: float = 10.0
    flat: float = 0.5
    num_sharp: int = 2
    isotropic: float = 7.0

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {self.dim!r}")
        if not isinstance(self.num_sharp, int) or not (1 <= self.num_sharp < self.dim):
            raise ValueError(f"num_sharp must be an integer in [1, dim - 1] = [1, {self.dim - 1}], got {self.num_sharp!r}")
        for name in ("distance", "radius", "sharp", "flat", "isotropic"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not self.flat < self.sharp:
            raise ValueError(f"flat must be below sharp, got flat={self.flat}, sharp={self.sharp}")
        if self.distance <= 4 * self.radius:
            raise ValueError(f"distance must exceed 4 * radius = {4 * self.radius} so that the wells' neighbourhoods "
                             f"stay apart, got {self.distance}")

    def curvatures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The diagonal Hessians ``(H_A, H_B)`` as vectors of eigenvalues."""
        h_a = torch.full((self.dim,), float(self.flat), dtype=torch.float64)
        h_a[1:1 + self.num_sharp] = self.sharp
        return h_a, torch.full((self.dim,), float(self.isotropic), dtype=torch.float64)

    def centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        c_a = torch.zeros(self.dim, dtype=torch.float64)
        c_a[0] = -self.distance / 2
        return c_a, -c_a

    def wells(self, theta: torch.Tensor) -> torch.Tensor:
        """The two quadratics at ``theta`` (last dimension ``dim``), stacked on a new last axis."""
        (h_a, h_b), (c_a, c_b) = self.curvatures(), self.centres()
        h_a, h_b, c_a, c_b = (v.to(theta.dtype) for v in (h_a, h_b, c_a, c_b))
        q_a = 0.5 * (h_a * (theta - c_a) ** 2).sum(-1)
        q_b = 0.5 * (h_b * (theta - c_b) ** 2).sum(-1)
        return torch.stack([q_a, q_b], -1)

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """``L(theta) = min(q_A, q_B)``."""
        return self.wells(theta).min(-1).values

    def basin(self, theta: torch.Tensor) -> int:
        """0 (well A) or 1 (well B): the quadratic that is lower at ``theta``."""
        return int(self.wells(theta.detach().to(torch.float64)).argmin(-1))

    def boundary(self) -> float:
        """The point ``x`` on the axis joining the centres where ``q_A = q_B`` (the ERM basins' boundary there)."""
        h_a, h_b = self.curvatures()
        a, b, half = math.sqrt(float(h_a[0])), math.sqrt(float(h_b[0])), self.distance / 2
        return (b * half - a * half) / (a + b)  # a (x + D/2) = b (D/2 - x)


@dataclass(frozen=True)
class GroundTruth:
    """``L^t`` at both minima on a grid of ``t`` (Monte Carlo) and the flip ``t^*`` (NaN when none)."""

    tilts: list[float]
    tilted_a: list[float]
    tilted_b: list[float]
    mean_a: float
    mean_b: float
    max_a: float
    flip: float
    draws: int


def sphere_perturbations(problem: WellsProblem, draws: int, seed: int) -> torch.Tensor:
    """``draws`` perturbations ``r u``, ``u`` uniform on the unit sphere (TSAM's clipped Gaussian here)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(draws, problem.dim, generator=generator, dtype=torch.float64)
    return problem.radius * z / z.norm(dim=1, keepdim=True)


def _tilted(losses: torch.Tensor, tilt: float) -> float:
    if tilt == 0:
        return float(losses.mean())
    return float((torch.logsumexp(tilt * losses, 0) - math.log(losses.numel())) / tilt)


def ground_truth(problem: WellsProblem, tilts: Sequence[float], draws: int = 200_000, seed: int = 0) -> GroundTruth:
    """Monte Carlo ``L^t(c_A)``, ``L^t(c_B)`` for each ``t`` and the flip ``t^*`` where they are equal.

    The same ``draws`` perturbations serve every ``t`` (common random numbers), so the difference is
    smooth in ``t``; ``t^*`` is found by bisection on it (NaN when it does not change sign on
    ``[0, 10^4]``).
    """
    eps = sphere_perturbations(problem, draws, seed)
    c_a, c_b = problem.centres()
    loss_a, loss_b = problem.loss(c_a + eps), problem.loss(c_b + eps)

    def gap(t: float) -> float:
        return _tilted(loss_a, t) - _tilted(loss_b, t)

    flip = float("nan")
    low, high = 0.0, 1e4
    if gap(low) < 0 < gap(high):
        for _ in range(100):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if gap(mid) < 0 else (low, mid)
        flip = 0.5 * (low + high)
    return GroundTruth(tilts=[float(t) for t in tilts], tilted_a=[_tilted(loss_a, t) for t in tilts],
                       tilted_b=[_tilted(loss_b, t) for t in tilts], mean_a=float(loss_a.mean()),
                       mean_b=float(loss_b.mean()), max_a=float(loss_a.max()), flip=flip, draws=draws)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's ``binomtest(...).proportion_ci``)."""
    from scipy.stats import binomtest

    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _optimizer(name: str, params, problem: WellsProblem, tilt: float, lr: float, rho: float, naive_samples: int,
               seed: int):
    from .. import SAM, TSAM, create_optimizer

    noise = {"noise": "gaussian", "noise_std": SPHERE_STD * problem.radius}
    if name == "erm":
        return create_optimizer("erm", params, lr=lr)
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=rho, lr=lr)
    if name == "tsam-alg2":
        return TSAM(params, torch.optim.SGD, tilt=tilt, num_samples=3, rho=rho, noise_radius=problem.radius,
                    seed=seed, lr=lr, **noise)
    if name == "tsam-naive":
        return TSAM(params, torch.optim.SGD, tilt=tilt, num_samples=naive_samples, sampler="naive",
                    sampler_options={**noise, "radius": problem.radius}, seed=seed, lr=lr)
    if name == "auto":
        return TSAM(params, torch.optim.SGD, tilt="auto", num_samples=3, rho=rho, noise_radius=problem.radius,
                    seed=seed, lr=lr, **noise)
    raise ValueError(f"unknown wells optimizer {name!r}; choose from {WELLS_OPTIMIZERS}")


def _descend(problem: WellsProblem, name: str, start: torch.Tensor, tilt: float, steps: int, lr: float, rho: float,
             naive_samples: int, seed: int) -> tuple[int, float]:
    """One run from ``start``; returns (well reached: 0 = A, 1 = B, mean ESS over the steps)."""
    theta = nn.Parameter(start.clone().to(torch.float32))
    optimizer = _optimizer(name, [theta], problem, tilt, lr, rho, naive_samples, seed)

    def closure():
        loss = problem.loss(theta)
        loss.backward()
        return loss

    ess = []
    for _ in range(steps):
        optimizer.zero_grad()
        optimizer.step(closure)
        diagnostics = getattr(optimizer, "last_step", None)
        if diagnostics is not None and math.isfinite(diagnostics.effective_sample_size):
            ess.append(diagnostics.effective_sample_size)
    if not torch.isfinite(theta).all():
        raise FloatingPointError(f"{name} diverged from start {start.tolist()} (lr={lr}); lower --lr")
    return problem.basin(theta), (float(np.mean(ess)) if ess else float("nan"))


@dataclass
class WellsResult:
    problem: WellsProblem
    truth: GroundTruth
    run_tilts: list[float] = field(default_factory=list)  # the t grid the TSAM runs used
    rows: list[dict] = field(default_factory=list)  # one per (optimizer, tilt): counts, Wilson interval, ESS
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)


def starts(problem: WellsProblem, count: int, band: float, seed: int) -> torch.Tensor:
    """``count`` starts around the ERM basin boundary: ``x = boundary + U(-band, band)`` on the joining
    axis, ``N(0, (r/4)^2)`` across it."""
    generator = torch.Generator().manual_seed(seed)
    points = (problem.radius / 4) * torch.randn(count, problem.dim, generator=generator, dtype=torch.float64)
    points[:, 0] = problem.boundary() + band * (2 * torch.rand(count, generator=generator, dtype=torch.float64) - 1)
    return points


def run_wells(problem: WellsProblem, tilts: Sequence[float], *, count: int = 40, band: float | None = None,
              steps: int = 60, lr: float = 0.02, rho: float = 0.05, naive_samples: int = 64, seed: int = 0,
              optimizers: Sequence[str] = WELLS_OPTIMIZERS, truth_draws: int = 200_000,
              progress: Callable[[str], None] | None = None) -> WellsResult:
    """Ground truth, then every optimizer from the same ``count`` starts (``band`` defaults to ``r``);
    the ``tsam-*`` optimizers at each ``t`` in ``tilts``, the others once. Run ``i`` uses noise seed ``seed + i``."""
    for name in optimizers:
        if name not in WELLS_OPTIMIZERS:
            raise ValueError(f"unknown wells optimizer {name!r}; choose from {WELLS_OPTIMIZERS}")
    if count < 1 or steps < 1:
        raise ValueError(f"count and steps must be >= 1, got count={count}, steps={steps}")
    begin = time.perf_counter()
    dense = np.linspace(0.0, 1.05 * max([*tilts, 1e-9]), 41).tolist()  # for the figure's curves
    truth = ground_truth(problem, sorted({*map(float, tilts), *dense}), draws=truth_draws, seed=seed)
    result_tilts = [float(t) for t in tilts]
    points = starts(problem, count, problem.radius if band is None else band, seed + 1)
    result = WellsResult(problem=problem, truth=truth, run_tilts=result_tilts)
    for name in optimizers:
        for tilt in (tilts if name.startswith("tsam") else [float("nan")]):
            outcomes = [_descend(problem, name, p, tilt, steps, lr, rho, naive_samples, seed + i)
                        for i, p in enumerate(points)]
            in_a = sum(1 for well, _ in outcomes if well == 0)
            low, high = wilson_interval(in_a, count)
            ess = [e for _, e in outcomes if math.isfinite(e)]
            result.rows.append({"optimizer": name, "tilt": tilt, "runs": count, "in_a": in_a, "fraction_a": in_a / count,
                                "low": low, "high": high, "mean_ess": float(np.mean(ess)) if ess else float("nan")})
            if progress:
                progress(f"{name} t={tilt:g}: {in_a}/{count} in A")
    result.seconds = time.perf_counter() - begin
    return result


def _markdown(result: WellsResult) -> dict[str, str]:
    truth = result.truth
    lines = ["| t | L^t at A (low mean, high variance) | L^t at B (isotropic) | objective prefers |", "|---|---|---|---|"]
    for t, a, b in zip(truth.tilts, truth.tilted_a, truth.tilted_b):
        if t not in result.run_tilts:
            continue
        lines.append(f"| {t:g} | {a:.4f} | {b:.4f} | {'A' if a < b else 'B'} |")
    runs = ["| optimizer | t | runs | in A | fraction in A [95% Wilson] | mean ESS |", "|---|---|---|---|---|---|"]
    for row in result.rows:
        t = "—" if math.isnan(row["tilt"]) else f"{row['tilt']:g}"
        ess = "—" if math.isnan(row["mean_ess"]) else f"{row['mean_ess']:.2f}"
        runs.append(f"| {row['optimizer']} | {t} | {row['runs']} | {row['in_a']} | {row['fraction_a']:.2f} "
                    f"[{row['low']:.2f}, {row['high']:.2f}] | {ess} |")
    flip = "none on [0, 1e4]" if math.isnan(truth.flip) else f"{truth.flip:.3f}"
    return {f"Ground truth ({truth.draws} Monte Carlo draws; flip t* = {flip})": "\n".join(lines),
            "Where the runs end": "\n".join(runs)}


def _figure(result: WellsResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = result.truth
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(truth.tilts, truth.tilted_a, "-", label="well A (low mean, high variance)")
    left.plot(truth.tilts, truth.tilted_b, "-", label="well B (isotropic, zero variance)")
    left.set_xlabel("tilt t")
    left.set_ylabel("tilted objective $L^t$ at the minimum (loss units)")
    left.set_title("ground truth (Monte Carlo)")
    colours = {"erm": "tab:gray", "sam": "tab:brown", "auto": "tab:purple", "tsam-alg2": "tab:blue",
               "tsam-naive": "tab:green"}
    labels = {"tsam-alg2": "TSAM, Algorithm 2 (s=3)", "tsam-naive": "TSAM, naive sampler (many samples)",
              "erm": "ERM", "sam": "SAM", "auto": "TSAM tilt=auto"}
    offsets = {"tsam-alg2": -0.015, "tsam-naive": 0.015}
    span = max(truth.tilts) - min(truth.tilts) or 1.0
    for name in dict.fromkeys(r["optimizer"] for r in result.rows):
        rows = [r for r in result.rows if r["optimizer"] == name]
        if name.startswith("tsam"):
            x = np.array([r["tilt"] for r in rows]) + offsets[name] * span
            y = np.array([r["fraction_a"] for r in rows])
            err = np.array([[r["fraction_a"] - r["low"] for r in rows], [r["high"] - r["fraction_a"] for r in rows]])
            right.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color=colours[name], label=labels[name])
        else:
            r = rows[0]
            right.axhline(r["fraction_a"], color=colours[name], ls="--", label=f"{labels[name]} (no t)")
            right.axhspan(r["low"], r["high"], color=colours[name], alpha=0.12)
    for axis in (left, right):
        if not math.isnan(truth.flip):
            axis.axvline(truth.flip, color="k", ls=":", label=f"flip t* = {truth.flip:.2f}")
        axis.legend(fontsize=7)
    right.set_xlabel("tilt t")
    right.set_ylabel("fraction of runs ending in well A (95% Wilson)")
    right.set_ylim(-0.02, 1.02)
    right.set_title(f"{result.rows[0]['runs']} starts near the basin boundary")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_wells(result: WellsResult, out: str | Path) -> WellsResult:
    """Write ``wells.png``, ``wells.md`` and ``wells.csv`` under ``out`` (temporary file + rename)."""
    import csv
    import json
    import os

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result.tables = _markdown(result)
    figure = folder / "wells.png"
    tmp = folder / ".wells.png.tmp.png"
    _figure(result, tmp)
    os.replace(tmp, figure)
    md = folder / "wells.md"
    md.with_suffix(".md.tmp").write_text("\n\n".join(f"## {k}\n\n{v}" for k, v in result.tables.items()) + "\n")
    os.replace(md.with_suffix(".md.tmp"), md)
    table = folder / "wells.csv"
    with open(table.with_suffix(".csv.tmp"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["optimizer", "tilt", "runs", "in_a", "fraction_a", "wilson_low", "wilson_high", "mean_ess",
                         "flip_tilt", "problem"])
        for r in result.rows:
            writer.writerow([r["optimizer"], "" if math.isnan(r["tilt"]) else r["tilt"], r["runs"], r["in_a"],
                             f"{r['fraction_a']:.6g}", f"{r['low']:.6g}", f"{r['high']:.6g}",
                             "" if math.isnan(r["mean_ess"]) else f"{r['mean_ess']:.6g}",
                             "" if math.isnan(result.truth.flip) else f"{result.truth.flip:.6g}",
                             json.dumps(asdict(result.problem), sort_keys=True)])
    os.replace(table.with_suffix(".csv.tmp"), table)
    result.files = [figure, md, table]
    return result

r"""Spectrum and trace of the loss Hessian from Hessian-vector products (the TSAM paper, Sec. 5.2).

The Hessian :math:`H = \nabla^2 L(\theta)` of the sample-weighted mean loss over the data is never
formed: :class:`HessianOperator` gives :math:`v \mapsto Hv` by double back-propagation
(:math:`Hv = \nabla_\theta (\nabla_\theta L \cdot v)`), one forward/backward pair per batch.

* :func:`hessian_eigenvalues`: Lanczos with full re-orthogonalisation, returning the top-k (and on
  request the bottom) Ritz pairs with their residuals :math:`\lVert Hx - \lambda x\rVert`.
* :func:`hessian_trace`: Hutchinson's estimator with Rademacher probes, or Hutch++ (Meyer et al. 2021),
  with a standard error.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ._common import (
    ResultMixin,
    LossFn,
    _scalar_loss,
    as_batches,
    call_model,
    check_mode,
    check_positive_int,
    preserved_model_state,
    progress_bar,
    trainable_parameters,
    weighted_batches,
)

__all__ = [
    "HessianOperator",
    "lanczos",
    "LanczosResult",
    "hessian_eigenvalues",
    "HessianEigenResult",
    "hessian_trace",
    "HessianTraceResult",
    "TRACE_METHODS",
]

TRACE_METHODS = ("hutchinson", "hutch++")


def _warn_if_dropout(model: nn.Module, mode: str) -> None:
    if mode == "train" and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        warnings.warn(
            "mode='train' with active dropout: the Hessian is that of a random loss (with several batches every "
            "product draws new masks); use mode='eval' for a well-defined spectrum",
            stacklevel=3,
        )


class HessianOperator:
    r"""The map :math:`v \mapsto Hv` for the Hessian of the mean loss w.r.t. ``params``, on flat vectors.

    With one batch the first-order graph is built once and reused for every product (one backward per
    product); with several batches each product re-runs forward and double backward batch by batch
    (memory of one batch), weighting batch ``b`` by ``n_b / sum n``. Use it inside
    :func:`~tiltedsam.analysis.preserved_model_state` if the mode matters: it evaluates the model in
    whatever mode it is in.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Any, params: Sequence[Tensor] | None = None,
                 max_batches: int | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.params = trainable_parameters(model, params)
        self.batches = as_batches(data, max_batches)
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.num_products = 0
        self._cached: list[tuple[tuple[Tensor, ...], float]] | None = None
        batch_list = self.batches if isinstance(self.batches, list) else None
        self._single_batch = batch_list is not None and len(batch_list) == 1

    def _gradients(self) -> Any:
        """Yield (first-order gradients with graph, weight) per batch."""
        if self._cached is not None:
            yield from self._cached
            return
        items = list(weighted_batches(self.model, self.batches))
        total = sum(size for _, _, size in items)
        if total == 0:
            raise ValueError("data yielded no samples")
        for inputs, targets, size in items:
            with torch.enable_grad():
                loss = _scalar_loss(self.loss_fn(call_model(self.model, inputs), targets))
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            entry = (grads, size / total)
            if self._single_batch:
                self._cached = [entry]
            yield entry

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        return [part.view(shape) for part, shape in zip(torch.split(vector, self.sizes), self.shapes)]

    def matvec(self, vector: Tensor) -> Tensor:
        """:math:`Hv` for a flat ``vector`` of length :attr:`dim` (returned flat, in the parameters' dtype)."""
        if vector.shape != (self.dim,):
            raise ValueError(f"vector must have shape ({self.dim},), got {tuple(vector.shape)}")
        pieces = self.unflatten(vector.to(self.device, self.dtype))
        result = torch.zeros(self.dim, device=self.device, dtype=self.dtype)
        for grads, weight in self._gradients():
            used = [(g, v) for g, v in zip(grads, pieces) if g is not None and g.requires_grad]
            if not used:
                continue
            with torch.enable_grad():
                products = torch.autograd.grad(
                    [g for g, _ in used], self.params, grad_outputs=[v for _, v in used],
                    retain_graph=self._single_batch, allow_unused=True,
                )
            flat = torch.cat([
                torch.zeros(n, device=self.device, dtype=self.dtype) if h is None else h.reshape(-1)
                for h, n in zip(products, self.sizes)
            ])
            result.add_(flat, alpha=weight)
        self.num_products += 1
        return result

    def __matmul__(self, vector: Tensor) -> Tensor:
        return self.matvec(vector)

    def release(self) -> None:
        """Drop the cached graph (frees its memory)."""
        self._cached = None


@dataclass
class LanczosResult:
    eigenvalues: Tensor  # all Ritz values of the final tridiagonal matrix, ascending (float64)
    ritz_vectors: Tensor  # (m, m) eigenvectors of the tridiagonal matrix
    estimated_residuals: Tensor  # |beta_m s_{m,i}|: the residual norm of each Ritz pair, for free
    basis: Tensor  # (m, dim) orthonormal Lanczos vectors
    iterations: int
    converged: bool


def lanczos(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    *,
    num_largest: int,
    num_smallest: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> LanczosResult:
    r"""Lanczos tridiagonalisation of a symmetric operator with full re-orthogonalisation.

    Builds an orthonormal basis :math:`Q_m` of the Krylov space :math:`\mathcal K_m(H, q_1)` and the
    tridiagonal :math:`T_m = Q_m^\top H Q_m` (diagonal :math:`\alpha`, off-diagonal :math:`\beta`).
    Each new vector is orthogonalised against the whole basis twice (classical Gram-Schmidt twice is
    enough to keep :math:`Q_m` orthonormal to working precision), so no spurious copies of converged
    eigenvalues appear. If the Krylov space closes early (an invariant subspace, e.g. a low-rank
    Hessian), it continues from a new random vector orthogonal to the basis. The residual of Ritz pair i is :math:`\lVert H Q s_i - \theta_i Q s_i\rVert =
    \beta_m |s_{m,i}|`; iteration stops once this is ``<= tol * max|theta|`` for the wanted
    ``num_largest`` top and ``num_smallest`` bottom pairs, when an invariant subspace is found, or at
    ``max_iter`` (``converged`` says which). The start vector is Gaussian from ``generator``.

    A single start vector finds one copy of a repeated eigenvalue (use distinct spectra in tests).
    """
    wanted = num_largest + num_smallest
    check_positive_int("num_largest + num_smallest", wanted)
    if wanted > dim:
        raise ValueError(f"asked for {wanted} eigenvalues of a {dim}-dimensional Hessian; at most {dim} exist")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    max_iter = min(check_positive_int("max_iter", max_iter), dim)
    if max_iter < wanted:
        raise ValueError(f"max_iter must be >= the {wanted} eigenvalues asked for, got {max_iter}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    q = torch.randn(dim, generator=generator, dtype=torch.float64).to(device, dtype)
    q /= torch.linalg.vector_norm(q)
    basis = torch.empty(max_iter, dim, device=device, dtype=dtype)
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    theta = s = estimated = None
    bar = progress_bar(max_iter, "Lanczos iterations", progress)
    try:
        for j in range(max_iter):
            basis[j] = q
            w = matvec(q)
            alpha = float(torch.dot(w.double(), q.double()))
            w = w - alpha * q
            if j > 0:
                w = w - betas[-1] * basis[j - 1]
            for _ in range(2):  # full re-orthogonalisation, twice
                w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
            beta = float(torch.linalg.vector_norm(w.double()))
            alphas.append(alpha)
            bar.update(1)
            tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if betas:
                off = torch.tensor(betas, dtype=torch.float64)
                tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
            theta, s = torch.linalg.eigh(tridiagonal)
            estimated = (beta * s[-1, :]).abs()
            scale = float(theta.abs().max()) if theta.numel() else 0.0
            if j + 1 >= wanted:
                m = j + 1
                picked = list(range(m - num_largest, m)) + list(range(num_smallest))
                if bool((estimated[picked] <= tol * max(scale, torch.finfo(dtype).tiny)).all()):
                    converged = True
                    break
            if j + 1 == max_iter:
                break
            if beta <= torch.finfo(dtype).eps * max(scale, 1e-30) * 10:
                # invariant subspace found before the wanted pairs converged (e.g. a low-rank Hessian):
                # continue from a fresh random vector orthogonal to the basis; T becomes block diagonal
                q = torch.randn(dim, generator=generator, dtype=torch.float64).to(device, dtype)
                for _ in range(2):
                    q = q - basis[: j + 1].T @ (basis[: j + 1] @ q)
                q /= torch.linalg.vector_norm(q)
                betas.append(0.0)
                continue
            betas.append(beta)
            q = w / beta
    finally:
        bar.close()
    m = len(alphas)
    return LanczosResult(theta, s, estimated, basis[:m], m, converged)


@dataclass
class HessianEigenResult(ResultMixin):
    eigenvalues: list[float]  # top-k, descending
    residuals: list[float]  # ||H x - lambda x|| of each returned pair, recomputed with one product each
    relative_residuals: list[float]  # residual / max(|lambda|) over the returned spectrum
    smallest_eigenvalues: list[float]  # bottom ones on request, ascending (most negative first)
    smallest_residuals: list[float]
    iterations: int
    converged: bool
    num_hessian_vector_products: int
    tol: float
    mode: str
    seed: int
    num_parameters: int
    seconds: float
    eigenvectors: Tensor | None = field(default=None, repr=False)  # (k, dim) if asked for
    smallest_eigenvectors: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.pop("eigenvectors")
        out.pop("smallest_eigenvectors")
        return out


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 5,
    *,
    smallest: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    mode: str = "eval",
    params: Sequence[Tensor] | None = None,
    max_batches: int | None = None,
    return_eigenvectors: bool = False,
    progress: bool | None = None,
) -> HessianEigenResult:
    r"""Top-``k`` eigenvalues of the loss Hessian :math:`\nabla^2 L(\theta)` (descending), by Lanczos.

    ``smallest=j`` also returns the ``j`` algebraically smallest (most negative) eigenvalues from the
    same Krylov space. Each returned pair comes with its residual :math:`\lVert Hx - \lambda x\rVert`,
    recomputed with one extra Hessian-vector product, so convergence can be checked: a residual
    :math:`r` bounds the distance from :math:`\lambda` to the nearest true eigenvalue by :math:`r`
    (Weyl/Bauer-Fike for symmetric matrices). ``tol`` is relative to the largest-magnitude Ritz value.
    ``data``/``mode``/``params``/``max_batches`` as in :func:`neighborhood_loss`; the model is
    restored afterwards. Cost: ``iterations + k + smallest`` Hessian-vector products and a basis of
    ``iterations x num_parameters`` numbers.
    """
    check_mode(mode)
    k = check_positive_int("k", k)
    smallest = check_positive_int("smallest", smallest, minimum=0)
    _warn_if_dropout(model, mode)
    start = time.perf_counter()
    with preserved_model_state(model, mode):
        operator = HessianOperator(model, loss_fn, data, params, max_batches)
        generator = torch.Generator().manual_seed(seed)
        run = lanczos(operator.matvec, operator.dim, num_largest=k, num_smallest=smallest, max_iter=max_iter,
                      tol=tol, generator=generator, dtype=operator.dtype, device=operator.device, progress=progress)
        m = run.iterations
        top = list(range(m - 1, m - 1 - k, -1))
        bottom = list(range(smallest))

        def pairs(indices: list[int]) -> tuple[list[float], list[float], Tensor]:
            values = [float(run.eigenvalues[i]) for i in indices]
            coefficients = run.ritz_vectors[:, indices].to(operator.dtype)
            vectors = (run.basis.T @ coefficients).T if indices else torch.empty(0, operator.dim)
            residuals = [
                float(torch.linalg.vector_norm((operator.matvec(x) - value * x).double()))
                for x, value in zip(vectors, values)
            ]
            return values, residuals, vectors

        top_values, top_residuals, top_vectors = pairs(top)
        low_values, low_residuals, low_vectors = pairs(bottom)
        operator.release()
    scale = max([abs(v) for v in top_values + low_values] + [torch.finfo(torch.float64).tiny])
    return HessianEigenResult(
        eigenvalues=top_values,
        residuals=top_residuals,
        relative_residuals=[r / scale for r in top_residuals],
        smallest_eigenvalues=low_values,
        smallest_residuals=low_residuals,
        iterations=m,
        converged=run.converged,
        num_hessian_vector_products=operator.num_products,
        tol=tol,
        mode=mode,
        seed=seed,
        num_parameters=operator.dim,
        seconds=time.perf_counter() - start,
        eigenvectors=top_vectors.detach() if return_eigenvectors else None,
        smallest_eigenvectors=low_vectors.detach() if return_eigenvectors and smallest else None,
    )


@dataclass
class HessianTraceResult(ResultMixin):
    estimate: float
    standard_error: float
    method: str
    num_samples: int  # Hessian-vector products spent
    mode: str
    seed: int
    num_parameters: int
    seconds: float


def _rademacher(dim: int, count: int, generator: torch.Generator, dtype: torch.dtype, device: Any) -> Tensor:
    signs = torch.randint(0, 2, (count, dim), generator=generator, dtype=torch.int8)
    return (signs.to(device, dtype) * 2 - 1)


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    num_samples: int = 60,
    method: str = "hutch++",
    seed: int = 0,
    mode: str = "eval",
    params: Sequence[Tensor] | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> HessianTraceResult:
    r"""Trace of the loss Hessian with a standard error, from ``num_samples`` Hessian-vector products.

    * ``"hutchinson"``: :math:`\widehat{\mathrm{tr}} = \frac1n \sum_i z_i^\top H z_i` with Rademacher
      :math:`z_i` (unbiased; variance :math:`2\sum_{i \ne j} H_{ij}^2 / n`); standard error
      :math:`s/\sqrt n` of the :math:`n` quadratic forms.
    * ``"hutch++"`` (Meyer, Musco, Musco, Woodruff 2021): a third of the products sketch the top
      of the spectrum, :math:`Q = \mathrm{orth}(HS)`, whose part is taken exactly,
      :math:`\mathrm{tr}(Q^\top H Q)`, and the last third runs Hutchinson on the deflated
      :math:`(I-QQ^\top)H(I-QQ^\top)`. Unbiased, and much more accurate when a few eigenvalues
      dominate (typical of network Hessians). The standard error is that of the deflated Hutchinson
      part (the sketch term has no variance given :math:`Q`). Needs ``num_samples >= 3`` and keeps
      ``num_samples/3`` vectors of the parameters' size.
    """
    check_mode(mode)
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    num_samples = check_positive_int("num_samples", num_samples, minimum=3 if method == "hutch++" else 2)
    _warn_if_dropout(model, mode)
    start = time.perf_counter()
    with preserved_model_state(model, mode):
        operator = HessianOperator(model, loss_fn, data, params, max_batches)
        generator = torch.Generator().manual_seed(seed)
        bar = progress_bar(num_samples, f"Hessian trace ({method})", progress)

        def apply(vector: Tensor) -> Tensor:
            out = operator.matvec(vector)
            bar.update(1)
            return out

        def probe(vector: Tensor) -> float:
            return float(torch.dot(apply(vector).double(), vector.double()))

        try:
            if method == "hutchinson":
                probes = _rademacher(operator.dim, num_samples, generator, operator.dtype, operator.device)
                forms = torch.tensor([probe(z) for z in probes], dtype=torch.float64)
                exact_part = 0.0
            else:
                sketch_size = num_samples // 3
                residual_size = num_samples - 2 * sketch_size
                sketch = _rademacher(operator.dim, sketch_size, generator, operator.dtype, operator.device)
                images = torch.stack([apply(z) for z in sketch], dim=1)  # (dim, sketch_size)
                basis, _ = torch.linalg.qr(images.double())
                basis = basis.to(operator.dtype)
                exact_part = sum(probe(q) for q in basis.T)
                probes = _rademacher(operator.dim, residual_size, generator, operator.dtype, operator.device)
                deflated = probes - (probes @ basis) @ basis.T
                forms = torch.tensor([probe(z) for z in deflated], dtype=torch.float64)
        finally:
            bar.close()
        operator.release()
    estimate = exact_part + float(forms.mean())
    standard_error = float(forms.std() / math.sqrt(forms.numel())) if forms.numel() > 1 else math.nan
    return HessianTraceResult(
        estimate=estimate,
        standard_error=standard_error,
        method=method,
        num_samples=operator.num_products,
        mode=mode,
        seed=seed,
        num_parameters=operator.dim,
        seconds=time.perf_counter() - start,
    )

"""``tiltedsam analyze CKPT [CKPT ...]``: flatness report (Fig. 2, top-k eigenvalues, trace, Table 3).

Each checkpoint is turned into a model, loss and data by the harness's ``load_for_analysis``; the
analysis itself is :func:`tiltedsam.analysis.write_flatness_report`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def _float_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values or any(math.isnan(v) or v < 0 or math.isinf(v) for v in values):
        raise argparse.ArgumentTypeError(f"sigmas must be finite numbers >= 0, got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..analysis.report import ANALYSES, ReportSettings

    defaults = ReportSettings()
    p = subparsers.add_parser(
        "analyze",
        help="flatness report of saved models: neighbourhood loss (Fig. 2), Hessian eigenvalues/trace, Table 3",
        description="Measure the flatness of one or more saved solutions (e.g. the ERM, SAM and TSAM runs of one "
        "task) and write report.json, report.md and fig2.png into --out.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint(s) saved by `tiltedsam train`")
    p.add_argument("--out", required=True, help="output folder (created; files are replaced atomically)")
    p.add_argument("--device", default="cpu", help="device to load the models on (default cpu)")
    p.add_argument("--sigmas", type=_float_list, default=list(defaults.sigmas),
                   help="comma-separated noise scales for Fig. 2 (default %(default)s)")
    p.add_argument("--num-draws", type=int, default=defaults.num_draws, help="noise draws per sigma (default %(default)s)")
    p.add_argument("--tilt", type=float, action="append", default=None,
                   help=f"t of the Def. 2 t-weighted statistics; repeat for several (default {list(defaults.tilts)})")
    p.add_argument("--k", type=int, default=defaults.k, help="top Hessian eigenvalues (default %(default)s)")
    p.add_argument("--smallest", type=int, default=defaults.smallest,
                   help="also this many smallest (most negative) eigenvalues (default %(default)s)")
    p.add_argument("--lanczos-iters", type=int, default=defaults.lanczos_max_iter,
                   help="maximum Lanczos iterations (default %(default)s)")
    p.add_argument("--lanczos-tol", type=float, default=defaults.lanczos_tol, help="Lanczos tolerance (default %(default)s)")
    p.add_argument("--trace-samples", type=int, default=defaults.trace_samples,
                   help="Hessian-vector products for the trace (default %(default)s)")
    p.add_argument("--trace-method", choices=["hutchinson", "hutch++"], default=defaults.trace_method)
    p.add_argument("--sam-rho", type=float, default=defaults.sam_rho, help="SAM radius for Table 3 (default %(default)s)")
    p.add_argument("--tsam-tilt", type=float, default=defaults.tsam_tilt, help="t of the TSAM column (default %(default)s)")
    p.add_argument("--tsam-radius", type=float, default=None, help="TSAM noise radius (default: --sam-rho)")
    p.add_argument("--tsam-noise", choices=["uniform", "gaussian"], default=defaults.tsam_noise)
    p.add_argument("--tsam-sampler", choices=["ascent", "ball"], default=defaults.tsam_sampler,
                   help="TSAM draws: Algorithm 2's noisy ascent points, or the plain noise ball of Eq. 3 "
                   "(default %(default)s)")
    p.add_argument("--cross-draws", type=int, default=defaults.cross_draws,
                   help="Monte-Carlo draws of the TSAM loss, even (default %(default)s)")
    p.add_argument("--max-batches", type=int, default=None, help="use only the first N batches of each loader")
    p.add_argument("--mode", choices=["eval", "train"], default=defaults.mode,
                   help="BatchNorm/dropout behaviour while measuring (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--only", type=lambda s: tuple(x for x in s.split(",") if x), default=ANALYSES,
                   help=f"comma-separated subset of {','.join(ANALYSES)} (default: all)")
    p.add_argument("--no-progress", action="store_true", help="never show progress bars")
    from .._threads import add_threads_argument

    add_threads_argument(p)
    p.set_defaults(run=run)


def _unique(label: str, taken: dict[str, Any]) -> str:
    if label not in taken:
        return label
    index = 2
    while f"{label} ({index})" in taken:
        index += 1
    return f"{label} ({index})"


def run(args: argparse.Namespace) -> int:
    from .._threads import configure_threads
    from ..analysis.report import ReportSettings, write_flatness_report

    threads = configure_threads(args.threads)

    try:
        settings = ReportSettings(
            sigmas=tuple(args.sigmas), num_draws=args.num_draws,
            tilts=tuple(args.tilt) if args.tilt else ReportSettings.tilts, k=args.k, smallest=args.smallest,
            lanczos_max_iter=args.lanczos_iters, lanczos_tol=args.lanczos_tol, trace_samples=args.trace_samples,
            trace_method=args.trace_method, sam_rho=args.sam_rho, tsam_tilt=args.tsam_tilt,
            tsam_radius=args.tsam_radius, tsam_noise=args.tsam_noise,
            tsam_sampler=args.tsam_sampler, cross_draws=args.cross_draws,
            max_batches=args.max_batches, mode=args.mode, seed=args.seed, analyses=args.only,
            progress=False if args.no_progress else None,
        )
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"tiltedsam analyze: {exc}") from exc
    try:
        from ..harness.rundata import load_for_analysis
    except ImportError as exc:
        raise SystemExit(f"tiltedsam analyze needs tiltedsam.harness to read checkpoints ({exc})") from exc
    models: dict[str, tuple[Any, Any, Any, Any]] = {}
    metadata: dict[str, dict[str, Any]] = {}
    for path in args.checkpoints:
        try:
            target = load_for_analysis(path, device=args.device)
        except ValueError as exc:  # CheckpointError: missing, unreadable or of another format
            raise SystemExit(f"tiltedsam analyze: {exc}") from None
        label = _unique(str(target.label), models)
        models[label] = (target.model, target.loss_fn, target.train, target.test)
        metadata[label] = {**dict(target.meta or {}), "checkpoint": str(path), "threads": threads.threads}
    report = write_flatness_report(models, args.out, settings, metadata=metadata)
    with open(report["files"]["markdown"], encoding="utf-8") as stream:
        print(stream.read())
    print("wrote " + ", ".join(report["files"].values()))
    return 0

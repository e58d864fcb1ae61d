"""``tiltedsam toy fig1|fig5|fig6|all``: the paper's 1-D toy problems, computed exactly."""

from __future__ import annotations

import argparse
import math

FIGURES = ("fig1", "fig5", "fig6", "all", "wells")


def _float_list(name: str, allow_inf: bool = False):
    def parse(text: str) -> list[float]:
        values = []
        for item in text.split(","):
            item = item.strip()
            try:
                value = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name} must be comma-separated numbers, got {item!r}") from None
            if math.isnan(value) or value < 0 or (math.isinf(value) and not allow_inf):
                allowed = "numbers >= 0 (or inf)" if allow_inf else "finite numbers >= 0"
                raise argparse.ArgumentTypeError(f"{name} must be {allowed}, got {item!r}")
            values.append(value)
        return values

    return parse


def _sample_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--samples must be comma-separated integers >= 1, got {item!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"--samples must be integers >= 1, got {value}")
        values.append(value)
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "toy",
        help="the paper's 1-D toy problems (Fig. 1, 5, 6): exact objectives, trajectories, figures",
        description="Exact ERM / SAM / TSAM objectives of the paper's 1-D problems by quadrature; gradient-descent "
        "trajectories (Fig. 1) and objective sweeps over rho (Fig. 5: SAM, Fig. 6: TSAM). Writes PNG figures and "
        "Markdown/CSV tables, and prints the tables.",
    )
    p.add_argument("figure", choices=FIGURES, help="which figure to make ('all': the three paper figures; 'wells': "
                   "two quadratic wells in d dimensions whose preference under L^t flips at a known t, with "
                   "ERM/SAM/TSAM runs counted by the well they end in)")
    p.add_argument("--out", default="results/toy", help="output folder (default results/toy)")
    p.add_argument("--rho", type=float, default=0.2, help="fig1: neighbourhood radius (default 0.2)")
    p.add_argument("--rhos", type=_float_list("--rhos"), default=None,
                   help="fig5/fig6: comma-separated radii (default 0,0.1,...,0.8)")
    p.add_argument("--lr", type=float, default=0.005, help="fig1: learning rate (default 0.005)")
    p.add_argument("--steps", type=int, default=2000, help="fig1: gradient steps (default 2000)")
    p.add_argument("--start", type=float, default=0.5, help="fig1: initial θ (default 0.5)")
    p.add_argument("--tilts", type=_float_list("--tilts", allow_inf=True), default=None,
                   help="comma-separated tilts t (inf allowed); default 0,1,5,10,20,100 for fig1 and 0.01 for fig6")
    p.add_argument("--samples", type=_sample_list, default=None,
                   help="fig1: sample sizes s of the sampled TSAM runs, comma-separated, or 'none' (default 10,1000)")
    p.add_argument("--seed", type=int, default=0, help="fig1: seed of the sampled runs (default 0)")
    p.add_argument("--repeats", type=int, default=1,
                   help="fig1: repeat the sampled runs with seeds seed..seed+N-1 and tabulate where they end "
                   "(default 1: no repeats)")
    p.add_argument("--tilt", choices=("auto",), default=None,
                   help="fig1: 'auto' runs TSAM with the optimizer's target-ESS tilt rule instead of fixed --tilts "
                   "(exact and with the --samples sizes) and writes fig1_auto.png/.md/.csv")
    p.add_argument("--target-ess", type=float, default=0.5,
                   help="fig1 --tilt auto: target ESS as a fraction of the samples, in (0, 1] (default 0.5)")
    p.add_argument("--max-tilt", type=float, default=1000.0, help="fig1 --tilt auto: cap on t (default 1000)")
    p.add_argument("--measure", choices=("uniform", "gaussian"), default="uniform",
                   help="distribution μ of ε on [-ρ, ρ] (gaussian: std ρ/2, truncated; default uniform)")
    wells = p.add_argument_group("wells")
    wells.add_argument("--dim", type=int, default=4, help="wells: dimension d (default 4)")
    wells.add_argument("--distance", type=float, default=4.0, help="wells: distance between the minima (default 4)")
    wells.add_argument("--radius", type=float, default=0.5, help="wells: noise radius r (default 0.5)")
    wells.add_argument("--sharp", type=float, default=10.0, help="wells: well A's sharp curvature (default 10)")
    wells.add_argument("--num-sharp", type=int, default=2, help="wells: well A's number of sharp directions (default 2)")
    wells.add_argument("--flat", type=float, default=0.5, help="wells: well A's other curvatures (default 0.5)")
    wells.add_argument("--isotropic", type=float, default=7.0, help="wells: well B's curvature (default 7)")
    wells.add_argument("--starts", type=int, default=20, help="wells: runs per optimizer and t (default 20)")
    wells.add_argument("--naive-samples", type=int, default=16,
                       help="wells: samples of the naive-sampler TSAM, the near-exact reference (default 16)")
    wells.add_argument("--wells-steps", type=int, default=40, help="wells: steps per run (default 40)")
    wells.add_argument("--wells-lr", type=float, default=0.05, help="wells: learning rate (default 0.05)")
    from .._threads import add_threads_argument

    add_threads_argument(p, " (default 1: the tensors are tiny)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._threads import configure_threads
    from ..toy.figures import FIG1_SAMPLES, FIG1_TILTS, SWEEP_RHOS, run_fig1, run_objective_sweep

    if not (math.isfinite(args.rho) and args.rho >= 0):
        raise SystemExit(f"--rho must be a finite number >= 0, got {args.rho}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise SystemExit(f"--lr must be a finite number > 0, got {args.lr}")
    if args.steps < 0:
        raise SystemExit(f"--steps must be >= 0, got {args.steps}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    configure_threads(args.threads, default_cap=1)  # tiny tensors: more threads only add contention
    if args.figure == "wells":
        return _run_wells(args)
    figures = ("fig1", "fig5", "fig6") if args.figure == "all" else (args.figure,)
    if args.tilt == "auto" and args.figure != "fig1":
        raise SystemExit(f"--tilt auto applies to fig1 only, got figure {args.figure!r}")
    if args.tilt == "auto" and not (0 < args.target_ess <= 1):
        raise SystemExit(f"--target-ess must be in (0, 1], got {args.target_ess}")
    if args.tilt == "auto" and not (math.isfinite(args.max_tilt) and args.max_tilt >= 0):
        raise SystemExit(f"--max-tilt must be a finite number >= 0, got {args.max_tilt}")
    for name in figures:
        if name == "fig1" and args.tilt == "auto":
            from ..toy.adaptive import run_fig1_auto

            report = run_fig1_auto(
                args.out, rho=args.rho, lr=args.lr, steps=args.steps, start=args.start, target_ess=args.target_ess,
                max_tilt=args.max_tilt, samples=tuple(FIG1_SAMPLES if args.samples is None else args.samples),
                seed=args.seed, measure=args.measure)
        elif name == "fig1":
            report = run_fig1(
                args.out,
                rho=args.rho,
                lr=args.lr,
                steps=args.steps,
                start=args.start,
                tilts=FIG1_TILTS if args.tilts is None else args.tilts,
                samples=FIG1_SAMPLES if args.samples is None else args.samples,
                seed=args.seed,
                repeats=args.repeats,
                measure=args.measure,
                progress=True,
            )
        else:
            report = run_objective_sweep(
                args.out,
                name,
                "sam" if name == "fig5" else "tsam",
                rhos=SWEEP_RHOS if args.rhos is None else args.rhos,
                tilts=(0.01,) if args.tilts is None else args.tilts,
                measure=args.measure,
            )
        for title, table in report.tables.items():
            print(f"## {title}\n\n{table}\n")
        print(f"{name}: wrote {', '.join(str(f) for f in report.files)} in {report.seconds:.1f} s\n")
    return 0


def _run_wells(args: argparse.Namespace) -> int:
    from ..toy.wells import WellsProblem, ground_truth, run_wells, write_wells

    for name in ("starts", "naive_samples", "wells_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.wells_lr) and args.wells_lr > 0):
        raise SystemExit(f"error: --wells-lr must be a finite number > 0, got {args.wells_lr}")
    try:
        problem = WellsProblem(dim=args.dim, distance=args.distance, radius=args.radius, sharp=args.sharp,
                               flat=args.flat, num_sharp=args.num_sharp, isotropic=args.isotropic)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    tilts = args.tilts
    if tilts is None:  # default grid: 0 and points spanning the flip
        flip = ground_truth(problem, [0.0], draws=20_000, seed=args.seed).flip
        tilts = [0.0] if math.isnan(flip) else [0.0, round(flip / 3, 2), round(3 * flip, 2)]
    if any(math.isinf(t) for t in tilts):
        raise SystemExit("error: --tilts must be finite for wells")
    result = run_wells(problem, tilts, count=args.starts, steps=args.wells_steps, lr=args.wells_lr,
                       naive_samples=args.naive_samples, seed=args.seed, truth_draws=50_000,
                       progress=lambda line: print(line, flush=True))
    write_wells(result, args.out)
    for title, table in result.tables.items():
        print(f"## {title}\n\n{table}\n")
    print(f"wells: wrote {', '.join(str(f) for f in result.files)} in {result.seconds:.1f} s")
    return 0

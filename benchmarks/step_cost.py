"""Per-step cost of ERM (SGD), SAM and TSAM (s = 1, 3, 5) — or of every baseline — side by side in one run.

A small CNN on a batch of 64 random 3x32x32 images. For each optimizer: the median wall time of one
optimizer step over repeats (after warm-up; the optimizers are timed round-robin, one step of each per
round, so a change of machine load slows all of them alike), the ratio to the SGD step of the same run, the
ideal ratio (gradient evaluations per step, since the forward/backward dominates), and the extra memory
the optimizer holds during a step (CUDA: ``torch.cuda.max_memory_allocated`` over the step minus the
memory before it; CPU: glibc's heap bytes in use, sampled at the end of every closure call, minus the
bytes in use before the step — Linux only).

    python benchmarks/step_cost.py                  # CPU
    python benchmarks/step_cost.py --device cuda    # GPU
    python benchmarks/step_cost.py --all            # + ESAM2, PGN, RSAM, TSAM with the HMC and naive samplers,
                                                    #   and TSAM's cheap ascent variants at s = 3 and 5
    python benchmarks/step_cost.py --compile        # each optimizer also on a torch.compile'd model, side by side
    python benchmarks/step_cost.py --optimizers sgd sam tsam:num_samples=3 esam2   # any registry names
    python benchmarks/step_cost.py --optimizers registered   # the defaults + every registered optimizer
    python benchmarks/step_cost.py --device cuda --model resnet18 --json step_cost.json   # the paper's scale
    python benchmarks/step_cost.py --all --baseline-src /tmp/baseline/src --rounds 5   # before/after a change
    python benchmarks/step_cost.py --all --threads 1 --clock process --baseline-src /tmp/baseline/src \
        --interleaved --rounds 10 --repeats 8 --warmup 2   # the same, both trees in one process per round

``--baseline-src DIR`` times another copy of the library (e.g. ``git archive <commit> src | tar -x -C DIR/..``)
against this one: ``--rounds`` pairs of subprocesses, one per tree, the two of a pair running at the same
time (so they share the machine's load), each a full round-robin run as above; it reports per optimizer
the median ms/step of each tree, the geometric mean of the per-round ratios (this tree / baseline) and
its one-sided 95% upper bound (t interval on the log ratios), and whether that bound excludes a
slow-down of more than ``SLOWER_MARGIN``. With ``--interleaved`` a round is one process that imports the
baseline tree under another name (``tiltedsam_baseline``) and times the two trees' steps of each
optimizer back to back, alternating which goes first. On the 2-vCPU VM two simultaneous processes slow
each other by whatever the other happens to run (shared cache and the host's scheduling: even identical
SGD steps differed by 0.72-1.19x between the two trees per round), while steps back to back in one
process share the same disturbance.

``tsam:parallel_samples=true`` times the EXPERIMENTAL batched step (``TSAM.step_batched``). On CUDA
``cudnn.benchmark`` is on, every timed step is bracketed by ``torch.cuda.synchronize()``, and the
peak memory of a step (``max_memory_allocated``) is reported next to the extra memory.
"""

from __future__ import annotations

import argparse
import json
import ctypes
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from torch import nn

DEFAULT = ["sgd", "sam", "tsam:num_samples=1", "tsam:num_samples=3", "tsam:num_samples=5"]
BASELINES = ["esam2", "pgn", "rsam", "tsam-hmc", 'tsam-hmc:sampler_options={"num_steps":2}', "tsam-naive"]
#: TSAM's cheap ascent variants (docs/cost.md), at s = 3 and s = 5 (memory should not grow with s,
#: except for the per-sample lazy variant, which keeps s directions between steps)
CHEAP_VARIANTS = [spec for name in ("tsam-shared", "tsam-subbatch", "tsam-lazy", "tsam-shared-lazy")
                  for spec in (name, f"{name}:num_samples=5")]
#: suffix of a spec timed on a torch.compile'd model (--compile)
COMPILED = " [compiled]"
#: with --baseline-src: the slow-down the comparison must exclude for each optimizer (one-sided, 95%)
SLOWER_MARGIN = 0.02
#: the library tree timed (``--src``); ``src`` of the working directory by default
SOURCE = ["src"]


def small_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, classes),
    )


def parse_spec(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON when possible)."""
    name, _, rest = spec.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return name, settings


MODELS = ("small_cnn", "resnet18")
#: registered optimizers that ``--optimizers registered`` leaves out: their step is another's (ESAM1 is SAM's)
SAME_STEP_AS_ANOTHER = {"esam1"}


def make_model(name: str, classes: int = 10) -> nn.Module:
    """``small_cnn`` (this file's) or ``resnet18`` (the harness's CIFAR ResNet18, 3x32x32 inputs)."""
    if name == "small_cnn":
        return small_cnn(classes)
    if name == "resnet18":
        sys.path.insert(0, SOURCE[0])
        from tiltedsam.harness.models import build_model

        cifar = SimpleNamespace(name="cifar-shaped", input_shape=(3, 32, 32), num_classes=classes, info={})
        return build_model("resnet18", cifar)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def expand_specs(specs: list[str]) -> list[str]:
    """``registered`` expands to every registered optimizer (default settings) not yet in the list."""
    sys.path.insert(0, SOURCE[0])
    from tiltedsam.optim.registry import list_optimizers

    out: list[str] = []
    for spec in specs:
        if spec != "registered":
            out.append(spec)
            continue
        names = [entry["name"] for entry in list_optimizers() if entry["name"] not in SAME_STEP_AS_ANOTHER]
        out.extend(name for name in names if name not in {parse_spec(s)[0] for s in specs if s != "registered"})
    return list(dict.fromkeys(out))


def build(spec: str, device: str, seed: int = 0, model_name: str = "small_cnn", batch_size: int = 64,
          classes: int = 10, package: str = "tiltedsam"):
    """The optimizer for ``spec`` on a fresh model and a fixed random batch, and a function running one
    step (``step(watch)``: ``watch`` is called after each closure evaluation; the batched TSAM step
    makes no closure calls). ``package`` is the library copy the optimizer comes from (see ``--interleaved``)."""
    sys.path.insert(0, SOURCE[0])
    create_optimizer = importlib.import_module(package).create_optimizer

    torch.manual_seed(seed)
    spec, compiled = (spec[: -len(COMPILED)], True) if spec.endswith(COMPILED) else (spec, False)
    model = make_model(model_name, classes).to(device)
    net = torch.compile(model) if compiled else model
    name, settings = parse_spec(spec)
    opt = create_optimizer(name, model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, model=model,
                           seed=seed, **settings)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step(watch=None):
        if settings.get("parallel_samples"):
            return opt.step_batched(x, lambda output: loss_fn(output, y))

        def closure(evaluation):  # sub-batch ascent: direction-only evaluations use a fraction of the batch
            inputs, targets = evaluation.batch(x, y)
            loss = loss_fn(net(inputs), targets)
            loss.backward()
            if watch is not None:
                watch()
            return loss

        return opt.step(closure)

    return opt, step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _heap_in_use() -> int | None:
    """Bytes of the C heap in use (glibc mallinfo2: small blocks + mmapped blocks), or None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def measure_memory(step, device: str) -> tuple[float | None, float | None]:
    """MiB the optimizer holds on top of the model during one more step (see the module docstring), and
    on CUDA the step's peak allocated memory in MiB (model, optimizer state, activations): (extra, peak)."""
    if device.startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated()
        return (peak - before) / 2**20, peak / 2**20
    before = _heap_in_use()
    if before is None:
        return None, None
    peak = [before]
    watched = [0]

    def watch():
        watched[0] += 1
        peak[0] = max(peak[0], _heap_in_use() or 0)

    step(watch)
    # the batched step makes no closure call to sample the heap in: no CPU figure for it
    return ((peak[0] - before) / 2**20 if watched[0] else None), None


#: what a step's time is read from: wall time, or this process's CPU time (``--clock process``: on a CPU
#: shared with other work it counts only this process's own work, so other load adds less noise)
CLOCK = [time.perf_counter]


def time_one_step(opt, step, device: str) -> float:
    """Seconds per step on ``CLOCK``; lazy ascent costs more on its refresh steps, so a whole refresh
    period is timed and divided by its length."""
    period = getattr(getattr(opt, "sampler", None), "refresh_every", 1)
    sync(device)
    start = CLOCK[0]()
    for _ in range(period):
        step()
    sync(device)
    return (CLOCK[0]() - start) / period


def time_round_robin(specs: list[str], device: str, warmup: int, repeats: int, **model_options) -> list[dict]:
    runs = [build(spec, device, **model_options) for spec in specs]
    for opt, step in runs:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in specs]
    for _ in range(repeats):
        for k, (opt, step) in enumerate(runs):
            times[k].append(time_one_step(opt, step, device))
    rows = []
    for spec, t, (opt, step) in zip(specs, times, runs):
        extra, peak = measure_memory(step, device)
        rows.append({"spec": spec, "ms": statistics.median(t) * 1e3, "evals": opt.grad_evals_per_step,
                     "extra": extra, "peak": peak})
    return rows


def time_interleaved(specs: list[str], device: str, warmup: int, repeats: int, baseline_package: str,
                     **model_options) -> dict[str, dict[str, float]]:
    """Median ms/step of each spec from this tree and from ``baseline_package`` (the other tree imported
    under another name), timed in one process, the two steps of a spec back to back and their order
    alternating between repeats, so that whatever slows the process slows both alike."""
    trees = {"this": "tiltedsam", "baseline": baseline_package}
    runs = {(spec, tree): build(spec, device, package=package, **model_options)
            for spec in specs for tree, package in trees.items()}
    for _, step in runs.values():
        for _ in range(warmup):
            step()
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for repeat in range(repeats):
        for spec in specs:
            for tree in (trees if repeat % 2 == 0 else reversed(list(trees))):
                times[spec, tree].append(time_one_step(*runs[spec, tree], device))
    return {tree: {spec: statistics.median(times[spec, tree]) * 1e3 for spec in specs} for tree in trees}


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_json(rows: list[dict], meta: dict) -> str:
    """The run as standard JSON (non-finite numbers as null): ``meta`` plus one record per optimizer."""
    base = rows[0]["ms"]
    sam = next((r["ms"] for r in rows if r["spec"] == "sam"), None)
    records = [{"optimizer": r["spec"], "ms_per_step": r["ms"], "ratio_to_sgd": r["ms"] / base,
                "ratio_to_sam": r["ms"] / sam if sam else None, "grad_evals_per_step": r["evals"],
                "extra_mib": r["extra"], "peak_mib": r["peak"]} for r in rows]
    payload = {**meta, "rows": [{k: _finite_or_none(v) for k, v in rec.items()} for rec in records]}
    return json.dumps(payload, indent=2, allow_nan=False) + "\n"


def _interleaved_rounds(args: argparse.Namespace, passed: list[str], trees: dict[str, str],
                        times: dict[str, dict[str, list[float]]]) -> None:
    """``--interleaved``: each round is one process timing both trees back to back (the baseline tree is
    imported as ``tiltedsam_baseline``); ``--jobs`` rounds run at once."""
    passed = [a for a in passed if a != "--interleaved"]
    with tempfile.TemporaryDirectory() as scratch:
        os.symlink(os.path.join(trees["baseline"], "tiltedsam"), os.path.join(scratch, "tiltedsam_baseline"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([trees["this"], scratch])}
        for first in range(0, args.rounds, args.jobs):
            batch = range(first, min(first + args.jobs, args.rounds))
            outputs = [os.path.join(scratch, f"round{r}.json") for r in batch]
            runs = [subprocess.Popen([sys.executable, __file__, *passed, "--src", trees["this"], "--json", out,
                                      "--against-package", "tiltedsam_baseline"], env=env, stdout=subprocess.DEVNULL)
                    for out in outputs]
            if any(run.wait() != 0 for run in runs):
                raise SystemExit(f"a timing run failed in rounds {first + 1}-{batch[-1] + 1}")
            for out in outputs:
                with open(out) as handle:
                    for tree, per_spec in json.load(handle).items():
                        for spec, ms in per_spec.items():
                            times[tree].setdefault(spec, []).append(ms)
            print(f"round {batch[-1] + 1}/{args.rounds} done", file=sys.stderr, flush=True)


def compare_trees(args: argparse.Namespace, baseline: str) -> None:
    """Paired, simultaneous subprocess runs of this script on ``baseline`` and on ``src`` (module docstring)."""
    here = os.path.abspath(SOURCE[0])
    trees = {"baseline": os.path.abspath(baseline), "this": here}
    passed = [a for a in sys.argv[1:]]
    for flag in ("--baseline-src", "--rounds", "--json", "--jobs"):  # options of this comparison, not of each run
        while flag in passed:
            del passed[passed.index(flag):passed.index(flag) + 2]
    times: dict[str, dict[str, list[float]]] = {"baseline": {}, "this": {}}
    if args.interleaved:
        _interleaved_rounds(args, passed, trees, times)
    for round_ in range(0 if args.interleaved else args.rounds):
        # both trees run at the same time, so they share whatever else loads the machine
        with tempfile.TemporaryDirectory() as scratch:
            outputs = {tree: os.path.join(scratch, f"{tree}.json") for tree in trees}
            runs = [subprocess.Popen([sys.executable, __file__, *passed, "--src", trees[tree], "--json", outputs[tree]],
                                     env={**os.environ, "PYTHONPATH": trees[tree]}, stdout=subprocess.DEVNULL)
                    for tree in trees]
            if any(run.wait() != 0 for run in runs):
                raise SystemExit(f"a timing run failed in round {round_ + 1}")
            for tree, out in outputs.items():
                with open(out) as handle:
                    for row in json.load(handle)["rows"]:
                        times[tree].setdefault(row["optimizer"], []).append(row["ms_per_step"])
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    sys.path.insert(0, here)
    from tiltedsam.harness.stats import paired_difference

    print(f"| optimizer | baseline ms/step | this ms/step | ratio (this / baseline), {args.rounds} rounds "
          f"| one-sided 95% upper bound | slower by > {SLOWER_MARGIN:.0%} excluded? |\n|---|---|---|---|---|---|")
    records = []
    for spec, before in times["baseline"].items():
        after = times["this"].get(spec)
        if not after:
            continue
        # geometric mean of the per-round ratios, with a t interval on the log ratios (rounds are pairs)
        logs = paired_difference([math.log(a) for a in after], [math.log(b) for b in before], confidence=0.90)
        upper = math.exp(logs.high) if logs.high is not None else math.inf
        record = {"optimizer": spec, "baseline_ms": statistics.median(before), "this_ms": statistics.median(after),
                  "ratio": math.exp(logs.mean), "ratio_upper_95": _finite_or_none(upper),
                  "within_margin": upper <= 1.0 + SLOWER_MARGIN, "ratios": [a / b for a, b in zip(after, before)]}
        records.append(record)
        print(f"| {spec} | {record['baseline_ms']:.2f} | {record['this_ms']:.2f} | {record['ratio']:.3f} | "
              f"{upper:.3f} | {'yes' if record['within_margin'] else 'no'} |")
    # intersection-union test: "no optimizer is slower by more than the margin" holds at 5% when every
    # one-sided bound is below it, with no multiplicity correction
    verdict = all(r["within_margin"] for r in records)
    print(f"\nevery optimizer within {SLOWER_MARGIN:.0%} (each one-sided 95% upper bound <= {1 + SLOWER_MARGIN:.2f}): "
          f"{'yes' if verdict else 'no'}")
    if args.json:
        from tiltedsam._atomic import atomic_write

        atomic_write(args.json, json.dumps({"baseline": trees["baseline"], "rounds": args.rounds, "rows": records},
                                           indent=2, allow_nan=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help=f"default: {' '.join(DEFAULT)}; 'registered' adds every registered optimizer")
    parser.add_argument("--model", choices=MODELS, default="small_cnn")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (atomically)")
    parser.add_argument("--all", action="store_true",
                        help="also time the baselines, the other samplers and TSAM's cheap ascent variants")
    parser.add_argument("--compile", action="store_true",
                        help="also time every optimizer on a torch.compile'd model (CPU: inductor, needs a C compiler)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="time steps by wall clock (default) or by this process's CPU time (CPU only)")
    parser.add_argument("--src", default="src", help="the library tree to time (default: ./src)")
    parser.add_argument("--baseline-src", default=None, metavar="DIR",
                        help="also time the library in DIR, in alternating subprocesses, and compare (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="with --baseline-src: subprocess pairs to run")
    parser.add_argument("--interleaved", action="store_true",
                        help="with --baseline-src: time both trees in one process per round, steps back to back "
                             "(when simultaneous processes disturb each other)")
    parser.add_argument("--jobs", type=int, default=2, help="with --interleaved: rounds run at once")
    parser.add_argument("--against-package", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    SOURCE[0] = args.src
    if args.clock == "process":
        if args.device.startswith("cuda"):
            parser.error("--clock process measures CPU time; use the wall clock on cuda")
        CLOCK[0] = time.process_time
    if args.baseline_src and not os.path.isdir(os.path.join(args.baseline_src, "tiltedsam")):
        parser.error(f"--baseline-src {args.baseline_src!r} holds no tiltedsam package (give the other tree's src/)")
    if args.interleaved and not args.baseline_src:
        parser.error("--interleaved compares two trees: give --baseline-src DIR")
    if args.rounds < 1 or args.jobs < 1:
        parser.error(f"--rounds and --jobs must be at least 1, got {args.rounds} and {args.jobs}")
    if args.baseline_src:
        return compare_trees(args, args.baseline_src)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.against_package:  # one round of --interleaved
        specs = expand_specs(list(args.optimizers or DEFAULT) + (BASELINES + CHEAP_VARIANTS if args.all else []))
        medians = time_interleaved(specs, args.device, args.warmup, args.repeats, args.against_package,
                                   model_name=args.model, batch_size=args.batch_size, classes=args.classes)
        with open(args.json, "w") as handle:  # a scratch file of the parent's temporary folder
            json.dump(medians, handle)
        return None
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # pick the fastest convolution algorithms, as training would
    specs = expand_specs(list(args.optimizers or DEFAULT) + (BASELINES + CHEAP_VARIANTS if args.all else []))
    if specs[0] != "sgd":
        specs.insert(0, "sgd")
    if args.compile:
        specs += [spec + COMPILED for spec in specs]
    rows = time_round_robin(specs, args.device, args.warmup, args.repeats, model_name=args.model,
                            batch_size=args.batch_size, classes=args.classes)
    base = rows[0]
    sam = next((r for r in rows if r["spec"] == "sam"), None)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    params = sum(p.numel() for p in make_model(args.model, args.classes).parameters())
    print(f"device: {args.device} ({device_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} round-robin steps after {args.warmup} warm-up; model {args.model} with {params} "
          f"parameters ({params * 4 / 2**20:.2f} MiB in float32), batch {args.batch_size}")
    print("| optimizer | ms/step | ratio to SGD | ideal (evals/step) | ratio to SAM | ideal to SAM | extra MiB during step "
          "| peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        to_sam = f"{r['ms'] / sam['ms']:.2f}" if sam else "-"
        extra = "n/a" if r["extra"] is None else f"{r['extra']:.1f}"
        peak = "n/a" if r["peak"] is None else f"{r['peak']:.1f}"
        print(f"| {r['spec']} | {r['ms']:.2f} | {r['ms'] / base['ms']:.2f} | {r['evals']} | {to_sam} | "
              f"{r['evals'] / 2:.2f} | {extra} | {peak} |")
    if args.compile:
        eager = {r["spec"]: r["ms"] for r in rows if not r["spec"].endswith(COMPILED)}
        print("\n| optimizer | eager ms/step | compiled ms/step | compiled / eager |\n|---|---|---|---|")
        for r in rows:
            if r["spec"].endswith(COMPILED):
                plain = r["spec"][: -len(COMPILED)]
                print(f"| {plain} | {eager[plain]:.2f} | {r['ms']:.2f} | {r['ms'] / eager[plain]:.2f} |")
    if args.json:
        from tiltedsam._atomic import atomic_write

        meta = {"device": args.device, "device_name": device_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "model": args.model, "parameters": params,
                "batch_size": args.batch_size, "warmup": args.warmup, "repeats": args.repeats,
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if args.device.startswith("cuda") else None}
        atomic_write(args.json, results_json(rows, meta))
    if any(r["spec"].startswith("tsam") for r in rows):
        from tiltedsam.optim.registry import budget_multiplier

        print(f"\nESAM1 = SAM's step run {budget_multiplier('esam1'):.0f}x as many steps (TSAM's gradient-evaluation "
              "budget with its defaults)")


if __name__ == "__main__":
    main()

"""``tiltedsam train``: one training run from a config file plus ``--set key=value`` overrides."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train one model from a TOML/YAML config (paper recipe by default)",
        description="Train one model. Defaults: the paper's recipe (batch 64, SGD momentum 0.9, weight decay "
                    "5e-4, label smoothing 0.1, constant LR). Example: tiltedsam train --set data.name=digits "
                    "--set model.name=mlp --set optimizer.name=tsam --set optimizer.settings.tilt=5 --out runs/t5")
    p.add_argument("--config", help="TOML, YAML or JSON run config (see docs/harness.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. optimizer.lr=0.03 or budget.kind=grad_evals (repeatable)")
    p.add_argument("--out", help="run directory (same as --set run.out_dir=...)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (config read from the run directory "
                        "when --config is not given)")
    p.add_argument("--stop-after-epochs", type=int, default=None, metavar="N",
                   help="stop after N epochs in total, leaving a checkpoint to --resume from")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N local processes (DistributedDataParallel: gloo on CPU, nccl with one GPU per "
                        "process for run.device=cuda; --set run.parallel=fsdp shards the model with FSDP2 instead); batch_size stays the global batch. For several nodes run "
                        "torchrun --nproc_per_node=N -m tiltedsam train ... instead (see docs/distributed.md)")
    from .._threads import add_threads_argument

    add_threads_argument(p, " (same as --set run.num_threads=N)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..harness.config import ConfigError, load_config, to_dict, to_toml, toml_string
    from ..harness.train import RunInterrupted, train

    overrides = list(args.overrides)
    if args.threads:
        overrides.append(f"run.num_threads={args.threads}")
    if args.out == "":
        raise SystemExit("error: --out is empty; name a directory")
    if args.out:
        overrides.append(f"run.out_dir={toml_string(args.out, '--out')}")
    config_file = args.config
    if args.resume and config_file is None:
        out_dir = args.out or next((o.split("=", 1)[1] for o in overrides if o.startswith("run.out_dir=")), None)
        if out_dir is None:
            raise SystemExit("error: --resume needs --out RUN_DIR (or --config)")
        config_file = Path(args.out or _unquote(out_dir)) / "config.json"
        if not config_file.is_file():
            raise SystemExit(f"error: {str(config_file.parent)!r} is not a run directory (no config.json)")
    try:
        config = load_config(config_file, overrides)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.print_config:
        print(to_toml(to_dict(config)), end="")
        return 0
    from ..harness.distributed import launch, world_from_environment

    if args.nproc < 1:
        raise SystemExit(f"error: --nproc must be >= 1, got {args.nproc}")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise SystemExit(f"error: --stop-after-epochs must be >= 1, got {args.stop_after_epochs}")
    world = world_from_environment(config.run.device, config.run.parallel)  # under torchrun: join its process group
    if world is not None and args.nproc != 1:
        raise SystemExit("error: --nproc cannot be combined with torchrun (torchrun already starts the processes)")
    try:
        if args.nproc > 1:
            result = launch(config, args.nproc, resume=args.resume, stop_after_epochs=args.stop_after_epochs)
        else:
            result = train(config, resume=args.resume, stop_after_epochs=args.stop_after_epochs, world=world)
    except RunInterrupted as exc:
        if world is None or world.is_main:
            print(f"interrupted: {exc}")
        return 3
    except (FileExistsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        if world is not None:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if world is not None and not world.is_main:
        return 0  # rank 0 reports
    print(f"run directory: {config.run.out_dir}")
    print(f"| {result['label']} | final test acc {100 * result['final_test_acc']:.2f}% | best-val-epoch test acc "
          f"{100 * result['best_val_test_acc']:.2f}% (epoch {result['best_val_epoch']}) | {result['steps']} steps | "
          f"{result['grad_evals']} gradient evaluations | {result['train_seconds']:.1f} s | "
          f"{result['threads']} thread(s) |")
    return 0


def _unquote(value: str) -> str:
    """The value of a ``--set run.out_dir=VALUE`` override (a TOML string, or a bare word)."""
    from ..harness.config import parse_override

    return str(parse_override(f"run.out_dir={value}")[1])

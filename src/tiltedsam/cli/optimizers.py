"""``tiltedsam optimizers``: list every registered optimizer."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("optimizers", help="list the registered optimizers, their defaults and cost")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..optim.registry import list_optimizers

    rows = list_optimizers()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in r["defaults"].items()) or "-"
        budget = f" (budget: {r['budget_reference']})" if r.get("budget_reference") else ""
        print(f"{r['name']:<{width}}  evals/step={r['grad_evals_per_step']:<3} {r['description']}{budget}  [{defaults}]")
    return 0

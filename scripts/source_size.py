"""Size of ``src/`` at one or more git revisions, in three measures, for the whole package and two areas.

    python scripts/source_size.py 4eb1b35 HEAD        # before the layout change, and now

Measures per revision: physical lines (``wc -l``), code lines (lines holding a token other than a
comment, outside docstrings) and statements (``ast.stmt`` nodes: blind to line wrapping and prose).
Areas: the optimizer core (``tilt.py``, ``functional.py``, ``optim/`` and the samplers, which lived in
a top-level ``samplers/`` package before; the sharded-checkpoint module ``optim/dcp.py`` is a feature of
its own and left out) and the harness modules the run-storage layout rewrote.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import tokenize

PACKAGE = "src/tiltedsam/"
HARNESS_LAYOUT = {f"{PACKAGE}harness/{name}.py" for name in (
    "train", "checkpoints", "checkpoint_checks", "rundir", "rundata", "sweep", "report", "report_input",
    "compare", "stats")} | {f"{PACKAGE}_tables.py"}


def in_optimizer_core(path: str) -> bool:
    if path.endswith("optim/dcp.py"):
        return False
    return path in (f"{PACKAGE}tilt.py", f"{PACKAGE}functional.py") or path.startswith(
        (f"{PACKAGE}optim/", f"{PACKAGE}samplers/"))


AREAS = {"all of src/": lambda path: True, "optimizer core": in_optimizer_core,
         "harness storage modules": HARNESS_LAYOUT.__contains__}


def python_files(revision: str) -> dict[str, str]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", revision, "src"], capture_output=True,
                           text=True, check=True).stdout.split()
    return {name: subprocess.run(["git", "show", f"{revision}:{name}"], capture_output=True, text=True,
                                 check=True).stdout for name in names if name.endswith(".py")}


def docstring_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def measure(text: str) -> tuple[int, int, int]:
    """(physical lines, code lines, statements) of one module's source."""
    tree = ast.parse(text)
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skipped:
            code.update(range(token.start[0], token.end[0] + 1))
    statements = sum(isinstance(node, ast.stmt) for node in ast.walk(tree))
    return text.count("\n"), len(code - docstring_lines(tree)), statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="+", help="git revisions, e.g. 4eb1b35 HEAD")
    args = parser.parse_args()
    sizes = {revision: {name: measure(text) for name, text in python_files(revision).items()}
             for revision in args.revisions}
    print("| area | revision | physical lines | code lines | statements |\n|---|---|---|---|---|")
    for area, member in AREAS.items():
        for revision, per_file in sizes.items():
            total = [sum(values) for values in zip(*(v for k, v in per_file.items() if member(k)))] or [0, 0, 0]
            print(f"| {area} | {revision} | {total[0]:,} | {total[1]:,} | {total[2]:,} |")


if __name__ == "__main__":
    main()

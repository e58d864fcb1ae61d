"""Mutation testing of the math core and the optimizers: ``make mutation`` (not part of CI: ~11 min with two workers).

Runs mutmut (pinned in the ``mutation`` extra) over ``tilt.py``, ``functional.py``, ``optim/`` and its
samplers (the scope in ``[tool.mutmut]`` of pyproject.toml) with the fast, targeted test selection
configured there, one thread per worker (``--workers``, default 1), then prints the kill rate per file and overall, and writes
the survivors to ``mutants/survivors.txt`` (``mutmut show NAME`` prints a survivor's diff).

Usage::

    make mutation                                  # everything, one worker (about 20 min on an idle 2-core VM)
    .venv/bin/python scripts/mutation.py --workers 2   # everything, two mutants at once (11 min there)
    make mutation MUTANTS='tiltedsam.tilt.*'       # a sample: mutmut name patterns (fnmatch)
    .venv/bin/python scripts/mutation.py --report  # only re-print the figures of the last run

Kill rate = (killed + timeout) / (all mutants run); "no tests" mutants (code no selected test
reaches) and survivors count against it. Mutants judged equivalent (listed with the reason in
``scripts/mutation-equivalent.txt``) are also reported separately: the second rate leaves them out.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
EQUIVALENT = ROOT / "scripts" / "mutation-equivalent.txt"
CAUGHT = {"killed", "timeout", "caught by type check"}


def module_of(name: str) -> str:
    """``tiltedsam.optim.sam.xǁSAMǁ_perturb__mutmut_3`` -> ``tiltedsam.optim.sam``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def equivalent_names() -> set[str]:
    if not EQUIVALENT.exists():
        return set()
    names = set()
    for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line.split()[0])
    return names


def report() -> int:
    out = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True, check=True)
    status: dict[str, str] = {}
    for line in out.stdout.splitlines():
        if ": " in line:
            name, state = line.strip().rsplit(": ", 1)
            status[name] = state
    if not status:
        print("no mutation results: run `make mutation` first", file=sys.stderr)
        return 1
    equivalent = equivalent_names() & set(status)
    per_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, state in status.items():
        per_module[module_of(name)][state] += 1
    print(f"\n{'file':<28} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'kill rate':>9}")
    for module in sorted(per_module):
        counts = per_module[module]
        total = sum(counts.values())
        caught = sum(counts[s] for s in CAUGHT)
        print(f"{module.replace('tiltedsam.', ''):<28} {total:>7} {caught:>7} {counts['survived']:>8} "
              f"{counts['no tests']:>8} {100 * caught / total:>8.1f}%")
    total = len(status)
    caught = sum(1 for s in status.values() if s in CAUGHT)
    print(f"{'all':<28} {total:>7} {caught:>7} {sum(1 for s in status.values() if s == 'survived'):>8} "
          f"{sum(1 for s in status.values() if s == 'no tests'):>8} {100 * caught / total:>8.1f}%")
    missed = sorted(n for n, s in status.items() if s not in CAUGHT)
    (ROOT / "mutants").mkdir(exist_ok=True)
    (ROOT / "mutants" / "survivors.txt").write_text(
        "".join(f"{n}: {status[n]}{'  (equivalent)' if n in equivalent else ''}\n" for n in missed), encoding="utf-8")
    print(f"\nkill rate: {100 * caught / total:.1f}% of {total} mutants ({caught} killed)")
    if equivalent:
        relevant = total - len(equivalent)
        caught_relevant = caught - sum(1 for n in equivalent if status[n] in CAUGHT)
        print(f"kill rate over non-equivalent mutants: {100 * caught_relevant / relevant:.1f}% "
              f"({caught_relevant} of {relevant}; {len(equivalent)} judged equivalent, see {EQUIVALENT.name})")
    print("survivors: mutants/survivors.txt  (diff of one: .venv/bin/mutmut show NAME)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", nargs="*", help="mutant name patterns (fnmatch), e.g. 'tiltedsam.tilt.*'")
    parser.add_argument("--report", action="store_true", help="only print the figures of the last run")
    parser.add_argument("--workers", type=int, default=1, help="mutants tested at once (default 1: an idle core each)")
    parser.add_argument("--keep", action="store_true", help="keep mutants/ (mutmut then reruns only what changed)")
    args = parser.parse_args()
    if not args.report:
        if not Path(MUTMUT).exists():
            print(f"mutmut not found at {MUTMUT}: pip install -e '.[mutation]'", file=sys.stderr)
            return 1
        if not args.keep and not args.patterns:
            shutil.rmtree(ROOT / "mutants", ignore_errors=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.monotonic()
        code = subprocess.run([MUTMUT, "run", "--max-children", str(args.workers), *args.patterns], cwd=ROOT, env=env).returncode
        print(f"\nmutmut run: exit {code}, {time.monotonic() - start:.0f} s")
        if code not in (0, 1):  # mutmut exits 1 when mutants survive
            return code
    return report()


if __name__ == "__main__":
    sys.exit(main())

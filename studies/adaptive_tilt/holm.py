"""Re-read the adaptive-tilt study's paired comparisons under a Holm correction, from its committed summary.

    python studies/adaptive_tilt/holm.py        # Markdown table on stdout

Only the summary (n, mean difference and its 95% t interval per comparison) was kept, so the per-seed
differences' standard deviation is recovered from the interval's half-width,
``s_d = half_width * sqrt(n) / t_{0.975, n-1}``, and the p-value and minimal detectable effect follow
from it exactly (the interval was a Student t interval on the paired differences).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from scipy.stats import t as student_t

from tiltedsam.harness.stats import holm, minimal_detectable_effect

HERE = Path(__file__).resolve().parent


def main() -> None:
    with (HERE / "results" / "paired.csv").open() as handle:
        rows = list({(r["label"], r["reference"]): r for r in csv.DictReader(handle)}.values())  # the file repeats
        # the auto-vs-grid rows (written by two tables of the study); each comparison counts once
    p_values, details = [], []
    for row in rows:
        n, mean, low, high = int(row["n"]), float(row["mean"]), float(row["low"]), float(row["high"])
        sd = (high - low) / 2 * math.sqrt(n) / float(student_t.ppf(0.975, n - 1))
        p = 1.0 if sd == 0 and mean == 0 else float(2 * student_t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
        p_values.append(p)
        details.append((row["label"], row["reference"], n, 100 * mean, 100 * low, 100 * high, p,
                        100 * minimal_detectable_effect(sd, n)))
    adjusted = holm(p_values)
    print(f"| optimizer | reference | n | difference, points [95% CI] | p | Holm p ({len(rows)} comparisons) | MDE, points |")
    print("|---|---|---|---|---|---|---|")
    for (label, ref, n, mean, low, high, p, mde), q in zip(details, adjusted):
        print(f"| {label} | {ref} | {n} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] | {p:.3f} | {q:.3f} | {mde:.2f} |")
    print(f"\n{sum(q < 0.05 for q in adjusted)} of {len(rows)} comparisons significant after Holm at 0.05; "
          f"median MDE {sorted(d[-1] for d in details)[len(details) // 2]:.2f} points.")


if __name__ == "__main__":
    main()

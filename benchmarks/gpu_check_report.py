"""Collects the parts of ``benchmarks/gpu_check.sh`` into one JSON file and prints them as tables.

    python benchmarks/gpu_check_report.py OUT_DIR      # reads OUT_DIR/*, writes OUT_DIR/gpu_check.json

Inputs (each optional: a part that failed or timed out is reported as such, never silently dropped):
``parts.tsv`` (name, exit status, seconds of each part), ``device.json``, ``cuda_tests.xml`` (JUnit
XML of ``pytest -m cuda``), ``step_cost.json`` (``benchmarks/step_cost.py --json``) and
``smoke/result.json`` (the harness's result of the training smoke run). Exit status 1 when a part failed.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

__all__ = ["collect", "render", "main"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parts(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split("\t")
            if len(fields) == 3:
                name, status, seconds = fields
                rows.append({"part": name, "exit_status": int(status), "seconds": round(float(seconds), 2),
                             "timed_out": int(status) in (124, 137)})
    return rows


def _junit(path: Path) -> dict[str, Any] | None:
    """Counts of a pytest JUnit XML report, and the ids of failed tests."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        if case.find("failure") is not None:
            counts["failures"] += 1
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("error") is not None:
            counts["errors"] += 1
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def _finite(value: Any) -> Any:
    """JSON the project writes holds no NaN/Infinity: non-finite numbers become null (recursively)."""
    from tiltedsam._json import finite_or_none  # imported late: the caller may put src/ on sys.path first

    return finite_or_none(value)


def _batched_against_loop(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each ``tsam:...parallel_samples=true`` row, its time and peak memory against the same spec looped."""
    by_spec = {r["optimizer"]: r for r in rows}
    pairs = []
    for spec, row in by_spec.items():
        if "parallel_samples=true" not in spec:
            continue
        loop_spec = spec.replace(",parallel_samples=true", "").replace(":parallel_samples=true", "")
        loop = by_spec.get(loop_spec)
        if loop is None:
            continue
        peak = None
        if row.get("peak_mib") and loop.get("peak_mib"):
            peak = row["peak_mib"] / loop["peak_mib"]
        pairs.append({"batched": spec, "loop": loop_spec, "time_ratio": row["ms_per_step"] / loop["ms_per_step"],
                      "peak_memory_ratio": peak})
    return pairs


def collect(out_dir: str | Path) -> dict[str, Any]:
    """Everything the check produced, as one JSON-ready dict (see the module docstring)."""
    out = Path(out_dir)
    parts = _parts(out / "parts.tsv")
    step_cost = _read_json(out / "step_cost.json")
    smoke = _read_json(out / "smoke" / "result.json")
    report = {
        "format": "tiltedsam.gpu_check/1",
        "device": _read_json(out / "device.json"),
        "parts": parts,
        "ok": bool(parts) and all(p["exit_status"] == 0 for p in parts),
        "cuda_tests": _junit(out / "cuda_tests.xml"),
        "step_cost": step_cost,
        "batched_against_loop": _batched_against_loop(step_cost["rows"]) if step_cost else [],
        "fsdp": _read_json(out / "fsdp.json"),
        "smoke_run": None if smoke is None else {
            key: smoke.get(key) for key in ("optimizer", "steps", "epochs", "grad_evals", "train_seconds",
                                            "wall_seconds", "final_train_loss", "final_test_acc", "best_val_acc")
        },
    }
    return _finite(report)


def _number(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what the script prints)."""
    lines = []
    device = report.get("device") or {}
    lines.append(f"device: {device.get('name', 'unknown')} ({device.get('device', '?')}), torch {device.get('torch', '?')}, "
                 f"CUDA {device.get('cuda')}, cuDNN {device.get('cudnn')}")
    lines += ["", "| part | exit status | seconds |", "|---|---|---|"]
    for part in report["parts"]:
        status = f"{part['exit_status']}" + (" (timed out)" if part["timed_out"] else "")
        lines.append(f"| {part['part']} | {status} | {part['seconds']:.1f} |")
    tests = report.get("cuda_tests")
    lines.append("")
    if tests is None:
        lines.append("pytest -m cuda: no report")
    else:
        lines.append(f"pytest -m cuda: {tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped" + (f"; failed: {', '.join(tests['failed'])}" if tests["failed"] else ""))
    cost = report.get("step_cost")
    if cost:
        lines += ["", f"step cost: {cost['model']} ({cost['parameters']} parameters), batch {cost['batch_size']}, "
                      f"median of {cost['repeats']} steps",
                  "| optimizer | ms/step | ratio to SGD | ratio to SAM | evals/step | extra MiB | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in cost["rows"]:
            lines.append(f"| {r['optimizer']} | {_number(r['ms_per_step'])} | {_number(r['ratio_to_sgd'])} | "
                         f"{_number(r['ratio_to_sam'])} | {r['grad_evals_per_step']} | {_number(r['extra_mib'], 1)} | "
                         f"{_number(r['peak_mib'], 1)} |")
    for pair in report.get("batched_against_loop", []):
        peak = pair["peak_memory_ratio"]
        lines.append(f"batched / loop ({pair['loop']}): time {_number(pair['time_ratio'])}x, "
                     f"peak memory {'n/a' if peak is None else f'{peak:.2f}x'}")
    smoke = report.get("smoke_run")
    lines.append("")
    if smoke is None:
        lines.append("training smoke run: no result")
    else:
        lines.append(f"training smoke run ({smoke['optimizer']}): {smoke['steps']} steps in {_number(smoke['train_seconds'], 1)} s, "
                     f"final train loss {_number(smoke['final_train_loss'], 3)}, test accuracy {_number(smoke['final_test_acc'], 3)}")
    fsdp = report.get("fsdp")
    if fsdp is None:
        lines.append("FSDP2 check: no result")
    else:
        rows = fsdp["rows"]
        failed = [r["optimizer"] for r in rows if not r["ok"]]
        worst = max((r["fp32_max_abs_diff"] for r in rows if r["fp32_max_abs_diff"] is not None), default=None)
        lines.append(f"FSDP2 check ({fsdp['nproc']} rank(s), {fsdp['backend']}): {len(rows) - len(failed)} of "
                     f"{len(rows)} optimizers agree with one process (largest float32 difference "
                     f"{'n/a' if worst is None else f'{worst:.1e}'})" + (f"; failed: {', '.join(failed)}" if failed else ""))
    lines.append(f"\noverall: {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python benchmarks/gpu_check_report.py OUT_DIR", file=sys.stderr)
        return 2
    sys.path.insert(0, "src")
    from tiltedsam._atomic import atomic_write

    report = collect(args[0])
    path = Path(args[0]) / "gpu_check.json"
    atomic_write(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(render(report))
    print(f"\nfigures: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/gpu_check.sh and its parts, on the CPU (GPU_CHECK_DEVICE=cpu dry run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiltedsam.optim.registry import list_optimizers

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_module = _load("gpu_check_report")
step_cost = _load("step_cost")

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_cuda" name="test_ok" time="0.1"/>
<testcase classname="tests.test_cuda" name="test_bad" time="0.1"><failure message="x">boom</failure></testcase>
<testcase classname="tests.test_cuda" name="test_skip" time="0.0"><skipped message="no cuda"/></testcase>
</testsuite></testsuites>"""


def _fake_outputs(out: Path) -> None:
    (out / "parts.tsv").write_text("device\t0\t1.5\ncuda_tests\t1\t20.25\nstep_cost\t0\t90.0\nsmoke\t124\t150.0\n")
    (out / "device.json").write_text(json.dumps({"device": "cuda", "name": "Fake GPU", "torch": "2.x"}))
    (out / "cuda_tests.xml").write_text(JUNIT)
    rows = [
        {"optimizer": "sgd", "ms_per_step": 10.0, "ratio_to_sgd": 1.0, "ratio_to_sam": 0.5, "grad_evals_per_step": 1,
         "extra_mib": 0.0, "peak_mib": 100.0},
        {"optimizer": "tsam:num_samples=3", "ms_per_step": 60.0, "ratio_to_sgd": 6.0, "ratio_to_sam": 3.0,
         "grad_evals_per_step": 6, "extra_mib": 80.0, "peak_mib": 200.0},
        {"optimizer": "tsam:num_samples=3,parallel_samples=true", "ms_per_step": 30.0, "ratio_to_sgd": 3.0,
         "ratio_to_sam": 1.5, "grad_evals_per_step": 6, "extra_mib": None, "peak_mib": 500.0},
    ]
    (out / "step_cost.json").write_text(json.dumps({"model": "resnet18", "parameters": 11e6, "batch_size": 64,
                                                     "repeats": 15, "rows": rows}))
    (out / "fsdp.json").write_text(json.dumps({"nproc": 1, "backend": "nccl", "steps": 2, "rows": [
        {"optimizer": "sam", "fp32_max_abs_diff": 2e-7, "bf16_max_abs_diff": 1e-3, "moved": 0.03, "ok": True},
        {"optimizer": "tsam", "fp32_max_abs_diff": 3e-3, "bf16_max_abs_diff": 1e-3, "moved": 0.03, "ok": False}]}))
    (out / "smoke").mkdir()
    # a diverged smoke run may hold NaN (Python's json writes it); the report must not
    (out / "smoke" / "result.json").write_text(
        '{"optimizer": "tsam", "steps": 7, "train_seconds": 3.0, "final_train_loss": NaN, "final_test_acc": 0.5}')


def test_report_collects_every_part_and_flags_failures(tmp_path):
    _fake_outputs(tmp_path)
    report = report_module.collect(tmp_path)
    assert report["ok"] is False  # cuda_tests exited 1, smoke timed out
    assert [p["timed_out"] for p in report["parts"]] == [False, False, False, True]
    assert report["cuda_tests"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "passed": 1,
                                    "failed": ["tests.test_cuda::test_bad"]}
    [pair] = report["batched_against_loop"]
    assert pair["loop"] == "tsam:num_samples=3"
    assert pair["time_ratio"] == pytest.approx(0.5) and pair["peak_memory_ratio"] == pytest.approx(2.5)
    assert report["smoke_run"]["final_train_loss"] is None  # NaN -> null
    json.dumps(report, allow_nan=False)  # standard JSON
    text = report_module.render(report)
    assert "(timed out)" in text and "overall: FAILED" in text and "1 failed" in text
    assert "batched / loop (tsam:num_samples=3): time 0.50x, peak memory 2.50x" in text
    assert "FSDP2 check (1 rank(s), nccl): 1 of 2 optimizers agree with one process (largest float32 difference " \
           "3.0e-03); failed: tsam" in text


def test_report_main_writes_the_json_and_exits_nonzero_on_failure(tmp_path, capsys):
    _fake_outputs(tmp_path)
    assert report_module.main([str(tmp_path)]) == 1
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["device"]["name"] == "Fake GPU"
    assert "Fake GPU" in capsys.readouterr().out


def test_missing_parts_are_reported_not_dropped(tmp_path):
    report = report_module.collect(tmp_path)
    assert report["ok"] is False and report["cuda_tests"] is None and report["smoke_run"] is None
    assert "no report" in report_module.render(report)


def test_step_cost_registered_expands_to_the_registry_without_duplicates():
    specs = step_cost.expand_specs(["sgd", "tsam:num_samples=3", "registered"])
    registered = {entry["name"] for entry in list_optimizers()}
    assert specs[:2] == ["sgd", "tsam:num_samples=3"]
    names = [step_cost.parse_spec(s)[0] for s in specs]
    assert set(names) == registered - step_cost.SAME_STEP_AS_ANOTHER
    assert names.count("tsam") == 1 and names.count("sgd") == 1


def test_step_cost_json_has_ratios_and_no_nan():
    rows = [{"spec": "sgd", "ms": 2.0, "evals": 1, "extra": 0.0, "peak": None},
            {"spec": "sam", "ms": 4.0, "evals": 2, "extra": float("nan"), "peak": None}]
    payload = json.loads(step_cost.results_json(rows, {"device": "cpu"}))
    assert payload["rows"][1]["ratio_to_sgd"] == 2.0 and payload["rows"][0]["ratio_to_sam"] == 0.5
    assert payload["rows"][1]["extra_mib"] is None


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_runs_every_part(tmp_path):
    """The whole script with GPU_CHECK_DEVICE=cpu (tiny sizes, one thread): ~1 minute on the shared 2-core VM."""
    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert [p["part"] for p in report["parts"]] == ["device", "cuda_tests", "step_cost", "smoke", "paper_presets",
                                                    "fsdp"]
    assert report["ok"] is True
    tests = report["cuda_tests"]
    assert tests["tests"] >= 8 and tests["skipped"] == tests["tests"]  # no CUDA here: all skip, none fail
    specs = [row["optimizer"] for row in report["step_cost"]["rows"]]
    for spec in ("sgd", "sam", "tsam:num_samples=1", "tsam:num_samples=3", "tsam:num_samples=5",
                 "tsam:num_samples=3,parallel_samples=true"):
        assert spec in specs
    assert len(report["batched_against_loop"]) == 2
    assert report["smoke_run"]["steps"] == 3
    assert "overall: OK" in done.stdout
    fsdp = json.loads((tmp_path / "out" / "fsdp.json").read_text())  # two gloo ranks in the dry run
    assert fsdp["nproc"] == 2 and {row["optimizer"] for row in fsdp["rows"]} == {e["name"] for e in list_optimizers()}
    assert all(row["ok"] for row in fsdp["rows"])

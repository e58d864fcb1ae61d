"""The figures of docs/reliability.md: real signals, real payloads, real processes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reliability_figures.py [--repeats 3] [--json out.json]

Measures, on tiny sweeps (sklearn digits, MLP, 400 steps per run, 2 workers with 1 thread each):
SIGTERM to the sweep process -> exit; SIGINT to its process group (Ctrl-C) -> exit; ``kill -9`` of
the sweep -> its workers gone; two sweep processes on one database (runs trained, attempts); a YAML
alias bomb refused (time, memory); flipped bytes detected; a ``__reduce__`` payload refused; the
cost of the checkpoint checksum.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sweep_config(folder: Path, runs: int, steps: int, workers: int) -> Path:
    path = folder / "sweep.toml"
    path.write_text(f"""
name = "fig"
out_dir = {json.dumps(str(folder / "out"))}
optimizers = ["sgd"]
seeds = {list(range(runs))}
workers = {workers}
threads_per_worker = 1
progress = false
[base]
data = {{name = "digits", limit = 400}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = {steps}}}
run = {{num_threads = 1, progress = false}}
""")
    return path


def statuses(db: Path) -> Counter:
    try:
        connection = sqlite3.connect(db, timeout=60)
        try:
            return Counter(s for (s,) in connection.execute("SELECT status FROM runs"))
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return Counter()


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def stop_once(how: str) -> dict:
    """Start a 2-worker sweep, wait until both workers train, stop it ``how``; time exit and workers."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = sweep_config(folder, runs=6, steps=400, workers=2)
        db = folder / "out" / "sweep.db"
        sweep = subprocess.Popen([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"], env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        while statuses(db)["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = children(sweep.pid)
        sent = time.monotonic()
        if how == "SIGTERM":
            sweep.send_signal(signal.SIGTERM)
        elif how == "SIGINT to the process group":
            os.killpg(sweep.pid, signal.SIGINT)
        else:
            sweep.send_signal(signal.SIGKILL)
        gone = marked = exited = None
        while time.monotonic() - sent < 60 and (gone is None or exited is None or (marked is None and how != "kill -9")):
            now = time.monotonic() - sent
            if gone is None and not any(alive(p) for p in workers):
                gone = now
            if marked is None and how != "kill -9" and statuses(db)["running"] == 0:
                marked = now
            if exited is None and sweep.poll() is not None:
                exited = now
            time.sleep(0.02)
        code = sweep.wait(timeout=60)
        stderr = sweep.stderr.read()
        counts = statuses(db)
        rerun = subprocess.run([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"], env=ENV,
                               capture_output=True, text=True, timeout=600)
        return {"exit_code": code, "seconds_to_exit": exited, "seconds_until_workers_gone": gone,
                "seconds_until_runs_marked_interrupted": marked,
                "workers": len(workers), "workers_left": sum(alive(p) for p in workers),
                "traceback": "Traceback" in stderr, "after_stop": dict(counts),
                "rerun_exit_code": rerun.returncode, "after_rerun": dict(statuses(db))}


def interpreter_exit() -> float:
    """How long a process that imported the harness takes to exit (teardown), for comparison."""
    code = ("import sys, time; import tiltedsam.harness.sweep, tiltedsam.harness.train; "
            "print(time.time(), flush=True)")
    process = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    printed = float(process.stdout.readline())
    process.wait()
    return time.time() - printed


def two_processes() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = sweep_config(folder, runs=8, steps=60, workers=1)
        command = [sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"]
        processes = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in processes]
        done = [int(out.split(" runs done")[0].rsplit(" ", 1)[-1]) for out in outputs]
        connection = sqlite3.connect(folder / "out" / "sweep.db")
        attempts = Counter(a for (a,) in connection.execute("SELECT attempts FROM runs"))
        connection.close()
        return {"runs": 8, "trained_by_each_process": done, "attempts_histogram": dict(attempts)}


def yaml_bomb() -> dict:
    from tiltedsam.harness.config import ConfigError, load_config

    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefgh", "bcdefghi"):
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text(bomb)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            load_config(path)
            refused = False
        except ConfigError:
            refused = True
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"bytes": len(bomb), "refused": refused, "seconds": seconds, "peak_memory_growth_kib": grown}


def checksum_cost(repeats: int) -> dict:
    from tiltedsam.harness.checkpoints import payload_checksum

    state = {f"layer{i}": torch.randn(1_120_000) for i in range(10)}  # 11.2M float32 values = 44.8 MB
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        payload_checksum({"model": state})
        times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        torch.save({"model": state}, Path(tmp) / "x.pt")
        save_seconds = time.perf_counter() - start
    return {"parameters": 11_200_000, "checksum_seconds_median": statistics.median(times),
            "torch_save_seconds": save_seconds}


def faults() -> dict:
    from tiltedsam.harness.checkpoints import CheckpointError, load_checkpoint
    from tiltedsam.harness.config import load_config
    from tiltedsam.harness.train import RunInterrupted, train

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        config = load_config(None, ["data.name=digits", "data.limit=300", "model.name=mlp", "budget.amount=2",
                                    "run.progress=false", "run.num_threads=1", f"run.out_dir={json.dumps(str(run))}"])
        try:
            train(config, stop_after_epochs=1)
        except RunInterrupted:
            pass
        original = (run / "checkpoint.pt").read_bytes()
        outcomes: Counter = Counter()
        for fraction in torch.linspace(0.05, 0.95, 19).tolist():  # 64 flipped bytes at 19 places
            raw = bytearray(original)
            at = int(fraction * len(raw))
            raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
            (run / "checkpoint.pt").write_bytes(bytes(raw))
            try:
                load_checkpoint(run)
                outcomes["loaded (undetected)"] += 1
            except CheckpointError as exc:
                outcomes["checksum mismatch" if "checksum" in str(exc) else "unreadable"] += 1
        marker = Path(tmp) / "PWNED"
        refused = 0
        for writer in ("torch.save", "pickle"):
            payload = {"model": _Payload(str(marker))}
            if writer == "torch.save":
                torch.save(payload, run / "evil.pt")
            else:
                (run / "evil.pt").write_bytes(pickle.dumps(payload))
            try:
                load_checkpoint(run / "evil.pt")
            except CheckpointError:
                refused += 1
        return {"checkpoint_bytes": len(original), "flipped_64_bytes_at_19_places": dict(outcomes),
                "code_payloads_refused": f"{refused}/2", "payload_command_ran": marker.exists()}


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures: dict = {"interpreter_exit_seconds": interpreter_exit(), "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread per process"}
    for how in ("SIGTERM", "SIGINT to the process group", "kill -9"):
        trials = [stop_once(how) for _ in range(args.repeats)]
        figures[how] = {"trials": trials,
                        "median_seconds_to_exit": statistics.median(t["seconds_to_exit"] for t in trials),
                        "max_seconds_until_workers_gone": max(t["seconds_until_workers_gone"] for t in trials)}
        if how != "kill -9":
            figures[how]["max_seconds_until_runs_marked"] = max(t["seconds_until_runs_marked_interrupted"]
                                                                for t in trials)
        print(how, json.dumps(figures[how]["median_seconds_to_exit"]),
              json.dumps(figures[how]["max_seconds_until_workers_gone"]), flush=True)
    figures["two sweep processes"] = two_processes()
    figures["yaml bomb"] = yaml_bomb()
    figures["checkpoint faults"] = faults()
    figures["checksum cost"] = checksum_cost(args.repeats)
    from tiltedsam import _json

    text = _json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()

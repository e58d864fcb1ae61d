"""Issue 10, rows A-J: each attack or fault, reproduced for real, and what the harness now does.

A malicious checkpoint (a real ``__reduce__`` payload) | B corrupt checkpoint bytes | C divergence
and strict JSON | D ``kill -9``/SIGTERM of a sweep (worker PIDs checked) | E SIGINT to the process
group | F two sweep processes on one database | G hostile inputs -> one line | H YAML alias bomb |
I unsafe labels, seed range, invalid sweeps create nothing | J ``kill -9`` during a write, then
``--resume`` removes the temporary file. The process tests start the real ``tiltedsam`` command.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from tiltedsam import _json, list_optimizers
from tiltedsam.cli import main
from tiltedsam.harness.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from tiltedsam.harness.config import ConfigError, load_config
from tiltedsam.harness.sweep import SweepConfig, claim_run, open_database, run_sweep
from tiltedsam.harness.train import RunDiverged, RunInterrupted, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
        "--set", "budget.amount=2", "--set", "run.progress=false", "--set", "run.num_threads=1"]


def strict_json(text: str):
    """json.loads that fails on NaN/Infinity (what every other JSON reader does)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def stopped_run(tmp_path: Path) -> Path:
    """A real run directory stopped after epoch 1 (checkpoint, config.json, metrics.csv)."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--stop-after-epochs", "1"]) == 3
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def cli_error(argv, capsys) -> str:
    """Run the command; it must fail with exit status 1 and one line ``error: ...`` (printed by the
    central handler, or a command's own ``SystemExit("error: ...")``, which Python prints the same way)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        text = str(exc.code)
        assert text.startswith("error: ") and "\n" not in text, (argv, text)
        return text
    assert code == 1, (argv, code)
    return one_error_line(capsys)


# ---------------------------------------------------------------------------------------- A
class RunsAShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_A_checkpoint_with_a_code_payload_is_refused_and_never_runs(tmp_path, capsys, writer):
    run = stopped_run(tmp_path)
    marker = tmp_path / "PWNED"
    payload = {"format": "tiltedsam.checkpoint/2", "model": RunsAShellCommand(marker)}
    if writer == "torch.save":
        torch.save(payload, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(pickle.dumps(payload))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would print more than the one line
        line = cli_error(["train", "--resume", "--out", str(run)], capsys)
    assert "refusing to load" in line and str(run / "checkpoint.pt") in line
    with pytest.raises(SystemExit, match="refusing to load .*checkpoint.pt"):
        main(["analyze", str(run), "--out", str(tmp_path / "analysis")])
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(run)
    assert not marker.exists()  # the command never ran
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1: nothing trained


def test_A_save_refuses_anything_but_plain_data(tmp_path):
    with pytest.raises(CheckpointError, match=r"payload\['extra'\] is a .*RunsAShellCommand"):
        save_checkpoint(tmp_path / "c.pt", {"extra": RunsAShellCommand(tmp_path / "x")})
    assert not (tmp_path / "c.pt").exists()


# ---------------------------------------------------------------------------------------- B
def test_B_flipped_bytes_are_detected_and_nothing_trains(tmp_path, capsys):
    run = stopped_run(tmp_path)
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    metrics_before = (run / "metrics.csv").read_text()
    line = cli_error(["train", "--resume", "--out", str(run)], capsys)
    assert "checkpoint.pt" in line and ("corrupt" in line or "cannot read" in line)
    assert (run / "metrics.csv").read_text() == metrics_before and not (run / "result.json").exists()


def test_B_a_changed_weight_fails_the_checksum(tmp_path):
    run = stopped_run(tmp_path)
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(iter(payload["model"]))
    payload["model"][name].view(-1)[0] += 1e-3  # one weight, checksum left as it was
    torch.save(payload, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="do not match its checksum"):
        load_checkpoint(run)


# ---------------------------------------------------------------------------------------- C
def test_C_strict_json_helper():
    text = _json.dumps({"a": float("nan"), "b": [float("inf"), 1.5, (2, -float("inf"))], "c": torch.tensor(0.5)})
    assert strict_json(text) == {"a": None, "b": [None, 1.5, [2, None]], "c": 0.5}


def test_C_diverged_sgd_run_fails_loudly(tmp_path, capsys):
    out = tmp_path / "lr1e6"
    line = cli_error(["train", *TINY, "--set", "optimizer.lr=1e6", "--out", str(out)], capsys)
    assert "run diverged" in line and "optimizer.lr" in line
    assert not (out / "result.json").exists()
    strict_json((out / "run.json").read_text())


def test_C_diverged_run_is_failed_in_the_sweep_and_the_report_names_it(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(f"""
name = "div"
out_dir = {json.dumps(str(tmp_path / "out"))}
optimizers = ["sgd"]
seeds = [0]
progress = false
[base]
data = {{name = "digits", limit = 200}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = 4}}
run = {{num_threads = 1, progress = false}}
[grid]
lr = [0.05, 1e6]
""")
    assert main(["sweep", str(tmp_path / "s.toml")]) == 1  # a failed run: non-zero exit
    out = capsys.readouterr().out
    assert "1 runs done, 1 failed" in out and "failed: sgd seed 0" in out and "run diverged" in out
    db = sqlite3.connect(tmp_path / "out" / "sweep.db")
    status = dict(db.execute("SELECT json_extract(setting, '$.\"optimizer.lr\"'), status FROM runs"))
    assert status == {0.05: "done", 1e6: "failed"}
    for (text,) in db.execute("SELECT metrics FROM epochs UNION ALL SELECT result FROM runs WHERE result IS NOT NULL"):
        strict_json(text)
    tilts = db.execute("SELECT json_extract(metrics, '$.tilt') FROM epochs").fetchall()  # SGD has no tilt: NaN
    assert tilts and set(tilts) == {(None,)}  # stored as null, readable by SQLite's JSON functions
    report = (tmp_path / "out" / "report.md").read_text()
    assert "failed: 1" in report and "## Failed runs" in report and "run diverged" in report
    for name in ("summary.json", "sweep.json"):
        strict_json((tmp_path / "out" / name).read_text())


# ---------------------------------------------------------------------------------------- D, E
def sweep_file(tmp_path: Path, runs: int, steps: int, workers: int, name: str = "sig") -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(f"""
name = "{name}"
out_dir = {json.dumps(str(tmp_path / "out"))}
optimizers = ["sgd"]
seeds = {list(range(runs))}
workers = {workers}
threads_per_worker = 1
progress = false
lease_seconds = 30
[base]
data = {{name = "digits", limit = 400}}
model = {{name = "mlp"}}
budget = {{kind = "steps", amount = {steps}}}
run = {{num_threads = 1, progress = false}}
""")
    return config


def start_sweep(config: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tiltedsam", "sweep", str(config), "--no-report"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found.update(int(x) for x in text.split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (only its parent's wait is missing)


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def statuses(db: Path) -> Counter:
    connection = sqlite3.connect(db, timeout=60)
    try:
        return Counter(s for (s,) in connection.execute("SELECT status FROM runs"))
    except sqlite3.OperationalError:  # not created yet
        return Counter()
    finally:
        connection.close()


def two_running(db: Path) -> bool:
    return db.exists() and statuses(db)["running"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
def test_D_killed_sweep_leaves_no_worker_and_a_rerun_resumes(tmp_path, how):
    config = sweep_file(tmp_path, runs=4, steps=400, workers=2)
    db = tmp_path / "out" / "sweep.db"
    sweep = start_sweep(config)
    try:
        assert wait_until(lambda: two_running(db), timeout=120), sweep.stderr
        workers = {pid for pid in children(sweep.pid) if "tiltedsam" in Path(f"/proc/{pid}/cmdline").read_text()
                   or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()}
        assert len(workers) >= 2
        sent = time.monotonic()
        sweep.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
        code = sweep.wait(timeout=30)
        assert wait_until(lambda: not any(alive(p) for p in workers), timeout=10), "a worker outlived the sweep"
        elapsed = time.monotonic() - sent
        stderr = sweep.stderr.read()
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert elapsed < 10
    if how == "SIGTERM":
        assert code == 143 and "Traceback" not in stderr and "interrupted" in stderr
        assert statuses(db)["interrupted"] == 2 and statuses(db)["running"] == 0
    else:
        assert code == -signal.SIGKILL and statuses(db)["running"] == 2  # nobody could mark them
    started_after = statuses(db)
    assert started_after["done"] + started_after["running"] + started_after["interrupted"] <= 4
    rerun = start_sweep(config)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert statuses(db) == {"done": 4}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_E_ctrl_c_to_the_process_group_stops_the_sweep_without_traceback(tmp_path):
    config = sweep_file(tmp_path, runs=6, steps=400, workers=2)
    db = tmp_path / "out" / "sweep.db"
    sweep = start_sweep(config, start_new_session=True)  # its own process group, like a terminal's job
    try:
        assert wait_until(lambda: two_running(db), timeout=120)
        workers = children(sweep.pid)
        os.killpg(sweep.pid, signal.SIGINT)
        sent = time.monotonic()
        code = sweep.wait(timeout=30)
        elapsed = time.monotonic() - sent
        assert wait_until(lambda: not any(alive(p) for p in workers), timeout=10)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    stderr = sweep.stderr.read()
    assert code == 130 and elapsed < 10 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    counts = statuses(db)
    assert counts["running"] == 0 and counts["interrupted"] == 2 and counts["done"] + counts["pending"] == 4
    connection = sqlite3.connect(db)
    assert connection.execute("SELECT SUM(attempts) FROM runs").fetchone()[0] == counts["done"] + 2  # none after
    connection.close()


def test_E_in_process_interrupt_marks_the_run_interrupted(tmp_path, monkeypatch):
    from tiltedsam.harness import train as train_module

    config = SweepConfig(name="inproc", out_dir=str(tmp_path / "o"), optimizers=["sgd"], seeds=[0, 1], progress=False,
                         base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                               "budget": {"kind": "steps", "amount": 3}, "run": {"num_threads": 1}})

    def interrupted(config, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by run_sweep
        time.sleep(5)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(train_module, "train", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        run_sweep(config)
    assert caught.value.exit_code == 143
    assert statuses(tmp_path / "o" / "sweep.db") == {"interrupted": 1, "pending": 1}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


# ---------------------------------------------------------------------------------------- F
@pytest.mark.slow
def test_F_two_sweep_processes_split_the_grid(tmp_path):
    config = sweep_file(tmp_path, runs=8, steps=60, workers=1, name="pair")
    db = tmp_path / "out" / "sweep.db"
    first, second = start_sweep(config), start_sweep(config)
    outputs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    connection = sqlite3.connect(db)
    rows = connection.execute("SELECT status, attempts FROM runs").fetchall()
    connection.close()
    assert rows == [("done", 1)] * 8  # every run trained exactly once
    done = [int(out.split(" runs done")[0].rsplit(" ", 1)[-1]) for out, _ in outputs]
    assert sum(done) == 8


def test_F_claims_are_exclusive_and_stale_leases_are_reclaimed(tmp_path):
    connection = open_database(tmp_path, create=True)
    connection.execute("INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir) "
                       "VALUES ('k1', 'sgd', 'sgd', 0, '{}', '{}', 'r1'), ('k2', 'sgd', 'sgd', 1, '{}', '{}', 'r2')")
    now = time.time()
    assert claim_run(connection, "otherhost:1:a", ["k1", "k2"], since=now) == "k1"
    assert claim_run(connection, "otherhost:2:b", ["k1", "k2"], since=now) == "k2"  # k1 is leased
    assert claim_run(connection, "otherhost:3:c", ["k1", "k2"], since=now) is None
    connection.execute("UPDATE runs SET heartbeat = heartbeat - 120 WHERE run_key='k1'")  # its owner went silent
    assert claim_run(connection, "otherhost:3:c", ["k1", "k2"], since=now, lease_seconds=60) == "k1"
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    connection.execute("UPDATE runs SET owner=? WHERE run_key='k2'", (f"{socket.gethostname()}:{dead.pid}:x",))
    assert claim_run(connection, "otherhost:4:d", ["k2"], since=now) == "k2"  # its owner process is gone
    assert [tuple(r) for r in connection.execute("SELECT attempts FROM runs ORDER BY run_key")] == [(2,), (2,)]
    connection.close()


# ---------------------------------------------------------------------------------------- G
def test_G_hostile_inputs_get_one_line(tmp_path, capsys):
    random_bytes = bytes(range(256)) * 4
    cases = []
    for suffix in (".toml", ".yaml", ".json"):
        (tmp_path / f"rand{suffix}").write_bytes(random_bytes)
        cases.append((["train", "--config", str(tmp_path / f"rand{suffix}")], "not UTF-8"))
        cases.append((["sweep", str(tmp_path / f"rand{suffix}")], "not UTF-8"))
    (tmp_path / "deep.json").write_text("[" * 100_000)
    cases.append((["train", "--config", str(tmp_path / "deep.json")], "nested too deeply"))
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes.db").write_text("not a database\n" * 100)
    cases += [
        (["train", *TINY, "--out", "/proc/x"], "run.out_dir = '/proc/x' cannot be used"),
        (["train", *TINY, "--out", str(tmp_path / "file" / "sub")], "cannot be used as a run directory"),
        (["train", *TINY, "--set", "run.device=quantum", "--out", str(tmp_path / "q")], "run.device = 'quantum'"),
        (["train", *TINY, "--set", "optimizer.settings.bogus=1", "--out", str(tmp_path / "b")],
         "unknown optimizer setting(s) optimizer.settings.bogus"),
        (["train", *TINY, "--set", "optimizer.name=tsam", "--set", "optimizer.settings.tilt='high'",
          "--out", str(tmp_path / "t")], "optimizer 'tsam' rejects its settings"),
        (["train", *TINY, "--set", "model.options.hidden_sizes=[100000000000]", "--out", str(tmp_path / "h")],
         "parameters"),
        (["report", str(tmp_path / "file")], "not an SQLite database"),
        (["report", str(tmp_path / "notes.db")], "not an SQLite database"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", *TINY, "--set", "run.device=cuda", "--out", str(tmp_path / "c")], "run.device = 'cuda'"))
    for argv, expected in cases:
        assert expected in cli_error(argv, capsys), argv
    assert not (tmp_path / "b").exists() and not (tmp_path / "q").exists()  # refused before anything is written
    assert (tmp_path / "file").read_text() == "x"  # SQLite was never let loose on it


def test_G_cifar_archive_with_a_code_payload_is_one_line(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    for part in ("train", "test"):
        (folder / part).write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    line = cli_error(["train", "--set", "data.name=cifar100", "--set", f"data.data_dir={json.dumps(str(tmp_path))}",
                      "--set", "model.name=mlp", "--set", "run.progress=false", "--out", str(tmp_path / "run")], capsys)
    assert "forbidden global" in line and not marker.exists()


# ---------------------------------------------------------------------------------------- H
def test_H_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefgh", "bcdefghi"):
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    assert len(bomb) < 400  # 9**9 = 387 million strings once expanded
    (tmp_path / "bomb.yaml").write_text(bomb)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(tmp_path / "bomb.yaml")
    assert "alias" in cli_error(["sweep", str(tmp_path / "bomb.yaml")], capsys)
    assert time.perf_counter() - start < 5
    (tmp_path / "loop.yaml").write_text("seed: &a [*a]\n")
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "big.json").write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ConfigError, match="configs are at most"):
        load_config(tmp_path / "big.json")


# ---------------------------------------------------------------------------------------- I
def test_I_unsafe_labels_seed_range_and_invalid_sweeps_create_nothing(tmp_path, capsys):
    out = tmp_path / "out"

    def sweep_toml(extra: str, optimizers: str = '["sgd"]') -> Path:
        path = tmp_path / "s.toml"
        path.write_text(f'name = "x"\nout_dir = {json.dumps(str(out))}\noptimizers = {optimizers}\n'
                        f'seeds = [0]\nprogress = false\n{extra}\n[base]\ndata = {{name = "digits", limit = 200}}\n'
                        'model = {name = "mlp"}\n')
        return path

    for extra, optimizers, expected in [
            ('[variants."../../../escape"]\n"optimizer.name" = "sgd"', '["../../../escape"]', "not a safe name"),
            ("", '["sgd", "nope"]', "neither a registered optimizer"),
            ('[grid]\n"optimizer.settings.bogus" = [1]', '["sgd"]', "optimizer.settings.bogus"),
            ("", '["sgd"]\nworkers = 0', "workers = 0")]:
        assert expected in cli_error(["sweep", str(sweep_toml(extra, optimizers))], capsys)
        assert not out.exists()  # nothing created: no directory, no sweep.json, no database
        assert not (tmp_path.parent / "escape").exists()
    assert "seed = 18446744073709551616" in cli_error(["train", *TINY, "--set", f"seed={2**64}", "--out",
                                                       str(tmp_path / "r")], capsys)
    with pytest.raises(ConfigError, match="seed = 4294967296"):
        load_config(None, [f"seed={2**32}"])
    with pytest.raises(SystemExit, match="--stop-after-epochs must be >= 1"):
        main(["train", *TINY, "--out", str(tmp_path / "r"), "--stop-after-epochs", "-1"])
    with pytest.raises(ConfigError, match="stop_after_epochs"):
        train(load_config(None, ["data.name=digits", "model.name=mlp", f"run.out_dir={json.dumps(str(tmp_path))}"]),
              stop_after_epochs=0)


# ---------------------------------------------------------------------------------------- J
def test_J_kill_9_during_a_write_then_resume_removes_the_temporary_file(tmp_path, capsys):
    run = stopped_run(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", f"""
import time
from tiltedsam._atomic import atomic_write_with
def slow(temporary):
    open(temporary, "wb").write(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(60)
atomic_write_with({str(run / 'checkpoint.pt')!r}, slow)
"""], stdout=subprocess.PIPE, text=True, env=ENV)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()  # kill -9 in the middle of the write
    writer.wait()
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert len(leftovers) == 1
    (run / ".metrics.csv.abcd1234.tmp.csv").write_text("half")  # the same for metrics.csv
    (run / "notes.tmp").write_text("a user's file")  # not ours: kept
    assert load_checkpoint(run)["epoch"] == 1  # the checkpoint itself is intact
    assert main(["train", "--resume", "--out", str(run)]) == 0
    capsys.readouterr()
    names = {p.name for p in run.iterdir()}
    assert not any(".tmp" in n for n in names - {"notes.tmp"}) and "notes.tmp" in names
    assert (run / "result.json").exists()


def test_J_next_save_removes_a_stale_temporary_of_the_checkpoint(tmp_path):
    stale = tmp_path / ".checkpoint.pt.zz99yy88.tmp.pt"
    stale.write_bytes(b"partial")
    save_checkpoint(tmp_path / "checkpoint.pt", {"x": 1})
    assert not stale.exists() and load_checkpoint(tmp_path)["x"] == 1


def test_resume_stays_bit_exact_with_the_new_checkpoint_format(tmp_path):
    def config(out):
        return load_config(None, ["data.name=digits", "data.limit=300", "model.name=mlp", "optimizer.name=sam",
                                  "budget.amount=2", "run.progress=false", "run.num_threads=1",
                                  f"run.out_dir={json.dumps(str(out))}"])
    train(config(tmp_path / "a"))
    with pytest.raises(RunInterrupted):
        train(config(tmp_path / "b"), stop_after_epochs=1)
    train(config(tmp_path / "b"), resume=True)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert all(torch.equal(t, b["model"][k]) for k, t in a["model"].items())
    assert len(a["checksum"]) == 64 and a["checksum"] != b["checksum"]  # times differ, so do checksums
    with pytest.raises(RunDiverged):
        train(load_config(None, ["data.name=digits", "data.limit=200", "model.name=mlp", "optimizer.lr=1e6",
                                 "budget.amount=1", "run.progress=false",
                                 f"run.out_dir={json.dumps(str(tmp_path / 'c'))}"]))



def test_C_configs_round_trip_infinite_settings_through_strict_json(tmp_path):
    """tilt = inf is a valid TSAM setting: config files and the sweep database write it as "inf"."""
    out = tmp_path / "inf"
    config = load_config(None, ["data.name=digits", "data.limit=200", "model.name=mlp", "optimizer.name=tsam",
                                "optimizer.settings={tilt = inf, num_samples = 2}", "budget.kind=steps",
                                "budget.amount=2", "run.progress=false", f"run.out_dir={json.dumps(str(out))}"])
    from tiltedsam.harness.config import save_config

    out.mkdir()
    save_config(config, out)
    saved = strict_json((out / "config.json").read_text())
    assert saved["optimizer"]["settings"]["tilt"] == "inf"
    assert load_config(out / "config.json").optimizer.settings["tilt"] == float("inf")
    sweep = SweepConfig(name="inf", out_dir=str(tmp_path / "s"), optimizers=["tsam"], seeds=[0], progress=False,
                        base={"data": {"name": "digits", "limit": 200}, "model": {"name": "mlp"},
                              "budget": {"kind": "steps", "amount": 2}, "run": {"num_threads": 1}},
                        per_optimizer={"tsam": {"t": [float("inf")], "s": [2]}})
    assert run_sweep(sweep)["done"] == 1
    db = sqlite3.connect(tmp_path / "s" / "sweep.db")
    for column in ("config", "setting", "result"):
        strict_json(db.execute(f"SELECT {column} FROM runs").fetchone()[0])
    db.close()
    from tiltedsam.harness.report import build_report

    assert build_report(tmp_path / "s").summary["tsam"]["setting"] == {"optimizer.settings.tilt": float("inf"),
                                                                        "optimizer.settings.num_samples": 2}


@pytest.mark.parametrize("name", [entry["name"] for entry in list_optimizers()])
def test_A_every_optimizer_state_is_checkpoint_data(tmp_path, name):
    """Every registered optimizer's state survives a checkpoint (weights_only) and resumes bit-exactly."""
    import copy

    from tiltedsam.optim.registry import create_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = create_optimizer(name, model.parameters(), model=model, seed=0, lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def closure_of(net):
        def closure():
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            return loss
        return closure

    optimizer.step(closure_of(model))
    save_checkpoint(tmp_path / "c.pt", {"optimizer": optimizer.state_dict(), "model": model.state_dict()})
    loaded = load_checkpoint(tmp_path / "c.pt")
    twin = copy.deepcopy(model)
    twin.load_state_dict(loaded["model"])
    restored = create_optimizer(name, twin.parameters(), model=twin, seed=1, lr=0.1, momentum=0.9)
    restored.load_state_dict(loaded["optimizer"])
    for _ in range(2):
        optimizer.step(closure_of(model))
        restored.step(closure_of(twin))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_G_adam_base_gets_no_momentum_and_trains(tmp_path):
    """base = "adam" used to fail with Adam.__init__() got an unexpected keyword argument 'momentum'."""
    result = train(load_config(None, ["data.name=digits", "data.limit=200", "model.name=mlp", "optimizer.base=adam",
                                      "optimizer.lr=0.001", "optimizer.settings={betas = [0.8, 0.99]}",
                                      "budget.kind=steps", "budget.amount=2", "run.progress=false",
                                      f"run.out_dir={json.dumps(str(tmp_path / 'adam'))}"]))
    assert result["steps"] == 2
    state = load_checkpoint(tmp_path / "adam")["optimizer"]["base_optimizer"]["param_groups"][0]
    assert state["betas"] == (0.8, 0.99) or state["betas"] == [0.8, 0.99]
    assert "momentum" not in state


def test_F_a_schema_1_database_is_migrated_and_its_crashed_run_reclaimed(tmp_path):
    """Databases written before the leases existed keep their runs; a 'running' row left by a crash
    has no heartbeat and is claimable at once."""
    old = sqlite3.connect(tmp_path / "sweep.db")
    old.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (
            run_key TEXT PRIMARY KEY, label TEXT NOT NULL, optimizer TEXT NOT NULL, seed INTEGER NOT NULL,
            setting TEXT NOT NULL, config TEXT NOT NULL, run_dir TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','running','done','failed')),
            attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, result TEXT, error TEXT);
        CREATE TABLE epochs (run_key TEXT NOT NULL REFERENCES runs(run_key), epoch INTEGER NOT NULL,
                             metrics TEXT NOT NULL, PRIMARY KEY (run_key, epoch));
        INSERT INTO meta VALUES ('schema_version', '1'), ('package_version', '0.1.0');
        INSERT INTO runs (run_key, label, optimizer, seed, setting, config, run_dir, status, attempts, result)
            VALUES ('d', 'sgd', 'sgd', 0, '{}', '{}', 'rd', 'done', 1, '{"final_test_acc": 0.9}'),
                   ('r', 'sgd', 'sgd', 1, '{}', '{}', 'rr', 'running', 1, NULL);
        INSERT INTO epochs VALUES ('d', 1, '{"epoch": 1}');
    """)
    old.close()
    connection = open_database(tmp_path)
    assert dict(connection.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == "2"
    rows = {r["run_key"]: (r["status"], r["attempts"], r["owner"]) for r in connection.execute("SELECT * FROM runs")}
    assert rows == {"d": ("done", 1, None), "r": ("running", 1, None)}
    assert connection.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 1
    assert claim_run(connection, "host:1:x", ["d", "r"], since=time.time()) == "r"
    connection.execute("UPDATE runs SET status='interrupted' WHERE run_key='r'")  # the new status is allowed
    connection.close()

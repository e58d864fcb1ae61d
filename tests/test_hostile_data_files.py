"""Hostile or unusual inputs end in one ``error:`` line or a documented, correct result.

Non-ASCII paths and labels (TOML strings, not JSON escapes), a decompression-bomb PNG, a TSV field
beyond csv's limit, a damaged image, model options that name no model, numbers that would take the
machine down (threads, seeds, grid points, workers), out of memory, and the commands whose errors
had no ``error:`` prefix or an argparse usage block.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.config import ConfigError, to_toml, toml_string

TINY = ["--set", "data.name=digits", "--set", "data.limit=200", "--set", "model.name=mlp",
        "--set", "budget.amount=1", "--set", "run.progress=false", "--set", "run.num_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def error_line(argv, capsys, code: int = 1) -> str:
    try:
        returned = main(argv)
    except SystemExit as exc:
        text = exc.code if isinstance(exc.code, str) else capsys.readouterr().err.strip()
        assert isinstance(exc.code, str) or exc.code == code, exc.code
        assert text.startswith("error: ") and "\n" not in text and "usage:" not in text, text
        return text
    assert returned == code, returned
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------ non-ASCII paths and labels
def test_emoji_out_directory_is_used_as_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--out", "runs/e😀"]) == 0
    assert (tmp_path / "runs" / "e😀" / "result.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing in a quoted "runs/e\ud83d..." folder
    capsys.readouterr()
    assert main(["train", "--resume", "--out", "runs/e😀"]) == 0


def test_print_config_with_non_ascii_label_reads_back(capsys):
    label = 'ü😀 "q" \\ x'
    assert main(["train", *TINY, "--set", f"label={toml_string(label)}", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["label"] == label


def test_toml_strings_round_trip_any_text_and_refuse_lone_surrogates():
    text = "".join(chr(c) for c in range(0, 0x250)) + "😀\U0010ffff"
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text
    assert tomllib.loads(to_toml({"label": text}))["label"] == text
    with pytest.raises(ConfigError, match="not valid Unicode"):
        toml_string("runs/\udcff", "--out")  # a non-UTF-8 file name as Python decodes argv


def test_non_utf8_out_directory_is_one_error_line(capsys):
    assert "not valid Unicode" in error_line(["train", *TINY, "--out", "runs/\udcff"], capsys)


# ------------------------------------------------------------------------ hostile data files
def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _image_folder(root: Path, bad: bytes) -> None:
    from PIL import Image

    for name in ("a", "b"):
        for index in range(3):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (0, 0, 0) if name == "a" else (255, 0, 0)).save(root / name / f"{index}.png")
    (root / "a" / "bomb.png").write_bytes(bad)


def test_decompression_bomb_png_is_one_error_line(tmp_path, capsys):
    _image_folder(tmp_path / "imgs", _png_declaring(20000, 10000))  # 200 million pixels in 60 bytes
    text = error_line(["train", *TINY, "--set", "data.name=imagefolder", "--set", f"data.data_dir={toml_string(str(tmp_path / 'imgs'))}",
                       "--out", str(tmp_path / "run")], capsys)
    assert "bomb.png" in text and "decompression bomb" in text
    assert not (tmp_path / "run").exists()  # a failed train leaves no empty run directory


def test_an_image_that_is_not_one_is_named(tmp_path):
    from tiltedsam.harness.data import load_dataset

    _image_folder(tmp_path, b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="bomb.png"):
        load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)


def test_glue_tsv_field_beyond_csv_limit_is_named(tmp_path):
    from tiltedsam.harness.data.glue import _read_tsv, _task

    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "x" * 140_000 + "\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"train.tsv' line 2: field larger than field limit"):
        _read_tsv(path, _task("sst2"))


# ------------------------------------------------------------------------ model options and limits
@pytest.mark.parametrize("option", ["model.options.hidden_sizes=[-4]", 'model.options.hidden_sizes="abc"',
                                    "model.options.hidden_sizes=[0]", "model.options.dropout=1.5"])
def test_bad_mlp_options_are_one_error_line(tmp_path, capsys, option):
    text = error_line(["train", *TINY, "--set", option, "--out", str(tmp_path / "r")], capsys)
    assert f"model.options.{option.split('.')[2].split('=')[0]}" in text and "allowed" in text
    assert not (tmp_path / "r").exists()


def test_small_cnn_zero_channels_is_one_error_line(tmp_path, capsys):
    text = error_line(["train", *TINY, "--set", "model.name=small_cnn", "--set", "model.options.channels=[0]",
                       "--out", str(tmp_path / "r")], capsys)
    assert "model.options.channels" in text


def test_thread_counts_beyond_the_limit_say_why(capsys):
    from tiltedsam._limits import max_threads

    text = error_line(["train", *TINY, "--threads", "100000", "--print-config"], capsys, code=2)
    assert f"at most {max_threads()}" in text and "cores" in text
    text = error_line(["train", *TINY, "--set", "run.num_threads=100000", "--print-config"], capsys)
    assert "run.num_threads = 100000 is too many" in text


def test_seed_count_is_checked_before_any_list_is_built():
    from tiltedsam.harness.compare import compare_config

    with pytest.raises(ValueError, match="at most 10000 seeds"):
        compare_config(quick=True, seeds=5_000_000_000)  # a list of 5e9 ints would be a MemoryError


def test_grid_size_and_workers_are_bounded_before_expansion():
    import time

    from tiltedsam._limits import max_workers
    from tiltedsam.harness.sweep import SweepConfig

    grid = {f"optimizer.settings.a{i}": list(range(10)) for i in range(6)}  # 10**6 points
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to 1,000,000 runs; allowed: at most 10,000"):
        SweepConfig(optimizers=["sgd"], grid=grid)
    assert time.perf_counter() - start < 20  # generous: expanding took > 40 s before
    with pytest.raises(ConfigError, match=f"at most {max_workers()}"):
        SweepConfig(workers=max_workers() + 1)


# ------------------------------------------------------------------------ out of memory
@pytest.mark.slow
def test_out_of_memory_is_one_error_line(tmp_path):
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30)); "
            "from tiltedsam.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", *TINY, "--set", "model.options.hidden_sizes=[12000, 12000]",
                           "--set", "budget.kind=steps", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    err = done.stderr.strip()
    assert done.returncode == 1 and err.startswith("error: out of memory") and "\n" not in err, err


# ------------------------------------------------------------------------ commands' own errors
@pytest.mark.parametrize("argv", [["analyze", "/no/such/run", "--out", "x"], ["toy", "--steps", "-1", "fig1"],
                                  ["example", "--epochs", "0"], ["toy", "--tilt", "abc", "fig1"], ["analyze"]])
def test_every_command_error_is_one_error_line(argv, capsys):
    text = error_line(argv, capsys, code=2 if argv in (["analyze"], ["toy", "--tilt", "abc", "fig1"]) else 1)
    assert not text.startswith("error: tiltedsam analyze: tiltedsam")


# ------------------------------------------------------------------------ further attacks (own round)
def test_empty_out_is_refused_not_replaced_by_the_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in error_line(["train", *TINY, "--out", ""], capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("target", ["/dev/zero", "folder", "fifo.toml"])
def test_a_config_that_is_not_a_regular_file_is_named(tmp_path, capsys, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.toml")  # reading it would block forever
    assert "is not a regular file" in error_line(["train", "--config", target, *TINY, "--print-config"], capsys)


def test_thread_count_from_the_environment_is_bounded(monkeypatch):
    from tiltedsam._threads import choose_threads

    with pytest.raises(ValueError, match="TILTEDSAM_THREADS = 100000 is too many"):  # segfaulted in OpenBLAS
        choose_threads(None, environ={"TILTEDSAM_THREADS": "100000"})


def test_resume_with_a_folder_as_checkpoint_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    result = (out / "result.json").read_bytes()
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").mkdir()
    assert "is not a file" in error_line(["train", "--resume", "--out", str(out)], capsys)
    assert (out / "result.json").read_bytes() == result


def test_limits_hold_for_fields_changed_after_construction():
    from tiltedsam.harness.sweep import SweepConfig, expand_grid

    sweep = SweepConfig(optimizers=["sgd"])
    sweep.grid = {f"optimizer.settings.a{i}": list(range(10)) for i in range(6)}
    with pytest.raises(ConfigError, match="expands to 1,000,000 runs"):
        expand_grid(sweep)

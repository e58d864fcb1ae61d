"""Harness models: output shapes on every relevant input, parameter counts, option checking."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from tiltedsam.harness import MODELS, build_model, count_parameters
from tiltedsam.harness.models import WideResNet


def fake_data(input_shape, num_classes=10, **info):
    """Anything with name / input_shape / num_classes / info is accepted by build_model."""
    return SimpleNamespace(name="fake", input_shape=tuple(input_shape), num_classes=num_classes, info=info)


DIGITS, MNIST, CIFAR = fake_data((1, 8, 8)), fake_data((1, 28, 28)), fake_data((3, 32, 32), 100)
TEXT = fake_data((20,), 2, vocab_size=50, pad_index=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machine's cores are shared: one intra-op thread avoids spin-waiting (20 ms vs 2 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_registry_names():
    assert {"mlp", "small_cnn", "resnet18", "wrn16_8", "text_cnn", "text_bow"} <= set(MODELS)


@pytest.mark.parametrize("name", ["mlp", "small_cnn"])
@pytest.mark.parametrize("data", [DIGITS, MNIST, CIFAR, fake_data((3, 64, 64), 47)], ids=["8x8", "28x28", "32x32", "64x64"])
def test_small_image_models_forward_shapes(name, data):
    model = build_model(name, data)
    logits = model(torch.randn(3, *data.input_shape))
    assert logits.shape == (3, data.num_classes)


@pytest.mark.parametrize("name", ["resnet18", "wrn16_8"])
def test_deep_models_forward_on_each_input_size(name):
    torch.manual_seed(0)
    for data in (DIGITS, MNIST, CIFAR):
        # Narrow versions keep the test fast; the architecture (depth, strides, pooling) is unchanged.
        model = build_model(name, data, **({"widen_factor": 1} if name == "wrn16_8" else {"base_width": 8}))
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, *data.input_shape)).shape == (2, data.num_classes)


def test_cifar100_parameter_counts_match_the_published_sizes():
    # CIFAR ResNet18 for 100 classes: 11,220,132 parameters (11.2M, as usually reported).
    resnet = build_model("resnet18", CIFAR)
    assert count_parameters(resnet) == 11_220_132
    # WRN-16-8: 11.0M parameters (Zagoruyko & Komodakis, 2016, Table 1 reports 11.0M for CIFAR).
    wrn = build_model("wrn16_8", CIFAR)
    assert count_parameters(wrn) == pytest.approx(11.0e6, rel=0.01)
    convs = [m for m in wrn.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * 3 * 2  # stem + two 3x3 convs in each of 2 blocks x 3 groups
    assert max(m.out_channels for m in convs) == 512
    # Stem is 3x3 stride 1 without max-pool (the CIFAR variant, not torchvision's ImageNet one).
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in resnet.modules())


def test_small_cnn_is_small_and_batch_norm_is_optional():
    model = build_model("small_cnn", MNIST)
    assert 50_000 <= count_parameters(model) <= 100_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    plain = build_model("small_cnn", MNIST, batch_norm=False, channels=(8, 16))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_mlp_hidden_sizes_and_dropout():
    model = build_model("mlp", DIGITS, hidden_sizes=(32,), dropout=0.2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 10)]
    assert any(isinstance(m, nn.Dropout) for m in model.modules())


def test_wrn_dropout_and_depth_validation():
    model = build_model("wrn16_8", DIGITS, depth=10, widen_factor=1, dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3  # one block per group at depth 10
    with pytest.raises(ValueError, match="depth must be 6n \\+ 4"):
        WideResNet(3, 10, depth=15)


@pytest.mark.parametrize("name", ["text_cnn", "text_bow"])
def test_text_models_forward_and_ignore_padding(name):
    torch.manual_seed(0)
    model = build_model(name, TEXT)
    model.eval()
    tokens = torch.randint(2, 50, (4, 20))
    assert model(tokens).shape == (4, 2)
    short = torch.randint(2, 50, (4, 2))  # shorter than the widest convolution
    assert model(short).shape == (4, 2)
    assert model.embedding.padding_idx == 0
    assert torch.count_nonzero(model.embedding.weight[0]) == 0


def test_bag_of_words_is_invariant_to_padding_length():
    model = build_model("text_bow", TEXT).eval()
    tokens = torch.tensor([[5, 7, 9, 0, 0]])
    padded = torch.tensor([[5, 7, 9, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(model(tokens), model(padded))


def test_models_train_one_step_with_finite_gradients():
    torch.manual_seed(0)
    for name, data, inputs in [
        ("small_cnn", MNIST, torch.randn(8, 1, 28, 28)),
        ("text_cnn", TEXT, torch.randint(0, 50, (8, 20))),
    ]:
        model = build_model(name, data)
        loss = nn.functional.cross_entropy(model(inputs), torch.randint(0, data.num_classes, (8,)))
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def test_bad_requests_raise_value_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", CIFAR)
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['width'\\] for model 'mlp'"):
        build_model("mlp", CIFAR, width=3)
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model("small_cnn", TEXT)
    with pytest.raises(ValueError, match="needs token-id inputs"):
        build_model("text_cnn", CIFAR)

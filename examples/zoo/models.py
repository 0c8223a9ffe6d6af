"""The zoo: small torch networks of the architectures users bring, for 28x28 grey images.

Each builder takes the input image side and a base width, so the tests can build the same
architecture small (e.g. 12x12, width 4) and the examples full size (28x28, widths 16-64).
Every network is small enough to train on full Fashion-MNIST in a few minutes on one CPU
thread, and uses only what the ONNX frontend imports (Conv, BatchNormalization, Relu, Clip
(ReLU6), MaxPool, AveragePool, GlobalAveragePool, Add, Concat, Flatten, Gemm, Dropout).

| name | what it exercises |
|---|---|
| ``resnet`` | basic blocks (conv-BN-ReLU-conv-BN + shortcut, ReLU after the add); identity and 1x1-conv stride-2 projection shortcuts; global average pool |
| ``mobilenet`` | depthwise-separable convolutions (depthwise 3x3 + pointwise 1x1), BN, ReLU6, global average pool |
| ``strided`` | the Fashion-MNIST example's CNN: stride-2 convolutions instead of pooling |
| ``vgg`` | two-conv stages with BN and max pooling, dropout before the dense layers |
| ``mlp`` | dense layers only; its input is the flat 784-vector |
| ``concat`` | ReLU6 and an inception-style Concat of a 3x3 and a 1x1 branch |
| ``mobilenetv2`` | inverted residual blocks with linear bottlenecks: a projection conv with no activation, identity adds with no ReLU after them |
| ``lenet`` | LeNet-5: 5x5 convolutions and 2x2 average pools before a conv and before the dense layers |
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def fashion_example():
    """examples/fashion_mnist/train.py as a module: its IDX loader, splits, training loop,
    ONNX export and the stride-2 CNN are shared with the zoo, not copied."""
    spec = importlib.util.spec_from_file_location("fmnist_train", HERE.parent / "fashion_mnist/train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU; the shortcut is the identity,
    or a 1x1 convolution with BN where the block changes width or strides (projection)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(*_conv_bn(cin, cout, 1, stride)))
        self.relu = nn.ReLU()  # a module, not torch.relu: module-swapping converters find it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def resnet(side: int = 28, width: int = 16) -> nn.Module:
    """Stem conv/2 (16) - block (16, identity) - block (32, /2, projection) - block (64, /2,
    projection) - global average pool - linear; 28 -> 14 -> 7 -> 4."""
    w = width
    return nn.Sequential(OrderedDict([
        ("stem", nn.Sequential(*_conv_bn(1, w, 3, 2), nn.ReLU())),
        ("block1", BasicBlock(w, w)), ("block2", BasicBlock(w, 2 * w, 2)),
        ("block3", BasicBlock(2 * w, 4 * w, 2)),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * w, 10)),
    ]))


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [*_conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU6(), *_conv_bn(cin, cout, 1), nn.ReLU6()]


def mobilenet(side: int = 28, width: int = 16) -> nn.Module:
    """Stem conv/2 (16) then depthwise-separable blocks 16->32, 32->64 (/2), 64->64 (/2),
    ReLU6 after every BN, global average pool, linear; 28 -> 14 -> 7 -> 4."""
    w = width
    return nn.Sequential(
        *_conv_bn(1, w, 3, 2), nn.ReLU6(),
        *_separable(w, 2 * w, 1), *_separable(2 * w, 4 * w, 2), *_separable(4 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def _flat_size(features: nn.Module, side: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, 1, side, side)).numel())


def strided(side: int = 28, width: int = 16) -> nn.Module:
    """The Fashion-MNIST example's CNN (conv16 - conv32/2 - conv32/2 - conv32/2 - fc128 - fc10)
    at 28x28 and width 16; other sizes build the same shape scaled."""
    if side == 28 and width == 16:
        return fashion_example().build_model()
    w = width
    features = nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, side), 8 * w), nn.ReLU(),
                         nn.Linear(8 * w, 10))


def vgg(side: int = 28, width: int = 16) -> nn.Module:
    """conv16 - maxpool - conv32 - conv32 - maxpool - conv64 - maxpool - dropout - fc128 -
    dropout - fc10, BN after each conv; 28 -> 14 -> 7 -> 3."""
    w = width
    features = nn.Sequential(
        *_conv_bn(1, w), nn.ReLU(), nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w), nn.ReLU(), *_conv_bn(2 * w, 2 * w), nn.ReLU(), nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Dropout(0.3), nn.Linear(_flat_size(features, side), 8 * w),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(8 * w, 10))


def mlp(side: int = 28, width: int = 16) -> nn.Module:
    """784 - 16w - 8w - 10 (784 - 256 - 128 - 10 at width 16) on the flat image."""
    return nn.Sequential(nn.Linear(side * side, 16 * width), nn.ReLU(),
                         nn.Linear(16 * width, 8 * width), nn.ReLU(), nn.Linear(8 * width, 10))


def lenet(side: int = 28, width: int = 16) -> nn.Module:
    """LeNet-5: conv 5x5 (6) - ReLU - 2x2 average pool - conv 5x5 (16) - ReLU - 2x2 average
    pool - fc120 - fc84 - fc10 at width 16 (channels and dense widths scale with it);
    28 -> 14 -> 10 -> 5."""
    c1, c2 = max(2, 6 * width // 16), width
    features = nn.Sequential(nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
                             nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, side), 120 * width // 16), nn.ReLU(),
                         nn.Linear(120 * width // 16, 84 * width // 16), nn.ReLU(),
                         nn.Linear(84 * width // 16, 10))


class ConcatNet(nn.Module):
    """conv/2 (16) - ReLU6 - [conv3x3 (16), conv1x1 (16)] - ReLU6 - concat (32) - conv/2 (32) -
    ReLU6 - global average pool - linear; 28 -> 14 -> 7."""

    def __init__(self, side: int = 28, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn(1, w, 3, 2), nn.ReLU6())
        self.a = nn.Sequential(*_conv_bn(w, w, 3), nn.ReLU6())
        self.b = nn.Sequential(*_conv_bn(w, w, 1), nn.ReLU6())
        self.head = nn.Sequential(*_conv_bn(2 * w, 2 * w, 3, 2), nn.ReLU6(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.cat([self.a(x), self.b(x)], 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1 conv-BN-ReLU6, depthwise 3x3 conv-BN-ReLU6, project 1x1
    conv-BN with no activation (the linear bottleneck), plus the identity with no ReLU after
    the add where the block keeps width and size."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        h = cin * expand
        self.identity = stride == 1 and cin == cout
        self.body = nn.Sequential(*_conv_bn(cin, h, 1), nn.ReLU6(), *_conv_bn(h, h, 3, stride, groups=h),
                                  nn.ReLU6(), *_conv_bn(h, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.identity else self.body(x)


def mobilenetv2(side: int = 28, width: int = 16) -> nn.Module:
    """Stem conv/2 (16) - ReLU6 - inverted residual blocks (expansion 4) 16 (identity),
    24 /2, 24 (identity), 32 /2, 32 (identity) - 1x1 conv 64 ReLU6 - global average pool -
    linear; 28 -> 14 -> 7 -> 4."""
    w, m = width, width * 3 // 2
    return nn.Sequential(
        *_conv_bn(1, w, 3, 2), nn.ReLU6(),
        InvertedResidual(w, w), InvertedResidual(w, m, 2), InvertedResidual(m, m),
        InvertedResidual(m, 2 * w, 2), InvertedResidual(2 * w, 2 * w),
        *_conv_bn(2 * w, 4 * w, 1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet, "mobilenet": mobilenet, "strided": strided, "vgg": vgg, "mlp": mlp,
    "concat": ConcatNet, "mobilenetv2": mobilenetv2, "lenet": lenet,
}
FLAT_INPUT = {"mlp"}  # takes (N, side*side) instead of (N, 1, side, side)


def build(arch: str, side: int = 28, width: int = 16) -> nn.Module:
    """The architecture ``arch`` (a key of ARCHS) for ``side`` x ``side`` images."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch](side, width)


def input_layout(arch: str, x: "np.ndarray") -> "np.ndarray":  # noqa: F821
    """Images (N, 1, H, W) in the layout ``arch`` takes: flat (N, H*W) for the MLP."""
    return x.reshape(len(x), -1) if arch in FLAT_INPUT else x

"""ResNet-50-, VGG-19- and MobileNetV2-shaped ONNX models, built locally with torch (random weights, each
layer scaled to unit largest row L1 norm so that weight-bound thresholds stay finite).

For the scale benchmark (bench_scale.py): the layer shapes of the ImageNet networks at
3x224x224, with BatchNorm folded away (convolutions with bias), VGG's max pools replaced by
average pools (a spike-count max pool of VGG's size is a separate question) and MobileNetV2's
activation moved after its residual add (see :class:`InvertedResidual`). Nothing is
downloaded; weights come from ``torch.manual_seed``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class Bottleneck(nn.Module):
    """ResNet-50's bottleneck block: 1x1, 3x3 (stride), 1x1 (x4), plus the skip."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.c1 = nn.Conv2d(cin, width, 1)
        self.c2 = nn.Conv2d(width, width, 3, stride, 1)
        self.c3 = nn.Conv2d(width, cout, 1)
        self.skip = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.c1(x))
        y = self.relu(self.c2(y))
        y = self.c3(y)
        return self.relu(y + (self.skip(x) if self.skip is not None else x))


def resnet50(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3), nn.ReLU(), nn.AvgPool2d(2, 2)]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AvgPool2d(7), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def vgg19(classes: int = 1000) -> nn.Module:
    cfg = [64, 64, "P", 128, 128, "P", 256, 256, 256, 256, "P", 512, 512, 512, 512, "P",
           512, 512, 512, 512, "P"]
    layers: list[nn.Module] = []
    cin = 3
    for c in cfg:
        if c == "P":
            layers.append(nn.AvgPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(c), 3, 1, 1), nn.ReLU()]
            cin = int(c)
    layers += [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096),
               nn.ReLU(), nn.Linear(4096, classes)]
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand (x t), ReLU6, 3x3 depthwise (stride), ReLU6, 1x1
    project, plus the identity where the shape allows; the ReLU6 comes after the add (the
    linear bottleneck, a conv feeding the next block's conv with no activation between,
    has no spiking form: two weighted layers in a row)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.expand = nn.Conv2d(cin, hidden, 1) if t != 1 else None
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = nn.Conv2d(hidden, cout, 1)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6()

    def forward(self, x):
        y = self.act(self.expand(x)) if self.expand is not None else x
        y = self.project(self.act(self.dw(y)))
        return self.act(y + x if self.skip else y)


def mobilenetv2(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()]
    cin = 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [nn.Conv2d(cin, 1280, 1), nn.ReLU6(), nn.AvgPool2d(7), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


MODELS = {"resnet50": resnet50, "vgg19": vgg19, "mobilenetv2": mobilenetv2}


def export(name: str, path: Path, seed: int = 0) -> Path:
    """Write model ``name`` (3x224x224 input) as ONNX to ``path``."""
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    with torch.no_grad():  # unit row L1 norms: weight-bound thresholds stay finite in float32
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight /= m.weight.abs().flatten(1).sum(1).max()
                m.bias.zero_()
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), input_names=["x"],
                          output_names=["y"], opset_version=13, dynamo=False)
    return path

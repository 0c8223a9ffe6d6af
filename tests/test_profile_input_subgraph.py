"""Fitting --input-bits converts only the part of the network the input feeds (the input,
the layers it feeds directly, and what they read), so the profile stage costs one small
conversion per width at any size, and chooses what converting the whole network chose."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from snncompile.calibrate.statistics import activation_scales
from snncompile.frontend import import_onnx
from snncompile.ir.options import ConversionOptions
from snncompile.passes.constrain import constrain
from snncompile.passes.convert import convert
from snncompile.plugin import get_backend
from snncompile.targets import profile as profile_mod
from snncompile.targets.profile import (ProfileChoice, apply_profile, fit_input_bits, fit_input_width,
                                        input_subgraph)


class _Cnn(nn.Module):
    """conv-relu-conv-relu-pool-dense: the input feeds the first layer only."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(h, 2), 1))


class _Mixed(nn.Module):
    """A deeper conv's output is added to a conv of the input (so that layer is fed by the
    input too) and read again by a layer the input does not feed."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                                     nn.Conv2d(1, 4, 3, padding=1))
        self.fc = nn.Linear(8 * 8 * 8, 3)

    def forward(self, x):
        t = self.c2(torch.relu(self.c1(x)))
        a, b = torch.relu(t + self.c3(x)), torch.relu(t)
        return self.fc(torch.flatten(torch.cat([a, b], 1), 1))


def _setup(onnx_kit, net: nn.Module, seed: int):
    torch.manual_seed(seed)
    for p in net.parameters():  # large weights, so the input width matters
        p.data.mul_(4.0)
    model = onnx_kit.from_torch(net.eval(), (1, 8, 8))
    ann = import_onnx(model).graph
    x = np.random.default_rng(seed).normal(0, 1, (32, 1, 8, 8)).astype(np.float32)
    calib = activation_scales(model, ann, x, "channel", 99.9, seed=0)
    return ann, calib


def _full_choice(prof, ann, calib, opts, fanin):
    """The width converting the whole network chooses (what the fit did before)."""
    def build(bits):
        g = convert(ann, calib, dataclasses.replace(opts, input_bits=bits))
        return constrain(g, opts.weight_bits, fanin, "magnitude") if fanin else g
    return fit_input_bits(prof, build, opts.input_bits, ProfileChoice("loihi"))


@pytest.mark.parametrize("fanin", [None, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_converts_only_the_first_layers_and_chooses_as_before(onnx_kit, monkeypatch, seed, fanin):
    torch.manual_seed(seed)
    ann, calib = _setup(onnx_kit, _Cnn(), seed)
    prof = get_backend("loihi").profile()
    opts, choice = apply_profile(prof, ConversionOptions(), set(), "loihi")
    deep = {n.name for n in ann.nodes} - {n.name for n in input_subgraph(ann).nodes}
    relus = [n.name for n in ann.nodes if n.op == "relu"]
    assert relus[1] in deep and ann.outputs[0] in deep  # the second layer and the output are left out
    seen: list[set[str]] = []
    real = profile_mod.convert

    def spy(g, *a, **kw):
        seen.append({n.name for n in g.nodes})
        return real(g, *a, **kw)

    monkeypatch.setattr(profile_mod, "convert", spy)
    fitted = fit_input_width(prof, choice, ann, calib, opts, set(), fanin)
    assert seen and all(not (s & deep) for s in seen)
    monkeypatch.setattr(profile_mod, "convert", real)
    assert fitted.input_bits == _full_choice(prof, ann, calib, opts, fanin)


def test_an_op_read_beyond_the_first_layers_keeps_the_whole_graph(onnx_kit):
    """Conversion derives an op from its readers (an add shares its scale with the weighted
    nodes feeding it only when it is their one reader): where an op the first layers need is
    also read elsewhere, the fit converts the whole network, choosing as before."""
    ann, calib = _setup(onnx_kit, _Mixed(), 0)
    assert input_subgraph(ann) is ann
    prof = get_backend("loihi").profile()
    opts, choice = apply_profile(prof, ConversionOptions(), set(), "loihi")
    fitted = fit_input_width(prof, choice, ann, calib, opts, set(), None)
    assert fitted.input_bits == _full_choice(prof, ann, calib, opts, None)

"""The branches of an add share one fan-in budget per neuron: a ResNet block's 3x3 body conv
and its 1x1 projection feed the same neurons, the fan-in rule counts the sum of their
synapses, so pruning chooses from both branches at once instead of splitting the limit
equally (the zoo ResNet's block 3 kept 32 of 576 body weights beside all 32 of the
projection's; choosing jointly took its masked ANN from 0.8905 to 0.899 on validation)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from snncompile.ir import AddNode
from snncompile.ir.structure import population_fanin
from snncompile.passes.constrain import fanin_budgets, shared_budgets
from snncompile.targets.rules import violations
from snncompile.testing import zoo_case
from snncompile.tune.model import TandemNet
from snncompile.tune.refit import impose_refitted

sys.path.insert(0, str(Path(__file__).parent))
from test_fanin_concat import _add_of_two_convs  # noqa: E402
from test_tune_refit import digits_converted  # noqa: E402

FANIN = 48


class TinyResBlock(nn.Module):
    """conv (8) - ReLU - [conv3x3/2 (16) - ReLU - conv3x3 (16)] + [conv1x1/2 (16)] - ReLU -
    global average pool (4x4) - linear, on 8x8 digits: the body's second conv reads 144
    inputs, the projection 8."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1))
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.relu(self.body(x) + self.proj(x)))


@pytest.fixture(scope="module")
def block():
    """TinyResBlock trained on digits for a few seconds, converted at T = 4 with 8-bit
    weights, and calibration inputs."""
    snn, train, _, _ = digits_converted(TinyResBlock, epochs=10)
    return snn, train.x[:256]


def _branches(g) -> tuple[str, str]:
    add = next(n for n in g.nodes if isinstance(n, AddNode))
    body, proj = sorted(add.inputs, key=lambda n: -g[n].weight.shape[1] * g[n].weight.shape[2])
    return body, proj


def test_the_branches_of_an_add_share_their_budget():
    g = _add_of_two_convs()  # ca (36 inputs) + cb (4) into one IF layer
    assert fanin_budgets(g, 20) == {"ca": 16, "cb": 4}
    assert shared_budgets(g, 20) == {("ca", "cb"): 20}
    assert shared_budgets(g, 6) == {("ca", "cb"): 6}
    assert shared_budgets(g, 40) == {}  # it fits: nothing to share
    assert shared_budgets(zoo_case("concat").graph, 8) == {}  # a concat's conv counts its own weights


def test_neurons_spend_the_shared_budget_where_it_explains_most(block):
    """Chosen jointly, each neuron keeps more of the 3x3 body than the equal split's 40 and
    fewer of the projection's 8, never more than the limit in total; the add's input is
    closer to the unpruned one than with the split; the tuned graph meets the fan-in rule."""
    snn, x = block
    body, proj = _branches(snn)
    assert fanin_budgets(snn, FANIN)[body] == 40 and fanin_budgets(snn, FANIN)[proj] == 8
    add = next(n.name for n in snn.nodes if isinstance(n, AddNode))
    xt = torch.as_tensor(x)
    errors = {}
    for joint in (False, True):
        net = TandemNet(snn, bits=8, fanin=FANIN, prune_lead=99)
        if not joint:
            net.shared = {}
        else:
            assert net.shared == {(body, proj): FANIN} or net.shared == {(proj, body): FANIN}
        net.set_stage(0, prune=False)
        before = net._values(xt)[1][add].detach()
        impose_refitted(net, net.due_masks(), xt)
        after = net._values(xt)[1][add].detach()
        errors[joint] = float((after - before).pow(2).mean() / before.var())
        rows = {n: net.mask(n).reshape(net.mask(n).shape[0], -1).sum(1) for n in (body, proj)}
        if joint:
            assert float((rows[body] + rows[proj]).max()) <= FANIN
            assert float(rows[body].max()) > 40 and float(rows[proj].min()) < 8
            net.set_stage(net.n_stages)
            g = net.to_graph()
            assert not violations(g, bits=8, fanin=FANIN)
            relu = next(n.name for n in g.nodes if add in n.inputs)
            assert population_fanin(g, relu) <= FANIN
        else:
            assert set(rows[body].tolist()) == {40.0} and set(rows[proj].tolist()) == {8.0}
    assert errors[True] < errors[False], errors

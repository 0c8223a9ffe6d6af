"""Signed spikes (``--spikes signed``, IFNode.spikes): a neuron that has fired emits -1 when
later inhibition takes its membrane below 0. The reference simulator's statement of it is
checked against plain-Python oracles in test_simulator.py and test_simulator_orders.py;
here: conversion sets it, the tandem forward and the surrogate-gradient forward run the
same integers, what cannot take signed spikes refuses with one clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from snncompile.passes.convert import ConversionOptions, convert
from snncompile.errors import UsageError
from snncompile.ir import IFNode
from snncompile.plugin import available_backends, get_backend
from snncompile.sim.evaluator import run_window
from snncompile.sim.simulator import quantized_input, simulate
from snncompile.tune.model import TandemNet

from test_cli import run
from test_tandem import Branchy, _assert_exact, calibrated


class Strided(nn.Module):
    """Strided convs, a residual add, an average pool: no max pool, so signed spikes fit."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        a = torch.relu(self.c0(x))
        a = torch.relu(self.c1(a) + a)  # a residual add: spikes also pass through a sum
        b = self.avg(torch.relu(self.c2(a)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(b, 1))))


@pytest.fixture(scope="module")
def strided():
    return calibrated(Strided, 40)


@pytest.mark.parametrize("opts", [
    ConversionOptions(timesteps=6, spikes="signed"),
    ConversionOptions(timesteps=5, weight_bits=6, input_mode="every_step", spikes="signed", membrane_bits=10),
])
def test_tandem_and_surrogate_forwards_are_the_simulator(strided, opts):
    ann, cal, x = strided
    g = convert(ann, cal, opts)
    assert {n.spikes for n in g.nodes if isinstance(n, IFNode)} == {"signed"}
    rec = simulate(g, x, record_spikes=True)
    assert any((s < 0).any() for s in rec.spikes.values())  # the case takes spikes back
    _assert_exact(TandemNet(g), x)
    ints = run_window(g, quantized_input(g, torch.tensor(x)), g.timesteps)  # the window evaluator
    for k, v in rec.spike_counts.items():  # untraced (stdb/ltl trace it; they refuse signed, see below)
        np.testing.assert_array_equal(v, ints.counts[k].numpy(), err_msg=k)


def test_signed_spikes_change_the_counts_where_inhibition_comes_late(strided):
    """Not a no-op: on the same weights some counts differ from the binary network's, and
    the signed counts stay within 0..T."""
    ann, cal, x = strided
    T = 6
    binary = simulate(convert(ann, cal, ConversionOptions(timesteps=T)), x)
    signed = simulate(convert(ann, cal, ConversionOptions(timesteps=T, spikes="signed")), x)
    changed = sum(int((binary.spike_counts[k] != signed.spike_counts[k]).sum()) for k in binary.spike_counts)
    assert changed > 0
    for c in signed.spike_counts.values():
        assert c.min() >= 0 and c.max() <= T


def test_max_pool_refuses_signed_spikes():
    ann, cal, _ = calibrated(Branchy, 8)
    with pytest.raises(UsageError, match="cannot read signed spikes"):
        convert(ann, cal, ConversionOptions(timesteps=4, spikes="signed"))


def test_every_backend_says_whether_it_takes_signed_spikes(strided):
    """A backend that does not list "signed" in its limits' spike_modes refuses a signed
    graph, naming the layer and --spikes binary; one that lists it has no such violation."""
    ann, cal, _ = strided
    g = convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=8, spikes="signed"))
    names = available_backends()
    assert names
    for name in names:
        backend = get_backend(name)
        found = [v for v in backend.check(g) if v.quantity == "spikes"]
        if "signed" in backend.limits().spike_modes:
            assert not found, name
        else:
            assert {v.layer for v in found} == {n.name for n in g.nodes if isinstance(n, IFNode)}, name
            assert all(v.fix == "--spikes binary" for v in found), name


def test_cli_signed_spikes_end_to_end(digits_dir, tmp_path):
    d = digits_dir
    out = tmp_path / "snn"
    r = run("convert", str(d / "digits_cnn.onnx"), "--calib", str(d / "calib.npz"), "-T", "8",
             "--spikes", "signed", "-o", str(out))
    assert r.returncode == 0, r.stderr
    nodes = json.loads((out / "ir.json").read_text())["nodes"]
    assert {n["spikes"] for n in nodes if n["op"] == "if"} == {"signed"}
    r = run("evaluate", str(out), "--data", str(d / "test.npz"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["snn_accuracy"] > 0.9 and res["synops_per_sample"] > 0


@pytest.mark.parametrize("extra,message", [
    (["--reset", "zero", "--input-mode", "every_step"], "signed spikes need reset by subtraction"),
    (["--target", "nir"], "spikes"),  # nir carries binary spikes only
    (["--train", "{val}", "--val", "{val}", "--method", "stdb"], "--method stdb trains through binary spikes only"),
])
def test_cli_refuses_what_cannot_take_signed_spikes(digits_dir, tmp_path, extra, message):
    d = digits_dir
    out = tmp_path / "snn"
    extra = [a.format(val=d / "val.npz") for a in extra]
    r = run("convert", str(d / "digits_cnn.onnx"), "--calib", str(d / "calib.npz"), "-T", "8",
             "--spikes", "signed", "-o", str(out), *extra)
    assert r.returncode != 0
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()

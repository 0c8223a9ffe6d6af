"""The reference simulator (node by node over the whole window) against the first one (step by
step, tests/step_simulator.py): two evaluation orders of the same semantics must agree bit for
bit on spikes, counts, output accumulators, SynOps and saturations, on graphs that use every
node type, both input modes, both reset modes, both bias modes and membrane saturation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import step_simulator
from snncompile.ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                           FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, PadNode,
                           ReshapeNode)
import snncompile.sim.evaluator as evaluator
import snncompile.sim.simulator as sim
import snncompile.sim.values as values
from snncompile.sim.evaluator import SpikeTrains, needed
from snncompile.sim.plan import FUSED_IF_MIN_NEURON_STEPS, Plan, use_fused_if
from snncompile.sim.simulator import simulate
from snncompile.sim.weighted import exact_in_float32

ONE = np.ones(1)


def _conv(rng, name, src, cin, cout, k=3, stride=(1, 1), padding=(1, 1, 1, 1), bias_mode="every_step",
          zero_frac=0.0, lo=-6, hi=7):
    w = rng.integers(lo, hi, (cout, cin, k, k))
    w[rng.random(w.shape) < zero_frac] = 0
    return Conv2dNode(name=name, inputs=[src], weight=w.astype(np.float32), weight_int=w,
                      bias=np.zeros(cout, np.float32), bias_int=rng.integers(-4, 5, cout),
                      bias_mode=bias_mode, stride=stride, padding=padding, out_scale=ONE)


def _if(rng, name, src, shape_c, reset="subtract", th_shape="channel", membrane_bits=32, half=True):
    c = shape_c[0]
    if th_shape == "channel":
        th = rng.integers(4, 30, (c, 1, 1))
    elif th_shape == "full":
        th = rng.integers(4, 30, shape_c)
    else:
        th = np.full((1, 1, 1), 11)
    return IFNode(name=name, inputs=[src], threshold=th, reset=reset, membrane_bits=membrane_bits,
                  v_init=(th // 2) if half else None, out_scale=ONE)


def strided_graph(rng, mode: str, reset: str) -> Graph:
    """conv (stride 2, uneven padding) -> IF -> max pool (padded) -> sum pool -> flatten ->
    dense IF -> dense output."""
    nodes = [
        InputNode(name="x", shape=(2, 9, 9), mode=mode, out_scale=ONE),
        _conv(rng, "c1", "x", 2, 4, stride=(2, 2), padding=(1, 0, 1, 1),
              bias_mode="first_step" if mode == "once" else "every_step"),
        _if(rng, "h1", "c1", (4, 5, 4), reset, "channel"),
        MaxPool2dNode(name="m", inputs=["h1"], kernel=(2, 2), stride=(1, 1), padding=(0, 0, 1, 1),
                      out_scale=ONE),
        AvgPool2dNode(name="p", inputs=["m"], kernel=(2, 2), stride=(2, 2), out_scale=ONE),
        FlattenNode(name="f", inputs=["p"], out_scale=ONE),
    ]
    w = rng.integers(-3, 4, (7, 4 * 2 * 2))
    nodes += [
        DenseNode(name="d", inputs=["f"], weight=w.astype(np.float32), weight_int=w,
                  bias_int=rng.integers(-2, 3, 7), out_scale=ONE),
        IFNode(name="h2", inputs=["d"], threshold=rng.integers(2, 9, 7), reset=reset, out_scale=ONE),
        DenseNode(name="o", inputs=["h2"], weight=np.eye(7, dtype=np.float32)[:5],
                  weight_int=rng.integers(-5, 6, (5, 7)), bias_int=rng.integers(-3, 4, 5),
                  out_scale=ONE),
    ]
    g = Graph(nodes, ["o"], timesteps=7)
    g.validate()
    return g


def branchy_graph(rng, mode: str, reset: str, membrane_bits: int) -> Graph:
    """A residual add through an affine node, a concat of two IF branches, a pad, a reshape,
    per-neuron thresholds, zero weights and a narrow membrane that saturates."""
    nodes = [
        InputNode(name="x", shape=(3, 6, 6), mode=mode, out_scale=ONE),
        _conv(rng, "c0", "x", 3, 4, zero_frac=0.5),
        _if(rng, "h0", "c0", (4, 6, 6), reset, "full", membrane_bits),
        _conv(rng, "c1", "h0", 4, 4, k=1, padding=(0, 0, 0, 0)),
        AffineNode(name="skip", inputs=["h0"], weight=np.arange(1, 5, dtype=np.float32),
                   weight_int=np.array([1, -2, 3, 0]), bias_int=np.array([1, 0, -1, 2]),
                   out_scale=ONE),
        AddNode(name="sum", inputs=["c1", "skip"], out_scale=ONE),
        _if(rng, "h1", "sum", (4, 6, 6), reset, "scalar", membrane_bits, half=False),
        _conv(rng, "c2", "h0", 4, 2, k=3, lo=-40, hi=41),
        _if(rng, "h2", "c2", (2, 6, 6), reset, "channel", membrane_bits),
        ConcatNode(name="cat", inputs=["h1", "h2"], axis=0, out_scale=ONE),
        PadNode(name="pad", inputs=["cat"], pads=(0, 1, 0, 0, 1, 0), out_scale=ONE),
        _conv(rng, "c3", "pad", 6, 3, k=3, stride=(2, 2), padding=(0, 0, 0, 0)),
        ReshapeNode(name="r", inputs=["c3"], target=(3, 6), out_scale=ONE),
        FlattenNode(name="f", inputs=["r"], out_scale=ONE),
    ]
    g = Graph(nodes, ["f"], timesteps=9)
    g.validate()
    return g


@pytest.fixture(params=["dense", "skip silent steps"], autouse=True)
def silent_step_path(request, monkeypatch):
    """Run every test with and without the path that skips all-zero steps (small graphs take
    the dense path by default)."""
    if request.param == "skip silent steps":
        monkeypatch.setattr(values, "SKIP_CHECK_ELEMENTS", 0)
    return request.param


@pytest.fixture(params=["fused IF", "torch IF"], autouse=True)
def if_path(request, monkeypatch):
    """Run every test with the one-pass CPU IF kernel and with the torch formulation that
    other devices use (the simulator's ``fused_if`` argument, set for this module's calls)."""
    fused = request.param == "fused IF"
    monkeypatch.setitem(globals(), "simulate", functools.partial(sim.simulate, fused_if=fused))
    monkeypatch.setattr(evaluator, "run_window", functools.partial(evaluator.run_window, fused_if=fused))
    return request.param


def _assert_same(g: Graph, x: np.ndarray, T: int) -> None:
    new = simulate(g, x, timesteps=T, record_spikes=True, batch_size=3)
    old = step_simulator.simulate(g, x, timesteps=T, record_spikes=True, batch_size=5)
    for k in old.spikes:
        np.testing.assert_array_equal(new.spikes[k], old.spikes[k], err_msg=f"spikes of {k}")
        np.testing.assert_array_equal(new.spike_counts[k], old.spike_counts[k], err_msg=k)
    for k in old.output_acc:
        np.testing.assert_array_equal(new.output_acc[k], old.output_acc[k], err_msg=k)
        np.testing.assert_array_equal(new.outputs[k], old.outputs[k], err_msg=k)
    np.testing.assert_array_equal(new.synops, old.synops)
    assert new.saturations == old.saturations


@pytest.mark.parametrize("mode,reset", [("once", "subtract"), ("every_step", "subtract"),
                                        ("every_step", "zero")])
def test_strided_pooling_graph(mode, reset):
    rng = np.random.default_rng(3)
    g = strided_graph(rng, mode, reset)
    x = rng.integers(-2, 6, (7, 2, 9, 9)).astype(np.float32)
    for T in (1, 7, 12):
        _assert_same(g, x, T)


@pytest.mark.parametrize("mode,reset,bits", [("once", "subtract", 32), ("once", "subtract", 9),
                                             ("every_step", "zero", 9), ("every_step", "subtract", 10)])
def test_branchy_graph(mode, reset, bits):
    rng = np.random.default_rng(11)
    g = branchy_graph(rng, mode, reset, bits)
    x = rng.integers(-4, 9, (6, 3, 6, 6)).astype(np.float32)
    _assert_same(g, x, 9)
    if bits < 32:
        assert sum(step_simulator.simulate(g, x, timesteps=9).saturations.values()) > 0


@pytest.mark.parametrize("bits", [32, 9])
def test_a_window_cut_at_an_if_layer_counts_its_spikes_alone(bits):
    """run_window limited to an IF layer and its ancestors (what a tuning stage runs) skips
    that layer's spike trains, nothing reads them, and must still count exactly what the
    whole simulation counts, saturations included."""
    rng = np.random.default_rng(5)
    for g, x in [(strided_graph(rng, "once", "subtract"), rng.integers(-2, 6, (5, 2, 9, 9))),
                 (branchy_graph(rng, "once", "subtract", bits), rng.integers(-4, 9, (6, 3, 6, 6)))]:
        x = x.astype(np.float32)
        whole = step_simulator.simulate(g, x, timesteps=9)
        xq = torch.as_tensor(sim.quantize_input(g, x))
        for layer in [n.name for n in g.nodes if isinstance(n, IFNode)]:
            part = evaluator.run_window(g, xq, 9, needed(g, [layer]))
            np.testing.assert_array_equal(part.counts[layer].numpy(), whole.spike_counts[layer],
                                          err_msg=layer)
            assert part.saturations[layer] == whole.saturations[layer], layer
    assert bits == 32 or sum(whole.saturations.values()) > 0


def test_converted_model_agrees():
    """A CNN of the digits example's shape (conv16-avgpool-conv32-avgpool-fc64-10, seeded
    random weights: the orders must agree on any weights) converted from ONNX with
    calibration, as `convert` does it: first-step bias, 16-bit weights split into digits."""
    import io
    import warnings

    import onnx
    import torch
    from torch import nn

    from snncompile.calibrate.statistics import activation_scales
    from snncompile.passes.convert import ConversionOptions, convert
    from snncompile.frontend import import_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    ann = import_onnx(model).graph
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    g = convert(ann, activation_scales(model, ann, x), ConversionOptions(timesteps=6))
    counts = simulate(g, x[:20]).spike_counts
    assert sum(c.sum() > 0 for c in counts.values()) == 3  # every IF layer is active
    _assert_same(g, x[:20], 6)


def test_silent_steps(silent_step_path):
    """Weak input and high thresholds from a zero membrane: the first layer stays silent for a
    few steps, so whole steps of its spike tensor are zero (the steps the skipping path leaves
    out of the next layers' arithmetic)."""
    rng = np.random.default_rng(5)
    g = strided_graph(rng, "every_step", "subtract")
    g["h1"].v_init = None
    g["h1"].threshold = np.full((4, 1, 1), 40)
    x = rng.integers(0, 2, (4, 2, 9, 9)).astype(np.float32)
    ref = step_simulator.simulate(g, x, timesteps=40, record_spikes=True)
    per_step = ref.spikes["h1"].reshape(40, -1).sum(axis=1)
    assert (per_step == 0).any() and (per_step > 0).any()
    _assert_same(g, x, 40)


def test_wide_weights_split_into_float32_digits():
    """20-bit weights: worst-case sums need float64, which the simulator computes as float32
    convolutions of weight digits; the digits must recombine to exactly the float64 result."""
    rng = np.random.default_rng(8)
    g = strided_graph(rng, "every_step", "subtract")
    big = rng.integers(-2 ** 19, 2 ** 19, (4, 2, 3, 3))
    g["c1"].weight_int = big
    g["h1"].threshold = np.full((4, 1, 1), 2 ** 19)
    wd = rng.integers(-2 ** 19, 2 ** 19, g["d"].weight_int.shape)
    g["d"].weight_int = wd
    g["h2"].threshold = np.full(7, 2 ** 18)
    plan = Plan(g, 12, torch.device("cpu"))
    assert set(plan.parts) >= {"c1", "d"}
    x = rng.integers(-100, 100, (5, 2, 9, 9)).astype(np.float32)
    _assert_same(g, x, 12)
    assert simulate(g, x, timesteps=12).spike_counts["h2"].sum() > 0


@pytest.mark.parametrize("spikes", ["binary", "signed"])
def test_spike_rows_exact_in_float32_take_one_product(spikes):
    """Wide weights behind spikes: the rows (sample-steps) whose spikes are few enough for
    float32 to be exact take one float32 convolution/product, the others the weight digits;
    a mix of both must still agree with the step-by-step simulator bit for bit (signed
    spikes: the bound counts their magnitudes)."""
    import torch

    rng = np.random.default_rng(21)
    nodes = [
        InputNode(name="x", shape=(3, 6, 6), mode="every_step", out_scale=ONE),
        _conv(rng, "c1", "x", 3, 6),
        _if(rng, "h1", "c1", (6, 6, 6)),
        _conv(rng, "c2", "h1", 6, 5, lo=-2 ** 20, hi=2 ** 20),
        IFNode(name="h2", inputs=["c2"], threshold=np.full((5, 1, 1), 2 ** 19), reset="subtract",
               v_init=np.full((5, 1, 1), 2 ** 18), out_scale=ONE),
        FlattenNode(name="f", inputs=["h2"], out_scale=ONE),
    ]
    wd = rng.integers(-2 ** 19, 2 ** 19, (4, 5 * 6 * 6))
    nodes += [DenseNode(name="o", inputs=["f"], weight=wd.astype(np.float32), weight_int=wd,
                        bias_int=rng.integers(-3, 4, 4), out_scale=ONE)]
    g = Graph(nodes, ["o"], timesteps=10)
    if spikes == "signed":
        g = _signed(g)
    g.validate()
    plan = Plan(g, 10, torch.device("cpu"))
    assert {"c2", "o"} <= set(plan.parts)
    # samples from silent to busy, so some steps stay under the float32 bound and some do not
    x = (rng.integers(0, 9, (8, 3, 6, 6)) * np.linspace(0, 1, 8)[:, None, None, None]).astype(np.float32)
    trains = step_simulator.simulate(g, x, timesteps=10, record_spikes=True).spikes["h1"]
    rows = torch.as_tensor(trains.reshape((-1,) + trains.shape[2:]), dtype=torch.float32).abs()
    ok = exact_in_float32(g["c2"], rows, plan.wmax["c2"])
    assert bool(ok.any()) and not bool(ok.all())
    _assert_same(g, x, 10)
    if spikes == "signed":
        assert (step_simulator.simulate(g, x, timesteps=10, record_spikes=True).spikes["h2"] < 0).any()


def test_fused_if_kernel_is_chosen_for_large_cpu_runs():
    """Unrequested, the one-pass kernel only where its start-up pays (large runs); as the
    caller asks otherwise; never off the CPU."""
    g = strided_graph(np.random.default_rng(0), "once", "subtract")
    neurons = 4 * 5 * 4 + 7
    cpu = torch.device("cpu")
    big = FUSED_IF_MIN_NEURON_STEPS // (neurons * 8) + 1
    assert not use_fused_if(g, 8, 10, cpu)
    assert use_fused_if(g, 8, big, cpu)
    assert not use_fused_if(g, 8, big, torch.device("meta"))
    assert use_fused_if(g, 8, 10, cpu, True)
    assert not use_fused_if(g, 8, big, cpu, False)
    assert not use_fused_if(g, 8, 10, torch.device("meta"), True)


def _signed(g: Graph) -> Graph:
    for n in g.nodes:
        if isinstance(n, IFNode):
            n.spikes = "signed"
    g.validate()
    return g


@pytest.mark.parametrize("mode,bits", [("once", 32), ("once", 9), ("every_step", 10)])
def test_branchy_graph_with_signed_spikes(mode, bits):
    """Signed spikes (IFNode.spikes): -1 events reach convolutions, an affine node, a concat,
    a pad and a reshape; SynOps count them as events."""
    rng = np.random.default_rng(11)
    g = _signed(branchy_graph(rng, mode, "subtract", bits))
    x = rng.integers(-4, 9, (6, 3, 6, 6)).astype(np.float32)
    _assert_same(g, x, 9)
    rec = simulate(g, x, timesteps=9, record_spikes=True)
    assert any((s < 0).any() for s in rec.spikes.values())  # the case is exercised
    assert all(s.dtype == np.int8 for s in rec.spikes.values())


def test_a_window_cut_at_a_signed_layer_counts_its_net_spikes():
    rng = np.random.default_rng(5)
    g = _signed(branchy_graph(rng, "once", "subtract", 32))
    x = rng.integers(-4, 9, (6, 3, 6, 6)).astype(np.float32)
    whole = step_simulator.simulate(g, x, timesteps=9)
    xq = torch.as_tensor(sim.quantize_input(g, x))
    for layer in [n.name for n in g.nodes if isinstance(n, IFNode)]:
        part = evaluator.run_window(g, xq, 9, needed(g, [layer]))
        np.testing.assert_array_equal(part.counts[layer].numpy(), whole.spike_counts[layer], err_msg=layer)


def test_a_window_from_kept_trains_prepares_only_what_it_simulates():
    """run_window from an IF layer's kept trains (a tuning stage's step: a plan is built for
    every batch) prepares the nodes after the cut alone: the layers before it may even lack
    their integers, and the counts after it are the whole simulation's."""
    from snncompile.tune.prefix import frontier

    rng = np.random.default_rng(5)
    g = strided_graph(rng, "once", "subtract")
    x = rng.integers(-2, 6, (5, 2, 9, 9)).astype(np.float32)
    whole = simulate(g, x, timesteps=9, record_spikes=True)
    spikes = torch.as_tensor(whole.spikes["h1"], dtype=torch.float32)
    trains = SpikeTrains(spikes, spikes.sum(dim=0), spikes.reshape(9, -1).amax(dim=1) > 0)
    front = frontier(g, ["h1"])
    assert front is not None and "c1" in front.skip
    xq = torch.as_tensor(sim.quantize_input(g, x))
    g["c1"].weight_int = None  # what the run must not read
    part = evaluator.run_window(g, xq, 9, set(needed(g, ["o"])) - front.skip, given={"h1": trains})
    np.testing.assert_array_equal(part.counts["h2"].numpy(), whole.spike_counts["h2"])
    np.testing.assert_array_equal(part.acc["o"].numpy(), whole.output_acc["o"])

"""The loihi backend (backends/loihi): limits and lowering without Lava, and bit-exactness
against the reference simulator on Lava's fixed-point CPU simulator.

The Lava tests run only where lava-nc imports (Python 3.10, as `make setup` and CI install
it); everything else runs everywhere. Networks are tiny and sample counts small: Lava runs
a few hundred steps per second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from snncompile.errors import ArtifactError, DataError, UsageError
from snncompile.ir import (AddNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode, FlattenNode,
                           Graph, IFNode, InputNode, MaxPool2dNode, PadNode)
from snncompile.plugin import LimitError, get_backend
from snncompile.sim.simulator import quantize_input, simulate

HAVE_LAVA = importlib.util.find_spec("lava") is not None
needs_lava = pytest.mark.skipif(not HAVE_LAVA, reason="lava-nc is not importable (needs Python 3.10)")


@pytest.fixture(autouse=True)
def _lava_may_set_fork(monkeypatch):
    """Lava's runtime calls ``multiprocessing.set_start_method('fork')`` when first imported,
    which raises once anything in the process has fixed the start method (torch's dynamo
    exporter does, in tests/test_frontend_exporters.py, when pytest runs both files in one
    process). The backend runs Lava in its own process; the tests here that import it in
    the test process let it set the method it needs."""
    import multiprocessing

    set_method = multiprocessing.set_start_method
    monkeypatch.setattr(multiprocessing, "set_start_method",
                        lambda method, force=False: set_method(method, force=True))


# --- a zoo of small integer graphs ------------------------------------------------------------

def _w(rng, shape, lo=-40, hi=40):
    return rng.integers(lo, hi + 1, shape).astype(np.int32)


def _dense(rng, name, inp, nin, nout, mode="every_step", lo=-40, hi=40, bias=(-20, 20)):
    w = _w(rng, (nout, nin), lo, hi)
    b = rng.integers(bias[0], bias[1] + 1, nout).astype(np.int64) if bias else None
    return DenseNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w,
                     bias_int=b, bias_mode=mode)


def _conv(rng, name, inp, cin, cout, k=3, stride=(1, 1), padding=(1, 1, 1, 1), mode="every_step"):
    w = _w(rng, (cout, cin, k, k), -30, 30)
    b = rng.integers(-10, 11, cout).astype(np.int64)
    return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w, bias_int=b,
                      stride=stride, padding=padding, bias_mode=mode)


def _if(name, inp, theta, reset="subtract", mb=18, v_init=None):
    return IFNode(name=name, inputs=[inp], threshold=np.asarray(theta), reset=reset,
                  membrane_bits=mb, v_init=None if v_init is None else np.asarray(v_init))


def mlp(rng) -> Graph:
    """Dense layers, input once, subtract and zero reset, v_init, per-step bias."""
    nodes = [InputNode(name="x", shape=(12,), out_scale=np.array(1.0), mode="once", bits=5),
             _dense(rng, "d1", "x", 12, 10), _if("s1", "d1", [200], v_init=[100]),
             _dense(rng, "d2", "s1", 10, 8), _if("s2", "d2", [50], reset="zero"),
             _dense(rng, "d3", "s2", 8, 3)]
    return Graph(nodes, ["d3"], timesteps=6)


def cnn(rng) -> Graph:
    """A Lava Conv from the graded input (symmetric padding), per-channel thresholds and
    initial membranes, first-step bias; a conv with asymmetric padding after a sum pool
    (both folded into one Dense); flatten."""
    nodes = [InputNode(name="x", shape=(2, 6, 6), out_scale=np.array(1.0), mode="every_step", bits=7),
             _conv(rng, "c1", "x", 2, 4, padding=(1, 1, 1, 1), mode="first_step"),
             _if("s1", "c1", np.reshape([60, 80, 100, 120], (4, 1, 1)),
                 v_init=np.reshape([30, 40, 50, 60], (4, 1, 1))),
             AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)),
             _conv(rng, "c2", "p1", 4, 5, stride=(2, 2), padding=(1, 0, 1, 1)),
             _if("s2", "c2", [40], reset="zero"),
             FlattenNode(name="f", inputs=["s2"]),
             _dense(rng, "d", "f", 10, 4)]
    return Graph(nodes, ["d"], timesteps=5)


def convs(rng) -> Graph:
    """Lava Convs between spiking layers: stride, rectangular padding, dilation, groups,
    non-square images, and a conv as the output layer."""
    c2 = _conv(rng, "c2", "s1", 4, 6, k=3, stride=(1, 2), padding=(2, 1, 2, 1))
    c2.dilation = (2, 1)
    w3 = _w(rng, (4, 3, 2, 2), -30, 30)
    c3 = Conv2dNode(name="c3", inputs=["s2"], weight=w3.astype(np.float32), weight_int=w3,
                    bias_int=np.arange(4, dtype=np.int64), groups=2, stride=(2, 2))
    nodes = [InputNode(name="x", shape=(1, 7, 9), out_scale=np.array(1.0), mode="once", bits=5),
             _conv(rng, "c1", "x", 1, 4, stride=(2, 1), padding=(1, 1, 1, 1), mode="first_step"),
             _if("s1", "c1", [300]), c2, _if("s2", "c2", [60]), c3]
    return Graph(nodes, ["c3"], timesteps=6)


def branches(rng) -> Graph:
    """Two branches joined by concat and by add (equal depths), padding, a saturating
    narrow membrane."""
    nodes = [InputNode(name="x", shape=(8,), out_scale=np.array(1.0), mode="every_step"),
             _dense(rng, "a", "x", 8, 6), _if("sa", "a", [60]),
             _dense(rng, "b", "x", 8, 6), _if("sb", "b", [45], reset="zero"),
             ConcatNode(name="cat", inputs=["sa", "sb"], axis=0),
             _dense(rng, "m", "cat", 12, 5, lo=-5, hi=40),
             _dense(rng, "r", "sa", 6, 5, lo=0, hi=40, bias=None),
             AddNode(name="sum", inputs=["m", "r"]),
             _if("sc", "sum", [30], mb=8),
             PadNode(name="pad", inputs=["sc"], pads=(1, 2)),
             _dense(rng, "out", "pad", 8, 3)]
    return Graph(nodes, ["out"], timesteps=7)


def residual(rng) -> Graph:
    """Skips over layers (a ResNet-style add, and the input straight into a deeper layer):
    the shorter branch's connection is delayed to line up."""
    nodes = [InputNode(name="x", shape=(8,), out_scale=np.array(1.0), mode="once", bits=5),
             _dense(rng, "d1", "x", 8, 6), _if("s1", "d1", [400]),
             _dense(rng, "d2", "s1", 6, 6, lo=-10), _if("s2", "d2", [30]),
             _dense(rng, "d3", "s2", 6, 5, bias=None), _dense(rng, "skip", "s1", 6, 5, lo=0, bias=None),
             _dense(rng, "inp", "x", 8, 5, lo=-3, hi=3),
             AddNode(name="sum", inputs=["d3", "skip", "inp"]), _if("s3", "sum", [90]),
             _dense(rng, "out", "s3", 5, 3)]
    return Graph(nodes, ["out"], timesteps=6)


def wide_bias(rng) -> Graph:
    """Biases beyond the neuron's 13-bit mantissa (sent as graded spikes), per step and
    first step (T times the bias in one step, within the 16-bit port), at depths 1 and 2."""
    d2 = _dense(rng, "d2", "s1", 7, 5, mode="first_step")
    d2.bias_int = np.array([5000, -5200, 300, 4500, -100])
    nodes = [InputNode(name="x", shape=(6,), out_scale=np.array(1.0), mode="every_step", bits=7),
             _dense(rng, "d1", "x", 6, 7, bias=(-9000, 9000)), _if("s1", "d1", [9000]),
             d2, _if("s2", "d2", [2000], v_init=[1000]),
             _dense(rng, "d3", "s2", 5, 3)]
    return Graph(nodes, ["d3"], timesteps=6)


def chain_zero(rng) -> Graph:
    """What lava-dl netx can hold: a chain of dense layers with reset-to-zero neurons."""
    nodes = [InputNode(name="x", shape=(10,), out_scale=np.array(1.0), mode="every_step", bits=7),
             _dense(rng, "d1", "x", 10, 9), _if("s1", "d1", [150], reset="zero"),
             _dense(rng, "d2", "s1", 9, 7, lo=-10), _if("s2", "d2", [40], reset="zero"),
             _dense(rng, "d3", "s2", 7, 3)]
    return Graph(nodes, ["d3"], timesteps=6)


def conv_chain_zero(rng) -> Graph:
    """A convolution (stride, padding) from the image input, then dense layers: netx holds
    it with the convolution written as its dense matrix."""
    nodes = [InputNode(name="x", shape=(2, 5, 5), out_scale=np.array(1.0), mode="every_step", bits=7),
             _conv(rng, "c1", "x", 2, 3, stride=(2, 2), padding=(1, 1, 1, 1)),
             _if("s1", "c1", [150], reset="zero"),
             FlattenNode(name="f", inputs=["s1"]),
             _dense(rng, "d2", "f", 27, 7, lo=-10), _if("s2", "d2", [40], reset="zero"),
             _dense(rng, "d3", "s2", 7, 3)]
    return Graph(nodes, ["d3"], timesteps=6)


def _validated(g: Graph) -> Graph:
    g.validate()
    return g


def _inputs(rng, g: Graph, n: int) -> np.ndarray:
    return rng.integers(-40, 90, (n,) + tuple(g.input.shape)).astype(np.float64)


# --- without Lava: limits, violations, artifact ------------------------------------------------

def test_backend_is_discovered_with_limits_and_sources():
    b = get_backend("loihi")
    info = b.info()
    lim = info["limits"]
    assert (lim["weight_bits"], lim["membrane_bits"], lim["threshold_bits"], lim["cores"]) == (8, 18, 17, 128)
    assert lim["delay_per_layer"] == 1 and info["can_run"]
    assert {"weight_bits", "membrane_bits", "threshold_bits", "cores", "fan_in"} <= set(lim["sources"])
    assert get_backend("loihi", {"cores": "4"}).limits().cores == 4
    with pytest.raises(UsageError, match="unknown loihi target option 'bogus'"):
        get_backend("loihi", {"bogus": "1"})


@pytest.mark.parametrize("build", [mlp, cnn, convs, branches, residual, wide_bias])
def test_zoo_fits_loihi(build):
    g = _validated(build(np.random.default_rng(0)))
    assert get_backend("loihi").check(g) == []
    assert all(v >= 1 for v in get_backend("loihi").cores(g).values())


def test_wide_bias_digits_are_exact_8_bit_weights():
    from snncompile_loihi.network import bias_digits

    b = np.array([0, 1, -1, 63, 64, -64, -65, 4095, -9000, 30000, 2 ** 20 + 3])
    digits, payload = bias_digits(b)
    assert digits.min() >= -64 and digits.max() <= 63
    np.testing.assert_array_equal(digits @ payload, b)
    g = _validated(wide_bias(np.random.default_rng(0)))
    from snncompile_loihi.network import build_network
    net = build_network(g)
    assert [s.dst for s in net.bias_sources] == ["s1", "s2"] and net.bias_sources[1].first_step
    assert all(not np.any(p.bias) for p in net.populations)


def test_every_violation_is_reported_at_once():
    rng = np.random.default_rng(1)
    wide = _dense(rng, "d1", "fx", 16, 8, lo=-300, hi=300)
    big_bias = _dense(rng, "d2", "s1", 8, 8, bias=(5000, 6000), mode="first_step")
    nodes = [InputNode(name="x", shape=(1, 4, 4), out_scale=np.array(1.0), mode="once"),
             MaxPool2dNode(name="mp", inputs=["x"], kernel=(2, 2), stride=(2, 2)),
             FlattenNode(name="fx", inputs=["x"]),
             wide, _if("s1", "d1", [200], mb=32),
             big_bias, _if("s2", "d2", [300000]),
             # overlapping pool: folded weights add up beyond 8 bits
             _conv(rng, "c", "x", 1, 2), _if("sc", "c", [50]),
             AvgPool2dNode(name="ap", inputs=["sc"], kernel=(3, 3), stride=(1, 1)),
             # two pools in a row have no relay form: the chain is folded into one matrix
             AvgPool2dNode(name="ap2", inputs=["ap"], kernel=(1, 1), stride=(1, 1)),
             FlattenNode(name="fa", inputs=["ap2"]),
             # folded: 101 x up to 4 windows, odd, so no exponent holds it in 8 bits
             DenseNode(name="d3", inputs=["fa"], weight=np.full((3, 8), 101, np.float32),
                       weight_int=np.full((3, 8), 101, np.int32)),
             _if("s3", "d3", [50]),
             _dense(rng, "out", "s3", 3, 2)]
    g = _validated(Graph(nodes, ["out"], timesteps=300))
    b = get_backend("loihi", {"cores": "3"})
    found = {(v.layer, v.quantity.split(" (")[0].split(" from")[0]) for v in b.check(g)}
    assert found == {
        ("d1", "weight bits"), ("s1", "membrane bits"), ("s2", "threshold"),
        ("mp", "input of a max pool"), ("s2", "bias as graded spikes"), ("s3", "folded weight"),
        ("x", "input charge per step"), ("(all)", "cores needed"),
        # T x the input (s1, sc) or a first-step bias (s2) in one step: beyond the register
        ("s1", "input current per step"), ("sc", "input current per step"),
        ("s2", "input current per step"),
    }
    with pytest.raises(LimitError) as err:
        b.lower(g, Path("/nonexistent"))
    assert "a ReLU before the max pool" in str(err.value)
    assert "--membrane-bits 18" in str(err.value)


@pytest.mark.parametrize("layers", [63, 64, 65])
def test_skip_longer_than_loihi_delays_is_a_violation(layers):
    """The input skipping ``layers`` IF layers needs that many extra steps: 63 fit DelayDense."""
    rng = np.random.default_rng(2)
    nodes = [InputNode(name="x", shape=(2,), out_scale=np.array(1.0), mode="every_step")]
    prev = "x"
    for i in range(layers):
        nodes += [_dense(rng, f"d{i}", prev, 2, 2), _if(f"s{i}", f"d{i}", [50])]
        prev = f"s{i}"
    nodes += [_dense(rng, "late", prev, 2, 2, bias=None), _dense(rng, "early", "x", 2, 2, bias=None),
              AddNode(name="sum", inputs=["late", "early"]), _if("ss", "sum", [50]),
              _dense(rng, "out", "ss", 2, 1)]
    g = _validated(Graph(nodes, ["out"], timesteps=4))
    found = [(v.layer, v.quantity, v.value, v.limit) for v in get_backend("loihi").check(g)]
    assert found == ([] if layers == 63 else [("ss", "synaptic delay from 'x' (steps)", layers, 63)])


def test_artifact_is_self_contained(tmp_path):
    g = _validated(cnn(np.random.default_rng(0)))
    get_backend("loihi").lower(g, tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"network.json", "params.npz", "run_lava.py", "lava_intfire/intfire.py",
            "lava_intfire/__init__.py"} <= names
    for py in tmp_path.rglob("*.py"):  # lava-nc and numpy only
        imports = re.findall(r"^\s*(?:import|from)\s+([\w.]+)", py.read_text(), re.M)
        assert {i.split(".")[0] for i in imports} <= {"lava", "lava_intfire", "numpy", "argparse",
                                                      "json", "os", "shutil", "sys", "tempfile",
                                                      "time", "typing",
                                                      "__future__"}, py
    net = json.loads((tmp_path / "network.json").read_text())
    assert [p["depth"] for p in net["populations"]] == [1, 2] and net["outputs"][0]["depth"] == 3
    assert [c["kind"] for c in net["connections"]] == ["conv", "dense", "dense"]
    with np.load(tmp_path / "params.npz") as z:
        w = z["conn/s1->s2/weight"]
    assert w.dtype == np.int8 and w.shape == (10, 4 * 6 * 6)


def test_netx_export_where_it_fits(tmp_path):
    import h5py

    g = _validated(chain_zero(np.random.default_rng(0)))
    get_backend("loihi").lower(g, tmp_path)
    with h5py.File(tmp_path / "netx.h5") as f:
        layers = f["layer"]
        assert sorted(layers, key=int) == ["0", "1", "2"]
        l0 = layers["0"]
        assert l0["type"][0] == b"dense" and l0["neuron/type"][0] == b"CUBA"
        assert (l0["neuron/iDecay"][()], l0["neuron/vDecay"][()], l0["neuron/vThMant"][()]) == (4096, 0, 149)
        np.testing.assert_array_equal(l0["weight"][()], g["d1"].weight_int)
        np.testing.assert_array_equal(l0["bias"][()], g["d1"].bias_int)
        assert layers["2"]["neuron/vThMant"][()] == 2 ** 17 - 1
    conv = tmp_path / "conv"
    conv.mkdir()
    gc = _validated(conv_chain_zero(np.random.default_rng(0)))
    get_backend("loihi").lower(gc, conv)
    import torch
    import torch.nn.functional as F
    eye = torch.eye(50, dtype=torch.float64).reshape(50, 2, 5, 5)  # every unit input of c1
    y = F.conv2d(F.pad(eye, (1, 1, 1, 1)), torch.as_tensor(gc["c1"].weight_int, dtype=torch.float64),
                 stride=(2, 2))
    with h5py.File(conv / "netx.h5") as f:
        np.testing.assert_array_equal(f["layer/0/weight"][()], np.rint(y.reshape(50, -1).T.numpy()))
    other = tmp_path / "mlp"
    other.mkdir()
    get_backend("loihi").lower(_validated(mlp(np.random.default_rng(0))), other)
    assert not (other / "netx.h5").exists()
    assert "resets by subtraction" in (other / "netx-unsupported.txt").read_text()
    wide = tmp_path / "wide"
    wide.mkdir()
    get_backend("loihi").lower(_weight_exp_net()[0], wide)  # weights 4 x 127: netx would clip
    assert "weights beyond +-127" in (wide / "netx-unsupported.txt").read_text()


def test_run_without_lava_says_how_to_get_it(tmp_path):
    g = _validated(mlp(np.random.default_rng(0)))
    get_backend("loihi").lower(g, tmp_path)
    b = get_backend("loihi", {"python": "/bin/false"})
    with pytest.raises(UsageError, match="lava-nc 0.10.0 is not importable.*Python 3.10"):
        b.run(tmp_path, np.zeros((1, 12)))
    with pytest.raises(ArtifactError, match="not a loihi artifact"):
        b.run(tmp_path / "missing", np.zeros((1, 12)))
    with pytest.raises(DataError, match=r"input shape \(1, 11\) does not match"):
        b.run(tmp_path, np.zeros((1, 11)))


# --- on Lava: bit for bit against the reference simulator ---------------------------------------

def _assert_bit_exact(g: Graph, x: np.ndarray, tmp_path: Path, timesteps: int | None = None,
                      record_spikes: bool = True):
    ref = simulate(g, x, timesteps=timesteps, record_spikes=record_spikes)
    b = get_backend("loihi")
    b.lower(g, tmp_path)
    got = b.run(tmp_path, quantize_input(g, x), timesteps=timesteps, record_spikes=record_spikes)
    for k, acc in ref.output_acc.items():
        np.testing.assert_array_equal(got.output_acc[k], acc, err_msg=f"output {k}")
    if record_spikes:
        assert set(got.spikes) == set(ref.spikes)
        for k, s in ref.spikes.items():
            assert got.spikes[k].shape == s.shape and got.spikes[k].dtype == np.uint8
            np.testing.assert_array_equal(got.spikes[k], s, err_msg=f"spikes of {k}")
            assert s.sum() > 0, f"layer {k} never spikes: the test would not see a difference"
    assert all(v == 0 for v in got.stats["current_wraps"].values())
    return ref, got


@needs_lava
@pytest.mark.parametrize("build", [mlp, cnn, convs, branches, residual, wide_bias])
def test_zoo_is_bit_exact_on_lava(build, tmp_path):
    rng = np.random.default_rng(3)
    g = _validated(build(rng))
    ref, got = _assert_bit_exact(g, _inputs(rng, g, 3), tmp_path)
    assert got.stats["samples"] == 3 and got.stats["lava_steps"] == 3 * g.timesteps + \
        max(json.loads((tmp_path / "network.json").read_text())["outputs"][0]["depth"], 1)
    assert got.stats["cores"] == sum(got.stats["cores_per_layer"].values()) >= 3
    if build is branches:
        assert ref.saturations["sc"] > 0  # the narrow membrane saturates: clamp checked too


@needs_lava
def test_other_window_and_outputs_only(tmp_path):
    rng = np.random.default_rng(4)
    g = _validated(mlp(rng))
    _assert_bit_exact(g, _inputs(rng, g, 2), tmp_path, timesteps=9, record_spikes=False)


def _converted(onnx_kit, input_mode: str, rng) -> tuple[Graph, np.ndarray]:
    """A real conversion (ONNX -> IR with snncompile.passes.convert, calibrated) at Loihi settings."""
    from onnx import helper

    from snncompile.calibrate.statistics import activation_scales
    from snncompile.passes.convert import ConversionOptions, convert
    from snncompile.frontend import import_onnx

    inits = {"w1": rng.normal(0, 0.4, (4, 1, 3, 3)).astype(np.float32),
             "b1": rng.normal(0, 0.1, 4).astype(np.float32),
             "w2": rng.normal(0, 0.3, (3, 4 * 3 * 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    model = onnx_kit.model(nodes, inits, in_shape=(1, 6, 6))
    ann = import_onnx(model).graph
    x = rng.uniform(0, 1, (67, 1, 6, 6)).astype(np.float32)
    opts = ConversionOptions(timesteps=8, weight_bits=8, membrane_bits=18, input_mode=input_mode,
                             input_bits=6)  # 8-bit weights x 6-bit inputs fit the 16-bit port
    return convert(ann, activation_scales(model, ann, x[3:]), opts), x[:3]


@needs_lava
def test_converted_onnx_model_is_bit_exact(tmp_path, onnx_kit):
    g, x = _converted(onnx_kit, "every_step", np.random.default_rng(5))
    assert get_backend("loihi").check(g) == []
    _assert_bit_exact(g, x, tmp_path)


@needs_lava
def test_current_beyond_24_bits_is_refused(tmp_path, onnx_kit):
    """Input once at 8 bits: T times the charge in one step can overflow Loihi's 24-bit
    current register (which wraps, where the reference saturates the membrane), so lowering
    refuses it and names the fix; the same model with the input every step fits."""
    g, x = _converted(onnx_kit, "once", np.random.default_rng(5))
    b = get_backend("loihi")
    with pytest.raises(LimitError) as err:
        b.lower(g, tmp_path)
    assert "layer 'r': input current per step" in str(err.value)
    assert "--input-mode every_step" in str(err.value)
    g2, _ = _converted(onnx_kit, "every_step", np.random.default_rng(5))
    assert not [v for v in b.check(g2) if "current" in v.quantity]


@needs_lava
def test_hung_run_is_stopped_by_the_timeout(tmp_path):
    g = _validated(mlp(np.random.default_rng(0)))
    get_backend("loihi").lower(g, tmp_path)
    b = get_backend("loihi", {"timeout_s": "0.5"})
    with pytest.raises(ArtifactError, match="did not finish within 0.5 s"):
        b.run(tmp_path, np.zeros((2, 12)))


@needs_lava
@pytest.mark.parametrize("make", [chain_zero, conv_chain_zero])
def test_netx_neuron_mapping_is_exact_with_stock_lif(tmp_path, make):
    """Rebuild the exported netx.h5 with Lava's stock LIF and Dense the way netx maps a CUBA
    layer (du = iDecay - 1, dv = vDecay, vth = vThMant, bias_exp = 6): one sample, bit-exact
    spikes against the reference (delay k per layer k). The stock LIFReset clears what the
    bias charged during the k warm-up steps before the first input arrives."""
    import h5py
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset

    rng = np.random.default_rng(6)
    g = _validated(make(rng))
    x = _inputs(rng, g, 1)
    T = g.timesteps
    ref = simulate(g, x, record_spikes=True)
    get_backend("loihi").lower(g, tmp_path)
    steps = T + 3
    src = Source(data=np.repeat(quantize_input(g, x).reshape(1, -1).T.astype(np.int32), steps, axis=1))
    port, sinks = src.s_out, []
    with h5py.File(tmp_path / "netx.h5") as f:
        for i in range(2):  # the two IF layers
            layer = f["layer"][str(i)]
            w = layer["weight"][()].astype(np.int32)
            nrn = layer["neuron"]
            dense = Dense(weights=2 * w, weight_exp=-1, num_message_bits=16 if i == 0 else 0)
            lif = LIFReset(shape=(w.shape[0],), du=int(nrn["iDecay"][()]) - 1,
                           dv=int(nrn["vDecay"][()]), vth=int(nrn["vThMant"][()]),
                           bias_mant=layer["bias"][()].astype(np.int32), bias_exp=6,
                           reset_interval=1000, reset_offset=2 + i)
            port.connect(dense.s_in)
            dense.a_out.connect(lif.a_in)
            sinks.append(Sink(shape=(w.shape[0],), buffer=steps))
            lif.s_out.connect(sinks[-1].a_in)
            port = lif.s_out
    try:
        src.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = [np.asarray(s.data.get()) for s in sinks]
    finally:
        src.stop()
    for k, (name, data) in enumerate(zip(["s1", "s2"], got), start=1):
        np.testing.assert_array_equal(data[:, k:k + T].T, ref.spikes[name][:, 0].reshape(T, -1),
                                      err_msg=name)


NETX_READER = Path(os.environ.get("SNNCOMPILE_LAVA_DL", Path(sys.prefix) / "lava-dl"))


def _import_netx(monkeypatch):
    """lava-dl's own netx reader, from the folder ``make setup`` installs lava-dl 0.6.0 into
    without its dependencies (it pins torch 2.3, so it is never a dependency of ours). netx
    needs one module of slayer (``slayer.neuron.rf``); slayer's ``__init__`` imports OpenCV
    for object detection, so slayer and slayer.neuron enter as bare packages and only the
    modules netx imports run."""
    slayer = NETX_READER / "lava" / "lib" / "dl" / "slayer"
    if not slayer.is_dir():
        pytest.skip(f"lava-dl's netx reader is not in {NETX_READER}: run 'make setup'")
    monkeypatch.syspath_prepend(str(NETX_READER))
    for name, path in (("lava.lib.dl.slayer", slayer), ("lava.lib.dl.slayer.neuron", slayer / "neuron")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, module)
    from lava.lib.dl import netx
    return netx


@needs_lava
@pytest.mark.parametrize("make", [chain_zero, conv_chain_zero])
def test_netx_file_is_exact_with_lava_dl_reader(tmp_path, monkeypatch, make):
    """Load netx.h5 with lava-dl's netx.hdf5.Network (input_message_bits=16, reset_interval=T,
    reset_offset=1), run two samples back to back: every hidden layer's spikes and the
    output accumulators (the last block's v >> 6 at the window's last step) are the
    reference's, bit for bit."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.monitor.process import Monitor

    netx = _import_netx(monkeypatch)
    rng = np.random.default_rng(7)
    g = _validated(make(rng))
    x, T, n = _inputs(rng, g, 2), g.timesteps, 2
    ref = simulate(g, x, record_spikes=True)
    get_backend("loihi").lower(g, tmp_path)
    net = netx.hdf5.Network(net_config=str(tmp_path / "netx.h5"), input_message_bits=16,
                            reset_interval=T, reset_offset=1)
    L = len(net.layers)
    steps = n * T + L
    cols = np.zeros((int(np.prod(g.input.shape)), steps), np.int32)
    cols[:, :n * T] = np.repeat(quantize_input(g, x).reshape(n, -1).T, T, axis=1)
    src = Source(data=cols)
    src.s_out.connect(net.inp)
    sinks = []
    for layer in net.layers[:-1]:
        sinks.append(Sink(shape=layer.out.shape, buffer=steps))
        layer.out.connect(sinks[-1].a_in)
    mon = Monitor()
    mon.probe(net.layers[-1].neuron.v, steps)
    try:
        net.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        spikes = [np.asarray(s.data.get()) for s in sinks]
        v = next(iter(next(iter(mon.get_data().values())).values()))
    finally:
        net.stop()
    for k, (name, data) in enumerate(zip(["s1", "s2"], spikes), start=1):  # block k-1 at delay k
        got = data[:, k:k + n * T].reshape(-1, n, T).transpose(2, 1, 0)
        np.testing.assert_array_equal(got, ref.spikes[name].reshape(T, n, -1), err_msg=name)
        assert ref.spikes[name].sum() > 0
    out = v[[L + i * T + T - 1 for i in range(n)]].astype(np.int64) // 64
    np.testing.assert_array_equal(out, ref.output_acc["d3"])


@pytest.mark.skipif(not HAVE_LAVA, reason="lava-nc is not importable (needs Python 3.10)")
def test_conformance_kit_on_lava(tmp_path):
    """The plugin authors' kit, run on Lava's fixed_pt simulator: every zoo network Loihi can
    hold is bit-exact (max pools too, as SpikeMaxPool); the two it cannot hold are excluded
    by real limits, named."""
    from snncompile.testing import check_backend, zoo_names

    report = check_backend("loihi", workdir=tmp_path)
    assert set(report.skipped) == {"membrane_saturation"}
    assert "maxpool_counts" in report.passed and "signed_spikes" in report.passed
    assert "current per step" in report.skipped["membrane_saturation"][0]
    assert sorted(report.passed) == sorted(set(zoo_names()) - set(report.skipped))


# --- one truth for limits and lowering: the edge of every quantity, on Lava ----------------------

def _chain(x: InputNode, weights: list[np.ndarray], theta: list[int], T: int, exps=None,
           biases=None) -> Graph:
    """x -> dense -> IF -> ... -> dense output, with the given integer weights (and IR weight
    exponents: the weights are the full values m * 2^e)."""
    nodes, prev = [x], x.name
    exps = exps or [0] * len(weights)
    biases = biases or [None] * len(weights)
    for i, (w, e, b) in enumerate(zip(weights, exps, biases)):
        w = np.asarray(w, np.int32)
        nodes.append(DenseNode(name=f"d{i}", inputs=[prev], weight=w.astype(np.float32), weight_int=w,
                               weight_exp=e, bias_int=None if b is None else np.asarray(b, np.int64)))
        prev = f"d{i}"
        if i < len(theta):
            nodes.append(_if(f"s{i}", prev, [theta[i]]))
            prev = f"s{i}"
    return _validated(Graph(nodes, [prev], timesteps=T))


def _weight_exp_net() -> tuple[Graph, np.ndarray]:
    """Mantissas +-127 with exponent 2 (values +-508, as --weight-exp 2 gives), in every sign
    mode: exact as weights 2m, weight_exp 1."""
    rng = np.random.default_rng(10)
    x = InputNode(name="x", shape=(4,), out_scale=np.array(1.0), mode="every_step", bits=5)
    w1 = rng.choice([-127, 127, -3, 5], (6, 4)) * 4
    w2 = np.abs(rng.choice([-127, 127, 1, -1], (4, 6))) * 4
    w3 = -np.abs(rng.choice([-127, 127, 1, -1], (3, 4))) * 4
    g = _chain(x, [w1, w2, w3], [400, 300], T=5, exps=[2, 2, 2])
    return g, rng.integers(-15, 16, (2, 4)).astype(np.float64)


def _edge_weights(fits: bool) -> tuple[Graph, np.ndarray]:
    """Two dense layers in a row fold into one matrix: 127 x 4 = 508 is mantissa 127 with
    exponent 2; 127 x 4 + 1 = 509 needs exponent 3 but is odd (its low bits would be lost)."""
    x = InputNode(name="x", shape=(1,), out_scale=np.array(1.0), mode="every_step", bits=6)
    w0, w1 = np.array([[127], [1]], np.int32), np.array([[4, 1 if not fits else 0]], np.int32)
    nodes = [x, DenseNode(name="a", inputs=["x"], weight=w0.astype(np.float32), weight_int=w0),
             DenseNode(name="b", inputs=["a"], weight=w1.astype(np.float32), weight_int=w1),
             _if("s0", "b", [1000]), _dense(np.random.default_rng(0), "out", "s0", 1, 2)]
    return _validated(Graph(nodes, ["out"], timesteps=4)), np.array([[31.0], [-7.0]])


def _edge_threshold(fits: bool) -> tuple[Graph, np.ndarray]:
    """theta = 2^17 - 1 (vth = 2^17 - 2) is reached within the window; 2^17 is refused."""
    x = InputNode(name="x", shape=(2,), out_scale=np.array(1.0), mode="every_step", bits=8)
    theta = 2 ** 17 - 1 if fits else 2 ** 17
    g = _chain(x, [[[127, 127]] * 2, [[1, 1]]], [theta], T=10)
    return g, np.array([[127.0, 127.0], [100.0, -3.0]])


def _edge_current(fits: bool) -> tuple[Graph, np.ndarray]:
    """A step's input of exactly 2^15 - 1 (31 x 1057) arrives intact; one more is refused."""
    x = InputNode(name="x", shape=(9,), out_scale=np.array(1.0), mode="every_step", bits=6)
    row = [127] * 8 + [41 if fits else 42]
    g = _chain(x, [[row, [-r for r in row]], [[1, 1]]], [20000], T=4)
    return g, np.array([[31.0] * 9, [-31.0] * 9])


def _edge_payload(fits: bool) -> tuple[Graph, np.ndarray]:
    """Input once: T x the level in one graded spike, 4095 x 8 = 32760 fits 16 bits; T = 9 does not."""
    x = InputNode(name="x", shape=(1,), out_scale=np.array(1.0), mode="once", bits=13)
    g = _chain(x, [[[1]], [[1]]], [3000], T=8 if fits else 9)
    return g, np.array([[4095.0], [-4095.0]])


def _edge_bias(fits: bool) -> tuple[Graph, np.ndarray]:
    """Biases: 4095 in the neuron's bias_mant, 32767 - 127 as graded spikes beside an input of
    127 (the port's 2^15 - 1 in one step); one more is refused."""
    x = InputNode(name="x", shape=(1,), out_scale=np.array(1.0), mode="every_step", bits=8)
    g = _chain(x, [[[1], [1]], [[1, 1]]], [40000], T=4,
               biases=[[4095, 32640 if fits else 32641], None])
    return g, np.array([[127.0], [-127.0]])


EDGES = {"weights": _edge_weights, "threshold": _edge_threshold, "current": _edge_current,
         "payload": _edge_payload, "bias": _edge_bias}
REFUSED_AS = {"weights": {"folded weight"}, "threshold": {"threshold"},
              "current": {"input current per step"}, "bias": {"input current per step"},
              # T x the level is both the graded spike and the current it brings in one step
              "payload": {"input charge per step", "input current per step"}}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_first_value_past_each_edge_is_refused(name):
    g, _ = EDGES[name](False)
    found = get_backend("loihi").check(g)
    assert {v.quantity.split(" (")[0].split(" from")[0] for v in found} == REFUSED_AS[name], found
    g, _ = EDGES[name](True)
    assert get_backend("loihi").check(g) == []


def test_emitted_values_are_the_checked_encodings(tmp_path):
    """The artifact holds mantissas and exponents (not wrapped int8 weights), vth and bias_mant."""
    g, _ = _weight_exp_net()
    get_backend("loihi").lower(g, tmp_path)
    net = json.loads((tmp_path / "network.json").read_text())
    assert [c["weight_exp"] for c in net["connections"]] == [2, 2, 2]
    with np.load(tmp_path / "params.npz") as z:
        np.testing.assert_array_equal(z["conn/x->s0/weight"].astype(np.int64) * 4, g["d0"].weight_int)
        assert z["pop/s0/vth"][0] == 399
    assert net["current_max"] == 2 ** 15 - 1


@needs_lava
@pytest.mark.parametrize("name", sorted(EDGES))
def test_largest_accepted_value_is_exact_on_lava(name, tmp_path):
    g, x = EDGES[name](True)
    ref, _ = _assert_bit_exact(g, x, tmp_path, record_spikes=False)
    if name == "threshold":  # the edge is reached, not only allowed
        assert simulate(g, x, record_spikes=True).spikes["s0"].sum() > 0


@needs_lava
def test_weight_exp_build_is_exact_on_lava(tmp_path):
    """--weight-exp 2 weights (their int8 cast used to wrap) are exact on Lava."""
    g, x = _weight_exp_net()
    _assert_bit_exact(g, x, tmp_path)


@needs_lava
def test_delay_edge_on_lava():
    """63 extra steps (the longest skip check accepts) through the DelayDense the runner builds."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import DelayDense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from snncompile_loihi.encode import DELAY_MAX, DoesNotFit, delay_code

    with pytest.raises(DoesNotFit):
        delay_code(DELAY_MAX + 1)
    d = delay_code(DELAY_MAX)
    data = np.zeros((1, 70), np.int32)
    data[0, 0] = 1
    src = Source(data=data)
    dense = DelayDense(weights=np.array([[2 * 5]]), delays=np.array([[d]]), max_delay=d,
                       weight_exp=-1)
    sink = Sink(shape=(1,), buffer=70)
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(sink.a_in)
    try:
        src.run(condition=RunSteps(num_steps=70), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got = np.asarray(sink.data.get())[0]
    finally:
        src.stop()
    assert got[1 + d] == 5 and np.count_nonzero(got) == 1, got  # sent at step 1, +1, +63


# --- convolutions at their real size ---------------------------------------------------------------

def _cifar_conv(rng, name, inp, cin, cout, stride=(1, 1), lo=-30, hi=30):
    w = _w(rng, (cout, cin, 3, 3), lo, hi)
    return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w,
                      bias_int=rng.integers(-5, 6, cout).astype(np.int64), stride=stride,
                      padding=(1, 1, 1, 1))


def cifar_allconv(rng) -> Graph:
    """A CIFAR-size all-convolutional CNN (3x32x32 input, 27,648 IF neurons): no dense matrix."""
    x = InputNode(name="x", shape=(3, 32, 32), out_scale=np.array(1.0), mode="every_step", bits=6)
    nodes = [x, _cifar_conv(rng, "c1", "x", 3, 16, lo=-15, hi=20), _if("s1", "c1", [300]),
             _cifar_conv(rng, "c2", "s1", 16, 32, stride=(2, 2)), _if("s2", "c2", [60]),
             _cifar_conv(rng, "c3", "s2", 32, 32, stride=(2, 2)), _if("s3", "c3", [60]),
             _cifar_conv(rng, "c4", "s3", 32, 10, stride=(2, 2)), _if("s4", "c4", [40]),
             FlattenNode(name="f", inputs=["s4"]), _dense(rng, "out", "f", 160, 10)]
    return _validated(Graph(nodes, ["out"], timesteps=4))


def cifar_resnet(rng) -> Graph:
    """A CIFAR-size residual network: an identity skip over two conv layers (a delayed Conv)
    and a 1x1 projection skip, as ResNet blocks have."""
    w_proj = _w(rng, (32, 16, 1, 1), -30, 30)
    nodes = [InputNode(name="x", shape=(3, 32, 32), out_scale=np.array(1.0), mode="every_step", bits=6),
             _cifar_conv(rng, "c1", "x", 3, 16, lo=-15, hi=20), _if("s1", "c1", [300]),
             _cifar_conv(rng, "c2", "s1", 16, 16), _if("s2", "c2", [60]),
             _cifar_conv(rng, "c3", "s2", 16, 16, hi=40),
             AddNode(name="a3", inputs=["c3", "s1"]), _if("s3", "a3", [60]),
             _cifar_conv(rng, "c4", "s3", 16, 32, stride=(2, 2)), _if("s4", "c4", [60]),
             _cifar_conv(rng, "c5", "s4", 32, 32),
             Conv2dNode(name="p5", inputs=["s3"], weight=w_proj.astype(np.float32), weight_int=w_proj,
                        stride=(2, 2)),
             AddNode(name="a5", inputs=["c5", "p5"]), _if("s5", "a5", [60]),
             _cifar_conv(rng, "c6", "s5", 32, 8, stride=(4, 4)), _if("s6", "c6", [40]),
             FlattenNode(name="f", inputs=["s6"]), _dense(rng, "out", "f", 8 * 4 * 4, 10)]
    return _validated(Graph(nodes, ["out"], timesteps=4))


@pytest.mark.parametrize("build", [cifar_allconv, cifar_resnet])
def test_cifar_size_lowers_to_conv_processes(build, tmp_path):
    g = build(np.random.default_rng(11))
    assert get_backend("loihi").check(g) == []
    get_backend("loihi").lower(g, tmp_path)
    net = json.loads((tmp_path / "network.json").read_text())
    kinds = [(c["kind"], c["delay"]) for c in net["connections"]]
    assert sum(1 for k, _ in kinds if k == "conv") == len(kinds) - 1  # all but the classifier
    if build is cifar_resnet:
        assert ("conv", 1) in kinds  # the identity skip, delayed one step


@needs_lava
@pytest.mark.parametrize("build", [cifar_allconv, cifar_resnet])
def test_cifar_size_is_bit_exact_on_lava(build, tmp_path):
    rng = np.random.default_rng(12)
    g = build(rng)
    x = rng.integers(0, 32, (2, 3, 32, 32)).astype(np.float64)
    _, got = _assert_bit_exact(g, x, tmp_path)
    assert got.stats["samples"] == 2


# --- property: whatever check passes is exact on Lava ----------------------------------------------

def _random_graph(seed: int) -> Graph:
    """A small random graph: dense or conv layers, weight exponents, resets, input modes,
    bits, odd weights and sign modes, thresholds; it may or may not fit."""
    rng = np.random.default_rng(seed)
    mode = str(rng.choice(["once", "every_step"]))
    conv = bool(rng.integers(2))
    x = InputNode(name="x", shape=(2, 5, 5) if conv else (7,), out_scale=np.array(1.0), mode=mode,
                  bits=int(rng.integers(4, 9)))
    nodes, prev, shape = [x], "x", x.shape
    for i in range(int(rng.integers(1, 4))):
        e = int(rng.integers(0, 3))
        top = int(rng.choice([5, 40, 127]))
        sign = rng.choice([-1, 1]) if rng.random() < 0.3 else None  # one sign mode, or mixed
        if conv and len(shape) == 3:
            cout = int(rng.integers(2, 5))
            w = rng.integers(-top, top + 1, (cout, shape[0], 3, 3))
            w = (np.abs(w) * sign if sign is not None else w) << e
            n = Conv2dNode(name=f"w{i}", inputs=[prev], weight=w.astype(np.float32),
                           weight_int=w.astype(np.int32), weight_exp=e, padding=(1, 1, 1, 1),
                           bias_int=rng.integers(-50, 50, cout), stride=(1, 1) if i else (2, 2),
                           bias_mode="first_step" if mode == "once" else "every_step")
        else:
            if len(shape) > 1:
                nodes.append(FlattenNode(name=f"f{i}", inputs=[prev]))
                prev, shape = f"f{i}", (int(np.prod(shape)),)
            nout = int(rng.integers(3, 8))
            w = rng.integers(-top, top + 1, (nout, shape[0]))
            w = (np.abs(w) * sign if sign is not None else w) << e
            n = DenseNode(name=f"w{i}", inputs=[prev], weight=w.astype(np.float32),
                          weight_int=w.astype(np.int32), weight_exp=e,
                          bias_int=rng.integers(-50, 50, nout),
                          bias_mode="first_step" if mode == "once" else "every_step")
        nodes.append(n)
        theta = int(rng.integers(1, 4)) * top * (1 << e) * int(rng.choice([1, 4]))
        nodes.append(_if(f"s{i}", n.name, [theta], reset=str(rng.choice(["subtract", "zero"]))))
        prev = f"s{i}"
        shape = tuple(Graph(nodes, [prev]).validate() or Graph(nodes, [prev])[prev].shape)
    if len(shape) > 1:
        nodes.append(FlattenNode(name="fo", inputs=[prev]))
        prev, shape = "fo", (int(np.prod(shape)),)
    w = rng.integers(-20, 21, (3, shape[0]))
    nodes.append(DenseNode(name="out", inputs=[prev], weight=w.astype(np.float32),
                           weight_int=w.astype(np.int32)))
    return _validated(Graph(nodes, ["out"], timesteps=int(rng.integers(3, 7))))


@needs_lava
def test_random_graphs_that_check_passes_are_exact_on_lava(tmp_path):
    """Seeded random small graphs: each one check accepts runs bit-exact on Lava (spikes of
    every layer, outputs, no port overflow); enough of them are accepted to mean something."""
    accepted = 0
    for seed in range(12):
        g = _random_graph(seed)
        if get_backend("loihi").check(g):
            continue
        accepted += 1
        rng = np.random.default_rng(seed)
        x = rng.integers(-200, 200, (2,) + tuple(g.input.shape)).astype(np.float64)
        ref = simulate(g, x, record_spikes=True)
        b = get_backend("loihi")
        d = tmp_path / str(seed)
        d.mkdir()
        b.lower(g, d)
        got = b.run(d, quantize_input(g, x), record_spikes=True)
        for k, acc in ref.output_acc.items():
            np.testing.assert_array_equal(got.output_acc[k], acc, err_msg=f"seed {seed} output {k}")
        for k, s in ref.spikes.items():
            np.testing.assert_array_equal(got.spikes[k], s, err_msg=f"seed {seed} spikes of {k}")
        assert not any(got.stats["current_wraps"].values())
        if accepted == 4:
            break
    assert accepted == 4


@needs_lava
def test_depthwise_conv_of_128_channels_is_bit_exact(tmp_path):
    """A depthwise conv of 128 channels (MobileNetV2's expanded 32) on Lava: Lava's Conv
    model held ``groups`` as int8, so 128 groups wrapped to -128 and the layer's spikes
    differed from the reference (127 were exact)."""
    rng = np.random.default_rng(0)
    c, s = 128, 2

    def conv(name, inp, groups, k, m):
        w = rng.integers(-m, m + 1, (c, c // groups, k, k)).astype(np.int32)
        return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w,
                          bias_int=rng.integers(-10, 11, c).astype(np.int64), groups=groups,
                          padding=(k // 2,) * 4, bias_mode="every_step")

    w = rng.integers(-20, 21, (4, c * s * s)).astype(np.int32)
    g = _validated(Graph([InputNode(name="x", shape=(c, s, s), out_scale=np.array(1.0), mode="every_step"),
                          conv("c1", "x", 1, 1, 1), _if("s1", "c1", 40),
                          conv("c2", "s1", c, 3, 30), _if("s2", "c2", 30), FlattenNode(name="f", inputs=["s2"]),
                          DenseNode(name="y", inputs=["f"], weight=w.astype(np.float32), weight_int=w,
                                    bias_int=np.zeros(4, np.int64), bias_mode="every_step")],
                         ["y"], timesteps=4))
    _assert_bit_exact(g, rng.integers(-3, 6, (2, c, s, s)).astype(np.float64), tmp_path)

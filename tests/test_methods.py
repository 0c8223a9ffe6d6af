"""The tuning methods besides PTL (tandem, ltl, stdb): the registry and its errors, the
surrogate gradients and LTL targets against their formulas, the surrogate-gradient forward
against the integer simulator, and each method end to end through the CLI on digits."""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from snncompile.ir import DenseNode, Graph, IFNode, InputNode
from snncompile.ir.serialize import load_graph
from snncompile.sim.evaluator import SpikeTrains, Traced, run_window
from snncompile.sim.simulator import quantized_input
from snncompile.tune.bptt import forward, surrogate_if
from snncompile.tune.surrogate import Surrogate, linear_grad, stdb_grad
from snncompile.targets.rules import violations
from snncompile.tune.ltl import ltl_target, teacher_scales
from snncompile.tune.methods import METHODS, known
from snncompile.tune.model import TandemNet


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_stdb_and_linear_surrogates_follow_their_formulas():
    dt = torch.tensor([0.0, 1.0, 5.0, 100.0])
    for a, b in ((0.3, 0.01), (1.0, 0.5)):
        want = [a * math.exp(-b * d) for d in dt.tolist()]
        np.testing.assert_allclose(stdb_grad(dt, a, b).numpy(), want, rtol=1e-6)
    u = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.25, 2.0, 3.0])
    np.testing.assert_allclose(linear_grad(u, 0.3).numpy(), [0, 0, 0.15, 0.3, 0.225, 0, 0], atol=1e-7)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_surrogate_if_spikes_as_the_simulator_and_its_gradient_is_the_surrogate(reset):
    """The simulator's traced IF layer with the surrogate's spike step: the spikes of the
    untraced run; d s[t] / d cur[t] = g(dt) / theta, dt counted from the neuron's last spike
    (step -1 before its first). The currents [5, 1], [1, 1], [3, 1] come from one given
    spike per step through the columns of a dense weight, whose gradient is the current's."""
    theta = 4.0
    one = np.ones(1)
    w_int = np.array([[5, 1, 3], [1, 1, 1]])
    n = IFNode(name="h", inputs=["d"], threshold=np.array([4]), reset=reset, out_scale=one)
    g = Graph([InputNode(name="x", shape=(3,), out_scale=one),
               IFNode(name="h0", inputs=["x"], threshold=np.array([1]), out_scale=one),
               DenseNode(name="d", inputs=["h0"], weight=w_int.astype(np.float32), weight_int=w_int,
                         out_scale=one), n], ["h"], timesteps=3)
    eye = torch.eye(3, dtype=torch.float32).reshape(3, 1, 3)  # step t: a spike of neuron t
    given = {"h0": SpikeTrains(eye, eye.sum(dim=0), torch.ones(3, dtype=torch.bool))}
    xq, run = torch.zeros(1, 3), dict(nodes={"h0", "d", "h"}, given=given, keep_spikes={"h"})
    want = {fused: run_window(g, xq, 3, fused_if=fused, **run) for fused in (True, False)}
    w = torch.tensor(w_int, dtype=torch.float32, requires_grad=True)
    res = run_window(g, xq, 3, traced=Traced(lambda _: (w, None), surrogate_if(Surrogate("exp", 0.3, 0.01)).step),
                     **run)
    s = res.spikes["h"][:, 0]
    for ref in want.values():
        assert torch.equal(s.detach(), ref.spikes["h"][:, 0].to(s.dtype))
        assert torch.equal(res.counts["h"].detach(), ref.counts["h"])
    assert s[:, 0].tolist() == [1.0, 0.0, 1.0] and s[:, 1].sum() == 0
    s[2].sum().backward()
    # neuron 0 spiked at t=0: dt = 2 at t=2; neuron 1 never spiked: dt = 3
    np.testing.assert_allclose(w.grad[:, 2].numpy(), [0.3 * math.exp(-0.02) / theta,
                                                     0.3 * math.exp(-0.03) / theta], rtol=1e-6)


def test_ltl_target_is_the_clamped_normalized_teacher_activation():
    a = torch.tensor([[-1.0, 0.0, 1.0, 2.0, 5.0]])
    np.testing.assert_allclose(ltl_target(a, torch.tensor(2.0)).numpy(), [[0, 0, 0.5, 1, 1]])
    per_channel = torch.tensor([[1.0, 4.0]])
    np.testing.assert_allclose(ltl_target(per_channel, torch.tensor([2.0, 8.0])).numpy(), [[0.5, 0.5]])


def test_ltl_scales_are_the_teachers_activation_percentile(digits_net):
    """P is the 99.9th percentile of the teacher ANN's ReLU output (onnxruntime computes the
    same statistic at calibration; the teacher sees 8-bit inputs, hence the tolerance)."""
    g, x = digits_net
    teacher = TandemNet(g)
    p = teacher_scales(teacher, torch.as_tensor(x), 99.9)
    assert list(p) == teacher.layers
    for layer in teacher.layers:
        np.testing.assert_allclose(p[layer].reshape(-1), np.asarray(g[layer].lam).reshape(-1), rtol=0.03)
    with torch.no_grad():
        _, vals, _ = teacher._values(torch.as_tensor(x))
    first = teacher.layers[0]
    assert p[first][0] == pytest.approx(np.percentile(vals[first].numpy(), 99.9))


@pytest.fixture(scope="module")
def digits_net(digits_dir):
    from snncompile.calibrate.statistics import activation_scales
    from snncompile.passes.convert import ConversionOptions, convert
    from snncompile.frontend import import_onnx, load_onnx

    m = load_onnx(str(digits_dir / "digits_cnn.onnx"))
    ann = import_onnx(m).graph
    x = np.load(digits_dir / "calib.npz")["x"]
    return convert(ann, activation_scales(m, ann, x), ConversionOptions(timesteps=4, weight_bits=8)), x


def test_surrogate_forward_is_the_integer_network(digits_net):
    """The BPTT forward runs the exact integers (output equal to the tandem forward at the
    last stage, i.e. to the untraced window evaluator), and its gradient reaches every
    trained weight."""
    g, x = digits_net
    net = TandemNet(g, bits=8, fanin=64)
    net.set_stage(net.n_stages)
    xb = torch.as_tensor(x[:32])
    out, res = forward(net, xb, surrogate_if(Surrogate("linear")))
    assert torch.equal(out, net(xb))
    ints = run_window(net.to_graph(), quantized_input(g, xb), net.T)
    for layer in net.layers:
        assert torch.equal(res.counts[layer].detach(), ints.counts[layer])
    out.sum().backward()
    assert all(float(p.grad.abs().sum()) > 0 for p in net.weight.values())


@pytest.fixture(scope="module")
def small_train(digits_dir, tmp_path_factory):
    tr = np.load(digits_dir / "train.npz")
    p = tmp_path_factory.mktemp("methods") / "train400.npz"
    np.savez(p, x=tr["x"][:400], y=tr["y"][:400])
    return p


# The fan-in the end-to-end runs impose: small enough that pruning without tuning costs the
# digits CNN accuracy (at 64, with relays after its pools, conversion alone keeps 0.94).
FANIN = 16


@pytest.fixture(scope="module")
def plain_accuracy(digits_dir, tmp_path_factory):
    """Validation accuracy of --method none under the same limits (pruned, not tuned)."""
    d = digits_dir
    out = tmp_path_factory.mktemp("none") / "out"
    r = run("convert", str(d / "digits_cnn.onnx"), "-o", str(out), "--calib", str(d / "calib.npz"),
            "-T", "4", "--bits", "8", "--fanin", str(FANIN), "--method", "none")
    assert r.returncode == 0, r.stderr
    e = run("evaluate", str(out), "--data", str(d / "val.npz"), "--json")
    return json.loads(e.stdout)["snn_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [("tandem", []), ("ltl", []), ("stdb", [])])
def test_method_end_to_end_meets_limits_and_beats_no_tuning(method, extra, digits_dir, small_train,
                                                            plain_accuracy, tmp_path):
    """A few epochs on 400 training digits at T=4, 8-bit weights, fan-in 16: the artifact
    meets the limits exactly, the simulator scores it as training reported, and it beats
    conversion alone under the same limits."""
    d = digits_dir
    out = tmp_path / method
    r = run("convert", str(d / "digits_cnn.onnx"), "-o", str(out), "--calib", str(d / "calib.npz"),
            "-T", "4", "--bits", "8", "--fanin", str(FANIN), "--method", method, "--train", str(small_train),
            "--val", str(d / "val.npz"), "--epochs", "4", "--json", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["tuning"]["method"] == method and summary["tuning"]["epochs"] <= 4
    assert violations(load_graph(out), bits=8, fanin=FANIN) == []
    ev = json.loads(run("evaluate", str(out), "--data", str(d / "val.npz"), "--json").stdout)
    assert ev["max_weight_bits"] <= 8 and ev["max_fanin"] <= FANIN
    # what training reported for the integer network is what the reference simulator gets
    assert ev["snn_accuracy"] == pytest.approx(summary["tuning"]["val_accuracy"], abs=1e-6)
    assert ev["snn_accuracy"] > max(0.3, plain_accuracy + 0.1), (ev["snn_accuracy"], plain_accuracy)


def test_registry_names_and_aliases():
    assert set(METHODS) == {"ptl", "tandem", "ltl", "stdb"}
    assert {"tl", "none"} <= set(known())


def _request(d, out, **kw):
    from snncompile.app.compile import CompileRequest

    base = {"calib": str(d / "calib.npz"), "train": str(d / "train.npz"), "val": str(d / "val.npz")}
    return CompileRequest(model=str(d / "digits_cnn.onnx"), out=str(out), **{**base, **kw})


@pytest.mark.parametrize("kw,world,expect", [
    ({"method": "ltl", "resume": True}, 1, "--resume cannot be honoured by --method ltl"),
    ({"method": "stdb"}, 2, "--method stdb does not run under torchrun"),
    ({"method": "ptl", "surrogate": "exp"}, 1, "--surrogate cannot be honoured by --method ptl"),
    ({"method": "tl", "surrogate_beta": 0.1}, 1, "--surrogate-beta cannot be honoured by --method tandem"),
    ({"method": "ltl", "balance_scale": 0.5}, 1, "--balance-scale cannot be honoured by --method ltl"),
    ({"method": "stdb", "surrogate_alpha": 0.0}, 1, "--surrogate-alpha must be > 0"),
    ({"method": "stdb", "balance_scale": -1.0}, 1, "--balance-scale must be > 0"),
    ({"method": "none", "train": None, "val": None, "surrogate": "linear"}, 1,
     "--surrogate cannot be honoured by --method none"),
])
def test_options_a_method_cannot_honour_are_refused_before_work(kw, world, expect, digits_dir, tmp_path,
                                                                monkeypatch):
    from snncompile.errors import UsageError
    from snncompile.app.compile import compile_model

    monkeypatch.setenv("WORLD_SIZE", str(world))
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=expect.replace("(", r"\(")):
        compile_model(_request(digits_dir, out, **kw))
    assert not out.exists()


def test_unknown_method_lists_the_known_ones(digits_dir, tmp_path):
    d = digits_dir
    out = tmp_path / "out"
    r = run("convert", str(d / "digits_cnn.onnx"), "-o", str(out), "--train", str(d / "train.npz"),
            "--val", str(d / "val.npz"), "--method", "bogus")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown --method 'bogus'")
    assert all(m in r.stderr for m in ("ptl", "tandem", "ltl", "stdb", "none")) and "Traceback" not in r.stderr
    assert not out.exists()


def test_tandem_trains_every_layer(digits_net, digits_dir):
    """One stage with everything spiking trains all weights, not only the output layer's
    (the old 'tl' fixed every hidden layer as if earlier stages had run)."""
    from snncompile.data import Dataset
    from snncompile.tune.options import TrainOptions
    from snncompile.tune.ptl import tune

    g, _ = digits_net
    tr = np.load(digits_dir / "train.npz")
    data = Dataset(x=tr["x"][:64], y=tr["y"][:64], path="train")
    net = TandemNet(g, bits=8)
    tune(net, data, data, TrainOptions(epochs=1, method="tandem", batch_size=32, recalibrate=False))
    assert all(p.requires_grad for p in net.weight.values())

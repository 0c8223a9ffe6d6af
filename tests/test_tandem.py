"""Tandem layers: the staged torch forward equals the reference simulator bit for bit, the
backward is the straight-through tandem rule, and the write-back pass gives a valid IR."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from snncompile.calibrate.statistics import activation_scales
from snncompile.passes.convert import ConversionOptions, convert
from snncompile.errors import UsageError
from snncompile.frontend import import_onnx
from snncompile.ir import IFNode
from snncompile.ir.structure import population_fanin, weight_bits
from snncompile.sim.evaluator import run_window
from snncompile.sim.simulator import simulate
from snncompile.passes.constrain import fanin_budgets, topk_mask
from snncompile.targets.rules import violations
from snncompile.sim.simulator import quantized_input
from snncompile.tune.ann_path import unit_scales
from snncompile.tune.model import TandemNet
from snncompile.passes.requant import requantize


class Branchy(nn.Module):
    """Strided and asymmetrically padded convs, a residual add, a concat, max and avg pools."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(2, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.ca = nn.Conv2d(6, 4, 1)
        self.cb = nn.Conv2d(6, 3, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2, padding=1)
        self.fc1 = nn.Linear(7 * 3 * 3, 12)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        a = torch.relu(self.c0(x))
        a = torch.relu(self.c1(a) + a)
        pa = self.pool(torch.relu(self.ca(F.pad(a, (0, 1, 0, 1)))))  # 9x9 -> 4x4
        b = torch.cat([pa, torch.relu(self.cb(a))], 1)
        b = self.avg(b)  # padded: 4x4 -> 3x3
        return self.fc2(torch.relu(self.fc1(torch.flatten(b, 1))))


def _export(net: nn.Module, shape) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, *shape),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return onnx.load_from_string(buf.getvalue())


def calibrated(module: type[nn.Module], samples: int):
    """A seeded ``module`` exported to ONNX and imported, its activation scales on
    ``samples`` random (2, 8, 8) inputs, and those inputs."""
    torch.manual_seed(0)
    model = _export(module(), (2, 8, 8))
    x = np.random.default_rng(0).random((samples, 2, 8, 8)).astype(np.float32)
    ann = import_onnx(model).graph
    return ann, activation_scales(model, ann, x), x


@pytest.fixture(scope="module")
def branchy():
    return calibrated(Branchy, 48)


def _assert_exact(net: TandemNet, x: np.ndarray) -> None:
    """The tandem forward at the last stage against the reference simulator."""
    net.set_stage(net.n_stages)
    with torch.no_grad():
        y, ints = net(torch.tensor(x), return_ints=True)
    g = net.to_graph()
    ref = simulate(g, x, batch_size=17)
    assert set(ref.spike_counts) <= set(ints.counts) and ref.spike_counts
    for k, v in ref.spike_counts.items():
        np.testing.assert_array_equal(v, ints.counts[k].numpy(), err_msg=k)
    for k, v in ref.output_acc.items():
        np.testing.assert_array_equal(v, ints.acc[k].numpy().astype(np.int64), err_msg=k)
    np.testing.assert_array_equal(ref.output, y.numpy())
    assert ref.saturations == {k: ints.saturations[k] for k in ref.saturations}


@pytest.mark.parametrize("opts", [
    ConversionOptions(timesteps=6),
    ConversionOptions(timesteps=5, weight_bits=6, input_mode="every_step", reset="zero", v_init="zero"),
    ConversionOptions(timesteps=7, weight_bits=8, input_mode="every_step", membrane_bits=10),
])
def test_forward_equals_simulator_on_synthetic_graph(branchy, opts):
    ann, cal, x = branchy
    g = convert(ann, cal, opts)
    kinds = {n.op for n in g.nodes}
    assert {"add", "concat", "maxpool2d", "avgpool2d", "pad", "affine"} <= kinds
    _assert_exact(TandemNet(g), x)


def _sgd_steps(net: TandemNet, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> None:
    """``steps`` training steps on a loss that moves every trainable weight."""
    for _ in range(steps):
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_forward_equals_simulator_after_training_steps_with_constraints(branchy):
    """Perturbed weights, pruned and quantized: what the module computes is what the
    written-back IR computes in the reference simulator."""
    ann, cal, x = branchy
    net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=4)), bits=5, fanin=20)
    net.set_stage(net.n_stages)
    opt = torch.optim.SGD(net.trainable(), lr=0.05)
    _sgd_steps(net, opt, torch.tensor(x), 2)
    _assert_exact(net, x)
    assert violations(net.to_graph(), bits=5, fanin=20) == []


def test_training_steps_at_a_middle_stage_see_fresh_integers(branchy):
    """The integer graph is re-derived only when a constrained node changes (an ANN stage
    skips the requantization): after training steps at a stage whose newest spiking layer
    is trained, every spike count the forward reads is the one a freshly written-back graph
    gives."""
    ann, cal, x = branchy
    net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=4)), bits=5, fanin=20, prune_lead=1)
    net.set_stage(2)
    xt = torch.tensor(x)
    with torch.no_grad():
        _, before = net(xt, return_ints=True)
    opt = torch.optim.SGD(net.trainable(), lr=1.0)
    _sgd_steps(net, opt, xt, 2)
    with torch.no_grad():
        _, ints = net(xt, return_ints=True)
    newest = net.layers[1]
    assert not torch.equal(before.counts[newest], ints.counts[newest])  # the steps changed it
    g = net.to_graph()
    fresh = run_window(g, quantized_input(g, xt), net.T, net.integer_nodes())
    assert set(ints.counts) == set(fresh.counts) and ints.counts
    for k, v in fresh.counts.items():
        np.testing.assert_array_equal(v.numpy(), ints.counts[k].numpy(), err_msg=k)


def _same_nodes(a, b, names=None) -> None:
    """Graphs ``a`` and ``b`` hold the same nodes (only those in ``names``, when given)."""
    for m, n in zip(a.nodes, b.nodes, strict=True):
        if names is not None and m.name not in names:
            continue
        for f in dataclasses.fields(m):
            x, y = getattr(m, f.name), getattr(n, f.name)
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=f"{m.name}.{f.name}")
            else:
                assert x == y, f"{m.name}.{f.name}"


def test_partial_write_back_is_the_full_one(branchy):
    """The forward re-derives only the nodes a training step changed and what follows them
    up to the newest spiking layer: after every step of every stage (a residual add among
    them, whose inputs share a scale) the nodes the stage runs as integers, and the quantized
    weights read from them, equal a full write-back's."""
    ann, cal, x = branchy
    net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=4)), bits=5, fanin=20, prune_lead=1)
    xt = torch.tensor(x)
    partial = 0
    for stage in range(1, net.n_stages + 1):
        net.set_stage(stage)
        opt = torch.optim.SGD(net.trainable(), lr=0.05)
        for _ in range(3):
            _sgd_steps(net, opt, xt, 1)
            before = net._cache
            g, fq = net._current()
            partial += before is not None and before[3] == net._cache[3]
            full = net.to_graph()
            _same_nodes(g, full, net.integer_nodes())
            assert set(fq) == set(net.constrained())
            for name, (w, b) in fq.items():
                s_in, s_out = unit_scales(full, name)
                np.testing.assert_array_equal(w, (s_out * full[name].weight_int.astype(np.float64) / s_in)
                                              .astype(np.float32), err_msg=name)
    assert partial >= 2 * net.n_stages  # all but a stage's first step took the partial path


def test_requantize_reproduces_conversion(branchy):
    ann, cal, _ = branchy
    g = convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=7))
    again = requantize(g)
    for a, b in zip(g.nodes, again.nodes):
        for k in a.array_names():
            va, vb = getattr(a, k), getattr(b, k)
            assert (va is None) == (vb is None)
            if va is not None:
                np.testing.assert_array_equal(va, vb, err_msg=f"{a.name}.{k}")


def test_stages_spike_layer_by_layer(branchy):
    ann, cal, x = branchy
    net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=4)))
    layers = [n.name for n in net.base.nodes if isinstance(n, IFNode)]
    assert net.n_stages == len(layers) + 1
    for k in range(net.n_stages + 1):
        net.set_stage(k)
        with torch.no_grad():
            _, ints = net(torch.tensor(x[:4]), return_ints=True)
        spiking = set(ints.counts) & set(layers) if ints is not None else set()
        assert spiking == set(layers[:k])


def test_backward_is_straight_through_onto_ann_activation():
    """One hidden layer, stage 1: d loss / d W1 equals the gradient of the float network
    relu(x W1^T + b1) -> W2 in which the hidden activation is replaced (forward only) by
    the spike-count value: the tandem rule."""
    torch.manual_seed(1)
    net_f = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    model = _export(net_f, (6,))
    x = np.random.default_rng(1).random((32, 6)).astype(np.float32)
    ann = import_onnx(model).graph
    g = convert(ann, activation_scales(model, ann, x), ConversionOptions(timesteps=5))
    net = TandemNet(g)
    net.set_stage(1)
    net.trainable()
    target = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
    y, ints = net(torch.tensor(x), return_ints=True)
    ((y - target) ** 2).mean().backward()

    gq = net.to_graph()
    d1, d2 = gq.nodes[1], gq.nodes[3]
    s_x = float(gq.input.out_scale.reshape(-1)[0])
    s1 = float(d1.out_scale.reshape(-1)[0])
    xin = torch.tensor(np.clip(np.rint(x / s_x), -127, 127) * s_x, dtype=torch.float32)
    w1 = torch.tensor(s1 * d1.weight_int / s_x, dtype=torch.float32, requires_grad=True)
    b1 = torch.tensor(s1 * d1.bias_int, dtype=torch.float32)
    a = torch.relu(xin @ w1.T + b1)
    lam = torch.tensor(np.asarray(gq.nodes[2].out_scale, np.float32))
    h = a + (ints.counts[gq.nodes[2].name].float() * lam / 5 - a).detach()
    w2 = torch.tensor(d2.weight)
    out = h @ w2.T + torch.tensor(d2.bias)
    np.testing.assert_allclose(out.detach().numpy(), y.detach().numpy(), rtol=1e-5, atol=1e-6)
    ((out - target) ** 2).mean().backward()
    got = net.weight[net.key[d1.name]].grad
    np.testing.assert_allclose(got.numpy(), w1.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert float(got.abs().sum()) > 0


def test_fanin_masks_and_budgets(branchy):
    ann, cal, _ = branchy
    g = convert(ann, cal, ConversionOptions(timesteps=4))
    w = np.array([[3.0, -1.0, 2.0, -5.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(topk_mask(w, 2), [[1, 0, 0, 1], [1, 1, 0, 0]])
    budgets = fanin_budgets(g, 36)
    fc1 = next(n for n in g.nodes if n.op == "dense")
    # fc1 reads a 2x2 sum pool (each weight is 4 synapses) of a concat of two populations;
    # each concat input's chain counts only its own columns, so fc1 gets the whole limit.
    assert budgets[fc1.name] == 36 // 4
    with pytest.raises(UsageError, match="too small"):
        fanin_budgets(g, 3)
    net = TandemNet(g, fanin=24)
    net.set_stage(net.n_stages)
    pruned = net.to_graph()
    assert max(population_fanin(pruned, n) for n in pruned.outputs) <= 24
    assert violations(pruned, fanin=24) == []
    assert violations(g, fanin=24)  # the unpruned graph breaks the limit


@pytest.mark.slow
def test_forward_equals_simulator_on_digits_cnn(digits_dir):
    from snncompile.frontend import load_onnx

    model = load_onnx(str(digits_dir / "digits_cnn.onnx"))
    ann = import_onnx(model).graph
    cal = activation_scales(model, ann, np.load(digits_dir / "calib.npz")["x"])
    x = np.load(digits_dir / "test.npz")["x"][:200]
    for bits, fanin in ((16, None), (8, 64)):
        net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=8)), bits=bits, fanin=fanin)
        _assert_exact(net, x)


def test_loihi_style_weight_exponent(branchy):
    """--weight-exp E: weights are a --bits mantissa times 2^E (Loihi's per-layer weight
    exponent); thresholds gain E bits of resolution; the forward stays exact."""
    ann, cal, x = branchy
    plain = convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=6))
    g = convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=6, weight_exp=3))
    for a, b in zip(plain.nodes, g.nodes):
        if a.is_weighted:
            np.testing.assert_array_equal(b.weight_int, a.weight_int * 8)
            assert b.weight_exp == 3 and weight_bits(b) == weight_bits(a) <= 6
        if isinstance(a, IFNode):
            assert np.all(np.abs(b.threshold - 8 * a.threshold) <= 4)
    np.testing.assert_allclose(simulate(g, x).output, simulate(plain, x).output, atol=0.05)
    net = TandemNet(g, bits=6, fanin=30)
    _assert_exact(net, x)
    assert violations(net.to_graph(), bits=6, fanin=30) == []
    with pytest.raises(UsageError, match="--weight-exp"):
        ConversionOptions(weight_bits=20, weight_exp=8).check()


def test_version_1_artifacts_still_load(branchy, tmp_path):
    """IR version 2 added weight_exp; a version 1 manifest (no such field) reads as 0."""
    import json

    from snncompile.ir.serialize import load_graph, save_graph

    ann, cal, _ = branchy
    g = convert(ann, cal, ConversionOptions(timesteps=4))
    save_graph(g, tmp_path)
    m = json.loads((tmp_path / "ir.json").read_text())
    assert m["version"] == 2
    m["version"] = 1
    for n in m["nodes"]:
        n.pop("weight_exp", None)
    (tmp_path / "ir.json").write_text(json.dumps(m))
    old = load_graph(tmp_path)
    assert all(n.weight_exp == 0 for n in old.nodes if n.is_weighted)
    m["version"] = 99
    (tmp_path / "ir.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="reads versions 1, 2"):
        load_graph(tmp_path)


def test_count_model_is_its_levels_forward_and_its_clamp_backward():
    """The count model's one op: forward the count's value on the T + 1 levels (per channel
    scales), backward the gradient torch gives ``min(relu(z), lam)``, exactly (1 inside
    (0, lam), 0 outside, 1/2 where z equals lam), so tuning runs are what they were when
    the op was composed of those torch ops."""
    from snncompile.tune.ann_path import CountModel as _CountModel

    lam = torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1)
    z = torch.linspace(-1.0, 3.0, 2 * 3 * 67).reshape(2, 3, 67)
    z[0, :, 5] = lam[:, 0]  # activations equal to the scale (lam is a percentile of them)
    z.requires_grad_(True)
    v = _CountModel.apply(z, lam, 4)
    expect = torch.clamp(torch.floor(z.detach() * (4 / lam) + 0.5), 0, 4) * lam / 4
    assert torch.equal(v, expect)
    v.sum().backward()
    zz = z.detach().clone().requires_grad_(True)
    torch.minimum(torch.relu(zz), lam).sum().backward()
    assert torch.equal(z.grad, zz.grad)
    assert 0 < float((z.grad == 1).float().mean()) < 1 and int((z.grad == 0.5).sum()) == 3


def test_count_aware_ann_layers_pass_their_counts_values(branchy):
    """With ``count_aware`` a hidden layer not spiking yet passes ``lam * count / T`` for the
    count it would fire with all its charge at once: on the T + 1 levels of its scale, and
    for the first layer (whose charge does come at once) the value the spiking layer passes
    at the next stage, up to the rounding of its integer threshold."""
    ann, cal, x = branchy
    net = TandemNet(convert(ann, cal, ConversionOptions(timesteps=4, weight_bits=16)))
    net.count_aware = True
    first = net.layers[0]
    lam = float(np.asarray(net.base[first].lam).reshape(-1)[0])
    xt = torch.tensor(x)
    net.set_stage(0)
    with torch.no_grad():
        _, modelled, _ = net._values(xt)
    levels = modelled[first].numpy() * 4 / lam
    np.testing.assert_allclose(levels, np.clip(np.rint(levels), 0, 4), atol=1e-4)
    assert len(np.unique(np.rint(levels))) == 5  # every level used: the test can tell
    net.set_stage(1)
    with torch.no_grad():
        _, spiking, _ = net._values(xt)
    same = np.isclose(modelled[first].numpy(), spiking[first].numpy(), atol=1e-5)
    assert same.mean() > 0.99
    net.count_aware = False
    net.set_stage(0)
    with torch.no_grad():
        _, plain, _ = net._values(xt)
    assert not np.allclose(plain[first].numpy(), modelled[first].numpy())  # relu(z) otherwise


@pytest.mark.parametrize("padding", [(1, 1, 1, 1), (1, 2, 0, 1)])
def test_one_channel_convolution_runs_channels_last(padding):
    """A one-channel input (an image network's first layer) is restrided, not copied, so
    that the surrogate's convolution writes channels-last; its values and gradients are
    torch's row-major ones up to float32 rounding (the simulator's integer sums exactly)."""
    from snncompile.ir import Conv2dNode
    from snncompile.sim.weighted import channels_last_strides
    from snncompile.tune.ann_path import conv as _conv
    gen = torch.Generator().manual_seed(sum(padding))
    x = torch.rand(5, 1, 11, 9, generator=gen)
    view = channels_last_strides(x)
    assert view.data_ptr() == x.data_ptr() and torch.equal(view, x)
    assert view.is_contiguous(memory_format=torch.channels_last) and view.stride(1) == 1
    wide = torch.rand(5, 2, 3, 3, generator=gen)
    assert channels_last_strides(wide) is wide and channels_last_strides(x[:, :, ::2]).stride() == x[:, :, ::2].stride()
    w = torch.randn(6, 1, 3, 2, generator=gen, requires_grad=True)
    b = torch.randn(6, generator=gen, requires_grad=True)
    n = Conv2dNode(name="c", inputs=["x"], weight=w, bias=b, stride=(2, 1), padding=padding,
                   dilation=(1, 2), groups=1)
    top, left, bottom, right = padding
    want = F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, stride=(2, 1), dilation=(1, 2))
    got = _conv(n, x)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn(want.shape, generator=gen)
    for a, e in zip(torch.autograd.grad(got, [w, b], g), torch.autograd.grad(want, [w, b], g)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    ints = torch.randint(-50, 50, x.shape, generator=gen).float()
    wi = torch.randint(-100, 100, w.shape, generator=gen).float()
    exact = F.conv2d(channels_last_strides(ints), channels_last_strides(wi), padding=1)
    assert exact.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(exact, F.conv2d(ints, wi, padding=1))

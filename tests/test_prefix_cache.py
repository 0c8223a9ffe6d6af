"""The fixed layers' spike trains kept per stage (snncompile/tune/prefix.py): where the
fixed part hands over, the packing, and that a tuning run with the cache is bit for bit the
run without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snncompile.tune.prefix as prefix
from snncompile.sim.kernels import spike_conv
from snncompile.passes.convert import ConversionOptions
from snncompile.ir import AddNode, Graph, InputNode
from snncompile.app.compile import CompileRequest, compile_model
from snncompile.ir.serialize import load_graph
from snncompile.tune.prefix import PrefixCache, frontier

from test_simulator_orders import ONE, _conv, _if, branchy_graph, strided_graph


def test_frontier_is_where_the_fixed_part_hands_over():
    rng = np.random.default_rng(0)
    g = strided_graph(rng, "once", "subtract")
    f = frontier(g, ["h1"])
    assert f.cached == ("h1",) and f.skip == {"x", "c1"}
    assert frontier(g, []) is None
    b = branchy_graph(rng, "once", "subtract", 32)
    # h0 feeds c1 and skip (in the fixed part of h1) and c2 (outside it): both are handed over
    f = frontier(b, ["h0", "h1"])
    assert f.cached == ("h0", "h1") and f.skip == {"x", "c0", "c1", "skip", "sum"}


def test_no_cache_where_a_hand_over_is_not_a_spike_train():
    rng = np.random.default_rng(1)
    nodes = [InputNode(name="x", shape=(2, 5, 5), mode="once", out_scale=ONE),
             _conv(rng, "c0", "x", 2, 3, bias_mode="first_step"),
             _if(rng, "h0", "c0", (3, 5, 5)),
             _conv(rng, "c1", "h0", 3, 3),
             AddNode(name="a", inputs=["c0", "c1"], out_scale=ONE),  # c0 read past the fixed part
             _if(rng, "h1", "a", (3, 5, 5))]
    g = Graph(nodes, ["h1"], timesteps=4)
    g.validate()
    assert frontier(g, ["h0"]) is None


def _packbits_reference(codes: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows (planes, then steps, then whole bytes) and steps with spikes, by numpy."""
    planes = [codes == 2, codes == 0] if signed else [codes != 0]
    rows = np.concatenate([np.packbits(p, axis=2).transpose(1, 0, 2).reshape(codes.shape[1], -1)
                           for p in planes], axis=1)
    return rows, (codes != (1 if signed else 0)).any(axis=2).T


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("T,neurons", [(1, 8), (3, 64), (8, 1568), (4, 30), (2, 1), (5, 17)])
def test_packing_kernel_matches_numpy_packbits(T, neurons, signed):
    """Whole-byte steps (packed eight codes per word) and ragged ones (byte by byte): the
    rows and the steps with spikes equal numpy's, written at the rows asked for only."""
    from snncompile.tune.runtime.bitpack import pack_codes
    rng = np.random.default_rng(neurons)
    n = 7
    codes = rng.integers(0, 3 if signed else 2, (T, n, neurons)).astype(np.uint8)
    codes[0, 2] = 1 if signed else 0  # a silent step
    codes[-1, 4, :-1] = 1 if signed else 0  # a step whose last neuron alone may spike
    rows, steps = _packbits_reference(codes, signed)
    out = np.full((n + 3, rows.shape[1]), 0xAA, np.uint8)
    got_steps = np.zeros((n + 3, T), bool)
    pack_codes(codes, signed, out, got_steps, 2)
    np.testing.assert_array_equal(out[2:2 + n], rows)
    np.testing.assert_array_equal(got_steps[2:2 + n], steps)
    assert (out[:2] == 0xAA).all() and (out[2 + n:] == 0xAA).all() and not got_steps[:2].any()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("T,neurons", [(1, 8), (8, 1568), (127, 16), (128, 16), (4, 30)])
def test_unpacking_kernel_inverts_the_packing(T, neurons, signed):
    """Codes and counts of any rows (repeated, out of order) come back as they were packed,
    from the kernel where it applies (whole bytes, 2T <= 255) and from numpy otherwise."""
    from snncompile.tune.runtime import bitpack
    rng = np.random.default_rng(T + neurons)
    n = 6
    codes = rng.integers(0, 3 if signed else 2, (T, n, neurons)).astype(np.uint8)
    codes[:, 3] = 2 if signed else 1  # every step spikes: the largest count
    packed = np.zeros((n, (2 if signed else 1) * T * -(-neurons // 8)), np.uint8)
    steps = np.zeros((n, T), bool)
    bitpack.pack_codes(codes, signed, packed, steps, 0)
    rows = np.array([5, 0, 3, 3, 1])
    got_codes = np.zeros((T, len(rows), neurons), np.uint8)
    got_counts = np.zeros((len(rows), neurons), np.float32)
    took = bitpack.unpack_codes(packed, rows, T, signed, got_codes, got_counts)
    assert took == (neurons % 8 == 0 and 2 * T <= 255)
    shape = (neurons,)
    cache = PrefixCache(prefix.Frontier(("h",), frozenset()), T, {"h": shape}, {"h": packed},
                        frozenset({"h"}) if signed else frozenset())
    got = cache.take(rows, torch.device("cpu"))["h"]
    expect_counts = codes[:, rows].astype(np.float32).sum(axis=0) - (T if signed else 0)
    np.testing.assert_array_equal(got.codes.numpy(), codes[:, rows])
    np.testing.assert_array_equal(got.counts.numpy(), expect_counts)
    if took:
        np.testing.assert_array_equal(got_codes, codes[:, rows])
        np.testing.assert_array_equal(got_counts, expect_counts)


@pytest.mark.parametrize("spikes", ["binary", "signed"])
@pytest.mark.parametrize("T,shape", [(3, (2, 3, 5)), (8, (4,)), (5, (1, 1, 1)), (4, (2, 4, 4))])
def test_packed_trains_come_back_exactly(T, shape, spikes):
    rng = np.random.default_rng(T)
    x = rng.random((11, 2)).astype(np.float32)
    trains = (rng.random((T, len(x)) + shape) < 0.4).astype(np.float32)
    if spikes == "signed":  # some spikes taken back: -1 (a plane of its own)
        trains -= (rng.random(trains.shape) < 0.2) * (trains == 0)
    trains[T - 1] = 0            # a silent step (the simulator skips it: ``active``)
    trains[T // 2, :3] = 0       # a step silent in samples 0-2 only
    trains[T // 2, 4:] = 0
    trains[T // 2, 10].flat[-1] = -1.0 if spikes == "signed" else 1.0  # ... and sample 10's lone spike
    node = type("N", (), {"shape": shape, "spikes": spikes})()
    front = prefix.Frontier(("h",), frozenset())
    graph = type("G", (), {"__getitem__": lambda self, k: node})()
    calls = []

    def run(rows, keep):
        calls.append(rows.tolist())
        return {"h": torch.from_numpy(trains[:, rows])}

    cache = PrefixCache.build(run, graph, front, T, len(x), batch_size=4)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    # the same trains handed over as uint8 codes (as the simulator writes them) pack alike
    as_codes = PrefixCache.build(lambda rows, keep: {"h": spike_conv.encode(run(rows, keep)["h"], spikes == "signed")},
                                 graph, front, T, len(x), batch_size=4)
    np.testing.assert_array_equal(as_codes.packed["h"], cache.packed["h"])
    planes = 2 if spikes == "signed" else 1
    assert cache.nbytes == len(x) * planes * T * -(-int(np.prod(shape)) // 8)  # each step whole bytes
    assert cache.nbytes == PrefixCache.nbytes_for(graph, front, T, len(x))
    rows = np.array([10, 0, 3, 3])
    got = cache.take(rows, torch.device("cpu"))["h"]
    # handed over as uint8 codes (value + zero point), the form the int8 convolutions read
    assert got.spikes is None and got.codes.dtype == torch.uint8 and tuple(got.codes.shape) == (T, 4) + shape
    assert int(got.codes.min()) >= 0 and int(got.codes.max()) <= (2 if spikes == "signed" else 1)
    np.testing.assert_array_equal(spike_conv.decode(got.codes, spikes == "signed").numpy(), trains[:, rows])
    np.testing.assert_array_equal(got.counts.numpy(), trains[:, rows].sum(axis=0))
    for sel in (rows, np.array([0, 1, 2, 3]), np.array([2])):
        active = np.abs(trains[:, sel]).reshape(T, -1).max(axis=1) > 0
        np.testing.assert_array_equal(cache.take(sel, torch.device("cpu"))["h"].active.numpy(), active)
        # a cache made from the packed trains alone finds the same steps
        again = PrefixCache(front, T, {"h": shape}, cache.packed, cache.signed)
        np.testing.assert_array_equal(again.take(sel, torch.device("cpu"))["h"].active.numpy(), active)


def test_builds_batch_samples_by_the_window_bound(monkeypatch):
    """Without a batch size, a build simulates as many samples at a time as keep the
    largest node's (T, samples, neurons) tensor within the bound (and at least one)."""
    from snncompile.sim import evaluator
    rng = np.random.default_rng(2)
    g = strided_graph(rng, "once", "subtract")
    largest = max(int(np.prod(n.shape)) for n in g.nodes)
    front = frontier(g, ["h1"])
    for bound, expect in ((4 * largest * 5, 5), (1, 1), (2 ** 40, 256)):
        monkeypatch.setattr(evaluator, "WINDOW_BATCH_ELEMENTS", bound)
        assert evaluator.window_batch(g, 4) == expect
        sizes = []

        def run(rows, keep):
            sizes.append(len(rows))
            return {"h1": torch.zeros((4, len(rows)) + tuple(g["h1"].shape))}

        PrefixCache.build(run, g, front, 4, 300)
        assert sizes[:-1] == [expect] * (len(sizes) - 1) and sum(sizes) == 300


@pytest.mark.parametrize("spikes", ["binary", "signed"])
def test_tuning_with_the_cache_is_bit_for_bit_the_run_without(digits_dir, tmp_path, monkeypatch, spikes):
    """The same artifact and the same per-epoch record, with the cache on (it is used from
    stage 2 on) and off (budget 0)."""
    d = digits_dir
    runs = {}
    for name, budget in (("cached", prefix.BUDGET_BYTES), ("uncached", 0)):
        monkeypatch.setattr(prefix, "BUDGET_BYTES", budget)
        lines: list[str] = []
        req = CompileRequest(model=str(d / "digits_cnn.onnx"), out=str(tmp_path / name), calib=str(d / "calib.npz"),
                             train=str(d / "val.npz"), val=str(d / "val.npz"), fanin=16, epochs=8, patience=2,
                             options=ConversionOptions(timesteps=4, weight_bits=6, spikes=spikes),
                             report=lines.append,
                             seed=3)
        compile_model(req)
        runs[name] = (load_graph(tmp_path / name), lines)
    kept = [line for line in runs["cached"][1] if "spike trains of the fixed layers kept" in line]
    assert len(kept) >= 2 and not any("kept" in line for line in runs["uncached"][1])
    assert [_no_time(x) for x in runs["cached"][1] if x not in kept] == [_no_time(x) for x in runs["uncached"][1]]
    a, b = runs["cached"][0], runs["uncached"][0]
    assert {n.spikes for n in a.nodes if n.op == "if"} == {spikes}
    for n in a.nodes:
        for field in ("weight_int", "bias_int", "threshold", "v_init"):
            va, vb = getattr(n, field, None), getattr(b[n.name], field, None)
            if va is not None:
                np.testing.assert_array_equal(va, vb, err_msg=f"{n.name}.{field}")


def _no_time(line: str) -> str:
    """An epoch line without its seconds (the one thing the cache changes)."""
    return line.rsplit("  ", 1)[0] if line.endswith(" s") else line



class _Residual(torch.nn.Module):
    """conv - conv - conv (+ the first layer's output) - fc - fc: where the hand-over of the
    first two layers is two nodes, one of them read two layers later."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.c2 = (torch.nn.Conv2d(i, 4, 3, padding=1) for i in (2, 4, 4))
        self.fc1, self.fc2 = torch.nn.Linear(4 * 5 * 5, 8), torch.nn.Linear(8, 3)

    def forward(self, x):
        a = torch.relu(self.c0(x))
        c = torch.relu(self.c2(torch.relu(self.c1(a))) + a)
        return self.fc2(torch.relu(self.fc1(torch.flatten(c, 1))))


def test_a_stage_starts_its_trains_from_those_of_the_stage_before():
    """Each stage's cache, built from the previous stage's trains (simulating only the layer
    fixed anew), is bit for bit the cache simulated from the inputs: also where the
    hand-over has two nodes and one of them passes through, and after the layer fixed in
    between was trained (here: perturbed)."""
    import io
    import warnings

    import onnx

    from snncompile.calibrate.statistics import activation_scales
    from snncompile.passes.convert import convert
    from snncompile.data import Dataset
    from snncompile.frontend import import_onnx
    from snncompile.tune.model import TandemNet
    from snncompile.tune.ptl import _prefix_caches

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Residual().eval(), (torch.zeros(1, 2, 5, 5),), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(4)
    x = rng.random((30, 2, 5, 5)).astype(np.float32)
    ann = import_onnx(model).graph
    net = TandemNet(convert(ann, activation_scales(model, ann, x), ConversionOptions(timesteps=5, weight_bits=6)),
                    bits=6, fanin=12)
    data = [Dataset(x=x[:21], y=None, path=""), Dataset(x=x[21:], y=None, path="")]
    previous, chained_stages, fronts = None, 0, []
    for stage in range(2, net.n_stages + 1):
        net.set_stage(stage)
        scratch = _prefix_caches(net, stage, data, True)
        chained = _prefix_caches(net, stage, data, True, previous=previous)
        assert scratch is not None and chained is not None
        fronts.append(scratch[0].frontier.cached)
        for a, b in zip(scratch, chained):
            assert a.frontier == b.frontier
            for k in a.packed:
                assert a.packed[k].any(), f"stage {stage} {k}: no spikes to compare"
                np.testing.assert_array_equal(a.packed[k], b.packed[k], err_msg=f"stage {stage} {k}")
        chained_stages += previous is not None
        previous = chained
        with torch.no_grad():  # training at this stage moves the layer it is about to fix
            for p in net.trainable():
                p.add_(torch.as_tensor(rng.normal(0, 0.2, tuple(p.shape)), dtype=p.dtype))
    assert chained_stages == 3 and any(len(f) == 2 for f in fronts)

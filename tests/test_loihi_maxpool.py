"""Spike-count max pooling on Loihi (backends/loihi: ``SpikeMaxPool``): lowered without a
rewrite and bit-exact with the reference simulator on Lava's fixed-point CPU simulator, for
non-overlapping and overlapping windows, symmetric padding (a one-hot grouped Conv into the
counters) and asymmetric padding (a Dense selection), a pool right after the input-facing
layer, a pool feeding a residual add, a pool of a pool; the counters' width against T; what
the lowering refuses; capacity and netx.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from snncompile.errors import UsageError
from snncompile.ir import (AddNode, Conv2dNode, DenseNode, FlattenNode, Graph, IFNode, InputNode,
                           MaxPool2dNode)
from snncompile.plugin import LimitError, get_backend
from snncompile.sim.simulator import quantize_input
from snncompile.testing import compare_run
from snncompile.testing.conformance import reference

HAVE_LAVA = importlib.util.find_spec("lava") is not None
needs_lava = pytest.mark.skipif(not HAVE_LAVA, reason="lava-nc is not importable (needs Python 3.10)")


@pytest.fixture(autouse=True)
def _lava_may_set_fork(monkeypatch):
    """Lava sets the multiprocessing start method when first imported (see test_loihi.py)."""
    import multiprocessing

    set_method = multiprocessing.set_start_method
    monkeypatch.setattr(multiprocessing, "set_start_method",
                        lambda method, force=False: set_method(method, force=True))


def _conv(rng, name, inp, cin, cout, lo=-30, hi=30, stride=(1, 1)):
    w = rng.integers(lo, hi + 1, (cout, cin, 3, 3)).astype(np.int32)
    b = rng.integers(-10, 11, cout).astype(np.int64)
    return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w, bias_int=b,
                      padding=(1, 1, 1, 1), stride=stride)


def _if(name, inp, theta):
    return IFNode(name=name, inputs=[inp], threshold=np.asarray(theta).reshape(-1, 1, 1),
                  membrane_bits=18, v_init=np.asarray(theta).reshape(-1, 1, 1) // 2)


def pools_graph(T: int = 8) -> Graph:
    """conv-IF, a 2x2 max pool (non-overlapping, right after the input-facing layer) whose
    spikes feed a conv and, through an identity skip, the residual add after it; a 3x3
    stride-1 pool (overlapping, symmetric padding); a 3x3 stride-2 pool of that pool with
    asymmetric padding (ceil mode: a Dense selection); a dense output."""
    rng = np.random.default_rng(3)
    w = rng.integers(-20, 21, (4, 3 * 2 * 2)).astype(np.int32)
    nodes = [InputNode(name="x", shape=(2, 8, 8), out_scale=np.array(1.0), mode="every_step", bits=5),
             _conv(rng, "c1", "x", 2, 3), _if("s1", "c1", [1500, 1100, 1300]),
             MaxPool2dNode(name="m1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)),
             _conv(rng, "c2", "m1", 3, 3, lo=-8, hi=8),
             AddNode(name="a", inputs=["c2", "m1"]), _if("s2", "a", [25, 35, 30]),
             MaxPool2dNode(name="m2", inputs=["s2"], kernel=(3, 3), stride=(1, 1), padding=(1, 1, 1, 1)),
             MaxPool2dNode(name="m3", inputs=["m2"], kernel=(3, 3), stride=(2, 2), padding=(0, 0, 1, 1)),
             FlattenNode(name="f", inputs=["m3"]),
             DenseNode(name="out", inputs=["f"], weight=w.astype(np.float32), weight_int=w,
                       bias_int=np.arange(4, dtype=np.int64))]
    g = Graph(nodes, ["out"], timesteps=T)
    g.validate()
    return g


def inputs(g: Graph, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return quantize_input(g, rng.uniform(-6, 15, (n,) + tuple(g.input.shape)))


def _lower_and_run(g: Graph, x: np.ndarray, tmp: Path, options=None, timesteps=None):
    b = get_backend("loihi", options or {})
    assert b.check(g) == []
    b.lower(g, tmp)
    return b, b.run(tmp, x, timesteps, record_spikes=True)


def test_pools_lower_to_spike_max_pools_without_a_rewrite(tmp_path):
    """Every max pool becomes a SpikeMaxPool at depth source + 1; symmetric padding gives a
    one-hot grouped Conv into the counters, the ceil-mode pool a Dense selection (each
    counter one synapse of weight 1, in (channel, slot, position) order)."""
    g = pools_graph()
    get_backend("loihi").lower(g, tmp_path)
    net = json.loads((tmp_path / "network.json").read_text())
    pools = {p["name"]: p for p in net["pools"]}
    assert {k: (p["depth"], p["slots"], p["count_bits"]) for k, p in pools.items()} == {
        "m1": (2, 4, 24), "m2": (4, 9, 24), "m3": (5, 9, 24)}
    conns = {c["name"]: c for c in net["connections"]}
    assert conns["s1->m1"]["kind"] == "conv" and conns["s1->m1"]["groups"] == 3
    assert conns["s1->m1"]["out_shape"] == [12, 4, 4]
    assert conns["m1->s2"]["delay"] == 0  # c2 plus the identity skip, both from m1, folded
    assert conns["m2->m3"]["kind"] == "dense"
    with np.load(tmp_path / "params.npz") as z:
        sel = z["conn/m2->m3/weight"].astype(np.int64) << conns["m2->m3"]["weight_exp"]
    assert sel.shape == (3 * 9 * 4, 3 * 16) and set(np.unique(sel)) == {0, 1}
    assert (sel.sum(axis=1) <= 1).all()
    # channel 0, slot 0 (top-left), position 0: input (0, 0, 0); slot 8 of position 3
    # (bottom-right window, rows 2..4 of a 4-row map): row 4 is padding, no synapse
    assert sel[0, 0] == 1 and sel[8 * 4 + 3].sum() == 0
    assert "max pool" in (tmp_path / "netx-unsupported.txt").read_text()


@needs_lava
def test_pools_are_bit_exact_on_lava(tmp_path):
    """Three samples back to back: every layer's spikes (the pools' included) and the output
    accumulators equal the reference's; the counters never wrap at T = 8."""
    g = pools_graph()
    x = inputs(g, 3)
    ref = reference(g, x, g.timesteps)
    assert all(ref.spikes[m].sum() > 0 for m in ("m1", "m2", "m3"))
    # a max of counts, not a sum: the pools spike less than their windows' inputs together
    assert ref.spikes["m1"].sum() < ref.spikes["s1"].sum()
    _, run = _lower_and_run(g, x, tmp_path)
    assert compare_run(g, ref, run) == []
    assert run.stats["counter_wraps"] == {"m1": 0, "m2": 0, "m3": 0}


def test_counter_width_against_timesteps():
    """A count up to T needs T <= 2^bits - 1: 3-bit counters hold T = 7 and refuse T = 8,
    naming the layer, the figure and both fixes; wider than a state register is refused."""
    b3 = get_backend("loihi", {"maxpool_count_bits": "3"})
    assert b3.check(pools_graph(T=7)) == []
    found = [(v.layer, v.quantity, v.value, v.limit, v.fix) for v in b3.check(pools_graph(T=8))]
    assert found == [(m, "time steps a 3-bit max pool spike counter holds", 8, 7,
                      "--timesteps 7 or fewer, or --target-option maxpool_count_bits=4")
                     for m in ("m1", "m2", "m3")]
    with pytest.raises(LimitError, match="maxpool_count_bits=4"):
        b3.lower(pools_graph(T=8), Path("/nonexistent"))
    wide = get_backend("loihi", {"maxpool_count_bits": "25"}).check(pools_graph())
    assert {(v.layer, v.quantity, v.value, v.limit) for v in wide} == {
        (m, "max pool counter bits", 25, 24) for m in ("m1", "m2", "m3")}
    assert get_backend("loihi", {"maxpool_count_bits": "1"}).check(pools_graph(T=1)) == []
    with pytest.raises(UsageError, match="maxpool_count_bits must be at least 1"):
        get_backend("loihi", {"maxpool_count_bits": "0"})


@needs_lava
def test_narrow_counters_run_to_their_edge_and_refuse_beyond(tmp_path):
    """3-bit counters at T = 7 (every count up to 7 is held) are bit-exact on Lava; asking
    the same artifact for T = 8 is refused before Lava starts."""
    g = pools_graph(T=7)
    x = inputs(g, 2, seed=1)
    ref = reference(g, x, 7)
    assert max(int(ref.spikes[m].sum(axis=0).max()) for m in ("m1", "m2", "m3")) == 7  # full counts
    b, run = _lower_and_run(g, x, tmp_path, {"maxpool_count_bits": "3"})
    assert compare_run(g, ref, run) == []
    with pytest.raises(UsageError, match="3-bit spike counters hold counts up to 7, fewer than T = 8"):
        b.run(tmp_path, x, 8)


@needs_lava
def test_spike_max_pool_counters_wrap_at_their_width(tmp_path, monkeypatch):
    """The process models its register width: a 2-bit counter fed a spike every step wraps
    after 3 (the running maximum falls back to 0 and grows again), so 5 steps give 4 output
    spikes instead of 5, and ``wraps`` counts it. This is why the compiler refuses a T the
    counters cannot hold."""
    import sys

    from snncompile_loihi.emit import PROCESS_DIR

    monkeypatch.syspath_prepend(str(PROCESS_DIR.parent))
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava_intfire.intfire import SpikeMaxPool

    steps = 6
    src = Source(data=np.ones((2, steps), np.int32))  # two window inputs, a spike every step
    dense = Dense(weights=np.array([[2, 0], [0, 2]]), weight_exp=-1)  # weight 1, one step late
    pool = SpikeMaxPool(channels=1, slots=2, positions=1, window=100, window_offset=0, count_bits=2)
    sink = Sink(shape=(1,), buffer=steps)
    src.s_out.connect(dense.s_in)
    dense.a_out.connect(pool.a_in)
    pool.s_out.connect(sink.a_in)
    try:
        src.run(condition=RunSteps(num_steps=steps), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        got, wraps = sink.data.get().astype(int).ravel(), int(pool.wraps.get()[0])
    finally:
        src.stop()
    sys.modules.pop("lava_intfire.intfire", None)
    sys.modules.pop("lava_intfire", None)
    assert got.tolist() == [0, 1, 1, 1, 0, 1] and wraps == 2  # step 1: nothing arrived yet


def test_pool_inputs_the_lowering_refuses():
    """A max pool of the analog input, or of weighted currents (no IF layer between), has
    no spikes to count: each is one violation naming the pool and the fix."""
    rng = np.random.default_rng(0)
    x = InputNode(name="x", shape=(1, 4, 4), out_scale=np.array(1.0), mode="every_step", bits=4)
    w = rng.integers(-5, 6, (2, 4)).astype(np.int32)
    tail = [FlattenNode(name="f", inputs=["s"]),
            DenseNode(name="out", inputs=["f"], weight=w.astype(np.float32), weight_int=w)]
    analog = Graph([x, MaxPool2dNode(name="m", inputs=["x"], kernel=(2, 2), stride=(2, 2)),
                    _conv(rng, "c", "m", 1, 1), _if("s", "c", [50]), *tail], ["out"], timesteps=4)
    current = Graph([x, _conv(rng, "c0", "x", 1, 1), _if("s0", "c0", [50]), _conv(rng, "c", "s0", 1, 1),
                     MaxPool2dNode(name="m", inputs=["c"], kernel=(2, 2), stride=(2, 2)),
                     _conv(rng, "c1", "m", 1, 1), _if("s", "c1", [50]), *tail], ["out"], timesteps=4)
    for g, what in ((analog, "not spikes"), (current, "weighted or summed")):
        g.validate()
        found = [v for v in get_backend("loihi").check(g) if v.layer == "m"]
        assert [(v.quantity, v.value) for v in found] == [("input of a max pool", what)]
        assert "a ReLU before the max pool" in found[0].fix and "--maxpool conv" in found[0].fix


def test_a_pool_of_signed_spikes_is_refused_and_binary_pools_send_binary_messages(tmp_path):
    """A -1 would lower a counter while the pool's running maximum keeps it, so loihi
    refuses a max pool of signed spikes, naming the fix; a pool of binary spikes sends
    binary messages to the layers it feeds."""
    g = pools_graph()
    get_backend("loihi").lower(g, tmp_path)
    net = json.loads((tmp_path / "network.json").read_text())
    assert {c["name"]: c["message_bits"] for c in net["connections"]}["m1->s2"] == 0
    signed = pools_graph()
    signed["s1"].spikes = "signed"
    found = [v for v in get_backend("loihi").check(signed) if v.layer == "m1"]
    assert [(v.quantity, v.value) for v in found] == [("input of a max pool", "signed spikes")]
    assert "--spikes binary" in found[0].fix


def test_capacity_counts_counters_and_maxima():
    """A pool slice's state is a counter per compartment plus a maximum per unit, each
    maxpool_count_bits wide (in place of an IF neuron's 48 bits per compartment): the
    fullest core's memory moves by exactly that when the counters narrow."""
    g = pools_graph()
    maps = {bits: get_backend("loihi", {"maxpool_count_bits": str(bits)}).mapping(g) for bits in (24, 8)}
    m1 = {bits: next(x for x in m.layers if x.name == "m1") for bits, m in maps.items()}
    assert m1[24].units_per_core == 48 and m1[24].cores == 1  # 3 x 4 x 4 units, 4 counters each
    assert m1[24].memory_bits - m1[8].memory_bits == (48 * 4 + 48) * (24 - 8)
    s1 = {bits: next(x for x in m.layers if x.name == "s1") for bits, m in maps.items()}
    assert s1[24].memory_bits == s1[8].memory_bits  # IF layers keep neuron_bits


def stem_graph() -> Graph:
    """A torchvision-style stem: a stride-2 conv, IF, a 3x3 stride-2 max pool with padding 1
    (overlapping), then a basic block whose identity skip starts at the pool and joins two
    layers later (a delayed connection from the pool), global sum pool, dense output."""
    from snncompile.ir import AvgPool2dNode

    rng = np.random.default_rng(5)
    stem = _conv(rng, "c0", "x", 2, 4, stride=(2, 2))
    w = rng.integers(-20, 21, (3, 4)).astype(np.int32)
    nodes = [InputNode(name="x", shape=(2, 10, 10), out_scale=np.array(1.0), mode="every_step", bits=5),
             stem, _if("s0", "c0", [900, 700, 800, 1000]),
             MaxPool2dNode(name="m", inputs=["s0"], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)),
             _conv(rng, "c1", "m", 4, 4, lo=-8, hi=8), _if("s1", "c1", [20, 25, 30, 20]),
             _conv(rng, "c2", "s1", 4, 4, lo=-8, hi=8),
             AddNode(name="a", inputs=["c2", "m"]), _if("s2", "a", [15, 20, 25, 15]),
             AvgPool2dNode(name="gap", inputs=["s2"], kernel=(3, 3), stride=(3, 3)),
             FlattenNode(name="f", inputs=["gap"]),
             DenseNode(name="out", inputs=["f"], weight=w.astype(np.float32), weight_int=w)]
    g = Graph(nodes, ["out"], timesteps=8)
    g.validate()
    return g


@needs_lava
def test_stem_pool_with_a_delayed_identity_skip_is_bit_exact_on_lava(tmp_path):
    """The pool's spikes reach the add two layers later through a Conv delayed by one step
    (the identity skip of a ResNet's first block), exactly."""
    g = stem_graph()
    x = inputs(g, 3, seed=2)
    ref = reference(g, x, g.timesteps)
    assert ref.spikes["m"].sum() > 0 and ref.spikes["s2"].sum() > 0
    _, run = _lower_and_run(g, x, tmp_path)
    conns = {c["name"]: c for c in json.loads((tmp_path / "network.json").read_text())["connections"]}
    assert (conns["m->s2"]["kind"], conns["m->s2"]["delay"]) == ("conv", 1)
    assert conns["s0->m"]["kind"] == "conv" and conns["s0->m"]["padding"] == [1, 1]
    assert compare_run(g, ref, run) == []


def test_damaged_pool_entry_is_an_artifact_error(tmp_path):
    """A pool whose counter width no register holds is refused when the artifact is read,
    naming the file, before Lava starts."""
    from snncompile.errors import ArtifactError

    g = pools_graph()
    b = get_backend("loihi")
    b.lower(g, tmp_path)
    m = json.loads((tmp_path / "network.json").read_text())
    m["pools"][0]["count_bits"] = 40
    (tmp_path / "network.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="network.json"):
        b.run(tmp_path, inputs(g, 1))

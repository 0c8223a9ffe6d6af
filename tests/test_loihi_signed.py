"""Signed spikes (`--spikes signed`) on the loihi backend: the SignedIntFire neuron on Lava's
fixed-point simulator, bit for bit against the reference simulator, and the limits where a
-1 payload could change a bound.

Networks are tiny (Lava runs a few hundred steps per second); the Lava tests run only where
lava-nc imports.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snncompile.ir import AddNode, AvgPool2dNode, DenseNode, FlattenNode, Graph, IFNode, InputNode
from snncompile.plugin import get_backend
from snncompile.sim.simulator import quantize_input, simulate

from test_loihi import (HAVE_LAVA, _conv, _dense, _if, _lava_may_set_fork, _random_graph,  # noqa: F401
                        _validated, needs_lava)


def _sif(name, inp, theta, mb=18, v_init=None) -> IFNode:
    n = _if(name, inp, theta, mb=mb, v_init=v_init)
    n.spikes = "signed"
    return n


def signed_dense(rng) -> Graph:
    """Dense layers, input every step, a signed layer between binary ones (one resetting to
    zero), per-neuron initial membranes, a signed spiking output."""
    nodes = [InputNode(name="x", shape=(10,), out_scale=np.array(1.0), mode="every_step", bits=6),
             _dense(rng, "d1", "x", 10, 8), _sif("s1", "d1", [150], v_init=[75]),
             _dense(rng, "d2", "s1", 8, 7, lo=-30), _if("s2", "d2", [40], reset="zero"),
             _dense(rng, "d3", "s2", 7, 6, lo=-30), _sif("s3", "d3", [25]),
             _dense(rng, "out", "s3", 6, 3)]
    return _validated(Graph(nodes, ["out", "s3"], timesteps=7))


def signed_conv(rng) -> Graph:
    """Convs (a Lava Conv from the graded input, a LoihiConv between signed layers), input
    once with a first-step bias, a sum pool folded into the next Dense, per-channel thresholds."""
    nodes = [InputNode(name="x", shape=(2, 6, 6), out_scale=np.array(1.0), mode="once", bits=4),
             _conv(rng, "c1", "x", 2, 4, mode="first_step"),
             _sif("s1", "c1", np.reshape([200, 260, 300, 340], (4, 1, 1))),
             _conv(rng, "c2", "s1", 4, 4), _sif("s2", "c2", np.reshape([40, 50, 60, 70], (4, 1, 1))),
             AvgPool2dNode(name="p", inputs=["s2"], kernel=(2, 2), stride=(2, 2)),
             FlattenNode(name="f", inputs=["p"]), _dense(rng, "d", "f", 36, 6, lo=-20, hi=20),
             _sif("s3", "d", [30]), _dense(rng, "out", "s3", 6, 3)]
    return _validated(Graph(nodes, ["out"], timesteps=8))


def signed_residual(rng) -> Graph:
    """A ResNet-style block of signed layers: an identity skip over two convs (a delayed
    LoihiConv of ones carries the -1s), a signed layer and the input skipping to a deeper
    layer (DelayDense, graded)."""
    c1 = _conv(rng, "c1", "x", 2, 3, mode="first_step")
    c1.bias_int = np.full(3, 200, np.int64)  # early charge that later input takes back: s1 sends -1s
    nodes = [InputNode(name="x", shape=(2, 5, 5), out_scale=np.array(1.0), mode="every_step", bits=5),
             c1, _sif("s1", "c1", [150]),
             _conv(rng, "c2", "s1", 3, 3), _sif("s2", "c2", [40]),
             _conv(rng, "c3", "s2", 3, 3),
             AddNode(name="a3", inputs=["c3", "s1"]), _sif("s3", "a3", [40]),
             FlattenNode(name="f", inputs=["s3"]), FlattenNode(name="fx", inputs=["x"]),
             _dense(rng, "d", "f", 75, 5, lo=-20, hi=20, bias=None),
             _dense(rng, "dx", "fx", 50, 5, lo=-3, hi=3, bias=None),
             FlattenNode(name="f2", inputs=["s2"]), _dense(rng, "d2", "f2", 75, 5, lo=-20, hi=20, bias=None),
             AddNode(name="a4", inputs=["d", "dx", "d2"]), _sif("s4", "a4", [30]),
             _dense(rng, "out", "s4", 5, 3)]
    return _validated(Graph(nodes, ["out"], timesteps=6))


def pooled_classifier(rng, spikes: str = "signed") -> Graph:
    """A global 4x4 sum pool relayed into the classifier: 20 channels x 16 positions x |w| up
    to 127 can bring 40,640 in one step, past the 16-bit port, so the output is split into
    two accumulators the host adds."""
    w = rng.choice([-127, 127, 60, -3], (10, 20)).astype(np.int32)
    w[0] = 127  # a row of the largest sum
    nodes = [InputNode(name="x", shape=(1, 4, 4), out_scale=np.array(1.0), mode="every_step", bits=4),
             _conv(rng, "c1", "x", 1, 20), _sif("s1", "c1", [40]),
             AvgPool2dNode(name="gp", inputs=["s1"], kernel=(4, 4), stride=(4, 4)),
             FlattenNode(name="f", inputs=["gp"]),
             DenseNode(name="out", inputs=["f"], weight=w.astype(np.float32), weight_int=w)]
    nodes[2].spikes = spikes
    return _validated(Graph(nodes, ["out"], timesteps=5))


BUILDS = [signed_dense, signed_conv, signed_residual]


def _assert_bit_exact(g: Graph, x: np.ndarray, tmp_path: Path, timesteps: int | None = None):
    """Lower, run on Lava, and compare every layer's spikes (int8 -1/0/1 for signed layers)
    and every output with the reference; returns (reference, run)."""
    from snncompile.testing.conformance import compare_run

    ref = simulate(g, x, timesteps=timesteps, record_spikes=True)
    b = get_backend("loihi")
    b.lower(g, tmp_path)
    got = b.run(tmp_path, quantize_input(g, x), timesteps=timesteps, record_spikes=True)
    assert compare_run(g, ref, got) == []
    assert {k: v.dtype for k, v in got.spikes.items()} == \
        {k: np.dtype(np.int8 if g[k].spikes == "signed" else np.uint8) for k in ref.spikes}
    assert all(v == 0 for v in got.stats["current_wraps"].values())
    return ref, got


def _negative_spikes(g: Graph, ref) -> int:
    return sum(int((ref.spikes[n.name] < 0).sum()) for n in g.nodes
               if isinstance(n, IFNode) and n.spikes == "signed")


# --- without Lava ---------------------------------------------------------------------------

@pytest.mark.parametrize("build", BUILDS)
def test_signed_builds_fit_and_send_graded_spikes(build, tmp_path):
    """Loihi accepts signed layers; the artifact names them and gives every connection from a
    signed layer a graded message (with binary messages Lava would read -1 as +1)."""
    g = build(np.random.default_rng(0))
    b = get_backend("loihi")
    assert "signed" in b.limits().spike_modes and b.check(g) == []
    b.lower(g, tmp_path)
    net = json.loads((tmp_path / "network.json").read_text())
    kinds = {p["name"]: p["spikes"] for p in net["populations"]}
    assert kinds == {n.name: n.spikes for n in g.nodes if isinstance(n, IFNode)}
    for c in net["connections"]:
        want = 16 if c["src"] == "x" or kinds.get(c["src"]) == "signed" else 0
        assert c["message_bits"] == want, c
    assert "signed spikes" in (tmp_path / "netx-unsupported.txt").read_text()
    if build is signed_residual:  # -1s through a delayed Conv and a DelayDense
        assert {(c["src"], c["kind"], c["delay"] > 0) for c in net["connections"] if c["delay"]} == \
            {("s1", "conv", True), ("s2", "dense", True), ("x", "dense", True)}


@pytest.mark.parametrize("spikes", ["binary", "signed"])
def test_an_output_past_the_port_is_split_into_accumulators(spikes, tmp_path):
    from snncompile_loihi.network import build_network
    from snncompile_loihi.rules import current_bound

    g = pooled_classifier(np.random.default_rng(0), spikes)
    net = build_network(g)
    parts = [c for c in net.connections if c.dst == "out"]
    assert [c.part for c in parts] == [0, 1] and net.outputs[0].parts == 2
    assert all(c.pool_area == 16 for c in parts)  # the global pool relays window sums
    assert np.abs(g["out"].weight_int).sum(axis=1).max() * 16 > 2 ** 15  # needed two
    np.testing.assert_array_equal(sum(c.weight for c in parts), g["out"].weight_int)  # each column in one part
    assert not np.any((parts[0].weight != 0) & (parts[1].weight != 0))
    assert current_bound(net, "out") <= 2 ** 15 - 1
    assert get_backend("loihi").check(g) == []
    get_backend("loihi").lower(g, tmp_path)
    assert json.loads((tmp_path / "network.json").read_text())["outputs"][0]["parts"] == 2
    assert "split into 2 accumulators" in (tmp_path / "netx-unsupported.txt").read_text()


def test_an_unknown_spike_kind_in_an_artifact_is_refused(tmp_path):
    from snncompile.errors import ArtifactError

    g = signed_dense(np.random.default_rng(0))
    get_backend("loihi").lower(g, tmp_path)
    m = json.loads((tmp_path / "network.json").read_text())
    m["populations"][0]["spikes"] = "ternary"
    (tmp_path / "network.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="unknown spikes 'ternary'"):
        get_backend("loihi").run(tmp_path, np.zeros((1, 10)))


def test_the_profile_keeps_binary_and_an_explicit_signed():
    """The loihi profile's default stays binary; --spikes signed given by the user is kept."""
    from snncompile.ir.options import ConversionOptions
    from snncompile.targets.profile import apply_profile

    prof = get_backend("loihi").profile()
    assert prof.spikes == "binary"
    opts, choice = apply_profile(prof, ConversionOptions(spikes="signed"), {"spikes"}, "loihi")
    assert opts.spikes == "signed" and choice.kept["spikes"] == ("signed", "binary")


def _edge_negative_current(fits: bool, signed: bool = True) -> tuple[Graph, np.ndarray]:
    """259 neurons fire +1 at step 0 (a first-step bias of 4 x 60 against an input of -100
    per step) and all send -1 together at step 1, into weights whose row sums to 2^15 - 1
    (258 x 127 + 1: fits) or 2^15: the most negative current one step can bring. |-1| = 1,
    so the bound is the binary one: a -1 payload doubles nothing."""
    x = InputNode(name="x", shape=(1,), out_scale=np.array(1.0), mode="every_step", bits=8)
    w0 = np.full((259, 1), 100, np.int32)
    row = np.array([[127] * 258 + [1 if fits else 2]], np.int32)
    nodes = [x, DenseNode(name="d0", inputs=["x"], weight=w0.astype(np.float32), weight_int=w0,
                          bias_int=np.full(259, 60, np.int64), bias_mode="first_step"),
             _if("s0", "d0", [100]),
             DenseNode(name="d1", inputs=["s0"], weight=row.astype(np.float32), weight_int=row),
             _if("s1", "d1", [40000]), _dense(np.random.default_rng(0), "out", "s1", 1, 2)]
    if signed:
        nodes[2].spikes = "signed"
    g = _validated(Graph(nodes, ["out"], timesteps=4))
    return g, np.array([[-1.0], [0.0]])


@pytest.mark.parametrize("signed", [True, False])
def test_negative_spikes_do_not_change_the_current_bound(signed):
    """The per-step current rule counts a spike as |payload| = 1 for both kinds: the largest
    row sum that fits is the same, 2^15 - 1, and one more is refused."""
    b = get_backend("loihi")
    assert b.check(_edge_negative_current(True, signed)[0]) == []
    found = b.check(_edge_negative_current(False, signed)[0])
    assert [(v.layer, v.quantity.split(" (")[0], v.value) for v in found] == \
        [("s1", "input current per step", 2 ** 15)]


def test_signed_neurons_take_one_more_state_word_per_core():
    """Capacity: a signed layer's neurons keep a net count (one more 24-bit word, assumed), so
    a core holds fewer of them; binary layers are unchanged."""
    from snncompile_loihi import limits as L
    from snncompile_loihi.capacity import map_graph

    g = signed_conv(np.random.default_rng(0))
    o = L.parse_options({"memory_kib": "1"})  # a small core, so memory decides the slices
    signed = {m.name: m for m in map_graph(g, o).layers}
    for n in g.nodes:
        if isinstance(n, IFNode):
            n.spikes = "binary"
    binary = {m.name: m for m in map_graph(g, o).layers}
    assert signed["s1"].units_per_core < binary["s1"].units_per_core
    assert signed["s3"].memory_bits - binary["s3"].memory_bits == 6 * L.SIGNED_STATE_BITS  # 6 neurons
    assert signed["out"].memory_bits == binary["out"].memory_bits


# --- on Lava ---------------------------------------------------------------------------------

@needs_lava
@pytest.mark.parametrize("build", BUILDS)
def test_signed_builds_are_bit_exact_on_lava(build, tmp_path):
    """Three samples back to back: the net count restarts with each window (a -1 never takes
    back a spike of the previous sample)."""
    rng = np.random.default_rng(3)
    g = build(rng)
    x = rng.integers(-40, 90, (3,) + tuple(g.input.shape)).astype(np.float64)
    ref, _ = _assert_bit_exact(g, x, tmp_path)
    assert _negative_spikes(g, ref) > 0, "no -1 spike: the test would not see the signed rule"
    if build is signed_residual:  # -1s into the identity skip's Conv and into the DelayDense
        assert (ref.spikes["s1"] < 0).any() and (ref.spikes["s2"] < 0).any()


@needs_lava
@pytest.mark.parametrize("T", [1, 2, 13])
def test_signed_windows_on_lava(T, tmp_path):
    """Run at other windows than the build's: T = 1 (the window restarts every step, so no
    -1 is possible), T = 2 (the shortest window with a -1) and a long one."""
    rng = np.random.default_rng(3)
    g = signed_conv(rng)
    x = rng.integers(-40, 90, (4,) + tuple(g.input.shape)).astype(np.float64)
    ref, _ = _assert_bit_exact(g, x, tmp_path, timesteps=T)
    assert (_negative_spikes(g, ref) > 0) == (T > 1)


@needs_lava
def test_signed_saturating_membrane_on_lava(tmp_path):
    """An 8-bit membrane that saturates (the clamp comes before the spike rule) in a layer
    that also sends -1s: IntFire's clamp at a multiple of 64 holds for the signed rule too."""
    rng = np.random.default_rng(3)
    g = signed_conv(rng)
    g["s2"].membrane_bits = 8
    g.validate()
    x = rng.integers(-40, 90, (3,) + tuple(g.input.shape)).astype(np.float64)
    ref, _ = _assert_bit_exact(g, x, tmp_path)
    assert ref.saturations["s2"] > 0 and (ref.spikes["s2"] < 0).any()


@needs_lava
def test_most_negative_current_is_exact_on_lava(tmp_path):
    """The edge of the current rule reached with -1 payloads: 2^15 - 1 in one step, negative."""
    g, x = _edge_negative_current(True)
    ref, _ = _assert_bit_exact(g, x, tmp_path)
    assert (ref.spikes["s0"][1, 0] == -1).all()  # all 259 at once: -(2^15 - 1) into s1


@needs_lava
def test_split_output_is_exact_on_lava(tmp_path):
    """The two accumulators of a split output add up to the reference's output exactly."""
    rng = np.random.default_rng(4)
    g = pooled_classifier(rng)
    x = rng.integers(-7, 8, (3, 1, 4, 4)).astype(np.float64)
    ref, got = _assert_bit_exact(g, x, tmp_path)
    assert np.abs(ref.output_acc["out"]).max() > 0


@needs_lava
def test_conformance_zoo_signed_case_on_lava(tmp_path):
    from snncompile.testing import check_case

    assert check_case("loihi", "signed_spikes", tmp_path)


@needs_lava
def test_random_signed_graphs_that_check_passes_are_exact_on_lava(tmp_path):
    """The random graphs of test_loihi with every subtract-reset layer signed (weight
    exponents, sign modes, input modes, payloads): each one check accepts is bit-exact on
    Lava (spikes, outputs, no port overflow). Their first layers take a constant current,
    so they seldom send -1; the builds above do."""
    accepted = 0
    for seed in range(20):
        g = _random_graph(seed)
        signed = [n for n in g.nodes if isinstance(n, IFNode) and n.reset == "subtract"]
        if not signed:
            continue
        for n in signed:
            n.spikes = "signed"
        g.validate()
        if get_backend("loihi").check(g):
            continue
        accepted += 1
        rng = np.random.default_rng(seed)
        x = rng.integers(-200, 200, (2,) + tuple(g.input.shape)).astype(np.float64)
        d = tmp_path / str(seed)
        d.mkdir()
        _assert_bit_exact(g, x, d)
        if accepted == 3:
            break
    assert accepted == 3

"""Mapping from the graph alone (snncompile.targets.footprint) and the Loihi 2 capacity model
with chips (backends/loihi capacity.py): the graph-level counts never under-count what the
folded matrices hold, convolutions keep weight sharing, layers are split over cores and
chips under small capacity overrides, and a system too small is refused with the figure
that breaks and the smallest system that holds the network, without folding a large one."""

from __future__ import annotations

import numpy as np
import pytest

from snncompile.errors import UsageError
from snncompile.ir import (AvgPool2dNode, Conv2dNode, DenseNode, FlattenNode, Graph, IFNode,
                           InputNode)
from snncompile.ir.structure import population_fanin
from snncompile.plugin import demand, flatten_network, get_backend, layer_footprints
from snncompile.testing.zoo import zoo_case, zoo_names


def _conv(rng, name, inp, cin, cout, k=3, stride=1, pad=1):
    w = rng.integers(-20, 21, (cout, cin, k, k)).astype(np.int32)
    return Conv2dNode(name=name, inputs=[inp], weight=w.astype(np.float32), weight_int=w,
                      bias_int=np.zeros(cout, np.int64), stride=(stride, stride),
                      padding=(pad, pad, pad, pad))


def _if(name, inp, theta=200):
    return IFNode(name=name, inputs=[inp], threshold=np.asarray([theta]), membrane_bits=18)


def cnn(size: int = 16, ch: int = 8, seed: int = 0) -> Graph:
    """conv-IF, sum pool, conv-IF, global sum pool, dense: the shapes of a small all-conv
    classifier (a pool folded into the next layer on both kinds of weighted op)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-20, 21, (10, 2 * ch)).astype(np.int32)
    h = size // 2
    nodes = [InputNode(name="x", shape=(3, size, size), out_scale=np.array(1.0), mode="every_step"),
             _conv(rng, "c1", "x", 3, ch), _if("s1", "c1"),
             AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)),
             _conv(rng, "c2", "p1", ch, 2 * ch), _if("s2", "c2"),
             AvgPool2dNode(name="gp", inputs=["s2"], kernel=(h, h), stride=(h, h)),
             FlattenNode(name="f", inputs=["gp"]),
             DenseNode(name="fc", inputs=["f"], weight=w.astype(np.float32), weight_int=w)]
    g = Graph(nodes, ["fc"], timesteps=4)
    g.validate()
    return g


# --- the graph-level counts ---------------------------------------------------------------------

@pytest.mark.parametrize("case", zoo_names())
def test_footprint_bounds_the_folded_matrices(case):
    """For every slice size, the counts from the graph are at least what the composed
    matrices hold in every slice of that size, and one unit's are exact where the
    matrices are (synapses, fan-in)."""
    g = zoo_case(case).graph
    net = flatten_network(g)
    names = {p.node: p.name for p in net.populations if p.kind == "output"}
    names.update({p.node: p.name for p in net.populations if p.kind not in ("input", "output")})
    for fp in layer_footprints(g):
        assert fp.folded_fanin == population_fanin(g, fp.name)
        assert all(c.folded_fanin >= c.fanin for c in fp.chains)
        pop = net.population(names[fp.name])
        mats = [pr.matrix for pr in net.into(pop.name)]
        per_unit = sum(np.diff(m.indptr) for m in mats).reshape(pop.units, pop.slots).sum(1)
        assert demand(fp, 1).synapses >= per_unit.max()
        wmax = max(int(np.abs(m.data).max(initial=0)) for m in mats)
        assert fp.weight_max >= wmax
        for n in sorted({1, 2, 3, 5, pop.units // 3 or 1, pop.units}):
            d = demand(fp, n)
            for lo in range(0, pop.units, n):
                rows = slice(lo * pop.slots, min(lo + n, pop.units) * pop.slots)
                assert d.synapses >= sum(m[rows].nnz for m in mats), (fp.name, n, lo)
                assert d.axons >= sum(np.unique(m[rows].indices).size for m in mats), (fp.name, n, lo)


@pytest.mark.parametrize("seed", range(6))
def test_footprint_bounds_random_convolutions(seed):
    """Random geometry (kernel, stride, padding, a sum pool in front or behind, channels,
    non-square images): every slice of every size is bounded."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(1, 4)), int(rng.integers(5, 11)), int(rng.integers(5, 11))
    k, st = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3))
    pad = k // 2 if seed % 2 else int(rng.integers(0, k // 2 + 1))  # after a pool: keep the size
    nodes = [InputNode(name="x", shape=(c, h, w), out_scale=np.array(1.0), mode="every_step"),
             _conv(rng, "c0", "x", c, 2), _if("s0", "c0")]
    src = "s0"
    if seed % 2:
        nodes.append(AvgPool2dNode(name="p", inputs=["s0"], kernel=(2, 2), stride=(2 - seed % 4 // 3, 2)))
        src = "p"
    nodes += [_conv(rng, "c1", src, 2, 3, k=k, stride=st, pad=pad)]
    if seed % 3 == 2:
        nodes.append(AvgPool2dNode(name="q", inputs=["c1"], kernel=(2, 2), stride=(1, 1)))
    nodes.append(_if("s1", nodes[-1].name))
    g = Graph(nodes, ["s1"], timesteps=2)
    g.validate()
    net = flatten_network(g)
    fp = [f for f in layer_footprints(g) if f.name == "s1"][0]
    (m,) = [pr.matrix for pr in net.into("s1")]
    assert fp.weight_max >= int(np.abs(m.data).max(initial=0))
    for n in range(1, fp.units + 1):
        d = demand(fp, n)
        for lo in range(0, fp.units, n):
            rows = m[lo:lo + n]
            assert d.synapses >= rows.nnz and d.axons >= np.unique(rows.indices).size, (n, lo)


def test_pools_share_axons_and_convolutions_share_kernels():
    g = cnn()
    fps = {f.name: f for f in layer_footprints(g)}
    # the global pool's 8x8 windows are merged onto one axon per channel: fan-in 16, not 1,024
    assert (fps["fc"].fanin, fps["fc"].folded_fanin) == (16, 16 * 64)
    # a conv after a pool: its own taps; the folded matrix has the pool's window too
    assert (fps["s2"].fanin, fps["s2"].folded_fanin) == (72, 72 * 4)
    whole = demand(fps["s1"], fps["s1"].units)
    assert whole.stored == 8 * 27                 # the kernel, once per output channel
    assert whole.synapses >= 8 * 16 * 16 * 27 * 0.8  # the folded matrix: once per position
    assert whole.shared_axons == 3                # one axon per input channel


# --- Loihi 2: cores and chips --------------------------------------------------------------------

def test_layers_split_over_cores_and_chips():
    g = cnn()
    b = get_backend("loihi", {"neurons_per_core": "64", "cores": "8", "chips": "8"})
    m = b.mapping(g)
    by = {x.name: x for x in m.layers}
    assert by["s1"].cores == 8 * 16 * 16 // 64 and by["s1"].units_per_core == 64
    assert by["s2"].cores == 16 * 8 * 8 // 64
    assert m.cores == sum(x.cores for x in m.layers) == 49 and m.chips == 7
    assert by["s2"].chips == 2 and by["s2"].first_core == 32  # cores 32..47: chips 4 and 5
    assert [v for v in b.check(g) if "core" in v.quantity or "chip" in v.quantity] == []
    assert b.resource_totals(g) == {"cores": m.cores, "chips": m.chips}
    assert b.layer_resources(g)["s1"] == {"cores": 32, "chips": 4}


def test_memory_bounds_a_core_before_neurons_do():
    g = cnn()
    roomy = get_backend("loihi").mapping(g)
    tight = get_backend("loihi", {"memory_kib": "1"}).mapping(g)
    assert [x.cores for x in roomy.layers] == [1, 1, 1]
    assert all(x.memory_bits <= 8192 for x in tight.layers)
    assert sum(x.cores for x in tight.layers) > 3


def test_a_system_too_small_is_refused_with_the_smallest_that_holds_it():
    g = cnn(size=32)
    b = get_backend("loihi", {"neurons_per_core": "16"})    # 8*32*32/16 = 512 cores for s1 alone
    need = b.mapping(g)
    assert need.chips > 1
    (v,) = [v for v in b.check(g) if v.layer == "(all)"]
    assert (v.value, v.limit) == (need.cores, 128)
    assert v.quantity.startswith("cores needed (128 per chip x 1 chip)")
    assert f"chips={need.chips}" in v.fix and "system=kapoho-point (8 chips)" in v.fix
    big = get_backend("loihi", {"neurons_per_core": "16", "system": "kapoho-point"})
    assert not [v for v in big.check(g) if v.layer == "(all)"]


def test_a_neuron_no_core_holds_names_the_figure():
    g = cnn()
    (v,) = [v for v in get_backend("loihi", {"synapses_per_core": "50"}).check(g) if v.layer == "s2"]
    assert v.quantity.startswith("weights one core stores") and v.value == 72
    assert "synapses_per_core=72" in v.fix


def test_system_and_chip_options():
    assert get_backend("loihi", {"system": "kapoho-point"}).limits().cores == 8 * 128
    assert get_backend("loihi", {"system": "hala-point", "cores": "120"}).limits().cores == 1152 * 120
    with pytest.raises(UsageError, match="disagree"):
        get_backend("loihi", {"system": "kapoho-point", "chips": "2"})
    with pytest.raises(UsageError, match="unknown loihi system 'kapoho'"):
        get_backend("loihi", {"system": "kapoho"})
    lim = get_backend("loihi").limits()
    assert lim.fan_in is None and lim.synapses_per_core == 128 * 1024 * 8 // 8
    for key in ("cores", "chips", "memory_kib", "neuron_bits", "synapse_bits", "axon_bits"):
        assert lim.sources[key].split(":")[0].split(" ")[0] in ("published", "derived", "assumed"), key


def test_a_large_network_is_refused_before_it_is_folded(monkeypatch):
    """Folding this network would build matrices of about 2^26 entries: the capacity rule
    refuses it on the graph, and the network rules (which fold) never run."""
    import snncompile_loihi.backend as be

    def fold(*a, **k):
        raise AssertionError("folded")

    monkeypatch.setattr(be, "build_network", fold)
    g = cnn(size=128, ch=16)
    t = get_backend("loihi", {"neurons_per_core": "16"})
    found = t.check(g)
    assert [v.layer for v in found] == ["(all)"]


def test_cyclesim_maps_without_folding(monkeypatch):
    import snncompile_cyclesim as cs

    monkeypatch.setattr(cs, "structured_network", lambda *a: (_ for _ in ()).throw(AssertionError))
    g = cnn(size=64)
    b = get_backend("cyclesim", {"neurons_per_core": "256", "cores": "4096", "axons_per_core": "16384"})
    assert b.check(g) == []
    assert b.layer_resources(g)["s1"]["cores"] == 8 * 64 * 64 // 256


def test_evaluate_shows_cores_and_chips_per_layer(digits_dir, tmp_path):
    """The digits CNN converted for Loihi with 64 neurons per core on chips of 4 cores:
    `evaluate` shows the cores and chips of each layer and of the network."""
    from click.testing import CliRunner

    from snncompile.app.cli import main

    out = tmp_path / "out"
    args = ["convert", str(digits_dir / "digits_cnn.onnx"), "--calib", str(digits_dir / "calib.npz"),
            "-T", "8", "--bits", "8", "--membrane-bits", "18", "--input-mode", "every_step",
            "--target", "loihi", "--target-option", "neurons_per_core=64",
            "--target-option", "cores=4", "--target-option", "chips=8", "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(digits_dir / "test.npz"), "--json"])
    ev = __import__("json").loads(r.stdout)
    layers = {x["neurons"]: x for x in ev["layers"]}
    assert layers[1024]["cores"] == 16 and layers[1024]["chips"] == 4
    assert ev["cores"] == sum(x["cores"] for x in ev["layers"]) and ev["chips"] == -(-ev["cores"] // 4)
    text = CliRunner().invoke(main, ["evaluate", str(out), "--data", str(digits_dir / "test.npz")]).stdout
    assert "loihi cores" in text and "loihi chips" in text and f"loihi chips: {ev['chips']}" in text
    manifest = __import__("json").loads((out / "loihi" / "network.json").read_text())
    assert manifest["mapping"]["cores"] == ev["cores"] and manifest["mapping"]["chips"] == ev["chips"]


def test_convert_refuses_a_system_too_small_and_writes_nothing(digits_dir, tmp_path):
    from click.testing import CliRunner

    from snncompile.app.cli import main

    out = tmp_path / "out"
    r = CliRunner().invoke(main, [
        "convert", str(digits_dir / "digits_cnn.onnx"), "--calib", str(digits_dir / "calib.npz"),
        "-T", "8", "--bits", "8", "--membrane-bits", "18", "--input-mode", "every_step",
        "--target", "loihi", "--target-option", "neurons_per_core=8", "-o", str(out)])
    assert r.exit_code == 6 and not out.exists()
    # decided from the imported model's neurons, before calibration (a lower bound)
    assert "cores needed at least, by neurons alone (128 per chip x 1 chip)" in r.stderr
    assert "chips=2 or system=kapoho-point (8 chips)" in r.stderr
    assert "calibrat" not in r.stderr.split("error:")[0]

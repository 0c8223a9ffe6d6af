"""Structured projections (snncompile.targets.structured): convolutions keep their shared
kernel through lowering, in the cyclesim and netlist artifacts and in their runs, and every
operator equals, entry for entry, the matrix flatten_network composes (so spikes, synaptic
event counts, cycles and energy are those the matrices gave)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncompile.ir import AddNode, AvgPool2dNode, FlattenNode, PadNode
from snncompile.plugin import ConvOp, flatten_network, get_backend, structured_network
from snncompile.testing import reference, zoo_case
from snncompile.testing.zoo import Case, _Builder, zoo_names


def _geometry_cases() -> list[Case]:
    """Chains whose composition is the point: pools after and before convolutions (composed
    where exact, explicit where not), depthwise and grouped convolutions, a pad folded into
    a convolution, a global pool before a dense layer, and a sum of two kernels of one source."""
    cases = []
    b = _Builder(21)
    b.input((2, 9, 9), "every_step")
    b.conv("c1", "x", 2, 4, stride=(2, 2), padding=(1, 1, 1, 1))
    b.add(AvgPool2dNode(name="p1", inputs=["c1"], kernel=(2, 2), stride=(2, 2)))     # conv, then pool
    b.spiking("s1", "p1", 4, lo=3, hi=9)
    b.add(AvgPool2dNode(name="p2", inputs=["s1"], kernel=(2, 2), stride=(1, 1)))     # overlapping pool
    b.conv("c2", "p2", 4, 4, k=1)
    b.spiking("s2", "c2", 4, lo=2, hi=5)
    b.add(FlattenNode(name="f", inputs=["s2"]))
    b.dense("out", "f", 4, 3)
    cases.append(Case("conv_pool", b.graph(["out"], 5), b.x(3, (2, 9, 9), -3, 8), 5))
    b = _Builder(22)
    b.input((3, 8, 8), "once")
    b.conv("c1", "x", 3, 4, padding=(1, 1, 1, 1))
    b.spiking("s1", "c1", 4, lo=20, hi=60)
    b.add(AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)))
    b.conv("c2", "p1", 4, 4, padding=(1, 1, 1, 1), groups=4)                        # VGG: pool, pad, conv
    b.spiking("s2", "c2", 4, lo=2, hi=6)
    b.add(AvgPool2dNode(name="p2", inputs=["s2"], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)))
    b.conv("c3", "p2", 4, 4, padding=(1, 1, 1, 1), groups=2)                        # not exact: explicit
    b.spiking("s3", "c3", 4, lo=2, hi=6)
    b.add(PadNode(name="pad", inputs=["s3"], pads=(0, 2, 1, 0, 0, 1)))
    b.conv("c4", "pad", 4, 2, k=3)                                                   # pad folded into conv
    b.conv("c5", "s3", 4, 2, k=1, padding=(0, 0, 0, 0))
    b.add(AddNode(name="a", inputs=["c4", "c5"]))                                    # two kernels, one source
    b.spiking("s4", "a", 2, lo=2, hi=6)
    b.add(AvgPool2dNode(name="gp", inputs=["s4"], kernel=(2, 2), stride=(2, 2)))     # global pool
    b.add(FlattenNode(name="f", inputs=["gp"]))
    b.dense("out", "f", 2, 3)
    cases.append(Case("pool_conv", b.graph(["out"], 6), b.x(3, (3, 8, 8), -2, 10), 6))
    return cases


def _cases() -> list[Case]:
    return [zoo_case(n) for n in zoo_names()] + _geometry_cases()


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_operators_equal_the_composed_matrices(case):
    flat, st = flatten_network(case.graph), structured_network(case.graph)
    assert [p.name for p in flat.populations] == [p.name for p in st.populations]
    ops = {(p.source, p.target): p.op for p in st.projections}
    assert set(ops) == {(p.source, p.target) for p in flat.projections}
    rng = np.random.default_rng(0)
    for pr in flat.projections:
        m, op = pr.matrix, ops[(pr.source, pr.target)]
        got = op.to_matrix()
        assert got.shape == m.shape and got.nnz == m.nnz and (got != m).nnz == 0, (pr.source, pr.target, op.kind)
        x = rng.integers(-4, 5, size=(2, m.shape[1])).astype(np.float64)
        np.testing.assert_array_equal(op.apply(x), (m @ x.T).T)
        active = (rng.random((2, m.shape[1])) < 0.3).astype(np.float64)
        ones = m.copy()
        ones.data[:] = 1
        np.testing.assert_array_equal(op.pattern(active), (ones @ active.T).T)  # synaptic events per row
        np.testing.assert_array_equal(op.row_synapses(), np.diff(m.indptr))
        n = m.shape[0]
        for lo, hi in {(0, n), (0, max(1, n // 3)), (n // 3, max(n // 3 + 1, 2 * n // 3)), (n - 1, n)}:
            assert op.axons(lo, hi) == np.unique(m[lo:hi].indices).size, (pr.source, pr.target, lo, hi)
    for p in flat.populations[1:]:
        np.testing.assert_array_equal(st.bias_every[p.name], flat.bias_every[p.name])
        np.testing.assert_array_equal(st.bias_first[p.name], flat.bias_first[p.name])


def test_the_scale_patterns_compose_into_kernels():
    """What ResNet-50 and VGG-19 are made of lowers to kernels and dense weights, no matrix:
    conv after pool (VGG, with padding), pool after conv, a pad, a sum of kernels, a global
    pool before the classifier."""
    kinds = {(p.source, p.target): p.op.kind for p in structured_network(_geometry_cases()[1].graph).projections}
    assert kinds[("s1", "s2")] == "conv" and kinds[("s3", "s4")] == "conv" and kinds[("x", "s1")] == "conv"
    assert kinds[("s4", "out")] == "dense"
    assert kinds[("s2", "s3")] == "matrix"  # an overlapping padded pool before a padded conv is not one conv
    assert {(p.source, p.target): p.op.kind for p in structured_network(_geometry_cases()[0].graph).projections}[
        ("x", "s1")] == "conv"


def _cnn() -> Case:
    b = _Builder(30)
    b.input((3, 32, 32), "every_step")
    b.conv("c1", "x", 3, 16, padding=(1, 1, 1, 1))
    b.spiking("s1", "c1", 16, lo=20, hi=60)
    b.add(AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)))
    b.conv("c2", "p1", 16, 16, padding=(1, 1, 1, 1))
    b.spiking("s2", "c2", 16, lo=4, hi=12)
    b.add(AvgPool2dNode(name="p2", inputs=["s2"], kernel=(16, 16), stride=(16, 16)))
    b.add(FlattenNode(name="f", inputs=["p2"]))
    b.dense("out", "f", 16, 10)
    return Case("cnn32", b.graph(["out"], 4), b.x(2, (3, 32, 32), -3, 6), 4)


@pytest.mark.parametrize("backend", ["cyclesim", "netlist"])
def test_convolutions_are_stored_and_run_as_kernels(backend, tmp_path, monkeypatch):
    """A 3x32x32 CNN (160 k synapses through its convolutions, 3 k parameters): the artifact
    holds about the parameters, and lowering and running never build a convolution's matrix."""
    c = _cnn()
    synapses = sum(p.matrix.nnz for p in flatten_network(c.graph).projections)
    monkeypatch.setattr(ConvOp, "to_matrix", lambda self: pytest.fail("a convolution was turned into a matrix"))
    b = get_backend(backend, {"neurons_per_core": "1024", "axons_per_core": "65536"} if backend == "cyclesim" else {})
    b.lower(c.graph, tmp_path)
    with np.load(tmp_path / ("network.npz" if backend == "cyclesim" else "netlist.npz")) as z:
        stored = sum(z[k].size for k in z.files)
    units = sum(int(np.prod(n.shape)) for n in c.graph.nodes)
    assert synapses > 150_000 and stored < 4 * units + 10_000, (synapses, stored)
    r = b.run(tmp_path, c.x_int, c.timesteps, record_spikes=True)
    ref = reference(c.graph, c.x_int, c.timesteps)
    for name, acc in ref.output_acc.items():
        np.testing.assert_array_equal(r.output_acc[name], acc)
    for name, s in ref.spikes.items():
        np.testing.assert_array_equal(r.spikes[name], s)
    if backend == "netlist":
        doc = json.loads((tmp_path / "netlist.json").read_text())
        assert [p["kind"] for p in doc["projections"]] == ["conv", "conv", "dense"]
        assert sum(p["synapses"] for p in doc["projections"]) == synapses


@pytest.mark.parametrize("name", ["residual_add", "maxpool_counts", "concat", "signed_spikes"])
def test_cyclesim_event_counts_are_those_of_the_matrices(name, tmp_path):
    """SynOps, input events and each core's events (what cycles and energy are made of),
    recounted here from the composed matrices and the spikes of the run."""
    c = zoo_case(name)
    b = get_backend("cyclesim", {"neurons_per_core": "7"})
    b.lower(c.graph, tmp_path)
    r = b.run(tmp_path, c.x_int, c.timesteps, record_spikes=True)
    flat = flatten_network(c.graph)
    T, B = c.timesteps, len(c.x_int)
    outs = {}
    for p in flat.populations:
        if p.kind == "input":
            x = np.rint(c.x_int).reshape(B, -1)
            outs[p.name] = np.stack([x if p.input_mode == "every_step" else (x * T if t == 0 else 0 * x)
                                     for t in range(T)])
        elif p.kind in ("if", "maxpool"):
            outs[p.name] = r.spikes[p.node].reshape(T, B, -1)
    synops = input_events = 0.0
    per_core = {}
    mapping = json.loads((tmp_path / "mapping.json").read_text())["cores"]
    for pr in flat.projections:
        pattern = pr.matrix.copy()
        pattern.data[:] = 1
        ev = sum(np.asarray(pattern @ (outs[pr.source][t] != 0).T).T for t in range(T))  # (B, rows)
        if pr.source == flat.populations[0].name:
            input_events += ev.sum() / B
        else:
            synops += ev.sum() / B
        slots = flat.population(pr.target).slots
        for core in mapping:
            if core["population"] == pr.target:
                per_core[core["index"]] = per_core.get(core["index"], 0.0) + \
                    ev[:, core["start"] * slots:core["stop"] * slots].sum() / B
    assert r.stats["synops_per_sample"] == pytest.approx(synops, rel=0, abs=1e-9)
    assert r.stats["input_events_per_sample"] == pytest.approx(input_events, rel=0, abs=1e-9)
    for row in r.stats["cores"]:
        assert row["events_per_sample"] == pytest.approx(per_core.get(row["core"], 0.0), rel=0, abs=1e-9)
        m = next(x for x in mapping if x["index"] == row["core"])
        assert (row["axons"], row["synapses"]) == (m["axons"], m["synapses"])

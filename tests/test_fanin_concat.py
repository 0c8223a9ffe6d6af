"""Fan-in through a concat: a conv or dense reading a concat counts each of its weights once
(each concat input's chain only the weights over its own channels), as the flattened
network wires it; --fanin gives such a layer its whole budget, and a layer's chains share
the budget without leaving any of it unused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import helper

from snncompile.ir import AddNode, Conv2dNode, Graph, IFNode, InputNode, WeightedNode
from snncompile.ir.structure import population_fanin
from snncompile.passes.constrain import _split, fanin_budgets, fanin_masks
from snncompile.plugin import flatten_network
from snncompile.testing import zoo_case


def _flat_fanin(g: Graph) -> dict[str, int]:
    """Per layer, the most synapses one compartment receives in the flattened network: the
    ground truth every count must bound."""
    net = flatten_network(g)
    return {p.node: int(np.max(sum(np.diff(pr.matrix.indptr) for pr in net.into(p.name))))
            for p in net.populations if p.kind != "input"}


def _masked(g: Graph, masks: dict[str, np.ndarray]) -> Graph:
    out = g.copy()
    for n in out.nodes:
        if n.name in masks:
            n.weight = n.weight * masks[n.name]
            n.weight_int = (n.weight_int * masks[n.name]).astype(n.weight_int.dtype)
    return out


def test_conv_and_dense_after_a_concat_count_their_real_synapses():
    g = zoo_case("concat").graph  # s1 | s2 -> cat -> c3 (no padding) ; s3 | s2 -> cat2 -> out
    flat = _flat_fanin(g)
    for layer, op in (("s3", "c3"), ("out", "out")):
        w = g[op].weight_int
        real = int((w.reshape(w.shape[0], -1) != 0).sum(axis=1).max())
        assert population_fanin(g, layer) == real == flat[layer], layer
    assert population_fanin(g, "s3", nonzero=False) == 5 * 9  # each weight once, not once per input


@pytest.mark.parametrize("fanin", [7, 20, 33])
def test_fanin_after_a_concat_uses_the_whole_budget(fanin):
    g = zoo_case("concat").graph
    budgets = fanin_budgets(g, fanin)
    assert budgets["c3"] == fanin and budgets["out"] == fanin  # not fanin // 2
    pruned = _masked(g, fanin_masks(g, fanin))
    flat = _flat_fanin(pruned)
    for layer in ("s3", "out"):
        assert flat[layer] == population_fanin(pruned, layer) == fanin, layer
    assert max(flat.values()) <= fanin


def _add_of_two_convs() -> Graph:
    """x -> 3x3 conv (36 inputs) + 1x1 conv (4 inputs) -> add -> IF: two chains of unequal size."""
    rng = np.random.default_rng(0)
    wa = rng.integers(1, 6, size=(3, 4, 3, 3)).astype(np.int32) * rng.choice([-1, 1], size=(3, 4, 3, 3))
    wb = rng.integers(1, 6, size=(3, 4, 1, 1)).astype(np.int32)
    nodes = [InputNode(name="x", shape=(4, 5, 5), out_scale=np.ones(1), mode="every_step"),
             Conv2dNode(name="ca", inputs=["x"], weight=wa.astype(np.float32), weight_int=wa,
                        padding=(1, 1, 1, 1), out_scale=np.ones(1)),
             Conv2dNode(name="cb", inputs=["x"], weight=wb.astype(np.float32), weight_int=wb,
                        out_scale=np.ones(1)),
             AddNode(name="a", inputs=["ca", "cb"]),
             IFNode(name="s", inputs=["a"], threshold=np.full((3, 1, 1), 9, np.int64),
                    out_scale=np.ones(1))]
    g = Graph(nodes, ["s"], timesteps=4)
    g.validate()
    return g


def test_chains_share_the_budget_and_use_all_of_it():
    g = _add_of_two_convs()
    assert population_fanin(g, "s") == 36 + 4
    assert fanin_budgets(g, 20) == {"ca": 16, "cb": 4}  # cb keeps its 4, ca the other 16
    pruned = _masked(g, fanin_masks(g, 20))
    assert population_fanin(pruned, "s") == 20 >= _flat_fanin(pruned)["s"]
    assert fanin_budgets(g, 6) == {"ca": 3, "cb": 3}
    assert fanin_budgets(g, 40) == {"ca": 36, "cb": 4}  # it fits: nothing pruned
    assert all(np.all(m == 1) for m in fanin_masks(g, 40).values())


def test_split_is_equal_and_leaves_nothing_unused():
    assert _split(10, [90, 10], [1, 1]) == [5, 5]
    assert _split(10, [99, 1], [1, 1]) == [9, 1]            # the small one keeps all
    assert _split(11, [50, 50, 2], [1, 1, 1]) == [5, 4, 2]  # 9 left over: 5 + 4
    assert _split(10, [50, 50, 50], [1, 6, 1]) == [2, 6, 2]  # a need above the share
    assert _split(40, [36, 4], [1, 1]) == [36, 4]


def _concat_onnx(onnx_kit, rng):
    """Two conv+ReLU branches, a channel concat, a 3x3 conv (45 inputs) and a dense head."""
    def w(*s):
        return (rng.standard_normal(s) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["x", "wb"], ["b"]),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "wc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["rc"]),
             helper.make_node("Flatten", ["rc"], ["f"]),
             helper.make_node("Gemm", ["f", "wd"], ["y"], transB=1)]
    return onnx_kit.model(nodes, {"wa": w(3, 2, 3, 3), "wb": w(2, 2, 1, 1), "wc": w(4, 5, 3, 3),
                                  "wd": w(3, 4 * 6 * 6)}, in_shape=(2, 6, 6))


def test_fanin_is_one_figure_through_a_concat(onnx_kit, tmp_path):
    import onnx

    from snncompile.app.inspection import inspect_artifact
    from snncompile.measure.evaluate import evaluate_artifact
    from snncompile.targets.artifact import read_artifact
    from snncompile.targets.rules import Limits, check_limits

    rng = np.random.default_rng(1)
    onnx.save(_concat_onnx(onnx_kit, rng), tmp_path / "m.onnx")
    x = rng.uniform(0, 1, size=(64, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x[:16], y=rng.integers(0, 3, 16))
    out = tmp_path / "snn"
    r = subprocess.run([sys.executable, "-m", "snncompile", "convert", str(tmp_path / "m.onnx"),
                        "--calib", str(tmp_path / "calib.npz"), "-T", "4", "--bits", "8",
                        "--fanin", "30", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    g = read_artifact(str(out)).graph
    built = {r["name"]: r["fanin"] for r in inspect_artifact(str(out))["nodes"] if "fanin" in r}
    ev = {r["name"]: r["max_fanin"] for r in evaluate_artifact(str(out), str(tmp_path / "test.npz"))["layers"]}
    rule = {v.layer: v.value for v in check_limits(g, Limits(fan_in=1))}
    flat = _flat_fanin(g)
    assert built == ev == rule == {k: v for k, v in flat.items()}  # exact here: no pools
    conv = next(n for n in g.nodes if isinstance(n, Conv2dNode) and len(g[n.inputs[0]].inputs) == 2)
    head = next(n.name for n in g.nodes if isinstance(n, WeightedNode) and n.name in g.outputs)
    assert flat[next(n.name for n in g.nodes if conv.name in n.inputs)] == 30  # the budget, all of it
    assert flat[head] == 30

"""The fold passes: new graphs, inputs untouched, numerically exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from snncompile import ir
from snncompile.sim.ann import ann_forward
from snncompile.passes import (DEFAULT_PASSES, fold_affine_into_weighted, merge_affines,
                               remove_noops, run_passes, swap_maxpool_relu)
from snncompile.ir.serialize import graph_to_manifest


def _rand(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def conv_bn_graph(rng, pool="max", clip=None):
    """input -> conv -> affine (BN) -> affine -> maxpool -> relu -> flatten -> dense."""
    nodes = [
        ir.InputNode(name="x", shape=(2, 8, 8)),
        ir.Conv2dNode(name="c", inputs=["x"], weight=_rand(rng, 4, 2, 3, 3), bias=_rand(rng, 4),
                      padding=(1, 0, 1, 2)),
        ir.AffineNode(name="bn", inputs=["c"], weight=_rand(rng, 4), bias=_rand(rng, 4)),
        ir.AffineNode(name="bn2", inputs=["bn"], weight=_rand(rng, 4), bias=_rand(rng, 4)),
        (ir.MaxPool2dNode(name="p", inputs=["bn2"], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
         if pool == "max" else ir.AvgPool2dNode(name="p", inputs=["bn2"])),
        ir.ReluNode(name="r", inputs=["p"], calib_tensor="r", max_value=clip),
        ir.FlattenNode(name="f", inputs=["r"]),
        ir.DenseNode(name="d", inputs=["f"], weight=_rand(rng, 3, 64 if pool == "max" else 64),
                     bias=_rand(rng, 3)),
        ir.AffineNode(name="out", inputs=["d"], weight=np.ones(3, np.float32),
                      bias=np.zeros(3, np.float32)),
    ]
    g = ir.Graph(nodes, ["out"], meta={"source": "test"})
    g.validate()
    return g


def snapshot(g: ir.Graph):
    manifest, arrays = graph_to_manifest(g)
    return json.dumps(manifest, sort_keys=True), {k: v.copy() for k, v in arrays.items()}


@pytest.fixture
def x(rng):
    return _rand(rng, 5, 2, 8, 8)


@pytest.mark.parametrize("fn", [remove_noops, merge_affines, fold_affine_into_weighted,
                                swap_maxpool_relu, run_passes])
def test_passes_do_not_mutate_their_input(rng, fn):
    g = conv_bn_graph(rng)
    before = snapshot(g)
    out = fn(g)
    after = snapshot(g)
    assert out is not g and before[0] == after[0]
    assert before[1].keys() == after[1].keys()
    assert all(np.array_equal(before[1][k], after[1][k]) for k in before[1])
    assert all(a is not b for a, b in zip(out.nodes, g.nodes))


def test_bn_folding_is_exact(rng, x):
    g = conv_bn_graph(rng)
    folded = fold_affine_into_weighted(merge_affines(g))
    assert [n.op for n in folded.nodes][:3] == ["input", "conv2d", "maxpool2d"]
    assert folded.nodes[1].name == "bn2"  # the folded conv computes the last affine's tensor
    a = ann_forward(g, x, return_all=True)
    b = ann_forward(folded, x, return_all=True)
    torch.testing.assert_close(b["bn2"], a["bn2"], rtol=1e-6, atol=1e-6)
    # exact in real numbers; in float32 the folded weights round differently, a few ulps per
    # layer, and the layers after the fold add up such differences (seen: 1.6e-6 relative on
    # one CPU); a wrong fold is off by far more than 1e-5
    torch.testing.assert_close(b["out"], a["out"], rtol=1e-5, atol=1e-5)


def test_fold_needs_a_single_consumer(rng):
    g = conv_bn_graph(rng, pool="avg")
    nodes = [n for n in g.copy().nodes]
    nodes.insert(3, ir.ReluNode(name="side", inputs=["c"]))  # a second reader of the conv
    g2 = g.replace_nodes(nodes)
    out = fold_affine_into_weighted(g2)
    assert "c" in out and isinstance(out["bn"], ir.AffineNode)


def test_merge_affines(rng, x):
    g = conv_bn_graph(rng)
    m = merge_affines(g)
    assert "bn" not in m and isinstance(m["bn2"], ir.AffineNode) and m["bn2"].inputs == ["c"]
    torch.testing.assert_close(ann_forward(m, x), ann_forward(g, x), rtol=1e-6, atol=1e-6)


def test_remove_noops(rng, x):
    g = conv_bn_graph(rng)
    out = remove_noops(g)
    assert "out" not in out and out.outputs == ["d"]
    torch.testing.assert_close(ann_forward(out, x), ann_forward(g, x), rtol=0, atol=0)


@pytest.mark.parametrize("clip", [None, 0.7])
def test_maxpool_relu_swap_is_exact(rng, x, clip):
    g = conv_bn_graph(rng, clip=clip)
    s = swap_maxpool_relu(g)
    ops = [n.op for n in s.nodes]
    assert ops.index("relu") < ops.index("maxpool2d")
    pre = s.nodes[ops.index("relu")]
    assert pre.inputs == ["bn2"] and pre.calib_tensor == "bn2" and pre.max_value == clip
    assert isinstance(s["r"], ir.MaxPool2dNode) and s["r"].inputs == [pre.name]
    assert torch.equal(ann_forward(s, x), ann_forward(g, x))
    # relu of the calibration tensor equals the moved ReLU's output
    a, b = ann_forward(g, x, return_all=True), ann_forward(s, x, return_all=True)
    ref = torch.relu(a["bn2"]) if clip is None else torch.clamp(a["bn2"], 0, clip)
    assert torch.equal(b[pre.name], ref)


def test_swap_skipped_when_pool_has_other_readers(rng):
    g = conv_bn_graph(rng)
    nodes = g.copy().nodes
    nodes.append(ir.FlattenNode(name="side", inputs=["p"]))
    g2 = g.replace_nodes(nodes, ["out", "side"])
    s = swap_maxpool_relu(g2)
    assert [n.op for n in s.nodes] == [n.op for n in g2.nodes]


def test_default_pipeline(rng, x):
    g = conv_bn_graph(rng)
    out = run_passes(g, DEFAULT_PASSES)
    assert [n.op for n in out.nodes] == ["input", "conv2d", "relu", "maxpool2d", "flatten", "dense"]
    torch.testing.assert_close(ann_forward(out, x), ann_forward(g, x), rtol=1e-5, atol=1e-5)
    assert out.meta == g.meta

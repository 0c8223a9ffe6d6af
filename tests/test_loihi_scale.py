"""The loihi lowering keeps every connection kind of an ImageNet-style network in its own
form: a convolution (also depthwise) as its kernel, an identity or 1x1/stride-2 projection
shortcut into an add as a Conv, a sum pool in front of a conv or a dense layer as a relay,
flatten -> dense as the dense weights; never a matrix composed through the pool or the
shortcut (which for ResNet-50 is 100,352 x 1,000 at the classifier alone). Each is also
bit-exact on Lava. The chain biases computed without composing match the composed ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from snncompile.ir import AddNode, AffineNode, AvgPool2dNode, Conv2dNode, FlattenNode, Graph, InputNode
from snncompile.plugin import flatten_network, get_backend
from test_loihi import _assert_bit_exact, _conv, _dense, _if, _inputs, _validated, cnn, convs, needs_lava, \
    residual, wide_bias


def resnet_like(rng) -> Graph:
    """Stem conv, pool relay -> 1x1 conv, a 3x3 conv plus a 1x1 stride-2 projection of the
    block's input into an add, a depthwise 3x3 conv plus a per-channel scaled identity skip
    into an add, then
    a global sum pool -> flatten -> dense classifier."""
    w_dw = rng.integers(-30, 31, (6, 1, 3, 3)).astype(np.int32)
    dw = Conv2dNode(name="dw", inputs=["s3"], weight=w_dw.astype(np.float32), weight_int=w_dw,
                    bias_int=rng.integers(-5, 6, 6).astype(np.int64), groups=6, padding=(1, 1, 1, 1))
    w_k = np.array([1, 2, 3, 1, 5, 2], np.int32)  # the skip rescaled per channel, as conversion does
    nodes = [InputNode(name="x", shape=(2, 8, 8), out_scale=np.array(1.0), mode="every_step", bits=5),
             _conv(rng, "c1", "x", 2, 4), _if("s1", "c1", [150]),
             AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)),
             _conv(rng, "c2", "p1", 4, 6, k=1, padding=(0, 0, 0, 0)), _if("s2", "c2", [40]),
             _conv(rng, "c3", "s2", 6, 6),
             _conv(rng, "proj", "s1", 4, 6, k=1, stride=(2, 2), padding=(0, 0, 0, 0)),
             AddNode(name="a1", inputs=["c3", "proj"]), _if("s3", "a1", [60]),
             dw, AffineNode(name="k", inputs=["s3"], weight=w_k.astype(np.float32), weight_int=w_k),
             AddNode(name="a2", inputs=["dw", "k"]), _if("s4", "a2", [30]),
             AvgPool2dNode(name="gp", inputs=["s4"], kernel=(4, 4), stride=(4, 4)),
             FlattenNode(name="f", inputs=["gp"]),
             _dense(rng, "fc", "f", 6, 3)]
    return Graph(nodes, ["fc"], timesteps=6)


def test_every_connection_kind_keeps_its_own_weights():
    from snncompile_loihi.network import build_network

    g = _validated(resnet_like(np.random.default_rng(0)))
    assert get_backend("loihi").check(g) == []
    net = build_network(g)
    got = sorted((c.src, c.dst, c.kind, c.pool is not None, tuple(c.weight.shape), c.delay)
                 for c in net.connections)
    assert got == [
        ("s1", "s2", "conv", True, (6, 4, 1, 1), 0),     # pool relay, then the 1x1 kernel
        ("s1", "s3", "conv", False, (6, 4, 1, 1), 2),    # projection shortcut, delayed to line up
        ("s2", "s3", "conv", False, (6, 6, 3, 3), 0),
        ("s3", "s4", "conv", False, (6, 1, 1, 1), 0),    # scaled identity skip: a depthwise 1x1 kernel
        ("s3", "s4", "conv", False, (6, 1, 3, 3), 0),    # depthwise conv
        ("s4", "fc", "dense", True, (3, 6), 0),          # global pool relay -> the 3 x 6 weights
        ("x", "s1", "conv", False, (4, 2, 3, 3), 0)]
    # no array larger than an op's own parameters: nothing composed through a pool or a skip
    params = max(n.weight_int.size for n in g.nodes if getattr(n, "weight_int", None) is not None)
    assert max(c.weight.size for c in net.connections) <= params
    # a relay costs a step of latency
    depth = {p.name: p.depth for p in net.populations} | {o.name: o.depth for o in net.outputs}
    assert depth == {"s1": 1, "s2": 3, "s3": 4, "s4": 5, "fc": 7}


@pytest.mark.parametrize("build", [resnet_like, cnn, convs, residual, wide_bias])
def test_chain_biases_match_the_composed_network(build):
    from snncompile_loihi.chainbias import chain_bias

    g = _validated(build(np.random.default_rng(1)))
    flat = flatten_network(g)
    for p in flat.populations:
        if p.kind in ("if", "output"):
            every, first = chain_bias(g, p.node)
            np.testing.assert_array_equal(every, flat.bias_every[p.name])
            np.testing.assert_array_equal(first, flat.bias_first[p.name])


def test_input_width_rule_builds_only_the_first_layers():
    from snncompile_loihi.network import build_network, input_layers

    g = _validated(resnet_like(np.random.default_rng(0)))
    net = build_network(g, layers=input_layers(g))
    assert [p.name for p in net.populations] == ["s1"] and len(net.connections) == 1


@needs_lava
def test_resnet_like_is_bit_exact_on_lava(tmp_path):
    rng = np.random.default_rng(3)
    g = _validated(resnet_like(rng))
    _assert_bit_exact(g, _inputs(rng, g, 2), tmp_path)


def test_neuron_bound_is_a_lower_bound_and_refuses_before_conversion():
    from snncompile_loihi.capacity import neuron_bound

    g = _validated(resnet_like(np.random.default_rng(0)))
    for opts in ({}, {"neurons_per_core": "16"}, {"memory_kib": "1"}, {"neurons_per_core": "7"}):
        b = get_backend("loihi", opts)
        assert neuron_bound(g, b._chip).cores <= b.mapping(g).cores, opts
    b = get_backend("loihi", {"neurons_per_core": "16", "cores": "8"})
    (v,) = b.check_early(g)
    assert (v.layer, v.value, v.limit) == ("(all)", neuron_bound(g, b._chip).cores, 8)
    assert v.quantity.startswith("cores needed at least") and "system=kapoho-point" in v.fix
    assert get_backend("loihi").check_early(g) == []


def test_lowering_reports_progress_per_layer(tmp_path):
    g = _validated(resnet_like(np.random.default_rng(0)))
    seen = []
    get_backend("loihi").lower(g, tmp_path, progress=lambda done, total, what: seen.append((done, total, what)))
    assert [w for _, _, w in seen[:-1]] == ["s1", "s2", "s3", "s4", "fc"] and seen[-1][:2] == (5, 5)

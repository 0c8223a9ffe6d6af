"""One fan-in rule: conversion and tuning (``passes.constrain``) and every backend
(``snncompile.plugin.check_limits``) count the same neurons the same way, the count bounds
what hardware sees after flattening, and the budgets tuning imposes meet the rule."""

from __future__ import annotations

import numpy as np
import pytest

from snncompile.errors import UsageError
from snncompile.ir import AvgPool2dNode, ConcatNode, FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode
from snncompile.ir.structure import fanin_layers, population_fanin
from snncompile.passes.constrain import fanin_budgets, topk_mask
from snncompile.targets.rules import violations
from snncompile.plugin import RULES, Limits, check_limits, flatten_network
from snncompile.testing import zoo_case, zoo_names


def _fanin_rule(g: Graph, fanin: int) -> list[str]:
    return [str(v) for v in check_limits(g, Limits(fan_in=fanin), rules=(RULES["fan_in"],))]


@pytest.mark.parametrize("name", zoo_names())
def test_the_rule_counts_the_neurons_flattening_wires(name):
    g = zoo_case(name).graph
    flat = flatten_network(g)
    assert {p.node for p in flat.populations if p.kind != "input"} == set(fanin_layers(g))
    for p in flat.populations:
        if p.kind == "input":
            continue
        per_compartment = sum(np.diff(pr.matrix.indptr) for pr in flat.into(p.name))
        assert population_fanin(g, p.node) >= int(np.max(per_compartment)), p.name


@pytest.mark.parametrize("name", zoo_names())
def test_conversion_and_backends_report_the_same_fanin_violations(name):
    g = zoo_case(name).graph
    for fanin in (1, 4, 16, 64):
        assert violations(g, fanin=fanin) == _fanin_rule(g, fanin)


@pytest.mark.parametrize("name", zoo_names())
def test_budgets_meet_the_rule_backends_check(name):
    g = zoo_case(name).graph
    worst = max(population_fanin(g, n) for n in fanin_layers(g))
    met = 0
    for fanin in sorted({max(1, worst // d) for d in (1, 2, 3, 5, 9)}):
        try:
            budgets = fanin_budgets(g, fanin)
        except UsageError:
            continue
        pruned = zoo_case(name).graph
        for op, k in budgets.items():
            n = pruned[op]
            n.weight_int = n.weight_int * topk_mask(n.weight_int, k).astype(n.weight_int.dtype)
        assert _fanin_rule(pruned, fanin) == [] and violations(pruned, fanin=fanin) == [], fanin
        met += 1
    assert met


def _pool_after_concat() -> Graph:
    """Two IF layers concatenated into a spike-count max pool: each pool compartment reads one
    spike, and a sum pool of the same concat feeds an output."""
    nodes = [InputNode(name="x", shape=(1, 4, 4), out_scale=np.array(1.0), mode="every_step"),
             IFNode(name="s1", inputs=["x"], shape=(1, 4, 4), threshold=np.array([3])),
             IFNode(name="s2", inputs=["x"], shape=(1, 4, 4), threshold=np.array([5])),
             ConcatNode(name="cat", inputs=["s1", "s2"], axis=0),
             MaxPool2dNode(name="mp", inputs=["cat"], kernel=(2, 2), stride=(2, 2)),
             AvgPool2dNode(name="ap", inputs=["mp"], kernel=(2, 2), stride=(2, 2)),
             FlattenNode(name="out", inputs=["ap"])]
    return Graph(nodes, ["out"], timesteps=4)


def test_max_pools_are_limited_by_conversion_and_backends_alike():
    g = _pool_after_concat()
    assert fanin_layers(g) == ["s1", "s2", "mp", "out"]
    # each concat input fills its own channels: a pool compartment reads one spike, as in
    # the flattened network; conversion and backends alike
    assert population_fanin(g, "mp") == 1 and population_fanin(g, "out") == 4
    g.validate()
    net = flatten_network(g)
    mp = next(p.name for p in net.populations if p.node == "mp")
    assert int(np.max(sum(np.diff(pr.matrix.indptr) for pr in net.into(mp)))) == 1
    assert violations(g, fanin=1) == _fanin_rule(g, 1) == [
        "layer 'out': fan-in (4) exceeds max (1); fix: --fanin 1"]
    with pytest.raises(UsageError, match="layer 'out': its inputs .* give it fan-in 4"):
        fanin_budgets(g, 3)

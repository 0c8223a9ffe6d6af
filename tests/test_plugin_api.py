"""The generic limit rules of the plugin API: every violation reported at once, each naming
layer, quantity, value, limit and the option that fixes it."""

from __future__ import annotations

import numpy as np
import pytest

from snncompile.errors import UsageError
from snncompile.ir import Conv2dNode, DenseNode, Graph, IFNode, InputNode
from snncompile.plugin import (LimitError, Limits, check_limits, get_backend,
                               parse_backend_options)


def _graph(weight_max: int = 100, threshold: int = 300) -> Graph:
    w1 = np.zeros((4, 2, 3, 3), np.int32)
    w1[:, :, :, :] = 1
    w1[0, 0, 0, 0] = weight_max
    w2 = np.ones((3, 4 * 6 * 6), np.int32)
    nodes = [
        InputNode(name="x", shape=(2, 6, 6), out_scale=np.array(0.1), mode="every_step"),
        Conv2dNode(name="c1", inputs=["x"], shape=(4, 6, 6), weight=w1.astype(np.float32), weight_int=w1,
                   bias_int=np.zeros(4, np.int64), padding=(1, 1, 1, 1)),
        IFNode(name="s1", inputs=["c1"], shape=(4, 6, 6), threshold=np.array([threshold]), reset="zero"),
        DenseNode(name="d", inputs=["s1"], shape=(3,), weight=w2.astype(np.float32), weight_int=w2,
                  bias_int=np.zeros(3, np.int64)),
    ]
    return Graph(nodes, ["d"], timesteps=4)


def test_fitting_graph_has_no_violations():
    g = _graph(weight_max=1, threshold=3)
    assert check_limits(g, Limits(weight_bits=8, fan_in=200, threshold_bits=8)) == []


def test_every_violation_is_reported_with_its_fix():
    g = _graph(weight_max=300, threshold=300)
    lim = Limits(weight_bits=8, fan_in=64, threshold_bits=8, reset_modes=("subtract",),
                 input_modes=("once",), neurons_per_core=16, cores=4)
    found = {(v.layer, v.quantity) for v in check_limits(g, lim)}
    assert found == {("c1", "weight bits"), ("d", "fan-in"), ("s1", "threshold"),
                     ("s1", "reset mode"), ("x", "input mode"), ("(all)", "cores needed")}
    err = LimitError("chip", check_limits(g, lim))
    text = str(err)
    assert "6 violations" in text and "fan-in (144) exceeds max (64); fix: --fanin 64" in text
    assert err.exit_code != 0


def test_unknown_backend_and_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="unknown target 'no-such-chip'"):
        get_backend("no-such-chip")
    assert parse_backend_options(["cores=4", "a = b"]) == {"cores": "4", "a": "b"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_backend_options(["cores"])

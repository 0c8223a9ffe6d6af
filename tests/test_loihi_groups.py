"""Lava's Conv model stores ``groups`` as int8: a depthwise convolution or a sum-pool relay
over 128 or more channels (every MobileNet, every global pool of 128+ channels before the
classifier) ran with groups wrapped negative and the outputs were wrong. Found by the
exporter sweep (a CIFAR MobileNet-V1 exported by torch, the headline command, `run`
not bit-exact)."""

from __future__ import annotations

import numpy as np

from snncompile.ir import AvgPool2dNode, Conv2dNode, FlattenNode, Graph, InputNode
from test_loihi import (_assert_bit_exact, _conv, _dense, _if, _lava_may_set_fork,  # noqa: F401
                        _validated, needs_lava)


@needs_lava
def test_128_groups_and_a_128_channel_pool_relay_are_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    c = 128
    w = rng.integers(-30, 31, (c, 1, 3, 3)).astype(np.int32)
    nodes = [InputNode(name="x", shape=(3, 2, 2), out_scale=np.array(1.0), mode="every_step", bits=5),
             _conv(rng, "c1", "x", 3, c),
             _if("s1", "c1", [60]),
             Conv2dNode(name="dw", inputs=["s1"], weight=w.astype(np.float32), weight_int=w,
                        bias_int=rng.integers(0, 20, c).astype(np.int64), padding=(1, 1, 1, 1),
                        groups=c, bias_mode="every_step"),
             _if("s2", "dw", [30]),
             AvgPool2dNode(name="gap", inputs=["s2"], kernel=(2, 2), stride=(2, 2)),
             FlattenNode(name="f", inputs=["gap"]),
             _dense(rng, "d", "f", c, 4)]
    g = _validated(Graph(nodes, ["d"], timesteps=6))
    x = rng.integers(0, 16, (2, 3, 2, 2)).astype(np.float64)
    _assert_bit_exact(g, x, tmp_path)

"""The conformance zoo: small integer networks built directly in the IR, one per feature a
backend must get right (layer types, reset and input modes, bias modes, edge cases).

Each case is deterministic (fixed seeds), small enough that the whole zoo runs in seconds,
and chosen so the feature matters: weights and inputs make neurons spike at different steps,
thresholds differ per channel, and the edge cases (saturation, zero weights, negative
currents) actually happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir import (AddNode, AffineNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                  FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode, ReshapeNode)


@dataclass
class Case:
    """One conformance network: the graph, integer inputs (N, *input shape) and T."""

    name: str
    graph: Graph
    x_int: np.ndarray
    timesteps: int
    about: str = ""


class _Builder:
    """Appends nodes with integer weights drawn from a seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[Node] = []

    def add(self, node: Node) -> str:
        self.nodes.append(node)
        return node.name

    def input(self, shape, mode="once", bits=6) -> str:
        return self.add(InputNode(name="x", shape=tuple(shape), mode=mode, bits=bits,
                                  out_scale=np.ones(1)))

    def _ints(self, shape, lo, hi, zero_frac=0.0) -> np.ndarray:
        w = self.rng.integers(lo, hi + 1, size=shape).astype(np.int32)
        if zero_frac:
            w[self.rng.random(shape) < zero_frac] = 0
        return w

    def dense(self, name, src, n_in, n_out, lo=-5, hi=6, bias=True, bias_mode="every_step",
              zero_frac=0.0) -> str:
        w = self._ints((n_out, n_in), lo, hi, zero_frac)
        b = self._ints((n_out,), -3, 3).astype(np.int64) if bias else None
        return self.add(DenseNode(name=name, inputs=[src], weight=w.astype(np.float32), weight_int=w,
                                  bias_int=b, bias_mode=bias_mode, out_scale=np.ones(1)))

    def conv(self, name, src, cin, cout, k=3, stride=(1, 1), padding=(0, 0, 0, 0), lo=-4, hi=5,
             bias=True, bias_mode="every_step", groups=1) -> str:
        w = self._ints((cout, cin // groups, k, k), lo, hi)
        b = self._ints((cout,), -3, 3).astype(np.int64) if bias else None
        return self.add(Conv2dNode(name=name, inputs=[src], weight=w.astype(np.float32), weight_int=w,
                                   bias_int=b, bias_mode=bias_mode, stride=tuple(stride),
                                   padding=tuple(padding), groups=groups, out_scale=np.ones(1)))

    def spiking(self, name, src, channels, lo=4, hi=20, reset="subtract", half=True,
                membrane_bits=24, per_channel_dims=2, spikes="binary") -> str:
        th = self.rng.integers(lo, hi + 1, size=(channels,) + (1,) * per_channel_dims).astype(np.int64)
        return self.add(IFNode(name=name, inputs=[src], threshold=th,
                               v_init=th // 2 if half else None, reset=reset,
                               membrane_bits=membrane_bits, out_scale=np.ones(1), spikes=spikes))

    def graph(self, outputs, timesteps) -> Graph:
        g = Graph(list(self.nodes), list(outputs), timesteps=timesteps)
        g.validate()
        return g

    def x(self, n, shape, lo=-5, hi=20) -> np.ndarray:
        return self.rng.integers(lo, hi + 1, size=(n,) + tuple(shape)).astype(np.float64)


def _dense_once() -> Case:
    b = _Builder(1)
    b.input((12,), "once")
    b.dense("d1", "x", 12, 10, bias_mode="first_step")
    b.spiking("s1", "d1", 10, lo=20, hi=60, per_channel_dims=0)
    b.dense("d2", "s1", 10, 8)
    b.spiking("s2", "d2", 8, lo=3, hi=9, per_channel_dims=0)
    b.dense("out", "s2", 8, 4)
    return Case("dense_subtract_once", b.graph(["out"], 8), b.x(6, (12,)), 8,
                "dense layers, reset by subtraction, input once, bias at t=0")


def _dense_zero_every() -> Case:
    b = _Builder(2)
    b.input((10,), "every_step")
    b.dense("d1", "x", 10, 12)
    b.spiking("s1", "d1", 12, lo=8, hi=30, reset="zero", half=False, per_channel_dims=0)
    b.dense("out", "s1", 12, 3, bias=False)
    return Case("dense_zero_every_step", b.graph(["out"], 7), b.x(5, (10,), -3, 8), 7,
                "reset to zero, input every step, v_init 0, output without bias")


def _conv_stride_pad() -> Case:
    b = _Builder(3)
    b.input((2, 7, 7), "once")
    b.conv("c1", "x", 2, 4, k=3, stride=(2, 2), padding=(1, 0, 1, 1), bias_mode="first_step")
    b.spiking("s1", "c1", 4, lo=20, hi=60)
    b.conv("c2", "s1", 4, 3, k=2, stride=(1, 2), padding=(0, 1, 1, 0))
    b.spiking("s2", "c2", 3, lo=3, hi=8)
    b.add(FlattenNode(name="f", inputs=["s2"]))
    n = int(np.prod(b.graph(["s2"], 1)["s2"].shape))
    b.dense("out", "f", n, 5)
    return Case("conv_stride_padding", b.graph(["out"], 8), b.x(4, (2, 7, 7), -2, 9), 8,
                "convolutions with stride and asymmetric padding, flatten, dense")


def _grouped_dilated() -> Case:
    b = _Builder(4)
    b.input((4, 6, 6), "every_step")
    b.add(Conv2dNode(name="c1", inputs=["x"], weight=np.ones((4, 2, 2, 2), np.float32),
                     weight_int=b._ints((4, 2, 2, 2), -2, 4), bias_int=None, groups=2,
                     dilation=(2, 2), padding=(1, 1, 1, 1), out_scale=np.ones(1)))
    b.spiking("s1", "c1", 4, lo=4, hi=12)
    b.add(FlattenNode(name="f", inputs=["s1"]))
    b.dense("out", "f", 4 * 6 * 6, 3)
    return Case("conv_groups_dilation", b.graph(["out"], 6), b.x(3, (4, 6, 6), -2, 5), 6,
                "grouped, dilated convolution")


def _avgpool() -> Case:
    b = _Builder(5)
    b.input((1, 8, 8), "once")
    b.conv("c1", "x", 1, 3, padding=(1, 1, 1, 1), bias_mode="first_step")
    b.spiking("s1", "c1", 3, lo=15, hi=40)
    b.add(AvgPool2dNode(name="p1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)))
    b.conv("c2", "p1", 3, 4, padding=(1, 1, 1, 1))
    b.spiking("s2", "c2", 4, lo=4, hi=10)
    b.add(AvgPool2dNode(name="p2", inputs=["s2"], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)))
    b.add(FlattenNode(name="f", inputs=["p2"]))
    b.dense("out", "f", 4 * 2 * 2, 5)
    return Case("avgpool_sum", b.graph(["out"], 10), b.x(4, (1, 8, 8), 0, 20), 10,
                "sum pools (non-overlapping, and overlapping with padding) into conv and dense")


def _maxpool() -> Case:
    b = _Builder(6)
    b.input((2, 8, 8), "once")
    b.conv("c1", "x", 2, 3, padding=(1, 1, 1, 1), bias_mode="first_step")
    b.spiking("s1", "c1", 3, lo=150, hi=400)
    b.add(MaxPool2dNode(name="m1", inputs=["s1"], kernel=(2, 2), stride=(2, 2)))
    b.conv("c2", "m1", 3, 4, padding=(1, 1, 1, 1))
    b.spiking("s2", "c2", 4, lo=12, hi=30)
    b.add(MaxPool2dNode(name="m2", inputs=["s2"], kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1)))
    b.add(FlattenNode(name="f", inputs=["m2"]))
    b.dense("out", "f", 4 * 2 * 2, 5)
    return Case("maxpool_counts", b.graph(["out"], 10), b.x(4, (2, 8, 8), -3, 20), 10,
                "spike-count max pools (non-overlapping, and overlapping with padding)")


def _residual() -> Case:
    b = _Builder(7)
    b.input((3, 5, 5), "once")
    b.conv("c1", "x", 3, 4, padding=(1, 1, 1, 1), bias_mode="first_step")
    b.spiking("s1", "c1", 4, lo=150, hi=300)
    b.conv("c2", "s1", 4, 4, padding=(1, 1, 1, 1))
    b.spiking("s2", "c2", 4, lo=8, hi=20)
    b.conv("c3", "s2", 4, 4, padding=(1, 1, 1, 1))
    b.add(AffineNode(name="skip", inputs=["s1"], weight=np.ones(4, np.float32),
                     weight_int=np.array([3, 1, 0, 2], np.int32), bias_int=np.array([0, 1, -1, 0], np.int64),
                     out_scale=np.ones(1)))
    b.add(AddNode(name="a", inputs=["c3", "skip"]))
    b.spiking("s3", "a", 4, lo=8, hi=20)
    b.add(AddNode(name="a2", inputs=["s3", "s2"]))  # identity residual of spikes
    b.add(FlattenNode(name="f", inputs=["a2"]))
    b.dense("out", "f", 4 * 5 * 5, 4)
    return Case("residual_add", b.graph(["out"], 8), b.x(3, (3, 5, 5), -2, 12), 8,
                "residual adds: conv + affine skip, and spikes + spikes")


def _concat() -> Case:
    b = _Builder(8)
    b.input((2, 6, 6), "every_step")
    b.conv("c1", "x", 2, 3, padding=(1, 1, 1, 1))
    b.spiking("s1", "c1", 3, lo=5, hi=15)
    b.conv("c2", "x", 2, 2, k=1)
    b.spiking("s2", "c2", 2, lo=5, hi=15, reset="zero")
    b.add(ConcatNode(name="cat", inputs=["s1", "s2"], axis=0))
    b.conv("c3", "cat", 5, 3, stride=(2, 2))
    b.spiking("s3", "c3", 3, lo=2, hi=6)
    b.add(FlattenNode(name="f1", inputs=["s3"]))
    b.add(FlattenNode(name="f2", inputs=["s2"]))
    b.add(ConcatNode(name="cat2", inputs=["f1", "f2"], axis=0))
    b.dense("out", "cat2", 3 * 2 * 2 + 2 * 6 * 6, 4)
    return Case("concat", b.graph(["out"], 6), b.x(3, (2, 6, 6), -2, 6), 6,
                "channel concat into a conv, flat concat into a dense, mixed reset modes")


def _reshape_pad() -> Case:
    b = _Builder(9)
    b.input((16,), "every_step")
    b.dense("d1", "x", 16, 18)
    b.spiking("s1", "d1", 18, lo=5, hi=15, per_channel_dims=0)
    b.add(ReshapeNode(name="r", inputs=["s1"], target=(2, 3, 3)))
    b.add(PadNode(name="p", inputs=["r"], pads=(0, 1, 0, 0, 0, 2)))
    b.conv("c1", "p", 2, 3, k=2)
    b.spiking("s2", "c1", 3, lo=2, hi=6)
    b.add(FlattenNode(name="f", inputs=["s2"]))
    b.dense("out", "f", 3 * 3 * 4, 3)
    return Case("reshape_pad", b.graph(["out"], 6), b.x(3, (16,), -3, 8), 6,
                "reshape to an image, zero pad, conv")


def _zero_weights() -> Case:
    b = _Builder(10)
    b.input((8,), "once")
    b.dense("d1", "x", 8, 10, zero_frac=0.6, bias=False)
    d1 = b.nodes[-1]
    d1.weight_int[2:4] = 0  # neurons with no synapses at all: never spike (v_init below threshold)
    b.spiking("s1", "d1", 10, lo=10, hi=30, per_channel_dims=0)
    w = np.zeros((3, 10), np.int32)
    b.add(DenseNode(name="out", inputs=["s1"], weight=w.astype(np.float32), weight_int=w,
                    bias_int=np.array([1, 0, -2], np.int64), out_scale=np.ones(1)))
    x = b.x(4, (8,), -4, 10)
    x[0] = 0  # an all-zero sample
    return Case("zero_weights", b.graph(["out"], 6), x, 6,
                "sparse and all-zero weights, neurons without synapses, a zero input, zero output layer")


def _saturation() -> Case:
    b = _Builder(11)
    b.input((6,), "once", bits=8)
    w = np.array([[120, 120, 100, 90, 127, 110], [-127, -120, -100, -90, -127, -110],
                  [60, -60, 60, -60, 60, -60], [127, 0, 0, 0, 0, 0]], np.int32)
    b.add(DenseNode(name="d1", inputs=["x"], weight=w.astype(np.float32), weight_int=w,
                    bias_int=None, out_scale=np.ones(1)))
    b.add(IFNode(name="s1", inputs=["d1"], threshold=np.array([900, 50, 300, 2000], np.int64),
                 v_init=None, reset="subtract", membrane_bits=12, out_scale=np.ones(1)))
    b.dense("out", "s1", 4, 2)
    x = np.array([[100, 110, 120, 90, 127, 80], [-50, 20, 127, 127, 0, 3], [5, 5, 5, 5, 5, 5]], np.float64)
    return Case("membrane_saturation", b.graph(["out"], 8), x, 8,
                "12-bit membranes saturate high and low (input once, large charge)")


def _bias_modes() -> Case:
    b = _Builder(12)
    b.input((3, 4, 4), "every_step")
    b.conv("c1", "x", 3, 4, k=3, padding=(1, 1, 1, 1), bias_mode="every_step", lo=-2, hi=3)
    b.nodes[-1].bias_int = np.array([5, -4, 9, 0], np.int64)
    b.spiking("s1", "c1", 4, lo=6, hi=14)
    b.conv("c2", "s1", 4, 2, k=2, stride=(2, 2), bias_mode="first_step")
    b.nodes[-1].bias_int = np.array([7, -6], np.int64)
    b.spiking("s2", "c2", 2, lo=3, hi=6, reset="zero")
    b.add(FlattenNode(name="f", inputs=["s2"]))
    b.dense("out", "f", 2 * 2 * 2, 3, bias_mode="first_step")
    return Case("bias_modes", b.graph(["out"], 7), b.x(3, (3, 4, 4), -2, 4), 7,
                "bias every step and bias T*b at t=0, on conv and on the output")


def _two_outputs() -> Case:
    b = _Builder(13)
    b.input((6,), "once")
    b.dense("d1", "x", 6, 8, bias_mode="first_step")
    b.spiking("s1", "d1", 8, lo=10, hi=40, per_channel_dims=0)
    b.dense("head_a", "s1", 8, 3)
    b.dense("head_b", "s1", 8, 2, bias=False)
    return Case("two_outputs", b.graph(["head_a", "head_b", "s1"], 9), b.x(4, (6,), -3, 12), 9,
                "several outputs, one of them a spiking layer (its spike counts accumulate)")


def _signed_spikes() -> Case:
    b = _Builder(14)
    b.input((2, 4, 4), "once")
    b.conv("c1", "x", 2, 4, padding=(1, 1, 1, 1), bias_mode="first_step")
    b.spiking("s1", "c1", 4, lo=20, hi=60, spikes="signed")
    b.conv("c2", "s1", 4, 4, padding=(1, 1, 1, 1), lo=-9, hi=9)
    b.spiking("s2", "c2", 4, lo=6, hi=14, spikes="signed")
    b.add(AddNode(name="a", inputs=["s2", "s1"]))  # -1 spikes through a sum of spikes
    b.add(FlattenNode(name="f", inputs=["a"]))
    b.dense("d", "f", 4 * 4 * 4, 10, lo=-6, hi=6)
    b.spiking("s3", "d", 10, lo=5, hi=15, per_channel_dims=0, spikes="signed")
    b.dense("out", "s3", 10, 3)
    return Case("signed_spikes", b.graph(["out"], 8), b.x(4, (2, 4, 4), -3, 12), 8,
                "signed spikes (-1 where late inhibition takes a spike back) into a conv, a sum "
                "of spikes and a dense layer")


CASES: dict[str, Callable[[], Case]] = {
    "dense_subtract_once": _dense_once,
    "dense_zero_every_step": _dense_zero_every,
    "conv_stride_padding": _conv_stride_pad,
    "conv_groups_dilation": _grouped_dilated,
    "avgpool_sum": _avgpool,
    "maxpool_counts": _maxpool,
    "residual_add": _residual,
    "concat": _concat,
    "reshape_pad": _reshape_pad,
    "zero_weights": _zero_weights,
    "membrane_saturation": _saturation,
    "bias_modes": _bias_modes,
    "two_outputs": _two_outputs,
    "signed_spikes": _signed_spikes,
}


def zoo_names() -> list[str]:
    """Names of every conformance case (for ``pytest.mark.parametrize``)."""
    return list(CASES)


def zoo_case(name: str) -> Case:
    """Build one case (fresh objects every call)."""
    return CASES[name]()

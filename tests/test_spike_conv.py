"""Convolutions of spike codes on the int8 kernels (snncompile/sim/kernels/spike_conv.py) are the float32
convolutions bit for bit, and the simulator gives the same results whichever it runs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snncompile.sim.kernels import spike_conv
from snncompile.ir import DenseNode, FlattenNode, Graph, InputNode
from snncompile.sim.evaluator import SpikeTrains, run_window

from test_simulator_orders import ONE, _conv, _if

CONFIGS = list(itertools.product([False, True], [(1, 1), (2, 2), (2, 1)], [(0, 0), (1, 1), (2, 1)], [1, 2],
                                 [(1, 1), (2, 2)]))


@pytest.mark.parametrize("signed,stride,padding,groups,dilation", CONFIGS)
def test_int8_convolution_of_codes_is_the_float_one(signed, stride, padding, groups, dilation):
    g = torch.Generator().manual_seed(hash((signed, stride, padding, groups, dilation)) % 2 ** 31)
    s = torch.randint(-1 if signed else 0, 2, (5, 4, 11, 9), generator=g).float()
    s = s.contiguous(memory_format=torch.channels_last)
    w = torch.randint(-127, 128, (6, 4 // groups, 3, 3), generator=g).float()
    w[0] = 127  # the extremes of the int8 range, all at once
    w[1] = -127
    packed = spike_conv.prepack(w.numpy().astype(np.int64), signed, stride, padding, dilation, groups)
    # with an integer bias added in the kernel, up to the float32-exact range
    for bias in (None, torch.randint(-2 ** 23 + 2000, 2 ** 23 - 2000, (6,), generator=g).float()):
        want = F.conv2d(s, w, bias, stride, padding, dilation, groups)
        got = spike_conv.conv(spike_conv.encode(s, signed), packed, signed, stride, padding, dilation, groups, 6,
                              bias=bias)
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, want)


def test_codes_round_trip_in_their_layout():
    s = torch.tensor([[-1.0, 0.0, 1.0]]).reshape(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    c = spike_conv.encode(s, signed=True)
    assert c.dtype == torch.uint8 and c.flatten().tolist() == [0, 1, 2]
    assert c.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(spike_conv.decode(c, signed=True), s)
    b = torch.tensor([0.0, 1.0, 1.0])
    assert spike_conv.encode(b, signed=False).tolist() == [0, 1, 1]
    assert torch.equal(spike_conv.decode(spike_conv.encode(b, False), False), b)
    assert spike_conv.fits(np.array([127, -127, 0])) and not spike_conv.fits(np.array([128]))
    assert spike_conv.available("cpu") and not spike_conv.available("cuda")


def _graph(rng, spikes: str, big: bool, bias_mode: str = "every_step") -> Graph:
    """x -> conv -> IF h0 (handed over) -> conv c1 (stride 2, symmetric padding; weights
    beyond int8 where ``big``) -> IF -> conv c2 (uneven padding: float path) -> IF -> dense."""
    h0 = _if(rng, "h0", "c0", (4, 8, 8))
    c1 = _conv(rng, "c1", "h0", 4, 5, stride=(2, 2), lo=-300 if big else -127, hi=301 if big else 128,
               bias_mode=bias_mode)
    h1 = _if(rng, "h1", "c1", (5, 4, 4))
    c2 = _conv(rng, "c2", "h0", 4, 3, padding=(1, 0, 1, 1))
    h2 = _if(rng, "h2", "c2", (3, 8, 7))
    for h in (h0, h1, h2):
        h.spikes = spikes
    nodes = [InputNode(name="x", shape=(2, 8, 8), mode="every_step", out_scale=ONE),
             _conv(rng, "c0", "x", 2, 4), h0, c1, h1, c2, h2]
    w = rng.integers(-5, 6, (3, 5 * 4 * 4))
    nodes.append(FlattenNode(name="f", inputs=["h1"], out_scale=ONE))
    nodes.append(DenseNode(name="out", inputs=["f"], weight=w.astype(np.float32), weight_int=w, out_scale=ONE))
    g = Graph(nodes=nodes, outputs=["out", "h2"], timesteps=6)
    g.validate()
    return g


@pytest.mark.parametrize("spikes", ["binary", "signed"])
@pytest.mark.parametrize("big,bias_mode", [(False, "every_step"), (False, "first_step"), (True, "every_step")])
def test_simulator_results_do_not_depend_on_the_convolutions_kernels(spikes, big, bias_mode, monkeypatch):
    """Handed-over trains as codes (int8 kernels where the weights fit and the padding is
    the convolution's own) and as float spikes (float32 kernels), with the int8 path on and
    off: the same counts and accumulators, to the bit; and the int8 path is taken exactly
    where it applies."""
    rng = np.random.default_rng(7)
    g = _graph(rng, spikes, big, bias_mode)
    T, n = 6, 5
    xq = torch.as_tensor(rng.integers(0, 20, (n, 2, 8, 8)), dtype=torch.float32)
    # any trains will do (the simulator takes handed-over trains as they are), with a silent step
    trains = torch.as_tensor(rng.integers(-1 if spikes == "signed" else 0, 2, (T, n, 4, 8, 8)), dtype=torch.float32)
    trains[2] = 0
    trains = trains.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # channels-last, as kept
    active = trains.reshape(T, -1).abs().amax(dim=1) > 0
    counts = trains.sum(dim=0)
    as_floats = SpikeTrains(trains, counts, active)
    as_codes = SpikeTrains(None, counts, active, codes=spike_conv.encode(trains, spikes == "signed"))
    calls = []
    real = spike_conv.conv
    monkeypatch.setattr(spike_conv, "conv", lambda *a, **k: calls.append((a[0].shape, k.get("bias") is not None))
                        or real(*a, **k))
    results = {}
    for int8 in (True, False):
        for name, given in (("codes", as_codes), ("floats", as_floats)):
            results[(int8, name)] = run_window(g, xq, T, given={"h0": given}, int8_conv=int8)
    # c1 from codes, int8 on, weights fit; its bias added in the kernel where it comes every step
    assert calls == ([] if big else [(torch.Size([T * n, 4, 8, 8]), bias_mode == "every_step")])
    want = results[(False, "floats")]
    for key, r in results.items():
        for k in ("h1", "h2"):
            assert torch.equal(r.counts[k], want.counts[k]), (key, k)
        for k in ("out", "h2"):
            assert torch.equal(r.acc[k], want.acc[k]), (key, k)
    assert float(want.acc["out"].abs().sum()) > 0

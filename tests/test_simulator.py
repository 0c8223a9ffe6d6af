"""The reference simulator against an independent, plain-Python statement of the semantics."""

import numpy as np
import pytest

from snncompile.ir import (AvgPool2dNode, Conv2dNode, DenseNode, FlattenNode, Graph, IFNode,
                           InputNode, MaxPool2dNode)
from snncompile.sim.simulator import quantize_input, simulate


def dense_graph(w1, b1, th1, w2, b2, mode="once", bias_mode="first_step", reset="subtract",
                v_init=None, membrane_bits=32, input_scale=1.0, input_bits=8, spikes="binary"):
    """input -> dense -> IF -> dense(output), all integers given directly."""
    n_in = w1.shape[1]
    nodes = [
        InputNode(name="x", shape=(n_in,), mode=mode, bits=input_bits,
                  out_scale=np.full((1,), input_scale)),
        DenseNode(name="d1", inputs=["x"], weight=w1.astype(np.float32), weight_int=w1,
                  bias=b1.astype(np.float32), bias_int=b1, bias_mode=bias_mode, out_scale=np.ones(1)),
        IFNode(name="h", inputs=["d1"], threshold=np.asarray(th1), reset=reset,
               v_init=None if v_init is None else np.asarray(v_init), membrane_bits=membrane_bits,
               out_scale=np.ones(1), spikes=spikes),
        DenseNode(name="out", inputs=["h"], weight=w2.astype(np.float32), weight_int=w2,
                  bias=b2.astype(np.float32), bias_int=b2, out_scale=np.ones(1)),
    ]
    g = Graph(nodes, ["out"], timesteps=8)
    g.validate()
    return g


def oracle(xq, w1, b1, th, w2, b2, T, mode, bias_mode, reset, v_init, membrane_bits, spike_mode="binary"):
    """Neuron-by-neuron, step-by-step integer statement of docs/semantics.md."""
    n_hidden = w1.shape[0]
    v = [int(v_init[i]) if v_init is not None else 0 for i in range(n_hidden)]
    net = [0] * n_hidden
    lim = 2 ** (membrane_bits - 1) - 1
    spikes, acc = [], [0] * w2.shape[0]
    for t in range(T):
        inp = [int(a) * (T if t == 0 else 0) if mode == "once" else int(a) for a in xq]
        s = []
        for i in range(n_hidden):
            cur = sum(int(w1[i, j]) * inp[j] for j in range(len(inp)))
            cur += int(b1[i]) * (T if (bias_mode == "first_step" and t == 0) else (1 if bias_mode == "every_step" else 0))
            v[i] = max(-lim, min(lim, v[i] + cur))
            th_i = int(np.broadcast_to(th, (n_hidden,))[i])
            fire = v[i] >= th_i
            if fire:
                v[i] = v[i] - th_i if reset == "subtract" else 0
                s.append(1)
            elif spike_mode == "signed" and v[i] < 0 and net[i] > 0:  # takes a spike back
                v[i] += th_i
                s.append(-1)
            else:
                s.append(0)
            net[i] += s[-1]
        spikes.append(s)
        for o in range(w2.shape[0]):
            acc[o] += sum(int(w2[o, i]) * s[i] for i in range(n_hidden)) + int(b2[o])
    return np.array(spikes), np.array(acc)


@pytest.mark.parametrize("mode,bias_mode,reset,half,spikes", [
    ("once", "first_step", "subtract", False, "binary"),
    ("once", "first_step", "subtract", True, "binary"),
    ("every_step", "every_step", "subtract", False, "binary"),
    ("every_step", "every_step", "zero", True, "binary"),
    ("once", "every_step", "subtract", True, "signed"),  # charge first, a per-step bias after
    ("every_step", "every_step", "subtract", False, "signed"),
])
def test_matches_oracle(mode, bias_mode, reset, half, spikes):
    rng = np.random.default_rng(1)
    w1 = rng.integers(-20, 21, (6, 5))
    b1 = rng.integers(-10, 11, 6)
    th = rng.integers(5, 40, 6)
    w2 = rng.integers(-5, 6, (3, 6))
    b2 = rng.integers(-3, 4, 3)
    if spikes == "signed" and mode == "once":
        b1 = -np.abs(b1) - 5  # a leak-like bias after the charge: some spikes are taken back
    v_init = th // 2 if half else None
    g = dense_graph(w1, b1, th, w2, b2, mode, bias_mode, reset, v_init, spikes=spikes)
    x = rng.integers(-3, 8, (4, 5)).astype(np.float32)
    T = 8
    res = simulate(g, x, timesteps=T, record_spikes=True)
    if spikes == "signed" and mode == "once":
        assert (res.spikes["h"] < 0).any()  # the case takes spikes back
    for k in range(len(x)):
        sp, acc = oracle(x[k], w1, b1, th, w2, b2, T, mode, bias_mode, reset, v_init, 32, spikes)
        np.testing.assert_array_equal(res.spikes["h"][:, k], sp)
        np.testing.assert_array_equal(res.output_acc["out"][k], acc)
        np.testing.assert_array_equal(res.spike_counts["h"][k], sp.sum(0))


def test_saturation_is_counted_and_applied():
    w1 = np.array([[1000]])
    g = dense_graph(w1, np.zeros(1, np.int64), np.array([10**6]), np.ones((1, 1), np.int64),
                    np.zeros(1, np.int64), mode="every_step", bias_mode="every_step", membrane_bits=12)
    res = simulate(g, np.array([[100.0]], np.float32), timesteps=3, record_spikes=True)
    sp, acc = oracle([100], w1, [0], np.array([10**6]), np.ones((1, 1)), [0], 3, "every_step",
                     "every_step", "subtract", None, 12)
    assert res.saturations["h"] == 3
    np.testing.assert_array_equal(res.spikes["h"][:, 0], sp)


def test_first_layer_count_is_exact_floor_and_round():
    """With all charge at t = 0, an IF layer's count is clamp(floor(z/theta), 0, T); with the
    membrane starting at theta//2 it is the rounded value instead."""
    T = 16
    theta = 10
    z = np.arange(-20, 200, 3)
    for v_init, expect in ((None, np.clip(np.floor(T * z / theta), 0, T)),
                           (theta // 2, np.clip(np.floor((T * z + theta // 2) / theta), 0, T))):
        w1 = np.ones((1, 1), np.int64)
        g = dense_graph(w1, np.zeros(1, np.int64), np.array([theta]), w1, np.zeros(1, np.int64),
                        v_init=None if v_init is None else np.array([v_init]), input_bits=12)
        res = simulate(g, z.reshape(-1, 1).astype(np.float32), timesteps=T)
        np.testing.assert_array_equal(res.spike_counts["h"][:, 0], expect)


def test_large_values_use_exact_arithmetic():
    """Partial sums beyond 2^24 must not lose precision (float64 path)."""
    rng = np.random.default_rng(3)
    w1 = rng.integers(-2**20, 2**20, (4, 64))
    th = np.full(4, 2**26)
    g = dense_graph(w1, np.zeros(4, np.int64), th, np.eye(4, dtype=np.int64), np.zeros(4, np.int64),
                    mode="every_step", bias_mode="every_step", membrane_bits=50)
    x = rng.integers(-127, 128, (3, 64)).astype(np.float32)
    res = simulate(g, x, timesteps=4, record_spikes=True)
    for k in range(3):
        sp, _ = oracle(x[k], w1, np.zeros(4), th, np.eye(4), np.zeros(4), 4, "every_step",
                       "every_step", "subtract", None, 50)
        np.testing.assert_array_equal(res.spikes["h"][:, k], sp)


def test_batches_are_independent():
    rng = np.random.default_rng(4)
    w1, b1 = rng.integers(-9, 10, (7, 5)), rng.integers(-5, 6, 7)
    g = dense_graph(w1, b1, np.full(7, 12), rng.integers(-3, 4, (2, 7)), np.zeros(2, np.int64))
    x = rng.integers(0, 6, (10, 5)).astype(np.float32)
    a = simulate(g, x, timesteps=6, batch_size=3)
    b = simulate(g, x, timesteps=6, batch_size=10)
    np.testing.assert_array_equal(a.output_acc["out"], b.output_acc["out"])
    np.testing.assert_array_equal(a.synops, b.synops)


def test_synops_are_spikes_times_fanout():
    rng = np.random.default_rng(5)
    w2 = rng.integers(-3, 4, (4, 6))
    w2[:, 2] = 0  # neuron 2 has no outgoing synapses
    g = dense_graph(rng.integers(0, 9, (6, 3)), np.zeros(6, np.int64), np.full(6, 7), w2,
                    np.zeros(4, np.int64))
    x = rng.integers(0, 6, (5, 3)).astype(np.float32)
    res = simulate(g, x, timesteps=8)
    fan = (w2 != 0).sum(0)
    np.testing.assert_array_equal(res.synops, res.spike_counts["h"] @ fan)


def test_input_quantization_clips_and_rounds():
    g = dense_graph(np.ones((1, 2), np.int64), np.zeros(1, np.int64), np.array([1]),
                    np.ones((1, 1), np.int64), np.zeros(1, np.int64), input_scale=0.5, input_bits=4)
    q = quantize_input(g, np.array([[0.74, 100.0], [-0.26, -100.0]]))
    np.testing.assert_array_equal(q, [[1, 7], [-1, -7]])


def image_graph():
    """input -> conv -> IF -> maxpool -> avgpool(sum) -> flatten -> dense."""
    rng = np.random.default_rng(6)
    w = rng.integers(-6, 7, (3, 1, 3, 3))
    nodes = [
        InputNode(name="x", shape=(1, 6, 6), mode="every_step", out_scale=np.ones((1, 1, 1))),
        Conv2dNode(name="c", inputs=["x"], weight=w.astype(np.float32), weight_int=w,
                   bias_int=np.array([1, 0, -1]), padding=(1, 1, 1, 1), out_scale=np.ones((1, 1, 1))),
        IFNode(name="h", inputs=["c"], threshold=np.array([[[9]], [[5]], [[7]]]), out_scale=np.ones((1, 1, 1))),
        MaxPool2dNode(name="m", inputs=["h"], kernel=(2, 2), stride=(2, 2), out_scale=np.ones((1, 1, 1))),
        AvgPool2dNode(name="p", inputs=["m"], kernel=(3, 3), stride=(3, 3), out_scale=np.ones((1, 1, 1))),
        FlattenNode(name="f", inputs=["p"], out_scale=np.ones(1)),
        DenseNode(name="o", inputs=["f"], weight=np.eye(3, dtype=np.float32), weight_int=np.eye(3, dtype=np.int64),
                  out_scale=np.ones(1)),
    ]
    g = Graph(nodes, ["o"], timesteps=10)
    g.validate()
    return g


def test_maxpool_count_is_max_of_input_counts_and_sum_pool_sums():
    g = image_graph()
    x = np.random.default_rng(7).integers(0, 5, (4, 1, 6, 6)).astype(np.float32)
    res = simulate(g, x, record_spikes=True)
    h = res.spike_counts["h"]
    expect_m = h.reshape(4, 3, 3, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(res.spike_counts["m"], expect_m)
    assert res.spikes["m"].max() <= 1  # still at most one spike per step
    np.testing.assert_array_equal(res.output_acc["o"], expect_m.reshape(4, 3, 9).sum(2))


def test_a_signed_neuron_takes_back_a_spike_fired_too_early():
    """Charge 8 at t = 0, then -3 every step (threshold 4, membrane from 2): the binary
    neuron fires once at t = 0 and keeps it; the signed one fires at t = 0, falls below 0 at
    t = 2 and emits -1, ending at a net count of 0 = clamp(floor((2 + 8 - 12) / 4), 0, T)."""
    one = np.ones((1, 1), np.int64)
    for spikes, train in (("binary", [1, 0, 0, 0]), ("signed", [1, 0, -1, 0])):
        g = dense_graph(one, np.array([-3]), np.array([4]), one, np.zeros(1, np.int64),
                        mode="once", bias_mode="every_step", v_init=np.array([2]), spikes=spikes)
        res = simulate(g, np.array([[2.0]], np.float32), timesteps=4, record_spikes=True)
        np.testing.assert_array_equal(res.spikes["h"][:, 0, 0], train)
        assert res.spike_counts["h"][0, 0] == sum(train)
        assert res.synops[0] == sum(abs(s) for s in train)  # -1 is an event as well


def test_signed_spikes_need_reset_by_subtraction():
    from snncompile.errors import ModelError

    one = np.ones((1, 1), np.int64)
    with pytest.raises(ModelError, match="signed spikes need reset by subtraction"):
        dense_graph(one, np.zeros(1, np.int64), np.array([4]), one, np.zeros(1, np.int64),
                    reset="zero", spikes="signed")


def test_window_magnitudes_are_exact_in_float32_and_beyond():
    """The SynOps of signed spikes sum |value| over the window: in float32 while that is
    exact, in float64 where the total leaves float32's integers."""
    import torch

    from snncompile.sim.values import Value

    rng = np.random.default_rng(11)
    spikes = torch.as_tensor(rng.integers(-1, 2, (8, 3, 5)), dtype=torch.float32)
    got = Value(spikes, "full").magnitude_total(8)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), np.abs(spikes.numpy()).sum(0))
    big = torch.full((3, 1, 2), float(2 ** 23 + 1), dtype=torch.float32)  # sums to 3 * 2^23 + 3
    big[1, 0, 1] = -big[1, 0, 1]
    assert Value(big, "full").magnitude_total(3).tolist() == [[3 * 2 ** 23 + 3] * 2]

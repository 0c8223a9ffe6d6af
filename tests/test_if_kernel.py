"""The one-pass IF kernel on its own: against a plain loop over steps, for both kernels
(reset by subtraction without saturation; the general one), the three input forms, and
several blocks with a short last one."""

from __future__ import annotations

import numpy as np
import pytest

from snncompile.sim.kernels import if_kernel as k


def _reference(cur, mode, T, th, v0, subtract, limit):
    v = v0.astype(np.float64).copy()
    spikes = np.zeros((T, th.size), np.float32)
    sat = 0
    for t in range(T):
        if mode == k.FULL:
            v += cur[t]
        elif mode == k.EVERY_STEP or t == 0:
            v += cur[0]
        if limit is not None:
            sat += int((np.abs(v) > limit).sum())
            v = np.clip(v, -limit, limit)
        s = v >= th
        spikes[t] = s
        v = np.where(s, v - th if subtract else 0.0, v)
    return spikes, sat


@pytest.mark.parametrize("mode", [k.FULL, k.EVERY_STEP, k.FIRST_STEP])
@pytest.mark.parametrize("subtract,limit", [(True, None), (False, None), (True, 40.0)])
def test_kernel_matches_a_plain_loop(mode, subtract, limit):
    rng = np.random.default_rng(mode * 10 + int(subtract))
    T, m = 7, 3 * k.BLOCK + 5  # several blocks, the last one short
    cur = rng.integers(-12, 20, (T if mode == k.FULL else 1, m)).astype(np.float32)
    if mode == k.FIRST_STEP:
        cur *= T
    th = rng.integers(5, 30, m).astype(np.float32)
    v0 = np.floor(th / 2)
    res = k.integrate_and_fire(cur, mode, T, th, v0, subtract, limit)
    spikes, sat = _reference(cur, mode, T, th, v0, subtract, limit)
    np.testing.assert_array_equal(res.spikes, spikes)
    np.testing.assert_array_equal(res.counts, spikes.sum(axis=0))
    np.testing.assert_array_equal(res.active, spikes.any(axis=1))
    assert res.saturations == sat
    assert spikes.any() and not spikes.all()
    if limit is not None:
        assert sat > 0
    only = k.integrate_and_fire(cur, mode, T, th, v0, subtract, limit, keep_spikes=False)
    assert only.spikes is None
    np.testing.assert_array_equal(only.counts, spikes.sum(axis=0))
    assert only.saturations == sat



@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("subtract,limit", [(True, None), (True, 40.0)])
def test_kernel_writes_codes_that_are_its_spikes(signed, subtract, limit):
    """With ``codes`` each kernel writes uint8 value + zero point (1 for signed spikes):
    the same spikes, counts, silent steps and saturations as its float32 spikes."""
    rng = np.random.default_rng(int(signed) * 2 + int(limit is None))
    T, m = 6, k.BLOCK + 9
    cur = rng.integers(-15, 20, (T, m)).astype(np.float32)
    cur[2] = 0.0
    th = rng.integers(5, 30, m).astype(np.float32)
    v0 = np.floor(th / 2)
    floats = k.integrate_and_fire(cur, k.FULL, T, th, v0, subtract, limit, signed=signed)
    codes = k.integrate_and_fire(cur, k.FULL, T, th, v0, subtract, limit, signed=signed, codes=True)
    assert codes.spikes.dtype == np.uint8 and floats.spikes.dtype == np.float32
    np.testing.assert_array_equal(codes.spikes.astype(np.float32) - (1 if signed else 0), floats.spikes)
    np.testing.assert_array_equal(codes.counts, floats.counts)
    np.testing.assert_array_equal(codes.active, floats.active)
    assert codes.saturations == floats.saturations
    assert (floats.spikes < 0).any() == signed and floats.spikes.any()


@pytest.mark.parametrize("mode", [k.FULL, k.EVERY_STEP, k.FIRST_STEP])
@pytest.mark.parametrize("subtract,limit,signed", [(True, None, False), (True, None, True),
                                                   (False, None, False), (True, 40.0, True)])
@pytest.mark.parametrize("period", [7, k.BLOCK, 2 * k.BLOCK + 3])
def test_thresholds_of_one_sample_are_repeated_for_each(mode, subtract, limit, signed, period):
    """Thresholds and initial membranes of one sample's P neurons (blocks never cross a
    sample) give what the same values written out for every sample of the batch give."""
    rng = np.random.default_rng(period + mode)
    T, samples = 5, 3
    m = samples * period
    cur = rng.integers(-12, 20, (T if mode == k.FULL else 1, m)).astype(np.float32)
    if mode == k.FIRST_STEP:
        cur *= T
    th = rng.integers(5, 30, period).astype(np.float32)
    v0 = np.floor(th / 2)
    full = k.integrate_and_fire(cur, mode, T, np.tile(th, samples), np.tile(v0, samples), subtract, limit,
                                signed=signed and subtract)
    tiled = k.integrate_and_fire(cur, mode, T, th, v0, subtract, limit, signed=signed and subtract)
    np.testing.assert_array_equal(tiled.spikes, full.spikes)
    np.testing.assert_array_equal(tiled.counts, full.counts)
    np.testing.assert_array_equal(tiled.active, full.active)
    assert tiled.saturations == full.saturations and full.spikes.any()
    only = k.integrate_and_fire(cur, mode, T, th, v0, subtract, limit, keep_spikes=False, signed=signed and subtract)
    np.testing.assert_array_equal(only.counts, full.counts)
    with pytest.raises(ValueError, match="do not tile"):
        k.integrate_and_fire(cur, mode, T, th[:-1], v0[:-1], subtract, limit)


@pytest.mark.parametrize("dtype,top", [(np.float32, 2 ** 23), (np.float64, 2 ** 40)])
def test_charge_at_the_first_step_counts_by_exact_quotients(dtype, top):
    """Counts of neurons charged once (by 1 / theta, corrected onto the exact quotient):
    integer floor division capped at [0, T], at exact multiples of the threshold, one below
    them, negative charge, and quotients near the type's exact range."""
    rng = np.random.default_rng(int(top % 97))
    T = 2 ** 20  # so the quotients themselves are seen, not just the cap
    P, samples = 4099, 3
    th = rng.integers(1, 5000, P).astype(dtype)
    th[:3] = (1, 3, top // 7)
    v0 = np.floor(th / 2)
    q = np.floor(rng.random((samples, P)) * (top // th.astype(np.int64) - 1)).astype(np.int64) - 2
    x = q * th.astype(np.int64) + rng.integers(-1, 2, (samples, P))  # at, below and above multiples
    x[0, :3] = (top - 1, top - 2, top - 3)
    cur = (x - v0.astype(np.int64)).reshape(1, -1).astype(dtype)
    charge = v0.astype(np.int64) + cur.reshape(samples, P).astype(np.int64)
    assert (charge == x).all()  # exact in this type
    res = k.integrate_and_fire(cur, k.FIRST_STEP, T, th, v0, True, None, keep_spikes=False)
    want = np.clip(charge // th.astype(np.int64), 0, T).reshape(-1)
    np.testing.assert_array_equal(res.counts, want.astype(np.float32))

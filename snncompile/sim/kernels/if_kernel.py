"""Integrate-and-fire over a whole window in one pass over memory (CPU, numba).

Why this kernel exists beside the torch formulation (:mod:`..neurons`): the reference
simulator evaluates a layer over all T steps at once, and written as torch operations an IF
step is three passes over every neuron (add the input, compare, reset), each reading and
writing whole tensors; here each block of neurons keeps its membranes in the cache for all
T steps, so the input is read once and the spikes are written once. Tuning runs it on every
batch, so the speed is worth a second formulation. The torch one stays for other devices
and for runs too small to pay this kernel's start. The results equal it bit for bit (same
integer arithmetic in the same dtype; tests/test_simulator_orders.py checks both against the
step-by-step simulator).

Inputs are flat per step: ``cur`` is (T, M) for a current that changes every step, or (1, M)
for the analog input that arrives every step (``EVERY_STEP``) or at t = 0 only
(``FIRST_STEP``); ``th`` and ``v0`` are (P,) in the same element order, P dividing M: the
thresholds and initial membranes of one sample's P neurons, repeated for each of the M / P
samples (or P = M), so that a caller need not write them out for every sample of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

FULL, EVERY_STEP, FIRST_STEP = 0, 1, 2

# Neurons per block: membranes, thresholds and counts of a block stay in the L1/L2 cache
# while the block runs through the window.
BLOCK = 2048

# The kernels run on one thread: numba's parallel loops put a second pool of OpenMP threads
# beside torch's in one process, and the two compete for the cores, so a training step
# costs more CPU time than the torch loop the kernel replaces. Splitting the blocks over
# Python threads (kernels compiled with nogil) did not pay either, likely because torch's
# OpenMP threads still spin after each convolution.


@dataclass
class IFResult:
    # (T, M) float32 0/1 (-1/0/1 signed), or uint8 codes (value + zero point, spike_conv) where
    # asked for; None when only the counts were asked for
    spikes: np.ndarray | None
    counts: np.ndarray         # (M,) float32 spikes per neuron over the window
    active: np.ndarray | None  # (T,) bool: some neuron spiked at step t (None without spikes)
    saturations: int           # membrane values clamped to the membrane width


def integrate_and_fire(cur: np.ndarray, mode: int, timesteps: int, th: np.ndarray, v0: np.ndarray,
                       subtract: bool, limit: float | None, keep_spikes: bool = True,
                       signed: bool = False, codes: bool = False) -> IFResult:
    """Run non-leaky IF neurons over ``timesteps`` steps.

    ``limit``: the membrane saturates at +-limit (clamped and counted) when given; None
    where a bound shows it cannot be reached. Without ``keep_spikes`` only the counts are
    computed: a layer nothing reads the spikes of (the last spiking layer of a tuning stage)
    then costs no (T, M) write. ``signed`` (with ``subtract``): a neuron whose membrane is
    below 0 while its net count is above 0 emits -1 and gains its threshold back. ``codes``:
    spikes written as uint8 codes, value + zero point (1 for signed spikes, see
    :mod:`.spike_conv`): a quarter of the bytes of float32, and what the int8 convolutions
    read."""
    m, period = cur.shape[1], th.shape[0]
    if period == 0 or m % period or v0.shape != th.shape:
        raise ValueError(f"thresholds of {period} neurons do not tile {m} (initial membranes {v0.shape[0]})")
    dt = th.dtype
    cur = np.ascontiguousarray(cur, dtype=dt)
    counts = np.empty(m, np.float32)
    blocks = (m // period) * -(-period // BLOCK)
    sat = np.zeros(blocks, np.int64)
    # all charge at t = 0: the membrane never falls below 0 after a spike, so signed
    # neurons count as binary ones do
    if not keep_spikes and subtract and limit is None and mode == FIRST_STEP:
        _first_step_counts(cur, timesteps, th, v0, counts)
        return IFResult(None, counts, None, 0)
    # without keep_spikes: one row of spikes, overwritten each step (it stays in the cache)
    as_codes = codes and keep_spikes
    spikes = np.empty((timesteps if keep_spikes else 1, m), np.uint8 if as_codes else np.float32)
    off = np.float32(1.0 if as_codes and signed else 0.0)  # what a silent step is written as
    active = np.zeros((blocks, timesteps), np.bool_)
    if subtract and limit is None:
        _if_subtract(cur, mode, timesteps, th, v0, spikes, counts, active, signed, off)
    else:
        _if_general(cur, mode, timesteps, th, v0, spikes, counts, active, sat, subtract,
                    float(limit) if limit is not None else np.inf, signed, off)
    if not keep_spikes:
        return IFResult(None, counts, None, int(sat.sum()))
    return IFResult(spikes, counts, active.any(axis=0), int(sat.sum()))


@njit(cache=True)
def _block(b, th, v0):  # pragma: no cover - compiled
    """Bounds of block ``b`` (in the whole current; blocks do not cross samples), its
    thresholds, fresh membranes and counts."""
    period = th.shape[0]
    per_sample = (period + BLOCK - 1) // BLOCK
    lo = (b % per_sample) * BLOCK
    hi = min(period, lo + BLOCK)
    base = (b // per_sample) * period
    return base + lo, base + hi, th[lo:hi], v0[lo:hi].copy(), np.zeros(hi - lo, np.float32)


@njit(cache=True, fastmath={"reassoc", "nsz", "contract"})
def _add_input(v, cur, mode, t, lo, hi):  # pragma: no cover - compiled
    """Step ``t``'s input current into the block's membranes (the input forms of the module)."""
    if mode == FULL or mode == EVERY_STEP or t == 0:
        c = cur[t if mode == FULL else 0, lo:hi]
        for i in range(hi - lo):
            v[i] += c[i]


@njit(cache=True, fastmath={"reassoc", "nsz", "contract"})
def _if_subtract(cur, mode, steps, th, v0, spikes, counts, active, signed, off):  # pragma: no cover - compiled
    """Reset by subtraction, no saturation, signed spikes where ``signed``; ``spikes`` and
    ``off`` as in ``_if_general`` (with one row, ``active`` is left alone)."""
    every = spikes.shape[0] == steps
    for b in range(active.shape[0]):
        lo, hi, thb, v, cnt = _block(b, th, v0)
        for t in range(steps):
            _add_input(v, cur, mode, t, lo, hi)
            sp = spikes[t if every else 0, lo:hi]
            if signed:
                for i in range(hi - lo):
                    up = v[i] >= thb[i]
                    s = np.float32(1.0) if up else (np.float32(-1.0) if (v[i] < 0 and cnt[i] > 0)
                                                    else np.float32(0.0))
                    v[i] -= s * thb[i]
                    cnt[i] += s
                    sp[i] = s + off
            else:
                for i in range(hi - lo):
                    s = np.float32(1.0) if v[i] >= thb[i] else np.float32(0.0)
                    v[i] -= s * thb[i]
                    cnt[i] += s
                    sp[i] = s + off
        for t in range(steps if every else 0):
            sp = spikes[t, lo:hi]
            total = np.float32(0.0)
            for i in range(hi - lo):
                total += abs(np.float32(sp[i]) - off)
            active[b, t] = total > 0
        counts[lo:hi] = cnt


@njit(cache=True)
def _if_general(cur, mode, steps, th, v0, spikes, counts, active, sat, subtract, limit, signed,
                off):  # pragma: no cover
    """Any reset, saturation counted, signed spikes (with ``subtract``) where ``signed``;
    ``spikes`` is (steps, M), or (1, M) where only the counts are wanted (the row is then
    reused by every step); each spike is written as its value plus ``off`` (uint8 codes:
    the zero point; float32 spikes: 0)."""
    for b in range(active.shape[0]):
        lo, hi, thb, v, cnt = _block(b, th, v0)
        clamped = 0
        for t in range(steps):
            _add_input(v, cur, mode, t, lo, hi)
            sp = spikes[t if spikes.shape[0] == steps else 0, lo:hi]
            fired = False
            for i in range(hi - lo):
                x = v[i]
                if x > limit:
                    x = limit
                    clamped += 1
                elif x < -limit:
                    x = -limit
                    clamped += 1
                if x >= thb[i]:
                    x = x - thb[i] if subtract else x * 0.0
                    cnt[i] += 1.0
                    sp[i] = 1.0 + off
                    fired = True
                elif signed and x < 0.0 and cnt[i] > 0.0:  # takes a spike back
                    x = x + thb[i]
                    cnt[i] -= 1.0
                    sp[i] = off - 1.0
                    fired = True
                else:
                    sp[i] = off
                v[i] = x
            active[b, t] = fired
        sat[b] = clamped
        counts[lo:hi] = cnt


@njit(cache=True, fastmath={"reassoc", "nsz", "contract"})
def _first_step_counts(cur, steps, th, v0, counts):  # pragma: no cover - compiled
    """Counts of subtract-reset neurons whose charge all arrives at t = 0: a neuron fires on
    the first floor(v / theta) steps (each spike takes theta off, nothing comes in), so its
    count is that quotient capped at T: one multiplication by 1 / theta, not T steps. In
    float64 (exact for these integers), with one sample's thresholds converted once and the
    loops free of branches, so that the compiler vectorizes it."""
    period = th.shape[0]
    th64 = np.empty(period, np.float64)
    v064 = np.empty(period, np.float64)
    inv = np.empty(period, np.float64)
    for j in range(period):
        th64[j] = th[j]
        v064[j] = v0[j]
        inv[j] = 1.0 / th64[j]
    top = np.float64(steps)
    q64 = np.empty(period, np.float64)
    for base in range(0, cur.shape[1], period):
        c = cur[0, base:base + period]
        for j in range(period):
            x = v064[j] + c[j]
            t = th64[j]
            q = np.floor(x * inv[j])
            # x * (1 / t) is within one of the quotient: step it onto the exact one
            q = q + 1.0 if (q + 1.0) * t <= x else q
            q = q - 1.0 if q * t > x else q
            q64[j] = min(max(q, 0.0), top)
        out = counts[base:base + period]
        for j in range(period):
            out[j] = q64[j]

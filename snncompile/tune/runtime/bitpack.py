"""Spike codes packed into the prefix cache's bits in one pass over memory (CPU, numba).

A PTL stage keeps the spike trains of its fixed layers bit-packed (:mod:`.prefix`): each
sample's row holds, per plane (``+1`` spikes, then ``-1`` spikes where they are signed),
T steps of whole bytes, a bit per neuron, the first neuron in the high bit (numpy's
``packbits`` order). Done with numpy, each plane is a comparison over the uint8 codes, a
``packbits`` and a transpose into rows, and finding which steps hold a spike is one more
pass over the packed bits, so packing cost as much as the simulation that builds the
caches. Here one kernel reads the codes once and writes both
the packed rows and those steps. Where a step's neurons fill whole bytes (the usual case
for feature maps) it packs eight codes at a time from one 64-bit word: codes are 0/1 bytes
(or 0/1/2 where signed), so a plane is a word of 0/1 bytes and one multiplication gathers
its eight low bits into the top byte.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

# little-endian: byte k of a word (neuron k of eight) at bits 8k..8k+7; multiplied by this,
# bit 8k lands at bit 63 - k and no two partial products meet or carry (8k + 63 - 9j
# differs for every pair k, j), so bits 56..63 are the eight bits in packbits order
_GATHER = np.uint64(0x8040201008040201)
_LOW_BITS = np.uint64(0x0101010101010101)
_ONE = np.uint64(1)
_TOP = np.uint64(56)


def pack_codes(codes: np.ndarray, signed: bool, out: np.ndarray, steps: np.ndarray, row0: int) -> None:
    """Pack ``codes`` ((T, n, neurons) uint8, C-contiguous: value + zero point, as
    :mod:`..spike_conv` writes them) into rows ``row0 .. row0 + n`` of ``out``
    ((N, planes * T * ceil(neurons / 8)) uint8), and set ``steps[row0 + j, t]`` where sample
    j has a spike at step t."""
    T, n, m = codes.shape
    if n == 0:
        return
    if m and m % 8 == 0 and sys.byteorder == "little":
        _pack_words(codes.view(np.uint64), signed, out, steps, row0)
    else:
        _pack_bytes(codes, signed, out, steps, row0)


@njit(cache=True)
def _pack_words(words, signed, out, steps, row0):  # pragma: no cover - compiled
    # one loop per plane and step: each a single output stream, which the compiler
    # vectorizes (the two planes in one loop defeat the vectorizer)
    T, n, W = words.shape
    for j in range(n):
        r = row0 + j
        for t in range(T):
            seen = np.uint64(0)
            if signed:  # codes 0, 1, 2 for -1, 0, +1
                plus = t * W
                for w in range(W):
                    hi = (words[t, j, w] >> _ONE) & _LOW_BITS
                    out[r, plus + w] = np.uint8((hi * _GATHER) >> _TOP)
                    seen |= hi
                minus = (T + t) * W
                for w in range(W):
                    x = words[t, j, w]
                    lo = ((x | (x >> _ONE)) & _LOW_BITS) ^ _LOW_BITS
                    out[r, minus + w] = np.uint8((lo * _GATHER) >> _TOP)
                    seen |= lo
            else:
                plus = t * W
                for w in range(W):
                    x = words[t, j, w]
                    out[r, plus + w] = np.uint8((x * _GATHER) >> _TOP)
                    seen |= x
            steps[r, t] = seen != 0


@njit(cache=True)
def _pack_bytes(codes, signed, out, steps, row0):  # pragma: no cover - compiled
    T, n, m = codes.shape
    nbytes = (m + 7) // 8
    planes = 2 if signed else 1
    for j in range(n):
        r = row0 + j
        for t in range(T):
            seen = False
            for p in range(planes):
                base = (p * T + t) * nbytes
                for b in range(nbytes):
                    byte = 0
                    for i in range(b * 8, min(b * 8 + 8, m)):
                        c = codes[t, j, i]
                        if signed:
                            bit = c == 2 if p == 0 else c == 0
                        else:
                            bit = c != 0
                        if bit:
                            byte |= 1 << (7 - (i - b * 8))
                    out[r, base + b] = byte
                    if byte:
                        seen = True
            steps[r, t] = seen


def _spread_table() -> np.ndarray:
    """byte -> the word whose byte k is bit 7 - k of it (0/1): a packed byte's eight codes."""
    table = np.zeros(256, np.uint64)
    for b in range(256):
        table[b] = sum(1 << (8 * k) for k in range(8) if (b >> (7 - k)) & 1)
    return table


_SPREAD = _spread_table()


def unpack_codes(packed: np.ndarray, rows: np.ndarray, T: int, signed: bool,
                 codes: np.ndarray, counts: np.ndarray) -> bool:
    """The inverse of :func:`pack_codes` for samples ``rows`` of ``packed``: writes their
    codes ((T, len(rows), neurons) uint8, C-contiguous) and their counts over the window
    ((len(rows), neurons) float32: the spikes' sum, -1 spikes counting -1). Reads each packed
    byte once and writes each code once, eight at a time; False (nothing written) where that
    does not apply: neurons not a multiple of 8, or a window too long for a count to stay
    within a byte (2T > 255)."""
    n, m = counts.shape
    if n == 0:
        return True
    if not m or m % 8 or 2 * T > 255 or sys.byteorder != "little":
        return False
    _unpack_words(packed, np.ascontiguousarray(rows, np.int64), T, signed, _SPREAD,
                  codes.view(np.uint64), counts)
    return True


@njit(cache=True)
def _unpack_words(packed, rows, T, signed, table, words, counts):  # pragma: no cover - compiled
    n = rows.shape[0]
    W = words.shape[2]
    total = np.empty(W, np.uint64)  # per neuron, its codes' sum (a byte each, no carries)
    off = np.float32(T if signed else 0)
    for i in range(n):
        r = rows[i]
        total[:] = 0
        for t in range(T):
            plus = t * W
            if signed:  # code 1 + (+1 bit) - (-1 bit): lanes 0..2, never borrowing
                minus = (T + t) * W
                for w in range(W):
                    c = table[packed[r, plus + w]] + _LOW_BITS - table[packed[r, minus + w]]
                    words[t, i, w] = c
                    total[w] += c
            else:
                for w in range(W):
                    c = table[packed[r, plus + w]]
                    words[t, i, w] = c
                    total[w] += c
        for w in range(W):
            a = total[w]
            for k in range(8):
                counts[i, w * 8 + k] = np.float32((a >> np.uint64(8 * k)) & np.uint64(0xFF)) - off

"""One-pass CPU kernels (numba) for the elementwise work of a tandem training step.

At the first stages of PTL on a CNN a training step spends much of its time not in
convolutions but in elementwise passes over the large early feature maps; the count model
of the layers not spiking yet took five torch ops forward and four backward, each a pass
over those maps. Each kernel here does such work in a
single pass over memory, with the same float32 arithmetic in the same order as the torch ops
it stands for, so results are bit for bit those ops' (tests check them against the torch
formulations). Callers fall back to torch where a kernel does not apply (another device,
another dtype, per-channel scales, or operands in different layouts).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit


def flat(t: torch.Tensor) -> np.ndarray | None:
    """A 1-D numpy view of ``t``'s memory in storage order, or None where that order is not
    simply row-major or channels-last (elementwise kernels then see matching elements only
    for operands laid out alike)."""
    if t.device.type != "cpu" or t.dtype != torch.float32:
        return None
    if not (t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))):
        return None
    return t.detach().as_strided((t.numel(),), (1,)).numpy()


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether elementwise kernels may pair ``a`` and ``b`` element for element in storage
    order (same shape and strides; size-1 dimensions' strides do not matter)."""
    if a.shape != b.shape:
        return False
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


@njit(cache=True)
def count_levels(z, lam, T, out):  # pragma: no cover - compiled
    """``out = lam * clamp(floor(z * (T / lam) + 1/2), 0, T) / T`` in float32, each op
    rounded as torch rounds it (no fused or reassociated arithmetic; torch evaluates a
    number over a tensor, ``T / lam``, as ``T * (1 / lam)``)."""
    t = np.float32(T)
    r = (np.float32(1.0) / lam) * t
    half = np.float32(0.5)
    zero = np.float32(0.0)
    for i in range(z.shape[0]):
        v = np.floor(z[i] * r + half)
        if v < zero:
            v = zero
        elif v > t:
            v = t
        out[i] = v * lam / t


@njit(cache=True)
def clamp_grad(z, g, lam, out):  # pragma: no cover - compiled
    """The gradient of ``min(relu(z), lam)`` as torch gives it: ``g`` inside (0, lam),
    ``g / 2`` where ``z`` equals ``lam``, ``g * 0`` elsewhere (a signed zero, as a product
    with a zero mask leaves it)."""
    half = np.float32(0.5)
    zero = np.float32(0.0)
    for i in range(z.shape[0]):
        x = z[i]
        if x > zero and x < lam:
            out[i] = g[i]
        elif x == lam:
            out[i] = g[i] * half
        else:
            out[i] = g[i] * zero

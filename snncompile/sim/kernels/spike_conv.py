"""Convolutions of spike trains in exact integer arithmetic on oneDNN's int8 kernels (CPU).

A spiking layer's input over the window is T maps of spikes (0/1, or -1/0/1 for signed
spikes) and its weights are integers; the simulator convolves all T maps at once, which
makes these convolutions most of the reference simulator's and PTL's time on a CNN. In
float32 the sums are exact (the plan bounds them below 2^24), but int8 kernels do the same
sums in int32, exactly too, and where the CPU has int8 dot-product instructions (AVX-512
VNNI, AMX) several times faster. Spikes are handed over as uint8 *codes*, value + zero point (the zero point 1 for
signed spikes), and each result equals the float32 convolution's bit for bit; before first
use in a process a small probe checks that on this machine and otherwise the simulator keeps
its float32 convolutions.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

INT8_MAX = 127


def zero_point(signed: bool) -> int:
    """The code of a silent step: spikes are stored as value + zero point (uint8)."""
    return 1 if signed else 0


def encode(spikes: torch.Tensor, signed: bool) -> torch.Tensor:
    """uint8 codes of float spikes, in their layout."""
    out = torch.empty_like(spikes, dtype=torch.uint8)
    return out.copy_(spikes + zero_point(signed) if signed else spikes)


def decode(codes: torch.Tensor, signed: bool) -> torch.Tensor:
    """float32 spikes of uint8 codes, in their layout."""
    out = torch.empty_like(codes, dtype=torch.float32)
    out.copy_(codes)
    return out.sub_(zero_point(signed)) if signed else out


def fits(weight_int: np.ndarray) -> bool:
    """Whether integer weights fit the int8 kernels."""
    return weight_int.size > 0 and int(np.abs(weight_int).max()) <= INT8_MAX


@functools.lru_cache(maxsize=None)
def available(device_type: str = "cpu") -> bool:
    """Whether this process can convolve codes with int8 kernels and gets exactly the float
    convolution's values (oneDNN's int8 convolutions on the CPU; checked once per process on
    small binary and signed inputs with padding, stride and groups)."""
    if device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        for signed in (False, True):
            s = torch.randint(-1 if signed else 0, 2, (3, 4, 7, 6), generator=gen).float()
            s = s.contiguous(memory_format=torch.channels_last)
            w = torch.randint(-INT8_MAX, INT8_MAX + 1, (6, 2, 3, 3), generator=gen).float()
            b = torch.randint(-2 ** 20, 2 ** 20, (6,), generator=gen).float()
            packed = prepack(w.numpy(), signed, (2, 1), (1, 1), (1, 1), 2)
            for bias in (None, b):
                want = F.conv2d(s, w, bias, (2, 1), (1, 1), (1, 1), 2)
                got = conv(encode(s, signed), packed, signed, (2, 1), (1, 1), (1, 1), 2, 6, bias=bias)
                if not torch.equal(got, want):
                    return False
        return True
    except Exception:  # an op missing from this build, or a CPU its kernels do not serve
        return False


def prepack(weight_int: np.ndarray, signed: bool, stride, padding, dilation, groups: int):
    """The weights (O, I / groups, kh, kw) in the int8 kernels' own layout."""
    w = torch.as_tensor(np.asarray(weight_int), dtype=torch.float32).to(torch.int8)
    o = w.shape[0]
    return torch.ops.onednn.qconv_prepack(w, torch.ones(o, dtype=torch.float32), 1.0, zero_point(signed),
                                          list(stride), list(padding), list(dilation), groups, None)


def conv(codes: torch.Tensor, packed, signed: bool, stride, padding, dilation, groups: int,
         out_channels: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The convolution of spike codes (M, C, H, W) uint8 with prepacked integer weights,
    plus ``bias`` (O,) integers in float32 on every map where given (added to the exact sums
    in the kernel's epilogue: exact where the result stays below 2^24, which the simulator's
    bounds ensure before choosing float32): float32, channels-last, exact integers."""
    ones = torch.ones(out_channels, dtype=torch.float32)
    zeros = torch.zeros(out_channels, dtype=torch.int64)
    x = codes.contiguous(memory_format=torch.channels_last)
    y = torch.ops.onednn.qconv2d_pointwise(x, 1.0, zero_point(signed), packed, ones, zeros,
                                           None if bias is None else bias.to(torch.float32).contiguous(),
                                           list(stride), list(padding), list(dilation), groups,
                                           1.0, 0, torch.float32, "none", [], "")
    return y.contiguous(memory_format=torch.channels_last)

"""A node's value over the time window, in the forms that let the evaluator skip work.

The evaluator (:mod:`.evaluator`) hands these between nodes: the values of all T steps
at once, or one step standing for all of them, with what is known about them (spike
events, silent steps, the sum over the window, uint8 spike codes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import EXACT_F32
from .kernels import spike_conv


# Values flow between nodes over the whole window at once: evaluating node by node over all
# T steps is the same as step by step, since a feed-forward graph has no path from a later
# node back to an earlier one. A value is stored in one of four forms, so the analog input
# and what is computed from it alone cost one step, not T:
#   "full":  (T, N, *shape), one entry per step;
#   "const": (N, *shape), the same at every step (the every-step input);
#   "first": (N, *shape) at t = 0, zero after (the once input);
#   "counts": (N, *shape) an IF layer's counts alone, where nothing reads its spikes.

SKIP_CHECK_ELEMENTS = 2 ** 16


@dataclass
class Value:
    stored: torch.Tensor | None  # the values (None while only ``codes`` hold them): see ``data``
    kind: str = "full"
    # Holds spike events or sums of them (small non-negative integers, float32): silent steps
    # are found by the maximum alone, and sums over the window are exact in float32.
    events: bool = False
    # (T,) bool where known: False marks a step known to be all zero (a linear map keeps it so)
    active: torch.Tensor | None = None
    # the sum over the window where already known, (N, *shape)
    window_sum: torch.Tensor | None = None
    # signed spikes (values -1, 0, 1) or maps of them; events is False for these
    signed: bool = False
    # spikes as uint8 codes (value + zero point, see spike_conv), in the layout of the
    # values, where they came so: convolutions take them as they are (int8 kernels)
    codes: torch.Tensor | None = None

    @property
    def data(self) -> torch.Tensor:
        """The values; spikes held only as codes are decoded on first use (a consumer that
        is not an int8 convolution)."""
        if self.stored is None:
            assert self.codes is not None
            self.stored = spike_conv.decode(self.codes, self.signed)
        return self.stored

    def full(self, T: int) -> torch.Tensor:
        if self.kind == "full":
            return self.data
        if self.kind == "counts":
            raise AssertionError("an IF layer simulated for its counts only has no spike trains")
        if self.kind == "const":
            return self.data.unsqueeze(0).expand((T,) + tuple(self.data.shape))
        out = torch.zeros((T,) + tuple(self.data.shape), dtype=self.data.dtype, device=self.data.device)
        out[0] = self.data
        return out

    def total(self, T: int, dtype: torch.dtype) -> torch.Tensor:
        """The sum over the window."""
        if self.window_sum is not None:
            return self.window_sum.to(dtype)
        if self.kind == "full":
            if self.events:
                return self.data.sum(dim=0).to(dtype)
            return self.data.sum(dim=0, dtype=dtype)
        return self.data.to(dtype) * (T if self.kind == "const" else 1)

    def map(self, fn, events: bool = False) -> "Value":
        """A linear map without bias, applied at every step (zero steps stay zero); ``events``:
        the map keeps event sums event sums (pools, reshapes, padding), and it maps a known
        window sum too (a linear map of the sum is the sum of the maps, at 1/T the cost)."""
        y = self._map(fn, events and self.events)
        if events and self.window_sum is not None:
            y.window_sum = fn(self.window_sum)
        y.signed = events and self.signed
        return y

    def magnitude_total(self, T: int) -> torch.Tensor:
        """The sum over the window of |value|: the events of signed spikes (SynOps)."""
        x = self.full(T)
        if x.dtype == torch.float32 and len(x):
            # integers whose partial sums of magnitudes never exceed the total: exact in
            # float32 while the total stays below 2^24; step by step, so that no window-sized
            # copy is made (a fresh one costs its page faults)
            total, step = x[0].abs(), torch.empty_like(x[0])
            for t in range(1, len(x)):
                total.add_(torch.abs(x[t], out=step))
            if total.numel() == 0 or float(total.max()) < EXACT_F32:
                return total.to(torch.float64)
        return x.abs().sum(dim=0, dtype=torch.float64)

    def _map(self, fn, events: bool) -> "Value":
        if self.kind != "full":
            return Value(fn(self.data), self.kind, events)
        x = self.data
        k, n = x.shape[:2]
        if self.active is not None:
            active = self.active
            n_active = int(active.sum())
        elif x.numel() < SKIP_CHECK_ELEMENTS or x.requires_grad:
            # finding the silent steps would cost more; or a silent step's values are zero
            # but the gradients they carry are not
            n_active = k
        else:
            flat = x.reshape(k, -1)
            if self.events:
                active = flat.amax(dim=1) > 0
            else:
                lo, hi = torch.aminmax(flat, dim=1)
                active = (hi > 0) | (lo < 0)
            n_active = int(active.sum())
        if n_active == k:
            y = fn(x.reshape((k * n,) + tuple(x.shape[2:])))
            return Value(y.reshape((k, n) + tuple(y.shape[1:])), events=events, active=self.active)
        xa = x[active] if n_active else x[:1]
        ya = fn(xa.reshape((xa.shape[0] * n,) + tuple(x.shape[2:])))
        ya = ya.reshape((xa.shape[0], n) + tuple(ya.shape[1:]))
        y = torch.zeros((k,) + tuple(ya.shape[1:]), dtype=ya.dtype, device=ya.device)
        if n_active:
            y[active] = ya
        return Value(y, events=events, active=active)


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def wider(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """The wider float type: integer values narrow exactly where a bound allows it, but the
    gradients a traced value carries would lose precision."""
    return torch.float64 if torch.float64 in (a, b) else torch.float32

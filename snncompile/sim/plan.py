"""What a simulation prepares once per run: each node's float type, its weights in the
forms the exact arithmetic needs, the IF layers' membranes, and which IF formulation runs."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch

from ..errors import ModelError
from ..ir import AffineNode, Conv2dNode, Graph, IFNode, WeightedNode
from ..ir.structure import fanout, spike_driven
from .bounds import EXACT_F32, exact_dtypes, value_bounds, window_bounds
from .kernels import spike_conv


class Plan:
    """Per-node tensors and dtypes prepared once per simulation."""

    def __init__(self, graph: Graph, timesteps: int, device: torch.device, fused_if: bool = False,
                 synops: bool = True, only: Collection[str] | None = None,
                 given: Collection[str] = (), int8_conv: bool = True, weights: bool = True):
        """``only``: prepare only these nodes (a run that simulates a part of the graph, as
        :func:`run_window` with ``nodes``; the training loops build a plan for every batch),
        of which those in ``given`` (IF nodes) are taken as they are, not simulated.
        ``int8_conv``: whether convolutions of spike codes may use the int8 kernels.
        ``weights``: prepare the integer weights (a traced run takes its own, :class:`Traced`)."""
        self.graph = graph
        self.fused_if = fused_if  # CPU: IF layers by the one-pass kernel (if_kernel.py)
        self.T = timesteps
        self.device = device
        bounds = value_bounds(graph, timesteps, only)
        self.dtype = exact_dtypes(bounds)
        self.w: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor | None] = {}
        # Weights split into digits whose products stay exact in float32 (fast kernels), for
        # nodes whose worst-case sums need float64: w = sum_k parts[k] * factor[k].
        self.parts: dict[str, list[tuple[torch.Tensor, float]]] = {}
        # ... and the whole weights in float32 with their largest magnitude, for the rows of a
        # spike input that are exact in float32 (exact_in_float32)
        self.w32: dict[str, torch.Tensor] = {}
        self.wmax: dict[str, float] = {}
        # Convolutions whose integer weights fit int8: spike inputs held as codes go through
        # the int8 kernels (spike_conv), their weights packed on first use per input kind
        self.w8: dict[str, np.ndarray] = {}
        self.packed8: dict[tuple[str, bool], object] = {}
        planned = [n for n in graph.nodes if (only is None or n.name in only) and n.name not in given]
        for n in planned if weights else ():
            if isinstance(n, WeightedNode):
                if n.weight_int is None:
                    raise ModelError(f"node '{n.name}' has no integer weights: the graph is not converted")
                dt = self.dtype[n.name]
                fmt = torch.channels_last if isinstance(n, Conv2dNode) else torch.contiguous_format
                self.w[n.name] = torch.as_tensor(n.weight_int, dtype=dt, device=device).contiguous(memory_format=fmt)
                self.b[n.name] = (torch.as_tensor(n.bias_int, dtype=dt, device=device)
                                  if n.bias_int is not None else None)
                if dt == torch.float64 and not isinstance(n, AffineNode):
                    parts = _float32_parts(n, bounds[n.inputs[0]])
                    if parts is not None:
                        self.w32[n.name] = torch.as_tensor(n.weight_int, dtype=torch.float32,
                                                           device=device).contiguous(memory_format=fmt)
                        self.wmax[n.name] = float(np.abs(n.weight_int).max(initial=0))
                        self.parts[n.name] = [(torch.as_tensor(p, dtype=torch.float32, device=device)
                                               .contiguous(memory_format=fmt), f) for p, f in parts]
                if (isinstance(n, Conv2dNode) and dt == torch.float32 and int8_conv
                        and spike_conv.available(device.type)
                        and spike_conv.fits(n.weight_int)):
                    self.w8[n.name] = n.weight_int
        # IF layers read directly by such a convolution write their spikes as codes
        self.code_outputs = {graph[name].inputs[0] for name in self.w8}
        # Membranes: |v| never exceeds |v_init| plus the summed |input| (a reset only moves v
        # towards zero), so where that stays within the membrane width no step can saturate.
        self.membrane: dict[str, tuple[torch.dtype, bool]] = {}
        self.th: dict[str, torch.Tensor] = {}        # broadcastable to the layer's shape
        self.v0: dict[str, torch.Tensor | None] = {}
        totals = window_bounds(graph, timesteps, only)
        for n in planned:
            if isinstance(n, IFNode):
                v0 = float(np.abs(n.v_init).max(initial=0)) if n.v_init is not None else 0.0
                reach = v0 + totals[n.inputs[0]]
                th = float(np.max(n.threshold, initial=0))
                worst_v = max(reach, th)
                dt = torch.float32 if worst_v < EXACT_F32 else torch.float64
                self.membrane[n.name] = (dt, reach > 2 ** (n.membrane_bits - 1) - 1)
                self.th[n.name] = torch.as_tensor(n.threshold, dtype=dt, device=device)
                self.v0[n.name] = (torch.as_tensor(n.v_init, dtype=dt, device=device)
                                   if n.v_init is not None else None)
        self.synop_nodes = sorted(spike_driven(graph)) if synops else []
        self.fanout = {k: torch.as_tensor(fanout(graph, graph[k]), dtype=torch.float64, device=device).reshape(-1)
                       for k in self.synop_nodes}
        self.largest = max(int(np.prod(n.shape)) for n in graph.nodes)


def _float32_parts(n: WeightedNode, in_bound: float) -> list[tuple[np.ndarray, float]] | None:
    """Split integer weights into signed base-2^s digits so that every digit's weighted sum
    stays below 2^24 (exact in float32); None where the input itself is not exact in float32
    or more than three digits would be needed."""
    if in_bound >= EXACT_F32:
        return None
    w = np.asarray(n.weight_int, np.int64)
    mag, sign = np.abs(w), np.sign(w)
    top = int(mag.max(initial=0)).bit_length()
    rows = int(np.prod(w.shape[1:]))
    for digits in (2, 3):
        s = -(-top // digits)
        if rows * (2 ** s - 1) * in_bound < EXACT_F32:
            mask = 2 ** s - 1
            return [(sign * ((mag >> (s * k)) & mask), float(2 ** (s * k))) for k in range(digits)]
    return None


# On the CPU, IF layers run in the one-pass kernel of if_kernel.py where that pays: its
# one-time start in a process (importing numba and loading the cached compiled kernel)
# outweighs the torch formulation's extra passes on runs below this many neuron-steps.
# Callers that run the window again and again (the tuning loops) ask for the kernel
# outright, since they pay its start once. Both formulations give the same bits.
FUSED_IF_MIN_NEURON_STEPS = 2 ** 27


def use_fused_if(graph: Graph, timesteps: int, samples: int, device: torch.device,
              requested: bool | None = None) -> bool:
    """Whether IF layers run in the one-pass kernel: never off the CPU; else as
    ``requested``, or (None) where the run is large enough to pay the kernel's start."""
    if device.type != "cpu":
        return False
    if requested is not None:
        return bool(requested)
    neurons = sum(int(np.prod(n.shape)) for n in graph.nodes if isinstance(n, IFNode))
    return neurons * timesteps * samples >= FUSED_IF_MIN_NEURON_STEPS

"""Surrogate-gradient backpropagation through time over the exact integer forward.

The forward is :func:`.intsim.run_integer` itself, so the integers a training batch runs on
(weights, currents, membranes, spikes, the output accumulator) are bit for bit those of the
reference simulator. Gradients reach the float weights along two straight-through paths
whose forward value is exactly zero (``a - a.detach()``), so they never perturb an integer:

* a weighted op uses ``weight_int + (w_real * s_in / s_out - itself.detach())``: the
  gradient of an integer weight is passed to its float weight (and likewise for biases);
* an IF layer emits ``spike + g * (u - u.detach())`` with ``u = v / theta`` the normalized
  membrane and ``g`` the surrogate derivative (:class:`.surrogate.Surrogate`). The reset term is
  detached (gradients do not flow through the reset), the membrane carries them through time.

Used by the ``stdb`` method (full BPTT, loss at the output) and the ``ltl`` method (each
layer's input detached, a local loss per layer).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..ir import Graph, IFNode, WeightedNode
from . import intsim
from .intsim import IntResult, quantized_input, run_integer
from .model import TandemNet, unit_scales
from .surrogate import Surrogate

SpikeHook = Callable[[IFNode, torch.Tensor, IntResult], torch.Tensor]


def surrogate_if(surrogate: Surrogate, detach_output: bool = False) -> SpikeHook:
    """An IF layer for :func:`.intsim.run_integer` whose spikes carry surrogate gradients.

    Its integers equal :func:`.intsim._if_layer`'s. ``res.counts`` keeps the spike counts
    with their gradients; with ``detach_output`` the spikes passed on to the next layers do
    not (LTL: each layer learns from its own loss only). ``dt`` counts steps since the last
    spike; before a neuron's first spike it counts from step -1 (``dt = t + 1``)."""

    def spiking(n: IFNode, cur: torch.Tensor, res: IntResult) -> torch.Tensor:
        if n.spikes != "binary":  # the pipeline refuses ltl/stdb with --spikes signed first
            raise ValueError(f"IF layer '{n.name}': the surrogate gradient has no negative spike")
        T = cur.shape[0]
        dev = cur.device
        v = torch.zeros(tuple(cur.shape[1:]), dtype=torch.float64, device=dev)
        if n.v_init is not None:
            v = v + torch.as_tensor(n.v_init, dtype=torch.float64, device=dev)
        th = torch.as_tensor(n.threshold, dtype=torch.float64, device=dev)
        lim = float(2 ** (n.membrane_bits - 1) - 1)
        last = torch.full(v.shape, -1.0, dtype=torch.float64, device=dev)
        out, sat = [], 0
        for t in range(T):
            v = v + cur[t].to(torch.float64)
            over = v.detach().abs() > lim
            if bool(over.any()):
                sat += int(over.sum())
                v = v.clamp(-lim, lim)
            hard = (v.detach() >= th).to(torch.float64)
            u = v / th
            g = surrogate.grad(u.detach(), t - last)
            out.append(hard + g * (u - u.detach()))
            v = v - hard * th if n.reset == "subtract" else v * (1.0 - hard)
            last = torch.where(hard > 0, torch.full_like(last, float(t)), last)
        spikes = torch.stack(out)
        res.counts[n.name] = spikes.sum(dim=0)
        res.saturations[n.name] = sat
        return spikes.detach() if detach_output else spikes

    return spiking


def ste_params(net: TandemNet, g: Graph) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Per weighted node, its integer weight and bias as tensors whose gradients reach the
    float parameters of ``net`` (straight-through; the forward value is the integer)."""
    out = {}
    for name in net.weighted:
        n = g[name]
        k = net.key[name]
        s_in, s_out = unit_scales(g, name)
        dev = net.weight[k].device
        wc = net.weight[k] * net.mask(name) * torch.as_tensor(s_in / s_out, dtype=torch.float32, device=dev)
        w = torch.as_tensor(n.weight_int, dtype=torch.float32, device=dev) + (wc - wc.detach())
        b = None
        if n.bias_int is not None:
            b = torch.as_tensor(n.bias_int.astype(np.float64), device=dev)
            if k in net.bias:
                bc = net.bias[k].to(torch.float64) / s_out
                b = b + (bc - bc.detach()).reshape(b.shape)
        out[name] = (w, b)
    return out


def forward(net: TandemNet, x: torch.Tensor, spiking: SpikeHook) -> tuple[torch.Tensor, IntResult]:
    """Output (``scale * acc / T``, as :class:`TandemNet` returns at its last stage) and the
    integer result of the whole network, differentiable through ``spiking``'s surrogate."""
    if net.stage != net.n_stages:
        raise ValueError("surrogate-gradient training runs the whole network spiking (last stage)")
    g, _ = net._current()
    params = ste_params(net, g)

    def weighted(n: WeightedNode, xin: torch.Tensor, T: int, dt: torch.dtype) -> torch.Tensor:
        w, b = params[n.name]
        return intsim._weighted(n, xin, T, dt, w, b)

    res = run_integer(g, quantized_input(g, x), net.T, None, weighted=weighted, spiking=spiking)
    o = g.outputs[0]
    s = torch.as_tensor(np.asarray(g[o].out_scale, np.float64), device=x.device)
    return (res.acc[o] * s / net.T).to(torch.float32), res

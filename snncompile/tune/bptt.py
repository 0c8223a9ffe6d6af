"""Surrogate-gradient backpropagation through time over the exact integer forward.

The forward is :func:`.intsim.run_integer` itself, so the integers a training batch runs on
(weights, currents, membranes, spikes, the output accumulator) are bit for bit those of the
reference simulator. Gradients reach the float weights along two straight-through paths
whose forward value is exactly zero (``a - a.detach()``), so they never perturb an integer:

* a weighted op uses ``weight_int + (w_real * s_in / s_out - itself.detach())``: the
  gradient of an integer weight is passed to its float weight (and likewise for biases);
* an IF layer emits ``spike + g * (u - u.detach())`` with ``u = v / theta`` the normalized
  membrane and ``g`` the surrogate derivative (:class:`Surrogate`). The reset term is
  detached (gradients do not flow through the reset), the membrane carries them through time.

Used by the ``stdb`` method (full BPTT, loss at the output) and the ``ltl`` method (each
layer's input detached, a local loss per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import UsageError
from ..ir import Graph, IFNode, WeightedNode
from . import intsim
from .intsim import IntResult, quantized_input, run_integer
from .model import TandemNet, unit_scales
from .ptl import TrainOptions

SURROGATES = ("exp", "linear")


def stdb_grad(dt: torch.Tensor, alpha: float = 0.3, beta: float = 0.01) -> torch.Tensor:
    """Rathi et al.'s spike-time-dependent surrogate: ``alpha * exp(-beta * dt)``, with
    ``dt`` the steps since the neuron's last spike."""
    return alpha * torch.exp(-beta * dt)


def linear_grad(u: torch.Tensor, alpha: float = 0.3) -> torch.Tensor:
    """The linear (triangle) surrogate: ``alpha * max(0, 1 - |u - 1|)`` at normalized
    membrane ``u = v / theta``; largest at the threshold, zero at 0 and 2 thresholds."""
    return alpha * torch.clamp(1.0 - (u - 1.0).abs(), min=0.0)


@dataclass(frozen=True)
class Surrogate:
    """The derivative used for d spike / d (v / theta)."""

    kind: str = "exp"
    alpha: float = 0.3
    beta: float = 0.01

    def check(self) -> None:
        if self.kind not in SURROGATES:
            raise UsageError(f"unknown --surrogate '{self.kind}'", f"use one of {', '.join(SURROGATES)}")
        if not self.alpha > 0:
            raise UsageError(f"--surrogate-alpha must be > 0, got {self.alpha}")
        if self.beta < 0:
            raise UsageError(f"--surrogate-beta must be >= 0, got {self.beta}")

    def grad(self, u: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        if self.kind == "exp":
            return stdb_grad(dt, self.alpha, self.beta)
        return linear_grad(u, self.alpha)


def surrogate_from(opts: TrainOptions, default_kind: str) -> Surrogate:
    """The surrogate a :class:`.ptl.TrainOptions` asks for (unset fields: defaults)."""
    s = Surrogate(opts.surrogate or default_kind,
                  0.3 if opts.surrogate_alpha is None else float(opts.surrogate_alpha),
                  0.01 if opts.surrogate_beta is None else float(opts.surrogate_beta))
    s.check()
    return s


def fixed_thresholds(opts: TrainOptions) -> TrainOptions:
    """``opts`` with the per-stage threshold recalibration off: ltl and stdb set the
    thresholds themselves before training."""
    import dataclasses

    return dataclasses.replace(opts, recalibrate=False)


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

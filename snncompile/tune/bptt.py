"""Surrogate-gradient backpropagation through time over the exact integer forward.

The forward is the reference simulator's own evaluator (:func:`..sim.evaluator.run_window`,
traced), so the integers a training batch runs on (weights, currents, membranes, spikes, the
output accumulator) are the simulator's. Gradients reach the float weights along two
straight-through paths whose forward value is exactly zero (``a - a.detach()``), so they
never perturb an integer:

* a weighted op uses ``weight_int + (w_real * s_in / s_out - itself.detach())``: the
  gradient of an integer weight is passed to its float weight (and likewise for biases);
* an IF layer emits ``spike + g * (u - u.detach())`` with ``u = v / theta`` the normalized
  membrane and ``g`` the surrogate derivative (:class:`.surrogate.Surrogate`). The reset is
  detached (gradients do not flow through the reset), the membrane carries them through time.

Used by the ``stdb`` method (full BPTT, loss at the output) and the ``ltl`` method (each
layer's input detached, a local loss per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..ir import Graph, IFNode
from ..sim.evaluator import Traced, WindowResult, run_window
from ..sim.neurons import SpikeStep
from ..sim.simulator import quantized_input
from .ann_path import unit_scales
from .model import TandemNet
from .surrogate import Surrogate


@dataclass(frozen=True)
class SurrogateIF:
    """IF layers whose spikes carry a surrogate gradient: ``d spike / d u = g`` at the
    normalized membrane ``u``. With ``detach_output`` the spikes passed on to the next
    layers carry none (LTL: each layer learns from its own loss only); the counts do."""

    surrogate: Surrogate
    detach_output: bool = False

    def step(self, n: IFNode) -> SpikeStep:
        """Layer ``n``'s spike step for the simulator (:class:`..sim.evaluator.Traced`);
        ``dt`` counts steps since the neuron's last spike, from step -1 before its first."""
        if n.spikes != "binary":  # the pipeline refuses ltl/stdb with --spikes signed first
            raise ValueError(f"IF layer '{n.name}': the surrogate gradient has no negative spike")
        last: list[torch.Tensor] = []

        def spike(t: int, u: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
            if not last:
                last.append(torch.full(u.shape, -1.0, dtype=torch.float64, device=u.device))
            g = self.surrogate.grad(u.detach(), t - last[0])
            last[0] = torch.where(fired > 0, torch.full_like(last[0], float(t)), last[0])
            return fired + g * (u - u.detach())

        return spike


def surrogate_if(surrogate: Surrogate, detach_output: bool = False) -> SurrogateIF:
    """IF layers with ``surrogate``'s gradient (see :class:`SurrogateIF`)."""
    return SurrogateIF(surrogate, detach_output)


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
                bc = net.bias[k].to(torch.float64) / torch.as_tensor(s_out.reshape(-1), device=dev)
                b = b + (bc - bc.detach()).reshape(b.shape)
        out[name] = (w, b)
    return out


def forward(net: TandemNet, x: torch.Tensor, spiking: SurrogateIF) -> tuple[torch.Tensor, WindowResult]:
    """Output (``scale * acc / T``, as :class:`TandemNet` returns at its last stage) and the
    integer result of the whole network, differentiable through ``spiking``'s surrogate."""
    if net.stage != net.n_stages:
        raise ValueError("surrogate-gradient training runs the whole network spiking (last stage)")
    g, _ = net._current()
    params = ste_params(net, g)
    traced = Traced(weights=lambda n: params[n.name], spike=spiking.step, detach_spikes=spiking.detach_output)
    res = run_window(g, quantized_input(g, x), net.T, traced=traced)
    o = g.outputs[0]
    s = torch.as_tensor(np.asarray(g[o].out_scale, np.float64), device=x.device)
    return (res.acc[o] * s / net.T).to(torch.float32), res

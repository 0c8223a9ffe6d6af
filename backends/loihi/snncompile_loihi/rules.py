"""Loihi-specific design rules, checked on the folded network (see network.py).

Each rule is a small named function from (network, limits) to violations; ``check`` runs them
all after the generic rules so every problem is reported at once. Also the per-layer core
estimate that ``run`` reports.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from snncompile.ir import Graph
from snncompile.plugin import RULES, Limits, Violation, check_limits

from . import limits as L
from .network import Network, bias_digits

NetRule = Callable[[Network, Limits], list[Violation]]


def _rule_folded_weights(net: Network, lim: Limits) -> list[Violation]:
    out = []
    for c in net.connections:
        m = int(np.abs(c.weight).max(initial=0))
        if m > L.WEIGHT_MAX and c.ir_weight_max <= L.WEIGHT_MAX:  # else the generic rule says it
            out.append(Violation(c.dst, f"folded weight from '{c.src}' (|w|)", m, L.WEIGHT_MAX,
                                 "--bits 8, and no overlapping pools or two weighted layers in a "
                                 "row (their product needs wider weights)"))
    return out


def _rule_v_init(net: Network, lim: Limits) -> list[Violation]:
    out = []
    for p in net.populations:
        top = 2 ** (min(p.membrane_bits, L.MEMBRANE_BITS) - 1) - 1
        m = int(np.abs(p.v_init).max(initial=0))
        if m > top:
            out.append(Violation(p.name, "initial membrane", m, top, "--v-init zero"))
    return out


def input_bound(net: Network) -> int:
    """Largest |charge| one input element delivers in one step."""
    q = 2 ** (net.input_bits - 1) - 1
    return q * (net.timesteps if net.input_mode == "once" else 1)


def _rule_input_message(net: Network, lim: Limits) -> list[Violation]:
    top = 2 ** (L.MESSAGE_BITS - 1) - 1
    out = []
    b = input_bound(net)
    if b > top:
        out.append(Violation(net.input_name, f"input charge per step ({L.MESSAGE_BITS}-bit graded spike)",
                             b, top, "fewer --input-bits, fewer --timesteps, or --input-mode every_step"))
    for s in net.bias_sources:
        m = int(bias_digits(s.charge(net.timesteps))[1].max())
        if m > top:
            out.append(Violation(s.dst, f"bias as graded spikes ({L.MESSAGE_BITS}-bit payload)", m, top,
                                 "fewer --timesteps or --input-mode every_step (a per-step bias)"))
    return out


def current_bound(net: Network, name: str) -> int:
    """Largest |current| a neuron of population (or output) ``name`` can receive in one step:
    its incoming weights' absolute row sums times the largest value of each source, plus a
    bias that arrives as graded spikes (all of a first-step one in one step). A bias held in
    the neuron's own bias register adds to v, not to the current, and is not counted."""
    total = 0
    for c in net.incoming(name):
        w = np.abs(np.asarray(c.weight, np.int64))
        rows = int(w.reshape(w.shape[0], -1).sum(axis=1).max(initial=0))
        total += rows * (input_bound(net) if c.src == net.input_name else 1)
    for s in net.bias_sources:
        if s.dst == name:
            total += int(np.abs(s.charge(net.timesteps)).max(initial=0))
    return total


def _rule_current_register(net: Network, lim: Limits) -> list[Violation]:
    """Lava's LIF adds ``a_in << 6`` to a 24-bit current register that wraps: a step's input
    beyond 2^17 - 1 would wrap silently, so a network whose weights allow it is refused."""
    out = []
    for p in list(net.populations) + list(net.outputs):
        b = current_bound(net, p.name)
        if b > L.CURRENT_MAX:
            fix = ("--input-mode every_step (once injects T times the charge in one step), "
                   "fewer --input-bits or --bits" if net.input_mode == "once" else
                   "fewer --input-bits or --bits, or a smaller --fanin")
            out.append(Violation(p.name, "input current per step (24-bit register)", b,
                                 L.CURRENT_MAX, fix))
    return out


def input_width_violations(net: Network, graph: Graph) -> list[Violation]:
    """The violations a narrower input fixes: the input's graded spike, and the current,
    threshold and initial membrane of the populations the input feeds (their threshold is
    the activation scale over the input's scale, so it shrinks with the input width). The
    target profile fits --input-bits with these."""
    fed = {p.name for p in list(net.populations) + list(net.outputs)
           if any(c.src == net.input_name for c in net.incoming(p.name))}
    out = [v for v in _rule_input_message(net, Limits()) if v.layer == net.input_name]
    out += check_limits(graph, Limits(threshold_bits=L.THRESHOLD_BITS), rules=(RULES["threshold_bits"],))
    out += _rule_v_init(net, Limits()) + _rule_current_register(net, Limits())
    return [v for v in out if v.layer in fed or v.layer == net.input_name]


def _rule_problems(net: Network, lim: Limits) -> list[Violation]:
    return list(net.problems)


def core_estimate(net: Network, lim: Limits) -> dict[str, int]:
    """Cores per layer: enough for its neurons and for its incoming synapses (non-zero
    weights), whichever needs more."""
    out = {}
    for p in list(net.populations) + list(net.outputs):
        syn = sum(c.synapses for c in net.incoming(p.name))
        syn += sum(int(np.count_nonzero(bias_digits(s.charge(net.timesteps))[0]))
                   for s in net.bias_sources if s.dst == p.name)
        by_neurons = -(-p.size // (lim.neurons_per_core or p.size))
        by_synapses = -(-syn // (lim.synapses_per_core or max(syn, 1)))
        out[p.name] = max(1, by_neurons, by_synapses)
    return out


def _rule_cores(net: Network, lim: Limits) -> list[Violation]:
    if lim.cores is None:
        return []
    est = core_estimate(net, lim)
    need = sum(est.values())
    if need <= lim.cores:
        return []
    worst = max(est, key=est.__getitem__)
    return [Violation("(all)", "cores needed (neurons and synapses per core)", need, lim.cores,
                      f"a smaller model (largest layer: '{worst}', {est[worst]} cores)")]


NET_RULES: tuple[NetRule, ...] = (_rule_problems, _rule_folded_weights, _rule_v_init,
                                  _rule_input_message, _rule_current_register, _rule_cores)


def check_network(net: Network, lim: Limits) -> list[Violation]:
    out: list[Violation] = []
    for rule in NET_RULES:
        out.extend(rule(net, lim))
    return out

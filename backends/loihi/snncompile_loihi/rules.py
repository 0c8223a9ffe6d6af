"""Loihi-specific design rules, checked on the lowered network (see network.py).

Each rule is a small named function from (network, limits) to violations; ``check`` runs them
all after the generic rules so every problem is reported at once. Cores and chips are
counted on the graph, before any folding (capacity.py).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from snncompile.ir import Graph
from snncompile.plugin import RULES, Limits, Violation, check_limits

from . import limits as L
from .encode import DoesNotFit, payload_code, vth_code, weight_code
from .network import Network, bias_digits

NetRule = Callable[[Network, Limits], list[Violation]]


def _rule_weights(net: Network, lim: Limits) -> list[Violation]:
    """Every connection's weights as the artifact holds them: an 8-bit mantissa and one
    exponent per connection (:func:`~snncompile_loihi.encode.weight_code`, which the emitter
    uses). Weights whose IR mantissa is already too wide are the generic rule's to report."""
    out = []
    for c in net.connections:
        try:
            weight_code(c.weight)
        except DoesNotFit as e:
            if c.ir_weight_max > L.WEIGHT_MAX:
                continue
            folded = "folded weight" if c.kind == "dense" else "weight"
            out.append(Violation(c.dst, f"{folded} from '{c.src}' ({e.what})", e.value, e.limit,
                                 "--weight-exp 0 with --bits 8, and no overlapping pools or two "
                                 "weighted layers in a row (their product needs wider weights)"))
    return out


def _rule_thresholds(net: Network, lim: Limits) -> list[Violation]:
    """``vth = theta - 1`` as the emitter writes it (the generic rule bounds theta's width)."""
    out = []
    for p in net.populations:
        try:
            vth_code(p.theta)
        except DoesNotFit as e:
            if e.limit == 1:  # too wide is the generic threshold rule's to report
                out.append(Violation(p.name, e.what, e.value, e.limit, "thresholds of at least 1"))
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
    out = []
    try:
        payload_code(np.array([input_bound(net)]))
    except DoesNotFit as e:
        out.append(Violation(net.input_name, f"input charge per step ({L.MESSAGE_BITS}-bit graded spike)",
                             e.value, e.limit, "fewer --input-bits, fewer --timesteps, or --input-mode every_step"))
    for s in net.bias_sources:
        try:
            payload_code(bias_digits(s.charge(net.timesteps))[1])
        except DoesNotFit as e:
            out.append(Violation(s.dst, f"bias as graded spikes ({L.MESSAGE_BITS}-bit payload)", e.value,
                                 e.limit, "fewer --timesteps or --input-mode every_step (a per-step bias)"))
    return out


def current_bound(net: Network, name: str) -> int:
    """Largest |current| a neuron of population (or output) ``name`` can receive in one step:
    its incoming weights' absolute row sums times the largest value of each source, plus a
    bias that arrives as graded spikes (all of a first-step one in one step). A bias held in
    the neuron's own bias register adds to v, not to the current, and is not counted. A
    spike brings at most 1 x |w|, a signed one (-1) too. For an output split into
    accumulators (``split_outputs``): the largest of theirs."""
    total = {0: 0}
    for c in net.incoming(name):
        total[c.part] = total.get(c.part, 0) + \
            c.row_bound() * (input_bound(net) if c.src == net.input_name else 1)
    for s in net.bias_sources:
        if s.dst == name:
            total[0] += int(np.abs(s.charge(net.timesteps)).max(initial=0))
    return max(total.values())


def _rule_current_register(net: Network, lim: Limits) -> list[Violation]:
    """A neuron's input in one step travels through 16-bit ports (Lava's LIF ``a_in`` and
    Dense ``a_out`` are declared 16-bit; Loihi's synapse accumulator, as nengo-loihi models
    it, holds 21 bits plus sign after the 6-bit shift): a step's input beyond 2^15 - 1 would
    not arrive exactly, so a network whose weights allow it is refused."""
    out = []
    for p in list(net.populations) + list(net.outputs):
        b = current_bound(net, p.name)
        if b > L.CURRENT_MAX:
            fix = ("--input-mode every_step (once injects T times the charge in one step), "
                   "fewer --input-bits or --bits" if net.input_mode == "once" else
                   "fewer --input-bits or --bits, or a smaller --fanin")
            out.append(Violation(p.name, "input current per step (16-bit a_in port)", b,
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


def _rule_pool_counters(net: Network, lim: Limits) -> list[Violation]:
    """A max pool's spike counters (and running maxima) must hold a count of T: at most
    ``2^count_bits - 1``; and be no wider than a neuron state register."""
    out = []
    for p in net.pools:
        if p.count_bits > L.MAXPOOL_COUNT_BITS_MAX:
            out.append(Violation(p.name, "max pool counter bits", p.count_bits, L.MAXPOOL_COUNT_BITS_MAX,
                                 f"--target-option maxpool_count_bits={L.MAXPOOL_COUNT_BITS_MAX} or less"))
            continue
        top = (1 << p.count_bits) - 1
        if net.timesteps > top:
            out.append(Violation(p.name, f"time steps a {p.count_bits}-bit max pool spike counter holds",
                                 net.timesteps, top,
                                 f"--timesteps {top} or fewer, or --target-option maxpool_count_bits="
                                 f"{min(net.timesteps.bit_length(), L.MAXPOOL_COUNT_BITS_MAX)}"))
    return out


def _rule_problems(net: Network, lim: Limits) -> list[Violation]:
    return list(net.problems)


NET_RULES: tuple[NetRule, ...] = (_rule_problems, _rule_weights, _rule_thresholds, _rule_v_init,
                                  _rule_input_message, _rule_current_register, _rule_pool_counters)


def check_network(net: Network, lim: Limits) -> list[Violation]:
    out: list[Violation] = []
    for rule in NET_RULES:
        out.extend(rule(net, lim))
    return out

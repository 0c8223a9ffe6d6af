"""The design rules: what a target can hold (:class:`Limits`), how a graph breaks it
(:class:`Violation`), and the generic rules that find every violation at once.

This is the one list of limit rules: backends check a graph with it (through
:func:`check_limits`, re-exported by :mod:`snncompile.plugin`), and conversion and tuning
check ``--bits`` and ``--fanin`` with the same rules (:func:`violations`),
so a tuned graph meets exactly what a backend later checks. Fan-in is counted for the layers
of :func:`snncompile.ir.structure.fanin_layers`, as :func:`~snncompile.ir.structure.population_fanin`
counts it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import SnnCompileError
from ..ir import Graph, IFNode, InputNode, WeightedNode, membrane_overflows
from ..ir.options import MEMBRANE_BITS_RANGE
from ..ir.structure import fanin_layers, population_fanin, populations, weight_bits


@dataclass(frozen=True)
class Limits:
    """What a target can hold, as data. ``None`` means unlimited (or not known)."""

    weight_bits: int | None = None          # signed weight width
    fan_in: int | None = None               # synapses into one neuron
    neurons_per_core: int | None = None
    synapses_per_core: int | None = None
    cores: int | None = None                # cores available in total
    membrane_bits: int | None = None
    threshold_bits: int | None = None       # unsigned threshold width
    reset_modes: tuple[str, ...] = ("subtract", "zero")
    input_modes: tuple[str, ...] = ("once", "every_step")
    spike_modes: tuple[str, ...] = ("binary",)  # "signed": the target carries -1 spikes too
    delay_per_layer: int = 0                # steps each synaptic connection delays a spike
    sources: Mapping[str, str] = field(default_factory=dict)  # limit name -> where the number is from

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reset_modes"] = list(self.reset_modes)
        d["input_modes"] = list(self.input_modes)
        d["spike_modes"] = list(self.spike_modes)
        d["sources"] = dict(self.sources)
        return d


@dataclass(frozen=True)
class Violation:
    """One way a graph breaks a limit: which layer, which quantity, the value, the limit, and
    the option that fixes it."""

    layer: str
    quantity: str
    value: Any
    limit: Any
    fix: str

    def __str__(self) -> str:
        if _is_number(self.value) and _is_number(self.limit):
            return (f"layer '{self.layer}': {self.quantity} ({self.value}) exceeds max ({self.limit}); "
                    f"fix: {self.fix}")
        allowed = " or ".join(self.limit.split("/")) if isinstance(self.limit, str) else self.limit
        return (f"layer '{self.layer}': {self.quantity} is {self.value}, where the target takes "
                f"{allowed}; fix: {self.fix}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LimitError(SnnCompileError):
    """The graph does not fit the target; ``violations`` lists every broken limit."""

    exit_code = 6

    def __init__(self, target: str, violations: list[Violation]):
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"the network does not fit target '{target}' "
                         f"({len(violations)} violation{'s' if len(violations) != 1 else ''}):\n{lines}")
        self.target = target
        self.violations = violations

    def __str__(self) -> str:
        return self.message


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


# --- the generic limit rules -----------------------------------------------------------------
# Each rule is a small function from (graph, limits) to violations; backends with rules of
# their own add them in Backend.check.

Rule = Callable[[Graph, Limits], list[Violation]]


def _rule_weight_bits(g: Graph, lim: Limits) -> list[Violation]:
    if lim.weight_bits is None:
        return []
    return [Violation(n.name, "weight bits", weight_bits(n), lim.weight_bits,
                      f"--bits {lim.weight_bits}")
            for n in g.nodes if isinstance(n, WeightedNode) and weight_bits(n) > lim.weight_bits]


def _rule_fan_in(g: Graph, lim: Limits) -> list[Violation]:
    if lim.fan_in is None:
        return []
    out = []
    for name in fanin_layers(g):
        f = population_fanin(g, name)
        if f > lim.fan_in:
            out.append(Violation(name, "fan-in", f, lim.fan_in, f"--fanin {lim.fan_in}"))
    return out


def _rule_threshold_bits(g: Graph, lim: Limits) -> list[Violation]:
    if lim.threshold_bits is None:
        return []
    top = 2 ** lim.threshold_bits - 1
    return [Violation(n.name, "threshold", int(np.max(n.threshold)), top,
                      "fewer --bits (thresholds scale with the weights) or a lower --input-bits")
            for n in g.nodes if isinstance(n, IFNode) and int(np.max(n.threshold)) > top]


def _rule_membrane_bits(g: Graph, lim: Limits) -> list[Violation]:
    if lim.membrane_bits is None:
        return []
    return [Violation(n.name, "membrane bits", n.membrane_bits, lim.membrane_bits,
                      f"--membrane-bits {lim.membrane_bits}")
            for n in g.nodes if isinstance(n, IFNode) and n.membrane_bits > lim.membrane_bits]


def _rule_membrane_range(g: Graph, lim: Limits) -> list[Violation]:
    """Thresholds and initial membranes past the layer's own membrane width (a neuron that
    could never fire): a fault of the graph on every target, the reference simulator
    included, so :func:`snncompile.targets.select.check_fit` applies it to all of them. The
    fix is the width that holds the value where the target (``lim.membrane_bits``, else what
    --membrane-bits takes) allows it; thresholds also shrink with fewer --bits."""
    widest = min(lim.membrane_bits or MEMBRANE_BITS_RANGE[1], MEMBRANE_BITS_RANGE[1])
    out = []
    for n in g.nodes:
        if not isinstance(n, IFNode):
            continue
        for field_name, reach, top in membrane_overflows(n):
            need = reach.bit_length() + 1  # a sign bit
            lower = "fewer --bits (thresholds scale with the weights) or a lower --input-bits"
            fix = f"--membrane-bits {need}, or {lower}" if need <= widest else lower
            what = "threshold" if field_name == "threshold" else "initial membrane"
            out.append(Violation(n.name, f"{what} in its {n.membrane_bits}-bit membrane", reach, top, fix))
    return out


def _rule_modes(g: Graph, lim: Limits) -> list[Violation]:
    out = []
    for n in g.nodes:
        if isinstance(n, IFNode) and n.reset not in lim.reset_modes:
            out.append(Violation(n.name, "reset mode", n.reset, "/".join(lim.reset_modes),
                                 f"--reset {lim.reset_modes[0]}"))
        if isinstance(n, IFNode) and n.spikes not in lim.spike_modes:
            out.append(Violation(n.name, "spikes", n.spikes, "/".join(lim.spike_modes),
                                 f"--spikes {lim.spike_modes[0]}"))
        if isinstance(n, InputNode) and n.mode not in lim.input_modes:
            out.append(Violation(n.name, "input mode", n.mode, "/".join(lim.input_modes),
                                 f"--input-mode {lim.input_modes[0]}"))
    return out


def _rule_neurons(g: Graph, lim: Limits) -> list[Violation]:
    """Cores needed when every population is split over cores of ``neurons_per_core``."""
    if lim.neurons_per_core is None or lim.cores is None:
        return []
    need = sum(-(-p.neurons // lim.neurons_per_core) for p in populations(g))
    if need <= lim.cores:
        return []
    return [Violation("(all)", "cores needed", need, lim.cores,
                      "a smaller model (fewer channels or units)")]


GENERIC_RULES: tuple[Rule, ...] = (_rule_weight_bits, _rule_fan_in, _rule_threshold_bits,
                                   _rule_membrane_bits, _rule_modes, _rule_neurons)

# The same rules by name, so a backend with a finer rule of its own (say, a mapper that
# counts cores exactly) can keep the others: check_limits(g, lim, name, rules=(RULES["modes"], ...)).
RULES: dict[str, Rule] = {"weight_bits": _rule_weight_bits, "fan_in": _rule_fan_in,
                          "threshold_bits": _rule_threshold_bits,
                          "membrane_bits": _rule_membrane_bits, "modes": _rule_modes,
                          "neurons": _rule_neurons, "membrane_range": _rule_membrane_range}


def check_limits(graph: Graph, limits: Limits, target: str = "",
                 rules: tuple[Rule, ...] = GENERIC_RULES) -> list[Violation]:
    """Every violation of ``limits`` by ``graph`` (an empty list when it fits)."""
    out: list[Violation] = []
    for rule in rules:
        out.extend(rule(graph, limits))
    return out


def violations(graph: Graph, bits: int | None = None, fanin: int | None = None) -> list[str]:
    """Every way a converted graph breaks ``--bits`` and ``--fanin``, one line each (empty
    when it meets them), found by the very rules a backend checks (:data:`RULES`
    ``weight_bits`` and ``fan_in``): conversion and tuning check their result with it."""
    out = [f"layer '{n.name}' has no integer weights" for n in graph.nodes
           if isinstance(n, WeightedNode) and n.weight_int is None]
    found = check_limits(graph, Limits(weight_bits=bits, fan_in=fanin),
                         rules=(RULES["weight_bits"], RULES["fan_in"]))
    return out + [str(v) for v in found]

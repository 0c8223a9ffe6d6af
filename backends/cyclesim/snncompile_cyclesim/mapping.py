"""Mapping populations onto cores: contiguous unit ranges of equal size, as many units per
core as fit its neurons, axons (distinct presynaptic units) and synapse memory.

The slice size is decided on the graph alone (:func:`snncompile.plugin.largest_slice` with
the folded counts of :mod:`snncompile.targets.footprint`: upper bounds, no synapse matrix),
so a ResNet-50-size network maps in seconds and bounded memory; :func:`recount` then puts
each core's exact axons and synapses from the lowered projections into the artifact
(counted on the operators, convolutions included, without building their matrices).

One core holds units of one population only (a common restriction: a core runs one neuron
model with one set of parameters). A unit that alone exceeds a core's axons or synapses
cannot be mapped at all; :func:`unit_violations` reports it before lowering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from snncompile.ir import Graph, IFNode, MaxPool2dNode
from snncompile.plugin import (Chain, Footprint, StructuredNetwork, Violation, demand, largest_slice,
                               layer_footprints)

from .arch import Architecture


@dataclass
class Core:
    """One core: population ``population``, units [start, stop), its axons and synapses."""

    index: int
    population: str
    start: int
    stop: int
    axons: int
    synapses: int

    def as_dict(self) -> dict:
        return asdict(self)


def _fits(arch: Architecture):
    return lambda d: (d.units <= arch.neurons_per_core and d.axons <= arch.axons_per_core
                      and d.synapses <= arch.synapses_per_core)


def slice_size(fp: Footprint, arch: Architecture) -> int:
    """Units of ``fp`` per core: as many as one core holds (0: not even one unit fits)."""
    return largest_slice(fp, _fits(arch))


def map_population(fp: Footprint, arch: Architecture, first_index: int) -> list[Core]:
    """Equal slices of one population (the last one shorter), as large as one core holds."""
    n = slice_size(fp, arch)
    if n == 0:
        return []
    d = demand(fp, n)
    return [Core(first_index + k, fp.name, lo, min(lo + n, fp.units), d.axons, d.synapses)
            for k, lo in enumerate(range(0, fp.units, n))]


def _footprints(graph: Graph) -> list[Footprint]:
    """Every population but the input, as flatten_network names them: a spiking output
    also gets its accumulator ``<name>.acc`` (one synapse per unit from the layer)."""
    fps = layer_footprints(graph)
    spiking = {o for o in graph.outputs if isinstance(graph[o], (IFNode, MaxPool2dNode))}
    for name in graph.outputs:
        if name in spiking:  # flatten_network's accumulator of a spiking output
            shape = tuple(int(d) for d in graph[name].shape)
            one = (Chain(name, shape, "conv", 1, 1, kernel=1, grouped=True, weight_max=1)
                   if len(shape) == 3 else
                   Chain(name, shape, "dense", 1, 1, rows=np.ones(int(np.prod(shape)), np.int64),
                         axons=int(np.prod(shape)), weight_max=1))
            fps.append(Footprint(f"{name}.acc", shape, 1, [one]))
    return fps


def cores_per_population(graph: Graph, arch: Architecture) -> dict[str, int]:
    """How many cores :func:`map_network` gives each population, without listing them."""
    out = {}
    for fp in _footprints(graph):
        n = slice_size(fp, arch)
        if n:
            out[fp.name] = -(-fp.units // n)
    return out


def neuron_bound(graph: Graph, arch: Architecture) -> int:
    """A lower bound of the cores :func:`map_network` gives ``graph``: a core holds at most
    ``neurons_per_core`` units of one population, and axons and synapses only make a slice
    smaller. No conversion option changes the units, and the imported ANN has the same
    populations (its ReLUs are the IF layers to be), so it decides before calibration."""
    return sum(-(-fp.units // arch.neurons_per_core) for fp in _footprints(graph))


def cores_violation(need: int, arch: Architecture, at_least: bool = False) -> Violation:
    """The network needs ``need`` cores, more than the architecture has (``at_least``:
    ``need`` is :func:`neuron_bound`'s lower bound, and the figure says so)."""
    return Violation("(all)", "cores needed" + (" at least, by neurons alone" if at_least else ""), need,
                     arch.cores, f"a smaller model, or --target-option cores={need}"
                     + (" or more (or larger neurons_per_core)" if at_least
                        else " (or larger neurons_per_core/synapses_per_core)"))


def map_network(graph: Graph, arch: Architecture) -> list[Core]:
    """Cores for every population except the input (which arrives from off-core)."""
    cores: list[Core] = []
    for fp in _footprints(graph):
        cores.extend(map_population(fp, arch, len(cores)))
    return cores


def recount(cores: list[Core], net: StructuredNetwork, progress=None) -> list[Core]:
    """The cores with their exact axons and synapses, counted on the lowered projections
    (one population's per-row synapse counts in memory at a time)."""
    out: list[Core] = []
    by_pop: dict[str, list[Core]] = {}
    for c in cores:
        by_pop.setdefault(c.population, []).append(c)
    for name, group in by_pop.items():
        pop = net.population(name)
        projs = [(pr.op, np.concatenate([[0], np.cumsum(pr.op.row_synapses())])) for pr in net.into(name)]
        for c in group:
            lo, hi = c.start * pop.slots, c.stop * pop.slots
            axons = sum(op.axons(lo, hi) for op, _ in projs)
            syn = sum(int(cum[hi] - cum[lo]) for _, cum in projs)
            out.append(Core(c.index, name, c.start, c.stop, axons, syn))
        if progress is not None:
            progress(name)
    return sorted(out, key=lambda c: c.index)


def unit_violations(graph: Graph, arch: Architecture) -> list[Violation]:
    """Units whose own synapses or axons exceed one core, and synaptic weights (composed
    through sum pools) wider than the architecture's weights."""
    out: list[Violation] = []
    top = 2 ** (arch.weight_bits - 1) - 1
    for fp in _footprints(graph):
        d = demand(fp, 1)
        if d.synapses > arch.synapses_per_core:
            out.append(Violation(fp.name, "synapses of one neuron", d.synapses, arch.synapses_per_core,
                                 f"--fanin {arch.synapses_per_core}, or --target-option "
                                 f"synapses_per_core={d.synapses}"))
        if d.axons > arch.axons_per_core:
            out.append(Violation(fp.name, "axons (fan-in) of one neuron", d.axons, arch.axons_per_core,
                                 f"--fanin {arch.axons_per_core}, or --target-option axons_per_core={d.axons}"))
        if fp.weight_max > top:
            out.append(Violation(fp.name, "synaptic weight (composed through sum pools)", fp.weight_max, top,
                                 f"--bits {arch.weight_bits}, or --target-option weight_bits="
                                 f"{fp.weight_max.bit_length() + 1}"))
    return out

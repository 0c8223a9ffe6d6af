"""How many Loihi 2 cores and chips a network needs, decided from the graph alone.

Each layer is cut into slices of consecutive neurons, one slice per core, as large as one
core holds (:func:`snncompile.plugin.largest_slice`): a core has ``neurons_per_core``
compartments and one memory of ``memory_kib`` shared by neuron state, stored weights and
axon tables (Intel: the core SRAM is "flexibly partitioned"). With weight sharing, a
convolution's kernel is stored once per core and its input arrives on one axon per source
channel; a sum pool in front of a weighted layer merges its window onto one axon
(:mod:`snncompile.targets.footprint`). Cores are filled chip by chip in layer order, so a
layer spans the chips its cores land on.

Which numbers are published, derived or assumed is in :data:`snncompile_loihi.limits.SOURCES`
and docs/loihi.md; every one is a ``--target-option``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snncompile.ir import Graph, MaxPool2dNode
from snncompile.plugin import Demand, Footprint, Violation, demand, largest_slice, layer_footprints

from . import limits as L


@dataclass
class LayerMap:
    """One layer's share of the system: cores, the chips they span, neurons per core, and
    the figures of its fullest core."""

    name: str
    cores: int
    first_core: int
    chips: int
    units_per_core: int
    fanin: int
    folded_fanin: int
    memory_bits: int        # of the fullest core
    stored: int             # weights stored on the fullest core

    def resources(self) -> dict[str, int]:
        return {"cores": self.cores, "chips": self.chips}


@dataclass
class ChipMapping:
    """Every layer's cores and chips, the totals, and what could not be mapped."""

    layers: list[LayerMap] = field(default_factory=list)
    cores: int = 0
    chips: int = 0
    problems: list[Violation] = field(default_factory=list)

    def resources(self) -> dict[str, dict[str, int]]:
        return {m.name: m.resources() for m in self.layers}

    def as_dict(self) -> dict[str, Any]:
        return {"cores": self.cores, "chips": self.chips,
                "layers": {m.name: {"cores": m.cores, "chips": m.chips, "first_core": m.first_core,
                                    "units_per_core": m.units_per_core, "fanin": m.fanin,
                                    "memory_bits": m.memory_bits} for m in self.layers}}


def core_bits(fp: Footprint, d: Demand, o: dict[str, int], pool: bool = False) -> int:
    """Bits of core memory a slice takes: neuron state, stored weights, input axon table,
    and one output axon entry per neuron and layer its spikes reach. A max pool's state
    (``pool``) is a spike counter per compartment plus a running maximum per unit, each
    ``maxpool_count_bits`` wide (assumed; limits.SOURCES["maxpool"])."""
    state = ((d.compartments + d.units) * o["maxpool_count_bits"] if pool else
             d.compartments * o["neuron_bits"])
    return (state + d.stored * o["synapse_bits"]
            + (d.shared_axons + d.units * fp.consumers) * o["axon_bits"])


def _fits(fp: Footprint, o: dict[str, int], pool: bool = False):
    mem = o["memory_kib"] * 1024 * 8

    def fits(d: Demand) -> bool:
        return (d.compartments <= o["neurons_per_core"] and core_bits(fp, d, o, pool) <= mem
                and d.stored <= o["synapses_per_core"] and d.shared_axons <= o["in_axons_per_core"])
    return fits


def _unmappable(fp: Footprint, o: dict[str, int], pool: bool = False) -> Violation:
    """Why not even one neuron of ``fp`` fits a core: the first figure that breaks."""
    d = demand(fp, 1)
    fix = "--fanin N (fewer synapses per neuron), or "
    if d.compartments > o["neurons_per_core"]:
        return Violation(fp.name, "compartments of one unit", d.compartments, o["neurons_per_core"],
                         "a smaller pooling window")
    if d.stored > o["synapses_per_core"]:
        return Violation(fp.name, "weights one core stores for one neuron", d.stored,
                         o["synapses_per_core"], fix + f"--target-option synapses_per_core={d.stored}")
    if d.shared_axons > o["in_axons_per_core"]:
        return Violation(fp.name, "input axons of one neuron's core", d.shared_axons,
                         o["in_axons_per_core"], fix + f"--target-option in_axons_per_core={d.shared_axons}")
    bits = core_bits(fp, d, o, pool)
    return Violation(fp.name, "core memory for one neuron (bits: state, weights, axons)", bits,
                     o["memory_kib"] * 8192, fix + f"--target-option memory_kib={-(-bits // 8192)}")


def map_graph(graph: Graph, o: dict[str, int], layers: list[Footprint] | None = None) -> ChipMapping:
    """Cores and chips per layer under options ``o`` (:func:`limits.parse_options`);
    ``layers``: the graph's :func:`layer_footprints` where the caller has them."""
    out = ChipMapping()
    per_chip = o["cores"]
    pools = {n.name for n in graph.nodes if isinstance(n, MaxPool2dNode)}
    for fp in layer_footprints(graph) if layers is None else layers:
        pool = fp.name in pools
        lo = signed_options(graph, fp.name, o)
        n = largest_slice(fp, _fits(fp, lo, pool))
        if n == 0:
            out.problems.append(_unmappable(fp, lo, pool))
            continue
        cores = -(-fp.units // n)
        d = demand(fp, n)
        first = out.cores
        chips = (first + cores - 1) // per_chip - first // per_chip + 1
        out.layers.append(LayerMap(fp.name, cores, first, chips, n, fp.fanin, fp.folded_fanin,
                                   core_bits(fp, d, lo, pool), d.stored))
        out.cores += cores
    out.chips = -(-out.cores // per_chip)
    return out


def signed_options(graph: Graph, name: str, o: dict[str, int]) -> dict[str, int]:
    """The options for layer ``name``: a signed IF layer's neurons hold one more state word,
    the net count that decides a -1 (assumed as wide as u and v, 24 bits: its own figure is
    not published). The +-1 payload travels in the spike message, not in core memory, so
    message bits add nothing to it."""
    n = graph[name] if name in graph else None
    if getattr(n, "spikes", "binary") != "signed":
        return o
    return dict(o, neuron_bits=o["neuron_bits"] + L.SIGNED_STATE_BITS)


def neuron_bound(graph: Graph, o: dict[str, int], layers: list[Footprint] | None = None) -> ChipMapping:
    """A lower bound of :func:`map_graph`'s cores from what no weight changes: a core holds at
    most ``neurons_per_core`` compartments, and each costs its neuron state and an output
    axon entry per consumer in the core's memory (weights and input axons only add). Works
    on the imported ANN as well (its ReLUs are the layers), so before calibration."""
    out = ChipMapping()
    mem = o["memory_kib"] * 1024 * 8
    pools = {n.name for n in graph.nodes if isinstance(n, MaxPool2dNode)}
    for fp in layer_footprints(graph) if layers is None else layers:
        state = ((fp.slots + 1) * o["maxpool_count_bits"] if fp.name in pools
                 else fp.slots * o["neuron_bits"])  # as core_bits counts a max pool's state
        per_unit = state + fp.consumers * o["axon_bits"]
        n = min(o["neurons_per_core"] // fp.slots, mem // per_unit)
        if n < 1:
            out.problems.append(_unmappable(fp, o, fp.name in pools))
            continue
        cores = -(-fp.units // n)
        first = out.cores
        chips = (first + cores - 1) // o["cores"] - first // o["cores"] + 1
        out.layers.append(LayerMap(fp.name, cores, first, chips, n, fp.fanin, fp.folded_fanin,
                                   per_unit * n, 0))
        out.cores += cores
    out.chips = -(-out.cores // o["cores"])
    return out


def smallest_system(chips: int) -> str | None:
    """The named system with the fewest chips that has at least ``chips``."""
    fit = [(n, name) for name, (n, _) in L.SYSTEMS.items() if n >= chips]
    return min(fit)[1] if fit else None


def mapping_violations(m: ChipMapping, o: dict[str, int], at_least: bool = False) -> list[Violation]:
    """Layers no core can hold, and a system too small for the whole network (with the
    smallest named system that holds it); ``at_least``: ``m`` is a lower bound
    (:func:`neuron_bound`), and the figure says so."""
    out = list(m.problems)
    have = o["cores"] * o["chips"]
    if m.cores > have:
        system = smallest_system(m.chips)
        where = (f"--target-option chips={m.chips}" +
                 (f" or system={system} ({L.SYSTEMS[system][0]} chips)" if system else
                  f" (more than the largest named system, {max(v[0] for v in L.SYSTEMS.values())} chips)"))
        worst = max(m.layers, key=lambda x: x.cores)
        out.append(Violation("(all)", f"cores needed{' at least, by neurons alone' if at_least else ''} "
                             f"({o['cores']} per chip x {o['chips']} chip"
                             f"{'s' if o['chips'] != 1 else ''})", m.cores, have,
                             f"{where}; or a smaller model (largest layer: '{worst.name}', "
                             f"{worst.cores} cores)"))
    return out

"""Mapping populations onto cores: contiguous unit ranges, split wherever the next unit
would overflow the core's neurons, axons (distinct presynaptic units) or synapse memory.

One core holds units of one population only (a common restriction: a core runs one neuron
model with one set of parameters). A unit that alone exceeds a core's axons or synapses
cannot be mapped at all; :func:`unit_violations` reports it before lowering.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp

from snncompile.plugin import FlatNetwork, Violation

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


def _unit_rows(net: FlatNetwork, pop: str) -> tuple[list[tuple[str, sp.csr_matrix]], int]:
    p = net.population(pop)
    return [(pr.source, pr.matrix) for pr in net.into(pop)], p.slots


def _unit_cols(mats, slots: int, u: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for src, m in mats:
        lo, hi = m.indptr[u * slots], m.indptr[(u + 1) * slots]
        out.append((src, m.indices[lo:hi]))
    return out


def map_population(net: FlatNetwork, pop: str, arch: Architecture, first_index: int) -> list[Core]:
    """Greedy split of one population into cores (units in order)."""
    mats, slots = _unit_rows(net, pop)
    units = net.population(pop).units
    marks = {src: np.zeros(m.shape[1], bool) for src, m in mats}
    touched: list[tuple[str, np.ndarray]] = []
    cores: list[Core] = []
    start, axons, syn = 0, 0, 0
    for u in range(units):
        cols = _unit_cols(mats, slots, u)
        n_syn = sum(len(c) for _, c in cols)
        new = [(s, np.unique(c[~marks[s][c]])) for s, c in cols]
        n_new = sum(len(c) for _, c in new)
        if u > start and (u - start + 1 > arch.neurons_per_core or axons + n_new > arch.axons_per_core
                          or syn + n_syn > arch.synapses_per_core):
            cores.append(Core(first_index + len(cores), pop, start, u, axons, syn))
            for s, c in touched:
                marks[s][c] = False
            touched, start, axons, syn = [], u, 0, 0
            new = [(s, np.unique(c)) for s, c in cols]
            n_new = sum(len(c) for _, c in new)
        for s, c in new:
            marks[s][c] = True
            touched.append((s, c))
        axons += n_new
        syn += n_syn
    cores.append(Core(first_index + len(cores), pop, start, units, axons, syn))
    return cores


def map_network(net: FlatNetwork, arch: Architecture) -> list[Core]:
    """Cores for every population except the input (which arrives from off-core)."""
    cores: list[Core] = []
    for p in net.populations:
        if p.kind != "input":
            cores.extend(map_population(net, p.name, arch, len(cores)))
    return cores


def unit_violations(net: FlatNetwork, arch: Architecture) -> list[Violation]:
    """Units whose own synapses or axons exceed one core, and synaptic weights (composed
    through sum pools) wider than the architecture's weights."""
    out: list[Violation] = []
    top = 2 ** (arch.weight_bits - 1) - 1
    for p in net.populations:
        if p.kind == "input":
            continue
        mats, slots = _unit_rows(net, p.name)
        if not mats:
            continue
        per_comp = sum(np.diff(m.indptr) for _, m in mats)
        per_unit = per_comp.reshape(p.units, slots).sum(axis=1)
        worst = int(per_unit.max(initial=0))
        if worst > arch.synapses_per_core:
            out.append(Violation(p.node, "synapses of one neuron", worst, arch.synapses_per_core,
                                 f"--fanin {arch.synapses_per_core}, or --target-option "
                                 f"synapses_per_core={worst}"))
        if worst > arch.axons_per_core:  # distinct axons <= synapses; check exactly only if needed
            ax = max(sum(len(np.unique(c)) for _, c in _unit_cols(mats, slots, u)) for u in range(p.units))
            if ax > arch.axons_per_core:
                out.append(Violation(p.node, "axons (fan-in) of one neuron", ax, arch.axons_per_core,
                                     f"--fanin {arch.axons_per_core}, or --target-option axons_per_core={ax}"))
        wmax = max(int(abs(m.data).max(initial=0)) for _, m in mats)
        if wmax > top:
            out.append(Violation(p.node, "synaptic weight (composed through sum pools)", wmax, top,
                                 f"--bits {arch.weight_bits}, or --target-option weight_bits="
                                 f"{wmax.bit_length() + 1}"))
    return out

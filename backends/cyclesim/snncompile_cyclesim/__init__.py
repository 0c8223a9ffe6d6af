"""snncompile backend ``cyclesim``: a cycle-level, event-driven simulator of a configurable
multi-core neuromorphic architecture.

Lowering maps every population onto cores (splitting populations that do not fit a core's
neurons, axons or synapse memory) and stores the mapped network; running simulates it step
by step and event by event, core by core, with spikes identical to the reference simulator,
and reports cycles per step, latency, SynOps, an energy estimate and per-core utilization.
See docs/plugins.md and the architecture defaults in :mod:`snncompile_cyclesim.arch`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from snncompile.plugin import (RULES, Backend, BackendRun, Limits, Profile, Violation, check_limits,
                               structured_network)

from .arch import Architecture
from .engine import combine_stats, run_network
from .mapping import cores_per_population, cores_violation, map_network, neuron_bound, recount, unit_violations
from .store import load, save

__version__ = "1.0.0"
__all__ = ["CycleSimBackend", "Architecture"]


class CycleSimBackend(Backend):
    """Maps a graph onto cores of an :class:`Architecture` and simulates it cycle-level."""

    name = "cyclesim"
    version = __version__
    description = "cycle-level event-driven simulator of a configurable multi-core chip"
    can_run = True

    def __init__(self, options=None):
        super().__init__(options)
        self.arch = Architecture.from_options(self.options)

    def limits(self) -> Limits:
        a = self.arch
        return Limits(weight_bits=a.weight_bits, fan_in=a.axons_per_core, neurons_per_core=a.neurons_per_core,
                      synapses_per_core=a.synapses_per_core, cores=a.cores, membrane_bits=a.membrane_bits,
                      threshold_bits=a.threshold_bits, spike_modes=("binary", "signed"),
                      sources={"*": "cyclesim architecture options (illustrative defaults; --target-option)"})

    def profile(self) -> Profile:
        """The architecture's weight and membrane widths (--target-option weight_bits,
        membrane_bits); every mode is supported."""
        a = self.arch
        return dataclasses.replace(Profile.from_limits(self.limits()),
                                   reasons={"weight_bits": f"{a.weight_bits}-bit synaptic weights",
                                            "membrane_bits": f"{a.membrane_bits}-bit saturating membrane"})

    def check(self, graph) -> list[Violation]:
        """Generic width and mode rules, then the mapper's, on the graph alone (no synapse
        matrix): per-neuron synapses and axons, composed weights, and the cores needed."""
        lim = self.limits()
        out = check_limits(graph, lim, self.name, rules=(RULES["weight_bits"], RULES["threshold_bits"],
                                                         RULES["membrane_bits"], RULES["modes"]))
        unit = unit_violations(graph, self.arch)
        flagged = any(v.quantity == "weight bits" for v in out)
        out += [v for v in unit if not (v.quantity.startswith("synaptic weight") and flagged)]
        if not unit:
            need = sum(cores_per_population(graph, self.arch).values())
            if need > self.arch.cores:
                out.append(cores_violation(need, self.arch))
        return out

    def check_early(self, graph) -> list[Violation]:
        """A chip too small for the model's neurons alone (:func:`~.mapping.neuron_bound`, a
        lower bound of the mapper's cores that no conversion option lowers), decided on the
        imported model before calibration."""
        need = neuron_bound(graph, self.arch)
        return [cores_violation(need, self.arch, at_least=True)] if need > self.arch.cores else []

    def layer_resources(self, graph) -> dict[str, dict[str, int]]:
        """Cores the mapping gives each population."""
        return {k: {"cores": v} for k, v in cores_per_population(graph, self.arch).items()}

    def lower(self, graph, directory: Path, progress=None) -> None:
        """Structured projections (kernels kept), the cores, and each core's exact axons and
        synapses; ``progress`` counts the populations twice (composed, then cores counted)."""
        net = structured_network(graph, progress=None if progress is None else
                                 lambda done, total, what: progress(done, 2 * total, what))
        pops = len(net.populations)
        counted = iter(range(pops + 1, 2 * pops))

        def cores_counted(name: str) -> None:
            if progress is not None:
                progress(next(counted, 2 * pops - 1), 2 * pops, f"{name} (cores)")

        save(Path(directory), net, self.arch, recount(map_network(graph, self.arch), net, cores_counted))
        if progress is not None:
            progress(2 * pops, 2 * pops, "")

    def run(self, directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
        return run_network(load(Path(directory)), x_int, timesteps, record_spikes)

    def combine_stats(self, parts):
        return combine_stats(parts)

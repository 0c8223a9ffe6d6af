"""The architecture model: what a core holds and what each event costs.

The defaults describe a plausible mid-size digital neuromorphic chip, not any one product:
they are illustrative round numbers, set per run with ``--target-option KEY=VALUE``.
The energy defaults are of the order Davies et al. (IEEE Micro 2018) report for Loihi
(about 24 pJ per synaptic operation, 52 pJ per neuron update, a few pJ per spike sent
within a chip); they are not measurements of this model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from snncompile.plugin import UsageError


@dataclass(frozen=True)
class Architecture:
    """A core-based architecture: capacities per core, and cycle and energy costs per event."""

    cores: int = 128                 # cores on the chip
    neurons_per_core: int = 1024     # units (neurons, max-pool units, output accumulators)
    axons_per_core: int = 4096       # distinct presynaptic units that may target one core (fan-in per core)
    synapses_per_core: int = 65536   # synapse memory words per core
    weight_bits: int = 8             # signed synaptic weight width
    membrane_bits: int = 24          # membrane width (saturating)
    threshold_bits: int = 23         # unsigned threshold width
    cycles_per_synop: int = 1        # cycles to apply one synaptic event
    cycles_per_neuron: int = 2       # cycles to update one unit each step
    cycles_per_step: int = 16        # barrier/synchronization cycles at the end of each step
    clock_mhz: float = 100.0
    energy_per_synop_pj: float = 24.0
    energy_per_neuron_pj: float = 52.0
    energy_per_spike_pj: float = 4.0

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> "Architecture":
        """Parse ``--target-option`` values; unknown keys and bad values are usage errors."""
        kinds = {f.name: f.type for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, text in options.items():
            if key not in kinds:
                raise UsageError(f"unknown target option '{key}' for cyclesim",
                                 f"known options: {', '.join(kinds)}")
            conv = float if "float" in str(kinds[key]) else int
            try:
                value = conv(text)
            except ValueError:
                raise UsageError(f"target option {key}={text!r}: expected a number "
                                 f"({'decimal' if conv is float else 'integer'})",
                                 f"e.g. --target-option {key}={getattr(cls, key)}") from None
            if not math.isfinite(value) or value < 0 or (value == 0 and key not in ("cycles_per_synop", "cycles_per_neuron",
                                                        "cycles_per_step") and not key.startswith("energy")):
                raise UsageError(f"target option {key}={text}: must be a finite number "
                                 f"{'> 0' if not key.startswith(('energy', 'cycles')) else '>= 0'}",
                                 f"e.g. --target-option {key}={getattr(cls, key)}")
            kw[key] = value
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

"""snncompile backend ``netlist``: writes the generic integer IF netlist (docs/netlist.md) and
runs it with its own time-driven simulator.

The netlist is for hardware teams: plain JSON plus an .npz of integer arrays, every
population's neurons, thresholds and bit widths, every projection (a convolution, a dense
matrix, or explicit (pre, post, weight) synapses), the
time window and the input/output encoding, readable without snncompile. Convolutions are
stored as their kernels and dense layers as their weight matrices (format version 2), so
the files grow with the network's parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncompile.plugin import Backend, BackendRun, Limits, UsageError, structured_network

from .format import FORMAT_VERSION, read_netlist, write_netlist
from .run import simulate_netlist

__version__ = "1.0.0"
__all__ = ["NetlistBackend", "FORMAT_VERSION", "read_netlist", "write_netlist", "simulate_netlist"]


class NetlistBackend(Backend):
    """Lowers a graph to ``netlist.json`` + ``netlist.npz`` and runs such a netlist."""

    name = "netlist"
    version = __version__
    description = f"generic integer IF netlist, format version {FORMAT_VERSION} (JSON + npz; docs/netlist.md)"
    can_run = True

    def __init__(self, options=None):
        super().__init__(options)
        if self.options:
            raise UsageError(f"target 'netlist' takes no target options (got: {', '.join(self.options)})",
                             "drop the --target-option flags")

    def limits(self) -> Limits:
        # int64 arithmetic in the runner; the IR itself allows membranes up to 52 bits
        return Limits(membrane_bits=62, spike_modes=("binary", "signed"),
                      sources={"membrane_bits": "int64 arithmetic of the runner"})

    def lower(self, graph, directory: Path, progress=None) -> None:
        write_netlist(structured_network(graph, progress=progress), graph, Path(directory))

    def run(self, directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
        net = read_netlist(Path(directory))
        return simulate_netlist(net, x_int, timesteps, record_spikes)

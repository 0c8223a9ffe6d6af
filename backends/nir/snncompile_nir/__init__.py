"""snncompile backend ``nir``: writes the integer SNN as a NIR graph (``OUT/nir/graph.nir``,
``nir.write``) and runs NIR files by NIR's own node semantics (:mod:`.run`).

NIR is read by many simulators and chips; it fixes the neuron equations but leaves open
what an integer network needs (bit widths, T, dt, the input encoding), which this backend
records in node metadata. Only networks NIR's equations reproduce exactly are written: the
limits ask for inputs fed every step, and :func:`.lower.nir_violations` names every other
layer NIR cannot express. docs/nir.md has the details.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncompile.plugin import Backend, BackendRun, Limits, Profile, UsageError

from .lower import FORMAT_VERSION, GRAPH_FILE, nir_names, nir_violations, to_nir, write_graph

__version__ = "1.0.0"
__all__ = ["NirBackend", "GRAPH_FILE", "FORMAT_VERSION", "nir_names", "nir_violations", "to_nir",
           "write_graph", "load_module", "run_nir"]


def __getattr__(name: str):
    """The reader (:mod:`.run`) is imported on first use: it needs torch, which listing or
    checking targets does not."""
    if name in ("load_module", "run_nir"):
        from . import run
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class NirBackend(Backend):
    """Lowers a graph to ``graph.nir`` and runs such a file."""

    name = "nir"
    version = __version__
    description = "NIR graph (nir.write, HDF5); runs it by NIR's node semantics via nirtorch"
    can_run = True

    def __init__(self, options=None):
        super().__init__(options)
        if self.options:
            raise UsageError(f"target 'nir' takes no target options (got: {', '.join(self.options)})",
                             "drop the --target-option flags")

    def limits(self) -> Limits:
        return Limits(input_modes=("every_step",),
                      sources={"input_modes": "NIR adds a bias every step; a charge injected "
                                              "once at t = 0 has no NIR node"})

    def profile(self) -> Profile:
        """NIR's IF node starts at v = 0 and its bias (and input) arrive every step."""
        return Profile(input_mode="every_step", v_init="zero",
                       reasons={"input_mode": "NIR adds input and bias every step",
                                "v_init": "NIR's IF starts at v = 0"})

    def check(self, graph) -> list:
        return super().check(graph) + nir_violations(graph)

    def lower(self, graph, directory: Path) -> None:
        write_graph(graph, Path(directory))

    def run(self, directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
        from .run import run_nir

        return run_nir(Path(directory), x_int, timesteps, record_spikes)

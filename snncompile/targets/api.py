"""The public backend plugin API: how a backend declares its limits, lowers an IR, and runs.

A backend is a subclass of :class:`Backend` made available through the entry-point group
``snncompile.backends`` (``name = package.module:BackendClass``). The core finds it with
:func:`available_backends`, checks a compiled graph against its :class:`Limits` (every
violation at once, see :func:`check_limits`), asks it to :meth:`Backend.lower` the graph into
``OUT/<backend name>/``, and, where the backend can run what it wrote, to
:meth:`Backend.run` it on integer inputs. The reference simulator
(:mod:`snncompile.sim.simulator`) defines what ``run`` must return, bit for bit; the conformance
kit (:mod:`snncompile.testing`) checks that.

Everything a plugin may import from snncompile is re-exported here or in
:mod:`snncompile.testing`: the IR (:mod:`snncompile.ir`), :func:`load_graph` for an IR saved in
an artifact, the structural figures of :mod:`snncompile.ir.structure` (``populations``, ``fanin_layers``,
``population_fanin``, ``chain_ops``, ``weight_bits``), and the error types.
:func:`flatten_network` turns a graph into populations and integer synapse matrices (what
neuron-and-synapse hardware needs), :func:`structured_network` into the same populations with
projections that keep convolution weight sharing (files and memory that grow with the
parameters, not the dense connection count); :func:`layer_footprints` / :func:`demand` size a slice of
a layer for one core from the graph alone (no matrices), for mapping at any scale;
:class:`Profile` is what a backend declares of the conversion settings it needs or prefers
(:meth:`Backend.profile`); :data:`RULES` names the generic limit rules
(:mod:`snncompile.targets.rules`, the ones conversion and tuning check too) so a backend
can replace one with a finer rule of its own. An unexpected exception inside a plugin is
reported as :class:`BackendError` naming the plugin (exit 7). Walk-through: docs/plugins.md.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ArtifactError, DataError, ModelError, SnnCompileError, UsageError
from ..ir import Graph
from ..ir.structure import (chain_ops, fanin_layers, is_population, population_fanin, populations,
                            sourced_chains, synapse_chains, weight_bits)
from ..ir.files import artifact_file, read_json, read_npz
from ..ir.serialize import load_graph
from .flatten import FlatNetwork, Population, Projection, flatten_network
from .footprint import Chain, Demand, Footprint, demand, largest_slice, layer_footprints
from .profile import Profile
from .rules import GENERIC_RULES, RULES, LimitError, Limits, Rule, Violation, check_limits
from .structured import (ConvOp, DenseOp, MatrixOp, Op, StructuredNetwork, StructuredProjection, narrow,
                         op_from, structured_network)

ENTRY_POINT_GROUP = "snncompile.backends"

__all__ = [
    "ENTRY_POINT_GROUP", "Backend", "BackendRun", "Limits", "Violation", "LimitError", "BackendError",
    "available_backends", "get_backend", "check_limits", "parse_backend_options", "load_graph",
    "FlatNetwork", "Population", "Projection", "flatten_network", "RULES", "GENERIC_RULES",
    "Rule", "Chain", "Demand", "Footprint", "demand", "largest_slice", "layer_footprints",
    "Profile", "chain_ops", "synapse_chains", "sourced_chains", "is_population", "fanin_layers", "population_fanin", "populations", "weight_bits",
    "ArtifactError", "DataError", "ModelError", "SnnCompileError", "UsageError",
    "artifact_file", "read_json", "read_npz",
    "ConvOp", "DenseOp", "MatrixOp", "Op", "StructuredNetwork", "StructuredProjection", "op_from",
    "structured_network", "narrow",
]


class BackendError(SnnCompileError):
    """A backend plugin failed in a way that is its own bug (an unexpected exception while
    lowering or running): reported with the plugin's name instead of a traceback."""

    exit_code = 7


@dataclass
class BackendRun:
    """What :meth:`Backend.run` returns, aligned to the reference simulator's time axis
    (a backend with synaptic delays shifts its spikes back before returning them).

    ``output_acc``: per output node, the integer accumulator sum over t of the node's input,
    shape (N, *shape). ``spikes``: per spiking node (IF layers and spiking max pools), (T, N,
    *shape) uint8 (int8 for signed spikes), or None when not recorded. ``stats``: anything
    else the backend measures (cycles, energy, wall time), JSON-serializable."""

    output_acc: dict[str, np.ndarray]
    spikes: dict[str, np.ndarray] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Base class of a backend plugin. Subclasses set ``name``, ``version`` and
    ``description`` and implement :meth:`limits` and :meth:`lower`; those that can execute
    their artifact also set ``can_run = True`` and implement :meth:`run`.

    ``options`` are the backend's own settings (``--target-option KEY=VALUE`` on the command
    line): a backend validates them and raises :class:`UsageError` for unknown keys."""

    name: str = ""
    version: str = "0"
    description: str = ""
    can_run: bool = False
    # Options that say how to run on this machine (an interpreter, a timeout), not what was
    # built: given to `snncompile run --target-option`, never taken from an artifact.
    run_options: tuple[str, ...] = ()

    def __init__(self, options: Mapping[str, str] | None = None):
        self.options = dict(options or {})

    @abstractmethod
    def limits(self) -> Limits:
        """The target's limits under the current options."""

    def check(self, graph: Graph) -> list[Violation]:
        """Every violation of the target's limits; backends with more rules extend this."""
        return check_limits(graph, self.limits(), self.name)

    def check_early(self, graph: Graph) -> list[Violation]:
        """Violations that can be decided from the imported model, before calibration and
        conversion (``graph`` is the ANN: ReLUs where the IF layers will be), so that a model
        the target can never hold is refused in seconds. Only what no conversion option can
        change belongs here (say, more neurons than the system holds); the default has none."""
        return []

    def profile(self) -> Profile:
        """The conversion settings this target needs or prefers, which `convert --target`
        uses for every option the user did not set (docs/plugins.md, "Profiles"). The
        default derives them from :meth:`limits`; override it to prefer settings the limits
        allow but do not choose, or to fit ``--input-bits`` to the model (``input_rule``)."""
        return Profile.from_limits(self.limits())

    @abstractmethod
    def lower(self, graph: Graph, directory: Path) -> None:
        """Write the artifact for ``graph`` into ``directory`` (it exists and is empty; the
        core renames it into place when everything succeeded).

        A backend whose lowering takes a while may declare a keyword ``progress`` as well:
        the core then passes a callable ``progress(done, total, what)`` to call as work
        advances (say, once per layer, as :func:`flatten_network` does when given it),
        which it shows as a progress bar. It is optional: without it the core says only
        that lowering has begun."""

    def run(self, directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
        """Run the artifact in ``directory`` on integer input levels ``x_int`` (N, *input
        shape), as produced by ``snncompile.sim.simulator.quantize_input``, for ``timesteps`` (the
        graph's T when None).

        The artifact is data: a run must execute no code it carries (no script, module,
        interpreter path or command line read from it); the program comes from the installed
        plugin. Its files are read with :func:`read_json`/:func:`read_npz` and interpreted
        under :func:`artifact_file`, so a damaged file is an :class:`ArtifactError` (exit 5)
        naming it, not a plugin bug. The conformance kit checks the first rule
        (:func:`snncompile.testing.check_no_code_from_artifact`)."""
        raise UsageError(f"backend '{self.name}' cannot run its artifacts")

    def combine_stats(self, parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        """Statistics of a run made in chunks (`snncompile run` runs large data sets in
        batches): ``parts`` holds (samples, stats) per chunk. The default keeps one chunk's
        stats as they are and lists several per chunk; override it to add them up."""
        if len(parts) == 1:
            return parts[0][1]
        return {"chunks": [dict(s, samples=n) for n, s in parts]}

    def layer_resources(self, graph: Graph) -> dict[str, dict[str, int]]:
        """Per layer, what the target spends on it (e.g. ``{"cores": 2}``), for `evaluate`
        to report next to accuracy; an empty dict where the backend has no such figures."""
        return {}

    def resource_totals(self, graph: Graph,
                        layers: dict[str, dict[str, int]] | None = None) -> dict[str, int]:
        """The whole network's figures (e.g. ``{"cores": 9, "chips": 1}``). The default adds
        up ``layers`` (:meth:`layer_resources` when None); override it where a figure is
        shared between layers (chips)."""
        layers = self.layer_resources(graph) if layers is None else layers
        out: dict[str, int] = {}
        for figures in layers.values():
            for k, v in figures.items():
                out[k] = out.get(k, 0) + v
        return out

    def info(self) -> dict[str, Any]:
        """What `snncompile backends` prints."""
        prof = self.profile()
        return {"name": self.name, "version": self.version, "description": self.description,
                "can_run": self.can_run, "limits": self.limits().as_dict(),
                "profile": dict(prof.settings(), **({"input_bits": "fitted to the model"}
                                                   if prof.input_rule else {}))}


# --- discovery -------------------------------------------------------------------------------

def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=ENTRY_POINT_GROUP))


def available_backends() -> dict[str, md.EntryPoint]:
    """Installed backends by name (entry points of group ``snncompile.backends``)."""
    return {ep.name: ep for ep in sorted(_entry_points(), key=lambda e: e.name)}


def get_backend(name: str, options: Mapping[str, str] | None = None) -> Backend:
    """An instance of the backend ``name``; a clear error when it is not installed or broken."""
    eps = available_backends()
    if name not in eps:
        raise unknown_target(name, list(eps))
    try:
        cls = eps[name].load()
    except Exception as e:  # a plugin's import error must not look like ours
        raise UsageError(f"backend '{name}' ({eps[name].value}) failed to load: "
                         f"{type(e).__name__}: {e}", "reinstall the backend's package") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UsageError(f"entry point '{name}' ({eps[name].value}) is not a snncompile Backend class")
    return cls(options)


def unknown_target(name: str, known: list[str]) -> UsageError:
    """The error for a target name that is not installed, with a did-you-mean when the name
    is close to one that is (as click does for a mistyped option)."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    listed = ", ".join(known) or "none installed"
    fix = (f"did you mean '{close[0]}'? ('snncompile backends' lists the targets)" if close else
           "install the backend's package (pip install ...); 'snncompile backends' lists what is "
           "installed")
    return UsageError(f"unknown target '{name}' (available: {listed})", fix)


def parse_backend_options(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['cores=4', 'neurons_per_core=256'] -> {'cores': '4', 'neurons_per_core': '256'}."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"target option '{p}' is not KEY=VALUE", "e.g. --target-option cores=4")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out

"""Run a NIR file by NIR's own node semantics, with nirtorch wiring the graph.

This is a *reader*: it knows nothing of snncompile's IR. It reads the file with
``nir.read``, maps every node to a torch module by the equations of NIR's documentation,
discretized with a step of ``dt = 1`` (the graph metadata's ``dt``), and lets
``nirtorch.nir_to_torch`` wire the graph (edges into one node are summed) and carry the
state from step to step (an edge that closes a loop carries the previous step's value):

* ``IF``: ``v += r * dt * I``; spike where ``v > v_threshold``; there ``v = v_reset``;
* ``I``: ``v += r * dt * I``, output ``v``; ``Threshold``: ``H(x - threshold)``;
* ``Affine`` ``W x + b``, ``Conv2d``, ``SumPool2d`` (a sum over each window, zero padding),
  ``Scale``, ``Flatten`` over the per-sample axes (NIR types have no batch axis).

Only the input encoding comes from the metadata (NIR leaves it open): the integer input
levels are fed at every step for ``T`` steps. Arithmetic is float64, exact for integers
below 2^53. nirtorch 2.6's own Affine mapping leaves the bias at torch's random
initialisation (it assigns ``weight.bias``), and its SumPool2d ignores padding, so both
are mapped here; it also never returns from wiring a graph with several Output nodes, so it
is given the graph with the first one only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from snncompile.plugin import ArtifactError, BackendRun

from .lower import GRAPH_FILE


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float64))


class _IF(torch.nn.Module):
    """NIR's IF neuron: integrate, spike above threshold, reset to v_reset."""

    def __init__(self, node, dt: float):
        super().__init__()
        self.r, self.th, self.v_reset, self.dt = _t(node.r), _t(node.v_threshold), _t(node.v_reset), dt

    def forward(self, x: torch.Tensor, state: Any = None):
        v = torch.zeros_like(x) if state is None else state[0]
        v = v + self.r * self.dt * x
        z = (v > self.th).to(x.dtype)
        v = torch.where(z > 0, self.v_reset.expand_as(v), v)
        return z, (v, z)


class _Threshold(torch.nn.Module):
    """NIR's Threshold: ``z = H(x - threshold)`` (stateless; the state keeps z for recording)."""

    def __init__(self, node):
        super().__init__()
        self.th = _t(node.threshold)

    def forward(self, x: torch.Tensor, state: Any = None):
        z = (x > self.th).to(x.dtype)
        return z, z


class _Integrator(torch.nn.Module):
    """NIR's I node: ``dv/dt = r I``; the output is v."""

    def __init__(self, node, dt: float):
        super().__init__()
        self.r, self.dt = _t(node.r), dt

    def forward(self, x: torch.Tensor, state: Any = None):
        v = (torch.zeros_like(x) if state is None else state) + self.r * self.dt * x
        return v, v


class _Affine(torch.nn.Module):
    def __init__(self, node):
        super().__init__()
        self.w, self.b = _t(node.weight), _t(node.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b


class _SumPool(torch.nn.Module):
    def __init__(self, node):
        super().__init__()
        self.k = tuple(int(v) for v in node.kernel_size)
        self.s = tuple(int(v) for v in node.stride)
        self.p = tuple(int(v) for v in node.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.k, self.s, self.p, divisor_override=1)


class _Scale(torch.nn.Module):
    def __init__(self, node):
        super().__init__()
        self.s = _t(node.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


class _Flatten(torch.nn.Module):
    """NIR's Flatten counts dimensions per sample; the tensors here have a batch axis first."""

    def __init__(self, node):
        super().__init__()
        self.start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
        self.end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start, self.end)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def load_module(path: str | Path):
    """The NIR graph in ``path`` and a stateful torch module running it one step per call."""
    import nir
    import nirtorch

    try:
        graph = nir.read(str(path))
    except (OSError, KeyError, ValueError) as e:
        raise ArtifactError(f"'{path}' is not a readable NIR file ({type(e).__name__}: {e})",
                            "re-run 'snncompile convert --target nir'") from None
    dt = float(graph.metadata.get("dt", 1.0))
    node_map = {nir.IF: lambda n: _IF(n, dt), nir.I: lambda n: _Integrator(n, dt),
                nir.Threshold: _Threshold, nir.Affine: _Affine, nir.SumPool2d: _SumPool, nir.Scale: _Scale,
                nir.Flatten: _Flatten}
    module = nirtorch.nir_to_torch(_one_output(graph), node_map, dtype=torch.float64)
    return graph, module


def _one_output(graph):
    """The graph with only its first Output node: nirtorch 2.6 loops forever on a graph with
    several. Nothing is lost: the outputs are read from the accumulators' state."""
    import nir

    outs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
    if len(outs) < 2:
        return graph
    drop = set(outs[1:])
    return nir.NIRGraph(nodes={k: n for k, n in graph.nodes.items() if k not in drop},
                        edges=[e for e in graph.edges if e[1] not in drop],
                        metadata=dict(graph.metadata), type_check=False)


def run_nir(directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
    """Run ``directory/graph.nir`` on integer input levels for T steps; spikes and output
    accumulators keyed by the IR names the metadata records."""
    path = Path(directory) / GRAPH_FILE
    if not path.is_file():
        raise ArtifactError(f"'{directory}' has no {GRAPH_FILE}", "re-run 'snncompile convert --target nir'")
    graph, module = load_module(path)
    T = int(timesteps or graph.metadata.get("timesteps", 0))
    if T < 1:
        raise ArtifactError(f"'{path}' records no time window (metadata 'timesteps')")
    if _text(graph.metadata.get("input_mode", "every_step")) != "every_step":
        raise ArtifactError(f"'{path}': input mode '{_text(graph.metadata['input_mode'])}' is not "
                            "one this reader feeds (every_step)")
    ir_name = {k: _text(n.metadata.get("ir_name", k)) for k, n in graph.nodes.items()}
    spiking = [k for k, n in graph.nodes.items() if type(n).__name__ in ("IF", "Threshold")]
    outputs = {e[0] for e in graph.edges if type(graph.nodes[e[1]]).__name__ == "Output"}
    accs = [k for k, n in graph.nodes.items() if type(n).__name__ == "I" and k in outputs]
    x = torch.as_tensor(np.asarray(x_int, np.float64))
    state = None
    spikes: dict[str, list[np.ndarray]] = {k: [] for k in spiking}
    with torch.no_grad():
        for _ in range(T):
            _, state = module(x, state)
            if record_spikes:
                for k in spiking:
                    z = state[k][1] if isinstance(state[k], tuple) else state[k]
                    spikes[k].append(z.to(torch.uint8).numpy())
    acc = {ir_name[k]: np.rint(state[k].numpy()).astype(np.int64) for k in accs}
    rec = {ir_name[k]: np.stack(v) for k, v in spikes.items()} if record_spikes else None
    return BackendRun(output_acc=acc, spikes=rec, stats={"reader": "NIR semantics via nirtorch",
                                                         "dt": float(graph.metadata.get("dt", 1.0))})

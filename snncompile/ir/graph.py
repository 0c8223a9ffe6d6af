"""The graph of the intermediate representation: nodes in topological order, outputs, the
time window, metadata; and the checks every graph must pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import ModelError
from .options import ConversionOptions
from .nodes import IFNode, InputNode, MaxPool2dNode, Node, WeightedNode, mode_errors


@dataclass
class Graph:
    """A network: nodes in topological order, the names of the output nodes, and metadata.

    ``timesteps`` is the time window T of an SNN graph (None for an ANN graph);
    ``conversion`` the options a converted graph was made with (None for an ANN graph)."""

    nodes: list[Node]
    outputs: list[str]
    timesteps: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    conversion: ConversionOptions | None = None

    def __post_init__(self) -> None:
        self._index = {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    @property
    def input(self) -> InputNode:
        inputs = [n for n in self.nodes if isinstance(n, InputNode)]
        return inputs[0]

    @property
    def is_spiking(self) -> bool:
        return any(isinstance(n, IFNode) for n in self.nodes)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def copy(self) -> "Graph":
        """A copy with new node objects that *share* the weight arrays: arrays in a graph are
        never modified in place (passes assign new arrays instead), so sharing is safe and
        keeps passes cheap on large models."""
        nodes = []
        for n in self.nodes:
            kw = {f.name: getattr(n, f.name) for f in dataclasses.fields(n)}
            for k, v in kw.items():
                if isinstance(v, list):
                    kw[k] = list(v)
            nodes.append(type(n)(**kw))
        return Graph(nodes, list(self.outputs), self.timesteps, dict(self.meta), self.conversion)

    def replace_nodes(self, nodes: list[Node], outputs: list[str] | None = None) -> "Graph":
        """A new graph with these nodes (same timesteps and metadata), validated."""
        g = Graph(nodes, list(outputs if outputs is not None else self.outputs), self.timesteps,
                  dict(self.meta), self.conversion)
        g.validate()
        return g

    def validate(self) -> None:
        """Check names, topological order, and shapes; raises ModelError naming the node."""
        seen: dict[str, tuple[int, ...]] = {}
        signed: set[str] = set()
        n_inputs = 0
        for n in self.nodes:
            if n.name in seen:
                raise ModelError(f"duplicate node name '{n.name}' in graph")
            if isinstance(n, InputNode):
                n_inputs += 1
                if n.inputs:
                    raise ModelError(f"input node '{n.name}' cannot have inputs")
                for problem, _ in mode_errors(input_mode=n.mode):
                    raise ModelError(f"input '{n.name}': {problem}")
            for i in n.inputs:
                if i not in seen:
                    raise ModelError(f"node '{n.name}' reads '{i}', which is not defined before it")
            if isinstance(n, WeightedNode):
                for problem, _ in mode_errors(bias_mode=n.bias_mode):
                    raise ModelError(f"node '{n.name}': {problem}")
            if isinstance(n, MaxPool2dNode) and n.inputs and n.inputs[0] in signed:
                raise ModelError(f"max pool '{n.name}' reads the signed spikes of '{n.inputs[0]}': a "
                                 "spike-count maximum is defined only for counts that never fall")
            if isinstance(n, IFNode):
                if n.spikes == "signed":
                    signed.add(n.name)
                for problem, _ in mode_errors(reset=n.reset, spikes=n.spikes):
                    raise ModelError(f"IF layer '{n.name}': {problem}")
                if np.any(np.asarray(n.threshold) < 1):
                    raise ModelError(f"IF layer '{n.name}': thresholds must be integers >= 1")
            shape = tuple(int(d) for d in n.infer_shape([seen[i] for i in n.inputs]))
            if n.shape and tuple(n.shape) != shape:
                raise ModelError(f"node '{n.name}': stored shape {tuple(n.shape)} but inputs give {shape}")
            n.shape = shape
            seen[n.name] = shape
        if n_inputs != 1:
            raise ModelError(f"a graph needs exactly one input node, found {n_inputs}")
        for o in self.outputs:
            if o not in seen:
                raise ModelError(f"output '{o}' is not a node of the graph")
        if not self.outputs:
            raise ModelError("the graph has no outputs")

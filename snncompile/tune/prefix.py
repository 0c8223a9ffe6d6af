"""Spike trains of the layers a PTL stage keeps fixed, computed once per stage.

At stage k of PTL, layers 1..k-1 are fixed: their weights and thresholds do not change until
the stage ends, so the spike trains they pass on are a function of the sample alone. Yet
every training batch and every validation pass would simulate them again over the window,
and on a CNN the early layers are the large ones. A stage therefore simulates them once per
sample of its training and validation data, keeps the spike trains where the fixed part of
the graph hands over to the rest (bit-packed, a bit per neuron and step), and each batch runs the
integer simulation and the ANN pass from there on. The forward is bit for bit the one
without the cache (a test checks it), so the cache changes the time of a run, never its
result. Stage k + 1 builds its trains from stage k's (the layers fixed then are still
fixed), so each stage simulates only the layer it has just fixed, not the whole prefix
again; while it builds, both stages' trains are in memory.

It applies where the hand-over nodes are IF layers (spikes are what is cheap to keep) and
the packed trains fit :data:`BUDGET_BYTES`; otherwise the stage runs as before.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import torch

from ..sim.kernels import spike_conv
from ..ir import Graph, IFNode, InputNode
from ..sim.evaluator import SpikeTrains, needed, window_batch
from .runtime.bitpack import pack_codes, unpack_codes

# Most bytes of packed spike trains one stage may keep, over its training and validation data.
BUDGET_BYTES = 2 * 2 ** 30


@dataclass(frozen=True)
class Frontier:
    """Where the fixed part of a graph hands over: ``cached`` IF nodes whose spike trains
    the rest reads, and ``skip``, the nodes that then need not run at all."""

    cached: tuple[str, ...]
    skip: frozenset[str]


def frontier(graph: Graph, fixed_layers: list[str]) -> Frontier | None:
    """The hand-over of the part of ``graph`` that feeds ``fixed_layers`` (IF layers whose
    inputs are all fixed); None where there is nothing to skip or a hand-over node is not
    an IF layer."""
    if not fixed_layers:
        return None
    part = needed(graph, fixed_layers)
    consumers: dict[str, list[str]] = {n.name: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in n.inputs:
            consumers[i].append(n.name)
    edge = [n.name for n in graph.nodes if n.name in part
            and (n.name in graph.outputs or any(c not in part for c in consumers[n.name]))]
    cached = tuple(e for e in edge if not isinstance(graph[e], InputNode))
    if not cached or not all(isinstance(graph[e], IFNode) for e in cached):
        return None
    return Frontier(cached, frozenset(part - set(edge)))


def _planes(node) -> int:
    """Bit planes a node's spikes take: 2 for signed spikes (+1 and -1), else 1."""
    return 2 if getattr(node, "spikes", "binary") == "signed" else 1


def _stored_order(rank: int) -> list[int]:
    """Dimensions (of a (T, N, *shape) train) in the order a sample's bits are stored: feature
    maps channels-last, the layout the simulator's convolutions and pools take without
    reordering (and the IF kernel writes), others as they are."""
    return [3, 4, 2] if rank == 3 else list(range(2, rank + 2))


def _step_bytes(neurons: int) -> int:
    """Bytes one step of one sample's train takes: a bit per neuron, padded to a whole byte."""
    return -(-neurons // 8)


def _steps_of(packed: np.ndarray, T: int, signed: bool) -> np.ndarray:
    """(N, T) bool: which steps of each sample's packed train hold a spike (padding bits
    are 0, so a step's bytes are non-zero exactly where it has one)."""
    if not packed.size:
        return np.zeros((len(packed), T), bool)
    return packed.reshape(len(packed), 2 if signed else 1, T, -1).any(axis=(1, 3))


def _fresh(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised uint8 array for packed trains, mapped in small pages. numpy asks the
    kernel for transparent huge pages on large arrays; for these (up to GiBs, filled once,
    then read a few rows at a time) the kernel's zeroing and compacting of huge pages on
    first touch cost more than all the packing, which a plain anonymous mapping avoids."""
    size = int(shape[0]) * int(shape[1])
    try:
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, OSError, ValueError):  # no anonymous mappings here, or size 0
        return np.empty(shape, np.uint8)
    return np.frombuffer(buf, np.uint8, count=size).reshape(shape)


class PrefixCache:
    """The packed spike trains of a frontier's IF nodes for every sample of one data set."""

    def __init__(self, front: Frontier, T: int, shapes: dict[str, tuple[int, ...]],
                 packed: dict[str, np.ndarray], signed: frozenset[str] = frozenset(),
                 steps: dict[str, np.ndarray] | None = None):
        self.frontier = front
        self.T = T
        self.shapes = shapes
        self.packed = packed  # node -> (N, T * ceil(neurons / 8)) uint8: T steps, each whole bytes
        # nodes with signed spikes: their +1 bits, then their -1 bits (twice the bytes)
        self.signed = signed
        # node -> (N, T) bool, True where the sample has a spike at that step (what a batch's
        # ``active`` is made of, so it need not be found again in the unpacked trains)
        self.steps = steps if steps is not None else {k: _steps_of(p, T, signed=k in signed)
                                                      for k, p in packed.items()}

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.packed.values())

    @staticmethod
    def nbytes_for(graph: Graph, front: Frontier, T: int, samples: int) -> int:
        """Bytes the packed trains of ``samples`` samples take."""
        return sum(samples * _planes(graph[k]) * T * _step_bytes(int(np.prod(graph[k].shape)))
                   for k in front.cached)

    @classmethod
    def build(cls, run, graph: Graph, front: Frontier, T: int, samples: int,
              batch_size: int | None = None) -> "PrefixCache":
        """Simulate the fixed part on each of ``samples`` samples, ``batch_size`` at a time
        (default: :func:`..simulator.window_batch`): ``run(rows, keep)`` returns the spike
        trains ((T, len(rows), *shape) tensors: float spikes, or uint8 codes as
        :mod:`..spike_conv` writes them) of the nodes in ``keep`` for the samples at indices
        ``rows``."""
        batch_size = batch_size or window_batch(graph, T)
        signed = frozenset(k for k in front.cached if _planes(graph[k]) == 2)
        neurons = {k: int(np.prod(graph[k].shape)) for k in front.cached}
        packed = {k: _fresh((samples, _planes(graph[k]) * T * _step_bytes(neurons[k])))
                  for k in front.cached}
        steps = {k: np.empty((samples, T), bool) for k in front.cached}
        for i in range(0, samples, batch_size):
            spikes = run(np.arange(i, min(i + batch_size, samples)), set(front.cached))
            for k in front.cached:
                # (T, n, neurons) in stored order: a view of the simulator's layout
                v = spikes[k].permute(0, 1, *_stored_order(spikes[k].dim() - 2)).reshape(T, spikes[k].shape[1], -1)
                if v.dtype != torch.uint8:  # float spikes: as codes (value + zero point)
                    v = spike_conv.encode(v, k in signed)
                pack_codes(v.contiguous().cpu().numpy(), k in signed, packed[k], steps[k], i)
        return cls(front, T, {k: tuple(graph[k].shape) for k in front.cached}, packed, signed, steps)

    def given(self, rows: np.ndarray, device: torch.device) -> tuple[Frontier, dict[str, SpikeTrains]]:
        """What :meth:`.model.TandemNet.forward` takes as ``given`` for samples ``rows``."""
        return self.frontier, self.take(rows, device)

    def take(self, rows: np.ndarray, device: torch.device) -> dict[str, SpikeTrains]:
        """The spike trains of samples ``rows`` ((T, len(rows), *shape)), as uint8 codes
        (:mod:`..spike_conv`: the simulator's convolutions read them as they are, and they
        are a quarter of float32 spikes to write), with their counts."""
        out = {}
        for k, p in self.packed.items():
            shape = self.shapes[k]
            order = _stored_order(len(shape))
            stored = tuple(shape[d - 2] for d in order)
            neurons = int(np.prod(shape))
            signed = k in self.signed
            # (T, rows, *stored order), contiguous: the layout the simulator's convolutions read
            codes = torch.empty((self.T, len(rows)) + stored, dtype=torch.uint8)
            counts = torch.empty((len(rows),) + stored, dtype=torch.float32)
            if not unpack_codes(p, rows, self.T, signed, codes.numpy().reshape(self.T, len(rows), neurons),
                                counts.numpy().reshape(len(rows), neurons)):
                self._unpack(p, rows, neurons, signed, codes, counts)
            codes, counts = codes.to(device), counts.to(device)
            logical = [0, 1, *[order.index(d) + 2 for d in range(2, len(shape) + 2)]]
            active = torch.from_numpy(self.steps[k][rows].any(axis=0)).to(device)
            out[k] = SpikeTrains(None, counts.permute([d - 1 for d in logical[1:]]), active,
                                 codes=codes.permute(logical))
        return out

    def _unpack(self, p: np.ndarray, rows: np.ndarray, neurons: int, signed: bool,
                codes: torch.Tensor, counts: torch.Tensor) -> None:
        """:func:`.runtime.bitpack.unpack_codes` by numpy ops, for trains it does not take."""
        sel = p[rows].reshape(len(rows), -1, self.T, _step_bytes(neurons))  # (rows, planes, T, bytes)
        up = np.unpackbits(sel[:, 0], axis=2, count=neurons)  # (rows, T, neurons)
        if signed:  # codes: value + 1 (spike_conv.zero_point)
            np.subtract(np.add(up, 1, out=up), np.unpackbits(sel[:, 1], axis=2, count=neurons), out=up)
        codes.copy_(torch.from_numpy(up).view((len(rows), self.T) + tuple(codes.shape[2:])).transpose(0, 1))
        # counts: the codes' sum over the steps (in the narrowest integer that holds it)
        top = (2 if signed else 1) * self.T
        total = np.add.reduce(codes.numpy(), axis=0, dtype=np.uint8 if top <= 255 else np.int32)
        counts.copy_(torch.from_numpy(total))
        if signed:
            counts.sub_(self.T)

"""TandemNet: a converted graph as a trainable torch module, spiking up to a stage.

Parameters are the *float* weights and biases of the graph's weighted nodes (real units, as
in the ANN). At every forward the integer graph is derived from them by the write-back pass
(:func:`..passes.requant.with_params`: fan-in mask, per-layer symmetric quantization, thresholds
``round(lam / s_in)``), so the integers the forward runs on are the ones an artifact stores.

Stages: hidden layers are the IF nodes in graph order, L of them. At stage k (0 <= k <= L)
IF layers 1..k and everything feeding them run the exact integer forward
(:func:`..sim.evaluator.run_window`); at stage L + 1 the output layer is constrained too and the output is the
integer accumulator (``scale * acc / T``), i.e. exactly what the reference simulator returns.
A weighted node is *constrained* (fan-in pruned, quantized) from the stage its consumer
population first spikes.

Forward values are real: a spiking IF layer passes ``lam * count / T``. Backward is the
tandem rule: the gradient w.r.t. a layer's spike-count value is copied onto the ANN
activation ``relu(z)`` computed from the same input values (straight-through), and the
gradient of a quantized weight onto its float weight (straight-through).

Why one module: stages, fan-in masks, the integer forward, its tandem backward and the
re-derived thresholds are one object's state (what the forward runs on depends on all of
them at once); the write-back, the simulator and the mask refit it calls live elsewhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..sim.ann import _EVALUATORS
from ..errors import ModelError
from ..ir import Graph, IFNode, InputNode, ReluNode, WeightedNode
from ..passes.calibrate_bias import fitted_scale
from ..passes.constrain import FANIN_MODES, fanin_budgets, shared_budgets
from ..sim.evaluator import SpikeTrains, needed, run_window
from ..sim.simulator import quantized_input
from . import ann_path
from .prefix import Frontier
from ..passes.requant import with_params


class TandemNet(nn.Module):
    """A converted graph with trainable float weights and a staged tandem forward."""

    def __init__(self, graph: Graph, bits: int | None = None, fanin: int | None = None,
                 prune_lead: int = 0, fanin_mode: str = "magnitude", caps: dict[str, float] | None = None):
        super().__init__()
        if not graph.is_spiking or not graph.timesteps:
            raise ModelError("TandemNet needs a converted graph (with IF layers and a time window)")
        self.base = graph
        self.T = int(graph.timesteps)
        self.bits = bits
        self.fanin = fanin
        self.fanin_mode = fanin_mode  # a key of constraints.FANIN_MODES
        # A node's fan-in mask is imposed ``prune_lead`` stages before it is quantized and its
        # layer spikes (0: at the same stage), so it is pruned while still an ANN layer.
        self.prune_lead = int(prune_lead)
        self.layers = [n.name for n in graph.nodes if isinstance(n, IFNode)]
        # IF layer -> the ANN's clip of its ReLU (ReLU6: 6; :func:`relu_caps`): its ANN
        # activation, and the scale a re-derived threshold stands for, stay under it
        self.caps = {k: float(v) for k, v in (caps or {}).items() if k in self.layers}
        # True: a hidden layer not spiking yet passes the value its spike count will stand
        # for, lam * clamp(round(z T / lam), 0, T) / T (straight-through), not relu(z)
        self.count_aware = False
        self.weighted = [n.name for n in graph.nodes if isinstance(n, WeightedNode)]
        self.key = {name: f"n{i}" for i, name in enumerate(self.weighted)}
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        for name in self.weighted:
            n = graph[name]
            k = self.key[name]
            self.weight[k] = nn.Parameter(torch.tensor(np.asarray(n.weight, np.float32)))
            if n.bias is not None:
                self.bias[k] = nn.Parameter(torch.tensor(np.asarray(n.bias, np.float32)))
            self.register_buffer(f"mask_{k}", torch.ones(n.weight.shape))
        # which nodes have their fan-in mask fixed (a buffer: checkpoints carry it)
        self.register_buffer("masked", torch.zeros(len(self.weighted), dtype=torch.bool))
        for j, name in enumerate(self.layers):
            self.register_buffer(f"lam_{j}", torch.tensor(np.asarray(graph[name].lam, np.float64)))
        self.budgets = fanin_budgets(graph, fanin) if fanin else {}
        # branches of an add whose neurons may split their budgets freely (refit.py uses it)
        self.shared = shared_budgets(graph, fanin) if fanin else {}
        self.stage = 0
        self._cache: tuple | None = None
        # Which weighted nodes each stage constrains: those feeding IF layers 1..k.
        self._owner: dict[str, int] = {}
        for k, layer in enumerate(self.layers, start=1):
            for name in needed(graph, [layer]):
                if name in self.key and name not in self._owner:
                    self._owner[name] = k
        for name in self.weighted:
            self._owner.setdefault(name, len(self.layers) + 1)
        # node -> every node that reads it, directly or not (what a change to it reaches)
        self._after: dict[str, set[str]] = {n.name: set() for n in graph.nodes}
        for n in reversed(graph.nodes):
            for i in n.inputs:
                self._after[i] |= {n.name} | self._after[n.name]

    # --- stages ---------------------------------------------------------------------------

    @property
    def n_stages(self) -> int:
        """L hidden layers, then the output layer: stages 1 .. L + 1."""
        return len(self.layers) + 1

    def stage_name(self, stage: int) -> str:
        if stage == 0:
            return "ann"
        return self.layers[stage - 1] if 1 <= stage <= len(self.layers) else "output"

    def pruned(self, stage: int | None = None) -> list[str]:
        """Weighted nodes whose fan-in mask is in force at ``stage``."""
        s = self.stage if stage is None else stage
        return [n for n in self.weighted if self._owner[n] <= s + self.prune_lead]

    def constrained(self, stage: int | None = None) -> list[str]:
        """Weighted nodes quantized (and pruned) at ``stage``."""
        s = self.stage if stage is None else stage
        return [n for n in self.weighted if self._owner[n] <= s]

    def integer_nodes(self, stage: int | None = None) -> set[str]:
        s = self.stage if stage is None else stage
        if s > len(self.layers):
            return {n.name for n in self.base.nodes}
        return needed(self.base, self.layers[:s]) if s > 0 else set()

    def set_stage(self, stage: int, prune: bool = True) -> None:
        """Move to ``stage``. With ``prune``, nodes whose fan-in mask falls due get it now,
        from their current weights (fixed from then on); without, the caller imposes them
        gradually with :meth:`shrink`."""
        if not 0 <= stage <= self.n_stages:
            raise ValueError(f"stage {stage} outside 0..{self.n_stages}")
        self.stage = stage
        if prune:
            self.shrink(self.due_masks(), 0.0)
        self._cache = None

    def due_masks(self) -> list[str]:
        """Nodes whose fan-in mask is due at the current stage but not yet fixed."""
        return [n for n in self.pruned() if n in self.budgets
                and not bool(self.masked[self.weighted.index(n)])]

    @torch.no_grad()
    def shrink(self, names: list[str], keep: float) -> None:
        """Prune ``names`` to the larger of their budget and ``keep`` x their dense fan-in,
        by magnitude among the weights still kept; at the budget the mask is fixed."""
        for name in names:
            k = self.key[name]
            m = self.mask(name)
            w = (self.weight[k] * m).detach().cpu().numpy()
            full = int(np.prod(w.shape[1:]))
            n_keep = max(self.budgets[name], int(np.ceil(full * keep)))
            m.copy_(torch.tensor(FANIN_MODES[self.fanin_mode](w, n_keep), device=m.device))
            if n_keep == self.budgets[name]:
                self.masked[self.weighted.index(name)] = True
        self._cache = None

    def trainable(self, stage: int | None = None, fix_earlier: bool = True) -> list[nn.Parameter]:
        """Parameters still trained at ``stage``: all but those fixed in earlier stages
        (without ``fix_earlier``, all: a run whose first stage this is fixed none)."""
        s = self.stage if stage is None else stage
        fixed = set(self.constrained(s - 1)) if s > 0 and fix_earlier else set()
        out = []
        for name in self.weighted:
            k = self.key[name]
            grad = name not in fixed
            self.weight[k].requires_grad_(grad)
            if k in self.bias:
                self.bias[k].requires_grad_(grad)
            if grad:
                out.append(self.weight[k])
                if k in self.bias:
                    out.append(self.bias[k])
        return out

    # --- the integer graph ------------------------------------------------------------------

    def mask(self, name: str) -> torch.Tensor:
        return getattr(self, f"mask_{self.key[name]}")

    def to_graph(self) -> Graph:
        """The write-back pass: the integer IR of the current parameters (validated).

        Nodes not yet constrained keep their float weights unpruned; their integers follow
        the same quantization (they are what an ANN layer would convert to)."""
        weights, biases = self._params(self.weighted)
        lam = {name: getattr(self, f"lam_{j}").detach().cpu().numpy() for j, name in enumerate(self.layers)}
        return with_params(self.base, weights, biases, lam=lam, weight_bits=self.bits)

    def _current(self) -> tuple[Graph, dict]:
        """The integer graph and the constrained nodes' quantized real weights, re-derived
        only when something they depend on changed: the parameters of the constrained nodes
        (the only ones whose integers the forward reads; the others' float weights are read
        live), the buffers (masks, scales) or the stage. So an ANN stage, where nothing is
        constrained, does not requantize the graph on every training step. Where only some
        parameters changed since the last derivation (a training step trains the layers
        from the newest spiking one on), only their nodes and what follows them up to the
        newest spiking layer are derived again (:func:`..passes.requant.with_params` with
        ``reuse``): the nodes after it run on float weights read live, so until the stage or
        a buffer changes (and everything is derived again) their integers may lag, unread;
        the nodes the stage runs as integers are the full write-back's, for less work."""
        constrained = self.constrained()
        params = [self.weight[self.key[n]] for n in constrained]
        params += [self.bias[self.key[n]] for n in constrained if self.key[n] in self.bias]
        version = tuple(p._version for p in params) + tuple(b._version for b in self.buffers())
        if self._cache is None or self._cache[0] != (version, self.stage):
            frame = (self.stage, tuple((b.data_ptr(), b._version) for b in self.buffers()))
            versions = {name: self._versions(name) for name in self.weighted}
            old = self._cache
            if old is not None and old[3] == frame:
                changed = [name for name in self.weighted if versions[name] != old[4][name]]
                affected = self._affected(changed) & self.integer_nodes()
                g = with_params(old[1], *self._params(affected), weight_bits=self.bits,
                                reuse=frozenset(n.name for n in old[1].nodes) - affected)
                fq = {name: v for name, v in old[2].items() if name not in affected}
            else:
                g, fq = self.to_graph(), {}
            for name in constrained:
                if name not in fq:
                    n = g[name]
                    s_in, s_out = ann_path.unit_scales(g, name)
                    w = (s_out * n.weight_int.astype(np.float64) / s_in).astype(np.float32)
                    b = (s_out.reshape(-1) * n.bias_int.astype(np.float64)).astype(np.float32) \
                        if n.bias_int is not None else None
                    fq[name] = (w, b)
            self._cache = ((version, self.stage), g, fq, frame, versions)
        return self._cache[1], self._cache[2]

    def _versions(self, name: str) -> tuple[tuple[int, int], ...]:
        """What identifies the current values of weighted node ``name``'s parameters."""
        k = self.key[name]
        ts = [self.weight[k]] + ([self.bias[k]] if k in self.bias else [])
        return tuple((t.data_ptr(), t._version) for t in ts)

    def _affected(self, changed: list[str]) -> set[str]:
        """Nodes whose integers depend on the weighted nodes ``changed``: those and all that
        follow them, and the weighted nodes sharing an add's scale with one of them."""
        out = set(changed)
        for name in changed:
            out |= self._after[name]
        for n in self.base.nodes:
            if n.op == "add" and n.name in out:
                out |= {i for i in n.inputs if i in self.key}
        return out

    def _params(self, names: set[str] | list[str]) -> tuple[dict, dict]:
        """The current (masked) float weights and biases of the weighted nodes among ``names``."""
        weights, biases = {}, {}
        for name in self.weighted:
            if name in names:
                k = self.key[name]
                weights[name] = (self.weight[k] * self.mask(name)).detach().cpu().numpy()
                if k in self.bias:
                    biases[name] = self.bias[k].detach().cpu().numpy()
        return weights, biases

    # --- forward ----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, return_ints: bool = False,
                given: tuple[Frontier, dict[str, SpikeTrains]] | None = None):
        """Real-valued output for float inputs ``x`` (N, *input shape); with ``return_ints``
        also the integer result (:class:`..sim.evaluator.WindowResult`) of the spiking part. ``given``:
        a frontier of fixed layers and their spike trains for these inputs
        (:mod:`.prefix`), from which the forward starts (the same result, less work)."""
        g, vals, ints = self._values(x, given)
        y = vals[g.outputs[0]]
        if ints is not None and g.outputs[0] in ints.acc:
            s = torch.as_tensor(np.asarray(g[g.outputs[0]].out_scale, np.float64), device=x.device)
            exact = (ints.acc[g.outputs[0]] * s / self.T).to(torch.float32)
            y = ann_path.straight_through(exact, y)
        return (y, ints) if return_ints else y

    @torch.no_grad()
    def spike_trains(self, x: torch.Tensor, nodes: set[str],
                     given: tuple[Frontier, dict[str, SpikeTrains]] | None = None,
                     codes: bool = False) -> dict[str, torch.Tensor]:
        """The spike trains, (T, N, *shape) float32 0/1 (-1/0/1 signed), of IF layers
        ``nodes`` (spiking at the current stage) for float inputs ``x``; ``given`` as in
        :meth:`forward`: the trains of an earlier frontier of these inputs, from which the
        simulation starts. With ``codes``, trains the simulator wrote as uint8 codes
        (:mod:`..spike_conv`) come as those."""
        g, _ = self._current()
        want, _, trains = _after(needed(g, sorted(nodes)), given)
        return run_window(g, quantized_input(g, x), self.T, want, given=trains or None,
                          keep_spikes=set(nodes), counts_dtype=torch.float32, keep_codes=codes,
                          fused_if=True).spikes

    @torch.no_grad()
    def recalibrate(self, layer: str, x: torch.Tensor, percentile: float = 99.9,
                    batch_size: int = 256, fit: bool = False) -> np.ndarray:
        """Set the scale ``lam`` (hence the threshold) of IF layer ``layer`` to a percentile
        of its ANN activation ``relu(z)`` at the current stage (earlier layers spiking, its
        own weights pruned and quantized) over inputs ``x``; with ``fit``, to the fraction
        of that percentile whose T-level quantizer has the least squared error on the
        activation (as conversion fits thresholds to T: :func:`..passes.calibrate_bias.fitted_scale`).
        Returns the new scale."""
        j = self.layers.index(layer)
        src = self.base[layer].inputs[0]
        parts = []
        for i in range(0, len(x), batch_size):
            _, vals, _ = self._values(x[i:i + batch_size])
            a = self._ann_activation(layer, vals[src]).double().cpu().numpy()
            parts.append(a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2).reshape(a.shape[1], -1)
                         if a.ndim > 2 else a.reshape(1, -1))
        vals_c = np.concatenate(parts, axis=1)
        old = getattr(self, f"lam_{j}")
        if old.numel() > 1:
            lam = np.percentile(vals_c, percentile, axis=1)
            lam = np.where(lam > 0, lam, old.cpu().numpy())
        else:
            lam = np.array([np.percentile(vals_c, percentile)])
            if lam[0] <= 0:
                lam = old.cpu().numpy()
        if fit:
            offset = 0.5 if self.base.conversion is None or self.base.conversion.v_init == "half" else 0.0
            lam = fitted_scale(np.maximum(vals_c, 0.0), np.asarray(lam, np.float64).reshape(-1), self.T, offset)
        if layer in self.caps:  # a dead channel's kept scale too
            lam = np.minimum(lam, self.caps[layer])
        old.copy_(torch.as_tensor(lam.reshape(old.shape), dtype=old.dtype))
        self._cache = None
        return lam

    def _values(self, x: torch.Tensor, given: tuple[Frontier, dict[str, SpikeTrains]] | None = None):
        g, fq = self._current()
        xq = quantized_input(g, x)
        ints_needed, skip, trains = _after(self.integer_nodes(), given)
        # fused_if: training runs the window on every batch, so the one-pass IF kernel (CPU)
        # pays its start once and then serves every batch, whatever its size
        ints = (run_window(g, xq, self.T, ints_needed, given=trains or None, counts_dtype=torch.float32,
                           fused_if=True)
                if len(ints_needed) > 1 else None)
        vals: dict[str, torch.Tensor] = {}
        dev = x.device
        for n in g.nodes:
            if n.name in skip:
                continue
            if n.name in trains:  # a fixed layer: its spike count value, nothing to train
                vals[n.name] = self._count_value(n, ints, dev)
                continue
            if isinstance(n, InputNode):
                s = torch.as_tensor(np.asarray(n.out_scale, np.float32), device=dev)
                vals[n.name] = ann_path.layout(xq.to(torch.float32) * s)
                continue
            ins = [vals[i] for i in n.inputs]
            if isinstance(n, WeightedNode):
                out = self._weighted(n, ins[0], fq.get(n.name))
            elif isinstance(n, IFNode):
                out = self._ann_activation(n.name, ins[0])
                if ints is not None and n.name in ints.counts:
                    out = ann_path.straight_through(self._count_value(n, ints, dev), out)
                elif self.count_aware:
                    out = self._count_model(n, ins[0])
            else:
                out = _EVALUATORS[type(n)](n, ins)
            vals[n.name] = out
        return g, vals, ints

    def _ann_activation(self, layer: str, z: torch.Tensor) -> torch.Tensor:
        """The ANN's activation of IF layer ``layer``: ``relu(z)``, clipped where the ANN
        clips it (:attr:`caps`)."""
        cap = self.caps.get(layer)
        return torch.relu(z) if cap is None else torch.clamp(z, 0.0, cap)

    def _count_value(self, n: IFNode, ints, dev: torch.device) -> torch.Tensor:
        """The real value a spiking layer passes on: ``lam * count / T``."""
        lam = torch.as_tensor(np.asarray(n.out_scale, np.float32), device=dev)
        # written in the layout of the ANN values it meets in the straight-through sum
        # (:func:`.ann_path.layout`; mixed layouts make every op strided), into a new tensor: the
        # counts themselves stay as the integer result holds them
        count = ints.counts[n.name].to(torch.float32)
        out = torch.empty(count.shape, dtype=torch.float32, device=count.device,
                          memory_format=torch.channels_last if count.dim() == 4 else torch.contiguous_format)
        return torch.mul(count, lam, out=out).div_(self.T)

    def _count_model(self, n: IFNode, z: torch.Tensor) -> torch.Tensor:
        """The value an IF layer's count would pass for input ``z`` if all its charge came at
        once: ``lam * clamp(floor(z T / lam + 1/2), 0, T) / T``, with the gradient of
        ``clamp(z, 0, lam)`` (straight-through rounding)."""
        lam = torch.as_tensor(np.asarray(n.out_scale, np.float32), device=z.device)
        if lam.ndim and z.ndim > 2:
            lam = lam.reshape(-1, *([1] * (z.ndim - 2)))
        return ann_path.CountModel.apply(z, lam, self.T)

    def _weighted(self, n: WeightedNode, x: torch.Tensor, fq) -> torch.Tensor:
        k = self.key[n.name]
        w = self.weight[k] * self.mask(n.name)
        b = self.bias[k] if k in self.bias else None
        if fq is not None:
            w = ann_path.straight_through(torch.as_tensor(fq[0], device=x.device), w)
            if b is not None and fq[1] is not None:
                b = ann_path.straight_through(torch.as_tensor(fq[1], device=x.device), b)
        node = dataclasses.replace(n, weight=w, bias=b)
        return ann_path.WEIGHTED[type(n)](node, x)


def relu_caps(ann: Graph) -> dict[str, float]:
    """The clips of an ANN graph's clipped ReLUs (ReLU6, Clip(0, m)) by node name, the name
    conversion gives their IF layers: what :class:`TandemNet`'s ``caps`` takes."""
    return {n.name: float(n.max_value) for n in ann.nodes
            if isinstance(n, ReluNode) and n.max_value is not None}


def _after(nodes: set[str], given: tuple[Frontier, dict[str, SpikeTrains]] | None
           ) -> tuple[set[str], frozenset[str], dict[str, SpikeTrains]]:
    """The nodes still to simulate when a forward starts from the ``given`` frontier, the
    nodes it skips, and the kept spike trains it starts from (none without a frontier)."""
    if given is None:
        return nodes, frozenset(), {}
    return nodes - given[0].skip, given[0].skip, given[1]

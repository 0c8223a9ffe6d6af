"""The first reference simulator, kept as a second, independent statement of the semantics:
it evaluates the graph step by step (every node at t, then t + 1), where snncompile.sim
evaluates node by node over the whole window. tests/test_simulator_orders.py checks both agree
bit for bit.

Why a test-only copy of the integer semantics (its own IF step, padding and weighted ops):
the claim under test is that the window-at-once order equals stepping, and the evaluator
cannot state stepping about itself. It has no step-at-a-time mode: a run of one step is a
window of T = 1 (the once input and first-step biases then bring 1, not T, times their
value, and membranes do not carry from one call to the next), and giving it one would add
a second code path to the core only for this check. So the oracle stays here, written
plainly and independently of the core's tricks (value forms, silent-step skipping, float32
digits, int8 codes, the fused kernel), which is what makes the comparison worth having.
Only the bounds that choose float32 or float64 (a matter of precision, not of what the
integers are), the argument checks, the input's quantization and the result type
(before and after the stepping under test) come from the core."""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from snncompile.errors import ModelError
from snncompile.ir import (AddNode, AvgPool2dNode, ConcatNode, Conv2dNode, DenseNode,
                 FlattenNode, Graph, IFNode, InputNode, MaxPool2dNode, Node, PadNode,
                 ReshapeNode, WeightedNode)
from snncompile.ir.structure import fanout, spike_driven
from snncompile.sim.bounds import exact_dtypes, value_bounds
from snncompile.sim.simulator import SimResult, checked_run, quantize_input


class _Plan:
    """Per-node tensors prepared once per simulation (weights in an exact dtype)."""

    def __init__(self, graph: Graph, timesteps: int, device: torch.device):
        self.graph = graph
        self.T = timesteps
        # the float types come from the core's bounds: they choose the precision that keeps
        # the integers exact, not what the integers are
        self.dtype = exact_dtypes(value_bounds(graph, timesteps))
        self.w: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor | None] = {}
        for n in graph.nodes:
            if isinstance(n, WeightedNode):
                if n.weight_int is None:
                    raise ModelError(f"node '{n.name}' has no integer weights: the graph is not converted")
                dt = self.dtype[n.name]
                self.w[n.name] = torch.as_tensor(n.weight_int, dtype=dt, device=device)
                self.b[n.name] = (torch.as_tensor(n.bias_int, dtype=dt, device=device)
                                  if n.bias_int is not None else None)
        self.synop_nodes = sorted(spike_driven(graph))
        self.fanout = {k: torch.as_tensor(fanout(graph, graph[k]), dtype=torch.float64, device=device)
                       for k in self.synop_nodes}


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _weighted(n: WeightedNode, x: torch.Tensor, plan: _Plan, t: int) -> torch.Tensor:
    dt = plan.dtype[n.name]
    x = _as(x, dt)
    w, b = plan.w[n.name], plan.b[n.name]
    if isinstance(n, DenseNode):
        y = x @ w.T
    elif isinstance(n, Conv2dNode):
        pt, pl, pb, pr = n.padding
        if pt or pl or pb or pr:
            x = F.pad(x, (pl, pr, pt, pb))
        y = torch.round(F.conv2d(x, w, None, n.stride, 0, n.dilation, n.groups))
    else:  # AffineNode
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x * w.reshape(shape)
        if b is not None:
            b = b.reshape(shape[1:])
    if b is not None:
        if n.bias_mode == "every_step":
            y = y + (b if not isinstance(n, Conv2dNode) else b.reshape(-1, 1, 1))
        elif t == 0:
            y = y + plan.T * (b if not isinstance(n, Conv2dNode) else b.reshape(-1, 1, 1))
    return y


def _pool_pad(n: Node, x: torch.Tensor) -> torch.Tensor:
    pt, pl, pb, pr = n.padding
    return F.pad(x, (pl, pr, pt, pb)) if (pt or pl or pb or pr) else x


class _State:
    """Membranes, running counts and accumulators of one batch."""

    def __init__(self, graph: Graph, n: int, device: torch.device):
        self.v: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}
        self.cum_in: dict[str, torch.Tensor] = {}
        self.acc: dict[str, torch.Tensor] = {}
        self.syn_in: dict[str, torch.Tensor] = {}
        self.sat: dict[str, int] = {}
        for node in graph.nodes:
            shape = (n,) + tuple(node.shape)
            if isinstance(node, IFNode):
                v0 = torch.zeros(shape, dtype=torch.float64, device=device)
                if node.v_init is not None:
                    v0 += torch.as_tensor(node.v_init, dtype=torch.float64, device=device)
                self.v[node.name] = v0
                self.counts[node.name] = torch.zeros(shape, dtype=torch.float64, device=device)
                self.sat[node.name] = 0
            elif isinstance(node, MaxPool2dNode):
                self.counts[node.name] = torch.zeros(shape, dtype=torch.float64, device=device)
                in_shape = (n,) + tuple(graph[node.inputs[0]].shape)
                self.cum_in[node.name] = torch.zeros(in_shape, dtype=torch.float64, device=device)


def _step(graph: Graph, plan: _Plan, st: _State, xq: torch.Tensor, t: int,
          record: dict[str, list] | None) -> None:
    val: dict[str, torch.Tensor] = {}
    for n in graph.nodes:
        if isinstance(n, InputNode):
            if n.mode == "every_step":
                val[n.name] = xq
            else:
                val[n.name] = xq * plan.T if t == 0 else torch.zeros_like(xq)
            continue
        ins = [val[i] for i in n.inputs]
        if isinstance(n, WeightedNode):
            if n.name in plan.fanout:
                prev = st.syn_in.get(n.name)
                events = ins[0].abs()  # a -1 spike is an event too
                st.syn_in[n.name] = events.double() if prev is None else prev + events
            out = _weighted(n, ins[0], plan, t)
        elif isinstance(n, IFNode):
            v = st.v[n.name] + ins[0]
            lim = float(2 ** (n.membrane_bits - 1) - 1)
            over = v.abs() > lim
            if bool(over.any()):
                st.sat[n.name] += int(over.sum())
                v = v.clamp(-lim, lim)
            th = torch.as_tensor(n.threshold, dtype=torch.float64, device=v.device)
            s = (v >= th).double()
            if n.spikes == "signed":  # -1 below 0 while the net count is above 0
                s = s - ((v < 0) & (st.counts[n.name] > 0)).double()
            v = v - s * th if n.reset == "subtract" else v * (1.0 - s)
            st.v[n.name] = v
            st.counts[n.name] += s
            out = s
        elif isinstance(n, MaxPool2dNode):
            st.cum_in[n.name] += ins[0]
            m = F.max_pool2d(_pool_pad(n, st.cum_in[n.name]), n.kernel, n.stride)
            out = m - st.counts[n.name]
            st.counts[n.name] = m
        elif isinstance(n, AvgPool2dNode):
            x = _pool_pad(n, ins[0])
            out = F.avg_pool2d(x, n.kernel, n.stride, divisor_override=1)
        elif isinstance(n, FlattenNode):
            out = ins[0].reshape(ins[0].shape[0], -1)
        elif isinstance(n, ReshapeNode):
            out = ins[0].reshape((ins[0].shape[0],) + tuple(n.target))
        elif isinstance(n, AddNode):
            dt = torch.float64 if any(i.dtype == torch.float64 for i in ins) else torch.float32
            out = ins[0].to(dt)
            for i in ins[1:]:
                out = out + i.to(dt)
        elif isinstance(n, ConcatNode):
            dt = torch.float64 if any(i.dtype == torch.float64 for i in ins) else torch.float32
            out = torch.cat([i.to(dt) for i in ins], dim=n.axis + 1)
        elif isinstance(n, PadNode):
            k = len(n.shape)
            pads = []
            for axis in reversed(range(k)):
                pads += [n.pads[axis], n.pads[axis + k]]
            out = F.pad(ins[0], pads)
        else:
            raise ModelError(f"node '{n.name}' ({n.op}) cannot be simulated in a spiking graph",
                             "convert the graph first ('snncompile convert')")
        val[n.name] = out
        if record is not None and n.name in st.counts:
            record[n.name].append(out.to(torch.int8 if getattr(n, "spikes", "") == "signed" else torch.uint8).cpu())
    for o in graph.outputs:
        prev = st.acc.get(o)
        st.acc[o] = val[o].double() if prev is None else prev + val[o]


def simulate(graph: Graph, x: np.ndarray, timesteps: int | None = None, batch_size: int = 256,
             record_spikes: bool = False, progress: bool = False,
             device: str | torch.device = "cpu") -> SimResult:
    """Run the SNN graph on float inputs ``x`` (N, *input shape) for T steps.

    ``timesteps`` overrides the graph's T (thresholds are independent of T, so the same
    network can be run for any window). ``record_spikes`` keeps every spike (memory T x N x
    neurons: for tests and conformance checks)."""
    T, x = checked_run(graph, x, timesteps)
    dev = torch.device(device)
    plan = _Plan(graph, T, dev)
    xq_all = quantize_input(graph, x)
    n_total = x.shape[0]
    spike_nodes = [n.name for n in graph.nodes if isinstance(n, (IFNode, MaxPool2dNode))]
    parts: dict[str, list] = {"acc": [], "counts": [], "synops": [], "spikes": []}
    sat = {k: 0 for k in spike_nodes if isinstance(graph[k], IFNode)}
    batches = range(0, n_total, batch_size)
    bar = _progress(progress, len(batches) * T)
    with torch.no_grad():
        for start in batches:
            xb = torch.as_tensor(xq_all[start:start + batch_size], device=dev)
            xb = xb.to(plan.dtype[graph.input.name])
            st = _State(graph, xb.shape[0], dev)
            rec = {k: [] for k in spike_nodes} if record_spikes else None
            for t in range(T):
                _step(graph, plan, st, xb, t, rec)
                if bar is not None:
                    bar.update(1)
            parts["acc"].append({k: v.cpu().numpy() for k, v in st.acc.items()})
            parts["counts"].append({k: st.counts[k].cpu().numpy().astype(np.int32) for k in spike_nodes})
            syn = torch.zeros(xb.shape[0], dtype=torch.float64, device=dev)
            for k, tot in st.syn_in.items():
                syn += (tot * plan.fanout[k]).reshape(xb.shape[0], -1).sum(dim=1)
            parts["synops"].append(syn.cpu().numpy())
            if rec is not None:
                parts["spikes"].append({k: torch.stack(v).numpy() for k, v in rec.items()})
            for k, v in st.sat.items():
                sat[k] += v
    if bar is not None:
        bar.close()
    acc = {k: np.concatenate([p[k] for p in parts["acc"]]) for k in graph.outputs}
    outputs = {}
    for k, a in acc.items():
        scale = graph[k].out_scale
        outputs[k] = (a * (scale if scale is not None else 1.0) / T).astype(np.float32)
    counts = {k: np.concatenate([p[k] for p in parts["counts"]]) for k in spike_nodes}
    spikes = ({k: np.concatenate([p[k] for p in parts["spikes"]], axis=1) for k in spike_nodes}
              if record_spikes else None)
    return SimResult(outputs=outputs, output_acc={k: np.rint(a).astype(np.int64) for k, a in acc.items()},
                     spike_counts=counts, synops=np.concatenate(parts["synops"]), timesteps=T,
                     saturations=sat, spikes=spikes)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="simulating", unit="step", leave=False)

"""The reference simulator: the definition of what a converted network computes.

Integer, discrete time, t = 0 .. T-1; every step evaluates all nodes in topological order:

* input: ``x_int = clip(round(x / s_x))``; mode ``once`` injects ``T * x_int`` at t = 0 and
  nothing after; ``every_step`` injects ``x_int`` every step;
* weighted nodes: integer weights times integer inputs, plus ``bias_int`` every step
  (``every_step``) or ``T * bias_int`` at t = 0 only (``first_step``);
* avgpool2d: the integer *sum* over the window (the 1/k^2 is part of the scale);
* IF: ``v += I``; ``v`` saturates at +-(2^(membrane_bits-1) - 1) (counted); spike where
  ``v >= threshold``; reset by subtracting the threshold, or to zero; at most one spike per
  neuron per step, so counts lie in 0..T; ``v`` starts at ``v_init``; with signed spikes a
  neuron whose ``v`` is below 0 while its net count is above 0 emits -1 and gains the
  threshold back (docs/semantics.md);
* maxpool2d on spikes: a unit spikes when the running maximum of its inputs' running spike
  counts grows, so its count is the maximum of its inputs' counts;
* outputs are non-spiking accumulators: real output = ``out_scale * sum_t I[t] / T``.

All arithmetic is exact: tensors hold integers in float32 where a bound shows every partial
sum stays below 2^24, else float64 (exact below 2^53); results of convolutions are rounded
to absorb any transform error of the convolution algorithm.

The graph is evaluated node by node over the whole window (:mod:`.evaluator`), which
equals step-by-step evaluation because a feed-forward graph has no path back;
tests/test_simulator_orders.py checks the two orders against each other bit for bit. This
module is the entry point (:func:`simulate`) and the input's quantization; the parts:
:mod:`.bounds` (value bounds and float types), :mod:`.plan` (what a run prepares),
:mod:`.values` (a node's value over the window), :mod:`.weighted` (exact weighted ops),
:mod:`.neurons` (IF layers, pools), :mod:`.evaluator` (the node-by-node run).
"""


from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError, ModelError
from ..ir import Graph, IFNode, MaxPool2dNode
from .evaluator import run_chunk
from .plan import Plan, use_fused_if


@dataclass
class SimResult:
    """What a simulation returns, per sample (axis 0 is the sample)."""

    outputs: dict[str, np.ndarray]            # real-valued outputs, per output node
    output_acc: dict[str, np.ndarray]         # integer accumulators (sum over T of the input)
    spike_counts: dict[str, np.ndarray]       # per spiking node, (N, *shape) int32 counts
    synops: np.ndarray                        # (N,) synaptic events per sample
    timesteps: int
    saturations: dict[str, int] = field(default_factory=dict)  # membrane saturations per layer
    spikes: dict[str, np.ndarray] | None = None  # (T, N, *shape) uint8 (signed: int8) when recorded
    # (N,) synaptic events per sample of each spike-driven weighted node; they add up to synops
    synops_by_node: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def output(self) -> np.ndarray:
        """The first output (the common single-output case)."""
        return next(iter(self.outputs.values()))


def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Integer input levels of an SNN graph for float inputs ``x`` (N, *shape)."""
    node = graph.input
    if node.out_scale is None:
        raise ModelError("the graph is not converted (its input has no scale)")
    qmax = 2 ** (node.bits - 1) - 1
    q = np.rint(np.asarray(x, dtype=np.float64) / node.out_scale)
    return np.clip(q, -qmax, qmax)


def quantized_input(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """:func:`quantize_input` of a tensor, as float64 on its device: the integer input of
    :func:`run_window` for float inputs."""
    return torch.as_tensor(quantize_input(graph, x.detach().cpu().numpy()), device=x.device)


# Largest (T x samples x neurons) tensor one chunk may hold: bounds memory on big models, and
# tensors that stay near the CPU caches are faster to sweep step by step.
CHUNK_ELEMENTS = 2 ** 22


def checked_run(graph: Graph, x: np.ndarray, timesteps: int | None) -> tuple[int, np.ndarray]:
    """The window a run of ``graph`` on inputs ``x`` uses (``timesteps``, else the graph's),
    and ``x`` as an array; a window below 1 or inputs of another shape are refused."""
    T = int(timesteps or graph.timesteps or 0)
    if T < 1:
        raise ModelError("the number of time steps must be at least 1")
    x = np.asarray(x)
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(graph.input.shape):
        raise DataError(f"input shape {tuple(x.shape[1:])} per sample does not match the model's "
                        f"{tuple(graph.input.shape)}")
    return T, x


def simulate(graph: Graph, x: np.ndarray, timesteps: int | None = None, batch_size: int = 256,
             record_spikes: bool = False, progress: bool = False,
             device: str | torch.device = "cpu", fused_if: bool | None = None,
             int8_conv: bool = True) -> SimResult:
    """Run the SNN graph on float inputs ``x`` (N, *input shape) for T steps.

    ``timesteps`` overrides the graph's T (thresholds are independent of T, so the same
    network can be run for any window). ``record_spikes`` keeps every spike (memory T x N x
    neurons: for tests and conformance checks). Samples are simulated ``batch_size`` at a
    time, fewer where a chunk's tensors over the whole window would be too large.

    ``fused_if``: whether IF layers run in the one-pass CPU kernel (:mod:`.kernels.if_kernel`)
    rather than in torch operations; None chooses from the size of the run. ``int8_conv``:
    whether convolutions of spike codes may run on int8 kernels where this process has them
    (:mod:`.kernels.spike_conv`). Neither changes a result, only its speed."""
    T, x = checked_run(graph, x, timesteps)
    dev = torch.device(device)
    plan = Plan(graph, T, dev, fused_if=use_fused_if(graph, T, x.shape[0], dev, fused_if), int8_conv=int8_conv)
    xq_all = quantize_input(graph, x)
    n_total = x.shape[0]
    chunk = max(1, min(int(batch_size), CHUNK_ELEMENTS // (T * plan.largest)))
    spike_nodes = [n.name for n in graph.nodes if isinstance(n, (IFNode, MaxPool2dNode))]
    parts = []
    bar = _progress(progress, n_total)
    with torch.no_grad():
        for start in range(0, n_total, chunk):
            xb = torch.as_tensor(xq_all[start:start + chunk], device=dev)
            parts.append(run_chunk(graph, plan, xb.to(plan.dtype[graph.input.name]), record_spikes))
            if bar is not None:
                bar.update(xb.shape[0])
    if bar is not None:
        bar.close()
    acc = {k: np.concatenate([p["acc"][k].cpu().numpy() for p in parts]) for k in graph.outputs}
    outputs = {}
    for k, a in acc.items():
        scale = graph[k].out_scale
        outputs[k] = (a * (scale if scale is not None else 1.0) / T).astype(np.float32)
    counts = {k: np.concatenate([p["counts"][k].to(torch.int32).cpu().numpy() for p in parts])
              for k in spike_nodes}
    spikes = ({k: np.concatenate([p["spikes"][k] for p in parts], axis=1) for k in spike_nodes}
              if record_spikes else None)
    sat = {k: sum(p["sat"][k] for p in parts) for k in parts[0]["sat"]} if parts else {}
    return SimResult(outputs=outputs, output_acc={k: np.rint(a).astype(np.int64) for k, a in acc.items()},
                     spike_counts=counts, synops=np.concatenate([p["synops"] for p in parts]),
                     timesteps=T, saturations=sat, spikes=spikes,
                     synops_by_node={k: np.concatenate([p["synops_by_node"][k] for p in parts])
                                     for k in plan.synop_nodes} if parts else {})


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from ..progress import progress_bar
    return progress_bar(True, total, "simulating", "sample")

"""The event-driven, core-by-core simulation and its cycle and energy accounting.

Each step, every population is processed in order: the step's events of each source
population (nonzero outputs: spikes, or graded input charge) reach the population's
compartments through the projection's operator (a convolution's shared kernel, a dense
matrix, or explicit synapses; :mod:`snncompile.targets.structured`), and every core counts
the synaptic events that land on its own compartments (for each event, the synapses of its
source unit into the core); then the units update (IF: integrate, saturate, fire, reset;
max pool: running counts and their maximum; output: accumulate). A layer is computed for
all its cores at once and no synapse matrix is built, so memory holds the parameters and
the units' state. Samples of a batch are independent copies of the chip, vectorized.

Cycle model (per sample): a core spends ``cycles_per_synop`` per synaptic event it
receives plus ``cycles_per_neuron`` per unit it updates each step. The cores of one layer
work in parallel; layers run one after another within a step (the zero-delay semantics:
layer k+1 integrates the spikes layer k emitted in the same step); each step ends with a
barrier of ``cycles_per_step``. So a step takes sum over layers of (max over the layer's
cores) plus the barrier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from snncompile.plugin import BackendRun, DataError, Op

from .mapping import Core
from .store import Loaded


@dataclass
class _Layer:
    """One non-input population's state: its cores (contiguous, in unit order) and units."""

    pop: dict[str, Any]
    cores: list[Core]
    inputs: list[tuple[str, Op]]
    starts: np.ndarray                  # first compartment of each core
    units: np.ndarray                   # units of each core
    bias_every: np.ndarray
    bias_first: np.ndarray
    threshold: np.ndarray | None = None
    v: np.ndarray | None = None         # IF: membranes; max pool: running counts; output: accumulators
    count: np.ndarray | None = None     # IF: (B, units) net spikes so far
    busy: np.ndarray | None = None      # (B, cores) cycles spent, all steps
    events: np.ndarray | None = None    # (B, cores) synaptic events received, all steps
    busy_before_step: np.ndarray | None = None


def _build_layers(net: Loaded, B: int) -> dict[str, _Layer]:
    out: dict[str, _Layer] = {}
    into: dict[str, list[tuple[str, Op]]] = {}
    for src, dst, op in net.projections:
        into.setdefault(dst, []).append((src, op))
    by_pop: dict[str, list[Core]] = {}
    for c in net.cores:
        by_pop.setdefault(c.population, []).append(c)
    for i, p in enumerate(net.pops):
        if p["kind"] == "input":
            continue
        cores = sorted(by_pop.get(p["name"], []), key=lambda c: c.start)
        s = p["slots"]
        n = int(np.prod(p["shape"]))
        lay = _Layer(p, cores, into.get(p["name"], []), np.array([c.start * s for c in cores], np.int64),
                     np.array([c.stop - c.start for c in cores], np.int64),
                     net.arrays[f"p{i}.bias_every"].astype(np.int64), net.arrays[f"p{i}.bias_first"].astype(np.int64))
        if p["kind"] == "if":
            lay.threshold = net.arrays[f"p{i}.threshold"].astype(np.int64)
            lay.v = np.broadcast_to(net.arrays[f"p{i}.v_init"], (B, n)).astype(np.int64)
            lay.count = np.zeros((B, n), np.int64)  # net spikes so far (signed spikes)
        else:
            lay.v = np.zeros((B, n * s), np.int64)  # max pool: running counts per compartment; output: accumulators
        lay.busy = np.zeros((B, len(cores)), np.float64)
        lay.events = np.zeros((B, len(cores)), np.float64)
        lay.busy_before_step = np.zeros((B, len(cores)), np.float64)
        out[p["name"]] = lay
    return out


def run_network(net: Loaded, x_int: np.ndarray, timesteps: int | None, record_spikes: bool) -> BackendRun:
    """Simulate ``net`` on integer inputs; spikes and outputs as the reference defines them."""
    T = int(timesteps or net.timesteps)
    arch = net.arch
    inp = net.pops[0]
    x = np.asarray(x_int)
    if x.ndim != len(inp["shape"]) + 1 or list(x.shape[1:]) != inp["shape"]:
        raise DataError(f"input shape {tuple(x.shape[1:])} per sample does not match the network's "
                        f"{tuple(inp['shape'])}")
    B = x.shape[0]
    x = np.rint(x).reshape(B, -1).astype(np.int64)
    t0 = time.perf_counter()
    layers = _build_layers(net, B)
    units = {p["name"]: int(np.prod(p["shape"])) for p in net.pops}
    spiking = [p for p in net.pops if p["kind"] in ("if", "maxpool")]
    spikes = ({p["name"]: np.zeros((T, B, units[p["name"]]), np.int8 if p.get("spikes") == "signed" else np.uint8)
               for p in spiking} if record_spikes else None)
    prev_max = {p["name"]: np.zeros((B, units[p["name"]]), np.int64) for p in net.pops if p["kind"] == "maxpool"}
    sat = {p["node"]: 0 for p in net.pops if p["kind"] == "if"}
    total_cycles = np.zeros(B)
    max_step = np.zeros(B)
    synops = np.zeros(B)
    input_events = np.zeros(B)
    n_spikes = np.zeros(B)
    updates = 0
    for t in range(T):
        # each population's output this step (spikes, max-pool increments, or input charge)
        outs: dict[str, np.ndarray | None] = {}
        step = np.full(B, float(arch.cycles_per_step))
        for p in net.pops:
            name, kind = p["name"], p["kind"]
            if kind == "input":
                outs[name] = x if p["input_mode"] == "every_step" else (x * T if t == 0 else None)
                continue
            lay = layers[name]
            cur = np.broadcast_to(lay.bias_every, (B, lay.bias_every.size)).copy()
            if t == 0:
                cur += T * lay.bias_first
            for src, op in lay.inputs:
                val = outs[src]
                if val is None or not val.any():
                    continue
                cur += np.rint(op.apply(val)).astype(np.int64)
                per_core = np.add.reduceat(op.pattern((val != 0).astype(np.float64)), lay.starts, axis=1) \
                    if lay.starts.size else np.zeros((B, 0))
                lay.events += per_core
                if net.pops[0]["name"] == src:
                    input_events += per_core.sum(axis=1)
                else:
                    synops += per_core.sum(axis=1)
                lay.busy += per_core * arch.cycles_per_synop
            lay.busy += lay.units * arch.cycles_per_neuron
            updates += int(lay.units.sum())
            out = None
            if kind == "if":
                v = lay.v + cur
                lim = 2 ** (p["membrane_bits"] - 1) - 1
                over = (v > lim) | (v < -lim)
                if over.any():
                    sat[p["node"]] += int(over.sum())
                    np.clip(v, -lim, lim, out=v)
                out = (v >= lay.threshold).astype(np.int64)
                if p.get("spikes") == "signed":  # -1 below 0 while the net count is above 0
                    out -= (v < 0) & (lay.count > 0)
                    lay.count += out
                lay.v = v - lay.threshold * out if p["reset"] == "subtract" else np.where(out > 0, 0, v)
            elif kind == "maxpool":
                lay.v += cur
                m = lay.v.reshape(B, units[name], p["slots"]).max(axis=2)
                out = m - prev_max[name]
                prev_max[name] = m
            else:
                lay.v += cur
            outs[name] = out
            if out is not None:
                n_spikes += np.count_nonzero(out, axis=1)
                if spikes is not None:
                    spikes[name][t] = out
        # cycles of this step: layers in sequence, the cores of a layer in parallel
        for lay in layers.values():
            if lay.busy.shape[1]:
                step += (lay.busy - lay.busy_before_step).max(axis=1)
                lay.busy_before_step = lay.busy.copy()
        total_cycles += step
        max_step = np.maximum(max_step, step)
    wall = time.perf_counter() - t0
    out_acc = {p["node"]: layers[p["name"]].v.reshape((B,) + tuple(p["shape"]))
               for p in net.pops if p["kind"] == "output"}
    rec = ({p["node"]: spikes[p["name"]].reshape((T, B) + tuple(p["shape"])) for p in spiking}
           if spikes is not None else None)
    stats = _stats(net, layers, T, B, total_cycles, max_step, synops, input_events, n_spikes, updates, wall, sat)
    return BackendRun(output_acc=out_acc, spikes=rec, stats=stats)


def _stats(net: Loaded, layers: dict[str, _Layer], T: int, B: int, total_cycles: np.ndarray,
           max_step: np.ndarray, synops: np.ndarray, input_events: np.ndarray, n_spikes: np.ndarray,
           updates: int, wall: float, sat: dict[str, int]) -> dict[str, Any]:
    a = net.arch
    lat = float(total_cycles.mean())
    updates_per_sample = float(updates)  # unit updates over all steps (the same for every sample)
    energy_pj = ((synops + input_events) * a.energy_per_synop_pj + updates_per_sample * a.energy_per_neuron_pj
                 + n_spikes * a.energy_per_spike_pj)
    core_rows = []
    for lay in layers.values():
        for k, m in enumerate(lay.cores):
            core_rows.append({
                "core": m.index, "population": m.population, "units": m.stop - m.start,
                "axons": m.axons, "synapses": m.synapses,
                "neuron_utilization": round((m.stop - m.start) / a.neurons_per_core, 4),
                "axon_utilization": round(m.axons / a.axons_per_core, 4),
                "synapse_utilization": round(m.synapses / a.synapses_per_core, 4),
                "busy_fraction": round(float((lay.busy[:, k] / np.maximum(total_cycles, 1)).mean()), 4),
                "events_per_sample": float(lay.events[:, k].mean())})
    core_rows.sort(key=lambda r: r["core"])
    events_total = float((synops + input_events).sum())
    return {
        "architecture": a.as_dict(), "cores_used": len(core_rows), "cores_available": a.cores,
        "cycles_per_step": lat / T, "cycles_per_step_max": float(max_step.max(initial=0)),
        "latency_cycles": lat, "latency_us": lat / a.clock_mhz,
        "synops_per_sample": float(synops.mean()), "input_events_per_sample": float(input_events.mean()),
        "spikes_per_sample": float(n_spikes.mean()), "neuron_updates_per_sample": updates_per_sample,
        "energy_nj_per_sample": float(energy_pj.mean()) / 1000.0,
        "saturations": sat, "wall_seconds": round(wall, 4),
        "samples_per_second": B / wall if wall > 0 else None,
        "synaptic_events_per_second": events_total / wall if wall > 0 else None,
        "cores": core_rows,
    }


_SUMMED = ("wall_seconds",)
_MAXED = ("cycles_per_step_max",)
_FIXED = ("architecture", "cores_used", "cores_available", "neuron_updates_per_sample")


def combine_stats(parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Statistics of a run made in chunks: per-sample figures averaged over all samples,
    maxima and wall time combined, throughputs recomputed, saturations summed."""
    if len(parts) == 1:
        return parts[0][1]
    n = sum(k for k, _ in parts)
    first = parts[0][1]
    out: dict[str, Any] = {k: first[k] for k in _FIXED}
    for key, value in first.items():
        if key in _FIXED or key in ("cores", "saturations", "samples_per_second", "synaptic_events_per_second"):
            continue
        vals = [s[key] for _, s in parts]
        if key in _SUMMED:
            out[key] = sum(vals)
        elif key in _MAXED:
            out[key] = max(vals)
        else:
            out[key] = sum(k * s[key] for k, s in parts) / n
    out["saturations"] = {k: sum(s["saturations"][k] for _, s in parts) for k in first["saturations"]}
    wall = out["wall_seconds"]
    events = (out["synops_per_sample"] + out["input_events_per_sample"]) * n
    out["samples_per_second"] = n / wall if wall > 0 else None
    out["synaptic_events_per_second"] = events / wall if wall > 0 else None
    cores = []
    for i, row in enumerate(first["cores"]):
        r = dict(row)
        for key in ("busy_fraction", "events_per_sample"):
            r[key] = sum(k * s["cores"][i][key] for k, s in parts) / n
        cores.append(r)
    out["cores"] = cores
    out["chunks"] = len(parts)
    return out

"""The event-driven, core-by-core simulation and its cycle and energy accounting.

Each step, every population is processed in order; within it, every core works on its own
units: the step's events of each source population (nonzero outputs: spikes, or graded
input charge) are looked up in the core's synapse lists (one list per presynaptic unit,
CSC), their weights accumulated into the core's compartments, then the core updates its
units (IF: integrate, saturate, fire, reset; max pool: running counts and their maximum;
output: accumulate). Samples of a batch are independent copies of the chip, vectorized.

Cycle model (per sample): a core spends ``cycles_per_synop`` per synaptic event it
receives plus ``cycles_per_neuron`` per unit it updates each step. The cores of one layer
work in parallel; layers run one after another within a step (the zero-delay semantics:
layer k+1 integrates the spikes layer k emitted in the same step); each step ends with a
barrier of ``cycles_per_step``. So a step takes sum over layers of (max over the layer's
cores) plus the barrier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from snncompile.plugin import BackendRun, DataError

from .store import Loaded


@dataclass
class _CoreState:
    index: int
    start: int
    stop: int
    slots: int
    inputs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # src, indptr, rows, w
    bias_every: np.ndarray | None = None
    bias_first: np.ndarray | None = None
    threshold: np.ndarray | None = None
    v: np.ndarray | None = None
    count: np.ndarray | None = None     # IF: (B, units) net spikes so far
    busy: np.ndarray | None = None      # (B,) cycles spent, all steps
    events: np.ndarray | None = None    # (B,) synaptic events received, all steps
    busy_before_step: np.ndarray | None = None


def _gather(indptr: np.ndarray, rows: np.ndarray, w: np.ndarray, b_idx: np.ndarray, j_idx: np.ndarray,
            payload: np.ndarray | None, n_rows: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply events (sample b, presynaptic unit j, payload) to a core's synapse lists.

    Returns the (B, n_rows) current and the (B,) number of synaptic events per sample."""
    starts = indptr[j_idx]
    lens = indptr[j_idx + 1] - starts
    total = int(lens.sum())
    per_sample = np.bincount(b_idx, weights=lens, minlength=B)
    if total == 0:
        return np.zeros((B, n_rows), np.int64), per_sample
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)
    weights = w[offsets].astype(np.float64)
    if payload is not None:
        weights *= np.repeat(payload, lens)
    target = np.repeat(b_idx, lens) * n_rows + rows[offsets]
    cur = np.bincount(target, weights=weights, minlength=B * n_rows)
    return np.rint(cur).astype(np.int64).reshape(B, n_rows), per_sample


def _build_cores(net: Loaded, B: int) -> dict[str, list[_CoreState]]:
    by_pop: dict[str, list[_CoreState]] = {}
    pop_index = {p["name"]: i for i, p in enumerate(net.pops)}
    into: dict[str, list[tuple[str, sp.csr_matrix]]] = {}
    for src, dst, m in net.projections:
        into.setdefault(dst, []).append((src, m))
    for c in net.cores:
        p = net.pops[pop_index[c.population]]
        i, s = pop_index[c.population], p["slots"]
        lo, hi = c.start * s, c.stop * s
        st = _CoreState(c.index, c.start, c.stop, s)
        for src, m in into.get(c.population, []):
            csc = m[lo:hi].tocsc()
            csc.sort_indices()
            st.inputs.append((src, csc.indptr.astype(np.int64), csc.indices.astype(np.int64),
                              csc.data.astype(np.int64)))
        st.bias_every = net.arrays[f"p{i}.bias_every"][lo:hi].astype(np.int64)
        st.bias_first = net.arrays[f"p{i}.bias_first"][lo:hi].astype(np.int64)
        if p["kind"] == "if":
            st.threshold = net.arrays[f"p{i}.threshold"][c.start:c.stop].astype(np.int64)
            st.v = np.broadcast_to(net.arrays[f"p{i}.v_init"][c.start:c.stop], (B, c.stop - c.start)).astype(np.int64)
            st.count = np.zeros((B, c.stop - c.start), np.int64)  # net spikes so far (signed spikes)
        elif p["kind"] == "maxpool":
            st.v = np.zeros((B, hi - lo), np.int64)  # running counts per compartment
        else:
            st.v = np.zeros((B, hi - lo), np.int64)  # output accumulators
        st.busy = np.zeros(B, np.float64)
        st.events = np.zeros(B, np.float64)
        by_pop.setdefault(c.population, []).append(st)
    return by_pop


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
    cores = _build_cores(net, B)
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
        events: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        step = np.full(B, float(arch.cycles_per_step))
        for p in net.pops:
            name, kind = p["name"], p["kind"]
            if kind == "input":
                val = x if p["input_mode"] == "every_step" else (x * T if t == 0 else None)
                if val is None:
                    events[name] = (np.zeros(0, np.int64), np.zeros(0, np.int64), None)
                else:
                    b, j = np.nonzero(val)
                    events[name] = (b, j, val[b, j].astype(np.float64))
                continue
            out = np.zeros((B, units[name]), np.int64) if kind != "output" else None
            for c in cores[name]:
                n_rows = (c.stop - c.start) * c.slots
                cur = np.broadcast_to(c.bias_every, (B, n_rows)).copy()
                if t == 0:
                    cur += T * c.bias_first
                for src, indptr, rows, w in c.inputs:
                    b, j, payload = events[src]
                    add, ev = _gather(indptr, rows, w, b, j, payload, n_rows, B)
                    cur += add
                    c.events += ev
                    if net.pops[0]["name"] == src:
                        input_events += ev
                    else:
                        synops += ev
                    c.busy += ev * arch.cycles_per_synop
                c.busy += (c.stop - c.start) * arch.cycles_per_neuron
                updates += c.stop - c.start
                if kind == "if":
                    v = c.v + cur
                    lim = 2 ** (p["membrane_bits"] - 1) - 1
                    over = (v > lim) | (v < -lim)
                    if over.any():
                        sat[p["node"]] += int(over.sum())
                        np.clip(v, -lim, lim, out=v)
                    s = (v >= c.threshold).astype(np.int64)
                    if p.get("spikes") == "signed":  # -1 below 0 while the net count is above 0
                        s -= (v < 0) & (c.count > 0)
                        c.count += s
                    c.v = v - c.threshold * s if p["reset"] == "subtract" else np.where(s > 0, 0, v)
                    out[:, c.start:c.stop] = s
                elif kind == "maxpool":
                    c.v += cur
                    out[:, c.start:c.stop] = c.v.reshape(B, c.stop - c.start, c.slots).max(axis=2)
                else:
                    c.v += cur
            if kind == "maxpool":
                m = out
                out = m - prev_max[name]
                prev_max[name] = m
            if out is not None:
                b, j = np.nonzero(out)
                binary = kind == "if" and p.get("spikes") != "signed"  # payload 1: implied
                events[name] = (b, j, None if binary else out[b, j].astype(np.float64))
                n_spikes += np.bincount(b, minlength=B)
                if spikes is not None:
                    spikes[name][t] = out
        # cycles of this step: layers in sequence, the cores of a layer in parallel
        for p in net.pops:
            if p["kind"] == "input":
                continue
            step += _layer_step_cycles(cores[p["name"]], t)
        total_cycles += step
        max_step = np.maximum(max_step, step)
    wall = time.perf_counter() - t0
    out_acc = {}
    for p in net.pops:
        if p["kind"] == "output":
            acc = np.concatenate([c.v for c in cores[p["name"]]], axis=1)
            out_acc[p["node"]] = acc.reshape((B,) + tuple(p["shape"]))
    rec = ({p["node"]: spikes[p["name"]].reshape((T, B) + tuple(p["shape"])) for p in spiking}
           if spikes is not None else None)
    stats = _stats(net, cores, T, B, total_cycles, max_step, synops, input_events, n_spikes, updates, wall, sat)
    return BackendRun(output_acc=out_acc, spikes=rec, stats=stats)


def _layer_step_cycles(cores: list[_CoreState], t: int) -> np.ndarray:
    """Cycles the slowest core of a layer spent in step t (from the running totals)."""
    worst = None
    for c in cores:
        prev = c.busy_before_step if c.busy_before_step is not None else np.zeros_like(c.busy)
        spent = c.busy - prev
        c.busy_before_step = c.busy.copy()
        worst = spent if worst is None else np.maximum(worst, spent)
    return worst if worst is not None else 0.0


def _stats(net: Loaded, cores: dict[str, list[_CoreState]], T: int, B: int, total_cycles: np.ndarray,
           max_step: np.ndarray, synops: np.ndarray, input_events: np.ndarray, n_spikes: np.ndarray,
           updates: int, wall: float, sat: dict[str, int]) -> dict[str, Any]:
    a = net.arch
    lat = float(total_cycles.mean())
    updates_per_sample = float(updates)  # unit updates over all steps (the same for every sample)
    energy_pj = ((synops + input_events) * a.energy_per_synop_pj + updates_per_sample * a.energy_per_neuron_pj
                 + n_spikes * a.energy_per_spike_pj)
    core_rows = []
    info = {c.index: c for c in net.cores}
    for pop_cores in cores.values():
        for c in pop_cores:
            m = info[c.index]
            core_rows.append({
                "core": c.index, "population": m.population, "units": m.stop - m.start,
                "axons": m.axons, "synapses": m.synapses,
                "neuron_utilization": round((m.stop - m.start) / a.neurons_per_core, 4),
                "axon_utilization": round(m.axons / a.axons_per_core, 4),
                "synapse_utilization": round(m.synapses / a.synapses_per_core, 4),
                "busy_fraction": round(float((c.busy / np.maximum(total_cycles, 1)).mean()), 4),
                "events_per_sample": float(c.events.mean())})
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

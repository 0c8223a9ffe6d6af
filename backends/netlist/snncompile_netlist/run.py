"""The netlist's own simulator: time-driven, one operator application per projection and
step, straight from the file: explicit (pre, post, weight) lists as a sparse product, conv
projections as a convolution with their stored kernel, dense ones as a matrix product."""

from __future__ import annotations

import numpy as np

from snncompile.plugin import BackendRun, DataError

from .format import Netlist


def simulate_netlist(net: Netlist, x_int: np.ndarray, timesteps: int | None = None,
                     record_spikes: bool = False) -> BackendRun:
    """Run a validated netlist on integer input levels (N, *input shape)."""
    doc = net.doc
    T = int(timesteps or doc["timesteps"])
    pops = doc["populations"]
    inp = pops[0]
    x = np.asarray(x_int)
    if x.ndim != len(inp["shape"]) + 1 or list(x.shape[1:]) != inp["shape"]:
        raise DataError(f"input shape {tuple(x.shape[1:])} per sample does not match the netlist's "
                        f"{tuple(inp['shape'])}")
    if not np.all(x == np.rint(x)):
        raise DataError("netlist inputs must be integer levels (see the input encoding)")
    B = x.shape[0]
    x = x.reshape(B, -1).astype(np.int64)
    ops: dict[str, list] = {p["name"]: [] for p in pops}
    for pr, op in zip(doc["projections"], net.ops):
        ops[pr["target"]].append((pr["source"], op))
    state: dict[str, dict[str, np.ndarray]] = {}
    for p in pops:
        if p["kind"] == "if":
            state[p["name"]] = {"v": np.broadcast_to(net.array(p, "v_init"), (B, p["units"])).copy(),
                                "sat": np.zeros(1, np.int64), "count": np.zeros((B, p["units"]), np.int64)}
        elif p["kind"] == "maxpool":
            state[p["name"]] = {"cum": np.zeros((B, p["compartments"]), np.int64),
                                "max": np.zeros((B, p["units"]), np.int64)}
        elif p["kind"] == "output":
            state[p["name"]] = {"acc": np.zeros((B, p["units"]), np.int64)}
    spikes = {p["name"]: np.zeros((T, B, p["units"]), np.int8 if p.get("spikes") == "signed" else np.uint8)
              for p in pops if p["kind"] in ("if", "maxpool")} if record_spikes else None
    for t in range(T):
        out: dict[str, np.ndarray] = {}
        for p in pops:
            name, kind = p["name"], p["kind"]
            if kind == "input":
                out[name] = x if inp["mode"] == "every_step" else (x * T if t == 0 else np.zeros_like(x))
                continue
            cur = np.broadcast_to(net.array(p, "bias_every"), (B, p["compartments"])).copy()
            if t == 0:
                cur += T * net.array(p, "bias_first")
            for src, op in ops[name]:
                if out[src].any():
                    cur += np.rint(op.apply(out[src])).astype(np.int64)
            st = state[name]
            if kind == "if":
                lim = 2 ** (p["membrane_bits"] - 1) - 1
                v = st["v"] + cur
                st["sat"] += int(np.count_nonzero((v > lim) | (v < -lim)))
                np.clip(v, -lim, lim, out=v)
                th = net.array(p, "threshold")
                s = (v >= th).astype(np.int64)
                if p.get("spikes") == "signed":  # -1 below 0 while the net count is above 0
                    s -= (v < 0) & (st["count"] > 0)
                    st["count"] += s
                v = v - th * s if p["reset"] == "subtract" else np.where(s > 0, 0, v)
                st["v"] = v
                out[name] = s
            elif kind == "maxpool":
                st["cum"] += cur
                m_ = st["cum"].reshape(B, p["units"], p["slots"]).max(axis=2)
                out[name] = m_ - st["max"]
                st["max"] = m_
            else:
                st["acc"] += cur
                out[name] = cur
            if spikes is not None and name in spikes:
                spikes[name][t] = out[name]
    shape = {p["name"]: tuple(p["shape"]) for p in pops}
    node = {p["name"]: p.get("node", p["name"]) for p in pops}
    output_acc = {o["node"]: state[o["population"]]["acc"].reshape((B,) + shape[o["population"]])
                  for o in doc["outputs"]}
    rec = ({node[k]: v.reshape((T, B) + shape[k]) for k, v in spikes.items()}
           if spikes is not None else None)
    stats = {"saturations": {k: int(v["sat"][0]) for k, v in state.items() if "sat" in v},
             "synapses": int(sum(pr["synapses"] for pr in doc["projections"]))}
    return BackendRun(output_acc=output_acc, spikes=rec, stats=stats)

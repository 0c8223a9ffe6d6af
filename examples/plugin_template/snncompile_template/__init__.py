"""A minimal snncompile backend: lowers a graph to one .npz of integer synapse matrices and
runs it step by step. Everything it imports from snncompile is public API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from snncompile.plugin import (ArtifactError, Backend, BackendRun, Limits, Profile, UsageError,
                               Violation, flatten_network)

__version__ = "0.1.0"


class TemplateBackend(Backend):
    name = "template"              # must equal the entry point's name
    version = __version__
    description = "template plugin (examples/plugin_template)"
    can_run = True

    def __init__(self, options=None):
        super().__init__(options)
        unknown = set(self.options) - {"weight_bits"}
        if unknown:
            raise UsageError(f"unknown target option(s) for template: {', '.join(sorted(unknown))}",
                             "known: weight_bits")
        self.weight_bits = int(self.options.get("weight_bits", 16))

    def limits(self) -> Limits:
        # Limits are data: the core checks them before lower() and reports every violation.
        # This toy target has no max pools (no running-count units), so it states its modes
        # and the core refuses graphs it cannot hold instead of producing wrong spikes.
        return Limits(weight_bits=self.weight_bits, membrane_bits=32)

    def profile(self) -> Profile:
        # What `convert --target template` uses for every conversion option the user did not
        # set (an option set explicitly is never overridden: a conflict stays a violation).
        # Here: the weight width of the target option, and the input every step, which this
        # toy runner handles the simplest way. A reason per setting is shown to the user.
        return Profile(weight_bits=min(self.weight_bits, 24), input_mode="every_step",
                       reasons={"weight_bits": f"weights of {self.weight_bits} bits (target option)",
                                "input_mode": "the template runner's simplest input"})

    def check(self, graph):
        out = super().check(graph)               # the generic rules for the limits above
        out += [Violation(n.name, "max pooling", "present", "not supported",
                          "use AveragePool or a stride-2 convolution in the model")
                for n in graph.nodes if n.op == "maxpool2d"]
        return out

    def lower(self, graph, directory: Path) -> None:
        net = flatten_network(graph)            # populations + integer synapse matrices
        pops, arrays = [], {}
        for i, p in enumerate(net.populations):
            pops.append({"name": p.name, "kind": p.kind, "node": p.node, "shape": list(p.shape),
                         "reset": p.reset, "membrane_bits": p.membrane_bits, "mode": p.input_mode})
            if p.kind != "input":
                arrays[f"{i}.bias_every"], arrays[f"{i}.bias_first"] = net.bias_every[p.name], net.bias_first[p.name]
            if p.kind == "if":
                arrays[f"{i}.threshold"], arrays[f"{i}.v_init"] = p.threshold, p.v_init
        projs = []
        for k, pr in enumerate(net.projections):
            m = pr.matrix.tocoo()
            arrays[f"w{k}.row"], arrays[f"w{k}.col"], arrays[f"w{k}.val"] = m.row, m.col, m.data
            projs.append({"source": pr.source, "target": pr.target, "shape": list(m.shape)})
        (directory / "net.json").write_text(json.dumps({"T": net.timesteps, "pops": pops, "projs": projs}))
        np.savez(directory / "net.npz", **arrays)

    def run(self, directory: Path, x_int: np.ndarray, timesteps=None, record_spikes=False) -> BackendRun:
        try:
            doc = json.loads((directory / "net.json").read_text())
            a = dict(np.load(directory / "net.npz"))
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read the template artifact in {directory}: {e}") from None
        T, B = int(timesteps or doc["T"]), len(x_int)
        into = {}
        for k, pr in enumerate(doc["projs"]):
            m = sp.csr_matrix((a[f"w{k}.val"].astype(np.int64), (a[f"w{k}.row"], a[f"w{k}.col"])), shape=pr["shape"])
            into.setdefault(pr["target"], []).append((pr["source"], m))
        state, out, spikes, acc = {}, {}, {}, {}
        for t in range(T):
            for i, p in enumerate(doc["pops"]):
                n = p["name"]
                if p["kind"] == "input":
                    x = np.asarray(x_int, np.int64).reshape(B, -1)
                    out[n] = x if p["mode"] == "every_step" else x * T * (t == 0)
                    continue
                cur = a[f"{i}.bias_every"] + (T * a[f"{i}.bias_first"] if t == 0 else 0)
                cur = cur + sum((m @ out[s].T).T for s, m in into.get(n, []))
                if p["kind"] == "if":
                    th, lim = a[f"{i}.threshold"], 2 ** (p["membrane_bits"] - 1) - 1
                    v = np.clip(state.get(n, a[f"{i}.v_init"]) + cur, -lim, lim)
                    s = v >= th
                    state[n] = v - th * s if p["reset"] == "subtract" else np.where(s, 0, v)
                    out[n] = s.astype(np.int64)
                    spikes.setdefault(p["node"], []).append(s.astype(np.uint8).reshape((B, *p["shape"])))
                else:  # output accumulator
                    acc[p["node"]] = acc.get(p["node"], 0) + np.broadcast_to(cur, (B, cur.shape[-1]))
        shapes = {p["node"]: p["shape"] for p in doc["pops"]}
        return BackendRun(output_acc={k: v.reshape((B, *shapes[k])) for k, v in acc.items()},
                          spikes={k: np.stack(v) for k, v in spikes.items()} if record_spikes else None,
                          stats={"steps": T})

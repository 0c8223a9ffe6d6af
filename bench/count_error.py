"""How far each spiking layer's counts are from what its charge warrants: the dynamics' share.

A non-leaky IF neuron with reset by subtraction that receives a total charge ``q`` over the
window ends with ``v_init + q - threshold * count`` on its membrane. If the charge came all
at once (or never turned negative after a spike) the count would be
``clamp(floor((v_init + q) / threshold), 0, T)``: the count model PTL's ANN stages train for
(``--count-aware``). A neuron fires more than that when it spikes on early excitation that
later inhibition would have cancelled (a spike cannot be taken back), and fewer when its
charge comes too late to fire once per step. This reports, per IF layer of a compiled
artifact, on real data, how often each happens, with each layer's actual inputs (so the
numbers are the layer's own error, not inherited).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/count_error.py OUT --data /tmp/fm8/val.npz --samples 1000
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from snncompile.targets.artifact import read_artifact
from snncompile.data import load_npz
from snncompile.ir import Graph, IFNode
from snncompile.sim.evaluator import run_window
from snncompile.sim.simulator import quantized_input


def count_errors(graph: Graph, x: np.ndarray, timesteps: int | None = None) -> list[dict]:
    """Per IF layer: the mean count, the mean count its charge warrants, and the shares of
    neurons (of all, and of those that fire or should) firing more or fewer than that."""
    T = int(timesteps or graph.timesteps)
    # the IF layers' inputs as outputs too: their accumulators are the charge over the window
    charged = copy.copy(graph)
    charged.outputs = list(graph.outputs) + [n.inputs[0] for n in graph.nodes if isinstance(n, IFNode)]
    res = run_window(charged, quantized_input(graph, torch.as_tensor(x)), T)
    rows = []
    for n in graph.nodes:
        if not isinstance(n, IFNode):
            continue
        charge = res.acc[n.inputs[0]]  # (N, C, ...)
        # the IR keeps per-channel arrays shaped to broadcast over a sample, as the simulator reads them
        th = torch.as_tensor(n.threshold, dtype=torch.float64)
        v0 = torch.as_tensor(n.v_init if n.v_init is not None else 0.0, dtype=torch.float64)
        warranted = torch.clamp(torch.floor((v0 + charge) / th), 0, T)
        count = res.counts[n.name].to(torch.float64)
        d = count - warranted
        active = (count > 0) | (warranted > 0)
        share = lambda m: float(m.double().mean()) if m.numel() else 0.0  # noqa: E731
        rows.append({"layer": n.name, "count": float(count.mean()), "warranted": float(warranted.mean()),
                     "more": share(d > 0), "fewer": share(d < 0),
                     "more_active": share((d > 0)[active]), "fewer_active": share((d < 0)[active]),
                     "extra_spikes_per_sample": float(d.sum() / d.shape[0])})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, help="a convert output folder")
    p.add_argument("--data", type=Path, required=True, help="an .npz with x (and y)")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--timesteps", type=int, default=None, help="default: the artifact's T")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    art = read_artifact(args.artifact)
    data = load_npz(str(args.data), tuple(art.graph.input.shape))
    rows = count_errors(art.graph, data.x[:args.samples], args.timesteps)
    print(f"{'layer':<28} {'count':>6} {'warranted':>9} {'more':>6} {'fewer':>6}   of firing: more  fewer")
    for r in rows:
        print(f"{r['layer']:<28} {r['count']:6.3f} {r['warranted']:9.3f} {r['more']:6.3f} {r['fewer']:6.3f}"
              f"   {r['more_active']:16.3f} {r['fewer_active']:6.3f}")
    print(json.dumps({"artifact": str(args.artifact), "samples": min(args.samples, len(data.x)), "layers": rows}))


if __name__ == "__main__":
    main()

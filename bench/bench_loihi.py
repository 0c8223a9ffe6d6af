#!/usr/bin/env python3
"""Measure the loihi backend on a compiled snncompile artifact: bit-exactness against the
reference simulator, accuracy, and time per sample on Lava's fixed_pt simulator vs the
reference (one sample at a time with spikes recorded, and batched without), plus Lava's
start-up cost (everything but the simulated steps: interpreter, lava import, network
build and compile, read-back).

    .venv/bin/python bench/bench_loihi.py OUT --data test.npz [--samples 20] [--json]

OUT is a directory written by `snncompile convert` (its IR in ir.json/ir.npz).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from snncompile.plugin import get_backend, load_graph
from snncompile.sim.simulator import quantize_input, simulate


def bench(out: str, data: str, samples: int, timesteps: int | None) -> dict:
    graph = load_graph(out)
    with np.load(data) as z:
        x, y = z["x"][:samples], z["y"][:samples]
    T = int(timesteps or graph.timesteps)
    backend = get_backend("loihi")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        backend.lower(graph, Path(tmp))
        lower_s = time.perf_counter() - t0
        run = backend.run(Path(tmp), quantize_input(graph, x), timesteps=T, record_spikes=True)
    simulate(graph, x[:1], timesteps=T)  # warm up torch (first-call costs are not per sample)
    t0 = time.perf_counter()
    ref = simulate(graph, x, timesteps=T, record_spikes=True, batch_size=1)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulate(graph, x, timesteps=T)
    ref_batched_s = time.perf_counter() - t0
    name = graph.outputs[0]
    exact = all(np.array_equal(run.output_acc[k], ref.output_acc[k]) for k in ref.output_acc) and \
        all(np.array_equal(run.spikes[k], ref.spikes[k]) for k in ref.spikes)
    st = run.stats
    return {
        "samples": int(x.shape[0]), "timesteps": T, "bit_exact": bool(exact),
        "accuracy_lava": float((run.output_acc[name].argmax(1) == y).mean()),
        "accuracy_reference": float((ref.output_acc[name].argmax(1) == y).mean()),
        "current_wraps": st["current_wraps"], "cores_per_layer": st["cores_per_layer"],
        "cores": st["cores"], "lower_s": round(lower_s, 3),
        "lava_wall_s": st["wall_s"], "lava_run_s": st["lava_run_s"],
        "lava_build_s": st["lava_build_s"], "lava_readback_s": st["lava_readback_s"],
        "lava_compile_first_step_s": st["lava_compile_first_step_s"],
        "lava_startup_s": round(st["wall_s"] - st["lava_run_s"], 3),
        "lava_steps_per_s": st["lava_steps_per_s"],
        "lava_ms_per_sample": round(1000 * st["lava_run_s"] / x.shape[0], 2),  # steps after the first
        "reference_ms_per_sample": round(1000 * ref_s / x.shape[0], 3),
        "reference_batched_ms_per_sample": round(1000 * ref_batched_s / x.shape[0], 3),
        "slowdown_vs_batched_reference": round(st["lava_run_s"] / ref_batched_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--timesteps", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    res = bench(a.out, a.data, a.samples, a.timesteps)
    print(json.dumps(res, indent=None if a.json else 1))
    return 0 if res["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())

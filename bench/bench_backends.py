"""Speed of the backends' own simulators next to the reference simulator, on the digits CNN.

    .venv/bin/python bench/bench_backends.py [--timesteps 32] [--repeats 3] [--json]

Compiles examples/digits (trained by `make demo`; trained here if missing) for cyclesim with
8-bit weights and 24-bit membranes (what the default architecture holds), then times, on
the 540 test samples: the reference simulator (snncompile.sim.simulator.simulate), the cyclesim
backend's run (event-driven, core by core, with cycle/energy accounting) and the netlist
backend's run. Reports samples/s and synaptic events/s (events = spike-driven synaptic
operations, the reference's SynOps; cyclesim also processes the analog input's events,
listed separately), best of --repeats. Spikes are not recorded (as in `evaluate`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits" / "data"


def _ensure_digits() -> Path:
    if not (DIGITS / "digits_cnn.onnx").is_file():
        subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(DIGITS)], check=True)
    return DIGITS


def _best(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from snncompile.passes.convert import ConversionOptions
    from snncompile.app.compile import CompileRequest, compile_model
    from snncompile.plugin import get_backend
    from snncompile.ir.serialize import load_graph
    from snncompile.sim.simulator import quantize_input, simulate

    data = _ensure_digits()
    test = np.load(data / "test.npz")
    x = test["x"].astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_model(CompileRequest(model=str(data / "digits_cnn.onnx"), out=str(out), target="cyclesim",
                                     calib=str(data / "calib.npz"),
                                     options=ConversionOptions(timesteps=args.timesteps, weight_bits=8,
                                                               membrane_bits=24)))
        g = load_graph(out)
        T = args.timesteps
        t_ref, ref = _best(lambda: simulate(g, x, timesteps=T), args.repeats)
        synops = float(ref.synops.sum())
        rows.append({"simulator": "reference (torch, time-driven)", "seconds": t_ref,
                     "samples_per_s": len(x) / t_ref, "synaptic_events_per_s": synops / t_ref})
        x_int = quantize_input(g, x)
        cs = get_backend("cyclesim")
        t_cs, run = _best(lambda: cs.run(out / "cyclesim", x_int, T), args.repeats)
        assert all(np.array_equal(run.output_acc[k], ref.output_acc[k]) for k in ref.output_acc)
        st = run.stats
        cs_events = (st["synops_per_sample"] + st["input_events_per_sample"]) * len(x)
        rows.append({"simulator": "cyclesim (event-driven, per core)", "seconds": t_cs,
                     "samples_per_s": len(x) / t_cs, "synaptic_events_per_s": st["synops_per_sample"] * len(x) / t_cs,
                     "all_events_per_s": cs_events / t_cs, "synops_match_reference":
                     bool(np.isclose(st["synops_per_sample"], ref.synops.mean(), rtol=1e-12)),
                     "cores_used": st["cores_used"], "cycles_per_step": st["cycles_per_step"],
                     "latency_us": st["latency_us"], "energy_nj_per_sample": st["energy_nj_per_sample"]})
        nl_dir = Path(tmp) / "nl"
        nl_dir.mkdir()
        nl = get_backend("netlist")
        nl.lower(g, nl_dir)
        t_nl, nrun = _best(lambda: nl.run(nl_dir, x_int, T), args.repeats)
        assert all(np.array_equal(nrun.output_acc[k], ref.output_acc[k]) for k in ref.output_acc)
        rows.append({"simulator": "netlist (sparse, time-driven)", "seconds": t_nl,
                     "samples_per_s": len(x) / t_nl, "synaptic_events_per_s": synops / t_nl})
    res = {"model": "examples/digits CNN (conv16-avgpool-conv32-avgpool-fc64-10), 8-bit weights",
           "samples": int(len(x)), "timesteps": T, "repeats": args.repeats,
           "synops_per_sample": float(ref.synops.mean()),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
                      f"load average {os.getloadavg()[0]:.1f} at the end",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['model']}; {res['samples']} samples, T={T}, best of {args.repeats}; {res['machine']}; {res['date']}")
    print(f"SynOps/sample: {res['synops_per_sample']:.0f}")
    print("| simulator | s | samples/s | synaptic events/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['simulator']} | {r['seconds']:.2f} | {r['samples_per_s']:.0f} | {r['synaptic_events_per_s']:.3g} |")
    c = rows[1]
    print(f"cyclesim model: {c['cores_used']} cores, {c['cycles_per_step']:.0f} cycles/step, "
          f"latency {c['latency_us']:.0f} us/sample at 100 MHz, {c['energy_nj_per_sample']:.0f} nJ/sample; "
          f"events equal reference SynOps: {c['synops_match_reference']}")


if __name__ == "__main__":
    main()

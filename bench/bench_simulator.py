"""Benchmark (b): reference simulator time per sample per step vs one ANN forward.

Two networks, each converted with ``snncompile convert --calib ... -T 16 --bits B`` for
B = 16 (the default) and 8 (hardware-typical weights):

* ``digits``: the CNN of the demo, trained and exported by ``examples/digits/train.py`` into
  a temporary folder (about 10 s), calibrated on its ``calib.npz``, timed on its test set;
* ``cifar``: a CIFAR-sized CNN built here with torch (3x32x32; conv 32-64-128, each followed
  by ReLU and a 2x2 average pool; a linear classifier), random (seeded) weights, calibrated
  and timed on uniform random inputs, large enough that arithmetic outweighs overhead.

For every batch size b, ``snncompile.sim.simulator.simulate(graph, x, timesteps=T, batch_size=b)``
runs on b samples (at b < 64: on a stream of 64 samples, b at a time; 8 for cifar) and
onnxruntime runs the source ONNX model on the same samples, b at a time (cifar: b <= 64). Each is timed as the best of several
repeats after warm-up runs (the best, not the median: the machine may be shared, and other
load only ever adds time). Reported: the
simulator's seconds per sample per time step, onnxruntime's seconds per sample per forward,
and their ratio (the target: a simulated step costs no more than one ANN forward, ratio <= 1).

The simulator is asked for the IF kernel of ``snncompile/sim/kernels/if_kernel.py`` (``fused_if=True``,
where the version under test takes it) and warmed up, so it runs as in a process that has
simulated before (steady state: a process's first use costs more, to import numba and load the
compiled kernel; see ``snncompile.sim.plan.use_fused_if``).

Threads: torch keeps its default (``torch.get_num_threads()``) unless ``--threads`` sets it;
the onnxruntime session is given the same number of intra-op threads (and one inter-op
thread, sequential execution). ``--clock cpu`` times CPU seconds of this process instead of
wall seconds (with ``--threads 1``: a measure that a shared machine disturbs far less).

Usage::

    .venv/bin/python bench/bench_simulator.py [--batch-sizes 1,256] [--timesteps 16]
                                              [--repeats 3] [--out bench/results] [--profile]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import sys
import time
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import (DEFAULT_RESULTS, REPO_ROOT, fmt, machine_info, run_child,  # noqa: E402
                    snncompile_cli, time_repeats, write_json)

CIFAR_CALIB = 256
CIFAR_EVAL = 256
STREAM_SAMPLES = 64  # samples timed at small batch sizes, batch by batch
CIFAR_BATCH = 64
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def build_cifar_cnn(seed: int) -> Any:
    """The CIFAR-sized CNN (torch default initialisation, seeded)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 32, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.AvgPool2d(2)),
        ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.AvgPool2d(2)),
        ("conv3", nn.Conv2d(64, 128, 3, padding=1)), ("relu3", nn.ReLU()), ("pool3", nn.AvgPool2d(2)),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(128 * 4 * 4, 10)),
    ])).eval()


def export_cifar(work: Path, seed: int) -> tuple[Path, Path, np.ndarray]:
    """Export the CIFAR-sized CNN (legacy exporter, dynamic batch, opset 17) and write its
    calibration data; returns (model path, calib path, evaluation inputs)."""
    import warnings

    import torch

    model = build_cifar_cnn(seed)
    path = work / "cifar_cnn.onnx"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model, torch.zeros(1, 3, 32, 32), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    rng = np.random.default_rng(seed)
    calib = work / "cifar_calib.npz"
    np.savez(calib, x=rng.random((CIFAR_CALIB, 3, 32, 32), dtype=np.float32))
    x_eval = rng.random((CIFAR_EVAL, 3, 32, 32), dtype=np.float32)
    return path, calib, x_eval


def prepare_digits(work: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """Train and export the demo's digits CNN into ``work``; returns (model, calib, x, y)."""
    data = work / "digits"
    r = run_child([sys.executable, str(REPO_ROOT / "examples" / "digits" / "train.py"), "--out", str(data)])
    if r.returncode != 0:
        raise SystemExit(f"examples/digits/train.py failed:\n{r.stderr[-3000:]}")
    with np.load(data / "test.npz") as f:
        x, y = f["x"], f["y"]
    return data / "digits_cnn.onnx", data / "calib.npz", x, y


def compile_cli(model: Path, calib: Path, out: Path, timesteps: int, bits: int) -> list[str]:
    """``snncompile convert MODEL --calib CALIB -T T --bits B -o OUT``; returns the command."""
    cmd = [snncompile_cli(), "convert", str(model), "--calib", str(calib), "-T", str(timesteps),
           "--bits", str(bits), "-o", str(out), "--force"]
    r = run_child(cmd)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return cmd


def ort_session(model_path: Path, threads: int) -> Any:
    """A plain CPU InferenceSession with ``threads`` intra-op threads, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def graph_facts(graph: Any, timesteps: int) -> dict[str, Any]:
    """Size of the SNN and which nodes the simulator must run in float64."""
    from snncompile.ir import IFNode
    from snncompile.ir.structure import ann_macs
    from snncompile.sim.bounds import EXACT_F32, value_bounds

    bounds = value_bounds(graph, timesteps)
    return {"nodes": len(graph.nodes),
            "if_layers": sum(isinstance(n, IFNode) for n in graph.nodes),
            "neurons": int(sum(int(np.prod(n.shape)) for n in graph.nodes if isinstance(n, IFNode))),
            "ann_macs_per_sample": int(ann_macs(graph)),
            "float64_nodes": [n.name for n in graph.nodes if bounds[n.name] >= EXACT_F32]}


def bench_network(name: str, out: Path, x_all: np.ndarray, y_all: np.ndarray | None,
                  batch_sizes: list[int], timesteps: int, repeats: int,
                  profile_dir: Path | None, stream: int = 64, clock: str = "wall") -> dict[str, Any]:
    """Time simulator and onnxruntime on one compiled network at every batch size."""
    import torch

    from snncompile.targets.artifact import read_artifact
    from snncompile.sim.simulator import simulate

    # steady state: the IF kernel serves every run (older versions, in A/B runs, chose it
    # themselves once it was loaded)
    if "fused_if" in inspect.signature(simulate).parameters:
        simulate = functools.partial(simulate, fused_if=True)
    elif importlib.util.find_spec("snncompile.sim.kernels.if_kernel"):
        importlib.import_module("snncompile.sim.kernels.if_kernel")

    art = read_artifact(out)
    g = art.graph
    threads = torch.get_num_threads()
    sess = ort_session(art.model_path, threads)
    in_name, out_name = g.meta["onnx_input"], g.meta["onnx_output"]
    rows = []
    for bs in batch_sizes:
        n = bs * max(1, stream // bs)  # small batches: a stream of several batches
        if n > len(x_all):
            raise SystemExit(f"{name}: batch size {bs} exceeds the {len(x_all)} samples available")
        x = np.ascontiguousarray(x_all[:n], dtype=np.float32)
        result: dict[str, Any] = {}

        def run_sim() -> None:
            result["res"] = simulate(g, x, timesteps=timesteps, batch_size=bs)

        def run_ort() -> np.ndarray:
            return np.concatenate([sess.run([out_name], {in_name: x[i:i + bs]})[0]
                                   for i in range(0, n, bs)])

        sim_times = time_repeats(run_sim, repeats, warmup=1, clock=CLOCKS[clock])
        ort_times = time_repeats(run_ort, max(10, 3 * repeats), warmup=2, clock=CLOCKS[clock])
        ann = run_ort().reshape(n, -1)
        snn = result["res"].output.reshape(n, -1)
        sim_step = min(sim_times) / (n * timesteps)
        ann_fwd = min(ort_times) / n
        row = {"batch_size": bs, "samples": n, "timesteps": timesteps,
               "sim_seconds_per_call": min(sim_times), "sim_seconds_all": sim_times,
               "ort_seconds_per_call": min(ort_times), "ort_seconds_all": ort_times,
               "sim_us_per_sample_step": sim_step * 1e6, "ort_us_per_sample": ann_fwd * 1e6,
               "ratio_step_over_forward": sim_step / ann_fwd,
               "target_met": sim_step <= ann_fwd,
               "agreement_snn_ann": float((snn.argmax(1) == ann.argmax(1)).mean())}
        if y_all is not None:
            row["snn_accuracy"] = float((snn.argmax(1) == y_all[:n]).mean())
            row["ann_accuracy"] = float((ann.argmax(1) == y_all[:n]).mean())
        rows.append(row)
        print(f"[simulator] {name} batch {bs}: {row['sim_us_per_sample_step']:.2f} us/sample/step "
              f"vs onnxruntime {row['ort_us_per_sample']:.2f} us/sample "
              f"(ratio {row['ratio_step_over_forward']:.1f})", flush=True)
    if profile_dir is not None:
        profile_simulate(g, np.ascontiguousarray(x_all[:max(batch_sizes)], dtype=np.float32),
                         timesteps, profile_dir / f"simulate_{name.replace(' ', '_')}.txt")
    return {"network": name, "clock": clock, "threads": {"torch": threads, "onnxruntime_intra_op": threads,
                                         "onnxruntime_inter_op": 1},
            **graph_facts(g, timesteps), "results": rows}


def profile_simulate(graph: Any, x: np.ndarray, timesteps: int, path: Path) -> None:
    """Write cProfile (Python functions) and torch.profiler (tensor operators) tables of one
    simulate call to ``path``."""
    import cProfile
    import io
    import pstats

    import torch

    from snncompile.sim.simulator import simulate

    simulate(graph, x, timesteps=timesteps, batch_size=len(x))
    prof = cProfile.Profile()
    prof.enable()
    simulate(graph, x, timesteps=timesteps, batch_size=len(x))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        simulate(graph, x, timesteps=timesteps, batch_size=len(x))
    table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"batch {len(x)}, T={timesteps}\n\n== cProfile ==\n{buf.getvalue()}\n"
                    f"== torch.profiler ==\n{table}\n")


def summary_table(networks: list[dict[str, Any]]) -> str:
    """Text table of the measured numbers."""
    from snncompile.app.table import format_table

    rows = []
    for net in networks:
        for r in net["results"]:
            rows.append([net["network"], r["batch_size"], r["timesteps"],
                         fmt(r["sim_us_per_sample_step"]), fmt(r["ort_us_per_sample"]),
                         fmt(r["ratio_step_over_forward"], 1), "yes" if r["target_met"] else "NO",
                         fmt(r["agreement_snn_ann"], 3)])
    return format_table(["network", "batch", "T", "sim us/sample/step", "ORT us/sample",
                         "step/forward", "<= 1", "SNN=ANN"], rows)


def run(batch_sizes: list[int], timesteps: int, repeats: int, out_dir: Path, profile: bool,
        seed: int = 0, bits_list: tuple[int, ...] = (16, 8), clock: str = "wall") -> dict[str, Any]:
    """Prepare both networks, time them, write ``simulator.json``; return the results."""
    profile_dir = out_dir / "profiles" if profile else None
    networks = []
    with tempfile.TemporaryDirectory(prefix="snnbench_sim_") as d:
        work = Path(d)
        print("[simulator] training the digits CNN (examples/digits/train.py) ...", flush=True)
        model, calib, x, y = prepare_digits(work)
        nets = [("digits", model, calib, x, y, batch_sizes)]
        print("[simulator] exporting the CIFAR-sized CNN ...", flush=True)
        model, calib, x = export_cifar(work, seed)
        # the big network at a smaller stream and batch, so the benchmark stays a few minutes
        nets.append(("cifar", model, calib, x, None, [min(b, CIFAR_BATCH) for b in batch_sizes]))
        for name, model, calib, x, y, sizes in nets:
            for bits in bits_list:
                out = work / f"{name}_{bits}"
                cmd = compile_cli(model, calib, out, timesteps, bits)
                net = bench_network(f"{name} {bits}-bit", out, x, y, sorted(set(sizes)), timesteps,
                                    repeats, profile_dir, STREAM_SAMPLES if name == "digits" else 8,
                                    clock)
                net["convert_command"] = " ".join(cmd)
                networks.append(net)
    data = {"benchmark": "simulator", "machine": machine_info(), "networks": networks}
    write_json(out_dir / "simulator.json", data)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the benchmark, print the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="1,256", help="comma-separated batch sizes")
    p.add_argument("--timesteps", "-T", type=int, default=16, help="time steps T")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed simulate calls per batch size; the best is reported")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder")
    p.add_argument("--profile", action="store_true",
                   help="also write cProfile and torch.profiler tables under OUT/profiles")
    p.add_argument("--seed", type=int, default=0, help="seed of the CIFAR-sized CNN and its data")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and onnxruntime threads (default: torch's default)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall seconds, or CPU seconds of this process")
    args = p.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not sizes or min(sizes) < 1:
        p.error("--batch-sizes takes positive integers")
    data = run(sizes, args.timesteps, max(1, args.repeats), args.out, args.profile, args.seed,
               clock=args.clock)
    print(summary_table(data["networks"]))
    print(f"results: {args.out / 'simulator.json'}")
    return data


if __name__ == "__main__":
    main()

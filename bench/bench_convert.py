"""Benchmark (a): import + convert time and peak memory of large model-zoo graphs.

The models are the "light" VGG19 and ResNet50 that ship inside the onnx package
(``onnx/backend/test/data/light``; their weights are ConstantOfShape nodes, folded at import,
which is fine for timing), input 1x3x224x224.

Every measurement runs in a fresh child process, so its peak RSS belongs to one model and
one mode (the parent collects the child's ``ru_maxrss`` with ``os.wait4``; the worker also
reads its own ``VmHWM``). The parent stays small (model copies are written by children too),
because Linux carries a parent's peak RSS into the ``ru_maxrss`` of the children it starts.

* a *worker* child runs the pipeline steps of ``snncompile convert`` one by one and times
  each: load (``load_onnx``), import (``import_onnx``), calibration (``load_npz`` +
  ``activation_scales``, or ``weight_bounds`` without data), conversion (``convert``) and
  writing the artifact (``write_artifact``), recording its peak RSS after each step;
* a *CLI* child runs the whole ``snncompile convert`` command (Python start-up and imports
  included), which is what the targets are judged on.

Both are run without calibration data (``nocalib``: weight-bound normalization) and with
calibration on 8 random inputs (``calib8``: an .npz generated in a temporary folder;
onnxruntime runs the model).

The zoo files fix the batch axis at 1; calibration hands onnxruntime one sample at a time
for such a model.

The zoo's constant weights compress to almost nothing, which flatters the step that writes
the artifact. ``--weights random`` (not part of ``make bench``) first turns every
ConstantOfShape weight into a He-initialised random initializer (a model file the size of
the real network), so every step sees realistic data.

Usage::

    .venv/bin/python bench/bench_convert.py [--models vgg19,resnet50] [--out bench/results]
                                            [--modes nocalib,calib8] [--weights const|random]
                                            [--repeats N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (DEFAULT_RESULTS, GIB, fmt, machine_info, median,  # noqa: E402
                    run_child, snncompile_cli, write_json)

TARGET_SECONDS = 10.0
TARGET_RSS_GIB = 4.0
CALIB_SAMPLES = 8
TIMESTEPS = 16
MODES = ("nocalib", "calib8")


def zoo_model(name: str) -> Path:
    """Path of ``light_<name>.onnx`` in the onnx package (or ``name`` itself if it is a file)."""
    if os.path.isfile(name):
        return Path(name)
    import onnx

    path = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.is_file():
        raise SystemExit(f"model '{name}' not found at {path}")
    return path


def input_shape(model_path: Path) -> tuple[int, ...]:
    """Per-sample input shape of an ONNX model (batch axis dropped)."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    vi = next(i for i in m.graph.input if i.name not in inits)
    return tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim[1:])


def random_weights_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """Write ``src`` with every ConstantOfShape of a constant shape replaced by an initializer
    of that shape: He-normal random values (std sqrt(2 / fan-in)) for matrices and kernels;
    vectors (biases, batch-norm statistics) keep the constant they were filled with."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    inits = {i.name: i for i in m.graph.initializer}
    keep_nodes, new_inits, dropped = [], [], set()
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]))
            if len(shape) > 1:
                std = np.float32(np.sqrt(2.0 / int(np.prod(shape[1:]))))
                w = rng.standard_normal(shape, dtype=np.float32) * std
            else:  # biases and batch-norm statistics keep their constant (variances stay > 0)
                value = next((numpy_helper.to_array(a.t) for a in n.attribute if a.name == "value"),
                             np.zeros(1, np.float32))
                w = np.full(shape, value.reshape(-1)[0], dtype=value.dtype)
            new_inits.append(numpy_helper.from_array(w, n.output[0]))
            dropped.add(n.input[0])
        else:
            keep_nodes.append(n)
    still_used = {t for n in keep_nodes for t in n.input}
    dropped -= still_used
    del m.graph.node[:]
    m.graph.node.extend(keep_nodes)
    kept = [i for i in m.graph.initializer if i.name not in dropped]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept + new_inits)
    if m.ir_version < 4:  # initializers must also be graph inputs
        inputs = [i for i in m.graph.input if i.name not in dropped]
        inputs += [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new_inits]
        del m.graph.input[:]
        m.graph.input.extend(inputs)
    onnx.save(m, str(dst))
    return dst


def make_calib(path: Path, shape: tuple[int, ...], n: int, seed: int = 0) -> Path:
    """Write ``n`` uniform random inputs in [0, 1) as a calibration .npz."""
    import numpy as np

    x = np.random.default_rng(seed).random((n,) + shape, dtype=np.float32)
    np.savez(path, x=x)
    return path


def _peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM of its own address space where /proc has it.

    ``ru_maxrss`` alone is not enough: Linux carries the parent's peak into a child across
    fork and exec, so a child of a large parent would report the parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _prepare_in_child(kind: str, src: Path, dst: Path) -> Path:
    """Write a modified model copy in a child process, so this (parent) process stays small
    and the peak RSS its later children report is their own."""
    r = run_child([sys.executable, str(Path(__file__).resolve()), "--prepare", kind, str(src), str(dst)])
    if r.returncode != 0:
        raise SystemExit(f"preparing {dst.name} failed:\n{r.stderr[-3000:]}")
    return dst


def worker(model: Path, calib: Path | None, artifact: Path, profile: Path | None) -> dict[str, Any]:
    """Run the steps of ``snncompile convert`` one by one in this process; time each.

    Returns seconds and the peak RSS so far (MiB) after each step."""
    import logging

    logging.getLogger("snncompile").setLevel(logging.ERROR)  # the expected warnings are noise here
    from snncompile.targets.artifact import write_artifact
    from snncompile.calibrate.statistics import activation_scales, weight_bounds
    from snncompile.passes.convert import ConversionOptions, convert
    from snncompile.data import load_npz
    from snncompile.frontend import import_onnx, load_onnx
    from snncompile.ir import IFNode, WeightedNode

    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
    steps: dict[str, dict[str, float]] = {}
    rss_start = _peak_rss_mib()

    def step(name: str, fn: Any) -> Any:
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        if prof is not None:
            prof.disable()
        steps[name] = {"seconds": dt, "peak_rss_mib": _peak_rss_mib()}
        return out

    model_proto = step("load", lambda: load_onnx(str(model)))
    ann = step("import", lambda: import_onnx(model_proto).graph)
    if calib is not None:
        cal = step("calibrate", lambda: activation_scales(
            model_proto, ann, load_npz(str(calib), ann.input.shape, need_labels=False).x))
    else:
        cal = step("calibrate", lambda: weight_bounds(ann))
    opts = ConversionOptions(timesteps=TIMESTEPS)
    snn = step("convert", lambda: convert(ann, cal, opts))
    step("write", lambda: write_artifact(str(artifact), snn, model_proto, {"bench": True}, force=True))
    if prof is not None:
        prof.dump_stats(str(profile))
    params = sum(int(n.weight.size) + (int(n.bias.size) if n.bias is not None else 0)
                 for n in ann.nodes if isinstance(n, WeightedNode))
    return {"steps": steps, "rss_after_imports_mib": rss_start, "params": params,
            "ann_nodes": len(ann.nodes), "snn_nodes": len(snn.nodes),
            "if_layers": sum(isinstance(n, IFNode) for n in snn.nodes),
            "artifact_bytes": sum(f.stat().st_size for f in artifact.iterdir())}


def measure(model: Path, calib: Path | None, tmp: Path, profile_dir: Path | None,
            repeats: int = 1) -> dict[str, Any]:
    """One model in one mode: worker children (per-step times) and CLI children (end to end),
    ``repeats`` of each; times are medians, peak RSS the maximum over the repeats."""
    tag = f"{model.stem}_{'calib8' if calib else 'nocalib'}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(model),
           "--artifact", str(tmp / f"{tag}_worker")]
    if calib is not None:
        cmd += ["--calib", str(calib)]
    workers = []
    for _ in range(repeats):
        w = run_child(cmd)
        if w.returncode != 0:
            raise SystemExit(f"worker failed on {model.name}:\n{w.stderr[-3000:]}")
        r = json.loads(w.stdout.strip().splitlines()[-1])
        r["worker_wall_s"], r["worker_peak_rss_mib"] = w.wall_s, w.maxrss_mib
        workers.append(r)
    if profile_dir is not None:  # an extra, untimed run under cProfile
        w = run_child(cmd + ["--profile-to", str(profile_dir / f"{tag}.prof")])
        if w.returncode != 0:
            raise SystemExit(f"profiled worker failed on {model.name}:\n{w.stderr[-3000:]}")
    res = dict(workers[0])
    res["steps"] = {name: {"seconds": median([r["steps"][name]["seconds"] for r in workers]),
                           "seconds_all": [r["steps"][name]["seconds"] for r in workers],
                           "peak_rss_mib": max(r["steps"][name]["peak_rss_mib"] for r in workers)}
                    for name in workers[0]["steps"]}
    res["worker_wall_s"] = median([r["worker_wall_s"] for r in workers])
    res["worker_peak_rss_mib"] = max(r["worker_peak_rss_mib"] for r in workers)
    if profile_dir is not None:
        res["profile"] = str(profile_dir / f"{tag}.prof")

    cli = [snncompile_cli(), "convert", str(model), "-o", str(tmp / f"{tag}_cli"), "--force",
           "-T", str(TIMESTEPS), "--json"]
    if calib is not None:
        cli += ["--calib", str(calib)]
    runs = []
    for _ in range(repeats):
        c = run_child(cli)
        if c.returncode != 0:
            raise SystemExit(f"snncompile convert failed on {model.name}:\n{c.stderr[-3000:]}")
        runs.append((c, json.loads(c.stdout)))
    wall = median([c.wall_s for c, _ in runs])
    rss = max(c.maxrss_mib for c, _ in runs)
    res["cli"] = {"wall_s": wall, "wall_s_all": [c.wall_s for c, _ in runs], "peak_rss_mib": rss,
                  "compile_model_s": median([s["seconds"] for _, s in runs]),
                  "command": " ".join(cli)}
    res["repeats"] = repeats
    res["targets"] = {"seconds": TARGET_SECONDS, "rss_gib": TARGET_RSS_GIB,
                      "time_met": wall <= TARGET_SECONDS,
                      "memory_met": rss * 1024 ** 2 <= TARGET_RSS_GIB * GIB}
    return res


def summary_table(results: list[dict[str, Any]]) -> str:
    """Text table of the measured numbers."""
    from snncompile.app.table import format_table

    rows = []
    for r in results:
        s = r["steps"]
        rows.append([r["model"], r["mode"], fmt(s["load"]["seconds"]), fmt(s["import"]["seconds"]),
                     fmt(s["calibrate"]["seconds"]), fmt(s["convert"]["seconds"]), fmt(s["write"]["seconds"]),
                     fmt(r["cli"]["wall_s"]), fmt(r["cli"]["peak_rss_mib"] / 1024, 2),
                     "yes" if r["targets"]["time_met"] else "NO",
                     "yes" if r["targets"]["memory_met"] else "NO"])
    return format_table(["model", "mode", "load s", "import s", "calib s", "convert s", "write s",
                         "CLI s", "CLI GiB", "<=10 s", "<=4 GiB"], rows)


def run(models: list[str], out_dir: Path, profile: bool,
        modes: tuple[str, ...] = MODES, weights: str = "const", repeats: int = 1) -> dict[str, Any]:
    """Measure every model in every mode; write ``convert.json`` (``convert_random.json``
    with random weights); return the results."""
    results: list[dict[str, Any]] = []
    profile_dir = out_dir / "profiles" if profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snnbench_convert_") as d:
        tmp = Path(d)
        for name in models:
            path = zoo_model(name)
            calib = make_calib(tmp / f"{path.stem}_calib.npz", input_shape(path), CALIB_SAMPLES)
            if weights == "random":
                print(f"[convert] writing {path.stem} with random weights ...", flush=True)
                (tmp / "random").mkdir(exist_ok=True)
                path = _prepare_in_child("random", path, tmp / "random" / path.name)
            for mode in modes:
                print(f"[convert] {path.name} ({mode}, {weights} weights) ...", flush=True)
                r = measure(path, calib if mode == "calib8" else None,
                            tmp, profile_dir, repeats)
                r.update({"model": path.stem, "mode": mode, "file": str(path), "weights": weights,
                          "model_file_bytes": path.stat().st_size,
                          "calibration_samples": CALIB_SAMPLES if mode == "calib8" else 0})
                results.append(r)
    data = {"benchmark": "convert", "machine": machine_info(), "timesteps": TIMESTEPS,
            "parent_peak_rss_mib": _peak_rss_mib(), "weights": weights, "results": results}
    write_json(out_dir / ("convert.json" if weights == "const" else "convert_random.json"), data)
    return data


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Parse arguments; run the benchmark (or, with --worker, one measurement) and print it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg19,resnet50",
                   help="comma-separated light_<name>.onnx names from the onnx package, or paths")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder")
    p.add_argument("--modes", default=",".join(MODES),
                   help="nocalib (weight-bound normalization) and/or calib8 (calibration on 8 random inputs)")
    p.add_argument("--weights", choices=("const", "random"), default="const",
                   help="the zoo's constant weights, or random weights of the same shapes")
    p.add_argument("--repeats", type=int, default=1,
                   help="fresh processes per measurement (times: median; peak RSS: maximum)")
    p.add_argument("--profile", action="store_true",
                   help="also write a cProfile dump per measurement under OUT/profiles "
                        "(from one extra, untimed run)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile-to", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prepare", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare is not None:
        kind, src, dst = args.prepare
        random_weights_copy(Path(src), Path(dst))
        return None
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.calib, args.artifact, args.profile_to)))
        return None
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes takes a comma list of {', '.join(MODES)}")
    data = run([m for m in args.models.split(",") if m], args.out, args.profile,
               modes, args.weights, max(1, args.repeats))
    print(summary_table(data["results"]))
    name = "convert.json" if args.weights == "const" else "convert_random.json"
    print(f"results: {args.out / name}")
    return data


if __name__ == "__main__":
    main()

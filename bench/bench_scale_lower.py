"""Lowering and running at ImageNet scale: ResNet-50 and VGG-19 for cyclesim and netlist.

Builds the two networks as bench_scale.py does (bench/scale_models.py: random weights,
3x224x224, average pools for VGG), then, each step in a child process of its own (wall time
and peak RSS from ``wait4``), one at a time:

1. ``snncompile convert MODEL --target X --bits 8 --calib CALIB`` (CALIB: 4 seeded random
   images, bias calibration off: the conversion is not what is measured here, and a
   calibration on noise would only cost time), and the artifact's size on disk;
2. the lowering alone: a child that loads the converted IR and calls the backend's
   ``lower()`` (what convert's peak would be without the conversion before it);
3. ``snncompile run OUT --data ONE`` on one seeded random image: the backend's run and the
   reference simulator's, compared bit for bit.

cyclesim uses bench_scale.py's cores (large enough for every layer). Target: convert and
lowering within 4 GiB each, ``run`` of one sample bounded.

Usage::

    .venv/bin/python bench/bench_scale_lower.py [--out bench/results] [--models resnet50,vgg19]
        [--targets cyclesim,netlist]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_RESULTS, machine_info, run_child, snncompile_cli, write_json  # noqa: E402

TARGET_GIB = 4.0
SEED = 0


def _options(backend: str) -> dict[str, str]:
    from bench_scale import MAPPINGS

    return next((o for _, b, o in MAPPINGS if b == backend), {}) if backend == "cyclesim" else {}


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def lower_child(artifact: str, backend: str, options: dict[str, str], folder: str) -> dict[str, Any]:
    """In the child: load the converted IR and lower it (no conversion before)."""
    from snncompile.plugin import get_backend
    from snncompile.targets.artifact import read_artifact

    t0 = time.perf_counter()
    g = read_artifact(artifact).graph
    t1 = time.perf_counter()
    Path(folder).mkdir(parents=True, exist_ok=True)
    get_backend(backend, options).lower(g, Path(folder))
    return {"load_s": t1 - t0, "lower_s": time.perf_counter() - t1}


def _model(out: Path, name: str) -> tuple[Path, Path]:
    """The folder of the scale builds (shared with bench_scale.py) and the model's ONNX file."""
    from scale_models import export

    (out / "scale").mkdir(parents=True, exist_ok=True)
    path = out / "scale" / f"{name}.onnx"
    if not path.exists():
        export(name, path)
    return out / "scale", path


def _data(work: Path, name: str, shape: tuple[int, ...]) -> tuple[Path, Path]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    calib, one = work / f"{name}-calib4.npz", work / f"{name}-one.npz"
    np.savez(calib, x=rng.standard_normal((4,) + shape).astype(np.float32))
    np.savez(one, x=rng.standard_normal((1,) + shape).astype(np.float32))
    return calib, one


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder")
    p.add_argument("--models", default="resnet50,vgg19")
    p.add_argument("--targets", default="cyclesim,netlist")
    p.add_argument("--child", nargs=4, metavar=("ARTIFACT", "BACKEND", "OPTIONS_JSON", "FOLDER"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(lower_child(args.child[0], args.child[1], json.loads(args.child[2]), args.child[3])))
        return {}
    results = []
    for name in args.models.split(","):
        work, onnx_path = _model(args.out, name)
        calib, one = _data(work, name, (3, 224, 224))
        for backend in args.targets.split(","):
            opts = _options(backend)
            art = work / f"{name}.{backend}"
            cmd = [snncompile_cli(), "convert", str(onnx_path), "--target", backend, "--bits", "8",
                   "--calib", str(calib), "--no-calibrate-bias", "-o", str(art), "--force", "-q"]
            for k, v in opts.items():
                cmd += ["--target-option", f"{k}={v}"]
            conv = run_child(cmd)
            row: dict[str, Any] = {"model": name, "backend": backend, "options": opts, "command": " ".join(cmd[1:]),
                                   "convert": {"wall_s": conv.wall_s, "peak_rss_mib": conv.maxrss_mib,
                                               "rc": conv.returncode, "stderr": conv.stderr[-1500:]}}
            print(f"{name} {backend}: convert rc {conv.returncode} in {conv.wall_s:.1f} s, peak "
                  f"{conv.maxrss_mib / 1024:.2f} GiB", flush=True)
            if conv.returncode == 0:
                row["disk_mib"] = {"artifact": _disk_bytes(art) / 2**20, "backend": _disk_bytes(art / backend) / 2**20}
                low = run_child([sys.executable, __file__, "--child", str(art), backend, json.dumps(opts),
                                 str(work / f"{name}.{backend}.lower")])
                row["lower"] = {"wall_s": low.wall_s, "peak_rss_mib": low.maxrss_mib, "rc": low.returncode,
                                **(json.loads(low.stdout) if low.returncode == 0 else {"stderr": low.stderr[-1500:]})}
                r = run_child([snncompile_cli(), "run", str(art), "--data", str(one), "--json", "-q"])
                res = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
                st = res.get("stats", {})
                row["run"] = {"wall_s": r.wall_s, "peak_rss_mib": r.maxrss_mib, "rc": r.returncode,
                              "bit_exact": res.get("bit_exact"), "timesteps": res.get("timesteps"),
                              "seconds_backend": res.get("seconds_backend"),
                              "seconds_reference": res.get("seconds_reference"),
                              **{k: st.get(k) for k in ("cores_used", "cycles_per_step", "synops_per_sample",
                                                        "spikes_per_sample", "energy_nj_per_sample", "synapses")},
                              "stderr": r.stderr[-1500:] if r.returncode else ""}
                print(f"  {row['disk_mib']['backend']:.0f} MiB on disk; lowering alone {low.wall_s:.1f} s, peak "
                      f"{low.maxrss_mib / 1024:.2f} GiB; run rc {r.returncode} bit_exact {res.get('bit_exact')} "
                      f"in {r.wall_s:.1f} s, peak {r.maxrss_mib / 1024:.2f} GiB", flush=True)
            row["met"] = (conv.returncode == 0 and conv.maxrss_mib / 1024 <= TARGET_GIB
                          and row.get("run", {}).get("bit_exact") is True)
            results.append(row)
            write_json(args.out / "scale_lower.json", {"machine": machine_info(), "target_gib": TARGET_GIB,
                                                       "results": results})
    return {"results": results}


if __name__ == "__main__":
    main()

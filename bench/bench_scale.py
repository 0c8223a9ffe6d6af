"""Mapping at ImageNet scale: ResNet-50 and VGG-19 onto multi-chip Loihi 2 and cyclesim.

Builds the two networks locally (bench/scale_models.py: torch, random weights, 3x224x224,
average pools for VGG), converts each with weight-bound thresholds (no --calib, --bits 8),
then, each in a child process of its own (wall time and peak RSS from ``wait4``): maps it
(cores and chips per layer and in total) and checks it for loihi on a Hala Point-size
system, checks it for loihi on one chip (the refusal: the chips it needs and the smallest
system that holds it), and maps and checks it for cyclesim with cores large enough for the
layers. Target: each mapping within 60 s and 4 GiB.

Then the headline as a user types it, ``snncompile convert MODEL.onnx --target loihi --bits 8
--fanin 64`` (no -o, no --calib), each in a child run through bench/stages.py (wall time and
peak RSS of every stage, and of the whole command): with ``--target-option
system=hala-point`` it writes the loihi artifact (target: 4 GiB), on one chip it is refused
(the figure and the smallest system, before calibration). ``--headline-only`` skips the
mapping children; ``--models`` also takes ``mobilenetv2``.

Usage::

    .venv/bin/python bench/bench_scale.py [--out bench/results] [--models resnet50,vgg19]
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

TARGET_SECONDS = 60.0
TARGET_GIB = 4.0
# (label, backend, options): what each mapping child runs
MAPPINGS = [
    ("loihi hala-point", "loihi", {"system": "hala-point"}),
    ("loihi one chip", "loihi", {}),
    ("cyclesim", "cyclesim", {"cores": "10000000", "axons_per_core": "131072",
                              "synapses_per_core": "262144"}),
]


def child(artifact: str, backend: str, options: dict[str, str]) -> dict[str, Any]:
    """In the child: load the artifact, map it (layer_resources, resource_totals), check it."""
    from snncompile.plugin import get_backend
    from snncompile.targets.artifact import read_artifact

    t0 = time.perf_counter()
    g = read_artifact(artifact).graph
    t1 = time.perf_counter()
    b = get_backend(backend, options)
    layers = b.layer_resources(g)
    totals = b.resource_totals(g, layers)
    t2 = time.perf_counter()
    found = b.check(g)
    t3 = time.perf_counter()
    neurons = {n.name: int(__import__("numpy").prod(n.shape)) for n in g.nodes}
    return {"load_s": t1 - t0, "map_s": t2 - t1, "check_s": t3 - t2, "totals": totals,
            "layers": [{"name": k, "neurons": neurons.get(k, 0), **v} for k, v in layers.items()],
            "capacity_violations": [str(v) for v in found if v.layer == "(all)"
                                    or "core" in v.quantity],
            "violations": len(found)}


HEADLINE = ["--target", "loihi", "--bits", "8", "--fanin", "64"]
HEADLINES = [("headline hala-point", ["--target-option", "system=hala-point"]), ("headline one chip", [])]


def headline(onnx_path: Path, extra: list[str]) -> dict[str, Any]:
    """The literal headline on ``onnx_path`` (its default output, replaced), stage by stage."""
    out = onnx_path.with_suffix(".loihi")
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "stages.py"), "convert", str(onnx_path),
           *HEADLINE, *extra, "--force"]
    r = run_child(cmd)
    stages = [json.loads(line[len("stage "):]) for line in r.stderr.splitlines() if line.startswith("stage ")]
    res: dict[str, Any] = {"command": "snncompile convert " + " ".join([onnx_path.name, *HEADLINE, *extra]),
                           "returncode": r.returncode, "wall_s": r.wall_s, "peak_rss_mib": r.maxrss_mib,
                           "stages": stages, "met_rss": r.maxrss_mib / 1024 <= TARGET_GIB,
                           "message": [ln for ln in r.stderr.splitlines() if ln.startswith(("error", "wrote",
                                                                                            "  - "))][:3]}
    net = out / "loihi" / "network.json"
    if r.returncode == 0 and net.exists():
        m = json.loads(net.read_text())
        kinds: dict[str, int] = {}
        for c in m["connections"]:
            k = c["kind"] + (" after a pool relay" if c.get("pool") else "")
            kinds[k] = kinds.get(k, 0) + 1
        res.update(connections=kinds, cores=m["mapping"]["cores"], chips=m["mapping"]["chips"],
                   artifact_mib=round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20, 1))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder")
    p.add_argument("--models", default="resnet50,vgg19")
    p.add_argument("--reuse", action="store_true",
                   help="map the converted artifacts already in OUT/scale (no new conversion)")
    p.add_argument("--headline-only", action="store_true", help="only the headline conversions")
    p.add_argument("--child", nargs=3, metavar=("ARTIFACT", "BACKEND", "OPTIONS_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], json.loads(args.child[2]))))
        return {}
    from scale_models import export

    work = args.out / "scale"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.models.split(","):
        onnx_path = work / f"{name}.onnx"
        t0 = time.perf_counter()
        if not onnx_path.exists():
            export(name, onnx_path)
        row: dict[str, Any] = {"model": name, "headline": []}
        for label, extra in HEADLINES:
            h = headline(onnx_path, extra)
            h["label"] = label
            row["headline"].append(h)
            print(f"{name} {label}: exit {h['returncode']} in {h['wall_s']:.1f} s, peak "
                  f"{h['peak_rss_mib'] / 1024:.2f} GiB; {h.get('cores', '-')} cores, {h.get('chips', '-')} chips; "
                  + "; ".join(f"{st['stage']} {st['wall_s']:.1f} s/{st['peak_rss_mib']} MiB" for st in h["stages"])
                  + f"; {h['message'][:1]}", flush=True)
        if args.headline_only:
            results.append(row)
            continue
        art = work / name
        convert = [snncompile_cli(), "convert", str(onnx_path), "-o", str(art), "--bits", "8", "--force"]
        conv = run_child(["true"] if args.reuse and (art / "ir.npz").exists() else convert)
        if conv.returncode != 0:
            raise SystemExit(f"convert {name} failed:\n{conv.stderr[-2000:]}")
        row.update({"export_and_convert_s": time.perf_counter() - t0,
                    "convert": {"wall_s": conv.wall_s, "peak_rss_mib": conv.maxrss_mib}, "mappings": []})
        print(f"{name}: converted in {conv.wall_s:.1f} s, peak {conv.maxrss_mib / 1024:.2f} GiB", flush=True)
        for label, backend, options in MAPPINGS:
            r = run_child([sys.executable, __file__, "--child", str(art), backend, json.dumps(options)])
            if r.returncode != 0:
                raise SystemExit(f"mapping {name} on {label} failed:\n{r.stderr[-2000:]}")
            res = json.loads(r.stdout)
            res.update(label=label, backend=backend, options=options, wall_s=r.wall_s,
                       peak_rss_mib=r.maxrss_mib,
                       met=r.wall_s <= TARGET_SECONDS and r.maxrss_mib / 1024 <= TARGET_GIB)
            row["mappings"].append(res)
            print(f"  {label}: {res['totals']} in {r.wall_s:.1f} s (load {res['load_s']:.1f}, map "
                  f"{res['map_s']:.2f}, check {res['check_s']:.1f}), peak {r.maxrss_mib / 1024:.2f} GiB; "
                  f"{res['violations']} violations; {res['capacity_violations'][:1]}", flush=True)
        results.append(row)
    out = {"machine": machine_info(), "targets": {"seconds": TARGET_SECONDS, "rss_gib": TARGET_GIB},
           "results": results}
    write_json(args.out / "scale.json", out)
    return out


if __name__ == "__main__":
    main()

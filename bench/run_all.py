"""Run every benchmark (`make bench`): conversion time and memory, simulator speed, and
mapping at ImageNet scale.

Writes ``convert.json``, ``simulator.json``, ``scale.json`` and ``summary.json`` under the
results folder (``bench/results/`` by default, ignored by git) and prints a summary with
every target and whether it is met. Takes about 10 minutes on 2 cores (the scale benchmark
about 5 of them). docs/results.md records the newest
numbers with their commands; docs/log/ the earlier runs.

Usage::

    .venv/bin/python bench/run_all.py [--out bench/results] [--only convert|simulator|scale] [--profile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_convert  # noqa: E402
import bench_scale  # noqa: E402
import bench_simulator  # noqa: E402
from common import DEFAULT_RESULTS, fmt, machine_info, write_json  # noqa: E402


def target_rows(convert: dict[str, Any] | None, simulator: dict[str, Any] | None,
                scale: dict[str, Any] | None = None) -> list[list[str]]:
    """One row per target check: what, measured, target, met."""
    rows: list[list[str]] = []
    for r in (scale or {}).get("results", []):
        for m in r["mappings"]:
            rows.append([f"map {r['model']} on {m['label']} ({m['totals'].get('cores')} cores, "
                         f"{m['totals'].get('chips', '-')} chips)",
                         f"{fmt(m['wall_s'])} s, {fmt(m['peak_rss_mib'] / 1024)} GiB",
                         f"<= {bench_scale.TARGET_SECONDS:g} s, {bench_scale.TARGET_GIB:g} GiB",
                         "yes" if m["met"] else "NO"])
    if convert is not None:
        for r in convert["results"]:
            what = f"convert {r['model']} ({r['mode']})"
            rows.append([what + " time", f"{fmt(r['cli']['wall_s'])} s",
                         f"<= {r['targets']['seconds']:g} s", "yes" if r["targets"]["time_met"] else "NO"])
            rows.append([what + " peak RSS", f"{fmt(r['cli']['peak_rss_mib'] / 1024)} GiB",
                         f"<= {r['targets']['rss_gib']:g} GiB", "yes" if r["targets"]["memory_met"] else "NO"])
    if simulator is not None:
        for net in simulator["networks"]:
            for r in net["results"]:
                rows.append([f"simulate {net['network']} batch {r['batch_size']}: step / ANN forward",
                             f"{fmt(r['ratio_step_over_forward'], 1)}x", "<= 1x",
                             "yes" if r["target_met"] else "NO"])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, write summary.json, print the targets."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder")
    p.add_argument("--only", choices=("convert", "simulator", "scale"), help="run one benchmark only")
    p.add_argument("--profile", action="store_true", help="also write profiles under OUT/profiles")
    args = p.parse_args(argv)

    from snncompile.app.table import format_table

    t0 = time.perf_counter()
    extra = ["--profile"] if args.profile else []
    convert = simulator = scale = None
    if args.only in (None, "convert"):
        print("== benchmark (a): import + convert time and peak memory ==", flush=True)
        convert = bench_convert.main(["--out", str(args.out)] + extra)
    if args.only in (None, "simulator"):
        print("\n== benchmark (b): simulator step vs onnxruntime forward ==", flush=True)
        simulator = bench_simulator.main(["--out", str(args.out)] + extra)
    if args.only in (None, "scale"):
        print("\n== benchmark (c): mapping ResNet-50 and VGG-19 (loihi, cyclesim) ==", flush=True)
        scale = bench_scale.main(["--out", str(args.out)])
    total = time.perf_counter() - t0
    rows = target_rows(convert, simulator, scale)
    summary = {"machine": machine_info(), "total_seconds": total,
               "targets": [dict(zip(("check", "measured", "target", "met"), r)) for r in rows]}
    write_json(args.out / "summary.json", summary)
    print("\n== targets ==")
    print(format_table(["check", "measured", "target", "met"], rows))
    m = summary["machine"]
    print(f"\n{m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB; Python {m['python']}, torch "
          f"{m['torch']} ({m['torch_threads']} threads), onnxruntime {m['onnxruntime']}; "
          f"total {total:.0f} s; results in {args.out}")
    return summary


if __name__ == "__main__":
    main()

"""Time of one tandem training step (forward, backward, Adam) at several PTL stages.

Tuning time is almost all training steps, and a step's forward runs the exact integer
network over the window (the reference simulator's :func:`snncompile.sim.evaluator.run_window`);
this measures a step on its own, on a converted artifact and a batch of its training data,
so two versions of the code can be compared (run it with ``PYTHONPATH`` set to another
checkout for an A/B).

Usage::

    .venv/bin/snncompile convert MODEL.onnx --calib calib.npz -T 8 --bits 8 --fanin 64 -o ART
    .venv/bin/python bench/tandem_step.py --artifact ART --data train.npz [--batch 128]
        [--bits 8] [--fanin 64] [--stages 1,3,last] [--threads 1] [--clock cpu|wall] [--repeats 3]
        [--prefix] [--layouts [--block 8]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling module importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from common import time_repeats  # noqa: E402
from bench_simulator import CLOCKS  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True, help="a converted artifact (snncompile convert -o)")
    p.add_argument("--data", type=Path, required=True, help=".npz with x and y (its first --batch samples)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--fanin", type=int, default=64)
    p.add_argument("--stages", default="1,3,last", help="PTL stages (1..L, or 'last': all layers and the output)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layouts", action="store_true",
                   help="also time the step with the surrogate path channels-last (as shipped: "
                        "snncompile/tune/model.py, _layout) and row-major, alternating blocks of "
                        "--block steps in this process, and print the medians (the machine's noise "
                        "is as large as the difference, so a process per layout cannot tell them apart)")
    p.add_argument("--block", type=int, default=8, help="steps per timed block with --layouts")
    p.add_argument("--prefix", action="store_true",
                   help="also time the step that starts from the fixed layers' kept spike trains "
                        "(what tuning does from stage 2 on, snncompile/tune/prefix.py)")
    args = p.parse_args(argv)

    import torch

    import snncompile
    from snncompile.targets.artifact import read_artifact
    from snncompile.tune.model import TandemNet

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    # the process as tune() sets it (denormals flushed; glibc keeping a step's memory, where
    # the code measured has it: an older checkout runs as its own tuning did)
    torch.set_flush_denormal(True)
    try:
        from snncompile.tune.runtime.allocator import keep_step_memory
    except ImportError:
        keep_step_memory = None
    if keep_step_memory is not None:
        keep_step_memory()
    g = read_artifact(args.artifact).graph
    net = TandemNet(g, bits=args.bits, fanin=args.fanin or None)
    with np.load(args.data) as d:
        x = torch.tensor(np.asarray(d["x"][:args.batch], np.float32))
        y = torch.tensor(np.asarray(d["y"][:args.batch])).long()
    net.count_aware = True  # as tuning runs PTL (TrainOptions.count_aware)
    opt = None
    given = None

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, given=given) if given else net(x), y).backward()
        opt.step()

    rows = []
    last = len(net.layers) + 1
    for s in args.stages.split(","):
        # as a tuning stage: masks in force, the layers fixed earlier not trained, a fresh Adam
        net.set_stage(last if s.strip() == "last" else int(s))
        opt = torch.optim.Adam(net.trainable(), 1e-4)
        given = None
        best = min(time_repeats(step, max(1, args.repeats), warmup=1, clock=CLOCKS[args.clock]))
        row = {"stage": net.stage, "seconds_per_step": best}
        front = None
        if args.prefix:
            from snncompile.tune.prefix import PrefixCache, frontier

            front = frontier(g, net.layers[:net.stage - 1]) if net.stage >= 2 else None
        if front is not None:
            cache = PrefixCache.build(lambda rows, keep: net.spike_trains(x[rows], keep), g, front, net.T, len(x))

            def step_from_cache() -> None:  # a batch's trains are unpacked in each step, as in tuning
                nonlocal given
                given = cache.given(np.arange(len(x)), x.device)
                step()

            row["seconds_per_step_prefix"] = min(time_repeats(step_from_cache, max(1, args.repeats), warmup=1,
                                                              clock=CLOCKS[args.clock]))
        if args.layouts:
            row.update(_compare_layouts(step, max(1, args.repeats), args.block))
        rows.append(row)
        with_prefix = (f", {row['seconds_per_step_prefix'] * 1e3:.1f} from the kept spike trains"
                       if "seconds_per_step_prefix" in row else "")
        print(f"stage {net.stage}/{last}: {best * 1e3:.1f} {args.clock} ms per step{with_prefix} "
              f"(batch {len(x)}, {args.threads} thread(s), {snncompile.__file__})", flush=True)
    return rows


def _compare_layouts(step, blocks: int, block: int) -> dict[str, float]:
    """Median seconds per step with the surrogate path channels-last and row-major, the
    two timed in alternating blocks of ``block`` steps (``blocks`` each)."""
    import statistics
    import time

    from snncompile.tune import ann_path

    kept = ann_path.layout
    layouts = {"channels_last": kept, "row_major": lambda t: t}
    times: dict[str, list[float]] = {k: [] for k in layouts}
    try:
        for _ in range(blocks):
            for name, f in layouts.items():
                ann_path.layout = f
                step()  # the first step in a layout reorders what the other left
                t0 = time.perf_counter()
                for _ in range(block):
                    step()
                times[name].append((time.perf_counter() - t0) / block)
    finally:
        ann_path.layout = kept
    out = {f"seconds_per_step_{k}": statistics.median(v) for k, v in times.items()}
    print("  layouts: " + ", ".join(f"{k} {v:.4f} s" for k, v in out.items()), flush=True)
    return out


if __name__ == "__main__":
    main()

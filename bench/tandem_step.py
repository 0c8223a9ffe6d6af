"""Time of one tandem training step (forward, backward, Adam) at several PTL stages.

Tuning time is almost all training steps, and a step's forward runs the exact integer
network over the window (the reference simulator's :func:`snncompile.simulator.run_window`);
this measures a step on its own, on a converted artifact and a batch of its training data,
so two versions of the code can be compared (run it with ``PYTHONPATH`` set to another
checkout for an A/B).

Usage::

    .venv/bin/snncompile convert MODEL.onnx --calib calib.npz -T 8 --bits 8 --fanin 64 -o ART
    .venv/bin/python bench/tandem_step.py --artifact ART --data train.npz [--batch 128]
        [--bits 8] [--fanin 64] [--stages 1,3,last] [--threads 1] [--clock cpu|wall] [--repeats 3]
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
    p.add_argument("--prefix", action="store_true",
                   help="also time the step that starts from the fixed layers' kept spike trains "
                        "(what tuning does from stage 2 on, snncompile/tandem/prefix.py)")
    args = p.parse_args(argv)

    import torch

    import snncompile
    from snncompile.artifact import read_artifact
    from snncompile.tandem.model import TandemNet

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    g = read_artifact(args.artifact).graph
    net = TandemNet(g, bits=args.bits, fanin=args.fanin or None)
    with np.load(args.data) as d:
        x = torch.tensor(np.asarray(d["x"][:args.batch], np.float32))
        y = torch.tensor(np.asarray(d["y"][:args.batch])).long()
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    given = None

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x, given=given) if given else net(x), y).backward()
        opt.step()

    rows = []
    last = len(net.layers) + 1
    for s in args.stages.split(","):
        net.stage = last if s.strip() == "last" else int(s)
        given = None
        best = min(time_repeats(step, max(1, args.repeats), warmup=1, clock=CLOCKS[args.clock]))
        row = {"stage": net.stage, "seconds_per_step": best}
        front = None
        if args.prefix:
            from snncompile.tandem.prefix import PrefixCache, frontier

            front = frontier(g, net.layers[:net.stage - 1]) if net.stage >= 2 else None
        if front is not None:
            cache = PrefixCache.build(lambda rows, keep: net.spike_trains(x[rows], keep), g, front, net.T, len(x))

            def step_from_cache() -> None:  # a batch's trains are unpacked in each step, as in tuning
                nonlocal given
                given = cache.given(np.arange(len(x)), x.device)
                step()

            row["seconds_per_step_prefix"] = min(time_repeats(step_from_cache, max(1, args.repeats), warmup=1,
                                                              clock=CLOCKS[args.clock]))
        rows.append(row)
        with_prefix = (f", {row['seconds_per_step_prefix']:.3f} from the kept spike trains"
                       if "seconds_per_step_prefix" in row else "")
        print(f"stage {net.stage}/{last}: {best:.3f} {args.clock} s per step{with_prefix} "
              f"(batch {len(x)}, {args.threads} thread(s), {snncompile.__file__})", flush=True)
    return rows


if __name__ == "__main__":
    main()

"""Start-up time of the commands that need neither torch nor Lava: `--help`, `backends`,
`inspect MODEL`, `inspect OUT`, `check OUT`.

    .venv/bin/python bench/bench_startup.py [--repeats 5] [--json]

Each command runs as a fresh `python -m snncompile` child (as a user types it), best and
median wall time of --repeats; the child also reports whether torch or Lava got imported.
The model is the digits CNN (examples/digits/data, trained by `make demo`; trained here
into a temporary folder if missing), its build compiled for loihi with 8-bit weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT, machine_info, median, run_child

DIGITS = REPO_ROOT / "examples" / "digits" / "data"

# Run the CLI as `python -m snncompile ARGS` does, then say which heavy packages came in.
PROBE = ("import runpy, sys\n"
         "sys.argv = ['snncompile'] + sys.argv[1:]\n"
         "try:\n    runpy.run_module('snncompile', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lava'}), file=sys.stderr)\n")


def digits_model(tmp: Path) -> Path:
    if (DIGITS / "digits_cnn.onnx").exists():
        return DIGITS
    subprocess.run([sys.executable, str(REPO_ROOT / "examples/digits/train.py"), "--out", str(tmp)],
                   check=True, capture_output=True)
    return tmp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = digits_model(Path(tmp))
        model, out = data / "digits_cnn.onnx", Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "snncompile", "convert", str(model), "--calib",
                        str(data / "calib.npz"), "-o", str(out), "--target", "loihi", "--bits", "8",
                        "--membrane-bits", "18", "--input-mode", "every_step"],
                       check=True, capture_output=True)
        commands = {"--help": ["--help"], "backends": ["backends"], "inspect MODEL": ["inspect", str(model)],
                    "inspect OUT": ["inspect", str(out)], "check OUT": ["check", str(out)]}
        rows = []
        for label, argv in commands.items():
            runs = [run_child([sys.executable, "-c", PROBE, *argv]) for _ in range(args.repeats)]
            heavy = [ln for ln in runs[-1].stderr.splitlines() if ln.startswith("HEAVY")]
            rows.append({"command": label, "best_s": round(min(r.wall_s for r in runs), 3),
                         "median_s": round(median([r.wall_s for r in runs]), 3),
                         "imports": heavy[-1][len("HEAVY "):] if heavy else "?",
                         "exit": runs[-1].returncode})
    if args.json:
        print(json.dumps({"machine": machine_info(), "repeats": args.repeats, "commands": rows}, indent=1))
        return
    print(f"{'command':<15} {'best s':>7} {'median s':>9}  exit  heavy imports")
    for r in rows:
        print(f"{r['command']:<15} {r['best_s']:>7.3f} {r['median_s']:>9.3f}  {r['exit']:>4}  {r['imports']}")


if __name__ == "__main__":
    main()

"""Wall time and peak RSS of each stage of one ``snncompile convert`` (a benchmark helper).

Runs the CLI in this process with the pipeline's stage functions wrapped (the functions
:mod:`snncompile.app.compile` calls: load, import, calibrate, profile, convert, prune,
check, write with the backend's lowering); before each stage the kernel's peak-RSS mark is
reset (``/proc/self/clear_refs``), after it the stage's peak is read (``VmHWM``). Prints
one JSON line per stage on stderr (prefix ``stage``) and exits as the CLI does.

Usage::

    python bench/stages.py convert MODEL.onnx --target loihi --bits 8 --fanin 64 ...
"""

from __future__ import annotations

import functools
import json
import sys
import time

STAGES = {"load_onnx_file": "load", "import_onnx": "import", "data_free_scales": "calibrate (data-free)",
          "activation_scales": "calibrate", "fit_input_width": "profile (input width)",
          "convert": "convert", "constrain": "prune (--fanin)", "check_fit": "check",
          "lower_into": "lower", "write_artifact": "write (with lowering)"}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _wrap(name: str, label: str, fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS mark
        except OSError:
            pass
        before, t0 = _rss_kib("VmRSS"), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            print("stage " + json.dumps({"stage": label, "wall_s": round(time.perf_counter() - t0, 2),
                                         "rss_before_mib": before // 1024,
                                         "peak_rss_mib": _rss_kib("VmHWM") // 1024}),
                  file=sys.stderr, flush=True)
    return timed


def main() -> int:
    from snncompile.app import cli, compile as pipeline

    for name, label in STAGES.items():
        setattr(pipeline, name, _wrap(name, label, getattr(pipeline, name)))
    try:
        cli.main(sys.argv[1:], prog_name="snncompile", standalone_mode=True)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

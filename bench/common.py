"""Helpers shared by the benchmarks: machine description, timing, child processes, output.

Nothing here keeps state between calls; every function takes what it needs as arguments.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_RESULTS = BENCH_DIR / "results"
GIB = 1024 ** 3


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ('unknown' where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def total_ram_gib() -> float:
    """Physical memory in GiB (from sysconf)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return float("nan")


def machine_info() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    import snncompile

    return {
        "date": time.strftime("%Y-%m-%d"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": round(total_ram_gib(), 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "snncompile": snncompile.__version__,
    }


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1,
                 clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls, by ``clock``
    (wall clock by default; ``time.process_time`` counts this process's CPU time, which
    other load on a shared machine inflates far less)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


@dataclass
class ChildRun:
    """One finished child process: its exit code, output, wall time and own peak RSS."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    maxrss_mib: float


def run_child(cmd: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``cmd`` to completion; its peak RSS comes from ``os.wait4`` (this child only).

    stdout and stderr go to temporary files (not pipes), so the parent never has to read
    while waiting and ``wait4`` can collect the child's own resource usage."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(proc.returncode, out.read(), err.read(), wall, usage.ru_maxrss / 1024.0)


def snncompile_cli() -> str:
    """Path of the ``snncompile`` console script of the running interpreter's environment."""
    exe = shutil.which("snncompile", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("the snncompile command is not installed next to this Python "
                         f"({sys.executable}); run 'make setup' first")
    return exe


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table ('-' for None)."""
    return "-" if value is None else f"{value:.{digits}f}"

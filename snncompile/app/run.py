"""`snncompile run`: execute a compiled artifact on its backend and check it against the
reference simulator on the same inputs (bit for bit: every spike and every output)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..targets.artifact import read_artifact
from ..data import load_npz
from ..errors import ArtifactError, SnnCompileError, UsageError
from ..progress import progress_bar
from ..targets.api import BackendError, available_backends, get_backend
from ..measure.evaluate import membrane_bits, warn_saturation
from ..sim.simulator import quantize_input, simulate
from ..targets.select import SIM
from ..testing.conformance import compare_run


def run_artifact(out: str, data_path: str, timesteps: int | None = None,
                 batch_size: int = 256, run_options: dict[str, str] | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Run OUT's backend on DATA, ``batch_size`` samples at a time; returns accuracy (or
    mse), bit_exact, the first differences, timings and the backend's own statistics.

    ``run_options``: the backend's :attr:`~..targets.api.Backend.run_options` for this run
    (e.g. loihi's ``python``); those compile.json records are ignored, so nothing in the
    artifact chooses what runs. ``progress``: a bar over the samples on stderr."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    art = read_artifact(out)
    g = art.graph
    built = art.target
    target = built.name
    if target == SIM:
        raise UsageError(f"'{out}' was compiled for target 'sim' (the reference simulator): it has no "
                         "backend artifact to run",
                         "use 'snncompile evaluate', or convert with --target NAME (see 'snncompile backends')")
    if target not in available_backends():
        raise UsageError(f"'{out}' was compiled for backend '{target}' (version {built.version}), "
                         f"which is not installed (installed: {', '.join(available_backends()) or 'none'})",
                         f"install the package that provides the '{target}' backend")
    backend = _run_backend(target, built.options, run_options or {})
    if not backend.can_run:
        raise UsageError(f"backend '{target}' cannot run its artifacts", "use 'snncompile evaluate'")
    directory = Path(out) / target
    if not directory.is_dir():
        raise ArtifactError(f"'{out}' has no '{target}/' folder (the backend's artifact)",
                            f"re-run 'snncompile convert --target {target}'")
    data = load_npz(data_path, g.input.shape, need_labels=False, out_shape=g[g.outputs[0]].shape)
    T = int(timesteps or g.timesteps)
    if T < 1:
        raise UsageError(f"--timesteps must be >= 1, got {T}")
    x_int = quantize_input(g, data.x)
    first = g.outputs[0]
    diffs: list[str] = []
    acc: list[np.ndarray | None] = []
    parts: list[tuple[int, dict[str, Any]]] = []
    t_backend = t_ref = 0.0
    saturations: dict[str, int] = {}
    bar = progress_bar(progress, len(x_int), f"running on {target}", "sample")
    for start in range(0, len(x_int), batch_size):  # bounded memory: spikes are recorded
        stop = min(start + batch_size, len(x_int))
        t0 = time.perf_counter()
        try:
            run = backend.run(directory, x_int[start:stop], T, record_spikes=True)
        except SnnCompileError:
            raise
        except Exception as e:
            raise BackendError(f"backend '{target}' {backend.version} failed while running: "
                               f"{type(e).__name__}: {e}", "report this to the backend's authors") from e
        t_backend += time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = simulate(g, data.x[start:stop], timesteps=T, record_spikes=True)
        t_ref += time.perf_counter() - t0
        for k, v in ref.saturations.items():
            saturations[k] = saturations.get(k, 0) + int(v)
        diffs += compare_run(g, ref, run, sample_offset=start)
        got = run.output_acc.get(first)
        ok = got is not None and np.shape(got) == ref.output_acc[first].shape
        acc.append(np.asarray(got, np.float64) if ok else None)  # wrong outputs: no accuracy
        parts.append((stop - start, run.stats))
        bar.update(stop - start)
    bar.close()
    res: dict[str, Any] = {"backend": target, "backend_version": backend.version,
                           "compiled_with_version": built.version, "timesteps": T,
                           "samples": int(len(data.x)), "bit_exact": not diffs,
                           "differences": diffs[:10]}
    if all(a is not None for a in acc):
        scale = g[first].out_scale
        pred = np.concatenate(acc) * (scale if scale is not None else 1.0) / T
        if data.y is not None and data.is_classification:
            res["accuracy"] = float((pred.reshape(len(pred), -1).argmax(1) == data.y).mean())
        elif data.y is not None:
            res["mse"] = float(np.mean((pred.reshape(data.y.shape) - data.y) ** 2))
    warn_saturation(saturations, T, int(g.timesteps), membrane_bits(g))
    res["seconds_backend"] = round(t_backend, 3)
    res["seconds_reference"] = round(t_ref, 3)
    res["stats"] = backend.combine_stats(parts)
    return res


def _run_backend(target: str, recorded: dict[str, str], run_options: dict[str, str]):
    """The backend with the options the build recorded (its chip settings, say) less its
    run options, plus the run options the user gave now."""
    allowed = get_backend(target).run_options
    unknown = sorted(set(run_options) - set(allowed))
    if unknown:
        raise UsageError(f"'{', '.join(unknown)}' {'is not a run option' if len(unknown) == 1 else 'are not run options'} "
                         f"of backend '{target}' (it takes: {', '.join(allowed) or 'none'})",
                         "settings of the build itself are given to 'snncompile convert --target-option'")
    built = {k: v for k, v in recorded.items() if k not in allowed}
    try:
        get_backend(target, built)
    except UsageError as e:
        raise ArtifactError(f"compile.json of '{target}' build records target options the backend "
                            f"refuses: {e.message}", "re-run 'snncompile convert'") from None
    return get_backend(target, {**built, **run_options})

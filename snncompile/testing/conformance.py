"""Bit-exactness checks of a backend against the reference simulator.

:func:`compare_run` finds where a backend's run first diverges from the reference (the
earliest time step, and at that step the first layer in graph order, and in it the first
neuron), which is where a bug shows itself before its consequences spread downstream.
:func:`check_backend` lowers every zoo network with the backend, runs it, and raises
:class:`ConformanceError` (an AssertionError, so pytest reports it as a failure) naming
the network, layer, time step and neuron that diverged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..ir import Graph, IFNode
from ..targets.api import Backend, BackendRun, Limits, get_backend
from ..sim.simulator import SimResult, simulate
from .zoo import Case, zoo_case, zoo_names


class ConformanceError(AssertionError):
    """A backend's spikes or outputs differ from the reference simulator's."""


@dataclass
class Report:
    """What :func:`check_backend` did: cases that passed, and cases the backend's limits
    exclude (with the violations that excluded them)."""

    backend: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)


def reference(graph: Graph, x_int: np.ndarray, timesteps: int) -> SimResult:
    """The reference simulator's run on integer input levels (spikes recorded)."""
    scale = np.asarray(graph.input.out_scale, np.float64)
    return simulate(graph, np.asarray(x_int, np.float64) * scale, timesteps=timesteps,
                    record_spikes=True)


def _index(shape: tuple[int, ...], flat: int) -> str:
    return str(tuple(int(i) for i in np.unravel_index(flat, shape)))


def compare_run(graph: Graph, ref: SimResult, run: BackendRun, network: str = "",
                sample_offset: int = 0) -> list[str]:
    """Every difference between a backend's run and the reference, the root cause first.

    Spikes are compared for every spiking layer (IF layers and max pools): the first message
    names the earliest diverging step, at that step the first layer in graph order, and the
    first neuron (sample, index within the layer). Output accumulators are compared after.
    ``sample_offset`` is added to reported sample numbers (for runs made in chunks)."""
    where = f"network '{network}': " if network else ""
    msgs: list[str] = []
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    firsts = []
    ref_spikes = ref.spikes or {}
    if run.spikes is None:
        msgs.append(f"{where}the backend returned no spikes (run with record_spikes=True)")
    else:
        for name, want in ref_spikes.items():
            got = run.spikes.get(name)
            if got is None:
                msgs.append(f"{where}layer '{name}': the backend returned no spikes for it")
                continue
            got = np.asarray(got)
            if got.shape != want.shape:
                msgs.append(f"{where}layer '{name}': spikes have shape {got.shape}, expected "
                            f"{want.shape} (T, N, *layer shape)")
                continue
            diff = got.reshape(want.shape[0], want.shape[1], -1) != want.reshape(want.shape[0], want.shape[1], -1)
            if diff.any():
                t, s, i = (int(v) for v in np.argwhere(diff)[np.lexsort(np.argwhere(diff)[:, ::-1].T)][0])
                shape = want.shape[2:]
                w = int(want.reshape(want.shape[0], want.shape[1], -1)[t, s, i])
                g = int(got.reshape(want.shape[0], want.shape[1], -1)[t, s, i])
                firsts.append((t, order[name], name, s, i, w, g, int(diff.sum()), shape))
    firsts.sort()
    for t, _, name, s, i, w, g, count, shape in firsts:
        msgs.append(f"{where}layer '{name}' diverged at time step {t}, sample {s + sample_offset}, neuron "
                    f"{_index(shape, i)} (flat index {i}): reference spike {w}, backend {g} "
                    f"({count} spike{'s' if count != 1 else ''} differ in this layer)")
    for name, want in ref.output_acc.items():
        got = run.output_acc.get(name)
        if got is None:
            msgs.append(f"{where}output '{name}': missing from the backend's output_acc")
            continue
        got = np.asarray(got)
        if got.shape != want.shape:
            msgs.append(f"{where}output '{name}': shape {got.shape}, expected {want.shape}")
            continue
        bad = np.argwhere(got.reshape(len(want), -1) != want.reshape(len(want), -1))
        if len(bad):
            s, i = (int(v) for v in bad[0])
            msgs.append(f"{where}output '{name}' differs at sample {s + sample_offset}, unit "
                        f"{_index(want.shape[1:], i)}: reference {int(want.reshape(len(want), -1)[s, i])}, "
                        f"backend {int(got.reshape(len(want), -1)[s, i])} ({len(bad)} values differ)")
    return msgs


def _resolve(backend: Backend | str) -> Backend:
    return get_backend(backend) if isinstance(backend, str) else backend


def fit_case(case: Case, limits: Limits) -> Case:
    """The case with its membranes narrowed to the backend's declared membrane width.

    Membrane width is a parameter of each IF layer whose effect the reference simulator
    defines at any width, so a narrower copy is as strict a test (its saturation included);
    nothing else is changed: a case that breaks other limits stays excluded."""
    top = limits.membrane_bits
    if top is None or not any(isinstance(n, IFNode) and n.membrane_bits > top for n in case.graph.nodes):
        return case
    g = case.graph.copy()
    for n in g.nodes:
        if isinstance(n, IFNode) and n.membrane_bits > top:
            n.membrane_bits = top
    g.validate()
    return replace(case, graph=g, about=f"{case.about} (membranes narrowed to {top} bits)")


def check_case(backend: Backend | str, case: Case | str, workdir: str | Path | None = None) -> bool:
    """Lower and run one zoo case (membranes narrowed to the backend's width, see
    :func:`fit_case`); raise ConformanceError on any difference.

    Returns False (and checks nothing) when the backend's limits exclude the case."""
    be = _resolve(backend)
    c = fit_case(zoo_case(case) if isinstance(case, str) else case, be.limits())
    if be.check(c.graph):
        return False
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp) / be.name
        d.mkdir()
        be.lower(c.graph, d)
        run = be.run(d, np.asarray(c.x_int).copy(), c.timesteps, record_spikes=True)
    ref = reference(c.graph, c.x_int, c.timesteps)
    msgs = compare_run(c.graph, ref, run, c.name)
    if msgs:
        more = f"\n  ... and {len(msgs) - 6} more" if len(msgs) > 6 else ""
        raise ConformanceError(f"backend '{be.name}' is not bit-exact with the reference simulator:\n  "
                               + "\n  ".join(msgs[:6]) + more)
    return True


def check_backend(backend: Backend | str, cases: list[str] | None = None,
                  workdir: str | Path | None = None, allow_skips: bool = True) -> Report:
    """Run the whole zoo (or ``cases``) on ``backend`` (an instance, or an installed name).

    Cases the backend's :meth:`~snncompile.plugin.Backend.check` rejects are skipped and
    listed in the report (``allow_skips=False`` makes a skip a failure)."""
    be = _resolve(backend)
    report = Report(be.name)
    for name in cases or zoo_names():
        c = fit_case(zoo_case(name), be.limits())
        violations = be.check(c.graph)
        if violations:
            if not allow_skips:
                raise ConformanceError(f"backend '{be.name}' cannot hold network '{name}': "
                                       + "; ".join(map(str, violations)))
            report.skipped[name] = [str(v) for v in violations]
            continue
        check_case(be, c, workdir)
        report.passed.append(name)
    return report


def _plant_traps(directory: Path, marker: Path) -> int:
    """Replace every program in an artifact with one that leaves ``marker`` behind: each
    ``*.py`` file, and each file with an executable bit (as a shell script). Returns how
    many files were replaced."""
    import os
    import stat

    py = f"open({str(marker)!r}, 'a').write(__file__ + '\\n')\nraise SystemExit(3)\n"
    sh = f"#!/bin/sh\necho \"$0\" >> '{marker}'\nexit 3\n"
    count = 0
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        if p.suffix == ".py":
            p.write_text(py)
            count += 1
        elif os.stat(p).st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
            p.write_text(sh)
            count += 1
    return count


def check_no_code_from_artifact(backend: Backend | str, case: Case | str | None = None,
                                workdir: str | Path | None = None) -> int:
    """A backend's :meth:`~snncompile.plugin.Backend.run` executes no code the artifact
    carries: the case is lowered and run, then every program in the artifact (``*.py``
    files, executables) is replaced by one that leaves a marker file, and the run is
    repeated. ``case``: a zoo case (default: the first the backend can hold). Raises
    ConformanceError when a marker appears or the results change; returns the number of
    programs replaced (0 for an artifact of pure data)."""
    be = _resolve(backend)
    cases = [case] if case is not None else zoo_names()
    fitting = (c for c in (fit_case(zoo_case(n) if isinstance(n, str) else n, be.limits()) for n in cases)
               if not be.check(c.graph))
    c = next(fitting, None)
    if c is None:
        raise ConformanceError(f"backend '{be.name}' cannot hold network(s) {cases}: pick another case")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp) / be.name
        d.mkdir()
        be.lower(c.graph, d)
        before = be.run(d, np.asarray(c.x_int).copy(), c.timesteps, record_spikes=True)
        marker = Path(tmp) / "executed-from-artifact.txt"
        planted = _plant_traps(d, marker)
        try:
            after = be.run(d, np.asarray(c.x_int).copy(), c.timesteps, record_spikes=True)
        except Exception as e:
            if marker.exists():
                raise ConformanceError(f"backend '{be.name}' executed code from its artifact: "
                                       f"{marker.read_text().strip()}") from e
            raise ConformanceError(f"backend '{be.name}' failed once the artifact's programs were "
                                   f"replaced ({type(e).__name__}: {e}): it depends on code in the "
                                   "artifact") from e
        if marker.exists():
            raise ConformanceError(f"backend '{be.name}' executed code from its artifact: "
                                   f"{marker.read_text().strip()}")
    ref = reference(c.graph, c.x_int, c.timesteps)
    for label, run in (("before", before), ("after", after)):
        msgs = compare_run(c.graph, ref, run, c.name)
        if msgs:
            raise ConformanceError(f"backend '{be.name}' ({label} the artifact's programs were "
                                   "replaced) is not bit-exact:\n  " + "\n  ".join(msgs[:6]))
    return planted

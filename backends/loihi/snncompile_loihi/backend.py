"""The ``loihi`` backend plugin: snncompile IR -> a Lava process network for Intel Loihi 2.

``lower`` regroups the graph into populations and Dense or Conv connections that keep the
model's own weights (a conv kernel once, a sum pool as a relay; network.py), checks the
Loihi 2 limits (limits.py, rules.py), and writes an artifact that runs with lava-nc alone
(emit.py). ``run`` executes this package's own ``runner/run_lava.py`` (never the copy
in the artifact, whose files it reads as data only) in a subprocess on Lava's bit-accurate
CPU simulator (``Loihi2SimCfg(select_tag="fixed_pt")``), bounded by a timeout (a Lava run
can hang without an error), and returns the results on the reference time axis.

Options (``--target-option KEY=VALUE``): the capacity model's (``system``, ``chips``,
``cores`` per chip, ``neurons_per_core``, ``memory_kib`` and the others of
:data:`limits.DEFAULTS`; capacity.py), recorded at convert; and, for ``snncompile run``
only (:data:`RUN_OPTIONS`, never read from an artifact), ``python`` (the interpreter that
has lava-nc, default: this one) and ``timeout_s`` (default 600).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Mapping

import numpy as np

from snncompile.ir import Graph
from snncompile.plugin import (ArtifactError, Backend, BackendRun, DataError, LimitError, Limits,
                               Profile, UsageError, Violation, artifact_file, check_limits,
                               flatten_network, layer_footprints, read_json, read_npz)

from . import __version__
from . import limits as L
from .emit import PROCESS_DIR, RUNNER, read_network, write_artifact

from .capacity import ChipMapping, map_graph, mapping_violations, neuron_bound
from .netx import netx_problems, write_netx
from .network import build_network, input_layers
from .rules import check_network, input_width_violations

log = logging.getLogger("snncompile")
# Above this many folded synapse-matrix entries (neurons x folded fan-in), a graph the
# graph-level rules already refuse is not folded for the network rules as well (folding a
# ResNet-50 takes minutes).
FOLD_EARLY_REFUSAL = 2 ** 24
RUN_OPTIONS = ("python", "timeout_s")
LAVA_HELP = ("lava-nc 0.10.0 is not importable by {python}: it needs Python 3.10 (it fails at "
             "import on 3.11+) and numpy < 2. Get it with: python3.10 -m venv lava-env && "
             "lava-env/bin/pip install lava-nc==0.10.0 numpy'<2'; then pass --target-option "
             "python=lava-env/bin/python, or run the artifact directly: lava-env/bin/python "
             "{runner} --input x_int.npz --output result.npz")


REBUILD = "re-run 'snncompile convert --target loihi' to write the artifact again"


def _read_manifest(directory: Path) -> dict:
    """The artifact's network.json, checked (with params.npz) to hold the network the
    runner will build: a damaged file is an ArtifactError naming it."""
    manifest = directory / "network.json"
    read_npz(directory / "params.npz", REBUILD)
    net = read_json(manifest, hint=REBUILD)
    with artifact_file(manifest, REBUILD):
        read_network(directory)  # every population, connection and array it names
        shapes = [net["input"]["shape"]] + [e["shape"] for e in net["outputs"] + net["populations"]
                                            + net.get("pools", [])]
        if not all(isinstance(v, list) and all(type(d) is int and d > 0 for d in v) for v in shapes):
            raise ValueError("a shape is not a list of positive integers")
        if type(net["timesteps"]) is not int or net["timesteps"] < 1:
            raise ValueError(f"timesteps {net['timesteps']!r} is not a positive integer")
        if not isinstance(net.get("spiking_outputs", []), list):
            raise ValueError("spiking_outputs is not a list")
        for p in net.get("pools", []):
            bits, slots = p["count_bits"], p["slots"]
            if type(bits) is not int or not 1 <= bits <= L.MAXPOOL_COUNT_BITS_MAX or type(slots) is not int \
                    or slots < 1:
                raise ValueError(f"max pool {p['name']!r}: count_bits {bits!r} or slots {slots!r} out of range")
    return net


def _check_counters(manifest: dict, T: int) -> None:
    """Refuse a run whose window the max pools' spike counters cannot hold (a count of up
    to T needs T <= 2^count_bits - 1)."""
    for p in manifest.get("pools", []):
        top = (1 << int(p["count_bits"])) - 1
        if T > top:
            raise UsageError(f"max pool '{p['name']}': its {p['count_bits']}-bit spike counters "
                             f"hold counts up to {top}, fewer than T = {T}",
                             f"run with --timesteps {top} or less, or convert again with "
                             f"--target-option maxpool_count_bits={T.bit_length()}")


def _parts(graph: Graph) -> list:
    """What lowering reads of ``graph``, as objects: its window, outputs, nodes and every
    attribute of each node."""
    return [graph.timesteps, *graph.outputs,
            *(x for n in graph.nodes for x in (n, *(getattr(n, f.name) for f in dataclasses.fields(n))))]


def _unchanged(parts: list, graph: Graph) -> bool:
    """Whether ``graph`` still has exactly the objects :func:`_parts` took (a node replaced or
    an attribute reassigned is a change; a numpy array edited in place is not seen: no
    caller does that between check and lower)."""
    now = _parts(graph)
    return len(now) == len(parts) and all(a is b or (type(a) in (int, str) and a == b)
                                          for a, b in zip(parts, now))


class LoihiBackend(Backend):
    """Intel Loihi 2 via Lava (bit-accurate fixed-point CPU simulation)."""

    name = "loihi"
    version = __version__
    description = "Intel Loihi 2 via Lava: bit-exact on Loihi2SimCfg(select_tag='fixed_pt')"
    can_run = True
    run_options = RUN_OPTIONS

    def __init__(self, options: Mapping[str, str] | None = None):
        super().__init__(options)
        chip = {k: v for k, v in self.options.items() if k not in RUN_OPTIONS}
        self._limits = L.loihi_limits(chip)
        self._chip = L.parse_options(chip)
        self.python = self.options.get("python", sys.executable)
        self._lava_ok = False  # checked once per instance, on the first run
        self._checked = None   # the last check's graph, its network and violations (_remember)
        try:
            self.timeout_s = float(self.options.get("timeout_s", 600))
        except ValueError:
            raise UsageError(f"loihi target option timeout_s={self.options['timeout_s']!r} "
                             "is not a number") from None

    def limits(self) -> Limits:
        return self._limits

    def check(self, graph: Graph, timesteps: int | None = None) -> list[Violation]:
        """Generic rules and the capacity model, both on the graph; then the Loihi rules on
        the network Lava will run. A graph that already fails on the graph alone and whose
        folded network would be large is refused without building it (seconds, not minutes)."""
        violations, net, mapping = self._check(graph, timesteps)
        self._remember(graph, timesteps, violations, (net, mapping))
        return violations

    def _check(self, graph: Graph, timesteps: int | None = None, progress=None):
        """The violations, the network built for them (None when refused before) and the
        mapping onto cores and chips."""
        lim = self.limits()
        out = check_limits(graph, dataclasses.replace(lim, cores=None), self.name)
        layers = layer_footprints(graph)
        mapping = map_graph(graph, self._chip, layers)
        out += mapping_violations(mapping, self._chip)
        if out and sum(f.units * f.slots * f.folded_fanin for f in layers) > FOLD_EARLY_REFUSAL:
            return out, None, mapping
        net = build_network(graph, timesteps, progress=progress,
                            count_bits=self._chip["maxpool_count_bits"])
        out += check_network(net, lim)
        return out, net, mapping

    def check_early(self, graph: Graph) -> list[Violation]:
        """A system too small for the model's neurons alone (capacity.neuron_bound: a lower
        bound no conversion option lowers), decided on the imported model before calibration."""
        return mapping_violations(neuron_bound(graph, self._chip), self._chip, at_least=True)

    def mapping(self, graph: Graph) -> ChipMapping:
        """Cores and chips per layer (capacity.py), from the graph alone."""
        return map_graph(graph, self._chip)

    def profile(self) -> Profile:
        """What Lava's fixed-point LIF needs: 8-bit weights, 18 membrane bits (a 24-bit v
        with input and threshold << 6), binary spikes, the input every step (a charge
        injected once is T times larger in one step: it overflows the 16-bit input port
        and the 16-bit graded spike), and the widest --input-bits whose per-step current
        into the first layer (16-bit port) and whose threshold there (17-bit vth) Loihi
        holds."""
        return Profile(
            weight_bits=L.WEIGHT_BITS, membrane_bits=L.MEMBRANE_BITS, input_mode="every_step",
            spikes="binary",
            reasons={"weight_bits": "8-bit synaptic weights",
                     "membrane_bits": "24-bit v register, input and threshold << 6",
                     "input_mode": "a once-injected input is T times the current in one step",
                     "spikes": "the default; --spikes signed takes a custom neuron, docs/loihi.md"},
            input_rule=lambda g: input_width_violations(
                build_network(g, layers=input_layers(g), count_bits=self._chip["maxpool_count_bits"]), g),
            input_reason=(f"the first layer's current per step fits Loihi's "
                          f"{(L.CURRENT_MAX + 1).bit_length()}-bit input port and its threshold "
                          f"the {L.THRESHOLD_BITS}-bit vth"))

    def cores(self, graph: Graph) -> dict[str, int]:
        """Loihi 2 cores per layer, for reports such as ``evaluate``."""
        return {m.name: m.cores for m in self.mapping(graph).layers}

    def layer_resources(self, graph: Graph) -> dict[str, dict[str, int]]:
        """Cores and the chips they span, per layer."""
        return self.mapping(graph).resources()

    def resource_totals(self, graph: Graph,
                        layers: dict[str, dict[str, int]] | None = None) -> dict[str, int]:
        """Cores, and chips in all (layers share chips: not the sum of the layers'; cores
        fill chips in layer order)."""
        layers = self.layer_resources(graph) if layers is None else layers
        cores = sum(v["cores"] for v in layers.values())
        return {"cores": cores, "chips": -(-cores // self._chip["cores"])}

    def _remember(self, graph: Graph, timesteps: int | None, violations: list[Violation], built) -> None:
        """Keep the network (and mapping: ``built``) a check built for ``graph``, so that lowering the same graph
        (convert checks, then writes) builds it once: at VGG-19 size that is seconds and a
        second copy of every weight matrix. Held until the next check or lowering, or until
        ``graph`` itself is freed (a check of a temporary graph keeps nothing alive)."""
        def forget(ref: weakref.ref) -> None:
            if self._checked is not None and self._checked[0] is ref:
                self._checked = None

        self._checked = None if built[0] is None else (weakref.ref(graph, forget), timesteps,
                                                        _parts(graph), violations, built)

    def _network(self, graph: Graph, progress=None):
        """The violations, network and mapping of ``graph``: the last check's where it checked
        this same graph object, unchanged (same nodes, same attribute objects), else built anew."""
        kept, self._checked = self._checked, None
        if kept is not None:
            ref, timesteps, parts, violations, (net, mapping) = kept
            if ref() is graph and timesteps is None and _unchanged(parts, graph):
                if progress is not None:
                    progress(1, 1, "as checked")
                return violations, net, mapping
        return self._check(graph, progress=progress)

    def lower(self, graph: Graph, directory: Path, progress=None) -> None:
        violations, net, mapping = self._network(graph, progress=progress)
        if violations:
            raise LimitError(self.name, violations)
        write_artifact(net, Path(directory))
        # outputs that are spiking layers: their accumulators are their spike counts
        spiking = [o for o in graph.outputs if any(p.name == o for p in net.populations)]
        manifest = Path(directory) / "network.json"
        m = json.loads(manifest.read_text())
        m["spiking_outputs"] = spiking
        m["mapping"] = mapping.as_dict()
        manifest.write_text(json.dumps(m, indent=1))
        why = netx_problems(net) or write_netx(net, flatten_network(graph), Path(directory) / "netx.h5")
        if why:
            (Path(directory) / "netx-unsupported.txt").write_text(
                "No netx.h5: this network does not fit lava-dl netx because\n"
                + "".join(f"- {w}\n" for w in why))

    def run(self, directory: Path, x_int: np.ndarray, timesteps: int | None = None,
            record_spikes: bool = False) -> BackendRun:
        directory = Path(directory)
        if not all((directory / f).is_file() for f in ("network.json", "params.npz")):
            raise ArtifactError(f"{directory} is not a loihi artifact (no network.json/params.npz)",
                                "lower the graph again ('snncompile convert --target loihi')")
        net = _read_manifest(directory)
        x_int = np.asarray(x_int)
        if x_int.ndim < 1 or x_int.shape[0] < 1 or tuple(x_int.shape[1:]) != tuple(net["input"]["shape"]):
            raise DataError(f"input shape {tuple(x_int.shape)} does not match the network's "
                            f"(N, {', '.join(map(str, net['input']['shape']))}) with N >= 1")
        T = int(timesteps or net["timesteps"])
        _check_counters(net, T)
        spiking_outputs = net.get("spiking_outputs", [])
        record = record_spikes or bool(spiking_outputs)
        self._require_lava(directory / "run_lava.py")
        with tempfile.TemporaryDirectory(prefix="snncompile-loihi-") as tmp:
            xin, res = Path(tmp) / "x.npz", Path(tmp) / "result.npz"
            np.savez(xin, x=np.rint(x_int).astype(np.int32))
            # the process code from this package, alone in a folder of its own (Lava executes
            # every sibling *.py of a process's module while looking for its models)
            shutil.copytree(PROCESS_DIR, Path(tmp) / "code" / PROCESS_DIR.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
            cmd = [self.python, str(RUNNER), "--network", str(directory.resolve()),
                   "--processes", str(Path(tmp) / "code"), "--input", str(xin),
                   "--output", str(res), "--timesteps", str(T)] + (["--record-spikes"] if record else [])
            t0 = time.perf_counter()
            self._run_bounded(cmd)
            wall = time.perf_counter() - t0
            with np.load(res, allow_pickle=False) as z:
                result = {k: z[k] for k in z.files}
        n = x_int.shape[0]
        outputs = {o["name"]: result[f"out/{o['name']}"].reshape((n,) + tuple(o["shape"]))
                   for o in net["outputs"]}
        spikes = None
        if record:
            spikes = {p["name"]: result[f"spikes/{p['name']}"].reshape((T, n) + tuple(p["shape"]))
                      for p in net["populations"] + net.get("pools", [])}
            for name in spiking_outputs:
                outputs[name] = spikes[name].sum(axis=0, dtype=np.int64)
            if not record_spikes:
                spikes = None
        build_s, start_s, run_s, read_s = (float(v) for v in result["wall_s"])
        steps = int(result["steps"])
        stats = {"simulator": "lava-nc Loihi2SimCfg(select_tag='fixed_pt')", "samples": n,
                 "timesteps": T, "lava_steps": steps, "delay_per_layer": 1,
                 "wall_s": round(wall, 3), "lava_build_s": round(build_s, 3),
                 "lava_compile_first_step_s": round(start_s, 3),
                 "lava_run_s": round(run_s, 3), "lava_readback_s": round(read_s, 3),
                 "lava_steps_per_s": round((steps - 1) / run_s, 1) if run_s > 0 else None,
                 **self._cores(directory, net)}
        stats["current_wraps"] = {p["name"]: int(result[f"wraps/{p['name']}"])
                                  for p in net["populations"]}
        if net.get("pools"):  # spike counters that wrapped (never when T fits them)
            stats["counter_wraps"] = {p["name"]: int(result[f"wraps/{p['name']}"]) for p in net["pools"]}
        wrapped = {k: v for k, v in stats["current_wraps"].items() if v}
        if wrapped:
            log.warning("loihi: inputs beyond the 16-bit input port in one step in %s: a chip "
                        "would not carry them exactly (use --input-mode every_step, fewer "
                        "--input-bits or fewer --bits)", ", ".join(f"{k} ({v}x)" for k, v in wrapped.items()))
        return BackendRun(output_acc=outputs, spikes=spikes, stats=stats)

    # --- helpers ---------------------------------------------------------------------------

    def _cores(self, directory: Path, manifest: dict) -> dict:
        """Cores and chips per layer and in total, as mapped when the artifact was lowered."""
        m = manifest.get("mapping")
        if m is None:
            raise ArtifactError(f"{directory} has no mapping in network.json (an older artifact)",
                                REBUILD)
        with artifact_file(directory / "network.json", REBUILD):
            return {"cores_per_layer": {k: int(v["cores"]) for k, v in m["layers"].items()},
                    "chips_per_layer": {k: int(v["chips"]) for k, v in m["layers"].items()},
                    "cores": int(m["cores"]), "chips": int(m["chips"])}

    def _require_lava(self, runner: Path) -> None:
        if self._lava_ok:
            return
        probe = [self.python, "-c", "import lava.magma.core.run_configs"]
        try:
            ok = subprocess.run(probe, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        self._lava_ok = ok
        if not ok:
            raise UsageError(LAVA_HELP.format(python=self.python, runner=runner),
                             "see docs/loihi.md, 'Running without Python 3.10'")

    def _run_bounded(self, cmd: list[str]) -> None:
        """Run ``cmd`` in its own process group; kill the whole group on timeout (Lava forks
        one process per Lava process, and a failed run may hang instead of exiting)."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, text=True)
        try:
            out, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ArtifactError(f"the Lava run did not finish within {self.timeout_s:g} s and was "
                                "stopped (Lava can hang on errors or oversize input)",
                                "run fewer samples or steps, or raise --target-option timeout_s")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            tail = "\n".join((err or out or "").strip().splitlines()[-15:])
            raise ArtifactError(f"the Lava run failed (exit code {proc.returncode}):\n{tail}")

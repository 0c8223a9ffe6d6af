"""The CI gate: `snncompile baseline` records what a known-good build achieves, `snncompile
check` verifies a build against a target's hardware limits and against such a baseline.

A check is a named pass/fail with a message for people; `check` passes when every check
passes. Checks that cannot run (a baseline that is not valid JSON or comes from another
model, missing data) are errors of the user's, not failed checks, so CI can tell "the
model regressed" (exit 1) from "the gate is misconfigured" (exit 2 and up).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from ..targets.artifact import Artifact, read_artifact
from ..targets.select import SIM
from ..errors import UsageError
from ..fsutil import atomic_write_text, check_file_target
from ..ir import IFNode, Graph
from ..targets.api import get_backend
from ..targets.profile import OPTION_FLAGS

BASELINE_FORMAT = "snncompile-baseline"
BASELINE_VERSION = 1

# Tolerances a baseline starts with; edit the file to change them.
DEFAULT_TOLERANCES = {
    "max_accuracy_drop": 0.005,     # absolute (0.005 = half a percentage point)
    "max_mse_increase": 0.05,       # relative (regression models)
    "max_synops_increase": 0.05,    # relative (0.05 = 5 % more SynOps per sample)
    "max_timesteps_increase": 0,    # steps
    "max_neurons_increase": 0.0,    # relative
    "max_cores_increase": 0,        # cores (where the target estimates them)
}


@dataclass
class Check:
    """One verified property of a build."""

    name: str
    passed: bool
    message: str


def _structure(g: Graph) -> dict[str, Any]:
    """What identifies the model behind a build: input shape, layers and their sizes."""
    return {"input_shape": list(g.input.shape),
            "layers": [[n.name, list(n.shape)] for n in g.nodes if isinstance(n, IFNode)],
            "outputs": [[o, list(g[o].shape)] for o in g.outputs]}


def _neurons(g: Graph) -> int:
    return int(sum(int(np.prod(n.shape)) for n in g.nodes if isinstance(n, IFNode)))


def measure(out: str, data: str, progress: bool = False) -> dict[str, Any]:
    """The figures a baseline records and a check compares, for the build in ``out``."""
    from .evaluate import evaluate_artifact

    res = evaluate_artifact(out, data, progress=progress)
    art = read_artifact(out)
    figures = {"timesteps": int(res["timesteps"]), "synops_per_sample": float(res["synops_per_sample"]),
               "neurons": _neurons(art.graph)}
    for k in ("snn_accuracy", "snn_mse"):
        if k in res:
            figures[k] = float(res[k])
    if "cores" in res:
        figures["cores"] = int(res["cores"])
    return figures


def write_baseline(out: str, data: str, path: str, force: bool = False,
                   progress: bool = False) -> dict[str, Any]:
    """Measure the build in ``out`` on ``data`` and write a baseline file to ``path``."""
    check_file_target(path, force, (out, data), "baseline")
    art = read_artifact(out)
    base = {"format": BASELINE_FORMAT, "version": BASELINE_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "target": art.target.name, "model": _structure(art.graph),
            "data": _relative_to(data, path), "metrics": measure(out, data, progress),
            "tolerances": dict(DEFAULT_TOLERANCES)}
    atomic_write_text(path, json.dumps(base, indent=1) + "\n")
    return base


def read_baseline(path: str) -> dict[str, Any]:
    """A baseline file, checked; one clear error for anything else."""
    try:
        with open(path) as f:
            base = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"baseline file '{path}' does not exist",
                         "write one from a known-good build: snncompile baseline OUT --data D.npz -o FILE") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"baseline file '{path}' is not valid JSON ({e})",
                         "write it again with 'snncompile baseline'") from None
    if not isinstance(base, dict) or base.get("format") != BASELINE_FORMAT:
        raise UsageError(f"'{path}' is not a snncompile baseline (no \"format\": \"{BASELINE_FORMAT}\")",
                         "write one with 'snncompile baseline'")
    if base.get("version") != BASELINE_VERSION:
        raise UsageError(f"baseline '{path}' has version {base.get('version')}, this snncompile reads "
                         f"version {BASELINE_VERSION}", "write it again with 'snncompile baseline'")
    for key in ("model", "metrics", "tolerances"):
        if not isinstance(base.get(key), dict):
            raise UsageError(f"baseline '{path}' has no '{key}' object", "write it again with 'snncompile baseline'")
    unknown = set(base["tolerances"]) - set(DEFAULT_TOLERANCES)
    if unknown:
        raise UsageError(f"baseline '{path}': unknown tolerance(s) {', '.join(sorted(unknown))}",
                         f"known: {', '.join(DEFAULT_TOLERANCES)}")
    for key in ("tolerances", "metrics"):
        for name, v in base[key].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise UsageError(f"baseline '{path}': {key[:-1]} '{name}' is {json.dumps(v)}, not a "
                                 "finite number >= 0",
                                 f"edit it to a number (e.g. \"{name}\": "
                                 f"{json.dumps(DEFAULT_TOLERANCES.get(name, 0))}), or write the "
                                 "baseline again with 'snncompile baseline'")
    if not isinstance(base.get("data", ""), str):
        raise UsageError(f"baseline '{path}': \"data\" is {json.dumps(base['data'])}, not a path",
                         "write it again with 'snncompile baseline'")
    return base


def _relative_to(data: str, baseline: str) -> str:
    """The data path as the baseline records it: relative to the baseline file's folder, so
    a checkout moved or cloned elsewhere still finds it (absolute across drives)."""
    try:
        return os.path.relpath(os.path.abspath(data), os.path.dirname(os.path.abspath(baseline)))
    except ValueError:  # another drive (Windows)
        return os.path.abspath(data)


def recorded_data(base: dict[str, Any], path: str) -> str | None:
    """Where the baseline's own data file is: its recorded path, read relative to the
    baseline file (absolute paths, as older baselines hold them, stay as they are)."""
    data = base.get("data")
    if not data:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), data))


def limit_checks(art: Artifact, target: str | None) -> list[Check]:
    """The target's limits (the artifact's own target when none is named)."""
    built = art.target
    name = target or built.name
    if name == SIM:
        return []
    opts = built.options if name == built.name else {}
    backend = get_backend(name, opts)
    violations = backend.check(art.graph)
    if not violations:
        return [Check(f"limits of {name}", True, f"fits {name} (every limit holds)")]
    built_with = art.info.get("options", {})
    differs = {k: v for k, v in backend.profile().settings().items() if built_with.get(k) != v}
    note = ("; the build differs from the target's profile: convert --target "
            f"{name} chooses " + " ".join(f"{OPTION_FLAGS[k]} {v}" for k, v in differs.items())
            ) if differs else ""
    return [Check(f"limit {name}: {v.layer} {v.quantity}", False, str(v) + note) for v in violations]


def baseline_checks(art: Artifact, out: str, base: dict[str, Any], data: str | None,
                    path: str = "baseline", progress: bool = False) -> list[Check]:
    """Accuracy, SynOps, time steps, neurons and cores against the baseline's tolerances."""
    if _structure(art.graph) != base["model"]:
        raise UsageError(f"baseline '{path}' was recorded for another model (its layers or shapes "
                         "differ from this build's)", "write a baseline from a build of this model")
    if not data:
        data = recorded_data(base, path)
        if data is None:
            raise UsageError(f"checking against baseline '{path}' needs the data it was measured "
                             "on, and the baseline records none", "pass --data FILE.npz")
        if not os.path.exists(data):
            raise UsageError(f"checking against baseline '{path}' needs the data it was measured "
                             f"on: it records '{base['data']}', which is not at '{data}'",
                             "put the data file there (the path is relative to the baseline "
                             "file), or pass --data FILE.npz")
    tol = dict(DEFAULT_TOLERANCES) | base["tolerances"]
    now, was = measure(out, data, progress), base["metrics"]
    checks = []
    for key, label in (("snn_accuracy", "accuracy"),):
        if key in was and key in now:
            drop = was[key] - now[key]
            checks.append(Check(label, drop <= tol["max_accuracy_drop"] + 1e-12,
                                f"{label} {now[key]:.4f} (baseline {was[key]:.4f}, drop {drop:+.4f}, "
                                f"allowed {tol['max_accuracy_drop']})"))
    if "snn_mse" in was and "snn_mse" in now:
        grow = now["snn_mse"] / was["snn_mse"] - 1 if was["snn_mse"] else 0.0
        checks.append(Check("mse", grow <= tol["max_mse_increase"] + 1e-12,
                            f"mse {now['snn_mse']:.5g} (baseline {was['snn_mse']:.5g}, {grow:+.1%}, "
                            f"allowed +{tol['max_mse_increase']:.1%})"))
    grow = now["synops_per_sample"] / was["synops_per_sample"] - 1 if was["synops_per_sample"] else 0.0
    checks.append(Check("synops", grow <= tol["max_synops_increase"] + 1e-12,
                        f"SynOps/sample {now['synops_per_sample']:.0f} (baseline "
                        f"{was['synops_per_sample']:.0f}, {grow:+.1%}, allowed +{tol['max_synops_increase']:.1%})"))
    dt = now["timesteps"] - was["timesteps"]
    checks.append(Check("timesteps", dt <= tol["max_timesteps_increase"],
                        f"T {now['timesteps']} (baseline {was['timesteps']}, allowed +{tol['max_timesteps_increase']})"))
    gn = now["neurons"] / was["neurons"] - 1 if was["neurons"] else 0.0
    checks.append(Check("neurons", gn <= tol["max_neurons_increase"] + 1e-12,
                        f"neurons {now['neurons']} (baseline {was['neurons']})"))
    if "cores" in was and "cores" in now:
        dc = now["cores"] - was["cores"]
        checks.append(Check("cores", dc <= tol["max_cores_increase"],
                            f"cores {now['cores']} (baseline {was['cores']}, allowed +{tol['max_cores_increase']})"))
    return checks


def run_checks(out: str, target: str | None = None, baseline: str | None = None,
               data: str | None = None, progress: bool = False) -> list[Check]:
    """Every check `snncompile check` runs (read the baseline first: a bad one fails fast)."""
    base = read_baseline(baseline) if baseline else None
    art = read_artifact(out)
    checks = limit_checks(art, target)
    if base is not None:
        checks += baseline_checks(art, out, base, data, baseline, progress)
    if not checks:
        raise UsageError("nothing to check: the build is for the reference simulator and no "
                         "baseline was given", "pass --target NAME and/or --baseline FILE")
    return checks


def junit_xml(checks: list[Check], out: str) -> str:
    """JUnit XML, one test case per check, so CI systems list them."""
    failed = [c for c in checks if not c.passed]
    suite = ET.Element("testsuite", name="snncompile check", tests=str(len(checks)),
                       failures=str(len(failed)), errors="0")
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"snncompile.check.{os.path.basename(os.path.normpath(out))}",
                             name=c.name)
        if not c.passed:
            ET.SubElement(case, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(case, "system-out").text = c.message
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]}

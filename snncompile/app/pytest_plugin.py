"""A pytest plugin: compile your own models in tests and assert they fit hardware and hold
their accuracy.

Installed with snncompile (entry point ``pytest11``), so every pytest run of an environment
with snncompile loads it; it imports only pytest and the standard library until a test asks
for its fixture. Use::

    def test_model_fits(snncompile_build):
        build = snncompile_build("model.onnx", calib="calib.npz", target="cyclesim", bits=8,
                                 membrane_bits=24)
        build.check().assert_passed()                      # the target's limits
        build.check(baseline="ci/baseline.json").assert_passed()   # plus accuracy etc.
        assert build.evaluate("test.npz")["snn_accuracy"] > 0.9

``snncompile_build`` compiles each distinct (model, options) once per test session into a
temporary directory (or ``--snncompile-build-dir``) and returns a :class:`Build`. Options:

* ``--snncompile-baseline FILE`` / ini ``snncompile_baseline``: the baseline ``check()``
  uses when none is passed;
* ``--snncompile-build-dir DIR`` / ini ``snncompile_build_dir``: keep the builds there
  (e.g. to upload them from CI) instead of in pytest's temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class GateResult:
    """What ``Build.check`` found: the checks of `snncompile check`, one per limit and
    baseline figure. Truthy when every check passed."""

    checks: list = field(default_factory=list)   # snncompile.measure.gate.Check

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.passed]

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        bad = self.failures
        head = (f"{len(self.checks)} snncompile checks passed" if not bad
                else f"{len(bad)} of {len(self.checks)} snncompile checks failed")
        return "\n".join([head] + [f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.message}"
                                   for c in self.checks])

    def __repr__(self) -> str:
        return f"GateResult({'; '.join(f'FAIL {c.name}: {c.message}' for c in self.failures) or 'all passed'})"

    def assert_passed(self) -> None:
        """Raise AssertionError listing every failed check (and the ones that passed)."""
        if not self.passed:
            raise AssertionError(str(self))


@dataclass
class Build:
    """One compiled build: the directory `snncompile convert` wrote, and what to ask of it."""

    path: Path
    summary: dict[str, Any]
    default_baseline: str | None = None

    def check(self, target: str | None = None, baseline: str | None = None,
              data: str | None = None) -> GateResult:
        """The checks `snncompile check` runs: ``target``'s limits (default: the build's own
        target), and with a baseline (or the session's default) its figures."""
        from ..measure.gate import run_checks

        return GateResult(run_checks(str(self.path), target, baseline or self.default_baseline, data))

    def evaluate(self, data: str, timesteps: list[int] | None = None) -> dict[str, Any]:
        """`snncompile evaluate --json` on ``data`` (ANN vs SNN, SynOps, per layer)."""
        from ..measure.evaluate import evaluate_artifact

        return evaluate_artifact(str(self.path), str(data), timesteps)

    @property
    def artifact(self):
        """The build as an :class:`snncompile.targets.artifact.Artifact` (graph, info)."""
        from ..targets.artifact import read_artifact

        return read_artifact(self.path)


def _options_key(model: str, opts: dict[str, Any]) -> str:
    """What makes two builds the same: the model file's content and every option."""
    h = hashlib.sha256()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class BuildFactory:
    """The ``snncompile_build`` fixture: ``snncompile_build(model, **options) -> Build``.

    Options are those of `snncompile convert`, by their Python names: ``calib``,
    ``target``, ``timesteps``, ``bits``, ``fanin``, ``membrane_bits``, ``input_mode``,
    ``reset``, ``v_init``, ``weight_exp``, ``input_bits``, ``norm``, ``percentile``,
    ``train``, ``val``, ``epochs``, ``method``, ``target_options`` (a dict), ``seed``.
    The same model and options compile once per session."""

    CONVERSION = ("timesteps", "input_bits", "input_mode", "reset", "v_init", "membrane_bits",
                  "weight_exp")

    def __init__(self, root: Path, default_baseline: str | None):
        self.root = root
        self.default_baseline = default_baseline
        self._cache: dict[str, Build] = {}

    def __call__(self, model: str | os.PathLike, *, bits: int = 16, **options: Any) -> Build:
        from ..passes.convert import ConversionOptions
        from ..errors import UsageError
        from .compile import CompileRequest, compile_model

        model = str(model)
        if not os.path.isfile(model):
            raise UsageError(f"snncompile_build: model '{model}' does not exist")
        key = _options_key(model, dict(options, bits=bits))
        if key in self._cache:
            return self._cache[key]
        conv = {k: options.pop(k) for k in self.CONVERSION if k in options}
        req_fields = set(CompileRequest.__dataclass_fields__) - {"model", "out", "options", "force"}
        unknown = set(options) - req_fields
        if unknown:
            raise UsageError(f"snncompile_build: unknown option(s) {', '.join(sorted(unknown))}",
                             f"use {', '.join(sorted(set(self.CONVERSION) | req_fields | {'bits'}))}")
        out = self.root / f"{Path(model).stem}-{key}"
        req = CompileRequest(model=model, out=str(out), force=True,
                             options=ConversionOptions(weight_bits=bits, **conv), **options)
        summary = compile_model(req)
        build = Build(path=out, summary=summary, default_baseline=self.default_baseline)
        self._cache[key] = build
        return build


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("snncompile", "snncompile builds (fixture snncompile_build)")
    group.addoption("--snncompile-baseline", metavar="FILE", default=None,
                    help="Baseline file Build.check() uses when none is passed.")
    group.addoption("--snncompile-build-dir", metavar="DIR", default=None,
                    help="Write snncompile builds here instead of pytest's temporary directory.")
    parser.addini("snncompile_baseline", "Baseline file Build.check() uses when none is passed.")
    parser.addini("snncompile_build_dir", "Directory for snncompile builds.")


def _setting(config: pytest.Config, name: str) -> str | None:
    """A command-line option, else the ini value (paths relative to the ini file)."""
    value = config.getoption(f"--snncompile-{name.replace('_', '-')}")
    if value:
        return value
    ini = config.getini(f"snncompile_{name}")
    if ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return str(base / ini)
    return None


@pytest.fixture(scope="session")
def snncompile_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuildFactory:
    """Compile an ONNX model with snncompile (once per session per model and options);
    returns a :class:`Build` with ``.path``, ``.check()`` and ``.evaluate()``."""
    root = _setting(request.config, "build_dir")
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    return BuildFactory(Path(root) if root else tmp_path_factory.mktemp("snncompile"),
                        _setting(request.config, "baseline"))

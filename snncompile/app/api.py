"""The Python API: convert, evaluate, run and check from a script or a notebook.

    import snncompile as sc
    build = sc.convert(net, "out/", example_input=x[:1], target="loihi", bits=8, fanin=64,
                       calib=x_calib, timesteps=8)
    ev = sc.evaluate(build, x_test, y_test)      # sc.Evaluation
    run = sc.run(build, x_test, y_test)          # sc.RunResult (bit-exact against the reference)
    gate = sc.check(build, target="loihi")       # sc.CheckResult

It is the layer the command line stands on: ``convert`` takes the options of `snncompile
convert` under the names of the CLI's flags (``bits``, ``fanin``, ``timesteps``, ...), builds
the same :class:`~.compile.CompileRequest` (:func:`compile_request`, which the CLI calls too)
and runs the same job; the others call what `evaluate`, `run` and `check` call. Results are
dataclasses; the full record (what ``--json`` prints) is in each result's ``raw``. Errors are
the project's own (:mod:`snncompile.errors`), with a message and a ``hint``.

A model is an ONNX file or a torch ``nn.Module``, which is exported with torch's own ONNX
exporter (TorchScript-based, opset 17, dynamic batch) from ``example_input`` or
``input_shape`` (per sample, without the batch axis), or from the first calibration sample.
Data are ``.npz`` paths (arrays ``x`` and ``y``) or numpy arrays (``x``, and ``y`` where
labels are needed); arrays are written to a temporary ``.npz`` so every check the CLI makes
on a file is made on them too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np

from ..errors import DataError, ModelError, SnnCompileError, UsageError
from ..ir.options import ConversionOptions

PathLike = Union[str, os.PathLike]
# .npz path, an array of inputs x, or an (x, y) pair
Data = Union[PathLike, np.ndarray, "tuple[np.ndarray, np.ndarray]"]


# --- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    """A compiled output directory (what `snncompile convert` writes); usable wherever a
    path is (``os.fspath(build)``)."""

    path: Path
    target: str
    timesteps: int
    layers: int                        # IF layers
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    tuning: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class LayerFigures:
    """One layer of an evaluation (an IF layer, spiking max pool or output), counted as
    `inspect`, the limit rules and --fanin count it."""

    name: str
    kind: str
    synapses: str                      # the ops of its synapse chain, e.g. "avgpool2d>conv2d"
    neurons: int
    max_fanin: int
    weight_bits: int
    spikes_per_sample: float
    firing_rate: float | None          # spikes per neuron per step (None: an output)


@dataclass(frozen=True)
class SweepPoint:
    """Scores and SynOps at one T of a sweep."""

    timesteps: int
    snn_accuracy: float | None
    snn_mse: float | None
    synops_per_sample: float


@dataclass(frozen=True)
class Evaluation:
    """ANN (onnxruntime) against SNN (reference simulator) on labelled data. Per-layer
    figures are at ``timesteps`` (the build's T when the sweep has it)."""

    timesteps: int
    samples: int
    ann_accuracy: float | None
    snn_accuracy: float | None
    ann_mse: float | None
    snn_mse: float | None
    synops_per_sample: float
    ann_macs_per_sample: int
    layers: tuple[LayerFigures, ...]
    sweep: tuple[SweepPoint, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RunResult:
    """A build run on its backend and compared with the reference simulator."""

    backend: str
    bit_exact: bool
    timesteps: int
    samples: int
    accuracy: float | None
    mse: float | None
    differences: tuple[str, ...]
    seconds_backend: float
    seconds_reference: float
    stats: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CheckResult:
    """The CI gate's checks (target limits, baseline); ``passed`` when every one holds."""

    passed: bool
    checks: tuple[Any, ...]            # snncompile.measure.gate.Check: name, passed, message

    def failed(self) -> list[Any]:
        return [c for c in self.checks if not c.passed]


# --- options -> request ----------------------------------------------------------------------

def compile_request(model: PathLike, out: PathLike, *, target: str = "sim",
                    timesteps: int | str = 16, bits: int = 16, **options: Any):
    """The :class:`~.compile.CompileRequest` for `convert`'s options, named as the CLI's
    flags are (``bits`` for --bits, ``output`` for --output, ``train``/``val`` for the data
    files; ``timesteps`` an int, or "auto"; ``percentile`` a number or "auto";
    ``target_options`` a mapping or KEY=VALUE strings). ``explicit``: the options the user
    set (the CLI knows); left out, those that differ from their defaults count as set."""
    from ..calibrate.timesteps import AutoTOptions, parse_candidates, parse_timesteps_option
    from ..targets.api import parse_backend_options
    from .compile import CompileRequest

    conv_names = ("input_bits", "input_mode", "reset", "v_init", "membrane_bits", "weight_exp", "weight_scale",
                  "spikes")
    conv = {k: options.pop(k) for k in conv_names if k in options}
    auto_names = ("max_accuracy_drop", "max_psnr_drop", "timesteps_candidates")
    auto_opts = {k: options.pop(k, None) for k in auto_names}
    steps = parse_timesteps_option(str(timesteps))
    auto = None
    if steps is None:
        auto = AutoTOptions(parse_candidates(auto_opts["timesteps_candidates"]),
                            auto_opts["max_accuracy_drop"], auto_opts["max_psnr_drop"])
        auto.check()
        steps = max(auto.candidates)  # a placeholder until the search has chosen
    else:
        given = [f"--{k.replace('_', '-')}" for k, v in auto_opts.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only used "
                             "with --timesteps auto", f"pass --timesteps auto, or drop {given[0]}")
    percentile, search = _percentile(options.pop("percentile", 99.9))
    explicit = options.pop("explicit", None)
    if search and explicit is not None:  # reviewed against the method as its own option
        explicit = (frozenset(explicit) - {"percentile"}) | {"percentile_search"}
    tops = options.pop("target_options", None) or {}
    if not isinstance(tops, Mapping):
        tops = parse_backend_options(tuple(tops))
    known = set(CompileRequest.__dataclass_fields__) - {"model", "out", "target", "options",
                                                         "percentile", "percentile_search",
                                                         "target_options", "auto_timesteps", "explicit"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"unknown convert option(s): {', '.join(unknown)}",
                         "see 'snncompile convert --help' (options take their flag's name, "
                         "with _ for -: input_mode=..., fanin=...)")
    opts = ConversionOptions(timesteps=steps, weight_bits=bits, **conv)
    return CompileRequest(model=os.fspath(model), out=os.fspath(out), target=target, options=opts,
                          percentile=percentile, percentile_search=search, target_options=dict(tops),
                          auto_timesteps=auto, explicit=explicit, **options)


def _percentile(value: float | str) -> tuple[float, bool]:
    """(percentile for calibration, whether tuning searches each layer's) from --percentile."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 99.9, True  # the conversion before tuning uses the default
    try:
        return float(value), False
    except (TypeError, ValueError):
        raise UsageError(f"--percentile must be a number in (0, 100] or auto, got '{value}'",
                         "e.g. --percentile 99.9, or --percentile auto with --train/--val") from None


# --- data and models -------------------------------------------------------------------------

@contextmanager
def _data_file(data: Data | None, y: np.ndarray | None, what: str, tmp: Path) -> Iterator[str | None]:
    """A path to ``data``: the file itself, or arrays written to a .npz in ``tmp``."""
    if data is None:
        if y is not None:
            raise UsageError(f"{what}: labels were given without inputs")
        yield None
        return
    if isinstance(data, (str, os.PathLike)):
        if y is not None:
            raise UsageError(f"{what}: labels come from the file '{os.fspath(data)}' (arrays x and y)",
                             "drop the separate labels, or pass the inputs as an array")
        yield os.fspath(data)
        return
    if isinstance(data, tuple):
        if len(data) != 2 or y is not None:
            raise UsageError(f"{what}: pass (x, y), or x and y separately")
        data, y = data
    x = np.asarray(data)
    if x.dtype == object or x.ndim < 1:
        raise DataError(f"{what}: inputs must be a numeric array (N, *input shape), got "
                        f"{type(data).__name__}")
    arrays = {"x": x.astype(np.float32, copy=False) if np.issubdtype(x.dtype, np.floating) else x}
    if y is not None:
        arrays["y"] = np.asarray(y)
    path = tmp / f"{what.replace(' ', '_')}.npz"
    np.savez(path, **arrays)
    try:
        yield str(path)
    except SnnCompileError as e:  # name the array, not the temporary file it went through
        e.message = e.message.replace(f"'{path}'", f"the {what} array")
        e.args = (e.message,)
        raise


def _first_sample(data: Data | None) -> np.ndarray | None:
    if data is None:
        return None
    if isinstance(data, tuple):
        data = data[0]
    if isinstance(data, (str, os.PathLike)):
        try:
            with np.load(os.fspath(data), allow_pickle=False) as f:
                return f["x"][:1].astype(np.float32)
        except (OSError, ValueError, KeyError):
            return None  # the conversion names what is wrong with the file
    return np.asarray(data, np.float32)[:1]


def export_torch(module: Any, path: PathLike, example_input: Any = None,
                 input_shape: Sequence[int] | None = None) -> Path:
    """Write a torch ``nn.Module`` as ONNX with torch's exporter (eval mode, opset 17, a
    dynamic batch axis), from an example input or a per-sample input shape."""
    import torch

    if example_input is None:
        if input_shape is None:
            raise UsageError("a torch module needs an example input to be exported to ONNX",
                             "pass example_input=x[:1] or input_shape=(C, H, W), or calib=x")
        example_input = torch.zeros((1, *tuple(int(d) for d in input_shape)))
    x = torch.as_tensor(np.asarray(example_input, np.float32)) if not isinstance(
        example_input, torch.Tensor) else example_input.float()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the exporter's own
            torch.onnx.export(module, (x,), os.fspath(path), dynamo=False, input_names=["input"],
                              output_names=["output"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as e:  # torch's message says which op or shape failed
        raise ModelError(f"torch could not export the module to ONNX: {type(e).__name__}: {e}",
                         "check the example input's shape (batch first), or export the model "
                         "yourself with torch.onnx.export and pass the .onnx file") from e
    finally:
        module.train(was_training)
    return Path(path)


def _is_torch_module(model: Any) -> bool:
    torch = sys.modules.get("torch")  # a module object exists only where torch was imported
    return torch is not None and isinstance(model, torch.nn.Module)


# --- the jobs --------------------------------------------------------------------------------

def convert(model: Any, out: PathLike | None = None, *, example_input: Any = None,
            input_shape: Sequence[int] | None = None, target: str = "sim",
            timesteps: int | str = 16, bits: int = 16, calib: Data | None = None,
            train: Data | None = None, val: Data | None = None, force: bool = False,
            progress: bool = False, **options: Any) -> Build:
    """Convert an ONNX file or a torch module into an integer SNN in ``out`` (a new
    temporary folder when None), as `snncompile convert` does, with its options by their
    flags' names (``fanin=64``, ``input_mode="every_step"``, ``method="ptl"``, ...).
    ``calib`` is inputs (array or .npz); ``train``/``val`` are (x, y) pairs or .npz files.
    Returns the :class:`Build`."""
    from .compile import compile_model

    if out is None:
        out = Path(tempfile.mkdtemp(prefix="snncompile-")) / "build"
    with tempfile.TemporaryDirectory(prefix="snncompile-api-") as td, ExitStack() as stack:
        tmp = Path(td)
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
        elif _is_torch_module(model):
            if example_input is None and input_shape is None:
                example_input = _first_sample(calib if calib is not None else train)
            path = os.fspath(export_torch(model, tmp / f"{type(model).__name__}.onnx", example_input,
                                          input_shape))
        else:
            raise UsageError(f"cannot convert a {type(model).__name__}: pass a path to an .onnx "
                             "file or a torch nn.Module")
        files = {name: stack.enter_context(_data_file(d, None, name, tmp))
                 for name, d in (("calib", calib), ("train", train), ("val", val))}
        req = compile_request(path, out, target=target, timesteps=timesteps, bits=bits, force=force,
                              progress=progress, **files, **options)
        summary = compile_model(req)
    return Build(path=Path(summary["out"]), target=summary["target"], timesteps=int(summary["timesteps"]),
                 layers=int(summary["layers"]), warnings=tuple(summary.get("warnings", ())),
                 seconds=float(summary.get("seconds", 0.0)), tuning=summary.get("tuning"), raw=summary)


def evaluate(build: PathLike, data: Data, y: np.ndarray | None = None, *,
             timesteps: int | Sequence[int] | None = None, batch_size: int = 256,
             progress: bool = False) -> Evaluation:
    """ANN against SNN of ``build`` on labelled data (a .npz, (x, y), or x and y), at the
    build's T or at each of ``timesteps``."""
    from ..measure.evaluate import evaluate_artifact

    if isinstance(timesteps, (int, np.integer)):
        steps = [int(timesteps)]
    else:
        steps = [int(t) for t in timesteps] if timesteps else None
    with tempfile.TemporaryDirectory(prefix="snncompile-api-") as td, \
            _data_file(data, y, "data", Path(td)) as path:
        res = evaluate_artifact(os.fspath(build), path, steps, batch_size, progress=progress)
    layers = tuple(LayerFigures(r["name"], r["kind"], r["synapses"], int(r["neurons"]), int(r["max_fanin"]),
                                int(r["weight_bits"]), float(r["spikes_per_sample"]), r.get("firing_rate"))
                   for r in res["layers"])
    sweep = tuple(SweepPoint(int(r["timesteps"]), r.get("snn_accuracy"), r.get("snn_mse"),
                             float(r["synops_per_sample"])) for r in res.get("sweep", [res]))
    return Evaluation(timesteps=int(res["timesteps"]), samples=int(res["samples"]),
                      ann_accuracy=res.get("ann_accuracy"), snn_accuracy=res.get("snn_accuracy"),
                      ann_mse=res.get("ann_mse"), snn_mse=res.get("snn_mse"),
                      synops_per_sample=float(res["synops_per_sample"]),
                      ann_macs_per_sample=int(res["ann_macs_per_sample"]), layers=layers, sweep=sweep,
                      raw=res)


def run(build: PathLike, data: Data, y: np.ndarray | None = None, *, timesteps: int | None = None,
        batch_size: int = 256, progress: bool = False) -> RunResult:
    """Run ``build`` on the backend it was compiled for and compare every spike and output
    with the reference simulator (``bit_exact``); labels, where given, give ``accuracy``."""
    from .run import run_artifact

    with tempfile.TemporaryDirectory(prefix="snncompile-api-") as td, \
            _data_file(data, y, "data", Path(td)) as path:
        res = run_artifact(os.fspath(build), path, timesteps, batch_size, progress=progress)
    return RunResult(backend=res["backend"], bit_exact=bool(res["bit_exact"]), timesteps=int(res["timesteps"]),
                     samples=int(res["samples"]), accuracy=res.get("accuracy"), mse=res.get("mse"),
                     differences=tuple(res["differences"]), seconds_backend=float(res["seconds_backend"]),
                     seconds_reference=float(res["seconds_reference"]), stats=res["stats"], raw=res)


def check(build: PathLike, target: str | None = None, baseline: PathLike | None = None,
          data: Data | None = None, y: np.ndarray | None = None, progress: bool = False) -> CheckResult:
    """The CI gate: ``build`` against a target's limits (its own target by default) and,
    with ``baseline``, against what a known-good build achieved (on ``data``, or the
    baseline's own data file)."""
    from ..measure.gate import run_checks

    with tempfile.TemporaryDirectory(prefix="snncompile-api-") as td, \
            _data_file(data, y, "data", Path(td)) as path:
        checks = run_checks(os.fspath(build), target, os.fspath(baseline) if baseline else None, path,
                            progress=progress)
    return CheckResult(passed=all(c.passed for c in checks), checks=tuple(checks))


__all__ = ["convert", "evaluate", "run", "check", "compile_request", "export_torch",
           "Build", "Evaluation", "LayerFigures", "SweepPoint", "RunResult", "CheckResult"]

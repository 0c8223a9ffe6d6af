"""snncompile: compile trained ANNs (ONNX) into integer spiking neural networks.

The Python API (:mod:`snncompile.app.api`) is importable from here: ``snncompile.convert``,
``evaluate``, ``run``, ``check`` and their result types. They are loaded on first use, so
``import snncompile`` (and the CLI's start-up) stays free of numpy-heavy and torch imports.
"""

__version__ = "0.1.0"

_API = ("convert", "evaluate", "run", "check", "compile_request", "export_torch", "Build",
        "Evaluation", "LayerFigures", "SweepPoint", "RunResult", "CheckResult")
_ERRORS = ("SnnCompileError", "ModelError", "UnsupportedOpError", "DataError", "ArtifactError",
           "UsageError")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str):
    if name in _API:
        from .app import api
        return getattr(api, name)
    if name in _ERRORS:
        from . import errors
        return getattr(errors, name)
    raise AttributeError(f"module 'snncompile' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

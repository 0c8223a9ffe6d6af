"""Read an ONNX file from disk into a checked, shape-inferred ``onnx.ModelProto``.

Every way a file can be unusable (missing, empty, not protobuf, cut short, weights kept in a
``.onnx.data`` file that is not beside it, a model the ONNX checker rejects) becomes a
:class:`~snncompile.errors.ModelError` that names the file, says what is wrong and how to fix
it. No protobuf or checker traceback reaches the user.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from ..errors import ModelError

_EXPORT_HINT = "re-export the model (e.g. torch.onnx.export or skl2onnx.to_onnx) and pass the new file"


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load, check and shape-infer the ONNX model at ``path``.

    Weights stored as external data (the torch dynamo exporter writes ``model.onnx.data``) are
    read from the model's directory. Raises ModelError naming the file for any problem.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file '{p}' does not exist", "check the path to the .onnx file")
    if not p.is_file():
        raise ModelError(f"'{p}' is not a file (a directory?)", "pass the path of the .onnx file itself")
    if p.stat().st_size == 0:
        raise ModelError(f"model file '{p}' is empty (0 bytes)", _EXPORT_HINT)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelError(f"'{p}' is not a readable ONNX model: the protobuf cannot be parsed "
                         f"({_short(e)}); the file is truncated, corrupt or not ONNX at all",
                         _EXPORT_HINT) from None
    if not model.HasField("graph") or not model.ir_version:
        raise ModelError(f"'{p}' does not contain an ONNX model (no graph or ir_version); it is "
                         "truncated, corrupt or a different file format", _EXPORT_HINT)
    _load_external(model, p)
    return prepare_model(model, str(p))


def prepare_model(model: onnx.ModelProto, where: str = "the model") -> onnx.ModelProto:
    """Check an in-memory model and return a shape-inferred copy (ModelError on failure)."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}",
                         "pass the .onnx file path or onnx.load(path)")
    _check_opsets(model, where)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"{_q(where)} is not a valid ONNX model: {_short(e)}", _EXPORT_HINT) from None
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as e:
        raise ModelError(f"{_q(where)}: ONNX shape inference failed: {_short(e)}", _EXPORT_HINT) from None


def _check_opsets(model: onnx.ModelProto, where: str) -> None:
    """The standard opset must be one this onnx knows: a newer one's ops are unknown to the
    checker, to shape inference and to us, and would be read with the wrong semantics."""
    known = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= known:
            raise ModelError(f"{_q(where)} uses ONNX opset {o.version}, but the installed onnx "
                             f"{onnx.__version__} knows opsets 1..{known}",
                             f"re-export with an opset of at most {known} (torch.onnx.export(..., "
                             "opset_version=17)); if the file is new, upgrade onnx")


def _load_external(model: onnx.ModelProto, p: Path) -> None:
    """Read weights kept in separate files, after checking that every such file exists and
    lies inside the model's folder (a model must not make us read any other file)."""
    base = p.parent
    outside = sorted({
        loc for t in _tensors(model) if external_data_helper.uses_external_data(t)
        and not _inside(base, loc := external_data_helper.ExternalDataInfo(t).location)})
    if outside:
        raise ModelError(f"'{p}' says its weights are in {', '.join(repr(o) for o in outside)}, "
                         f"outside the model's folder '{base}'; such a file is never read",
                         "keep the weight file (.onnx.data) beside the model and re-export with a "
                         "plain file name as its location")
    missing = sorted({
        external_data_helper.ExternalDataInfo(t).location
        for t in _tensors(model)
        if external_data_helper.uses_external_data(t)
        and not (base / external_data_helper.ExternalDataInfo(t).location).is_file()
    })
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise ModelError(f"'{p}' keeps its weights in {names}, which is not in '{base}'",
                         f"copy {names} into the same directory as '{p.name}' (the exporter writes "
                         "them side by side), or re-export with external_data=False")
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as e:
        raise ModelError(f"cannot read the external weights of '{p}': {_short(e)}",
                         "the .onnx.data file is truncated or does not belong to this model; "
                         "re-export both files together") from None


def _tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _inside(base: Path, location: str) -> bool:
    if not location or os.path.isabs(location):
        return False
    root = base.resolve()
    return (root / location).resolve().is_relative_to(root)


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _q(where: str) -> str:
    return where if where == "the model" else f"'{where}'"

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
from google.protobuf.message import DecodeError, Message
from onnx import external_data_helper

from ..errors import ModelError

_EXPORT_HINT = "re-export the model (e.g. torch.onnx.export or skl2onnx.to_onnx) and pass the new file"


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load, check and shape-infer the ONNX model at ``path``.

    Weights stored as external data (the torch dynamo exporter writes ``model.onnx.data``) are
    read from the model's directory. Raises ModelError naming the file for any problem.
    """
    return load_onnx_file(path)[0]


def load_onnx_file(path: str | os.PathLike) -> tuple[onnx.ModelProto, bool]:
    """:func:`load_onnx`, and whether the file holds all its weights itself (no external
    data): then the file alone is the model, and a copy of it can stand for it (the artifact
    copies it from disk instead of serializing the loaded model)."""
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
    external = any(external_data_helper.uses_external_data(t) for t in _tensors(model))
    _load_external(model, p)
    # the checker reads the file itself (a copy fewer than serializing the loaded model), and
    # the model is ours to fill with the inferred shapes in place
    return _prepare(model, str(p), check_path=None if external else str(p), in_place=True), not external


def prepare_model(model: onnx.ModelProto, where: str = "the model") -> onnx.ModelProto:
    """Check an in-memory model and return a shape-inferred copy (ModelError on failure)."""
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"expected a path or an onnx.ModelProto, got {type(model).__name__}",
                         "pass the .onnx file path or onnx.load(path)")
    return _prepare(model, where, check_path=None, in_place=False)


def _prepare(model: onnx.ModelProto, where: str, check_path: str | None, in_place: bool) -> onnx.ModelProto:
    """Check ``model`` (the file at ``check_path`` where given: the same model) and infer its
    shapes; ``in_place``: into ``model`` itself, else into a copy."""
    _check_opsets(model, where)
    try:
        onnx.checker.check_model(check_path if check_path is not None else model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise ModelError(f"{_q(where)} is not a valid ONNX model: {_short(e)}", _EXPORT_HINT) from None
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as e:
        raise ModelError(f"{_q(where)}: ONNX shape inference failed: {_short(e)}", _EXPORT_HINT) from None
    return _with_weights(inferred, model, in_place)


# Initializers above this many serialized bytes go to shape inference without their values:
# it reads only their dims and types, and values only of small shape-like inputs (a Reshape's
# shape, a Pad's pads), which stay. A 548 MB model then costs no 2 GB of copies to infer.
_SKELETON_BYTES = 1024


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the values of its large initializers left out (everything else copied)."""
    out = onnx.ModelProto()
    _copy_fields(out, model, skip=("graph",))
    _copy_fields(out.graph, model.graph, skip=("initializer",))
    for t in model.graph.initializer:
        nt = out.graph.initializer.add()
        if t.ByteSize() <= _SKELETON_BYTES:
            nt.CopyFrom(t)
        else:
            _copy_fields(nt, t, skip=_VALUE_FIELDS)
    return out


_VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                 "string_data")


def _with_weights(inferred: onnx.ModelProto, model: onnx.ModelProto, in_place: bool) -> onnx.ModelProto:
    """The inferred skeleton with ``model``'s initializers: every other field of ``inferred``
    moved into ``model`` (``in_place``: no copy of the weights), or ``model``'s initializers
    copied into ``inferred``."""
    if not in_place:
        del inferred.graph.initializer[:]
        inferred.graph.initializer.extend(model.graph.initializer)
        return inferred
    for fd in onnx.GraphProto.DESCRIPTOR.fields:
        if fd.name != "initializer":
            model.graph.ClearField(fd.name)
    for fd in onnx.ModelProto.DESCRIPTOR.fields:
        if fd.name != "graph":
            model.ClearField(fd.name)
    _copy_fields(model.graph, inferred.graph, skip=("initializer",))
    _copy_fields(model, inferred, skip=("graph",))
    return model


def _copy_fields(dst, src, skip: tuple[str, ...]) -> None:
    """Copy every field set in protobuf message ``src`` into ``dst``, except those in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if isinstance(value, Message):
            getattr(dst, fd.name).CopyFrom(value)
        elif isinstance(value, (bytes, str, int, float)):
            setattr(dst, fd.name, value)
        else:  # a repeated field
            getattr(dst, fd.name).extend(value)


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

"""Choose which ONNX output to compile, and strip what a spiking network does not need.

A trailing Softmax, LogSoftmax or ArgMax only turns logits into probabilities or a class
index; the compiled network outputs the logits before them (same argmax). Classifiers written
by skl2onnx also have a label branch (ArgMax -> ArrayFeatureExtractor -> Cast -> "label",
integer or string) and, by default, a ZipMap turning probabilities into a list of dicts: non-float
outputs are ignored and a ZipMap is followed back to the probabilities it reads.
"""

from __future__ import annotations

import onnx

from ..errors import ModelError

STRIPPED_OPS = ("Softmax", "LogSoftmax", "ArgMax", "ZipMap", "Identity")
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}


def strip_tail(tensor: str, producers: dict[str, onnx.NodeProto]) -> tuple[str, list[str]]:
    """Follow ``tensor`` back through trailing Softmax/LogSoftmax/ArgMax/ZipMap/Identity.

    Returns the tensor before them and the op types removed (last first)."""
    removed = []
    while tensor in producers and producers[tensor].op_type in STRIPPED_OPS \
            and producers[tensor].input:
        node = producers[tensor]
        removed.append(node.op_type)
        tensor = node.input[0]
    return tensor, removed


def choose_output(model: onnx.ModelProto, producers: dict[str, onnx.NodeProto],
                  requested: str | None) -> tuple[str, str]:
    """The chosen ONNX output and the tensor the compiled network computes for it.

    With ``requested`` (any tensor of the graph) that one is used; otherwise the single float
    output that remains after stripping. Raises ModelError listing the outputs when there are
    several candidates or none.
    """
    graph = model.graph
    out_names = [o.name for o in graph.output]
    if requested is not None:
        known = set(out_names) | set(producers) | {i.name for i in graph.input}
        if requested not in known:
            raise ModelError(f"output '{requested}' is not a tensor of the model; its outputs are "
                             f"{_listing(out_names)}", "pass one of these names with --output")
        tensor, _ = strip_tail(requested, producers)
        if not _is_float(model, tensor):
            raise ModelError(f"output '{requested}' is not a float tensor (a label or index?)",
                             "choose the scores/logits output with --output")
        return requested, tensor
    candidates: dict[str, str] = {}  # stripped tensor -> first graph output leading to it
    for name in out_names:
        tensor, _ = strip_tail(name, producers)
        if _is_float(model, tensor):
            candidates.setdefault(tensor, name)
    if len(candidates) == 1:
        tensor, name = next(iter(candidates.items()))
        return name, tensor
    if not candidates:
        raise ModelError(f"the model has no float output to compile (outputs: {_listing(out_names)})",
                         "pass the tensor holding the scores with --output NAME")
    raise ModelError(f"the model has {len(candidates)} outputs that could be compiled: "
                     f"{_listing(list(candidates.values()))}; snncompile compiles one",
                     "choose one with --output NAME (output=NAME in Python)")


def _is_float(model: onnx.ModelProto, tensor: str) -> bool:
    """True unless the model declares ``tensor`` with a non-float (or non-tensor) type."""
    for vi in (*model.graph.output, *model.graph.value_info, *model.graph.input):
        if vi.name == tensor:
            if vi.type.WhichOneof("value") != "tensor_type":
                return False
            return vi.type.tensor_type.elem_type in _FLOAT_TYPES
    for init in model.graph.initializer:
        if init.name == tensor:
            return init.data_type in _FLOAT_TYPES
    return True


def _listing(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)

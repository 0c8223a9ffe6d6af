"""The ONNX frontend: read an ONNX file and import it as a folded ANN graph of the IR.

    from snncompile.frontend import load_onnx, import_onnx
    res = import_onnx("model.onnx")      # res.graph, res.warnings, res.input_name, res.output_name

Modules: :mod:`.loader` (read and check files), :mod:`.outputs` (choose the output, strip a
trailing Softmax), :mod:`.context` (import state), :mod:`.registry` and :mod:`.ops` (one
converter per ONNX op), :mod:`.importer` (the walk, constant folding, error collection).
"""

from .importer import ImportResult, import_onnx
from .loader import load_onnx, load_onnx_file, prepare_model
from .registry import supported_ops

__all__ = ["ImportResult", "import_onnx", "load_onnx", "load_onnx_file", "prepare_model", "supported_ops"]

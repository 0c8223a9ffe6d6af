"""Loading a model infers its shapes on a copy without the large weights (the checker reads
the file itself), and the result is byte for byte what inferring on the whole model gives."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from snncompile.frontend import load_onnx, prepare_model
from snncompile.frontend import loader


def _model() -> onnx.ModelProto:
    """MatMul by a 64x64 weight (large: left out of shape inference) then Reshape by a shape
    initializer (small: its values are what inference reads)."""
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "w")
    shape = numpy_helper.from_array(np.array([1, 4096], np.int64), "s")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "s"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [64, 64])],
                          [helper.make_tensor_value_info("y", 1, ["n", "m"])], [w, shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_shapes_inferred_without_the_weights_match_the_whole_model(tmp_path):
    m = _model()
    assert m.graph.initializer[0].ByteSize() > loader._SKELETON_BYTES
    assert not loader._skeleton(m).graph.initializer[0].raw_data
    want = onnx.shape_inference.infer_shapes(m, strict_mode=False).SerializeToString()
    before = m.SerializeToString()
    assert prepare_model(m).SerializeToString() == want
    assert m.SerializeToString() == before  # the caller's model is not changed
    onnx.save(m, tmp_path / "m.onnx")
    got = load_onnx(tmp_path / "m.onnx")
    assert got.SerializeToString() == want
    assert [d.dim_value for d in got.graph.output[0].type.tensor_type.shape.dim] == [1, 4096]


def test_external_weights_are_still_checked_and_loaded(tmp_path):
    m, saved = _model(), _model()  # saving moves the weights of the saved model out
    onnx.save(saved, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data",
              size_threshold=1024)
    got = load_onnx(tmp_path / "m.onnx")
    assert np.array_equal(numpy_helper.to_array(got.graph.initializer[0]),
                          numpy_helper.to_array(m.graph.initializer[0]))
    whole = onnx.load(str(tmp_path / "m.onnx"))  # weights read back in, as before
    assert got.SerializeToString() == onnx.shape_inference.infer_shapes(whole, strict_mode=False).SerializeToString()

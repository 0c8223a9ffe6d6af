"""Every way an ONNX model can be unusable gives a snncompile error naming the problem."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from snncompile.errors import ModelError, UnsupportedOpError
from snncompile.frontend import import_onnx, load_onnx

H = helper.make_node


@pytest.fixture
def relu_file(onnx_kit, tmp_path):
    nodes = [H("Conv", ["x", "W"], ["c"]), H("Relu", ["c"], ["y"])]
    m = onnx_kit.model(nodes, {"W": np.ones((4, 3, 3, 3), np.float32)})
    path = tmp_path / "good.onnx"
    onnx.save(m, path)
    return path


def _raises(exc, path_or_model, *words, **kw):
    with pytest.raises(exc) as info:
        if isinstance(path_or_model, onnx.ModelProto) or kw:
            import_onnx(path_or_model, **kw)
        else:
            load_onnx(path_or_model)
    msg = str(info.value)
    for word in words:
        assert word in msg, f"{word!r} not in {msg!r}"
    assert info.value.hint, "every error needs a hint with the fix"
    assert "Traceback" not in msg
    return info.value


# -- files ----------------------------------------------------------------------------------
def test_good_file_loads(relu_file):
    assert load_onnx(relu_file).graph.node[0].op_type == "Conv"
    assert import_onnx(relu_file).graph.meta["source"] == "good.onnx"


def test_missing_file(tmp_path):
    _raises(ModelError, tmp_path / "nope.onnx", "nope.onnx", "does not exist")


def test_directory(tmp_path):
    _raises(ModelError, tmp_path, str(tmp_path), "not a file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    _raises(ModelError, p, "empty.onnx", "empty")


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    _raises(ModelError, p, "garbage.onnx")


def test_text_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a model\n")
    _raises(ModelError, p, "notes.onnx")


def test_truncated_file(relu_file, tmp_path):
    data = relu_file.read_bytes()
    p = tmp_path / "half.onnx"
    p.write_bytes(data[: len(data) // 2])
    _raises(ModelError, p, "half.onnx")


def test_missing_external_data(onnx_kit, tmp_path):
    m = onnx_kit.model([H("Conv", ["x", "W"], ["y"])], {"W": np.ones((4, 3, 3, 3), np.float32)})
    p = tmp_path / "ext.onnx"
    onnx.save(m, p, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert load_onnx(p).graph.initializer[0].name == "W"  # loads when the data is beside it
    os.remove(tmp_path / "ext.onnx.data")
    _raises(ModelError, p, "ext.onnx.data", "ext.onnx")


def test_checker_failure(onnx_kit):
    m = onnx_kit.model([H("Relu", ["x"], ["y"])])
    m.graph.node[0].input[0] = "undefined_tensor"
    _raises(ModelError, m, "not a valid ONNX model", output=None)


# -- unsupported content ----------------------------------------------------------------------
def test_all_unsupported_ops_in_one_error(onnx_kit):
    hidden = 5
    nodes = [
        H("LRN", ["x"], ["lrn"], name="norm_1", size=3),
        H("Sigmoid", ["lrn"], ["sig"], name="act_1"),
        H("Reshape", ["sig", "shape"], ["seq"]),
        H("LSTM", ["seq", "W", "R"], ["", "h"], name="lstm_1", hidden_size=hidden, layout=1),
        H("Flatten", ["h"], ["y"]),
    ]
    inits = {"shape": np.array([0, 3, 64], np.int64),
             "W": np.ones((1, 4 * hidden, 64), np.float32),
             "R": np.ones((1, 4 * hidden, hidden), np.float32)}
    err = _raises(UnsupportedOpError, onnx_kit.model(nodes, inits), "node 'lstm_1' (LSTM) is not supported",
                  "node 'act_1' (Sigmoid) is not supported", "node 'norm_1' (LRN) is not supported",
                  "supported ops:", output=None)
    assert len(err.problems) == 3


def test_conversion_problems_are_collected(onnx_kit):
    nodes = [H("Clip", ["x", "lo"], ["c"], name="clip_a"), H("Relu", ["c"], ["r"]),
             H("AveragePool", ["x"], ["p"], name="pool_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             H("Add", ["r", "p"], ["y"])]
    err = _raises(UnsupportedOpError, onnx_kit.model(nodes, {"lo": np.float32(-1)}),
                  "clip_a", "pool_b", output=None)
    assert len(err.problems) == 2


def test_clip_min_not_zero(onnx_kit):
    nodes = [H("Clip", ["x", "lo", "hi"], ["y"], name="hardtanh")]
    m = onnx_kit.model(nodes, {"lo": np.float32(-1), "hi": np.float32(1)})
    err = _raises(ModelError, m, "hardtanh", "min=-1", output=None)
    assert "ReLU" in err.hint


def test_avgpool_count_include_pad_false(onnx_kit):
    node = H("AveragePool", ["x"], ["y"], name="pool_3", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             count_include_pad=0)
    err = _raises(ModelError, onnx_kit.model([node]), "pool_3", "count_include_pad", output=None)
    assert "count_include_pad=True" in err.hint


def test_reshape_mixing_batch_and_features(onnx_kit):
    nodes = [H("Reshape", ["x", "shape"], ["y"], name="fold_batch")]
    m = onnx_kit.model(nodes, {"shape": np.array([-1, 8, 8], np.int64)})
    _raises(ModelError, m, "fold_batch", "mixes the batch axis", output=None)


def test_reshape_by_channel_count_mixes_batch(onnx_kit):
    """x.reshape(x.shape[1], -1): the leading entry is the channel count, not the batch."""
    nodes = [H("Shape", ["x"], ["s"]), H("Gather", ["s", "one"], ["c"], axis=0),
             H("Concat", ["c", "minus1"], ["shape"], axis=0),
             H("Reshape", ["x", "shape"], ["y"], name="by_channels")]
    inits = {"one": np.array([1], np.int64), "minus1": np.array([-1], np.int64)}
    _raises(ModelError, onnx_kit.model(nodes, inits), "by_channels", "mixes the batch axis",
            output=None)


def test_flatten_axis_0(onnx_kit):
    m = onnx_kit.model([H("Flatten", ["x"], ["y"], axis=0, name="flat0")])
    _raises(ModelError, m, "flat0", "batch", output=None)


def test_product_of_activations(onnx_kit):
    m = onnx_kit.model([H("Mul", ["x", "x"], ["y"], name="square")])
    _raises(ModelError, m, "square", "two activations", output=None)


def test_per_pixel_constant(onnx_kit):
    m = onnx_kit.model([H("Add", ["x", "k"], ["y"], name="pos")], {"k": np.ones((3, 8, 8), np.float32)})
    _raises(ModelError, m, "pos", "not per-channel", output=None)


# -- outputs and inputs -----------------------------------------------------------------------
def _two_heads(onnx_kit):
    nodes = [H("Relu", ["x"], ["r"]), H("Flatten", ["r"], ["f"]),
             H("Gemm", ["f", "A"], ["head_a"], transB=1), H("Gemm", ["f", "B"], ["head_b"], transB=1)]
    inits = {"A": np.ones((2, 192), np.float32), "B": np.ones((3, 192), np.float32)}
    return onnx_kit.model(nodes, inits, outputs=("head_a", "head_b"))


def test_several_outputs_without_choice(onnx_kit):
    err = _raises(ModelError, _two_heads(onnx_kit), "'head_a'", "'head_b'", output=None)
    assert "--output" in err.hint


def test_several_outputs_with_choice(onnx_kit, rng):
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    res = onnx_kit.check(_two_heads(onnx_kit), x, output="head_b")
    assert res.graph[res.graph.outputs[0]].shape == (3,)


def test_unknown_output_name(onnx_kit):
    _raises(ModelError, _two_heads(onnx_kit), "'logits'", "head_a", output="logits")


def test_two_inputs(onnx_kit):
    m = onnx_kit.model([H("Add", ["x", "z"], ["y"])])
    m.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 8, 8]))
    m.graph.output[0].type.CopyFrom(m.graph.input[0].type)
    _raises(ModelError, m, "2 inputs", output=None)


def test_dynamic_feature_dimension(onnx_kit):
    m = onnx_kit.model([H("Relu", ["x"], ["y"])], in_shape=(3, "H", 8))
    _raises(ModelError, m, "dynamic dimension", "'H'", output=None)


def test_integer_input(onnx_kit):
    m = onnx_kit.model([H("Relu", ["x"], ["y"])])
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    m = onnx.shape_inference.infer_shapes(m)
    _raises(ModelError, m, "not a float tensor", output=None)


def test_not_a_model_object():
    _raises(ModelError, 42, "int", output=None)

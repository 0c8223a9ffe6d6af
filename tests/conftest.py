"""Shared test fixtures."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper


class OnnxKit:
    """Build tiny ONNX models with onnx.helper and run them in onnxruntime."""

    @staticmethod
    def model(nodes, inits=None, in_shape=(3, 8, 8), outputs=("y",), opset=17, batch="N",
              in_name="x") -> onnx.ModelProto:
        """A model with one float input (batch, *in_shape); output types are inferred."""
        x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [batch, *in_shape])
        outs = [onnx.ValueInfoProto(name=o) for o in outputs]  # types come from inference
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
        g = helper.make_graph(nodes, "test", [x], outs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)  # fills in the output types and shapes

    @staticmethod
    def run_ort(model: onnx.ModelProto, x: np.ndarray, tensor: str | None = None,
                in_name: str | None = None) -> np.ndarray:
        """Run ``model`` on ``x``; ``tensor`` may be any intermediate tensor (exposed as output)."""
        m = onnx.ModelProto()
        m.CopyFrom(model)
        tensor = tensor or m.graph.output[0].name
        if tensor not in [o.name for o in m.graph.output]:
            m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run([tensor], {in_name or m.graph.input[0].name: x})[0]

    @staticmethod
    def from_torch(net, in_shape: tuple[int, ...]) -> onnx.ModelProto:
        """A torch module exported to ONNX (input x, output y, dynamic batch)."""
        import io
        import warnings

        import torch

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, *in_shape),), buf, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        return onnx.load_from_string(buf.getvalue())

    @staticmethod
    def check(model: onnx.ModelProto, x: np.ndarray, rtol=1e-5, atol=1e-5, **kw):
        """Import ``model``, compare ann_forward with onnxruntime, return the ImportResult."""
        from snncompile.sim.ann import ann_forward
        from snncompile.frontend import import_onnx

        res = import_onnx(model, **kw)
        ref = OnnxKit.run_ort(model, x, res.output_name, res.input_name)
        y = ann_forward(res.graph, x).numpy()
        assert y.shape == (x.shape[0], *res.graph[res.graph.outputs[0]].shape)
        np.testing.assert_allclose(y, ref.reshape(y.shape), rtol=rtol, atol=atol)
        return res


@pytest.fixture(scope="session")
def onnx_kit() -> type[OnnxKit]:
    return OnnxKit


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """The digits example's model and data splits, trained here exactly as `make demo` does."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("digits_data")
    subprocess.run([sys.executable, str(root / "examples/digits/train.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(autouse=True)
def _tracebacks_of_our_bugs(monkeypatch):
    """A bug of ours shows its traceback in tests (users get one 'internal error' line)."""
    monkeypatch.setenv("SNNCOMPILE_TRACEBACK", "1")

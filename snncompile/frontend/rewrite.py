"""Rewrites of an ONNX model that the user asks for, applied before import.

``--maxpool avg`` replaces every MaxPool by an AveragePool of the same window (and a
GlobalMaxPool by a GlobalAveragePool), for targets that cannot map a spike-count maximum
(nir: NIR has no such node). The rewrite changes the function
the network computes, so it is never applied unless asked; compile.json records it and tuning
(``--train``) recovers the accuracy it costs. An average of the same window is the closest
mappable stand-in: it keeps the layer's shape and needs no new weights (a stride-2
convolution would start as this same average).

It works on the ONNX model, not on the IR, because calibration runs the ONNX model in
onnxruntime: the thresholds of the layers after a rewritten pool must come from the
activations of the rewritten network.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .context import attributes, node_error

MAXPOOL_CHOICES = ("keep", "avg", "conv")  # --maxpool: keep (spike-count max), or rewrite


def maxpool_to_avgpool(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with each MaxPool / GlobalMaxPool replaced by an AveragePool /
    GlobalAveragePool of the same window, and the output tensor names of the replaced nodes
    (empty when the model has no max pooling; then the model is returned unchanged).

    A padded max pool becomes an average that counts the padding (count_include_pad=1, what
    a fixed sum pool computes); the inputs of a pool in a converted network are ReLU outputs,
    so the padding is zero either way."""
    if not any(n.op_type in ("MaxPool", "GlobalMaxPool") for n in model.graph.node):
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    done: list[str] = []
    used = {t for n in out.graph.node for t in n.input} | {o.name for o in out.graph.output}
    for i, n in enumerate(out.graph.node):
        if n.op_type == "GlobalMaxPool":
            new = helper.make_node("GlobalAveragePool", list(n.input), list(n.output), name=n.name)
        elif n.op_type == "MaxPool":
            a = attributes(n)
            if len(n.output) > 1 and n.output[1] in used:
                raise node_error(n, "the Indices output of MaxPool has no average-pool equivalent",
                                 "export MaxPool without return_indices")
            if any(d != 1 for d in a.get("dilations", [1])):
                raise node_error(n, "dilated max pooling has no average-pool equivalent here",
                                 "use dilations=1")
            keep = {k: v for k, v in a.items() if k in ("auto_pad", "ceil_mode", "kernel_shape",
                                                          "pads", "strides")}
            if any(a.get("pads", [0])) or a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                keep["count_include_pad"] = 1
            new = helper.make_node("AveragePool", list(n.input), [n.output[0]], name=n.name, **keep)
        else:
            continue
        out.graph.node[i].CopyFrom(new)
        done.append(n.output[0])
    return out, done


def maxpool_to_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """:func:`maxpool_to_avgpool`, then each of those average pools of a 2-D image made a
    layer of its own: a depthwise convolution of the same window and stride whose weights
    are all 1/(kh*kw) (the same average; tuning may change them), followed by a ReLU where
    the pool read a ReLU's output (on non-negative inputs the ReLU changes nothing). The
    float network is the one :func:`maxpool_to_avgpool` gives; in the SNN the pool gets its
    own IF neurons, so the next layer reads it through a plain convolution instead of a
    sum pool folded into its weights (which multiplies that layer's synapses by the window
    and, on Loihi, turns its convolution into a dense matrix)."""
    avg, done = maxpool_to_avgpool(model)
    if not done:
        return model, []
    shapes = onnx.shape_inference.infer_shapes(avg)
    channels = {vi.name: vi.type.tensor_type.shape.dim[1].dim_value
                for vi in list(shapes.graph.value_info) + list(shapes.graph.input)
                if vi.type.tensor_type.shape.dim and len(vi.type.tensor_type.shape.dim) == 4}
    producers = {o: n for n in avg.graph.node for o in n.output}
    nodes: list[onnx.NodeProto] = []
    for n in avg.graph.node:
        if n.output[0] not in done or n.op_type != "AveragePool" or not channels.get(n.input[0]):
            nodes.append(n)
            continue
        a = attributes(n)
        c, (kh, kw) = channels[n.input[0]], a["kernel_shape"]
        w = f"{n.output[0]}#pool_weight"
        avg.graph.initializer.append(numpy_helper.from_array(
            np.full((c, 1, kh, kw), 1.0 / (kh * kw), np.float32), w))
        after_relu = producers.get(n.input[0]) is not None and producers[n.input[0]].op_type in ("Relu", "Clip")
        conv_out = f"{n.output[0]}#pool_conv" if after_relu else n.output[0]
        attrs = {k: v for k, v in a.items() if k in ("auto_pad", "pads", "strides")}
        nodes.append(helper.make_node("Conv", [n.input[0], w], [conv_out], name=f"{n.name}#conv",
                                      group=c, kernel_shape=[kh, kw], **attrs))
        if after_relu:
            nodes.append(helper.make_node("Relu", [conv_out], [n.output[0]], name=f"{n.name}#relu"))
    del avg.graph.node[:]
    avg.graph.node.extend(nodes)
    return avg, done

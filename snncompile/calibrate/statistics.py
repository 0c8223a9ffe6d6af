"""Activation statistics for threshold normalization.

The original ONNX model runs in onnxruntime with the tensors that feed each ReLU exposed as
extra outputs; each ReLU's scale ``lam`` is a percentile (or the maximum) of its output over
the calibration data, per layer or per channel. Without data, conversion takes BatchNorm
statistics where the model has them (bn_stats.py), else these statistics on synthetic inputs
(``synthetic_scales``); ``weight_bounds`` gives scales from the weights alone: always safe,
usually far too large (accuracy suffers at small T), what ``inspect`` uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import ModelError, UsageError
from ..progress import progress_bar
from ..ir import (AddNode, AffineNode, AvgPool2dNode, Graph, InputNode, ReluNode, WeightedNode)

log = logging.getLogger("snncompile")

NORM_MODES = ("percentile", "max", "channel")
# Values kept per tensor for percentiles: beyond this, a seeded uniform subsample is used;
# and in all, so that a network with many ReLUs keeps at most this many (~512 MB).
SAMPLE_BUDGET = 4_000_000
TOTAL_SAMPLE_BUDGET = 128_000_000
# Bytes of ReLU activations one forward batch may return: the batch shrinks to fit, so the
# memory of calibration grows with one batch of activations, not with the samples.
BATCH_BYTES = 128 * 2 ** 20


@dataclass
class Calibration:
    """Per-ReLU activation scales and the input's largest magnitude."""

    lam: dict[str, np.ndarray]          # ReLU node name -> (1,) or (C,) scale, all > 0
    input_absmax: float
    method: str
    warnings: list[str] = field(default_factory=list)
    inputs: np.ndarray | None = None    # synthetic inputs the scales came from (no data given)


def _session(model: onnx.ModelProto, tensors: list[str]):
    import onnxruntime as ort

    # the extra outputs go on the caller's model only while it is serialized (no copy of
    # the model: VGG-19's weights are 550 MB), and are taken off again
    outputs = model.graph.output
    kept = len(outputs)
    present = {o.name for o in outputs}
    try:
        for t in tensors:
            if t not in present:
                outputs.append(onnx.helper.make_empty_tensor_value_info(t))
                present.add(t)
        data = model.SerializeToString()
    finally:
        while len(outputs) > kept:
            outputs.pop()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 0
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        hint = None
        if any(vi.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
               for vi in model.graph.input):
            hint = ("the model computes in float64, which onnxruntime's CPU kernels do not all "
                    "cover: export it in float32 (torch: model.float() before torch.onnx.export)")
        raise ModelError(f"onnxruntime cannot run the model: {e}", hint) from None


_ORT_DTYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64}


def onnx_forward(model: onnx.ModelProto, input_name: str, outputs: list[str], x: np.ndarray,
                 batch_size: int = 256):
    """Yield, batch by batch, dicts of the requested tensors computed by onnxruntime.

    A model exported with a fixed batch size (zoo models often fix it at 1) gets batches of
    exactly that size, the last one padded with zeros whose results are dropped. Inputs go in
    the model's own float type (float16 exports), results come back as float32."""
    sess = _session(model, outputs)
    fixed = _fixed_batch(model, input_name)
    step = fixed or batch_size
    # a float16 (or float64) model gets its inputs in its own type and returns float32
    dtype = next((_ORT_DTYPES.get(i.type, np.float32) for i in sess.get_inputs()
                  if i.name == input_name), np.float32)
    for start in range(0, x.shape[0], step):
        xb = x[start:start + step].astype(dtype)
        n = xb.shape[0]
        if fixed and n < fixed:
            xb = np.concatenate([xb, np.zeros((fixed - n,) + xb.shape[1:], dtype)])
        res = sess.run(outputs, {input_name: xb})
        yield {k: np.asarray(v[:n] if fixed else v, np.float32) for k, v in zip(outputs, res)}


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    """The batch size an ONNX input is fixed at, or None where it is symbolic."""
    for vi in model.graph.input:
        if vi.name == input_name:
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def activation_scales(model: onnx.ModelProto, graph: Graph, x: np.ndarray, norm: str = "percentile",
                      percentile: float = 99.9, seed: int = 0, batch_size: int = 256,
                      progress: bool = False) -> Calibration:
    """Scales of every ReLU of ``graph`` from calibration inputs ``x`` (``progress``: a
    bar over the samples on stderr)."""
    if norm not in NORM_MODES:
        raise UsageError(f"unknown normalization '{norm}'", f"use one of {', '.join(NORM_MODES)}")
    if not 0 < percentile <= 100:
        raise UsageError(f"--percentile must lie in (0, 100], got {percentile}")
    p = 100.0 if norm == "max" else percentile
    relus = [n for n in graph.nodes if isinstance(n, ReluNode)]
    tensors = sorted({r.calib_tensor for r in relus})
    rng = np.random.default_rng(seed)
    kept: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    n = x.shape[0]
    budget = min(SAMPLE_BUDGET, TOTAL_SAMPLE_BUDGET // max(1, len(tensors)))
    per_sample = 4 * sum(int(np.prod(r.shape)) for r in {r.calib_tensor: r for r in relus}.values())
    batch_size = max(1, min(batch_size, BATCH_BYTES // max(1, per_sample)))
    bar = progress_bar(progress, n, "calibrating", "sample")
    for batch in onnx_forward(model, graph.meta["onnx_input"], tensors, x, batch_size):
        bar.update(len(next(iter(batch.values()))) if batch else 0)
        for t, a in batch.items():
            a = np.maximum(a, 0)
            per_channel = a.reshape(a.shape[0], a.shape[1], -1).transpose(1, 0, 2).reshape(a.shape[1], -1) \
                if a.ndim > 1 else a.reshape(1, -1)
            total = n * per_channel.size / a.shape[0]  # values this tensor yields over all data
            rate = min(1.0, budget / total)
            if rate < 1.0:
                cols = rng.random(per_channel.shape[1]) < rate
                per_channel = per_channel[:, cols]
            kept[t].append(per_channel)
    bar.close()
    lam: dict[str, np.ndarray] = {}
    warnings = []
    for r in relus:
        vals = np.concatenate(kept[r.calib_tensor], axis=1)
        if r.max_value is not None:
            vals = np.minimum(vals, r.max_value)
        if norm == "channel":
            lv = np.percentile(vals, p, axis=1)
            layer = float(np.percentile(vals, p))
            dead = lv <= 0
            if dead.any():  # common in trained networks and harmless: a note, not a warning
                lv[dead] = layer if layer > 0 else 1.0
                log.info(f"layer '{r.name}': {int(dead.sum())} channel(s) never active on the "
                         f"calibration data; their thresholds use the layer's scale")
        else:
            lv = np.array([float(np.percentile(vals, p))])
            if lv[0] <= 0:
                lv[0] = float(vals.max()) if vals.max() > 0 else 1.0
                warnings.append(f"layer '{r.name}' is never active on the calibration data; "
                                f"its threshold is a guess: calibrate with more representative data")
        lam[r.name] = lv.astype(np.float64)
    for w in warnings:
        log.warning(w)
    return Calibration(lam=lam, input_absmax=float(np.abs(x).max(initial=0.0)),
                       method=f"{norm}:{p:g}", warnings=warnings)


SYNTHETIC_SAMPLES = 256
# The percentile of synthetic activations taken as a ReLU's scale when --percentile is not
# given: noise drives a few channels far beyond real data, so 99.9 sets those too high
# (measured on the zoo's ResNet, MobileNet and Concat CNN, docs/results.md: 99 beat 99.5 and 99.9).
SYNTHETIC_PERCENTILE = 99.0


def synthetic_inputs(shape: tuple[int, ...], samples: int = SYNTHETIC_SAMPLES, seed: int = 0) -> np.ndarray:
    """``samples`` seeded stand-ins for data of one sample's ``shape``, each spanning [-1, 1].

    Images (C, H, W with H, W > 1) get noise with the 1/f amplitude spectrum of natural
    images (Field, JOSA A 1987; used as data-free stand-in for images by Baradad et al.,
    NeurIPS 2021, "Learning to See by Looking at Noise"): smooth, spatially correlated
    patterns that drive a trained convolution as edges and blobs do, where independent
    pixels average out in every filter. Each sample is rescaled to span [-1, 1] (the range
    weight bounds assume too). Other inputs (vectors, sequences) are uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    if len(shape) != 3 or min(shape[1:]) < 2:
        return rng.uniform(-1.0, 1.0, (samples, *shape)).astype(np.float32)
    h, w = shape[1:]
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    radius[0, 0] = 1.0 / max(h, w)  # the mean: weighted as the lowest frequency
    out = np.empty((samples, *shape), np.float32)
    chunk = max(1, (1 << 24) // int(np.prod(shape)))  # the FFT's complex temporaries stay small
    for s in range(0, samples, chunk):  # the same draws in the same order as all at once
        x = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(min(chunk, samples - s), *shape))) / radius))
        flat = x.reshape(x.shape[0], -1)
        lo, span = flat.min(axis=1, keepdims=True), np.ptp(flat, axis=1, keepdims=True)
        out[s:s + x.shape[0]] = (2.0 * (flat - lo) / np.where(span > 0, span, 1.0) - 1.0).reshape(x.shape)
    return out


def synthetic_scales(model: onnx.ModelProto, graph: Graph, norm: str = "percentile",
                     percentile: float = SYNTHETIC_PERCENTILE, seed: int = 0, samples: int = SYNTHETIC_SAMPLES,
                     warn: bool = True, progress: bool = False) -> Calibration:
    """Scales without calibration data or BatchNorm statistics: each ReLU's activations on
    ``samples`` :func:`synthetic_inputs`, which the returned calibration keeps (``inputs``)
    for the bias correction (``progress``: a bar on stderr). Noise is not the user's data, but it drives every layer at the
    magnitudes the weights produce, where a weight bound sums every weight at its worst case
    and so sets thresholds that most neurons never reach (docs/semantics.md, "Thresholds
    without calibration data")."""
    x = synthetic_inputs(tuple(graph.input.shape), samples, seed)
    cal = activation_scales(model, graph, x, norm, percentile, seed=seed, progress=progress)
    shape = tuple(graph.input.shape)
    kind = "1/f noise images" if len(shape) == 3 and min(shape[1:]) >= 2 else "uniform noise"
    msg = (f"no calibration data and no BatchNorm statistics: thresholds (and biases, with "
           f"--calibrate-bias) are fitted to {samples} synthetic inputs in [-1, 1] ({kind}); real "
           f"data drive the layers differently: {SYNTHETIC_EXPECTATION} (docs/results.md); pass "
           f"--calib FILE.npz with a few hundred training samples")
    if warn:
        log.warning(msg)
    return Calibration(lam=cal.lam, input_absmax=1.0, method=f"synthetic:{cal.method}",
                       warnings=cal.warnings + [msg], inputs=x)


# Measured on the zoo (docs/results.md, "No BatchNorm statistics: synthetic inputs").
SYNTHETIC_EXPECTATION = ("on the zoo's CNNs they scored up to 22 points below calibrated conversion "
                         "at T=8 and up to 11 at T=16")


def weight_bounds(graph: Graph, input_absmax: float = 1.0, warn: bool = True) -> Calibration:
    """Scales from weights alone: each ReLU's largest possible output given |input| <=
    ``input_absmax`` (interval arithmetic through the graph); ``warn``: log why that is poor."""
    bound: dict[str, float] = {}
    lam: dict[str, np.ndarray] = {}
    for n in graph.nodes:
        if isinstance(n, InputNode):
            bound[n.name] = input_absmax
            continue
        b_in = [bound[i] for i in n.inputs]
        if isinstance(n, WeightedNode):
            w = np.abs(n.weight)
            row = w.max() if isinstance(n, AffineNode) else w.reshape(w.shape[0], -1).sum(axis=1).max()
            bias = float(np.abs(n.bias).max()) if n.bias is not None and n.bias.size else 0.0
            bound[n.name] = float(row) * b_in[0] + bias
        elif isinstance(n, ReluNode):
            v = b_in[0] if n.max_value is None else min(b_in[0], n.max_value)
            if not v <= BOUND_LIMIT:
                raise _bound_overflow(n.name, len(lam) + 1, v)
            bound[n.name] = v
            lam[n.name] = np.array([v if v > 0 else 1.0])
        elif isinstance(n, AddNode):
            bound[n.name] = sum(b_in)
        elif isinstance(n, AvgPool2dNode):
            bound[n.name] = b_in[0]
        else:
            bound[n.name] = max(b_in)
    msg = ("no calibration data: thresholds come from weight bounds, which are far larger than "
           "real activations, so accuracy will suffer at small T; pass --calib FILE.npz with a few "
           "hundred training samples")
    if warn:
        log.warning(msg)
    return Calibration(lam=lam, input_absmax=input_absmax, method="weights", warnings=[msg])


# The largest weight bound the conversion can use: its weights times the input's scale are
# float32 (largest 3.4e38), so a bound must leave room for the weights and the integer scale.
BOUND_LIMIT = 1e30


def _bound_overflow(layer: str, index: int, value: float) -> ModelError:
    growth = value ** (1.0 / index) if np.isfinite(value) and value > 1 else float("inf")
    grows = f"about {growth:.3g}x per layer" if np.isfinite(growth) else "without bound"
    return ModelError(
        f"weight-bound thresholds overflow: the bound of ReLU '{layer}' (the {index}th) exceeds "
        f"{BOUND_LIMIT:.0e} (the worst case grows {grows}, typical of a deep network at its "
        f"initialization), beyond what float32 conversion can hold",
        "pass --calib FILE.npz with a few hundred training samples, or convert without "
        "--calib (thresholds from BatchNorm statistics or synthetic inputs, not weight bounds)")


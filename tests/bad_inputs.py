"""A corpus of bad inputs to the command line, each built on the fly from one tiny model.

A case is a name, a function that writes whatever files it needs into a scratch folder and
returns the CLI arguments, and the exit code the CLI must give. ``tests/test_bad_inputs.py``
runs every case and checks the answer is one clean error with its fix, no traceback, and
nothing left behind in the output location. To add a case, write a builder and append a
``Case`` to ``CASES``; builders get a :class:`Kit` that holds the good files to start from
(``needs`` asks for a compiled artifact in kit.art, or an interrupted tuning run's
checkpoints in kit.out). ``python tests/bad_inputs.py`` lists the corpus.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 10
IN_SHAPE = (1, 4, 4)

# exit codes of snncompile.errors / the CLI (docs/user-guide.md, "Exit codes")
USAGE, MODEL, DATA, ARTIFACT = 2, 3, 4, 5


def tiny_model(weights: dict[str, np.ndarray] | None = None, conv_attrs: dict | None = None,
               opset: int = 17, pool: tuple[str, dict] | None = None) -> onnx.ModelProto:
    """Conv 3x3 (2 channels) -> Relu -> Flatten -> Gemm (10 classes) on (N, 1, 4, 4) inputs;
    ``weights`` replaces initializers by name, ``conv_attrs`` the Conv's attributes, ``pool``
    (op, attributes) adds a 2x2 pooling of stride 2 (attributes replaced) after the Relu."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.5, (2, 1, 3, 3)).astype(np.float32),
             "b1": np.full(2, 0.1, np.float32),
             "w2": rng.normal(0, 0.3, (CLASSES, 8 if pool else 32)).astype(np.float32),
             "b2": np.zeros(CLASSES, np.float32)}
    inits.update(weights or {})
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    attrs.update(conv_attrs or {})
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", **attrs),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["p" if pool else "r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)]
    if pool:
        nodes.insert(2, helper.make_node(pool[0], ["r"], ["p"], name="pool", **{
            "kernel_shape": [2, 2], "strides": [2, 2], **pool[1]}))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *IN_SHAPE])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])
    g = helper.make_graph(nodes, "tiny", [x], [y],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def tiny_data(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.random((n, *IN_SHAPE), dtype=np.float32),
            (np.arange(n) % CLASSES).astype(np.int64))


@dataclass
class Kit:
    """A scratch folder with a good model (model.onnx), data (data.npz), a compiled artifact
    (art/, made on first use) and a place for outputs that must stay empty (out/)."""

    root: Path

    @property
    def model(self) -> str:
        p = self.root / "model.onnx"
        if not p.exists():
            onnx.save(tiny_model(), p)
        return str(p)

    @property
    def data(self) -> str:
        p = self.root / "data.npz"
        if not p.exists():
            x, y = tiny_data()
            np.savez(p, x=x, y=y)
        return str(p)

    @property
    def out(self) -> str:
        return str(self.root / "out")

    @property
    def art(self) -> str:
        return str(self.root / "art")

    @property
    def checkpoints(self) -> Path:
        return self.root / "out" / "checkpoints"

    def save_model(self, model: onnx.ModelProto, name: str = "bad.onnx") -> str:
        p = self.root / name
        p.write_bytes(model.SerializeToString())
        return str(p)

    def save_data(self, name: str = "bad.npz", **arrays: np.ndarray) -> str:
        p = self.root / name
        with open(p, "wb") as f:  # a file object keeps numpy from renaming it
            np.savez(f, **arrays)
        return str(p)

    def convert(self, *extra: str) -> list[str]:
        return ["convert", self.model, "-o", self.out, "--calib", self.data, "-T", "4", *extra]

    def resume(self, *extra: str) -> list[str]:
        """The command that made the checkpoints (see make_checkpoints), with --resume."""
        return [*self.convert(*TUNING), "--resume", *extra]


@dataclass
class Case:
    name: str
    build: Callable[[Kit], list[str]]
    exit_code: int
    needs: str = ""  # "artifact": a compiled artifact in kit.art; "checkpoints": kit.out holds
    #                  the checkpoints of an interrupted tuning run (both made by the test)


# -- models ----------------------------------------------------------------------------------

def _weights(**w: np.ndarray) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        return ["convert", kit.save_model(tiny_model(weights=w)), "-o", kit.out, "--calib", kit.data]
    return build


def _conv(**attrs) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        return ["convert", kit.save_model(tiny_model(conv_attrs=attrs)), "-o", kit.out]
    return build


def _pool(op: str, **attrs) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        return ["convert", kit.save_model(tiny_model(pool=(op, attrs))), "-o", kit.out]
    return build


def _nan_weight(kit: Kit) -> list[str]:
    w = tiny_model().graph.initializer[0]
    a = numpy_helper.to_array(w).copy()
    a[0, 0, 1, 1] = np.nan
    return _weights(w1=a)(kit)


def _batchnorm_negative_var(kit: Kit) -> list[str]:
    """Conv -> BatchNorm with a variance below -epsilon (sqrt of a negative: NaN) -> ..."""
    m = tiny_model()
    g = m.graph
    g.node[0].output[0] = "c0"
    g.node.insert(1, helper.make_node("BatchNormalization", ["c0", "s", "b", "m", "v"], ["c"], name="bn"))
    for name, v in (("s", [1.0, 1.0]), ("b", [0.0, 0.0]), ("m", [0.0, 0.0]), ("v", [1.0, -2.0])):
        g.initializer.append(numpy_helper.from_array(np.array(v, np.float32), name))
    return ["convert", kit.save_model(m), "-o", kit.out]


def _inspect_nan(kit: Kit) -> list[str]:
    a = np.zeros((2, 1, 3, 3), np.float32)
    a[1, 0, 0, 0] = np.inf
    return ["inspect", kit.save_model(tiny_model(weights={"w1": a}))]


def _opset(version: int, command: str) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        path = kit.save_model(tiny_model(opset=version))
        return ["inspect", path] if command == "inspect" else ["convert", path, "-o", kit.out]
    return build


def _external_outside(kit: Kit) -> list[str]:
    m = tiny_model()
    t = m.graph.initializer[2]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "1280")):
        e = t.external_data.add()
        e.key, e.value = k, v
    sub = kit.root / "models"
    sub.mkdir(exist_ok=True)
    p = sub / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    return ["convert", str(p), "-o", kit.out]


def _not_onnx(kit: Kit) -> list[str]:
    p = kit.root / "notes.onnx"
    p.write_text("these are my notes, not a model\n" * 20)
    return ["convert", str(p), "-o", kit.out]


# -- data ------------------------------------------------------------------------------------

def _npy_named_npz(kit: Kit) -> list[str]:
    p = kit.root / "x.npz"
    with open(p, "wb") as f:
        np.save(f, tiny_data()[0])
    return ["convert", kit.model, "-o", kit.out, "--calib", str(p)]


def _pickle_npy(kit: Kit) -> list[str]:
    p = kit.root / "obj.npz"
    with open(p, "wb") as f:
        np.save(f, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return ["convert", kit.model, "-o", kit.out, "--calib", str(p)]


def _pickle_in_npz(kit: Kit) -> list[str]:
    p = kit.root / "objz.npz"
    with open(p, "wb") as f:
        np.savez(f, x=np.array([{"a": 1}, None], dtype=object))
    return ["convert", kit.model, "-o", kit.out, "--calib", str(p)]


def npz_declaring(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npz whose x.npy header declares ``shape`` but holds almost no data."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", npy_header(shape, dtype) + b"\0" * 64)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _huge_declared(kit: Kit) -> list[str]:
    p = kit.root / "huge.npz"
    p.write_bytes(npz_declaring((2 ** 40, *IN_SHAPE)))  # 64 TiB of float32, in 300 bytes
    return ["convert", kit.model, "-o", kit.out, "--calib", str(p)]


def _zip_bomb(kit: Kit) -> list[str]:
    """80 MiB of zeros deflated to about 80 KiB (the same trick inflates 1.5 MB to 1.5 GB)."""
    p = kit.root / "bomb.npz"
    n = (80 << 20) // (4 * 16)
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w") as f:
            f.write(npy_header((n, *IN_SHAPE)))
            chunk = b"\0" * (1 << 20)
            for _ in range(80):
                f.write(chunk)
    return ["convert", kit.model, "-o", kit.out, "--calib", str(p)]


def _over_limit(kit: Kit) -> list[str]:
    """A real 2.5 MiB file, over a limit of 1 MiB (the limit is set by the test's env)."""
    x = np.random.default_rng(0).random((40_000, *IN_SHAPE), dtype=np.float32)
    return ["convert", kit.model, "-o", kit.out, "--calib", kit.save_data(x=x)]


def _labels(y: np.ndarray, command: str = "evaluate", *extra: str) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        path = kit.save_data(x=tiny_data(len(y))[0], y=y)
        return [command, kit.art, "--data", path, *[e.format(out=kit.out) for e in extra]]
    return build


def _count_mismatch(kit: Kit) -> list[str]:
    x, y = tiny_data()
    return ["evaluate", kit.art, "--data", kit.save_data(x=x, y=y[:-3])]


# -- options ---------------------------------------------------------------------------------

def _args(*args: str) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        return [a.format(model=kit.model, data=kit.data, out=kit.out, art=kit.art, root=kit.root)
                for a in args]
    return build


def _convert(*extra: str) -> Callable[[Kit], list[str]]:
    return lambda kit: kit.convert(*extra)


def _out(path: Callable[[Kit], str]) -> Callable[[Kit], list[str]]:
    """convert with -o replaced."""
    def build(kit: Kit) -> list[str]:
        args = kit.convert()
        args[args.index("-o") + 1] = path(kit)
        return args
    return build


def _baseline(edit: Callable[[dict, Kit], None], *extra: str) -> Callable[[Kit], list[str]]:
    """A baseline of kit.art on kit.data, edited, and `check` against it."""
    def build(kit: Kit) -> list[str]:
        from snncompile.measure.gate import write_baseline

        p = kit.root / "ci" / "base.json"
        p.parent.mkdir(exist_ok=True)
        base = write_baseline(kit.art, kit.data, str(p))
        edit(base, kit)
        p.write_text(json.dumps(base))
        return ["check", kit.art, "--baseline", str(p), *extra]
    return build


def _data_moved(base: dict, kit: Kit) -> None:
    os.rename(kit.data, kit.root / "moved.npz")


# -- checkpoints of an interrupted tuning run ------------------------------------------------

TUNING = ("--train", "{data}", "--val", "{data}", "--epochs", "2", "--patience", "1")


def _damage(fn: Callable[[Path], None], *extra: str) -> Callable[[Kit], list[str]]:
    def build(kit: Kit) -> list[str]:
        fn(kit.checkpoints)
        return [a.format(data=kit.data) for a in kit.resume(*extra)]
    return build


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit_npz(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def fn(ck: Path) -> None:
        with np.load(ck / "stage_1.npz") as f:
            arrays = {k: f[k] for k in f.files}
        change(arrays)
        with open(ck / "stage_1.npz", "wb") as f:
            np.savez(f, **arrays)
    return fn


def _nan_in(arrays: dict) -> None:
    k = next(k for k, a in arrays.items() if a.dtype.kind == "f" and a.size)
    arrays[k] = arrays[k].copy()
    arrays[k].flat[0] = np.nan


def _wrong_shape(arrays: dict) -> None:
    k = next(k for k, a in arrays.items() if a.dtype.kind == "f" and a.ndim)
    arrays[k] = np.zeros((*arrays[k].shape[:-1], arrays[k].shape[-1] + 1), arrays[k].dtype)


def _drop_key(arrays: dict) -> None:
    arrays.pop(sorted(arrays)[0])


def _edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def fn(ck: Path) -> None:
        rec = json.loads((ck / name).read_text())
        change(rec)
        (ck / name).write_text(json.dumps(rec))
    return fn


CASES: list[Case] = [
    # models
    Case("nan-weight", _nan_weight, MODEL),
    Case("minus-inf-bias", _weights(b2=np.array([0, -np.inf] + [0] * 8, np.float32)), MODEL),
    Case("inf-weight-inspect", _inspect_nan, MODEL),
    Case("opset-999-inspect", _opset(999, "inspect"), MODEL),
    Case("opset-999-convert", _opset(999, "convert"), MODEL),
    Case("conv-stride-0", _conv(strides=[0, 1]), MODEL),
    Case("conv-negative-stride", _conv(strides=[-1, -1]), MODEL),
    Case("conv-dilation-0", _conv(dilations=[0, 0]), MODEL),
    Case("conv-negative-pads", _conv(pads=[-1, 0, 0, 0]), MODEL),
    Case("conv-kernel-0", _conv(kernel_shape=[0, 0]), MODEL),
    Case("conv-group-0", _conv(group=0), MODEL),
    Case("conv-kernel-larger-than-input", _conv(kernel_shape=[3, 3], pads=[0, 0, 0, 0],
                                                dilations=[3, 3]), MODEL),
    Case("maxpool-stride-0", _pool("MaxPool", strides=[0, 0]), MODEL),
    Case("avgpool-kernel-0", _pool("AveragePool", kernel_shape=[0, 2]), MODEL),
    Case("maxpool-kernel-larger-than-input", _pool("MaxPool", kernel_shape=[9, 9]), MODEL),
    Case("batchnorm-negative-variance", _batchnorm_negative_var, MODEL),
    Case("external-data-outside-folder", _external_outside, MODEL),
    Case("not-onnx", _not_onnx, MODEL),
    # data
    Case("npy-named-npz", _npy_named_npz, DATA),
    Case("pickled-npy", _pickle_npy, DATA),
    Case("object-array-in-npz", _pickle_in_npz, DATA),
    Case("declares-64-TiB", _huge_declared, DATA),
    Case("inflates-1000x", _zip_bomb, DATA),
    Case("over-the-size-limit", _over_limit, DATA),
    Case("label-minus-1", _labels(np.array([-1] + [0] * 19)), DATA, needs="artifact"),
    Case("label-10-of-10-classes", _labels(np.array([10] + [0] * 19)), DATA, needs="artifact"),
    Case("label-2^62", _labels(np.array([2 ** 62] + [0] * 19)), DATA, needs="artifact"),
    Case("labels-2d", _labels(np.zeros((20, 2), np.int64)), DATA, needs="artifact"),
    Case("labels-float-for-classes", _labels(np.zeros(20, np.float32)), DATA, needs="artifact"),
    Case("labels-out-of-range-run", _labels(np.array([12] + [0] * 19), "run"), DATA,
         needs="artifact"),
    Case("labels-out-of-range-baseline", _labels(np.array([-4] + [0] * 19), "baseline", "-o",
                                                 "{out}"), DATA, needs="artifact"),
    Case("labels-out-of-range-report", _labels(np.array([99] + [0] * 19), "report", "-o", "{out}"),
         DATA, needs="artifact"),
    Case("sample-count-mismatch", _count_mismatch, DATA, needs="artifact"),
    # options
    Case("seed-negative", _convert("--seed", "-1"), USAGE),
    Case("bits-0", _convert("--bits", "0"), USAGE),
    Case("fanin-0", _convert("--fanin", "0"), USAGE),
    Case("input-bits-0", _convert("--input-bits", "0"), USAGE),
    Case("membrane-bits-0", _convert("--membrane-bits", "0"), USAGE),
    Case("epochs-negative", _convert("--epochs", "-3"), USAGE),
    Case("patience-negative", _convert("--patience", "-1"), USAGE),
    Case("batch-size-0-convert", _convert("--batch-size", "0"), USAGE),
    Case("percentile-0", _convert("--percentile", "0"), USAGE),
    Case("percentile-101", _convert("--percentile", "101"), USAGE),
    Case("percentile-nan", _convert("--percentile", "nan"), USAGE),
    Case("timesteps-0-convert", _convert("-T", "0"), USAGE),
    Case("distill-2", _convert("--distill", "2"), USAGE),
    Case("clock-mhz-nan", _convert("--target", "cyclesim", "--target-option", "clock_mhz=nan"), USAGE),
    Case("clock-mhz-inf", _convert("--target", "cyclesim", "--target-option", "clock_mhz=inf"), USAGE),
    Case("loihi-cores-0", _convert("--target", "loihi", "--target-option", "cores=0"), USAGE),
    Case("surrogate-alpha-nan", _convert("--surrogate-alpha", "nan"), USAGE),
    Case("max-accuracy-drop-negative", _convert("-T", "auto", "--max-accuracy-drop", "-1"), USAGE),
    Case("mistyped-option", _convert("--bitz", "8"), USAGE),
    Case("unknown-target", _convert("--target", "lohi"), USAGE),
    Case("out-in-proc", _out(lambda kit: "/proc/snncompile-x"), USAGE),
    Case("out-name-256-chars", _out(lambda kit: str(kit.root / ("a" * 256))), USAGE),
    Case("out-under-a-file", _out(lambda kit: str(Path(kit.model) / "sub")), USAGE),
    Case("evaluate-batch-size-0", _args("evaluate", "{art}", "--data", "{data}", "--batch-size", "0"),
         USAGE, needs="artifact"),
    Case("evaluate-T-0", _args("evaluate", "{art}", "--data", "{data}", "-T", "0"), USAGE,
         needs="artifact"),
    Case("run-T-0", _args("run", "{art}", "--data", "{data}", "-T", "0"), USAGE, needs="artifact"),
    Case("run-T-negative", _args("run", "{art}", "--data", "{data}", "-T", "-2"), USAGE,
         needs="artifact"),
    Case("run-batch-size-0", _args("run", "{art}", "--data", "{data}", "--batch-size", "0"), USAGE,
         needs="artifact"),
    Case("report-batch-size-0", _args("report", "{art}", "--data", "{data}", "-o", "{out}",
                                      "--batch-size", "0"), USAGE, needs="artifact"),
    Case("check-unknown-target", _args("check", "{art}", "--target", "lohi"), USAGE,
         needs="artifact"),
    Case("baseline-tolerance-string", _baseline(
        lambda b, kit: b["tolerances"].update(max_accuracy_drop="0.01")), USAGE, needs="artifact"),
    Case("baseline-metric-null", _baseline(lambda b, kit: b["metrics"].update(timesteps=None)),
         USAGE, needs="artifact"),
    Case("baseline-data-missing", _baseline(_data_moved), USAGE, needs="artifact"),
    Case("junit-into-missing-folder", _args("check", "{art}", "--junit", "{out}/sub/j.xml"), USAGE,
         needs="artifact"),
    Case("junit-over-the-build", _args("check", "{art}", "--junit", "{art}/ir.json"), USAGE,
         needs="artifact"),
    # resume from checkpoints that cannot be trusted
    Case("resume-truncated-npz", _damage(lambda ck: _truncate(ck / "stage_1.npz")), ARTIFACT,
         needs="checkpoints"),
    Case("resume-invalid-json", _damage(lambda ck: (ck / "stage_1.json").write_text("{\"stage\": 1,")),
         ARTIFACT, needs="checkpoints"),
    Case("resume-missing-record-key", _damage(_edit_json("stage_1.json", lambda r: r.pop("history"))),
         ARTIFACT, needs="checkpoints"),
    Case("resume-stage-of-another-run", _damage(_edit_json("stage_1.json", lambda r: r.update(run="0" * 64))),
         ARTIFACT, needs="checkpoints"),
    Case("resume-wrong-shape", _damage(_edit_npz(_wrong_shape)), ARTIFACT, needs="checkpoints"),
    Case("resume-missing-array", _damage(_edit_npz(_drop_key)), ARTIFACT, needs="checkpoints"),
    Case("resume-nan", _damage(_edit_npz(_nan_in)), ARTIFACT, needs="checkpoints"),
    Case("resume-run-json-missing-other-seed", _damage(lambda ck: (ck / "run.json").unlink(),
                                                       "--seed", "1"), ARTIFACT, needs="checkpoints"),
    Case("resume-run-json-garbled", _damage(lambda ck: (ck / "run.json").write_text("[1, 2")),
         ARTIFACT, needs="checkpoints"),
    Case("resume-run-json-a-list", _damage(lambda ck: (ck / "run.json").write_text("[]")),
         ARTIFACT, needs="checkpoints"),
    Case("resume-other-seed", _damage(lambda ck: None, "--seed", "1"), USAGE, needs="checkpoints"),
]


def by_name() -> dict[str, Case]:
    return {c.name: c for c in CASES}


def make_artifact(root: Path) -> Path:
    """Compile the tiny model into root/art for cyclesim (a backend `run` can run)."""
    kit = Kit(root)
    args = ["convert", kit.model, "-o", kit.art, "--calib", kit.data, "-T", "4",
            "--target", "cyclesim", "--bits", "8", "--membrane-bits", "24"]
    _cli(args)
    return Path(kit.art)


def make_checkpoints(root: Path) -> Path:
    """root/out as an interrupted tuning run leaves it (only checkpoints/, of stage 1), made
    by `kit.resume()`'s command stopped after its first stage; returns the folder."""
    from snncompile.app import compile as app_compile

    kit = Kit(root)
    real = app_compile.compile_model

    def stopped(req):  # the CLI's own request, interrupted after stage 1's checkpoint
        def stop(stage: int) -> None:
            if stage == 1:
                raise KeyboardInterrupt
        return real(type(req)(**{**req.__dict__, "on_stage_end": stop}))

    app_compile.compile_model = stopped
    try:
        code = _cli([a.format(data=kit.data) for a in kit.convert(*TUNING)], check=False)
    finally:
        app_compile.compile_model = real
    assert code == 130 and sorted(p.name for p in kit.checkpoints.iterdir()) == [
        "run.json", "stage_1.json", "stage_1.npz"], code
    return Path(kit.out)


def _cli(args: list[str], check: bool = True) -> int:
    from click.testing import CliRunner

    from snncompile.app.cli import main

    r = CliRunner().invoke(main, args)
    assert not check or r.exit_code == 0, r.output
    return r.exit_code


if __name__ == "__main__":  # list the corpus
    for c in CASES:
        print(f"{c.name:40s} exit {c.exit_code}  {c.needs}")

"""Nothing of the user's lost, nothing executed from an artifact, no traceback (issue 32,
items 1-3): output directories claimed and replaced only when safe, signals that clean up,
`run` executing only installed code, every artifact file validated on load."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from snncompile.app.cli import main
from snncompile.fsutil import claim_output

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=ENV)


def clean_failure(code: int, stderr: str, exit_code: int, *words: str) -> None:
    """One message naming the problem (and the fix), the error's exit code, no traceback."""
    assert exit_code == code, (exit_code, stderr)
    assert code not in (0, 1)
    assert "Traceback" not in stderr
    assert stderr.startswith("error:"), stderr
    for w in words:
        assert w in stderr, (w, stderr)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings or locks a writer left in ``folder``."""
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A two-layer MLP (6 -> 8 -> 3) and 16 labelled samples."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "tiny", [x], [y], [numpy_helper.from_array(w1, "w1"),
                                                    numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(d / "m.onnx"))
    np.savez(d / "d.npz", x=rng.random((16, 6)).astype(np.float32), y=rng.integers(0, 3, 16))
    return d


LOIHI = ("--target", "loihi", "--bits", "8", "--membrane-bits", "18", "--input-mode", "every_step")


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory) -> Path:
    """The tiny MLP compiled for loihi (an artifact with backend files)."""
    out = tmp_path_factory.mktemp("built") / "snn"
    r = invoke("convert", str(tiny / "m.onnx"), "-o", str(out), "-T", "4", "--calib", str(tiny / "d.npz"), *LOIHI)
    assert r.exit_code == 0, r.output
    return out


def invoke(*args: str):
    """The CLI in this process (fast: for the many tampered-artifact cases)."""
    return CliRunner().invoke(main, list(args))


# --- 1. output directories ------------------------------------------------------------------

def test_a_second_writer_is_refused_while_out_is_claimed(tiny, tmp_path):
    out = tmp_path / "out"
    with claim_output(out):  # an flock: a second claim conflicts, in this process too
        r = invoke("convert", str(tiny / "m.onnx"), "-o", str(out), "-T", "4")
        clean_failure(r.exit_code, r.stderr, 2, "another snncompile process is writing", "fix:")
        assert not out.exists()
    r = invoke("convert", str(tiny / "m.onnx"), "-o", str(out), "-T", "4")
    assert r.exit_code == 0, r.stderr
    assert leftovers(tmp_path) == []


def test_two_concurrent_converts_never_both_succeed(tiny, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "snncompile", "convert", str(tiny / "m.onnx"), "-o", str(out), "-T", "4",
           "--calib", str(tiny / "d.npz")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another snncompile process is writing" in refused or "already exists" in refused
    assert "Traceback" not in refused
    assert (out / "ir.json").is_file() and leftovers(tmp_path) == []


def test_force_replaces_only_a_previous_artifact(tiny, tmp_path):
    model = str(tiny / "m.onnx")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = invoke("convert", model, "-o", str(mine), "-T", "4", "--force")
    clean_failure(r.exit_code, r.stderr, 2, "not an snncompile output")
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    assert invoke("convert", model, "-o", str(out), "-T", "4").exit_code == 0
    r = invoke("convert", model, "-o", str(out), "-T", "8", "--force")
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "ir.json").read_text())["timesteps"] == 8
    assert leftovers(tmp_path) == []


def test_out_never_holds_the_inputs_nor_the_working_folder(tiny, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    for f in ("m.onnx", "d.npz"):
        shutil.copy(tiny / f, proj / f)
    (proj / "notes.txt").write_text("mine")
    before = sorted(os.listdir(proj))
    r = invoke("convert", str(proj / "m.onnx"), "--calib", str(proj / "d.npz"), "-o", str(proj), "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    # an earlier artifact that holds the model given now: still the run's input
    art = tmp_path / "art"
    assert invoke("convert", str(tiny / "m.onnx"), "-o", str(art), "-T", "4").exit_code == 0
    r = invoke("convert", str(art / "model.onnx"), "-o", str(art), "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    # -o . and -o .. from inside an artifact: the folder being worked in
    monkeypatch.chdir(art)
    for target in (".", ".."):
        r = invoke("convert", str(tiny / "m.onnx"), "-o", target, "--force")
        clean_failure(r.exit_code, r.stderr, 2, "current folder")
    assert sorted(os.listdir(proj)) == before and (proj / "notes.txt").read_text() == "mine"
    assert (art / "ir.json").is_file()
    assert leftovers(tmp_path) == [] and leftovers(art) == [] and leftovers(proj) == []


def test_report_never_replaces_its_build(built, tiny):
    r = invoke("report", str(built), "--data", str(tiny / "d.npz"), "-o", str(built), "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    assert (built / "ir.json").is_file() and leftovers(built.parent) == []


def test_file_outputs_never_overwrite_the_build(built, tiny, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built, art)
    before = {p: p.read_bytes() for p in art.rglob("*") if p.is_file()}
    data = str(tiny / "d.npz")
    r = invoke("export", str(art), "-o", str(art / "ir.json"), "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    r = invoke("baseline", str(art), "--data", data, "-o", str(art / "compile.json"), "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    r = invoke("baseline", str(art), "--data", data, "-o", data, "--force")
    clean_failure(r.exit_code, r.stderr, 2, "an input of this run")
    assert {p: p.read_bytes() for p in art.rglob("*") if p.is_file()} == before
    assert leftovers(tmp_path) == []


def _default_sigint() -> None:
    """A shell's background job inherits SIGINT as ignored, and Python then installs no
    KeyboardInterrupt handler: the child restores the default, so the tests mean the same
    however the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


WRITER = """
import sys, time
from snncompile.app import cli
from snncompile.fsutil import atomic_directory

@cli._handle_errors
def write(out):
    with atomic_directory(out) as tmp:
        (tmp / "part").write_text("x")
        print("writing", flush=True)
        time.sleep(60)

write(sys.argv[1])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_writing_leaves_nothing(tmp_path, sig):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_default_sigint)
    assert p.stdout.readline().strip() == "writing"
    assert [f for f in leftovers(tmp_path) if f.endswith(".tmp")]  # the write is under way
    p.send_signal(sig)
    assert p.wait(timeout=60) == 130
    err = p.stderr.read()
    assert "Traceback" not in err and "interrupted" in err
    assert not out.exists() and leftovers(tmp_path) == []


LATE = """
import sys, threading, time
from snncompile.app.cli import main
threading.Thread(target=time.sleep, args=(60,)).start()  # the interpreter's exit waits for it
main(sys.argv[1:])
"""


def test_an_interrupt_after_wrote_exits_quietly(tiny, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-u", "-c", LATE, "convert", str(tiny / "m.onnx"), "-o", str(out),
                          "-T", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         preexec_fn=_default_sigint)
    assert p.stdout.readline().startswith("wrote")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    assert "Traceback" not in p.stderr.read()
    assert (out / "ir.json").is_file() and leftovers(tmp_path) == []


# --- 2. no code from an artifact ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["netlist", "cyclesim", "nir", "loihi"])
def test_run_executes_no_code_from_the_artifact(backend, tmp_path):
    from snncompile.testing import check_no_code_from_artifact

    if backend == "loihi":
        pytest.importorskip("lava.magma.core.run_configs")
    planted = check_no_code_from_artifact(backend, workdir=tmp_path)
    assert planted >= (1 if backend == "loihi" else 0)  # loihi keeps run_lava.py for use by hand


def test_run_takes_no_interpreter_from_compile_json(built, tiny, tmp_path):
    pytest.importorskip("lava.magma.core.run_configs")
    art = tmp_path / "art"
    shutil.copytree(built, art)
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.sh"
    evil.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 3\n")
    evil.chmod(0o755)
    info = json.loads((art / "compile.json").read_text())
    info["backend"]["options"]["python"] = str(evil)
    (art / "compile.json").write_text(json.dumps(info))
    r = invoke("run", str(art), "--data", str(tiny / "d.npz"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["bit_exact"] and not marker.exists()
    r = invoke("run", str(art), "--data", str(tiny / "d.npz"), "--target-option", "cores=3")
    clean_failure(r.exit_code, r.stderr, 2, "not a run option", "python")


# --- 3. validated artifacts -----------------------------------------------------------------

def _edit_json(name: str, fn):
    def edit(d: Path) -> None:
        p = d / name
        doc = json.loads(p.read_text())
        new = fn(doc)
        p.write_text(json.dumps(doc if new is None else new))
    return edit


def _edit_node(pred, fn):
    def on_manifest(doc):
        node = next(n for n in doc["nodes"] if pred(n))
        fn(node)
    return _edit_json("ir.json", on_manifest)


def _edit_array(suffix: str, value):
    def edit(d: Path) -> None:
        with np.load(d / "ir.npz") as z:
            arrays = {k: z[k] for k in z.files}
        key = next(k for k in arrays if k.endswith(suffix))
        a = arrays[key].astype(np.int64)
        a.flat[0] = value
        arrays[key] = a
        np.savez(d / "ir.npz", **arrays)
    return edit


def _deep(d: Path) -> None:
    doc = json.loads((d / "ir.json").read_text())
    doc["meta"]["deep"] = "DEEP"
    (d / "ir.json").write_text(json.dumps(doc).replace('"DEEP"', "[" * 100_000 + "]" * 100_000))


def _swap_model(d: Path) -> None:
    m = onnx.load(str(d / "model.onnx"))
    w = m.graph.initializer[0]
    arr = numpy_helper.to_array(w) * 2
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    onnx.save(m, str(d / "model.onnx"))


def _is_if(n):
    return n["op"] == "if"


TAMPERED = {  # case: (how the artifact is damaged, words the message must name)
    "truncated ir.npz": (lambda d: (d / "ir.npz").write_bytes((d / "ir.npz").read_bytes()[:200]), ["ir.npz"]),
    "empty ir.npz": (lambda d: (d / "ir.npz").write_bytes(b""), ["ir.npz", "empty"]),
    "npy as ir.npz": (lambda d: np.save(open(d / "ir.npz", "wb"), np.zeros(3)), ["ir.npz", ".npy"]),
    "nodes an int": (_edit_json("ir.json", lambda m: m.update(nodes=3)), ["ir.json", "'nodes'"]),
    "a node a string": (_edit_json("ir.json", lambda m: m["nodes"].__setitem__(1, "relu")), ["ir.json", "node 1"]),
    "threshold a string": (_edit_node(_is_if, lambda n: n.update(threshold="12")), ["ir.json", "threshold"]),
    "deep nesting": (_deep, ["ir.json", "nests deeper"]),
    "missing key": (_edit_node(_is_if, lambda n: n.pop("name")), ["ir.json", "'name'"]),
    "missing nodes": (_edit_json("ir.json", lambda m: m.pop("nodes") and None), ["ir.json", "'nodes'"]),
    "membrane bits 0": (_edit_node(_is_if, lambda n: n.update(membrane_bits=0)), ["ir.json", "membrane_bits"]),
    "membrane bits 999": (_edit_node(_is_if, lambda n: n.update(membrane_bits=999)), ["ir.json", "membrane_bits"]),
    "membrane bits a string": (_edit_node(_is_if, lambda n: n.update(membrane_bits="18")), ["membrane_bits"]),
    "T = 8.5": (_edit_json("ir.json", lambda m: m.update(timesteps=8.5)), ["ir.json", "timesteps"]),
    "T = 0": (_edit_json("ir.json", lambda m: m.update(timesteps=0)), ["ir.json", "timesteps"]),
    "unknown reset": (_edit_node(_is_if, lambda n: n.update(reset="leak")), ["ir.json", "reset"]),
    "weight_int 2^40": (_edit_array("/weight_int", 2 ** 40), ["ir.npz", "weight_int"]),
    "weight_int beyond --bits": (_edit_array("/weight_int", 300), ["ir.npz", "weight_int", "--bits 8"]),
    "threshold beyond membrane": (_edit_array("/threshold", 2 ** 20), ["ir.npz", "threshold", "18-bit"]),
    "compile.json a list": (lambda d: (d / "compile.json").write_text("[1, 2]"), ["compile.json", "list"]),
    "compile.json not UTF-8": (lambda d: (d / "compile.json").write_bytes(b'{"target": "\xff\xfe"}'),
                               ["compile.json", "UTF-8"]),
    "compile.json NaN": (lambda d: (d / "compile.json").write_text('{"seed": NaN}'), ["compile.json"]),
    "constraints a string": (_edit_json("compile.json", lambda i: i.update(constraints={"bits": "8"})),
                             ["compile.json", "constraints.bits"]),
    "swapped model.onnx": (_swap_model, ["model.onnx", "SHA-256"]),
    "onnx_output renamed": (_edit_json("ir.json", lambda m: m["meta"].update(onnx_output="nope")),
                            ["ir.json", "onnx_output", "model.onnx"]),
    "onnx_input missing": (_edit_json("ir.json", lambda m: m["meta"].pop("onnx_input") and None),
                           ["ir.json", "onnx_input"]),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_damaged_artifact_is_one_clear_error(case, built, tiny, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built, art)
    damage, words = TAMPERED[case]
    damage(art)
    r = invoke("evaluate", str(art), "--data", str(tiny / "d.npz"))
    clean_failure(r.exit_code, r.stderr, 5, *words, "fix:")
    assert r.stdout == ""


@pytest.mark.parametrize("command", ["check", "inspect", "export", "baseline", "report"])
def test_every_reader_validates(command, built, tiny, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built, art)
    _edit_array("/weight_int", 2 ** 40)(art)  # wrapped to 0 and passed `check` before
    data = str(tiny / "d.npz")
    args = {"check": [], "inspect": [], "export": ["-o", str(tmp_path / "g.nir")],
            "baseline": ["--data", data, "-o", str(tmp_path / "b.json")],
            "report": ["--data", data, "-o", str(tmp_path / "rep")]}[command]
    r = invoke(command, str(art), *args)
    clean_failure(r.exit_code, r.stderr, 5, "weight_int")
    assert sorted(os.listdir(tmp_path)) == ["art"]


@pytest.mark.parametrize("damage", ["truncated params.npz", "network.json without populations",
                                    "network.json a list"])
def test_a_damaged_backend_file_is_an_artifact_error(damage, built, tiny, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built, art)
    d = art / "loihi"
    if damage == "truncated params.npz":
        (d / "params.npz").write_bytes((d / "params.npz").read_bytes()[:100])
    elif damage == "network.json a list":
        (d / "network.json").write_text("[]")
    else:
        net = json.loads((d / "network.json").read_text())
        del net["populations"]
        (d / "network.json").write_text(json.dumps(net))
    r = invoke("run", str(art), "--data", str(tiny / "d.npz"))
    clean_failure(r.exit_code, r.stderr, 5, "loihi", "fix:")
    assert "report this" not in r.stderr


@pytest.mark.parametrize("backend", ["netlist", "cyclesim", "nir"])
def test_every_damaged_file_of_a_backend_artifact_is_an_artifact_error(backend, tmp_path):
    from snncompile.plugin import ArtifactError, get_backend
    from snncompile.testing import fit_case, zoo_case, zoo_names

    be = get_backend(backend)
    case = next(c for c in (fit_case(zoo_case(n), be.limits()) for n in zoo_names()) if not be.check(c.graph))
    good = tmp_path / "good"
    good.mkdir()
    be.lower(case.graph, good)
    damages = {"truncated": lambda b: b[: len(b) // 2], "empty": lambda b: b"",
               "deep": lambda b: b"[" * 100_000 + b"]" * 100_000, "a list": lambda b: b"[]",
               "another object": lambda b: b'{"a": 1}'}
    for f in sorted(p.relative_to(good) for p in good.rglob("*") if p.is_file()):
        for how, damage in damages.items():
            d = tmp_path / "bad"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(good, d)
            (d / f).write_bytes(damage((d / f).read_bytes()))
            with pytest.raises(ArtifactError, match=f"{re.escape(f.name)}|{re.escape(str(d))}"):
                be.run(d, np.asarray(case.x_int), case.timesteps, record_spikes=True)


def test_an_artifact_without_the_model_hash_loads_with_a_warning(built, tiny, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(built, art)
    _edit_json("compile.json", lambda i: i.pop("model_sha256") and None)(art)
    r = invoke("evaluate", str(art), "--data", str(tiny / "d.npz"), "--json")
    assert r.exit_code == 0, r.stderr
    assert "records no model_sha256" in r.stderr and "re-run 'snncompile convert'" in r.stderr


def test_the_model_hash_is_recorded(built):
    import hashlib

    info = json.loads((built / "compile.json").read_text())
    assert info["model_sha256"] == hashlib.sha256((built / "model.onnx").read_bytes()).hexdigest()

"""Backends from the command line on the digits example: convert --target, run, backends,
and every bad input around them (one clear message, non-zero exit, nothing half-written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from snncompile.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
HW = ["--bits", "8", "--membrane-bits", "24"]  # what the default cyclesim architecture holds


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def cli(*args: str):
    """In-process run (no interpreter start-up): for the many bad-input checks."""
    r = CliRunner().invoke(main, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # an uncaught exception is a bug: show it
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def assert_clean_failure(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert any(line.startswith("error:") for line in r.stderr.splitlines()), r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    d = np.load(out / "test.npz")
    np.savez(out / "small.npz", x=d["x"][:80], y=d["y"][:80])
    return out


def convert(digits: Path, out: Path, *extra: str, inproc: bool = False) -> subprocess.CompletedProcess:
    return (cli if inproc else run)("convert", str(digits / "digits_cnn.onnx"), "--calib", str(digits / "calib.npz"),
               "-T", "16", "-o", str(out), *extra)


@pytest.fixture(scope="module")
def cyclesim_out(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cs") / "out"
    r = convert(digits, out, "--target", "cyclesim", *HW, "--target-option", "neurons_per_core=256")
    assert r.returncode == 0, r.stderr
    assert "target cyclesim" in r.stdout
    return out


def test_cyclesim_end_to_end(digits, cyclesim_out):
    info = json.loads((cyclesim_out / "compile.json").read_text())
    assert info["target"] == "cyclesim" and info["backend"]["version"] == "1.0.0"
    assert info["backend"]["options"] == {"neurons_per_core": "256"}
    assert {"arch.json", "mapping.json", "network.json", "network.npz"} <= set(os.listdir(cyclesim_out / "cyclesim"))
    r = run("run", str(cyclesim_out), "--data", str(digits / "small.npz"), "--json", "--batch-size", "50")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["bit_exact"] is True and res["backend"] == "cyclesim" and res["differences"] == []
    assert res["stats"]["chunks"] == 2  # 80 samples in batches of 50
    assert res["accuracy"] >= 0.9 and res["samples"] == 80 and res["timesteps"] == 16
    st = res["stats"]
    for k in ("cycles_per_step", "latency_cycles", "latency_us", "synops_per_sample",
              "energy_nj_per_sample", "cores"):
        assert st[k], k
    assert st["architecture"]["neurons_per_core"] == 256
    assert all(c["units"] <= 256 and 0 < c["neuron_utilization"] <= 1 for c in st["cores"])
    assert len(st["cores"]) > 4  # the 1024-neuron conv layer is split over four cores at least
    # the chip's synaptic events are the reference's SynOps (sum pools here do not overlap)
    ev = json.loads(run("evaluate", str(cyclesim_out), "--data", str(digits / "small.npz"), "--json").stdout)
    assert st["synops_per_sample"] == pytest.approx(ev["synops_per_sample"], rel=1e-9)
    assert res["accuracy"] == pytest.approx(ev["snn_accuracy"], abs=1e-12)
    # evaluate reports the cores the mapping gives each layer, and they add up to the run's
    assert ev["target"] == "cyclesim" and ev["cores"] == len(st["cores"])
    assert sum(r["cores"] for r in ev["layers"]) == len(st["cores"])
    assert next(r for r in ev["layers"] if r["neurons"] == 1024)["cores"] == 4
    # other T, and the text form
    r = cli("run", str(cyclesim_out), "--data", str(digits / "small.npz"), "-T", "5")
    assert r.returncode == 0, r.stderr
    assert "bit_exact: true" in r.stdout and "accuracy:" in r.stdout and "T: 5" in r.stdout
    assert "latency_us:" in r.stdout


def test_netlist_end_to_end(digits, tmp_path):
    out = tmp_path / "nl"
    r = convert(digits, out, "--target", "netlist", *HW)
    assert r.returncode == 0, r.stderr
    r = run("run", str(out), "--data", str(digits / "small.npz"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["bit_exact"] is True and res["accuracy"] >= 0.9
    # a corrupted netlist: clear error naming the file, exit 5
    (out / "netlist" / "netlist.json").write_text(
        (out / "netlist" / "netlist.json").read_text().replace('"version": 2', '"version": 99'))
    assert_clean_failure(cli("run", str(out), "--data", str(digits / "small.npz")), 5,
                         "netlist.json", "version 99")


def test_limit_violations_all_at_once_and_nothing_written(digits, tmp_path):
    out = tmp_path / "o"  # widths set explicitly: the target profile never overrides them
    r = convert(digits, out, "--target", "cyclesim", "--bits", "16", "--membrane-bits", "32")
    assert_clean_failure(r, 6, "does not fit target 'cyclesim'", "weight bits (16) exceeds max (8)",
                         "fix: --bits 8", "fix: --membrane-bits 24")
    assert r.stderr.count("\n  - ") >= 7
    assert os.listdir(tmp_path) == []
    r = convert(digits, out, "--target", "cyclesim", *HW, "--target-option", "neurons_per_core=16",
                "--target-option", "cores=10", inproc=True)
    assert_clean_failure(r, 6, "cores needed", "max (10)", "cores=")
    assert os.listdir(tmp_path) == []


def test_backends_listing():
    r = run("backends", "--json")
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads(r.stdout)["backends"]}
    assert {"sim", "cyclesim", "netlist"} <= set(rows)
    assert rows["cyclesim"]["limits"]["weight_bits"] == 8 and rows["cyclesim"]["can_run"]
    text = cli("backends").stdout
    assert "cyclesim" in text and "neurons_per_core=1024" in text


def test_bad_inputs(digits, cyclesim_out, tmp_path):
    small = str(digits / "small.npz")
    # unknown target: lists what is installed
    assert_clean_failure(convert(digits, tmp_path / "a", "--target", "loihi9", inproc=True), 2,
                         "unknown target 'loihi9'", "sim", "cyclesim", "netlist")
    assert_clean_failure(convert(digits, tmp_path / "a", "--target", "cyclesim", "--target-option", "nurons=4", inproc=True),
                         2, "unknown target option 'nurons'", "neurons_per_core")
    assert_clean_failure(convert(digits, tmp_path / "a", "--target-option", "cores=4", inproc=True), 2, "takes no --target-option")
    assert_clean_failure(convert(digits, tmp_path / "a", "--target", "netlist", "--target-option", "x", inproc=True), 2, "KEY=VALUE")
    assert not (tmp_path / "a").exists()
    # run on a sim artifact
    sim = tmp_path / "sim"
    assert convert(digits, sim, inproc=True).returncode == 0
    assert_clean_failure(cli("run", str(sim), "--data", small), 2, "target 'sim'", "evaluate")
    # run on an artifact whose backend is not installed
    gone = tmp_path / "gone"
    assert convert(digits, gone, "--target", "netlist", inproc=True).returncode == 0
    info = json.loads((gone / "compile.json").read_text())
    info["target"] = "loihi9"
    (gone / "compile.json").write_text(json.dumps(info))
    assert_clean_failure(cli("run", str(gone), "--data", small), 2, "backend 'loihi9'", "not installed")
    # data that does not fit
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 1, 9, 9), np.float32))
    assert_clean_failure(cli("run", str(cyclesim_out), "--data", str(bad)), 4, "(N, 1, 8, 8)")
    assert_clean_failure(cli("run", str(cyclesim_out), "--data", str(tmp_path / "none.npz")), 4, "does not exist")
    assert_clean_failure(cli("run", str(tmp_path / "nothing"), "--data", small), 5)
    # a damaged cyclesim artifact
    damaged = tmp_path / "damaged"
    assert convert(digits, damaged, "--target", "cyclesim", *HW, inproc=True).returncode == 0
    (damaged / "cyclesim" / "network.npz").unlink()
    assert_clean_failure(cli("run", str(damaged), "--data", small), 5, "network.npz is missing", "--target cyclesim")


FAKE_PLUGINS = {
    "brokenmod.py": "import chipdriver_that_is_not_installed\n",
    "crashymod.py": textwrap.dedent("""
        from snncompile.plugin import Backend, Limits

        class Crashy(Backend):
            name = "crashy"
            version = "0.1"
            def limits(self):
                return Limits()
            def lower(self, graph, directory):
                (directory / "partial.bin").write_bytes(b"half")
                raise ZeroDivisionError("oops in the plugin")
    """),
    "liarmod.py": textwrap.dedent("""
        import numpy as np
        from snncompile.plugin import Backend, BackendRun, Limits, load_graph
        from snncompile.ir.serialize import save_graph
        from snncompile.sim.simulator import simulate

        class Liar(Backend):  # fires on v > theta instead of v >= theta
            name = "liar"
            version = "0.1"
            can_run = True
            def limits(self):
                return Limits()
            def lower(self, graph, directory):
                save_graph(graph, directory)
            def run(self, directory, x_int, timesteps=None, record_spikes=False):
                g = load_graph(directory)
                for n in g.nodes:
                    if n.op == "if":
                        n.threshold = n.threshold + 1
                r = simulate(g, x_int * np.asarray(g.input.out_scale), timesteps, record_spikes=record_spikes)
                return BackendRun(r.output_acc, r.spikes)
    """),
}


def test_broken_plugins_are_named_and_do_not_hide_others(digits, tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "fakeplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[snncompile.backends]\nbroken = brokenmod:Nope\n"
                                           "crashy = crashymod:Crashy\nliar = liarmod:Liar\n")
    for name, text in FAKE_PLUGINS.items():
        (site / name).write_text(text)
    monkeypatch.syspath_prepend(str(site))  # entry points are looked up on sys.path at each call
    r = cli("backends", "--json")
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads(r.stdout)["backends"]}
    assert "ModuleNotFoundError" in rows["broken"]["error"] and "brokenmod:Nope" in rows["broken"]["error"]
    assert rows["cyclesim"]["can_run"] and rows["crashy"]["version"] == "0.1"
    assert "broken: error:" in cli("backends").stdout
    out = tmp_path / "o"
    r = cli("convert", str(digits / "digits_cnn.onnx"), "-o", str(out), "--target", "broken")
    assert_clean_failure(r, 2, "backend 'broken'", "failed to load", "chipdriver_that_is_not_installed")
    r = cli("convert", str(digits / "digits_cnn.onnx"), "-o", str(out), "--target", "crashy")
    assert_clean_failure(r, 7, "backend 'crashy' 0.1 failed while lowering", "ZeroDivisionError: oops")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["site"]
    # a backend that is not bit-exact: run says where it diverged and exits 8 (1 is a crash's)
    r = cli("convert", str(digits / "digits_cnn.onnx"), "--calib", str(digits / "calib.npz"), "-T", "8",
            "-o", str(out), "--target", "liar", *HW)
    assert r.returncode == 0, r.stderr
    r = cli("run", str(out), "--data", str(digits / "small.npz"))
    assert r.returncode == 8 and "bit_exact: false" in r.stdout
    assert "difference: layer '/relu1/Relu_output_0' diverged at time step" in r.stderr
    assert "error: the backend's spikes or outputs differ" in r.stderr


def test_headline_loihi_command_end_to_end(digits, tmp_path):
    """The mission's command: convert for Loihi under 8-bit weights and fan-in 64 with
    progressive tandem learning (a short budget), then run the artifact on Lava's fixed_pt
    simulator: bit-exact with the reference, and the accuracy evaluate reports. 6-bit inputs:
    8-bit weights times 8-bit inputs would pass the 16-bit input port of Loihi's neurons."""
    out = tmp_path / "loihi"
    r = convert(digits, out, "--target", "loihi", "--bits", "8", "--fanin", "64", "-T", "8",
                "--membrane-bits", "18", "--input-mode", "every_step", "--input-bits", "6", "--train",
                str(digits / "train.npz"), "--val", str(digits / "val.npz"), "--epochs", "6")
    assert r.returncode == 0, r.stderr
    assert "tuned (ptl" in r.stdout and "target loihi" in r.stdout
    data = str(digits / "small.npz")
    res = json.loads(run("run", str(out), "--data", data, "--json").stdout)
    assert res["backend"] == "loihi" and res["bit_exact"] is True, res.get("differences")
    ev = json.loads(run("evaluate", str(out), "--data", data, "--json").stdout)
    assert res["accuracy"] == pytest.approx(ev["snn_accuracy"], abs=1e-12)
    assert ev["max_weight_bits"] <= 8 and ev["max_fanin"] <= 64 and ev["cores"] >= 4
    # the same command with the input injected once cannot fit Loihi's current register
    r = convert(digits, tmp_path / "once", "--target", "loihi", "--bits", "8", "--fanin", "64",
                "-T", "8", "--membrane-bits", "18", "--input-mode", "once", "--input-bits", "8")
    assert_clean_failure(r, 6, "input current per step", "--input-mode every_step")
    assert not (tmp_path / "once").exists()

"""The CI gate: `baseline` records a known-good build, `check` fails a build that breaks a
target's limits or regresses against the baseline, passes a good one, and says so as exit
codes, JSON and JUnit XML; a bad baseline is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncompile", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gate")
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(d / "data")],
                   check=True, capture_output=True, timeout=300)
    out = {"data": d / "data"}
    for name, extra in (("good", ["-T", "32"]), ("short", ["-T", "4"])):
        r = cli("convert", str(d / "data/digits_cnn.onnx"), "--calib", str(d / "data/calib.npz"),
                "-o", str(d / name), *extra)
        assert r.returncode == 0, r.stderr
        out[name] = d / name
    r = cli("baseline", str(out["good"]), "--data", str(d / "data/test.npz"), "-o", str(d / "base.json"))
    assert r.returncode == 0, r.stderr
    out["base"] = d / "base.json"
    return out


def test_good_build_passes_its_baseline(builds, tmp_path):
    r = cli("check", str(builds["good"]), "--baseline", str(builds["base"]), "--json",
            "--junit", str(tmp_path / "j.xml"))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["passed"] and {c["name"] for c in res["checks"]} == {"accuracy", "synops", "timesteps", "neurons"}
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"


def test_regressed_accuracy_fails(builds, tmp_path):
    """T=4 loses accuracy against the T=32 baseline (it spends fewer SynOps: those pass)."""
    r = cli("check", str(builds["short"]), "--baseline", str(builds["base"]), "--json",
            "--junit", str(tmp_path / "j.xml"))
    assert r.returncode == 1, r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert not checks["accuracy"]["passed"] and checks["synops"]["passed"]
    failures = ET.parse(tmp_path / "j.xml").getroot().findall("testcase/failure")
    assert len(failures) == 1 and "accuracy" in failures[0].get("message")


def test_sixteen_bit_build_fails_an_eight_bit_target(builds):
    r = cli("check", str(builds["good"]), "--target", "cyclesim")
    assert r.returncode == 1
    assert "FAIL  limit cyclesim" in r.stdout and "weight bits (16) exceeds max (8); fix: --bits 8" in r.stdout
    assert "convert --target cyclesim chooses --bits 8 --membrane-bits 24" in r.stdout  # its profile
    r = cli("check", str(builds["good"]), "--target", "netlist")  # no width limit there
    assert r.returncode == 0 and "PASS  limits of netlist" in r.stdout


def test_tolerances_come_from_the_baseline_file(builds, tmp_path):
    base = json.loads(builds["base"].read_text())
    base["tolerances"]["max_accuracy_drop"] = 0.5
    loose = builds["base"].with_name("loose.json")  # beside it: the data path is relative to it
    loose.write_text(json.dumps(base))
    r = cli("check", str(builds["short"]), "--baseline", str(loose))
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_baselines_are_one_clear_error(builds, tmp_path):
    (tmp_path / "garbage.json").write_text("{not json")
    other = json.loads(builds["base"].read_text())
    other["model"]["layers"][0][1] = [3, 3, 3]
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "list.json").write_text("[1, 2]")
    cases = [("garbage.json", "is not valid JSON"), ("other.json", "recorded for another model"),
             ("list.json", "is not a snncompile baseline"), ("missing.json", "does not exist")]
    for name, words in cases:
        r = cli("check", str(builds["good"]), "--baseline", str(tmp_path / name))
        assert r.returncode == 2, (name, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr
    r = cli("check", str(builds["good"]))  # a sim build and no baseline: nothing to check
    assert r.returncode == 2 and "nothing to check" in r.stderr
    r = cli("baseline", str(builds["good"]), "--data", str(builds["data"] / "test.npz"), "-o", str(builds["base"]))
    assert r.returncode == 2 and "already exists" in r.stderr

"""docs/ci.md cannot rot: its baseline commands, every run step of its workflow (but the
install, done here already) and its pytest file run on the digits model in a scratch
repository laid out as the workflow expects, and the gate passes with JUnit files written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import yaml

DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of docs/ci.md in one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def workflow() -> dict:
    (text,) = blocks("yaml")
    return yaml.safe_load(text)


def test_workflow_shape():
    job = workflow()["jobs"]["gate"]
    steps = job["steps"]
    py = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert py["with"]["python-version"] == "3.10"
    runs = " ".join(s.get("run", "") for s in steps)
    assert "snncompile check build/ --baseline" in runs and "--junit reports/" in runs
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["with"]["path"] == "reports/" and upload["if"] == "always()"
    assert set(job["env"]) == {"SNNCOMPILE", "MODEL", "CALIB", "TEST_DATA", "BASELINE"}


def test_documented_commands_run_on_the_digits_model(digits_dir, tmp_path):
    job = workflow()["jobs"]["gate"]
    repo = tmp_path / "repo"
    for sub in ("models", "data", "ci"):
        (repo / sub).mkdir(parents=True)
    shutil.copy(digits_dir / "digits_cnn.onnx", repo / job["env"]["MODEL"])
    shutil.copy(digits_dir / "calib.npz", repo / job["env"]["CALIB"])
    shutil.copy(digits_dir / "test.npz", repo / job["env"]["TEST_DATA"])
    (test_file,) = blocks("python")
    target = repo / test_file.splitlines()[0].lstrip("# ").strip()  # its first line names its path
    target.parent.mkdir(parents=True)
    target.write_text(test_file)
    env = dict(os.environ, **{k: str(v) for k, v in job["env"].items()})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # snncompile, pytest

    def sh(script: str) -> None:
        r = subprocess.run(["bash", "-e", "-c", script], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"

    (baseline_cmds,) = blocks("sh")
    sh(baseline_cmds)
    assert (repo / job["env"]["BASELINE"]).is_file()
    shutil.rmtree(repo / "build")  # CI starts from a clean checkout
    ran = []
    for step in job["steps"]:
        if "run" not in step:
            continue
        if step["name"] == "Install snncompile":  # this environment has it
            assert '"$SNNCOMPILE"' in step["run"]
            continue
        sh(step["run"])
        ran.append(step["name"])
    assert len(ran) == 4
    check = ET.parse(repo / "reports/snncompile-check.xml").getroot()
    assert check.get("failures") == "0" and int(check.get("tests")) >= 5  # limits + 5 figures
    hw = ET.parse(repo / "reports/pytest-hardware.xml").getroot()
    suite = hw if hw.tag == "testsuite" else hw.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert (repo / "reports/snn-report/report.html").stat().st_size > 50_000

"""examples/plugin_template is a working plugin: it pip-installs, shows up in
`snncompile backends`, and its own test suite (the conformance kit) passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_template_installs_lists_and_passes_the_kit(tmp_path):
    src = tmp_path / "plugin_template"
    shutil.copytree(ROOT / "examples" / "plugin_template", src)  # build files stay out of the repo
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--no-index", "--target", str(site), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # the checkout's own snncompile (and backends) stay importable after the plugin's folder
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    r = subprocess.run([sys.executable, "-m", "snncompile", "backends", "--json"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads(r.stdout)["backends"]}
    assert rows["template"]["version"] == "0.1.0" and rows["template"]["can_run"]
    assert rows["template"]["profile"] == {"weight_bits": 16, "input_mode": "every_step"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(src / "tests")],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "13 passed, 2 skipped" in r.stdout  # the template has no max pool and binary spikes only

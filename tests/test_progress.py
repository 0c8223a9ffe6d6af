"""Progress bars: drawn on stderr where asked (calibration, simulation, running a backend,
lowering, with a backend's per-layer callback where it has one), silent otherwise, and
`--quiet` is accepted by the commands that work long."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snncompile.app.cli import main
from snncompile.plugin import Backend, Limits, flatten_network
from snncompile.targets.select import lower_into
from snncompile.testing.zoo import zoo_case


class _Reporting(Backend):
    name = "reporting"

    def limits(self) -> Limits:
        return Limits()

    def lower(self, graph, directory: Path, progress=None) -> None:
        flatten_network(graph, progress=progress)
        (Path(directory) / "done").write_text("ok")


class _Silent(_Reporting):
    name = "silent"

    def lower(self, graph, directory: Path) -> None:
        (Path(directory) / "done").write_text("ok")


def test_lowering_bar_follows_the_backends_callback(tmp_path, capsys, monkeypatch):
    g = zoo_case("residual_add").graph
    seen = []
    flatten_network(g, progress=lambda done, total, what: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == len(flatten_network(g).populations)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    import snncompile.targets.select as select

    bars = []
    def recording(*args, **kwargs):
        bars.append(select.progress_bar.__wrapped__(*args, **kwargs))
        return bars[-1]
    recording.__wrapped__ = select.progress_bar
    monkeypatch.setattr(select, "progress_bar", recording)
    lower_into(_Reporting(), g, tmp_path, progress=True)
    assert "lowering for reporting" in capsys.readouterr().err
    assert bars[-1].n == bars[-1].total == seen[-1][1]  # the bar went all the way
    (tmp_path / "b").mkdir()
    lower_into(_Silent(), g, tmp_path / "b", progress=True)
    assert "lowering for silent (this backend reports no progress)" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    lower_into(_Reporting(), g, tmp_path / "c")  # progress off: nothing on stderr
    assert capsys.readouterr().err == ""


def test_simulation_and_calibration_bars(capsys):
    from snncompile.sim.simulator import simulate

    case = zoo_case("dense_subtract_once")
    x = np.random.default_rng(0).random((5, *case.graph.input.shape)).astype(np.float32)
    simulate(case.graph, x, progress=True)
    assert "simulating" in capsys.readouterr().err
    simulate(case.graph, x, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["convert", "evaluate", "run", "report", "check", "baseline"])
def test_quiet_is_an_option_of_the_long_commands(command):
    from click.testing import CliRunner

    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0 and "-q, --quiet" in r.output


@pytest.mark.parametrize("name", ["cyclesim", "netlist", "loihi"])
def test_the_bundled_backends_report_lowering_progress(name, tmp_path):
    import inspect

    from snncompile.targets.api import available_backends, get_backend

    if name not in available_backends():
        pytest.skip(f"backend {name} is not installed here")
    backend = get_backend(name)
    assert "progress" in inspect.signature(backend.lower).parameters
    if name == "netlist":  # one real lowering, counted
        seen = []
        backend.lower(zoo_case("dense_subtract_once").graph, tmp_path,
                      progress=lambda done, total, what: seen.append((done, total)))
        assert seen and seen[-1][0] == seen[-1][1]


def test_convert_shows_the_import_and_profile_stages(onnx_kit, tmp_path, capsys):
    """Loading and importing a large model, and fitting the target's input width, each take
    tens of seconds at ImageNet size: both draw a bar where progress is asked for."""
    import onnx
    from torch import nn

    from snncompile.app.compile import CompileRequest, compile_model

    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    onnx.save(onnx_kit.from_torch(net, (1, 4, 4)), tmp_path / "m.onnx")
    compile_model(CompileRequest(model=str(tmp_path / "m.onnx"), out=str(tmp_path / "o"),
                                 target="loihi", progress=True))
    err = capsys.readouterr().err
    assert "importing m.onnx" in err and "fitting --input-bits" in err

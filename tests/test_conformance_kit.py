"""The conformance kit itself: it passes a correct backend and catches wrong ones, naming the
network, layer, time step and neuron that diverged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from snncompile.plugin import Backend, BackendRun, Limits, load_graph
from snncompile.ir.serialize import save_graph
from snncompile.sim.simulator import simulate
from snncompile.testing import ConformanceError, check_backend, check_case, zoo_case, zoo_names


class ReferenceDouble(Backend):
    """A test double that runs the reference simulator on its own saved IR: must pass."""

    name = "refdouble"
    can_run = True
    threshold_shift = 0

    def limits(self) -> Limits:
        return Limits(spike_modes=("binary", "signed"))

    def lower(self, graph, directory: Path) -> None:
        save_graph(graph, directory)

    def run(self, directory, x_int, timesteps=None, record_spikes=False) -> BackendRun:
        g = load_graph(directory)
        for n in g.nodes:
            if n.op == "if":
                n.threshold = n.threshold + self.threshold_shift
        r = simulate(g, x_int * np.asarray(g.input.out_scale), timesteps, record_spikes=record_spikes)
        return BackendRun(r.output_acc, r.spikes)


class OffByOneThreshold(ReferenceDouble):
    """Compares v > theta instead of v >= theta (the classic off-by-one)."""

    name = "offbyone"
    threshold_shift = 1


class SubtractOnly(ReferenceDouble):
    """Declares that it supports reset by subtraction only: zoo cases with reset to zero are
    skipped, not failed."""

    name = "subtractonly"

    def limits(self) -> Limits:
        return Limits(reset_modes=("subtract",))


def test_zoo_graphs_are_valid_and_exercise_their_feature():
    for name in zoo_names():
        c = zoo_case(name)
        c.graph.validate()
        assert c.x_int.shape[1:] == c.graph.input.shape
    sat = zoo_case("membrane_saturation")
    r = simulate(sat.graph, sat.x_int, sat.timesteps)
    assert r.saturations["s1"] > 0
    sg = zoo_case("signed_spikes")
    r = simulate(sg.graph, sg.x_int, sg.timesteps, record_spikes=True)
    assert all((r.spikes[k] < 0).any() for k in ("s2", "s3"))  # spikes are taken back


def test_correct_backend_passes_the_whole_zoo(tmp_path):
    report = check_backend(ReferenceDouble(), workdir=tmp_path)
    assert report.passed == zoo_names() and not report.skipped


def test_off_by_one_threshold_fails_with_network_layer_step_and_neuron(tmp_path):
    with pytest.raises(ConformanceError) as e:
        check_case(OffByOneThreshold(), "dense_subtract_once", tmp_path)
    msg = str(e.value)
    # the first line after the header names the root cause: the first layer, earliest step
    first = msg.splitlines()[1]
    assert "network 'dense_subtract_once'" in first and ("layer 's1'" in first or "layer 's2'" in first)
    assert "time step" in first and "neuron (" in first
    assert "output 'out' differs" in msg
    with pytest.raises(ConformanceError, match="network 'maxpool_counts'"):
        check_backend(OffByOneThreshold(), cases=["maxpool_counts"], workdir=tmp_path)


def test_message_names_the_exact_divergence():
    from snncompile.plugin import BackendRun
    from snncompile.testing import compare_run, reference

    c = zoo_case("conv_stride_padding")
    ref = reference(c.graph, c.x_int, c.timesteps)
    spikes = {k: v.copy() for k, v in ref.spikes.items()}
    spikes["s2"][5, 2, 1, 0, 1] ^= 1   # one flipped spike: layer s2, t=5, sample 2, neuron (1, 0, 1)
    spikes["s1"][6, 0, 0, 0, 0] ^= 1   # a later one in an earlier layer is reported second
    msgs = compare_run(c.graph, ref, BackendRun(dict(ref.output_acc), spikes), c.name)
    assert msgs[0].startswith("network 'conv_stride_padding': layer 's2' diverged at time step 5, "
                              "sample 2, neuron (1, 0, 1)")
    assert "layer 's1' diverged at time step 6" in msgs[1]


def test_cases_outside_the_limits_are_skipped_and_listed(tmp_path):
    report = check_backend(SubtractOnly(), workdir=tmp_path)
    assert "dense_zero_every_step" in report.skipped and "concat" in report.skipped
    assert "dense_subtract_once" in report.passed
    assert "reset mode" in report.skipped["dense_zero_every_step"][0]
    with pytest.raises(ConformanceError, match="cannot hold network"):
        check_backend(SubtractOnly(), cases=["dense_zero_every_step"], allow_skips=False)

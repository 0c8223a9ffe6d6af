"""The built-in backends (backends/cyclesim, backends/netlist) pass the conformance kit, are
found through their entry points, and use only the public plugin API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from snncompile.plugin import LimitError, available_backends, get_backend
from snncompile.testing import check_backend, check_case, zoo_case, zoo_names

ROOT = Path(__file__).resolve().parents[1]
# the IR (nodes, graph, file format) and what snncompile.plugin re-exports
PUBLIC = {"snncompile.plugin", "snncompile.testing", "snncompile.ir"}

# cyclesim twice: the default architecture, and tiny cores so that every layer is split
# across several cores by each of the three capacities
CONFIGS = {
    "netlist": {},
    "cyclesim": {},
    "cyclesim-split": {"neurons_per_core": "5", "synapses_per_core": "400", "axons_per_core": "200"},
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("case", zoo_names())
def test_conformance(config, case, tmp_path):
    backend = get_backend(config.split("-")[0], CONFIGS[config])
    assert check_case(backend, case, tmp_path), f"{config} skipped {case}: {backend.check(zoo_case(case).graph)}"


def test_split_configuration_really_splits_layers():
    from snncompile_cyclesim.mapping import map_network, recount
    from snncompile.plugin import structured_network

    be = get_backend("cyclesim", CONFIGS["cyclesim-split"])
    g = zoo_case("maxpool_counts").graph
    net = structured_network(g)
    cores = recount(map_network(g, be.arch), net)
    per_pop = {}
    for c in cores:
        per_pop.setdefault(c.population, []).append(c)
        assert c.stop - c.start <= 5 and c.synapses <= 400 and c.axons <= 200
    assert all(len(v) > 1 for k, v in per_pop.items() if net.population(k).units > 5)
    # cores of a population tile it exactly
    for name, cs in per_pop.items():
        assert cs[0].start == 0 and all(a.stop == b.start for a, b in zip(cs, cs[1:]))
        assert cs[-1].stop == net.population(name).units


def test_entry_points_and_whole_kit_report():
    eps = available_backends()
    assert {"cyclesim", "netlist"} <= set(eps)
    report = check_backend("netlist", cases=["residual_add", "maxpool_counts"])
    assert report.passed == ["residual_add", "maxpool_counts"]


def test_cyclesim_limits_are_enforced_with_every_violation():
    be = get_backend("cyclesim", {"neurons_per_core": "4", "cores": "3", "weight_bits": "3",
                                  "synapses_per_core": "8"})
    vs = be.check(zoo_case("conv_stride_padding").graph)
    kinds = {v.quantity for v in vs}
    assert "weight bits" in kinds and "synapses of one neuron" in kinds
    err = LimitError("cyclesim", vs)
    assert "--target-option synapses_per_core=" in str(err)
    cores = get_backend("cyclesim", {"neurons_per_core": "4", "cores": "3"}).check(zoo_case("concat").graph)
    assert [v.quantity for v in cores] == ["cores needed"] and cores[0].limit == 3


def test_bad_target_options():
    from snncompile.errors import UsageError

    with pytest.raises(UsageError, match="unknown target option 'nurons'.*"):
        get_backend("cyclesim", {"nurons": "3"})
    with pytest.raises(UsageError, match="expected a number"):
        get_backend("cyclesim", {"cores": "many"})
    with pytest.raises(UsageError, match="takes no target options"):
        get_backend("netlist", {"cores": "3"})


def test_backends_use_only_the_public_api():
    for py in (ROOT / "backends").rglob("*.py"):
        tree = ast.parse(py.read_text())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            for m in mods:
                if m.startswith("snncompile.") or m == "snncompile":
                    assert m in PUBLIC, f"{py.relative_to(ROOT)} imports {m}, not in the public API"


def test_cyclesim_stats_of_a_chunked_run_equal_one_run(tmp_path):
    import numpy as np

    be = get_backend("cyclesim")
    c = zoo_case("avgpool_sum")
    be.lower(c.graph, tmp_path)
    whole = be.run(tmp_path, c.x_int, c.timesteps).stats
    parts = [(k, be.run(tmp_path, c.x_int[a:a + k], c.timesteps).stats) for a, k in ((0, 1), (1, 3))]
    merged = be.combine_stats(parts)
    for key in ("cycles_per_step", "cycles_per_step_max", "latency_cycles", "synops_per_sample",
                "input_events_per_sample", "spikes_per_sample", "energy_nj_per_sample"):
        assert np.isclose(merged[key], whole[key], rtol=1e-12), key
    assert merged["saturations"] == whole["saturations"] and merged["chunks"] == 2
    for a, b in zip(merged["cores"], whole["cores"]):
        assert abs(a["busy_fraction"] - b["busy_fraction"]) <= 1e-4  # per-chunk values are rounded to 4 places
        assert np.isclose(a["events_per_sample"], b["events_per_sample"], rtol=1e-12)

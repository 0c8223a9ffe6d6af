"""The netlist format: readable with numpy and json alone, validated on load with clear
errors for every kind of hand-editing mistake."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snncompile.errors import ArtifactError
from snncompile.plugin import get_backend
from snncompile.testing import reference, zoo_case


def simulate_with_numpy_only(folder: Path, x_int: np.ndarray) -> dict[str, np.ndarray]:
    """What a hardware team would write from docs/netlist.md: json + numpy, nothing else."""
    doc = json.loads((folder / "netlist.json").read_text())
    arr = np.load(folder / "netlist.npz")
    T, B = doc["timesteps"], len(x_int)
    pops = {p["name"]: p for p in doc["populations"]}
    st = {n: np.zeros((B, p.get("compartments", p["units"])), np.int64) for n, p in pops.items()}
    for n, p in pops.items():
        if p["kind"] == "if":
            st[n] += arr[p["arrays"]["v_init"]]
    out, spikes = {}, {n: [] for n, p in pops.items() if p["kind"] in ("if", "maxpool")}
    prev_max = {n: np.zeros((B, p["units"]), np.int64) for n, p in pops.items() if p["kind"] == "maxpool"}
    for t in range(T):
        for p in doc["populations"]:
            n, a = p["name"], p.get("arrays", {})
            if p["kind"] == "input":
                x = x_int.reshape(B, -1).astype(np.int64)
                out[n] = x if p["mode"] == "every_step" else x * T * (t == 0)
                continue
            cur = np.zeros((B, p["compartments"]), np.int64) + arr[a["bias_every"]] + T * (t == 0) * arr[a["bias_first"]]
            for s in doc["projections"]:
                if s["target"] == n:
                    pre, post, w = (arr[s["arrays"][k]].astype(np.int64) for k in ("pre", "post", "weight"))
                    np.add.at(cur, (slice(None), post), out[s["source"]][:, pre] * w)
            if p["kind"] == "if":
                lim = 2 ** (p["membrane_bits"] - 1) - 1
                v = np.clip(st[n] + cur, -lim, lim)
                s_ = v >= arr[a["threshold"]]
                st[n] = v - s_ * arr[a["threshold"]] if p["reset"] == "subtract" else np.where(s_, 0, v)
                out[n] = s_.astype(np.int64)
            elif p["kind"] == "maxpool":
                st[n] += cur
                m = st[n].reshape(B, p["units"], p["slots"]).max(axis=2)
                out[n], prev_max[n] = m - prev_max[n], m
            else:
                st[n] += cur
            if n in spikes:
                spikes[n].append(out[n].copy())
    res = {n: np.stack(v) for n, v in spikes.items()}
    res.update({o["node"]: st[o["population"]] for o in doc["outputs"]})
    return res


@pytest.mark.parametrize("case", ["maxpool_counts", "residual_add", "membrane_saturation", "bias_modes"])
def test_numpy_only_reader_reproduces_the_reference(case, tmp_path):
    c = zoo_case(case)
    get_backend("netlist").lower(c.graph, tmp_path)
    got = simulate_with_numpy_only(tmp_path, c.x_int)
    ref = reference(c.graph, c.x_int, c.timesteps)
    for name, spikes in ref.spikes.items():
        np.testing.assert_array_equal(got[name], spikes.reshape(spikes.shape[0], spikes.shape[1], -1), err_msg=name)
    for name, acc in ref.output_acc.items():
        np.testing.assert_array_equal(got[name], acc.reshape(len(acc), -1), err_msg=name)


@pytest.fixture
def lowered(tmp_path) -> Path:
    c = zoo_case("conv_stride_padding")
    get_backend("netlist").lower(c.graph, tmp_path)
    return tmp_path


def _edit(folder: Path, change) -> None:
    doc = json.loads((folder / "netlist.json").read_text())
    change(doc)
    (folder / "netlist.json").write_text(json.dumps(doc))


def _edit_array(folder: Path, key: str, value: np.ndarray) -> None:
    arrays = dict(np.load(folder / "netlist.npz"))
    arrays[key] = value
    np.savez(folder / "netlist.npz", **arrays)


def test_self_description(lowered):
    doc = json.loads((lowered / "netlist.json").read_text())
    assert doc["format"] == "snn-int-if-netlist" and doc["version"] == 1
    assert doc["timesteps"] == 8 and doc["input"]["mode"] == "once" and "encoding" in doc["input"]
    assert [p["kind"] for p in doc["populations"]] == ["input", "if", "if", "output"]
    assert doc["bit_widths"]["weight"] <= 4 and doc["bit_widths"]["membrane"] == 24


def read(folder: Path):
    from snncompile_netlist import read_netlist
    return read_netlist(folder)


@pytest.mark.parametrize("change,words", [
    (lambda d: d.update(version=7), ["version 7", "reads version 1"]),
    (lambda d: d.update(format="other"), ["'format' must be"]),
    (lambda d: d["populations"][1].update(reset="sometimes"), ["population 1", "reset 'sometimes'"]),
    (lambda d: d["populations"][1].update(shape=[4, 4, 4]), ["population 1", "does not hold"]),
    (lambda d: d["populations"][1].pop("membrane_bits"), ["missing field 'membrane_bits'"]),
    (lambda d: d["projections"][0].update(weight_bits=2), ["projection 0", "out of range for 2-bit"]),
    (lambda d: d["projections"][0].update(target="ghost"), ["unknown population 'ghost'"]),
    (lambda d: d["projections"][1].update(synapses=3), ["projection 1", "has shape"]),
    (lambda d: d["populations"][1].update(threshold_bits=1), ["exceeds the declared threshold_bits"]),
])
def test_hand_edited_json_is_rejected_clearly(lowered, change, words):
    _edit(lowered, change)
    with pytest.raises(ArtifactError) as e:
        read(lowered)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "netlist.json" in str(e.value)


def test_bad_arrays_are_rejected(lowered):
    doc = json.loads((lowered / "netlist.json").read_text())
    key = doc["projections"][0]["arrays"]["pre"]
    n = doc["projections"][0]["synapses"]
    _edit_array(lowered, key, np.full(n, 10**6, np.int64))
    with pytest.raises(ArtifactError, match="presynaptic index out of range"):
        read(lowered)
    _edit_array(lowered, key, np.zeros(n, np.float32))
    with pytest.raises(ArtifactError, match="must hold integers"):
        read(lowered)
    (lowered / "netlist.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="cannot read"):
        read(lowered)
    (lowered / "netlist.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read(lowered)
    (lowered / "netlist.json").unlink()
    with pytest.raises(ArtifactError, match="holds no netlist"):
        read(lowered)

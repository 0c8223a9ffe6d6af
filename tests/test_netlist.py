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
                    cur += apply_numpy_only(s, arr, out[s["source"]], p["compartments"])
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


def apply_numpy_only(e: dict, arr, x: np.ndarray, n_out: int) -> np.ndarray:
    """One projection's current, (B, n_out), from its source's outputs x (B, units), as
    docs/netlist.md defines each kind."""
    B = len(x)
    if e["kind"] == "synapses":
        pre, post, w = (arr[e["arrays"][k]].astype(np.int64) for k in ("pre", "post", "weight"))
        cur = np.zeros((B, n_out), np.int64)
        np.add.at(cur, (slice(None), post), x[:, pre] * w)
        return cur
    if e["kind"] == "dense":
        w = arr[e["arrays"]["weight"]].astype(np.int64)
        z = x if e["pre"] is None else apply_numpy_only(e["pre"], arr, x, w.shape[1])
        return z @ w.T
    k = arr[e["arrays"]["kernel"]].astype(np.int64)
    (c, h, wd), (co, ho, wo) = e["in_shape"], e["out_shape"]
    (sy, sx), (dy, dx), (pt, pl), g = e["stride"], e["dilation"], e["pad"], e["groups"]
    big = np.zeros((B, c, pt + h + (ho * sy + k.shape[2] * dy), pl + wd + (wo * sx + k.shape[3] * dx)), np.int64)
    big[:, :, pt:pt + h, pl:pl + wd] = x.reshape(B, c, h, wd)
    y = np.zeros((B, co, ho, wo), np.int64)
    cin_g, per = k.shape[1], co // g
    for u in range(k.shape[2]):
        for v in range(k.shape[3]):
            win = big[:, :, u * dy:u * dy + ho * sy:sy, v * dx:v * dx + wo * sx:sx]  # (B, c, ho, wo)
            for gi in range(g):
                y[:, gi * per:(gi + 1) * per] += np.einsum("oi,bihw->bohw", k[gi * per:(gi + 1) * per, :, u, v],
                                                           win[:, gi * cin_g:(gi + 1) * cin_g])
    return y.reshape(B, -1)


@pytest.mark.parametrize("case", ["maxpool_counts", "residual_add", "membrane_saturation", "bias_modes",
                                  "conv_stride_padding", "conv_groups_dilation", "avgpool_sum", "concat",
                                  "reshape_pad"])
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
    assert doc["format"] == "snn-int-if-netlist" and doc["version"] == 2
    assert [p["kind"] for p in doc["projections"]] == ["conv", "conv", "dense"]
    assert doc["timesteps"] == 8 and doc["input"]["mode"] == "once" and "encoding" in doc["input"]
    assert [p["kind"] for p in doc["populations"]] == ["input", "if", "if", "output"]
    assert doc["bit_widths"]["weight"] <= 4 and doc["bit_widths"]["membrane"] == 24


def read(folder: Path):
    from snncompile_netlist import read_netlist
    return read_netlist(folder)


@pytest.mark.parametrize("change,words", [
    (lambda d: d.update(version=7), ["version 7", "reads version 2"]),
    (lambda d: d.update(format="other"), ["'format' must be"]),
    (lambda d: d["populations"][1].update(reset="sometimes"), ["population 1", "reset 'sometimes'"]),
    (lambda d: d["populations"][1].update(shape=[4, 4, 4]), ["population 1", "does not hold"]),
    (lambda d: d["populations"][1].pop("membrane_bits"), ["missing field 'membrane_bits'"]),
    (lambda d: d["projections"][0].update(weight_bits=2), ["projection 0", "out of range for 2-bit"]),
    (lambda d: d["projections"][0].update(target="ghost"), ["unknown population 'ghost'"]),
    (lambda d: d["projections"][1].update(stride=[0, 1]), ["projection 1", "conv: expected two integers >= 1"]),
    (lambda d: d["projections"][1].update(groups=3), ["projection 1", "does not fit"]),
    (lambda d: d["projections"][1].update(out_shape=[5, 2, 2]), ["projection 1", "does not fit"]),
    (lambda d: d["projections"][1].update(kind="sparse"), ["projection 1", "kind 'sparse' is not one of"]),
    (lambda d: d["projections"][2]["arrays"].update(weight="nope"), ["projection 2", "'nope'", "missing"]),
    (lambda d: d["populations"][1].update(threshold_bits=1), ["exceeds the declared threshold_bits"]),
])
def test_hand_edited_json_is_rejected_clearly(lowered, change, words):
    _edit(lowered, change)
    with pytest.raises(ArtifactError) as e:
        read(lowered)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "netlist.json" in str(e.value)


def test_bad_arrays_are_rejected(lowered, tmp_path):
    doc = json.loads((lowered / "netlist.json").read_text())
    _edit_array(lowered, doc["projections"][0]["arrays"]["kernel"], np.zeros((3, 1, 3, 3), np.float32))
    with pytest.raises(ArtifactError, match="must hold integers"):
        read(lowered)
    c = zoo_case("avgpool_sum")  # its last projection is explicit synapses (overlapping pool, then dense)
    listed = tmp_path / "listed"
    listed.mkdir()
    get_backend("netlist").lower(c.graph, listed)
    pr = json.loads((listed / "netlist.json").read_text())["projections"][-1]
    assert pr["kind"] == "synapses"
    _edit_array(listed, pr["arrays"]["pre"], np.full(pr["synapses"], 10**6, np.int64))
    with pytest.raises(ArtifactError, match="presynaptic index out of range"):
        read(listed)
    _edit_array(listed, pr["arrays"]["pre"], np.zeros(pr["synapses"] + 1, np.int64))
    with pytest.raises(ArtifactError, match="has shape"):
        read(listed)
    (lowered / "netlist.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="cannot read"):
        read(lowered)
    (lowered / "netlist.json").write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read(lowered)
    (lowered / "netlist.json").unlink()
    with pytest.raises(ArtifactError, match="holds no netlist"):
        read(lowered)

"""Reference networks (issue #7): each builds, offloads every attention and matches onnxruntime;
the benchmark runner produces its table and JSON for one cell of the suite."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import tvm_tiny
from tvm_tiny.bench import main as bench_main
from tvm_tiny.testing.networks import NETWORKS, build_network, network_inputs

# float32 through two layers of LayerNorm/GELU/softmax: observed <= 4e-7 relative to max |ref|.
NETWORK_RTOL = 1e-4


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_network_offloads_every_attention_and_matches_onnxruntime(name):
    spec = NETWORKS[name]
    model = build_network(name)
    inputs = network_inputs(model)
    reference = ort.InferenceSession(model.SerializeToString()).run(
        None, {model.graph.input[0].name: inputs[0]})[0]
    lib = tvm_tiny.build(model, name=f"net_{name}")
    offloaded = lib.metadata["offloaded"]
    assert len(offloaded) == spec.layers, lib.metadata["not_offloaded"]
    assert {(e["seq"], e["embed"], e["heads"], e["proj"]) for e in offloaded} == {
        (spec.seq, spec.embed, spec.heads, spec.proj)}
    (output,) = lib.run(*inputs)
    error = np.abs(output - reference).max() / np.abs(reference).max()
    assert error <= NETWORK_RTOL, f"{name}: relative error {error:.2e}"


@pytest.mark.emulator
def test_int8_network_offloads_int8_attention_and_runs_on_board():
    """Also a regression test: its fused QDQ kernels have names longer than the instruction
    counter's label buffer, which run_on_board must still match to the kernel calls."""
    model = build_network("deeploy_attention", dtype="int8")
    lib = tvm_tiny.build(model, target="stm32l4", name="net_int8")
    assert [e["dtype"] for e in lib.metadata["offloaded"]] == ["int8"]
    assert max(len(s["name"]) for s in lib.metadata["steps"]) > 90
    (x,) = network_inputs(model)
    run = lib.run_on_board(x)
    np.testing.assert_array_equal(run.outputs[0], lib.run(x)[0])
    assert set(run.per_kernel) == {s["name"] for s in lib.metadata["steps"]}


@pytest.mark.emulator
def test_bench_runner_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert bench_main(["--networks", "deeploy_attention", "--boards", "stm32l4", "--dtypes",
                       "float32", "--json", str(out), "--plot", str(tmp_path / "r.png")]) == 0
    printed = capsys.readouterr().out
    assert "instructions, not cycles" in printed and "| deeploy_attention | stm32l4 |" in printed
    (row,) = json.loads(out.read_text())["rows"]
    assert row["tiny_total"] > 0 and row["tvm_total"] > row["tiny_total"]
    assert row["offloaded"] == 1 and (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.emulator
def test_report_profile_lists_kernel_calls_with_shares(capsys):
    from pathlib import Path

    from tvm_tiny.cli import main as cli_main

    model = Path(__file__).parent / "data" / "encoder_helper_relu.onnx"
    assert cli_main(["report", str(model), "--target", "stm32l4", "--profile"]) == 0
    printed = capsys.readouterr().out
    assert "instructions, not cycles" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().endswith("%")]
    kernels = {row[1]: float(row[-1].rstrip("%")) for row in rows if row[0].isdigit()}
    assert kernels.get("tvm_tiny_mhsa_0", 0) > 0
    shares = [float(row[-1].rstrip("%")) for row in rows]
    assert 99.0 <= sum(shares) <= 101.0, shares  # every instruction of the run is accounted for

"""Hybrid Neural-ODE + MHSA network (issue #8, ``tvm_tiny.testing.hybrid``): the shared-weight ODE
block's convolutions go through TVM in float32 and to the int8 conv kernel in int8, the MHSA is
offloaded, float32 and int8 match onnxruntime, and the emulated boards agree with the host and
profile both kinds of kernel."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tvm_tiny
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing.hybrid import SIZES, hybrid_ode, hybrid_ode_int8, parameter_count

# float32 through 7 convolutions, LayerNorm, GELU and softmax: observed 2.4e-7 relative to
# max |ref| (same margin argument as tests/conftest.py OUTPUT_RTOL).
FLOAT_RTOL = 1e-4
# int8 vs onnxruntime, in output quantization steps (scale of the final DequantizeLinear).
# Measured: on these 4 inputs 0 steps against ORT's reference kernels (optimizations off) and
# at most 1 against its default (optimized) session; on 32 other seeded inputs at most 2 steps
# against both (mean of the per-input max: 0.81 vs reference, 1.25 vs optimized).
INT8_MAX_STEPS = 3
# Board vs host float32: same C, only libm differs (picolibc vs glibc), see test_boards.py.
BOARD_ATOL = 1e-5
BOARDS = ["stm32h7", "gap9"]


def _inputs(count: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)
            for i in range(count)]


def _ort(model: onnx.ModelProto, x: np.ndarray, optimized: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _output_scale(qdq: onnx.ModelProto) -> float:
    (node,) = [n for n in qdq.graph.node if n.output[0] == "y"]
    assert node.op_type == "DequantizeLinear"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer}
    return float(inits[node.input[1]])


@pytest.fixture(scope="session")
def float_model() -> onnx.ModelProto:
    return hybrid_ode()


@pytest.fixture(scope="session")
def int8_model() -> onnx.ModelProto:
    return hybrid_ode_int8()


@pytest.fixture(scope="session")
def host_libs(float_model, int8_model) -> dict[str, tvm_tiny.TinyModule]:
    return {"float32": tvm_tiny.build(float_model, name="hybrid_f32"),
            "int8": tvm_tiny.build(int8_model, name="hybrid_s8")}


def test_builder_is_deterministic_and_shares_ode_weights(float_model):
    assert hybrid_ode().SerializeToString() == float_model.SerializeToString()
    assert hybrid_ode(seed=1).SerializeToString() != float_model.SerializeToString()
    steps = SIZES["small"].steps
    convs = [n for n in float_model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1 + 2 * steps  # stem + two convs per Euler step
    ode_weights = {n.input[1] for n in convs[1:]}
    assert ode_weights == {"ode.conv1.weight", "ode.conv2.weight"}  # the same initializers
    assert 20_000 < parameter_count(float_model) < 40_000
    assert 650_000 < parameter_count(hybrid_ode(size="tinyformer")) < 750_000
    assert float_model.opset_import[0].version == 17


def test_float32_offloads_mhsa_and_matches_onnxruntime(host_libs, float_model):
    lib = host_libs["float32"]
    (entry,) = lib.metadata["offloaded"]
    assert (entry["seq"], entry["embed"], entry["heads"], entry["dtype"]) == (64, 32, 4,
                                                                              "float32")
    steps = [s["name"] for s in lib.metadata["steps"]]
    assert sum("conv2d" in s for s in steps) == 1 + 2 * SIZES["small"].steps  # TVM's kernels
    for x in _inputs():
        ref = _ort(float_model, x)
        (y,) = lib.run(x)
        assert np.abs(y - ref).max() <= FLOAT_RTOL * np.abs(ref).max()


def test_int8_offloads_int8_mhsa_and_stays_within_steps(host_libs, int8_model):
    lib = host_libs["int8"]
    assert [e["dtype"] for e in lib.metadata["offloaded"]] == ["int8"]
    # Every conv offloaded to tt_conv_s8, the ODE block's two weight arrays stored once each.
    convs = lib.metadata["conv_s8"]
    assert len(convs) == 1 + 2 * SIZES["small"].steps
    assert len({e["shared_weights"]["symbol"] for e in convs}) == 3
    step = _output_scale(int8_model)
    for x in _inputs():
        (y,) = lib.run(x)
        exact = np.abs(y - _ort(int8_model, x, optimized=False)).max() / step
        optimized = np.abs(y - _ort(int8_model, x)).max() / step
        assert max(exact, optimized) <= INT8_MAX_STEPS + 1e-3, (exact, optimized)


def _require(board: str) -> None:
    spec = get_board(board)
    assert spec.toolchain is not None and spec.emulator is not None
    for tool in (spec.toolchain.cc, spec.emulator.binary, "make", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")


@pytest.mark.emulator
@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("board", BOARDS)
def test_board_matches_host_and_profiles_mhsa_and_convs(board, dtype, float_model, int8_model):
    _require(board)
    model = float_model if dtype == "float32" else int8_model
    lib = tvm_tiny.build(model, target=board, name=f"hybrid_{dtype}")
    x = _inputs(1)[0]
    run = lib.run_on_board(x)
    (host,) = lib.run(x)
    (out,) = run.outputs
    assert out.shape == host.shape and out.dtype == host.dtype
    if dtype == "int8":
        np.testing.assert_array_equal(out, host)
    else:
        np.testing.assert_allclose(out, host, rtol=0, atol=BOARD_ATOL)
    total = sum(run.per_kernel.values())
    mhsa = run.per_kernel.get("tvm_tiny_mhsa_0", 0)
    conv = sum(v for k, v in run.per_kernel.items() if "conv2d" in k or "conv_s8" in k)
    assert run.instructions > 0 and mhsa > 0 and conv > 0
    assert 0 < mhsa / total < 1 and 0 < conv / total < 1

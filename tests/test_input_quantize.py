"""The float input's quantize (integerize/quantize.py): onnxruntime's QuantizeLinear exactly.

onnxruntime divides by the scale in float32 and rounds ties to even; the lowered quantize must
give the same int8 on every input, ties and saturation included, and the built int8 networks
must no longer call the C library's rounding per element.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import relax

import tvm_tiny
from tvm_tiny.integerize.quantize import lower_input_quantizes, quantize_half_even_te
from tvm_tiny.ir.quant import QParams
from tvm_tiny.reference.integer import quantize_half_even
from tvm_tiny.testing.accuracy import compare_with_onnxruntime, reference_session
from tvm_tiny.testing.networks import build_network, network_inputs

N = 2048


def _lowered(qp: QParams) -> relax.VirtualMachine:
    x = relax.Var("x", relax.type.TensorType((N,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            scale = relax.const(np.array([qp.scale], np.float32))
            out = bb.emit_output(bb.emit_te(lambda t, s: quantize_half_even_te(t, s, qp), x,
                                            scale))
        bb.emit_func_output(out)
    return relax.VirtualMachine(relax.build(bb.get(), "llvm"), tvm.cpu())


def _inputs(qp: QParams, rng: np.random.Generator) -> np.ndarray:
    """Ties of every kind (exact halves of the scale), saturating values, zeros, and noise."""
    k = np.arange(-400, 400, dtype=np.float64)
    ties = ((k + 0.5) * qp.scale).astype(np.float32)
    ties = ties[np.float32(ties) / np.float32(qp.scale) % 1 == 0.5]
    extremes = np.float32([1e30, -1e30, 1e20, -1e20, 0.0, -0.0, 1e-30, -1e-30])
    noise = (rng.standard_normal(N) * 200 * qp.scale).astype(np.float32)
    return np.concatenate([ties, extremes, noise])[:N]


@settings(max_examples=20, deadline=None)
@given(scale=st.sampled_from([0.5, 0.25, 0.03125, 0.1, 0.033155214, 1.7]),
       zero=st.integers(-128, 127), seed=st.integers(0, 2**16))
def test_lowered_quantize_equals_the_golden_ties_to_even(scale: float, zero: int,
                                                         seed: int) -> None:
    qp = QParams(scale, zero)
    x = _inputs(qp, np.random.default_rng(seed))
    got = _lowered(qp)["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, quantize_half_even(x, qp))


def test_golden_quantize_is_onnxruntimes() -> None:
    """The golden model against onnxruntime's QuantizeLinear on the same values."""
    from onnx import TensorProto, helper, numpy_helper

    qp = QParams(0.25, 3)
    x = _inputs(qp, np.random.default_rng(0))
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [N])],
        [numpy_helper.from_array(np.array(qp.scale, np.float32), "s"),
         numpy_helper.from_array(np.array(qp.zero_point, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    want = reference_session(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize_half_even(x, qp), want)


def _quantize_module(scale: np.ndarray) -> tvm.IRModule:
    x = relax.Var("x", relax.type.TensorType((2, 4), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            zero = np.zeros(scale.shape, np.int8)
            q = bb.emit(relax.op.quantize(x, relax.const(scale), relax.const(zero), axis=0,
                                          out_dtype="int8"))
            out = bb.emit_output(relax.op.astype(q, "int32"))
        bb.emit_func_output(out)
    return bb.get()


def test_only_per_tensor_int8_input_quantizes_are_lowered() -> None:
    per_channel = _quantize_module(np.float32([0.1, 0.2]))
    same, count = lower_input_quantizes(per_channel)
    assert count == 0 and same.same_as(per_channel)
    per_tensor = _quantize_module(np.float32(0.1))
    lowered, count = lower_input_quantizes(per_tensor)
    assert count == 1 and "R.quantize" not in lowered["main"].script()


@pytest.mark.parametrize("name", ["deeploy_attention", "ecgformer"])
def test_int8_networks_quantize_their_input_without_roundf(name: str) -> None:
    model = build_network(name, "int8")
    lib = tvm_tiny.build(model, target="host", name=f"q_{name}")
    sources = "".join(text for path, text in lib.files.items() if path.endswith("_tir.c"))
    assert "quantize_half_even" in sources and "roundf" not in sources
    stats = compare_with_onnxruntime(model, lib.run, [network_inputs(model, seed=s)
                                                     for s in range(3)])
    assert stats.max_steps <= 4, stats.summary()

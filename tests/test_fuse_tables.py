"""fuse_lookup_tables: integer chains that are a function of one int8 tensor become one table.

The exported GELU (``x * 0.5 * (1 + erf(x / sqrt 2))`` with a quantization point after every
op) is the case that matters: four integer steps, one of them a diamond (the multiply reads
``x`` and the table of ``x``). The fused module must compute exactly the integers of the
unfused one (both run on the Relax VM over every int8 value), and a chain of two tensors (a
residual) or with a per-channel constant must be left alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from onnx import helper, numpy_helper
from test_integerize import ALL_INT8, QIN, QOUT, grid, ort_int8, qdq_model, steps
from tvm import relax

from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.integerize.driver import IntegerizeQDQ, IOQuantization, make_io_int8
from tvm_tiny.integerize.fuse_tables import fuse_lookup_tables
from tvm_tiny.ir.quant import QParams
from tvm_tiny.partition.partitioner import every_int8_weight
from tvm_tiny.partition.qdq import FoldConstantExceptInt8Weights

QMID = QParams(0.04, 7)


def _c(value: float, name: str) -> object:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _q(src: str, dst: str, tag: str) -> list:
    """``dst = DQ(Q(src))`` on QMID (an exporter's quantization point after an op)."""
    return [helper.make_node("QuantizeLinear", [src, f"{tag}_s", f"{tag}_z"], [f"{dst}_q"]),
            helper.make_node("DequantizeLinear", [f"{dst}_q", f"{tag}_s", f"{tag}_z"], [dst])]


def _mid(tag: str) -> list:
    return [_c(QMID.scale, f"{tag}_s"),
            numpy_helper.from_array(np.array(QMID.zero_point, np.int8), f"{tag}_z")]


def gelu_qdq(shape: tuple[int, ...]) -> object:
    """GELU's Erf form as onnxruntime's quantizer exports it: a quantization point per op."""
    body = [helper.make_node("Div", ["x_dq", "sqrt2"], ["a"]), *_q("a", "a_dq", "qa"),
            helper.make_node("Erf", ["a_dq"], ["b"]), *_q("b", "b_dq", "qb"),
            helper.make_node("Add", ["b_dq", "one"], ["c"]), *_q("c", "c_dq", "qc"),
            helper.make_node("Mul", ["x_dq", "c_dq"], ["d"]), *_q("d", "d_dq", "qd"),
            helper.make_node("Mul", ["d_dq", "half"], ["f"])]
    inits = [_c(math.sqrt(2.0), "sqrt2"), _c(1.0, "one"), _c(0.5, "half"),
             *_mid("qa"), *_mid("qb"), *_mid("qc"), *_mid("qd")]
    return qdq_model(body, {"x": (shape, QIN)}, shape, QOUT, inits)


def _integerized(model: object, fuse: bool) -> tvm.IRModule:
    mod, _ = to_relax(model)
    mod = FoldConstantExceptInt8Weights(every_int8_weight)(mod)
    passed = IntegerizeQDQ(fuse_tables=fuse)
    mod = make_io_int8(passed(mod), IOQuantization())
    assert passed.not_integerized == []
    return mod


def _run(mod: tvm.IRModule, *xs: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(relax.build(mod, "llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in xs]).numpy()


def test_exported_gelu_becomes_one_table_with_the_same_integers() -> None:
    model = gelu_qdq((256,))
    fused, unfused = _integerized(model, True), _integerized(model, False)
    assert unfused.script().count("R.take") >= 3 and "R.multiply" in unfused.script()
    script = fused["main"].script()
    assert script.count("R.take") == 1 and "R.multiply" not in script, script
    np.testing.assert_array_equal(_run(fused, ALL_INT8), _run(unfused, ALL_INT8))
    # and still what onnxruntime's reference computes, within the rules' one step
    assert steps(_run(fused, ALL_INT8), ort_int8(model, {"x": QIN}, QOUT, x=ALL_INT8)).max() <= 1


@pytest.mark.parametrize("shape", [(4, 80), (2, 3, 16)])
def test_fused_gelu_is_exact_on_any_shape(shape: tuple[int, ...]) -> None:
    model = gelu_qdq(shape)
    x = grid(shape, 3)
    np.testing.assert_array_equal(_run(_integerized(model, True), x),
                                  _run(_integerized(model, False), x))


def test_a_function_of_two_tensors_is_not_a_table() -> None:
    """``y = x + w`` of two int8 inputs (a residual) is a function of two tensors: left alone."""
    body = [helper.make_node("Add", ["x_dq", "w_dq"], ["f"])]
    model = qdq_model(body, {"x": ((4, 8), QIN), "w": ((4, 8), QMID)}, (4, 8), QOUT)
    mod = _integerized(model, False)
    same, count = fuse_lookup_tables(mod)
    assert count == 0 and same.same_as(mod)


def test_a_per_channel_constant_is_not_a_table() -> None:
    """``x * c`` with c per channel depends on the position, not only on x."""
    scale = numpy_helper.from_array(np.linspace(0.5, 2.0, 8).astype(np.float32), "c")
    body = [helper.make_node("Mul", ["x_dq", "c"], ["m"]), *_q("m", "m_dq", "qm"),
            helper.make_node("Relu", ["m_dq"], ["f"])]
    model = qdq_model(body, {"x": ((4, 8), QIN)}, (4, 8), QOUT, [scale, *_mid("qm")])
    mod = _integerized(model, False)
    _, count = fuse_lookup_tables(mod)
    assert count == 0

"""MHSA descriptors: read shape, weights and scale out of an offloaded ``tvm_tiny.mhsa`` function.

The partitioner only offloads the canonical chain (``patterns.make_mhsa_pattern``), so the
descriptor is read by matching that same pattern inside the composite function and taking the
annotated constants; nothing is inferred from names or positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.ir.mhsa import MhsaShape, MhsaWeights
from tvm_tiny.ir.quant import MhsaInt8Params, QParams, QWeight
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.partition.layout_trace import per_tensor_qparams
from tvm_tiny.partition.partitioner import composite_of as composite_function_of
from tvm_tiny.partition.partitioner import mhsa_functions
from tvm_tiny.partition.patterns import (
    MHSA_COMPOSITE,
    MHSA_S8_COMPOSITE,
    make_mhsa_pattern,
    make_mhsa_s8_pattern,
)


@dataclass(frozen=True)
class MhsaDescriptor:
    """Everything the code generator needs to instantiate one MHSA kernel.

    ``weights`` are float (dequantized for int8, where ``quant`` holds the integer side).
    """

    symbol: str
    shape: MhsaShape
    weights: MhsaWeights
    dtype: DType
    quant: MhsaInt8Params | None = None


_COMPOSITES = (MHSA_COMPOSITE, MHSA_S8_COMPOSITE)


def composite_of(func: relax.Function) -> relax.Function:
    """The ``tvm_tiny.mhsa``/``tvm_tiny.mhsa_s8`` composite an offloaded wrapper holds."""
    return composite_function_of(func, *_COMPOSITES)


def match_composite(composite: relax.Function, pattern: DFPattern, symbol: str, what: str
                    ) -> dict[DFPattern, relax.Expr]:
    """The match of ``pattern`` on the result of the composite function ``composite`` (the
    expressions by pattern node), or CodegenError "'symbol' is not ``what``". Every descriptor
    (MHSA here, ``codegen.linear_s8``, ``codegen.conv_s8``) reads its offloaded function this
    way: the pattern the partitioner offloaded it by, matched again on its bindings, so the
    code generator reads what the check read."""
    var2val = {b.var: b.value for block in composite.body.blocks for b in block.bindings}
    result = composite.body.body
    matched = pattern.extract_matched_expr(var2val.get(result, result), var2val)
    if matched is None:
        raise CodegenError(f"'{symbol}' is not {what}")
    return matched


def describe_mhsa(func: relax.Function, symbol: str) -> MhsaDescriptor:
    """Extract the :class:`MhsaDescriptor` of an offloaded function (see module docstring)."""
    composite = composite_of(func)
    if composite.attrs.get("Composite") == MHSA_S8_COMPOSITE:
        return _describe_mhsa_s8(composite, symbol)
    pattern, annotations = make_mhsa_pattern()
    matched = match_composite(composite, pattern, symbol, "the canonical tvm_tiny.mhsa chain")

    def const(name: str) -> np.ndarray | None:
        expr = matched.get(annotations[name])
        if expr is None:
            return None
        if not is_constant(expr):
            raise CodegenError(f"'{symbol}': {name} is not a constant")
        return constant_value(expr)

    x_shape = static_shape(matched[annotations["x"]])
    probs_shape = static_shape(matched[annotations["probs"]])
    if x_shape is None or probs_shape is None:
        raise CodegenError(f"'{symbol}': MHSA shapes are not static")
    wq = const("wq")
    heads, seq = probs_shape[1], probs_shape[2]
    weights = MhsaWeights(
        wq=wq, wk=const("wk"), wv=const("wv"), wo=const("wo"),
        bq=const("bq"), bk=const("bk"), bv=const("bv"), bo=const("bo"),
        scale=float(const("scale").reshape(-1)[0]),
    )
    shape = MhsaShape(seq=seq, embed=x_shape[-1], heads=heads, proj=wq.shape[1] // heads,
                      out_features=weights.wo.shape[1])
    weights.check_shape(shape)
    dtype = DType(str(matched[annotations["x"]].ty.dtype))
    return MhsaDescriptor(symbol, shape, weights, dtype)


def _describe_mhsa_s8(composite: relax.Function, symbol: str) -> MhsaDescriptor:
    """Read the canonical QDQ chain: quantization at each point, int8 weights, float biases."""
    pattern, annotations = make_mhsa_s8_pattern()
    matched = match_composite(composite, pattern, symbol, "the canonical tvm_tiny.mhsa_s8 chain")

    def node(name: str) -> relax.Expr:
        return matched[annotations[name]]

    def point(name: str, call: relax.Expr | None = None) -> QParams:
        call = node(name) if call is None else call
        params = per_tensor_qparams(call)
        if params is None:
            raise CodegenError(f"'{symbol}': {name} is not quantized per tensor")
        dtype = str(call.attrs.out_dtype) if name != "x" else str(call.args[0].ty.dtype)
        try:
            return QParams(params[0], params[1], dtype)
        except ValueError as why:
            raise CodegenError(f"'{symbol}': {name}: {why}") from why

    def weight(name: str) -> QWeight:
        call = node(name)
        values, scale = constant_value(call.args[0]), constant_value(call.args[1])
        columns = values.shape[1]
        return QWeight(values, np.broadcast_to(scale.reshape(-1), (columns,)).astype(
            np.float32))

    def bias(name: str) -> np.ndarray | None:
        expr = matched.get(annotations[name])
        return None if expr is None else constant_value(expr).reshape(-1).astype(np.float32)

    def optional_point(name: str) -> QParams | None:
        return point(name) if matched.get(annotations[name]) is not None else None

    bq, bk, bv, bo = bias("bq"), bias("bk"), bias("bv"), bias("bo")
    scale = float(constant_value(node("scale")).reshape(-1)[0])
    quant = MhsaInt8Params(
        x=point("x"), q=point("q"), k=point("k"), v=point("v"), scores=point("scores"),
        probs=point("probs"), ctx=point("ctx"), y=point("y", node("root")),
        wq=weight("wq"), wk=weight("wk"), wv=weight("wv"), wo=weight("wo"),
        bq=bq, bk=bk, bv=bv, bo=bo, scale=scale,
        q_acc=optional_point("q_acc"), k_acc=optional_point("k_acc"),
        v_acc=optional_point("v_acc"), o_acc=optional_point("o_acc"),
        qk_acc=optional_point("qk_acc"),
    )

    def dequantized(w: QWeight) -> np.ndarray:
        return (w.values.astype(np.float32) * w.scale).astype(np.float32)

    x_shape = static_shape(node("xq"))
    heads = static_shape(node("scores"))[1]
    weights = MhsaWeights(
        wq=dequantized(quant.wq), wk=dequantized(quant.wk), wv=dequantized(quant.wv),
        wo=dequantized(quant.wo), bq=bq, bk=bk, bv=bv, bo=bo, scale=scale,
    )
    shape = MhsaShape(seq=x_shape[-2], embed=x_shape[-1], heads=heads,
                      proj=quant.wq.values.shape[1] // heads,
                      out_features=quant.wo.values.shape[1])
    weights.check_shape(shape)
    return MhsaDescriptor(symbol, shape, weights, DType.INT8, quant)


def offloaded_symbol(func: relax.Function) -> str:
    """The ``global_symbol`` of an offloaded function."""
    symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
    if symbol is None:
        raise CodegenError("offloaded function has no global_symbol")
    return str(symbol)


def descriptors_of(mod: tvm.IRModule) -> list[MhsaDescriptor]:
    """Descriptors of every offloaded MHSA of a partitioned module, in call order."""
    return [describe_mhsa(mod[gv], offloaded_symbol(mod[gv])) for gv in mhsa_functions(mod)]

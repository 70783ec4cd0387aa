"""Integer rules of elementwise ops: lookup tables, clamps, and fixed-point add / multiply.

- Any function of ONE int8 tensor (a single op such as Erf, Sigmoid, Tanh, Gelu, Exp, or a chain
  of them with scalar constants, such as ``erf(x / 1.414)``, ``x * sigmoid(x)``, HardSwish)
  becomes a 256-entry table: the region is evaluated offline in float32 on every int8 input,
  exactly as the QDQ graph computes it (:func:`tvm_tiny.reference.integer.lookup_table`), and
  applied with ``R.take`` (the int8 value reinterpreted as uint8 indexes a table stored in that
  order, so the lookup is one cast and one load). Exact with respect to the QDQ semantics, up
  to the float32 rounding of the op itself (``math.erf`` here, onnxruntime's own polynomial).
- Relu and Clip on an unchanged quantization become clamps of the int8 values.
- Add, Subtract and Multiply of two quantized tensors, and of one with a constant tensor (a
  bias, a per-channel scale), become int32 fixed-point arithmetic with one requantization
  (:mod:`tvm_tiny.integerize.requant`), as :mod:`tvm_tiny.reference.integer` states.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.integerize.requant import requantize
from tvm_tiny.integerize.rule import NotInteger, OpMatch, QConst, QTensor, rule
from tvm_tiny.ir.quant import QParams
from tvm_tiny.ir.relax_compat import constant_value, is_constant
from tvm_tiny.reference.integer import (
    add_multipliers,
    lookup_table,
    offset_shift,
    quantize_half_even,
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _prim(expr: relax.Expr) -> float:
    """The number of a prim value (an ``IntImm`` / ``FloatImm``) or constant argument (Clip's
    bounds)."""
    if isinstance(expr, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
        return float(expr.value)
    if is_constant(expr):
        return float(constant_value(expr))
    raise NotInteger(f"argument {expr} is not a constant number")


def _f32(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _gelu(x: np.ndarray) -> np.ndarray:
    x64 = np.asarray(x, np.float64)
    return _f32(0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0))))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    x64 = np.asarray(x, np.float64)
    return _f32(0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                          * (x64 + 0.044715 * x64**3))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return _f32(1.0 / (1.0 + np.exp(-np.asarray(x, np.float64))))


FloatOp = Callable[[relax.Call, list[np.ndarray]], np.ndarray]

FLOAT_OPS: dict[str, FloatOp] = {
    "relax.add": lambda _c, a: _f32(a[0] + a[1]),
    "relax.subtract": lambda _c, a: _f32(a[0] - a[1]),
    "relax.multiply": lambda _c, a: _f32(a[0] * a[1]),
    "relax.divide": lambda _c, a: _f32(a[0] / a[1]),
    "relax.maximum": lambda _c, a: _f32(np.maximum(a[0], a[1])),
    "relax.minimum": lambda _c, a: _f32(np.minimum(a[0], a[1])),
    "relax.power": lambda _c, a: _f32(np.power(a[0], a[1])),
    "relax.negative": lambda _c, a: _f32(-a[0]),
    "relax.abs": lambda _c, a: _f32(np.abs(a[0])),
    "relax.sqrt": lambda _c, a: _f32(np.sqrt(a[0])),
    "relax.rsqrt": lambda _c, a: _f32(1.0 / np.sqrt(np.asarray(a[0], np.float64))),
    "relax.exp": lambda _c, a: _f32(np.exp(np.asarray(a[0], np.float64))),
    "relax.log": lambda _c, a: _f32(np.log(np.asarray(a[0], np.float64))),
    "relax.erf": lambda _c, a: _f32(_erf(np.asarray(a[0], np.float64))),
    "relax.tanh": lambda _c, a: _f32(np.tanh(np.asarray(a[0], np.float64))),
    "relax.sigmoid": lambda _c, a: _sigmoid(a[0]),
    "relax.nn.gelu": lambda _c, a: _gelu(a[0]),
    "relax.nn.gelu_tanh": lambda _c, a: _gelu_tanh(a[0]),
    "relax.nn.silu": lambda _c, a: _f32(a[0] * _sigmoid(a[0])),
    "relax.nn.relu": lambda _c, a: _f32(np.maximum(a[0], 0)),
    "relax.nn.leakyrelu": lambda c, a: _f32(np.where(a[0] >= 0, a[0],
                                                     a[0] * np.float32(c.attrs.alpha))),
    "relax.clip": lambda c, a: _f32(np.clip(a[0], _prim(c.args[1]), _prim(c.args[2]))),
}
"""Relax elementwise op → its float32 numpy value (the ONNX op's arithmetic, transcendental
functions in float64 rounded once): what a lookup table tabulates."""

CLAMPS = ("relax.nn.relu", "relax.clip")


def quantized_leaves(match: OpMatch) -> list[QTensor]:
    """The distinct quantized tensors a region reads (one dequantize var may be read twice)."""
    seen: dict[int, QTensor] = {}
    for operand in match.leaves.values():
        if isinstance(operand, QTensor):
            seen.setdefault(id(operand), operand)
    return list(seen.values())


def is_lookup_region(match: OpMatch) -> bool:
    """Whether the region is one elementwise function of one quantized tensor: every op in
    :data:`FLOAT_OPS`, one quantized input, every other input a scalar constant, and the
    output shaped as the input (nothing broadcast across it)."""
    inputs = quantized_leaves(match)
    if len(inputs) != 1 or inputs[0].shape != match.output_shape:
        return False
    if not all(call.op.name in FLOAT_OPS for _, call in match.region):
        return False
    for operand in match.leaves.values():
        if isinstance(operand, QConst):
            operand = operand.real
        if isinstance(operand, np.ndarray) and operand.size != 1:
            return False
    return True


def evaluate_region(match: OpMatch, x: np.ndarray) -> np.ndarray:
    """The float32 value of the region when its one quantized input dequantizes to ``x``."""
    env: dict[relax.Expr, np.ndarray] = {}
    for leaf, operand in match.leaves.items():
        if isinstance(operand, QTensor):
            env[leaf] = x
        elif isinstance(operand, QConst):
            env[leaf] = _f32(operand.real)
        elif isinstance(operand, np.ndarray):
            env[leaf] = _f32(operand)

    def value(arg: relax.Expr) -> np.ndarray:
        if arg in env:
            return env[arg]
        if is_constant(arg):
            return _f32(constant_value(arg))
        if isinstance(arg, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
            return _f32(_prim(arg))
        raise NotInteger(f"cannot evaluate {type(arg).__name__} argument offline")

    for var, call in match.region:
        env[var] = FLOAT_OPS[call.op.name](call, [value(a) for a in call.args])
    return env[match.region[-1][0]]


def table_constant(table: np.ndarray) -> relax.Constant:
    """The int8[256] table in uint8 index order (``T[u] = table[int8(u) + 128]``)."""
    u = np.arange(256, dtype=np.int64)
    signed = np.where(u < 128, u, u - 256)
    return relax.const(np.asarray(table, np.int8)[signed + 128], "int8")


def apply_table(q: relax.Expr, table: np.ndarray) -> relax.Expr:
    """``table[q]`` of an int8 tensor: its bits as a uint8 index into :func:`table_constant`."""
    return relax.op.take(table_constant(table), relax.op.astype(q, "uint8"), axis=0, mode="fast")


def rescale(x: QTensor, qout: QParams) -> relax.Expr:
    """``quantize(dequantize(x), qout)``: ``x`` itself on an equal grid, else a table (exact)."""
    if x.qp == qout:
        return x.value
    return apply_table(x.value, lookup_table(lambda v: v, x.qp, qout))


def _clamp_bounds(match: OpMatch, qp: QParams) -> tuple[int, int]:
    lo, hi = qp.range
    call = match.region[0][1]
    low = 0.0 if call.op.name == "relax.nn.relu" else _prim(call.args[1])
    high = math.inf if call.op.name == "relax.nn.relu" else _prim(call.args[2])
    if low > -math.inf:
        lo = max(lo, int(quantize_half_even(np.float32(low), qp)))
    if high < math.inf:
        hi = min(hi, int(quantize_half_even(np.float32(high), qp)))
    return lo, hi


def lookup_table_rule(match: OpMatch) -> relax.Expr:
    """A lookup table of the region (a clamp for Relu / Clip on an unchanged quantization)."""
    if not is_lookup_region(match):
        raise NotInteger("not an elementwise function of one quantized input with scalar "
                         "constants")
    (x,) = quantized_leaves(match)
    if (len(match.region) == 1 and match.region[0][1].op.name in CLAMPS
            and x.qp == match.output):
        lo, hi = _clamp_bounds(match, x.qp)
        return relax.op.clip(x.value, lo, hi)
    table = lookup_table(lambda v: evaluate_region(match, v), x.qp, match.output)
    return apply_table(x.value, table)


rule(*[name for name in FLOAT_OPS if name not in (
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide")])(lookup_table_rule)


def _widened(x: QTensor) -> relax.Expr:
    """``x - zero_point`` as int32."""
    t = relax.op.astype(x.value, "int32")
    if x.qp.zero_point:
        t = relax.op.subtract(t, relax.const(np.int32(x.qp.zero_point), "int32"))
    return t


def _constant(operand: object) -> np.ndarray | None:
    if isinstance(operand, QConst):
        return operand.real.astype(np.float64)
    if isinstance(operand, np.ndarray):
        return operand.astype(np.float64)
    return None


def _check_shape(match: OpMatch, x: QTensor, c: np.ndarray) -> None:
    if np.broadcast_shapes(x.shape, c.shape) != x.shape:
        raise NotInteger(f"constant of shape {c.shape} broadcasts the input {x.shape}")


def _add_constant(match: OpMatch, x: QTensor, c: np.ndarray) -> relax.Expr:
    """``Q(DQ(x) + c)``: reference.integer.add_const_s8."""
    _check_shape(match, x, c)
    k = offset_shift(c, x.qp)
    offset = np.rint(c / x.qp.scale * 2.0**k).astype(np.int32)
    acc = relax.op.add(relax.op.left_shift(_widened(x), relax.const(np.int32(k), "int32")),
                       relax.const(offset, "int32"))
    return requantize(acc, x.qp.scale / (2.0**k * match.output.scale), match.output.zero_point)


def _multiply_constant(match: OpMatch, x: QTensor, c: np.ndarray) -> relax.Expr:
    """``Q(DQ(x) * c)``: reference.integer.multiply_const_s8 (elementwise multipliers)."""
    _check_shape(match, x, c)
    real = x.qp.scale * c / match.output.scale
    if np.any(np.abs(real) >= 2.0**30):
        raise NotInteger("requantization multiplier >= 2**30")
    return requantize(_widened(x), real, match.output.zero_point)


def _arith(match: OpMatch) -> relax.Expr:
    if is_lookup_region(match):
        return lookup_table_rule(match)
    a, b = match.operands[:2]
    name = match.name
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        if np.broadcast_shapes(a.shape, b.shape) != match.output_shape:
            raise NotInteger("operand shapes do not broadcast to the output")
        if name == "relax.multiply":
            acc = relax.op.multiply(_widened(a), _widened(b))
            real = a.qp.scale * b.qp.scale / match.output.scale
            return requantize(acc, real, match.output.zero_point)
        if name == "relax.divide":
            raise NotInteger("division of two quantized tensors")
        ma, mb, real = add_multipliers(a.qp, b.qp, match.output)
        ta = relax.op.multiply(_widened(a), relax.const(np.int32(ma), "int32"))
        tb = relax.op.multiply(_widened(b), relax.const(np.int32(mb), "int32"))
        acc = relax.op.subtract(ta, tb) if name == "relax.subtract" else relax.op.add(ta, tb)
        return requantize(acc, real, match.output.zero_point)
    for x, other, first in ((a, b, True), (b, a, False)):
        c = _constant(other)
        if not isinstance(x, QTensor) or c is None:
            continue
        if name == "relax.add":
            return _add_constant(match, x, c)
        if name == "relax.subtract" and first:
            return _add_constant(match, x, -c)
        if name == "relax.multiply":
            return _multiply_constant(match, x, c)
        if name == "relax.divide" and first:
            if np.any(c == 0):
                raise NotInteger("division by a constant with zeros")
            return _multiply_constant(match, x, 1.0 / c)
    raise NotInteger(f"{name} of {', '.join(type(o).__name__ for o in (a, b))}")


rule("relax.add", "relax.subtract", "relax.multiply", "relax.divide")(_arith)

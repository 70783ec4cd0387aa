"""numpy golden models of the integer rules of :mod:`tvm_tiny.integerize`, bit for bit.

Each function here computes, in numpy int64, exactly the integers the Relax a rule writes
computes once TVM compiles it; ``tests/test_integerize.py`` holds the two to each other and both
to onnxruntime's reference QDQ semantics. Two families:

- lookup tables (:func:`lookup_table`): any function of one int8 tensor, tabulated offline the
  way a QDQ graph computes it (ONNX ``DequantizeLinear`` in float32, the float op in float32,
  ``QuantizeLinear`` rounding half to even), so they are exact with respect to the graph;
- fixed-point arithmetic (:func:`add_s8`, :func:`multiply_s8`, :func:`matmul_s8`, ...): int32
  accumulators requantized once with the MHSA kernel's rounding (:func:`requantize_s8`), within
  one output step of the float graph.

No TVM import.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tvm_tiny.ir.quant import QParams, quantize_multiplier
from tvm_tiny.reference.mhsa_s8 import requantize

__all__ = [
    "ADD_SHIFT",
    "add_const_s8",
    "add_s8",
    "add_multipliers",
    "apply_lookup_table",
    "clamp_s8",
    "dequantize_f32",
    "lookup_table",
    "matmul_s8",
    "multiply_const_s8",
    "multiply_s8",
    "offset_shift",
    "quantize_half_even",
    "requantize_s8",
]

ADD_SHIFT = 21
"""Fraction bits of the input multipliers of :func:`add_s8`: ``2 * 255 * 2**21 < 2**31``, so the
int32 sum of two rescaled int8 differences cannot overflow, and the multipliers' rounding
(at most ``255 * 2**-22`` of a step) is far below the one rounding of the result."""


def dequantize_f32(q: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``float32(q - zero_point) * float32(scale)``, in float32."""
    diff = np.asarray(q, dtype=np.int32) - np.int32(qp.zero_point)
    return diff.astype(np.float32) * np.float32(qp.scale)


def quantize_half_even(x: np.ndarray, qp: QParams) -> np.ndarray:
    """ONNX ``QuantizeLinear`` as onnxruntime computes it: ``nearbyint(x / scale)`` in float32
    (ties to even), plus the zero point, saturated to the range of ``qp.dtype``."""
    lo, hi = qp.range
    scaled = np.asarray(x, dtype=np.float32) / np.float32(qp.scale)
    q = np.rint(scaled).astype(np.float64) + qp.zero_point
    return np.clip(np.nan_to_num(q, nan=0.0), lo, hi).astype(str(qp.dtype))


def lookup_table(fn: Callable[[np.ndarray], np.ndarray], qin: QParams, qout: QParams
                 ) -> np.ndarray:
    """``T[q + 128] = quantize(fn(dequantize(q)))`` for every int8 ``q`` (int8[256]): the QDQ
    graph ``Q(fn(DQ(x)))`` tabulated, ``fn`` evaluated in float32 as the graph evaluates it."""
    q = np.arange(-128, 128, dtype=np.int32)
    with np.errstate(all="ignore"):  # the table covers inputs the model may never see
        y = np.asarray(fn(dequantize_f32(q, qin)), dtype=np.float32)
    return quantize_half_even(np.broadcast_to(y, q.shape), qout)


def apply_lookup_table(q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[q + 128]`` of an int8 tensor."""
    return table[np.asarray(q, dtype=np.int64) + 128]


def requantize_s8(acc: np.ndarray, real: np.ndarray | float, zero_point: int,
                  lo: int = -128, hi: int = 127) -> np.ndarray:
    """``clamp(zero_point + requant(acc, real), lo, hi)``: the single rounding of the MHSA
    kernel (:func:`tvm_tiny.reference.mhsa_s8.requantize`) with ``real``'s (mult, shift) from
    :func:`~tvm_tiny.ir.quant.quantize_multiplier`, elementwise (``real`` broadcasts)."""
    flat = np.atleast_1d(np.asarray(real, dtype=np.float64)).reshape(-1)
    pairs = [quantize_multiplier(float(r)) for r in flat]
    shape = np.shape(real)
    mult = np.array([m for m, _ in pairs], dtype=np.int64).reshape(shape)
    shift = np.array([s for _, s in pairs], dtype=np.int64).reshape(shape)
    out = requantize(acc, mult, shift) + zero_point
    return np.clip(out, lo, hi).astype(np.int8)


def clamp_s8(q: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Relu and Clip on an unchanged quantization: a clamp of the int8 values."""
    return np.clip(np.asarray(q, dtype=np.int64), lo, hi).astype(np.int8)


def add_multipliers(qa: QParams, qb: QParams, qy: QParams) -> tuple[int, int, float]:
    """``(ma, mb, real)`` of :func:`add_s8`: the inputs' integer multipliers on a common grid of
    ``max(scale) / 2**ADD_SHIFT`` and the real multiplier from that grid to the output's."""
    top = max(qa.scale, qb.scale)
    ma = int(np.rint(qa.scale / top * 2.0**ADD_SHIFT))
    mb = int(np.rint(qb.scale / top * 2.0**ADD_SHIFT))
    return ma, mb, top / (2.0**ADD_SHIFT * qy.scale)


def add_s8(a: np.ndarray, qa: QParams, b: np.ndarray, qb: QParams, qy: QParams,
           subtract: bool = False) -> np.ndarray:
    """``Q(DQ(a) + DQ(b))`` (or ``-`` with ``subtract``): ``acc = (a - za) * ma + (b - zb) * mb``
    in int32, requantized once (:func:`add_multipliers`)."""
    ma, mb, real = add_multipliers(qa, qb, qy)
    da = np.asarray(a, np.int64) - qa.zero_point
    db = np.asarray(b, np.int64) - qb.zero_point
    acc = da * ma + (-mb if subtract else mb) * db
    return requantize_s8(acc, real, qy.zero_point)


def multiply_s8(a: np.ndarray, qa: QParams, b: np.ndarray, qb: QParams, qy: QParams
                ) -> np.ndarray:
    """``Q(DQ(a) * DQ(b))``: ``acc = (a - za) * (b - zb)``, requantized by ``sa * sb / sy``."""
    acc = (np.asarray(a, np.int64) - qa.zero_point) * (np.asarray(b, np.int64) - qb.zero_point)
    return requantize_s8(acc, qa.scale * qb.scale / qy.scale, qy.zero_point)


def offset_shift(offset: np.ndarray, qx: QParams) -> int:
    """Fraction bits of :func:`add_const_s8`: as many as 16 while ``(x - zx) << k`` plus the
    offset on the input grid stays inside int32."""
    top = float(np.max(np.abs(np.asarray(offset, np.float64)))) / qx.scale + 256.0
    return int(max(0, min(16, np.floor(np.log2(2.0**30 / top)))))


def add_const_s8(x: np.ndarray, qx: QParams, c: np.ndarray, qy: QParams) -> np.ndarray:
    """``Q(DQ(x) + c)`` of a constant tensor ``c`` (a bias): ``acc = (x - zx) << k +
    round(c / sx * 2**k)`` (ties to even) in int32, requantized by ``sx / (2**k * sy)``."""
    c = np.asarray(c, np.float64)
    k = offset_shift(c, qx)
    offset = np.rint(c / qx.scale * 2.0**k).astype(np.int64)
    acc = ((np.asarray(x, np.int64) - qx.zero_point) << k) + offset
    return requantize_s8(acc, qx.scale / (2.0**k * qy.scale), qy.zero_point)


def multiply_const_s8(x: np.ndarray, qx: QParams, c: np.ndarray, qy: QParams) -> np.ndarray:
    """``Q(DQ(x) * c)`` of a constant tensor ``c``: ``x - zx`` requantized elementwise by
    ``sx * c / sy``."""
    real = qx.scale * np.asarray(c, np.float64) / qy.scale
    acc = np.asarray(x, np.int64) - qx.zero_point
    return requantize_s8(acc, real, qy.zero_point)


def matmul_s8(a: np.ndarray, qa: QParams, b: np.ndarray, b_scale: np.ndarray | float,
              b_zero_point: int, qy: QParams) -> np.ndarray:
    """``Q(DQ(a) @ DQ(b))``: ``acc = (a - za) @ (b - zb)`` in int32 (a constant ``b`` may have
    one scale per output column), requantized by ``sa * sb / sy`` per column."""
    acc = np.matmul(np.asarray(a, np.int64) - qa.zero_point,
                    np.asarray(b, np.int64) - b_zero_point)
    real = qa.scale * np.asarray(b_scale, np.float64) / qy.scale
    return requantize_s8(acc, real, qy.zero_point)

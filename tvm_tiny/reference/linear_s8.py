"""The int8 linear layer ``tt_linear_s8``: its integer program and a numpy golden model of it.

:class:`LinearS8Quant` is one int8 linear layer as a QDQ graph states it (the partitioner reads
it, the tests calibrate it); :func:`lower_linear_s8` derives, offline, the integers the kernel
computes with (:class:`LoweredLinearS8`); :func:`reference_linear_s8` runs that program in
numpy int64. The code generator (``codegen.linear_s8``) lays out the same
:class:`LoweredLinearS8`, so the C and the golden model cannot drift apart. No TVM import.

The program (``kernels/include/tt_linear_s8.h``)::

  acc = (x - zp_x) W + b32                                  (int32, exact)
  one step:  y = clamp(zp_y + requant(acc, M[n], s[n]), lo, hi)
  two steps: q1 = clamp8(zp_acc + requant((x - zp_x) W, M1[n], s1[n]))       M1 = s_x s_w / s_acc
             y  = clamp(zp_y + requant(((q1 - zp_acc) << B) + b2[n], M2, s2), lo, hi)
             b2 = round_half_away(b / s_acc 2**B),  M2 = s_acc / (2**B s_y)

with ``requant`` the MHSA kernel's single rounding (:func:`tvm_tiny.reference.mhsa_s8.requantize`)
and B = :data:`~tvm_tiny.ir.mhsa_s8.ACC_BIAS_BITS`: the two-step form is the MHSA's two-step
projection (:class:`~tvm_tiny.ir.mhsa_s8.SecondStage`) for the graph an exporter writes when it
rounds after the MatMul and again after the bias add. ``[lo, hi]`` is the int8 range narrowed by
a following ReLU (lo = zp_y) or Clip: quantize is monotone, so ``quantize(relu(v))`` equals
``max(quantize(v), zp_y)`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.mhsa_s8 import ACC_BIAS_BITS, Requantization, SecondStage
from tvm_tiny.ir.quant import (
    INT8_MAX,
    INT8_MIN,
    QParams,
    QWeight,
    dequantize,
    quantize,
    quantize_multiplier,
    quantize_multipliers,
    round_half_away,
)
from tvm_tiny.reference.mhsa_s8 import requantize

__all__ = [
    "MAX_K",
    "LinearS8Quant",
    "LoweredLinearS8",
    "float_reference_linear_s8",
    "lower_linear_s8",
    "output_stage_s8",
    "reference_linear_s8",
]

MAX_K = 32767
"""Largest K (C: TT_LINEAR_S8_MAX_K): |x W| <= 128 * 128 * K leaves the bias most of int32."""

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class LinearS8Quant:
    """One int8 linear layer of a QDQ graph: ``y = quantize(act(dequantize(x) W + b))``.

    ``acc``: the exported rounding point between the MatMul and the bias add (two-step form),
    or None. ``act_min``/``act_max``: the real bounds of a following ReLU (0, None) or Clip,
    None where unbounded.
    """

    x: QParams
    weight: QWeight  # int8 [K, N], one scale per output column
    bias: np.ndarray | None  # float [N]
    y: QParams
    acc: QParams | None = None
    act_min: float | None = None
    act_max: float | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.values.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.weight.values.shape[1])


@dataclass(frozen=True)
class LoweredLinearS8:
    """The integer program of one ``tt_linear_s8`` (module docstring), in math layout.

    ``step.mult``/``step.shift`` are int32 [N] (per tensor: all equal, ``per_channel`` False);
    ``step.bias`` is the int32 bias of the one-step form (None in the two-step form, whose bias
    is ``step.second.bias``); ``kernel_bias`` = b32 - zp_x colsum(W), what the C adds to the
    raw x W."""

    weight: np.ndarray  # int8 [K, N]
    zp_x: int
    zp_y: int
    step: Requantization
    per_channel: bool
    act_min: int
    act_max: int

    @property
    def kernel_bias(self) -> np.ndarray:
        colsum = self.weight.astype(np.int64).sum(axis=0)
        b = np.zeros(self.weight.shape[1], np.int64) if self.step.bias is None else \
            self.step.bias.astype(np.int64)
        return (b - self.zp_x * colsum).astype(np.int32)


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 (mult, shift) per output column, as the kernel's tables hold them."""
    return quantize_multipliers(np.ravel(real), np.int32)


def _bias32(b: np.ndarray, unit: np.ndarray | float, headroom: int, what: str) -> np.ndarray:
    q = round_half_away(np.asarray(b, np.float64) / np.asarray(unit, np.float64))
    if np.any(np.abs(q) > INT32_MAX - headroom):
        raise ValueError(f"int8 linear: {what} does not fit int32 next to the accumulator "
                         f"(max |b| = {np.abs(q).max():.3g} units)")
    return q.astype(np.int32)


def _act_bounds(q: LinearS8Quant) -> tuple[int, int]:
    """The int8 clamp of a following ReLU/Clip: its real bounds on the output grid."""
    lo, hi = INT8_MIN, INT8_MAX
    if q.act_min is not None:
        lo = int(quantize(np.float64(q.act_min), q.y))
    if q.act_max is not None:
        hi = int(quantize(np.float64(q.act_max), q.y))
    if lo > hi:
        raise ValueError(f"int8 linear: empty activation range [{q.act_min}, {q.act_max}]")
    return lo, hi


def lower_linear_s8(q: LinearS8Quant) -> LoweredLinearS8:
    """Derive the integer program; ValueError when the kernel cannot take the layer (K past
    :data:`MAX_K`, a tensor not int8, a bias past int32, a multiplier past 2**30)."""
    k, n = q.weight.values.shape
    if k > MAX_K or k < 1 or n < 1:
        raise ValueError(f"int8 linear: K = {k}, N = {n} outside 1 .. {MAX_K}")
    for name, point in (("x", q.x), ("y", q.y), ("acc", q.acc)):
        if point is not None and point.dtype != DType.INT8:
            raise ValueError(f"int8 linear: {name} is quantized to {point.dtype}; the kernel "
                             "takes int8 tensors only")
    in_scale = q.x.scale * q.weight.scale.astype(np.float64)  # [N]
    per_channel = bool(np.any(q.weight.scale != q.weight.scale[0]))
    # |raw x W| and |zp_x colsum(W)| are each <= 128 * 128 * K: every partial sum of the C
    # (raw x W + kernel_bias) stays in int32 when |b32| leaves that room twice.
    room = 2 * 128 * 128 * k
    lo, hi = _act_bounds(q)
    if q.acc is None:
        mult, shift = _multipliers(in_scale / q.y.scale)
        b32 = None if q.bias is None else _bias32(q.bias, in_scale, room, "the bias")
        step = Requantization(mult, shift, b32)
    else:
        mult, shift = _multipliers(in_scale / q.acc.scale)
        m2, s2 = quantize_multiplier(q.acc.scale / (2.0**ACC_BIAS_BITS * q.y.scale))
        b2 = None if q.bias is None else _bias32(
            q.bias, q.acc.scale / 2.0**ACC_BIAS_BITS, 255 << ACC_BIAS_BITS, "the stage-2 bias")
        step = Requantization(mult, shift, None, SecondStage(m2, s2, int(q.acc.zero_point), b2))
    return LoweredLinearS8(q.weight.values, int(q.x.zero_point), int(q.y.zero_point), step,
                           per_channel, lo, hi)


def reference_linear_s8(x_q: np.ndarray, low: LoweredLinearS8) -> np.ndarray:
    """What ``tt_linear_s8`` returns, bit for bit: int8 [..., N] of int8 ``x_q`` [..., K]."""
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8:
        raise TypeError(f"x_q must be int8, got {x_q.dtype}")
    acc = (x_q.astype(np.int64) - low.zp_x) @ low.weight.astype(np.int64)
    return output_stage_s8(acc, low)


def output_stage_s8(acc: np.ndarray, low: LoweredLinearS8) -> np.ndarray:
    """int8 [..., N] that ``low``'s output stage makes of the int64 sums ``acc`` [..., N] of
    ``(x - zp_x) * W`` (bias not yet added). It is a separate function because every kernel
    built on this integer program (e.g. ``tt_conv_s8``'s depthwise path, which does not go
    through a matrix product) must requantize the same way, bit for bit."""
    step, second = low.step, low.step.second
    if second is None:
        if step.bias is not None:
            acc = acc + step.bias.astype(np.int64)
        v = low.zp_y + requantize(acc, step.mult, step.shift)
    else:
        q1 = np.clip(second.acc_zero_point + requantize(acc, step.mult, step.shift),
                     INT8_MIN, INT8_MAX)
        d = (q1 - second.acc_zero_point) << ACC_BIAS_BITS
        if second.bias is not None:
            d = d + second.bias.astype(np.int64)
        v = low.zp_y + requantize(d, second.mult, second.shift)
    return np.clip(v, low.act_min, low.act_max).astype(np.int8)


def float_reference_linear_s8(x_q: np.ndarray, q: LinearS8Quant) -> np.ndarray:
    """The QDQ graph in float64 (each rounding point quantized with round half away): the
    int8 result the integer program approximates."""
    x = dequantize(x_q, q.x) @ q.weight.dequantize()
    if q.acc is not None:
        x = dequantize(quantize(x, q.acc), q.acc)
    if q.bias is not None:
        x = x + np.asarray(q.bias, np.float64)
    if q.act_min is not None or q.act_max is not None:
        x = np.clip(x, q.act_min, q.act_max)
    return quantize(x, q.y)

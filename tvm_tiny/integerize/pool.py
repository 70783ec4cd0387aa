"""Integer pooling and mean: MaxPool, AveragePool, GlobalAveragePool, ReduceMean over tokens.

- ``relax.nn.max_pool2d``: the max of int8 values is the int8 of the max (the scale is
  positive), so the pool runs on int8 unchanged, exact; a requantization follows only when the
  output point differs from the input's.
- ``relax.nn.avg_pool2d`` and ``relax.nn.adaptive_avg_pool2d`` (whole windows): an int32 window
  sum (a depthwise conv with a ones kernel on the int8 input, padding 0, then the zero point
  times each position's count of valid inputs taken off), divided by each position's count
  inside the one requantization: per position multipliers ``s_x / (s_y count)``.
- ``relax.mean`` (GlobalAveragePool as imported, ReduceMean): an int32 sum, the same division.

Golden models: :func:`tvm_tiny.reference.integer_norm.max_pool2d_s8`,
:func:`~tvm_tiny.reference.integer_norm.sum_pool2d_s8` with
:func:`~tvm_tiny.reference.integer_norm.avg_pool_counts`, and
:func:`~tvm_tiny.reference.integer_norm.mean_s8`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.requant import requantize
from tvm_tiny.integerize.rule import NotInteger, OpMatch, QTensor, rule
from tvm_tiny.reference.integer_norm import avg_pool_counts

_MAX_WINDOW = 1 << 16
"""Largest window an int32 sum of int8 values may cover (2^16 * 255 < 2^31)."""


def _input(match: OpMatch) -> QTensor:
    x = match.operands[0]
    if not isinstance(x, QTensor):
        raise NotInteger(f"{match.name} input is not a quantized tensor")
    return x


def _ints(values: object) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _requantize(match: OpMatch, acc: relax.Expr, real: np.ndarray | float) -> relax.Expr:
    out = match.output
    lo, hi = out.range
    return requantize(acc, real, out.zero_point, lo=lo, hi=hi, out_dtype=str(out.dtype))


@rule("relax.nn.max_pool2d")
def max_pool2d_int8(match: OpMatch) -> relax.Expr:
    """Max pooling on int8, then requantization if the quantization point changes."""
    x = _input(match)
    a = match.call.attrs
    m = relax.op.nn.max_pool2d(x.value, pool_size=_ints(a.pool_size), strides=_ints(a.strides),
                               padding=_ints(a.padding), dilation=_ints(a.dilation),
                               ceil_mode=bool(a.ceil_mode), layout=str(a.layout),
                               out_layout=str(a.out_layout))
    if x.qp == match.output:
        return m
    acc = relax.op.subtract(relax.op.astype(m, "int32"),
                            relax.const(np.int32(x.qp.zero_point), "int32"))
    return _requantize(match, acc, x.qp.scale / match.output.scale)


def _avg_pool(match: OpMatch, x: QTensor, pool: tuple[int, int], strides: tuple[int, int],
              dilation: tuple[int, int], padding: tuple[int, int, int, int],
              count_include_pad: bool) -> relax.Expr:
    """Window sums as a depthwise ones conv, divided per position in the requantization."""
    if len(x.shape) != 4 or len(match.output_shape) != 4:
        raise NotInteger("average pooling of a tensor that is not NCHW")
    if pool[0] * pool[1] > _MAX_WINDOW:
        raise NotInteger(f"pooling window {pool} too large for an int32 sum")
    c = x.shape[1]
    out_hw = tuple(match.output_shape[2:])
    valid = avg_pool_counts(x.shape[2:], out_hw, pool, strides, dilation, padding, False)
    divisor = avg_pool_counts(x.shape[2:], out_hw, pool, strides, dilation, padding,
                              count_include_pad)
    if np.any(valid == 0):
        raise NotInteger("a pooling window covers padding only")
    ones = relax.const(np.ones((c, 1) + tuple(pool), np.int8), "int8")
    acc = relax.op.nn.conv2d(x.value, ones, strides=strides, padding=padding,
                             dilation=dilation, groups=c, out_dtype="int32")
    if x.qp.zero_point:
        correction = (np.int64(x.qp.zero_point) * valid).astype(np.int32)
        acc = relax.op.subtract(acc, relax.const(correction, "int32"))
    return _requantize(match, acc, x.qp.scale / (match.output.scale * divisor))


@rule("relax.nn.avg_pool2d")
def avg_pool2d_int8(match: OpMatch) -> relax.Expr:
    """Average pooling (NCHW, floor mode) as integer window sums and one rounding division."""
    x = _input(match)
    a = match.call.attrs
    if str(a.layout) != "NCHW" or str(a.out_layout) != "NCHW":
        raise NotInteger(f"average pooling in layout {a.layout}, not NCHW")
    if bool(a.ceil_mode):
        # The windows past the input in ceil mode have exporter-specific divisors.
        raise NotInteger("average pooling with ceil_mode")
    pool, strides, dilation = _ints(a.pool_size), _ints(a.strides), _ints(a.dilation)
    padding = _ints(a.padding)
    if len(padding) == 2:
        padding = padding + padding
    return _avg_pool(match, x, pool, strides, dilation, padding, bool(a.count_include_pad))


@rule("relax.nn.adaptive_avg_pool2d")
def adaptive_avg_pool2d_int8(match: OpMatch) -> relax.Expr:
    """Adaptive average pooling whose windows tile the input exactly (e.g. output 1x1)."""
    x = _input(match)
    a = match.call.attrs
    if str(a.layout) != "NCHW":
        raise NotInteger(f"adaptive pooling in layout {a.layout}, not NCHW")
    (h, w), (oh, ow) = x.shape[2:], match.output_shape[2:]
    if h % oh or w % ow:
        raise NotInteger(f"adaptive pooling {h}x{w} -> {oh}x{ow}: windows of unequal size")
    window = (h // oh, w // ow)
    return _avg_pool(match, x, window, window, (1, 1), (0, 0, 0, 0), False)


@rule("relax.mean")
def mean_int8(match: OpMatch) -> relax.Expr:
    """A mean over some axes (tokens, or H and W): int32 sum, one rounding division."""
    x = _input(match)
    a = match.call.attrs
    ndim = len(x.shape)
    axes = list(range(ndim)) if a.axis is None else [int(v) % ndim for v in a.axis]
    count = int(np.prod([x.shape[v] for v in axes]))
    if count > _MAX_WINDOW:
        raise NotInteger(f"mean over {count} values too large for an int32 sum")
    acc = relax.op.sum(relax.op.astype(x.value, "int32"), axis=axes, keepdims=bool(a.keepdims))
    if x.qp.zero_point:
        acc = relax.op.subtract(acc, relax.const(np.int32(count * x.qp.zero_point), "int32"))
    return _requantize(match, acc, x.qp.scale / (match.output.scale * count))

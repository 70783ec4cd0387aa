"""Integer Conv (``relax.nn.conv2d``: standard, depthwise ``groups = C`` and pointwise 1x1).

``Q(conv2d(DQ(x), DQ(W)) [+ b])`` with a constant symmetric int8 ``W`` (one scale, or one per
output channel): ``R.nn.conv2d(int8, int8, out_dtype="int32")`` on the input padded with its
zero point (the real 0 of the float graph's padding; no pad op when there is no padding or the
zero point is 0), the zero-point correction ``-x_zero * sum(W[o])`` and the bias on the
accumulator grid ``s_x s_w[o]`` folded into one int32 constant, and one requantization per
output channel by ``s_x s_w[o] / s_y``. The bias comes with the region ``conv2d -> add`` the
importer writes for ``Conv(x, W, B)``.

BatchNorm is not seen here: exporters (torch.onnx, onnxruntime's quantizer) fold it into the
weights before quantizing them; a weight that reaches the conv as a float constant (no
dequantize visible: folded after quantization, or never quantized) cannot be made integer
without choosing a new scale, and the rule says so.

Golden model: :func:`tvm_tiny.reference.integer_norm.conv2d_s8`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.requant import requantize
from tvm_tiny.integerize.rule import (
    NotInteger,
    Operand,
    OpMatch,
    QConst,
    QTensor,
    region_rule,
    rule,
)
from tvm_tiny.reference.integer_norm import conv_bias

_RESHAPES = ("relax.reshape", "relax.expand_dims")


def _weight(w: Operand, out_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 OIHW values, float64 [O] scales) of a quantized constant weight, or NotInteger."""
    if isinstance(w, np.ndarray):
        raise NotInteger("conv2d weight is a float constant with no dequantize (a BatchNorm "
                         "folded after quantization, or an unquantized weight)")
    if not isinstance(w, QConst):
        raise NotInteger("conv2d weight is not a constant")
    if w.values.dtype != np.int8 or w.values.ndim != 4:
        raise NotInteger(f"conv2d weight is {w.values.dtype} of rank {w.values.ndim}, "
                         "not int8 OIHW")
    if np.any(np.asarray(w.zero_point) != 0):
        raise NotInteger("conv2d weight zero point is not 0")
    scale = np.asarray(w.scale, np.float64).reshape(-1)
    if scale.size != 1 and (w.axis % 4 != 0 or scale.size != out_channels):
        raise NotInteger(f"conv2d weight scales along axis {w.axis}, not per output channel")
    return w.values, np.broadcast_to(scale, (out_channels,))


def _conv(match: OpMatch, call: relax.Call, x: Operand, w: Operand,
          bias: np.ndarray | None) -> relax.Expr:
    a = call.attrs
    if not isinstance(x, QTensor):
        raise NotInteger("conv2d input is not a quantized tensor")
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        raise NotInteger(f"conv2d layouts {'/'.join(layouts)}, not NCHW/OIHW/NCHW")
    if a.out_dtype is not None and str(a.out_dtype) not in ("", "void", "float32", "None"):
        raise NotInteger(f"conv2d out_dtype {a.out_dtype}")
    out_channels = int(match.output_shape[1])
    values, w_scale = _weight(w, out_channels)
    padding = tuple(int(v) for v in a.padding)
    strides = tuple(int(v) for v in a.strides)
    dilation = tuple(int(v) for v in a.dilation)
    offset = conv_bias(bias, x.qp, w_scale, values.astype(np.int64).sum(axis=(1, 2, 3)))
    reduction = int(np.prod(values.shape[1:]))
    if reduction * 127 * 255 + int(np.abs(offset).max(initial=0)) >= 2**31:
        raise NotInteger(f"conv2d reduction of {reduction} products overflows int32")
    data = x.value
    if any(padding) and x.qp.zero_point:
        lo_hi = ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3]))
        data = relax.op.nn.pad(data, [v for pair in lo_hi for v in pair],
                               pad_value=float(x.qp.zero_point))
        padding = (0, 0, 0, 0)
    acc = relax.op.nn.conv2d(data, relax.const(values, "int8"), strides=strides,
                             padding=padding, dilation=dilation, groups=int(a.groups),
                             out_dtype="int32")
    if np.any(offset):
        acc = relax.op.add(acc, relax.const(offset.astype(np.int32).reshape(-1, 1, 1), "int32"))
    out = match.output
    real = (x.qp.scale * w_scale / out.scale).reshape(-1, 1, 1)
    if np.any(real >= 2.0**30):
        raise NotInteger("conv2d requantization multiplier >= 2**30")
    lo, hi = out.range
    return requantize(acc, real, out.zero_point, lo=lo, hi=hi, out_dtype=str(out.dtype))


@rule("relax.nn.conv2d")
def conv2d_int8(match: OpMatch) -> relax.Expr:
    """A conv without bias between quantization points."""
    return _conv(match, match.call, match.operands[0], match.operands[1], None)


def _bias_values(match: OpMatch, expr: relax.Expr) -> np.ndarray | None:
    """The per-channel constant ``expr`` stands for: a leaf, or a reshape of one in the region."""
    calls = dict(match.region)
    seen = 0
    while expr in calls and calls[expr].op.name in _RESHAPES and seen < 4:
        expr, seen = calls[expr].args[0], seen + 1
    leaf = match.leaves.get(expr)
    if isinstance(leaf, QConst):
        return np.asarray(leaf.real, np.float64)
    if isinstance(leaf, np.ndarray):
        return leaf.astype(np.float64)
    return None


@region_rule("relax.add")
def conv2d_bias_int8(match: OpMatch) -> relax.Expr:
    """``Conv(x, W, B)`` as imported: ``add(conv2d(DQ(x), DQ(W)), reshape(DQ(B)))``."""
    conv_var, conv = match.region[0]
    if conv.op.name != "relax.nn.conv2d":
        raise NotInteger("region is not conv2d + bias")
    others = [c for _, c in match.region[1:-1]]
    if match.call.op.name != "relax.add" or any(c.op.name not in _RESHAPES for c in others):
        raise NotInteger("region is not conv2d + bias")
    args = list(match.call.args)
    if not any(v.same_as(conv_var) for v in args):
        raise NotInteger("region is not conv2d + bias")
    bias_expr = args[1] if args[0].same_as(conv_var) else args[0]
    bias = _bias_values(match, bias_expr)
    c = int(match.output_shape[1])
    if bias is None or bias.size != c or (bias.ndim == 4 and bias.shape[1] != c):
        raise NotInteger("conv2d bias is not a constant per output channel")
    operands = [match.leaves.get(v) for v in conv.args[:2]]
    return _conv(match, conv, operands[0], operands[1], bias.reshape(-1))

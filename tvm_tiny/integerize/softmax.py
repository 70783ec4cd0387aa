"""Integer Softmax outside attention (``relax.nn.softmax``; classifiers' last layer).

``Q(softmax(DQ(x)))`` along one axis: ``e = lut[max - q]`` with a 256-entry table of
``round(2^22 exp(-s_x d))`` (the differences to the row maximum are the only inputs exp ever
sees), an int64 row sum, and one rounding division to the output point, ``(e M + D/2) // D``
with ``D = sum(e) << shift`` and ``M / 2^shift = 1 / s_y``. The MHSA kernel's softmax
(:func:`tvm_tiny.reference.mhsa_s8.softmax_s8`) is the same program on its own table. Golden
model: :func:`tvm_tiny.reference.integer_norm.softmax_s8`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.rule import NotInteger, OpMatch, QTensor, rule
from tvm_tiny.ir.enums import DType
from tvm_tiny.reference.integer_norm import SoftmaxS8, softmax_params


def _i64(v: int | np.ndarray) -> relax.Constant:
    return relax.const(np.asarray(v, np.int64), "int64")


def softmax_expr(x: relax.Expr, p: SoftmaxS8, axis: int) -> relax.Expr:
    """The integer program of ``p`` on the int8 tensor ``x`` along ``axis``."""
    op = relax.op
    q = op.astype(x, "int32")
    diff = op.subtract(op.max(q, axis=[axis], keepdims=True), q)  # in [0, 255]
    # The table is stored as int32 (2^22 fits): 1 KiB of flash instead of 2.
    lut = relax.const(p.lut.astype(np.int32), "int32")
    # "fast": no bounds clamp, the differences are in [0, 255] by construction.
    e = op.astype(op.take(lut, diff, axis=0, mode="fast"), "int64")
    den = op.left_shift(op.sum(e, axis=[axis], keepdims=True), _i64(p.shift))
    num = op.add(op.multiply(e, _i64(p.mult)), op.right_shift(den, _i64(1)))
    y = op.add(op.floor_divide(num, den), _i64(p.out.zero_point))
    lo, hi = p.out.range
    return op.astype(op.clip(y, lo, hi), str(p.out.dtype))


@rule("relax.nn.softmax")
def softmax_int8(match: OpMatch) -> relax.Expr:
    """A softmax of one int8 tensor along one axis."""
    x = match.operands[0]
    if not isinstance(x, QTensor):
        raise NotInteger("softmax input is not a quantized tensor")
    if x.qp.dtype != DType.INT8:
        raise NotInteger(f"softmax input is {x.qp.dtype}, not int8")
    axis = int(match.call.attrs.axis)
    axis = axis + len(x.shape) if axis < 0 else axis
    try:
        p = softmax_params(x.shape[axis], x.qp, match.output)
    except ValueError as err:
        raise NotInteger(str(err)) from None
    return softmax_expr(x.value, p, axis)

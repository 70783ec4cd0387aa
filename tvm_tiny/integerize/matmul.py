"""Integer rules of MatMul / Gemm that no kernel took (the fallback of the int8 linear offload).

``Q(DQ(x) @ DQ(W) [+ b])``:

- constant int8 ``W`` (symmetric, one scale or one per output column): ``acc = x @ W`` as
  ``R.matmul(int8, int8, out_dtype="int32")`` with the zero point of ``x`` folded into a
  constant ``zx * colsum(W)``, the bias (if the region adds one) on the accumulator grid
  ``sx * sw``, requantized once per column by ``sx * sw / sy``;
- two activations: ``acc = (a - za) @ (b - zb)`` in int16 inputs, int32 accumulation,
  requantized once by ``sa * sb / sy``.

Golden model: :func:`tvm_tiny.reference.integer.matmul_s8`.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.requant import requantize
from tvm_tiny.integerize.rule import NotInteger, OpMatch, QConst, QTensor, region_rule, rule


def _per_column_scale(w: QConst) -> np.ndarray:
    """``W``'s scales as one per output column (``W`` in [K, N] layout), or NotInteger."""
    if w.values.ndim != 2 or w.values.dtype != np.int8:
        raise NotInteger(f"weight is {w.values.dtype} of rank {w.values.ndim}, not int8 [K, N]")
    if np.any(w.zero_point != 0):
        raise NotInteger("weight zero point is not 0")
    if w.scale.size != 1 and w.axis != 1:
        raise NotInteger("weight scales run along the reduction axis")
    return np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (w.values.shape[1],))


def _widened(x: QTensor, dtype: str) -> relax.Expr:
    t = relax.op.astype(x.value, dtype)
    if x.qp.zero_point:
        t = relax.op.subtract(t, relax.const(np.array(x.qp.zero_point, dtype), dtype))
    return t


def _const_weight(match: OpMatch, call: relax.Call, x: QTensor, w: QConst,
                  bias: np.ndarray | None) -> relax.Expr:
    scale = _per_column_scale(w)
    acc = relax.op.matmul(x.value, relax.const(w.values, "int8"), out_dtype="int32")
    offset = -np.int64(x.qp.zero_point) * w.values.astype(np.int64).sum(axis=0)
    if bias is not None:
        # The bias on the accumulator's grid; an exporter's int32 bias is already on it.
        offset = offset + np.rint(bias / (x.qp.scale * scale)).astype(np.int64)
    if np.any(offset):
        if np.any(np.abs(offset) >= 2**31):
            raise NotInteger("bias does not fit int32 on the accumulator grid")
        acc = relax.op.add(acc, relax.const(offset.astype(np.int32), "int32"))
    return requantize(acc, x.qp.scale * scale / match.output.scale, match.output.zero_point)


def _matmul(match: OpMatch, call: relax.Call, operands: tuple, bias: np.ndarray | None
            ) -> relax.Expr:
    a, b = operands[:2]
    if str(call.attrs.out_dtype) not in ("", "float32", "void", "None"):
        raise NotInteger(f"matmul out_dtype {call.attrs.out_dtype}")
    if isinstance(a, QTensor) and isinstance(b, QConst):
        return _const_weight(match, call, a, b, bias)
    if isinstance(a, QTensor) and isinstance(b, QTensor):
        if bias is not None:
            raise NotInteger("bias on a product of two activations")
        acc = relax.op.matmul(_widened(a, "int16"), _widened(b, "int16"), out_dtype="int32")
        real = a.qp.scale * b.qp.scale / match.output.scale
        return requantize(acc, real, match.output.zero_point)
    raise NotInteger(f"matmul of {type(a).__name__} and {type(b).__name__}")


@rule("relax.matmul")
def matmul_int8(match: OpMatch) -> relax.Expr:
    """A MatMul between quantization points."""
    return _matmul(match, match.call, match.operands, None)


@region_rule("relax.add")
def matmul_bias_int8(match: OpMatch) -> relax.Expr:
    """Gemm as imported: ``add(matmul(DQ(x), DQ(W)), bias)`` in one region."""
    if len(match.region) != 2 or match.region[0][1].op.name != "relax.matmul":
        raise NotInteger("region is not matmul + bias")
    mm_var, mm = match.region[0]
    bias_args = [a for a in match.call.args if not a.same_as(mm_var)]
    if len(bias_args) != 1:
        raise NotInteger("region is not matmul + bias")
    bias = match.leaves.get(bias_args[0])
    if isinstance(bias, QConst):
        bias = bias.real
    if not isinstance(bias, np.ndarray):
        raise NotInteger("bias is not a constant")
    bias = bias.astype(np.float64)
    n = match.output_shape[-1]
    if bias.size not in (1, n) or (bias.ndim and bias.shape[-1] not in (1, n)) or \
            bias.size != max(1, np.prod(bias.shape[-1:])):
        raise NotInteger(f"bias of shape {bias.shape} is not per output column")
    operands = tuple(match.leaves.get(a) for a in mm.args)
    return _matmul(match, mm, operands, np.broadcast_to(bias.reshape(-1), (n,)))

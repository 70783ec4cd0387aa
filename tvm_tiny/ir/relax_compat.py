"""The few TVM 0.27 Relax accessors tvm_tiny relies on, in one place.

TVM 0.27 renamed several long-standing APIs (``Var.struct_info`` became ``.ty``, constants are
``tvm.ir.expr.GenericConst`` with the payload in ``.value``, ``tvm.tir`` is ``tvm.tirx``). Keeping
them here means the next rename touches one file.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

GenericConst = tvm.ir.expr.GenericConst


def tensor_type(expr: relax.Expr) -> relax.type.TensorType | None:
    """The tensor type of ``expr``, or None when it is not a tensor."""
    ty = getattr(expr, "ty", None)
    return ty if isinstance(ty, relax.type.TensorType) else None


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The static shape of a tensor expression, or None when unknown or symbolic."""
    ty = tensor_type(expr)
    if ty is None or ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tvm.tirx.IntImm):
            return None
        dims.append(int(dim))
    return tuple(dims)


def shape_dims(ty: relax.type.TensorType) -> list[object]:
    """The raw dimensions of a tensor type (IntImm or symbolic PrimExpr); [] when unknown."""
    if ty.shape is None or not isinstance(ty.shape, relax.ShapeExpr):
        return []
    return list(ty.shape.values)


def tensor_dtype(expr: relax.Expr) -> str | None:
    """The dtype string of a tensor expression (``"float32"``), or None."""
    ty = tensor_type(expr)
    return None if ty is None else str(ty.dtype)


def is_constant(expr: relax.Expr) -> bool:
    """Whether ``expr`` is a Relax constant tensor."""
    return isinstance(expr, GenericConst)


def constant_value(expr: relax.Expr) -> np.ndarray:
    """The numpy value of a Relax constant."""
    return expr.value.numpy()


def shape_expr_values(expr: relax.Expr) -> tuple[int, ...]:
    """The integer values of a static ``R.shape([...])`` expression."""
    return tuple(int(v) for v in expr.values)

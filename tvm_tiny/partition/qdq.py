"""Int8 weights of QDQ models, kept in the IR through constant folding.

A QDQ model stores each weight as ``DequantizeLinear(int8 initializer, scale, zero point)``. The
partitioner must run ``FoldConstant`` first (exporters leave shape arithmetic to fold), and a
plain fold would turn those weights into float32 constants, losing the int8 values and scales the
integer kernels need. :class:`FoldConstantExceptInt8Weights` folds everything else and leaves
the ``dequantize`` of the weights it is told to keep, so the attention matcher reads the int8
weight straight from the IR (:func:`int8_matmul_weight`).

The float value of such a weight is computed here as TVM's fold computes it: ``dequantize``
legalizes to ``float32(q - zp) * scale`` (``relax/transform/legalize_ops/qdq.py``), one rounding
of an exact product, which numpy reproduces bit for bit (:func:`dequantize_like_tvm`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.ir.quant import QWeight
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.partition.bindings import bindings_of, readers

SelectWeights = Callable[[relax.Function], list[relax.Var]]
"""Picks, in one function, the vars bound to the weight ``dequantize`` calls to keep unfolded."""


def _op_name(value: relax.Expr | None) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def is_int8_weight(value: relax.Expr | None) -> bool:
    """Whether ``value`` is ``dequantize(2-D int8 constant, scale, 0)`` with constant, finite,
    positive scales: a symmetric int8 matrix, the only weights the int8 kernels take."""
    if _op_name(value) != "relax.dequantize" or not all(is_constant(a) for a in value.args[:3]):
        return False
    values, scale, zero_point = (constant_value(a) for a in value.args[:3])
    return bool(values.dtype == np.int8 and values.ndim == 2 and not np.any(zero_point != 0)
                and np.all(np.isfinite(scale)) and not np.any(scale <= 0))


def is_matrix_transpose(value: relax.Expr | None) -> bool:
    """Whether ``value`` transposes a matrix (``permute_dims(w)`` or ``axes=[1, 0]``), as the
    ONNX importer writes ``Gemm(transB=1)``."""
    if _op_name(value) != "relax.permute_dims" or static_shape(value.args[0]) is None:
        return False
    axes = value.attrs.axes
    return len(static_shape(value.args[0])) == 2 and (
        axes is None or [int(a) for a in axes] == [1, 0])


def dequantize_like_tvm(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                        axis: int) -> np.ndarray:
    """``dequantize`` as TVM folds it, bit for bit (see the module docstring)."""
    shape = [1] * values.ndim
    if values.ndim:
        shape[axis] = -1

    def broadcast(param: np.ndarray) -> np.ndarray:
        param = param.astype(np.float32)
        return param.reshape(shape) if param.size > 1 else param.reshape(())

    return ((values.astype(np.float32) - broadcast(zero_point)) * broadcast(scale)).astype(
        np.float32)


def int8_matmul_weight(dequantize: relax.Call, transposed: bool
                       ) -> tuple[np.ndarray, QWeight | None]:
    """The weight an :func:`is_int8_weight` ``dequantize`` gives ``matmul(x, W)`` (``transposed``:
    through :func:`is_matrix_transpose`): its float32 value as TVM would fold it, and its int8
    form with one scale per output column, or None when the scales run along the other axis
    (a kernel needs them per output column)."""
    values, scale, zero_point = (constant_value(a) for a in dequantize.args[:3])
    axis = int(dequantize.attrs.axis) % values.ndim
    folded = dequantize_like_tvm(values, scale, zero_point, axis)
    scale = scale.astype(np.float32).reshape(-1)
    if transposed:
        folded, values, axis = (np.ascontiguousarray(folded.T), np.ascontiguousarray(values.T),
                                1 - axis)
    if scale.size != 1 and axis != 1:
        return folded, None
    per_column = np.broadcast_to(scale, (values.shape[1],))
    return folded, QWeight(values, np.ascontiguousarray(per_column, dtype=np.float32))


def int8_matmul_weights(func: relax.Function) -> list[relax.Var]:
    """The weight ``dequantize`` vars of ``func`` read only as the weight of a matmul, directly
    or through a matrix transpose: the forms :mod:`~tvm_tiny.partition.attention_match` reads.

    Any other use (an elementwise op, a slice, the function result) leaves the weight to the
    fold, so that whatever the matcher cannot read arrives folded, exactly as before.
    """
    bindings = dict(bindings_of(func))
    var_of = {value: var for var, value in bindings.items()}
    users = readers(func)

    def read_as_weight(var: relax.Var) -> bool:
        return all(_op_name(u) == "relax.matmul" and u.args[1].same_as(var)
                   and not u.args[0].same_as(var) for u in users.get(var, [None]))

    def weight_only(var: relax.Var) -> bool:
        return all(u is not None and (
            (_op_name(u) == "relax.matmul" and read_as_weight(var))
            or (is_matrix_transpose(u) and read_as_weight(var_of[u])))
            for u in users.get(var, [None]))

    return [var for var, value in bindings.items() if is_int8_weight(value) and weight_only(var)]


@tvm.transform.module_pass(opt_level=0, name="FoldConstantExceptInt8Weights")
class FoldConstantExceptInt8Weights:
    """``FoldConstant``, except for the weight ``dequantize`` calls ``select`` picks.

    Each picked call reads its int8 constant through a temporary function parameter while
    ``FoldConstant`` runs, so it (and whatever only it feeds, such as a transpose) cannot fold;
    the constants are bound back afterwards, the same objects as before. Everything else is
    folded exactly as ``FoldConstant`` folds it.

    ``refold=True`` declares a second run, after a first one folded everything but the int8
    weights: when ``select`` keeps every int8 weight still there, nothing is left to fold and
    the module is returned as it is (``FoldConstant`` costs a legalization of every call).
    """

    def __init__(self, select: SelectWeights = int8_matmul_weights, refold: bool = False) -> None:
        self.select = select
        self.refold = refold

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        functions = {gv: func for gv, func in mod.functions.items()
                     if isinstance(func, relax.Function)}
        kept = {gv: self.select(func) for gv, func in functions.items()}
        if self.refold and all(
                set(kept[gv]) >= {var for var, value in bindings_of(func) if is_int8_weight(value)}
                for gv, func in functions.items()):
            return mod
        mod = mod.clone()  # the pass infrastructure hands us the caller's module
        hidden: dict[tvm.ir.GlobalVar, dict[relax.Var, relax.Expr]] = {}
        for gv, func in functions.items():
            keep = kept[gv]
            if keep:
                hider = _HideWeights(keep)
                body = hider.visit_expr(func.body)
                params = list(hider.params.values())
                mod[gv] = relax.Function([*func.params, *params], body, func.ret_ty,
                                         func.is_pure, func.attrs, func.span)
                hidden[gv] = {param: const for const, param in hider.params.items()}
        mod = relax.transform.FoldConstant()(mod)
        for gv, constants in hidden.items():
            mod[gv] = mod[gv].bind_params(constants)
        return mod


@relax.expr_functor.mutator
class _HideWeights(relax.PyExprMutator):
    """Reads the int8 constant of every kept ``dequantize`` through a parameter."""

    def __init__(self, keep: list[relax.Var]) -> None:
        super().__init__()
        self.keep = set(keep)
        self.params: dict[relax.Expr, relax.Var] = {}  # int8 constant -> its stand-in

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.keep:
            value = binding.value
            const = value.args[0]
            if const not in self.params:
                self.params[const] = relax.Var(f"tvm_tiny_int8_weight_{len(self.params)}",
                                               const.ty)
            hidden = relax.Call(value.op, [self.params[const], *value.args[1:]], value.attrs,
                                value.ty_args)
            self.set_var_remap(binding.var, self.builder_.emit(hidden, binding.var.name))
            return
        super().visit_var_binding_(binding)



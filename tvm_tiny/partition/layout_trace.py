"""Exact element tracing through layout operators, for recognizing attention in any export style.

Exporters write the same multi-head attention with very different layout plumbing: onnx.helper
graphs reshape/transpose into heads, ``torch.onnx.export`` of ``nn.MultiheadAttention`` goes
sequence-first, packs Q/K/V into one projection and splits it with ``take``, and applies the
``1/sqrt(P)`` scale as ``sqrt`` on both Q and K. Instead of one pattern per quirk, we run the
layout operators on an *index tensor*: the source tensor filled with ``0 .. n-1``. After the
chain, every element says exactly which source element it is, so head/column/row structure can be
read off with numpy, whatever the chain was.

Supported layout operators: reshape, permute_dims, expand_dims, squeeze, take (constant indices),
split + TupleGetItem, strided_slice, astype to the same dtype, the proof mark of a canonical chain
(``proof_mark.py``); multiply/divide by a scalar constant are traced as a scale factor. In QDQ
(int8) graphs a ``dequantize(quantize(t, s, z), s, z)`` pair with per-tensor parameters is
layout-neutral too; each pair passed is recorded as a :class:`QdqPair` (its ``ir.quant.QParams``
and the quantized var), nearest to the traced tensor first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.ir.quant import QParams
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.partition.proof_mark import is_proof_mark, marked_value

_RESHAPE_LIKE = ("relax.reshape", "relax.expand_dims", "relax.squeeze")


Step = tuple[relax.Expr, Callable[[np.ndarray], np.ndarray], float]
"""A layout operator undone: (its data input, the index transform it applies, scale factor)."""


@dataclass(frozen=True)
class QdqPair:
    """A per-tensor quantize → dequantize pair the trace passed: its quantization and the var
    holding the quantized (integer) tensor."""

    params: QParams
    quantized: relax.Expr


@dataclass
class Traced:
    """A tensor seen as a re-indexing (and scaling) of a source tensor."""

    source: relax.Expr
    index: np.ndarray  # same shape as the traced tensor; flat indices into ``source``
    scale: float = 1.0
    through: list[relax.Var] = field(default_factory=list)  # bound vars walked through
    quant: list[QdqPair] = field(default_factory=list)  # nearest to the traced tensor first


def per_tensor_qparams(call: relax.Call) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor ``quantize``/``dequantize`` with constant params."""
    if not (is_constant(call.args[1]) and is_constant(call.args[2])):
        return None
    scale, zero_point = constant_value(call.args[1]), constant_value(call.args[2])
    if scale.size != 1 or zero_point.size != 1:
        return None
    return float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0])


def _scalar_constant(expr: relax.Expr) -> float | None:
    if not is_constant(expr):
        return None
    value = constant_value(expr)
    if value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(-1)[0])


def _int_list(value: object) -> list[int] | None:
    if value is None:
        return None
    return [int(v) for v in value]


class LayoutTracer:
    """Trace tensors of one dataflow block back to the first non-layout producer."""

    def __init__(self, bindings: dict[relax.Var, relax.Expr]) -> None:
        self.bindings = bindings

    def producer(self, expr: relax.Expr) -> relax.Expr | None:
        """The value bound to ``expr`` when it is a var of this block."""
        if isinstance(expr, relax.Var):
            return self.bindings.get(expr)
        return None

    def trace(self, expr: relax.Expr) -> Traced | None:
        """Follow layout operators back from ``expr``; None if a shape is not static."""
        shape = static_shape(expr)
        if shape is None:
            return None
        value = self.producer(expr)
        pair = self.qdq_pair(value) if value is not None else None
        if pair is not None:
            inner = self.trace(pair[0])
            if inner is None or tuple(inner.index.shape) != shape:
                return None
            return Traced(inner.source, inner.index, inner.scale, [*inner.through, expr,
                          pair[1].quantized], [pair[1], *inner.quant])
        step = self.layout_step(value) if value is not None else None
        if step is None:
            return Traced(expr, np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape))
        inner_expr, apply, scale = step
        inner = self.trace(inner_expr)
        if inner is None:
            return None
        index = apply(inner.index)
        if tuple(index.shape) != shape:
            return None  # our numpy model of the op disagrees with TVM's shape: do not guess
        return Traced(inner.source, index, inner.scale * scale, [*inner.through, expr])

    def qdq_pair(self, value: relax.Expr) -> tuple[relax.Expr, QdqPair] | None:
        """``dequantize(quantize(t))`` with equal per-tensor params → (t, the pair)."""
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.dequantize"):
            return None
        quantized = value.args[0]
        inner = self.producer(quantized)
        if is_proof_mark(inner):  # the int8 input of a canonical chain (canonicalized again)
            quantized = marked_value(inner)
            inner = self.producer(quantized)
        if not (isinstance(inner, relax.Call) and isinstance(inner.op, tvm.ir.Op)
                and inner.op.name == "relax.quantize"):
            return None
        outer_params, inner_params = per_tensor_qparams(value), per_tensor_qparams(inner)
        if outer_params is None or outer_params != inner_params:
            return None
        try:
            params = QParams(outer_params[0], outer_params[1], str(quantized.ty.dtype))
        except ValueError:
            return None  # no valid quantization (scale <= 0, zero point out of range, int32)
        return inner.args[0], QdqPair(params, quantized)

    def layout_step(self, value: relax.Expr) -> Step | None:
        """One layout operator undone: (its data input, index transform, scale), or None."""
        if isinstance(value, relax.TupleGetItem):
            return self._tuple_item(value)
        if is_proof_mark(value):
            return marked_value(value), (lambda idx: idx), 1.0
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None
        name, args, attrs = value.op.name, value.args, value.attrs
        out_shape = static_shape(value) if hasattr(value, "ty") else None
        if name in _RESHAPE_LIKE:
            target = out_shape
            if target is None:
                return None
            return args[0], (lambda idx, t=target: idx.reshape(t)), 1.0
        if name == "relax.permute_dims":
            axes = _int_list(attrs.axes)
            return args[0], (lambda idx, a=axes: np.transpose(idx, a)), 1.0
        if name == "relax.take" and is_constant(args[1]):
            indices = constant_value(args[1]).astype(np.int64)
            axis = int(attrs.axis) if attrs.axis is not None else None
            if axis is None:
                return None
            return args[0], (lambda idx, i=indices, a=axis: np.take(idx, i, axis=a)), 1.0
        if name == "relax.strided_slice":
            return self._strided_slice(args)
        if name == "relax.astype" and str(attrs.dtype) == str(args[0].ty.dtype):
            return args[0], (lambda idx: idx), 1.0
        if name in ("relax.multiply", "relax.divide"):
            # multiply commutes; divide only scales its first argument.
            candidates = [(0, 1), (1, 0)] if name == "relax.multiply" else [(0, 1)]
            for data_pos, factor_pos in candidates:
                factor = _scalar_constant(args[factor_pos])
                if factor is None or (name == "relax.divide" and factor == 0.0):
                    continue
                if name == "relax.divide":
                    factor = 1.0 / factor
                return args[data_pos], (lambda idx: idx), factor
        return None

    def _tuple_item(self, value: relax.TupleGetItem):  # noqa: ANN202
        split = self.producer(value.tuple_value)
        if not (isinstance(split, relax.Call) and isinstance(split.op, tvm.ir.Op)
                and split.op.name == "relax.split"):
            return None
        attrs = split.attrs
        axis = int(attrs.axis)
        sections = attrs.indices_or_sections
        if isinstance(sections, (int, tvm.tirx.IntImm)):
            parts: int | list[int] = int(sections)
        else:
            parts = [int(s) for s in sections]
        item = int(value.index)
        def apply(idx: np.ndarray, p: int | list[int] = parts) -> np.ndarray:
            return np.split(idx, p, axis=axis)[item]

        return split.args[0], apply, 1.0

    def _strided_slice(self, args: list[relax.Expr]):  # noqa: ANN202
        try:
            axes = [int(v.value) for v in args[1].fields]
            begin = [int(v.value) for v in args[2].fields]
            end = [int(v.value) for v in args[3].fields]
            strides = ([int(v.value) for v in args[4].fields] if len(args) > 4
                       else [1] * len(axes))
        except (AttributeError, TypeError):
            return None

        def apply(idx: np.ndarray) -> np.ndarray:
            slices = [slice(None)] * idx.ndim
            for a, b, e, s in zip(axes, begin, end, strides):
                slices[a] = slice(b, min(e, idx.shape[a]) if s > 0 else e, s)
            return idx[tuple(slices)]

        return args[0], apply, 1.0

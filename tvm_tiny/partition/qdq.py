"""Int8 weights of QDQ models, recovered across ``FoldConstant``.

A QDQ model stores each weight as ``DequantizeLinear(int8 initializer, scale, zero point)``. The
partitioner must run ``FoldConstant`` first (exporters leave shape arithmetic to fold), which turns
those into float32 constants and loses the int8 values and scales the integer kernels need.
:class:`QuantizedConstants` records every ``dequantize`` of constants *before* folding, keyed by
the exact float32 bytes the fold produces (TVM computes ``(q - zp) * scale`` in float32, which
numpy reproduces bit for bit), so a folded weight can be looked up again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.ir.relax_compat import constant_value, is_constant


@dataclass(frozen=True)
class QuantizedWeight:
    """A symmetric int8 weight: real = scale[n] * values[..., n] (per output channel or tensor)."""

    values: np.ndarray  # int8, same layout as the float weight
    scale: np.ndarray  # float32 [N] along the last axis (all equal when per-tensor)

    def take_columns(self, order: np.ndarray) -> QuantizedWeight:
        return QuantizedWeight(np.ascontiguousarray(self.values[:, order]),
                               np.ascontiguousarray(self.scale[order]))

    def take_rows(self, order: np.ndarray) -> QuantizedWeight:
        return QuantizedWeight(np.ascontiguousarray(self.values[order]), self.scale)

    def scaled(self, factor: float) -> QuantizedWeight:
        """The same integers standing for ``factor`` times the real weight."""
        return QuantizedWeight(self.values, (self.scale * np.float32(factor)).astype(np.float32))


def _dequantize_like_tvm(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                         axis: int) -> np.ndarray:
    shape = [1] * values.ndim
    if values.ndim:
        shape[axis] = -1

    def broadcast(param: np.ndarray) -> np.ndarray:
        param = param.astype(np.float32)
        return param.reshape(shape) if param.size > 1 else param.reshape(())

    return ((values.astype(np.float32) - broadcast(zero_point)) * broadcast(scale)).astype(
        np.float32)


class QuantizedConstants:
    """Folded float weight (by exact bytes) → its int8 values and per-channel scales."""

    def __init__(self) -> None:
        self._table: dict[tuple[tuple[int, ...], bytes], QuantizedWeight] = {}

    @staticmethod
    def collect(mod: tvm.IRModule) -> QuantizedConstants:
        """Record every 2-D int8 ``dequantize(const, const, const)`` of ``mod`` (before folding)."""
        table = QuantizedConstants()
        for func in mod.functions.values():
            if not isinstance(func, relax.Function):
                continue
            for block in func.body.blocks:
                for binding in block.bindings:
                    table._record(binding.value)
        return table

    def _record(self, value: relax.Expr) -> None:
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.dequantize"
                and all(is_constant(a) for a in value.args[:3])):
            return
        values, scale, zero_point = (constant_value(a) for a in value.args[:3])
        if values.dtype != np.int8 or values.ndim != 2 or np.any(zero_point != 0):
            return  # only symmetric int8 matrices are kernel weights
        axis = int(value.attrs.axis) % values.ndim
        folded = _dequantize_like_tvm(values, scale, zero_point, axis)
        scale = scale.astype(np.float32).reshape(-1)
        # As used: x @ W, scales per output column (axis 1) or per tensor.
        if scale.size == 1 or axis == 1:
            self._add(folded, values, np.broadcast_to(scale, (values.shape[1],)))
        # Transposed, as Gemm(transB=1) uses it after FoldConstant folds the permute_dims:
        # the output channels are then the rows of the stored weight (axis 0).
        if scale.size == 1 or axis == 0:
            self._add(np.ascontiguousarray(folded.T), np.ascontiguousarray(values.T),
                      np.broadcast_to(scale, (values.shape[0],)))

    def _add(self, folded: np.ndarray, values: np.ndarray, per_column: np.ndarray) -> None:
        self._table[(folded.shape, folded.tobytes())] = QuantizedWeight(
            values, np.ascontiguousarray(per_column, dtype=np.float32))

    def lookup(self, folded: np.ndarray) -> QuantizedWeight | None:
        """The int8 weight whose dequantization is exactly ``folded``, if one was recorded."""
        if folded.dtype != np.float32:
            return None
        return self._table.get((folded.shape, folded.tobytes()))

    def __len__(self) -> int:
        return len(self._table)

"""Integer rules of layout ops: they move int8 values and never compute on them.

``Q(op(DQ(x)))`` for a layout op (Reshape, Flatten, Transpose, Slice, Gather with constant
indices, Squeeze, Unsqueeze) is ``op(x)`` when the quantize has the dequantize's parameters, and
``op(x)`` looked up in the rescaling table (:func:`~tvm_tiny.integerize.elementwise.rescale`,
exact) when it has others. Concat rescales each input whose parameters differ from the output's
first, quantizes a constant input (a class token) offline to the output's grid, then
concatenates int8 tensors.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.elementwise import rescale
from tvm_tiny.integerize.rule import NotInteger, OpMatch, QConst, QTensor, rule
from tvm_tiny.reference.integer import quantize_half_even

LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.strided_slice", "relax.take",
              "relax.squeeze", "relax.expand_dims", "relax.flatten")


@rule(*LAYOUT_OPS)
def move_int8(match: OpMatch) -> relax.Expr:
    """The layout op on the int8 tensor, then a rescale to the output's grid if it differs."""
    x, *rest = match.operands
    if not isinstance(x, QTensor):
        raise NotInteger(f"{match.name} of a {type(x).__name__}, not a quantized tensor")
    if any(isinstance(r, QTensor) for r in rest):
        raise NotInteger(f"{match.name} with a quantized tensor as its indices")
    call = match.call
    moved = relax.Call(call.op, [x.value, *call.args[1:]], call.attrs, call.ty_args)
    return rescale(QTensor(moved, x.qp, match.output_shape), match.output)


@rule("relax.concat")
def concat_int8(match: OpMatch) -> relax.Expr:
    """Every input rescaled to the output's grid (exact tables), then concatenated."""
    fields = match.call.args[0]
    if not isinstance(fields, relax.Tuple):
        raise NotInteger("concat of a tuple variable")
    parts = []
    for field in fields.fields:
        operand = match.leaves.get(field)
        if isinstance(operand, QConst):
            operand = operand.real
        if isinstance(operand, np.ndarray):
            # a float constant (a ViT's class token, left unquantized by the quantizer):
            # the graph quantizes it with the output's parameters, so that is done offline
            parts.append(relax.const(quantize_half_even(operand, match.output),
                                     str(match.output.dtype)))
            continue
        if not isinstance(operand, QTensor):
            raise NotInteger("concat of an input that is not a quantized tensor or a constant")
        parts.append(rescale(operand, match.output))
    return relax.op.concat(parts, axis=match.call.attrs.axis)

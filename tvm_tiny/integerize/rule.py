"""The contract between the integerize driver and the rules that rewrite one quantized op.

A QDQ graph computes every op in float between quantization points::

    y_q = quantize(op(dequantize(a_q), dequantize(b_q), const...), s_y, z_y)

The driver (:mod:`tvm_tiny.integerize.driver`) finds each such ``op``, describes it as an
:class:`OpMatch` (its int8 inputs as :class:`QTensor`, its constant inputs as numpy arrays, the
quantization point of its output) and asks the :data:`RULES` entry of the op's name for an int8
expression that computes ``y_q`` in integers. A rule that cannot prove its op integer raises
:class:`NotInteger` with the reason; the driver then leaves that op fake-quant and reports it
(``metadata["not_integerized"]``), as the partitioner reports attentions it leaves to TVM.

Rules are pure functions of the match: they build Relax expressions (nested calls, no block
builder) and never look at the rest of the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import relax

from tvm_tiny.ir.quant import QParams


@dataclass(frozen=True)
class QTensor:
    """An integer tensor of the rewritten graph and the real values it stands for."""

    value: relax.Expr  # an int8 (or uint8) tensor expression
    qp: QParams
    shape: tuple[int, ...]


Operand = QTensor | np.ndarray | None
"""One argument of the float op: a quantized tensor, a constant, or anything else (a shape)."""


@dataclass(frozen=True)
class OpMatch:
    """One float op between quantization points, as a rule sees it."""

    call: relax.Call  # the float op itself (its attrs: axes, epsilon, ...)
    name: str  # the op name, e.g. "relax.nn.layer_norm"
    operands: tuple[Operand, ...]  # one per ``call.args``
    output: QParams  # the quantize that follows the op
    output_shape: tuple[int, ...]

    def quantized(self) -> list[QTensor]:
        return [o for o in self.operands if isinstance(o, QTensor)]


class NotInteger(Exception):  # noqa: N818 - a verdict, not a failure: the op stays fake-quant
    """Raised by a rule that cannot compute its op in integers; the message is the reason."""


Rule = Callable[[OpMatch], relax.Expr]
"""Returns an expression of dtype ``match.output.dtype`` and shape ``match.output_shape``."""

RULES: dict[str, Rule] = {}
"""Op name → rule. Filled by :func:`rule` at import of the rule modules."""


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for the Relax ops ``names`` (one rule per op; a second is an error)."""
    def register(fn: Rule) -> Rule:
        for name in names:
            if name in RULES:
                raise ValueError(f"integerize rule for {name} registered twice")
            RULES[name] = fn
        return fn
    return register

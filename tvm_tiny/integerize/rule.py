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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from tvm_tiny.ir.quant import QParams


@dataclass(frozen=True)
class QTensor:
    """An integer tensor of the rewritten graph and the real values it stands for."""

    value: relax.Expr  # an int8 (or uint8) tensor expression
    qp: QParams
    shape: tuple[int, ...]


@dataclass(frozen=True)
class QConst:
    """A constant integer tensor behind ``dequantize`` (an int8 weight, an int32 bias), kept
    unfolded so a rule can use its integers: ``real = scale * (values - zero_point)`` with
    ``scale`` and ``zero_point`` broadcast along ``axis`` (scalars for per tensor)."""

    values: np.ndarray
    scale: np.ndarray  # float32, size 1 or values.shape[axis]
    zero_point: np.ndarray  # integer, size 1 or values.shape[axis]
    axis: int
    real: np.ndarray  # float32, the dequantized value as TVM folds it

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1


Operand = QTensor | QConst | np.ndarray | None
"""One argument of the float op: a quantized tensor, a quantized constant, a float constant, or
anything else (a shape, a float intermediate of a region)."""


@dataclass(frozen=True)
class OpMatch:
    """One float op between quantization points, as a rule sees it."""

    call: relax.Call  # the float op itself (its attrs: axes, epsilon, ...)
    name: str  # the op name, e.g. "relax.nn.layer_norm"
    operands: tuple[Operand, ...]  # one per ``call.args``
    output: QParams  # the quantize that follows the op
    output_shape: tuple[int, ...]
    # Every float op between the quantization points as (var, call), in order, ``call`` last
    # (one pair for a single op), and each of their inputs that is not one of them (a ``dequantize``
    # var, a constant), as operands: rules of single ops read ``operands`` alone.
    region: tuple[tuple[relax.Var, relax.Call], ...] = ()
    leaves: Mapping[relax.Expr, Operand] = field(default_factory=dict)

    def quantized(self) -> list[QTensor]:
        return [o for o in self.operands if isinstance(o, QTensor)]


class NotInteger(Exception):  # noqa: N818 - a verdict, not a failure: the op stays fake-quant
    """Raised by a rule that cannot compute its op in integers; the message is the reason."""


Rule = Callable[[OpMatch], relax.Expr]
"""Returns an expression of dtype ``match.output.dtype`` and shape ``match.output_shape``."""

RULES: dict[str, Rule] = {}
"""Op name → rule. Filled by :func:`rule` at import of the rule modules."""

REGION_RULES: dict[str, Rule] = {}
"""Root op name → rule for regions of several float ops that are not one elementwise function
of one input (those become lookup tables), e.g. a decomposed LayerNorm ending in a divide or
add. Filled by :func:`region_rule`."""


def rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for the Relax ops ``names`` (one rule per op; a second is an error)."""
    def register(fn: Rule) -> Rule:
        for name in names:
            if name in RULES:
                raise ValueError(f"integerize rule for {name} registered twice")
            RULES[name] = fn
        return fn
    return register


def region_rule(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for multi-op regions whose last op is one of ``names``. The last op does
    not name the region (matmul + bias and conv + bias both end in an add), so several rules
    may share a name: they are tried in registration order, the first that does not raise
    :class:`NotInteger` wins, and if all raise, their reasons are joined."""
    def register(fn: Rule) -> Rule:
        for name in names:
            previous = REGION_RULES.get(name)
            REGION_RULES[name] = fn if previous is None else _first_of(previous, fn)
        return fn
    return register


def _first_of(first: Rule, second: Rule) -> Rule:
    def chained(match: OpMatch) -> relax.Expr:
        try:
            return first(match)
        except NotInteger as err1:
            try:
                return second(match)
            except NotInteger as err2:
                raise NotInteger(f"{err1}; {err2}") from None
    return chained

"""The proof mark: how ``CanonicalizeSelfAttention`` tells the MHSA patterns what it proved.

The canonical chain the patterns match also occurs verbatim in ``onnx.helper`` graphs, including
near misses the canonicalizer rejects (a projection weight shared with another layer, say). So a
match alone proves nothing: the region must also be one the canonicalizer wrote. It says so in
the IR, structurally: the input of every chain it writes is bound as::

    x_proven = R.call_pure_packed("tvm_tiny.proven_attention_input", x, ty_args=x.ty)

an identity that no importer writes. The MHSA pattern checks read it (``patterns.py``); the
layout tracer sees through it (so canonicalizing twice changes nothing); after
``FuseOpsByPattern`` :class:`RemoveProofMarks` replaces every mark by its input again. The mark
sits *before* the region rather than inside it, because ``FuseOpsByPattern`` would turn the
``ExternFunc`` of a marked call inside a region into a parameter of the offloaded function.

Lifetime: written by ``CanonicalizeSelfAttention``, gone after ``partition_for_tiny``. A mark
still read by anything but an offloaded function means a canonical chain no pattern claimed,
and the partitioner then keeps the whole model as it was (:func:`unclaimed_marks`).
"""

from __future__ import annotations

from collections.abc import Iterable

import tvm
from tvm import relax

from tvm_tiny.partition.bindings import bindings_of, readers

PROOF_MARK = "tvm_tiny.proven_attention_input"
"""``ExternFunc`` name of the mark; nothing by that name exists at run time, on purpose."""

_CALL_PURE_PACKED = tvm.ir.Op.get("relax.call_pure_packed")


def mark_proven(value: relax.Expr) -> relax.Expr:
    """``value`` (a bound tensor var) through the proof mark."""
    return relax.op.call_pure_packed(PROOF_MARK, value, ty_args=value.ty)


def is_proof_mark(value: relax.Expr | None) -> bool:
    """Whether ``value`` is a call of the proof mark."""
    return (isinstance(value, relax.Call) and value.op.same_as(_CALL_PURE_PACKED)
            and isinstance(value.args[0], relax.ExternFunc)
            and str(value.args[0].global_symbol) == PROOF_MARK)


def marked_value(value: relax.Expr) -> relax.Expr:
    """The tensor a proof mark passes on (its input)."""
    return value.args[1]


def _bindings(mod: tvm.IRModule) -> list[tuple[relax.Var, relax.Expr]]:
    return [pair for func in mod.functions.values() if isinstance(func, relax.Function)
            for pair in bindings_of(func)]


def count_marks(mod: tvm.IRModule) -> int:
    """Proof marks bound in the Relax functions of ``mod``."""
    return sum(1 for _var, value in _bindings(mod) if is_proof_mark(value))


def unclaimed_marks(mod: tvm.IRModule, offloaded: Iterable[tvm.ir.GlobalVar]) -> int:
    """Proof marks read by anything but a call of an ``offloaded`` function: canonical chains
    that ``FuseOpsByPattern`` left in place, which TVM must never compile."""
    offloaded = set(offloaded)

    def offloaded_call(value: relax.Expr | None) -> bool:
        return (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar)
                and value.op in offloaded)

    unclaimed = 0
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            read_by = readers(func)
            unclaimed += sum(1 for var, value in bindings_of(func) if is_proof_mark(value)
                             and not all(offloaded_call(r) for r in read_by.get(var, [])))
    return unclaimed


@tvm.transform.module_pass(opt_level=0, name="RemoveProofMarks")
class RemoveProofMarks:
    """Replace every proof mark by its input; the last step of ``partition_for_tiny``.

    Also makes a canonicalized module (``CanonicalizeSelfAttention``) compilable by TVM alone,
    as the semantics test of the canonicalizer does.
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        mod = mod.clone()  # the pass infrastructure hands us the caller's module
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function) and any(
                    is_proof_mark(value) for _var, value in bindings_of(func)):
                updates[gv] = _Unmark().visit_expr(func)
        for gv, func in updates.items():
            mod[gv] = func
        return mod


@relax.expr_functor.mutator
class _Unmark(relax.PyExprMutator):
    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if is_proof_mark(binding.value):
            self.set_var_remap(binding.var, self.visit_expr(marked_value(binding.value)))
            return
        super().visit_var_binding_(binding)

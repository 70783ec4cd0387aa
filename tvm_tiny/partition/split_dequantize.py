"""``SplitSharedDequantize``: a matmul reading a shared ``dequantize`` gets a copy of its own.

Rewrite (in ``main``'s dataflow blocks)::

    x = dequantize(q, s, z)          x  = dequantize(q, s, z)
    a = matmul(x, w)          →      x1 = dequantize(q, s, z)
    r = add(x, y)                    a  = matmul(x1, w)
                                     r  = add(x, y)

A QDQ graph dequantizes a tensor once and reads the float value everywhere: the input of an FFN
is also the residual. A pattern region that starts at that dequantize (the int8 linear layer,
``tvm_tiny.linear_s8``) would then hold an intermediate read outside it, and
``FuseOpsByPattern``'s leak check rightly refuses it. A dequantize is pure and elementwise, so
one copy per reader computes the same values; TVM fuses each copy into its reader, so no
buffer is added. Runs after canonicalization, before ``FuseOpsByPattern``.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_tiny.partition.bindings import vars_read
from tvm_tiny.partition.proof_mark import is_proof_mark


def _is_dequantize(value: relax.Expr) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
        and value.op.name == "relax.dequantize"


def _replace_args(value: relax.Expr, subst: dict[relax.Var, relax.Var]) -> relax.Expr:
    """``value`` with the vars of ``subst`` replaced in its direct arguments."""
    if not isinstance(value, relax.Call):
        return value
    args = [subst.get(a, a) if isinstance(a, relax.Var) else
            (relax.Tuple([subst.get(f, f) for f in a.fields]) if isinstance(a, relax.Tuple)
             else a) for a in value.args]
    return relax.Call(value.op, args, value.attrs, value.ty_args, value.span)


def _is_matmul(value: relax.Expr) -> bool:
    """A matmul or a conv2d: the ops an int8 kernel pattern (linear_s8, conv_s8) starts at."""
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) \
        and value.op.name in ("relax.matmul", "relax.nn.conv2d")


def _split_block(block: relax.DataflowBlock, outputs: set[relax.Var]) -> relax.DataflowBlock:
    """Copy each shared dequantize for the matmuls that read it (the linear-layer candidates);
    its other readers keep the original. A dequantize of an attention's proof mark is left
    alone: the MHSA patterns read its projections through that one value."""
    values = {b.var: b.value for b in block.bindings}
    dequantized = {v: d for v, d in values.items() if _is_dequantize(d)
                   and not (isinstance(d.args[0], relax.Var)
                            and is_proof_mark(values.get(d.args[0])))}
    readers: dict[relax.Var, int] = {}
    for b in block.bindings:
        for var in vars_read(b.value):
            readers[var] = readers.get(var, 0) + 1
    for var in outputs:
        readers[var] = readers.get(var, 0) + 1
    shared = {v for v, n in readers.items() if v in dequantized and n > 1}
    if not shared:
        return block
    bindings: list[relax.Binding] = []
    for b in block.bindings:
        subst = {}
        if _is_matmul(b.value):
            for var in vars_read(b.value):
                if var in shared and var not in subst:
                    copy = relax.DataflowVar(f"{var.name}_for_{b.var.name}", var.ty)
                    bindings.append(relax.VarBinding(copy, dequantized[var]))
                    subst[var] = copy
        bindings.append(relax.VarBinding(b.var, _replace_args(b.value, subst)) if subst else b)
    return relax.DataflowBlock(bindings)


@tvm.transform.module_pass(opt_level=0, name="SplitSharedDequantize")
class SplitSharedDequantize:
    """See the module docstring."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        func = mod["main"]
        if not isinstance(func.body, relax.SeqExpr):
            return mod
        outputs = set(vars_read(func.body.body))
        blocks = [_split_block(block, outputs) if isinstance(block, relax.DataflowBlock)
                  else block for block in func.body.blocks]
        body = relax.SeqExpr(blocks, func.body.body)
        new = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
        mod = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
        mod["main"] = new
        return relax.transform.Normalize()(mod)

"""Reading a Relax function's dataflow: its bindings, and which vars each expression reads."""

from __future__ import annotations

from tvm import relax


def bindings_of(func: relax.Function) -> list[tuple[relax.Var, relax.Expr]]:
    """Every (var, value) binding of ``func``, in program order."""
    if not isinstance(func.body, relax.SeqExpr):
        return []
    return [(b.var, b.value) for block in func.body.blocks for b in block.bindings]


def vars_read(expr: relax.Expr) -> list[relax.Var]:
    """The vars ``expr`` reads directly (Relax is in A-normal form: call arguments are leaves,
    tuples of leaves among them)."""
    if isinstance(expr, relax.Var):
        return [expr]
    if isinstance(expr, relax.Call):
        return [v for arg in expr.args for v in vars_read(arg)]
    if isinstance(expr, relax.Tuple):
        return [v for field in expr.fields for v in vars_read(field)]
    if isinstance(expr, relax.TupleGetItem):
        return vars_read(expr.tuple_value)
    return []


def readers(func: relax.Function) -> dict[relax.Var, list[relax.Expr | None]]:
    """var → the values reading it; ``None`` stands for the function's result."""
    found: dict[relax.Var, list[relax.Expr | None]] = {}
    for _var, value in bindings_of(func):
        for read in vars_read(value):
            found.setdefault(read, []).append(value)
    for read in vars_read(func.body.body):
        found.setdefault(read, []).append(None)
    return found

"""``fuse_lookup_tables``: an integer sub-graph that is a function of one int8 tensor → one table.

The rules of :mod:`tvm_tiny.integerize.driver` see one QDQ region at a time, so a float function
that an exporter spreads over several quantization points stays several integer steps. The
``Erf`` form of GELU, ``x * 0.5 * (1 + erf(x / √2))``, is four regions in an onnxruntime QDQ
export: two lookup tables, a fixed-point multiply of ``x`` by the second table's output (a
diamond: both read ``x``), and a last table. Each step is exact, and so is their composition: the
whole chain is a function of the one int8 tensor ``x``, so its 256 values are a table too. Int8
EEGFormer's two GELUs (QEMU instructions on the M4): 711 K as four steps (three tables, 315,032;
the multiplies, 2 x 197,743), 105,007 as one table each.

The pass walks ``main``'s bindings in order and gives every int8 binding the one int8 tensor
it is an elementwise function of, if there is one: every op on the way is elementwise
(:data:`ELEMENTWISE`), its constants are scalars, its tensor operands have the output's shape
(nothing broadcast: a per-channel constant would make the value depend on the position), and a
``take`` indexes a constant 1-D table with uint8 indices (a table of the rules). Such a binding
whose chain is more than one table or clamp is replaced by ``take(table, x as uint8)``; the
table is the chain evaluated on all 256 values of ``x`` by :func:`evaluate_chain`, with the
integer semantics of TVM's C (wrapping casts, arithmetic shifts, floor division). Exact by
construction: the same integers, computed once offline. The steps left without readers are
removed by ``DeadCodeElimination``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.integerize.elementwise import table_constant
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape, tensor_dtype
from tvm_tiny.partition.bindings import bindings_of, readers

IntOp = Callable[[relax.Call, list[np.ndarray]], np.ndarray]


def _clip(call: relax.Call, args: list[np.ndarray]) -> np.ndarray:
    lo, hi = (int(call.args[i].value) for i in (1, 2))
    return np.clip(args[0], lo, hi)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> IntOp:
    return lambda _call, args: fn(args[0], args[1])


ELEMENTWISE: dict[str, IntOp] = {
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.floor_divide": _binary(np.floor_divide),
    "relax.left_shift": _binary(np.left_shift),
    "relax.right_shift": _binary(np.right_shift),  # numpy's is arithmetic on signed, as gcc's
    "relax.maximum": _binary(np.maximum),
    "relax.minimum": _binary(np.minimum),
    "relax.less": _binary(np.less),
    "relax.greater": _binary(np.greater),
    "relax.less_equal": _binary(np.less_equal),
    "relax.greater_equal": _binary(np.greater_equal),
    "relax.negative": lambda _call, args: np.negative(args[0]),
    "relax.clip": _clip,
    "relax.astype": lambda _call, args: args[0],  # the cast itself is applied by the caller
    "relax.take": lambda _call, args: args[0][args[1]],
}
"""The integer elementwise ops the rules emit, with their numpy arithmetic (results are cast
to the binding's dtype afterwards, which is C's conversion: modular for integers)."""

_TRIVIAL = (("relax.astype", "relax.take"), ("relax.clip",), ("relax.astype",))
"""Chains already as cheap as a table (or cheaper): left alone."""


def _is_table_take(call: relax.Call) -> bool:
    table = call.args[0]
    return (is_constant(table) and len(static_shape(table)) == 1
            and tensor_dtype(call.args[1]) == "uint8" and int(call.attrs.axis) == 0)


class _Chain:
    """The int8 source of a binding and the bindings from it to the binding, in order."""

    def __init__(self, source: relax.Var, steps: list[tuple[relax.Var, relax.Call]]) -> None:
        self.source = source
        self.steps = steps

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(call.op.name for _, call in self.steps)


def _source_of(var: relax.Var, call: relax.Call, chains: dict[relax.Var, _Chain | None],
               shape: tuple[int, ...]) -> _Chain | None:
    """The chain of ``var = call`` if it is an elementwise function of one int8 tensor."""
    name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
    if name not in ELEMENTWISE:
        return None
    tensor_args = list(call.args[1:]) if name == "relax.take" else list(call.args)
    if name == "relax.take" and not _is_table_take(call):
        return None
    if name == "relax.clip":
        tensor_args = tensor_args[:1]
    source: relax.Var | None = None
    steps: list[tuple[relax.Var, relax.Call]] = []
    for arg in tensor_args:
        if is_constant(arg):
            if int(np.prod(static_shape(arg))) != 1:
                return None  # a per-channel constant: the value depends on the position
            continue
        if not isinstance(arg, relax.Var) or static_shape(arg) != shape:
            return None
        chain = chains.get(arg)
        if chain is None:  # a leaf: only an int8 tensor can be tabulated
            if tensor_dtype(arg) != "int8":
                return None
            arg_source, arg_steps = arg, []
        else:
            arg_source, arg_steps = chain.source, chain.steps
        if source is not None and not source.same_as(arg_source):
            return None  # a function of two tensors (a residual add)
        source = arg_source
        steps.extend(s for s in arg_steps if all(not s[0].same_as(t[0]) for t in steps))
    if source is None:
        return None
    return _Chain(source, [*steps, (var, call)])


def evaluate_chain(chain: _Chain) -> np.ndarray:
    """The int8 value of the chain's last binding for each int8 source value -128 .. 127."""
    env: dict[relax.Var, np.ndarray] = {chain.source: np.arange(-128, 128, dtype=np.int8)}

    def value(arg: relax.Expr) -> np.ndarray:
        if is_constant(arg):
            return np.asarray(constant_value(arg))
        return env[arg]

    for var, call in chain.steps:
        name = call.op.name
        args = [value(a) for a in call.args if isinstance(a, relax.Expr) and not
                isinstance(a, tvm.tirx.IntImm)]
        if name == "relax.take":
            table = args[0]
            result = table[args[1].astype(np.int64)]
        else:
            wide = [np.asarray(a).astype(np.int64) if np.asarray(a).dtype != np.bool_ else a
                    for a in args]
            result = ELEMENTWISE[name](call, wide)
        env[var] = np.asarray(result).astype(tensor_dtype(var))
    return env[chain.steps[-1][0]]


@relax.expr_functor.mutator
class _TableFuser(relax.PyExprMutator):
    def __init__(self, replacements: dict[relax.Var, tuple[relax.Var, np.ndarray]]) -> None:
        super().__init__()
        self.replacements = replacements

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.replacements:
            super().visit_var_binding_(binding)
            return
        source, table = self.replacements[binding.var]
        name = f"{binding.var.name}_table"
        index = self.builder_.emit(relax.op.astype(self.visit_expr(source), "uint8"), name)
        lookup = relax.op.take(table_constant(table), index, axis=0, mode="fast")
        self.set_var_remap(binding.var, self.builder_.emit(lookup, name))


def _extends(chain_of_value: dict[relax.Expr, _Chain], reader: relax.Expr | None,
             chain: _Chain) -> bool:
    """Whether ``reader`` (a binding's value; None: the function's result) is itself in a
    chain of the same source, which its own table replaces."""
    owner = None if reader is None else chain_of_value.get(reader)
    return owner is not None and owner.source.same_as(chain.source)


def fuse_lookup_tables(mod: tvm.IRModule) -> tuple[tvm.IRModule, int]:
    """``mod`` with every tabulable int8 chain of ``main`` one table (module docstring), and
    how many tables replaced chains. Only a chain's last int8 step is tabulated: one read by
    something outside the chain (the next layer, the result)."""
    func = mod["main"]
    chains: dict[relax.Var, _Chain | None] = {}
    for var, value in bindings_of(func):
        shape = static_shape(var)
        if isinstance(value, relax.Call) and shape is not None:
            chains[var] = _source_of(var, value, chains, shape)
    chain_of_value = {c.steps[-1][1]: c for c in chains.values() if c is not None}
    replacements: dict[relax.Var, tuple[relax.Var, np.ndarray]] = {}
    for var, value_readers in readers(func).items():
        chain = chains.get(var)
        if chain is None or tensor_dtype(var) != "int8" or chain.ops in _TRIVIAL:
            continue
        if all(_extends(chain_of_value, reader, chain) for reader in value_readers):
            continue  # read only by longer chains of the same tensor: tabulated with them
        # table[u] for the uint8 index order of apply_table's input: by signed value + 128
        replacements[var] = (chain.source, evaluate_chain(chain))
    if not replacements:
        return mod, 0
    new_func = _TableFuser(replacements).visit_expr(func)
    mod = mod.clone()
    mod["main"] = new_func
    return relax.transform.DeadCodeElimination(["main"])(mod), len(replacements)

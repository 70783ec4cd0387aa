"""``IntegerizeQDQ``: the float ops of a QDQ graph, between quantization points, → integer Relax.

A QDQ graph computes every op in float: ``y = quantize(f(dequantize(a), ..., const), sy, zy)``.
For each such ``quantize`` the driver collects its *region* (the float ops back to the
``dequantize`` of int8 activations and to constants, int8 weights behind their ``dequantize``
included), describes it as an :class:`~tvm_tiny.integerize.rule.OpMatch` and asks a rule for an
int8 expression computing ``y``:

- one op: ``RULES[op name]`` (:mod:`.elementwise`, :mod:`.layout`, :mod:`.matmul`, and the rule
  modules of :data:`RULE_MODULES`);
- several ops that are one elementwise function of one input: a lookup table;
- several ops otherwise: ``REGION_RULES[name of the last op]`` (e.g. Gemm's matmul + bias).

``quantize(dequantize(q))`` becomes ``q`` on equal parameters, else an exact rescaling table.
A rule that cannot prove its region integer raises ``NotInteger``: the region stays fake-quant
and :attr:`IntegerizeQDQ.not_integerized` says why. The float code left without readers is
removed. Last, integer chains spread over several regions that are a function of one int8
tensor (GELU's Erf form) become one table (:mod:`.fuse_tables`). Quantize remains only where a
float value enters (the graph input), dequantize only where one leaves (the graph output, and
the inputs of the regions left fake-quant).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

# The rule modules register into RULES / REGION_RULES when imported.
import tvm_tiny.integerize.conv as _conv
import tvm_tiny.integerize.elementwise as _elementwise
import tvm_tiny.integerize.layernorm as _layernorm
import tvm_tiny.integerize.layout as _layout
import tvm_tiny.integerize.matmul as _matmul
import tvm_tiny.integerize.pool as _pool
import tvm_tiny.integerize.softmax as _softmax
from tvm_tiny.integerize.fuse_tables import fuse_lookup_tables
from tvm_tiny.integerize.rule import (
    REGION_RULES,
    RULES,
    NotInteger,
    Operand,
    OpMatch,
    QConst,
    QTensor,
)
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.quant import QParams
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape, tensor_dtype
from tvm_tiny.partition.bindings import bindings_of
from tvm_tiny.partition.qdq import dequantize_like_tvm

RULE_MODULES = tuple(m.__name__ for m in (_elementwise, _layout, _matmul, _layernorm,
                                           _softmax, _pool, _conv))
"""Every module holding rules (imported above, so that their rules are registered)."""

MAX_REGION_OPS = 32
"""A region larger than this is not a QDQ op (a float sub-graph with no quantization points)."""

_DEQUANTIZE, _QUANTIZE = "relax.dequantize", "relax.quantize"
_CONST_LAYOUT = ("relax.permute_dims", "relax.reshape")


def _op_name(expr: relax.Expr | None) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def qparams_of(call: relax.Call) -> QParams | None:
    """The per-tensor parameters of a ``quantize`` / ``dequantize`` (None: per channel, or not
    constant)."""
    scale, zero_point = call.args[1], call.args[2]
    if not (is_constant(scale) and is_constant(zero_point)):
        return None
    s, z = constant_value(scale), constant_value(zero_point)
    if s.size != 1 or z.size != 1:
        return None
    dtype = str(call.attrs.out_dtype) if _op_name(call) == _QUANTIZE \
        else tensor_dtype(call.args[0])
    if dtype not in (DType.INT8, DType.UINT8):
        return None
    return QParams(float(s.reshape(())), int(z.reshape(())), DType(dtype))


def _qconst(call: relax.Call) -> QConst | None:
    """``dequantize(integer constant)`` as a QConst (None when it is not one)."""
    if _op_name(call) != _DEQUANTIZE or not all(is_constant(a) for a in call.args[:3]):
        return None
    values, scale, zero_point = (constant_value(a) for a in call.args[:3])
    if values.dtype.kind not in "iu":
        return None
    axis = int(call.attrs.axis) % max(values.ndim, 1)
    real = dequantize_like_tvm(values, scale, zero_point, axis)
    return QConst(values, scale.astype(np.float32).reshape(-1),
                  zero_point.reshape(-1), axis, real)


def _transform_qconst(call: relax.Call, w: QConst) -> QConst | None:
    """A layout op applied to a constant weight, in numpy (Gemm's ``transB`` transpose)."""
    name = _op_name(call)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        order = list(range(w.values.ndim))[::-1] if axes is None else [int(a) for a in axes]
        return QConst(np.ascontiguousarray(np.transpose(w.values, order)), w.scale,
                      w.zero_point, order.index(w.axis), np.transpose(w.real, order))
    if name == "relax.reshape" and w.per_tensor:
        shape = static_shape(call)
        if shape is None:
            return None
        return QConst(w.values.reshape(shape), w.scale, w.zero_point, 0, w.real.reshape(shape))
    return None


@dataclass
class _Region:
    calls: list[tuple[relax.Var, relax.Call]] = field(default_factory=list)
    leaves: dict[relax.Expr, Operand] = field(default_factory=dict)


@relax.expr_functor.mutator
class _Integerizer(relax.PyExprMutator):
    """Replaces each ``quantize`` a rule integerizes by the rule's int8 expression."""

    def __init__(self, func: relax.Function) -> None:
        super().__init__()
        self.bound = dict(bindings_of(func))
        self.params = set(func.params)
        self.not_integerized: list[str] = []
        self.integerized: list[str] = []

    # -- reading the original graph ---------------------------------------------------------

    def _leaf(self, expr: relax.Expr, region: _Region) -> bool:
        """Record ``expr`` as a region input if it is one; False when it is a float op."""
        if is_constant(expr):
            region.leaves[expr] = constant_value(expr)
            return True
        if not isinstance(expr, relax.Var):
            region.leaves[expr] = None  # a shape, a prim value, a tuple handled by its rule
            return True
        if expr in self.params:
            raise NotInteger(f"reads the float input '{expr.name}'")
        value = self.bound.get(expr)
        name = _op_name(value)
        if name == _DEQUANTIZE:
            const = _qconst(value)
            if const is not None:
                region.leaves[expr] = const
                return True
            qp = qparams_of(value)
            if qp is None:
                raise NotInteger(f"'{expr.name}' is dequantized per channel")
            source = value.args[0]
            shape = static_shape(source)
            if shape is None:
                raise NotInteger(f"'{expr.name}' has no static shape")
            region.leaves[expr] = QTensor(self.visit_expr(source), qp, shape)
            return True
        if name in _CONST_LAYOUT and isinstance(value.args[0], relax.Var):
            inner = _qconst(self.bound.get(value.args[0]))
            moved = None if inner is None else _transform_qconst(value, inner)
            if moved is not None:
                region.leaves[expr] = moved
                return True
        if name is None or tensor_dtype(expr) != DType.FLOAT32:
            raise NotInteger(f"reads '{expr.name}', which is not a quantized tensor")
        return False

    def _collect(self, var: relax.Var, region: _Region) -> None:
        """Add ``var``'s float op and, before it, every float op it reads."""
        if any(v.same_as(var) for v, _ in region.calls):
            return
        call = self.bound[var]
        for arg in call.args:
            for item in (arg.fields if isinstance(arg, relax.Tuple) else [arg]):
                if item in region.leaves:
                    continue
                if not self._leaf(item, region):
                    self._collect(item, region)
        if len(region.calls) >= MAX_REGION_OPS:
            raise NotInteger(f"more than {MAX_REGION_OPS} float ops without a quantize")
        region.calls.append((var, call))

    def _match(self, quantize: relax.Call) -> OpMatch | QTensor:
        """The region of one ``quantize`` (a QTensor when it reads a dequantize directly)."""
        output = qparams_of(quantize)
        if output is None or output.dtype != DType.INT8:
            raise NotInteger("the quantize is per channel or not to int8")
        source = quantize.args[0]
        region = _Region()
        if not isinstance(source, relax.Var) or self._leaf(source, region):
            operand = region.leaves.get(source)
            if isinstance(operand, QTensor):
                return operand
            raise NotInteger("quantizes a constant")
        self._collect(source, region)
        var, call = region.calls[-1]
        shape = static_shape(var)
        if shape is None:
            raise NotInteger("the output has no static shape")
        operands = tuple(region.leaves.get(a) for a in call.args)
        return OpMatch(call, str(call.op.name), operands, output, shape,
                       tuple(region.calls), dict(region.leaves))

    def _integerize(self, quantize: relax.Call) -> relax.Expr:
        match = self._match(quantize)
        output = qparams_of(quantize)
        if isinstance(match, QTensor):
            return _elementwise.rescale(match, output)
        if len(match.region) == 1:
            rule = RULES.get(match.name)
            if rule is None:
                raise NotInteger(f"no integer rule for {match.name}")
            return rule(match)
        if _elementwise.is_lookup_region(match):
            return _elementwise.lookup_table_rule(match)
        rule = REGION_RULES.get(match.name)
        if rule is None:
            ops = " -> ".join(c.op.name.removeprefix("relax.") for _, c in match.region)
            raise NotInteger(f"no integer rule for the region {ops}")
        return rule(match)

    # -- writing the new graph --------------------------------------------------------------

    def _emit(self, expr: relax.Expr, name: str, memo: dict[relax.Expr, relax.Expr]
              ) -> relax.Expr:
        """Emit a rule's nested expression one call per binding (A-normal form), each shared
        sub-expression once."""
        if expr in memo:
            return memo[expr]
        out = expr
        if isinstance(expr, relax.Call):
            args = [self._emit(a, name, memo) for a in expr.args]
            out = self.builder_.emit(relax.Call(expr.op, args, expr.attrs, expr.ty_args), name)
        elif isinstance(expr, relax.Tuple):
            out = relax.Tuple([self._emit(f, name, memo) for f in expr.fields])
        memo[expr] = out
        return out

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if _op_name(value) == _QUANTIZE and binding.var not in self.params:
            name = binding.var.name
            try:
                expr = self._integerize(value)
            except NotInteger as verdict:
                if not _is_graph_input(value, self.params):
                    self.not_integerized.append(f"{name}: {verdict}")
            else:
                new = self._emit(expr, f"{name}_int", {})
                self.integerized.append(name)
                self.set_var_remap(binding.var, new)
                return
        super().visit_var_binding_(binding)


def _is_graph_input(quantize: relax.Call, params: set[relax.Var]) -> bool:
    """``quantize(x)`` of a float model input: the one quantize that stays by design."""
    return isinstance(quantize.args[0], relax.Var) and quantize.args[0] in params


@tvm.transform.module_pass(opt_level=0, name="IntegerizeQDQ")
class IntegerizeQDQ:
    """Rewrite the QDQ regions of ``main`` into integer Relax (the module docstring: regions,
    rules, what stays fake-quant).

    Preconditions: static shapes; constants bound; run after ``partition_for_tiny(...,
    keep_int8_weights=True)`` (offloaded functions are int8 in, int8 out, and the int8 weights
    still read ``dequantize(int8 constant)``) and before ``RunCodegen``. Run ``FoldConstant``
    after it: the int8 weights of regions left fake-quant fold then to float, as before.

    After the pass, :attr:`not_integerized` lists each region left fake-quant as
    ``"<quantize var>: <reason>"`` and :attr:`integerized` the quantize vars rewritten.
    """

    def __init__(self, fuse_tables: bool = True) -> None:
        self.not_integerized: list[str] = []
        self.integerized: list[str] = []
        self.fuse_tables = fuse_tables

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        func = mod["main"]
        rewriter = _Integerizer(func)
        new_func = rewriter.visit_expr(func)
        self.not_integerized.extend(rewriter.not_integerized)
        self.integerized.extend(rewriter.integerized)
        if not rewriter.integerized:
            return mod
        mod = mod.clone()
        mod["main"] = new_func
        mod = relax.transform.DeadCodeElimination(["main"])(mod)
        if self.fuse_tables:
            mod, _ = fuse_lookup_tables(mod)
        return mod


@dataclass
class IOQuantization:
    """Per input and output of ``main``: its QParams once int8, None where it stays float."""

    inputs: list[QParams | None] = field(default_factory=list)
    outputs: list[QParams | None] = field(default_factory=list)


@relax.expr_functor.mutator
class _IOStripper(relax.PyExprMutator):
    """Drops the input quantizes (their vars become the int8 params) and output dequantizes."""

    def __init__(self, quantized_inputs: dict[relax.Var, relax.Var],
                 output_vars: dict[relax.Var, QParams]) -> None:
        super().__init__()
        self.quantized_inputs = quantized_inputs  # quantize var -> int8 param
        self.output_vars = output_vars

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.quantized_inputs:
            self.set_var_remap(binding.var, self.quantized_inputs[binding.var])
            return
        if binding.var in self.output_vars:
            value = self.visit_expr(binding.value.args[0])
            new_var = relax.Var(binding.var.name, value.ty)
            self.builder_.emit_normalized(relax.VarBinding(new_var, value))
            self.set_var_remap(binding.var, new_var)
            return
        super().visit_var_binding_(binding)


def make_io_int8(mod: tvm.IRModule, io: IOQuantization) -> tvm.IRModule:
    """``main`` taking int8 where a float input is only quantized (per tensor), and returning
    int8 where an output is a dequantize (per tensor); ``io`` receives the parameters, in the
    order of ``main``'s inputs and outputs (TFLite Micro's int8 I/O convention)."""
    func = mod["main"]
    bound = bindings_of(func)
    reads: dict[relax.Var, list[tuple[relax.Var, relax.Expr]]] = {}
    for var, value in bound:
        if isinstance(value, relax.Call):
            for arg in value.args:
                if isinstance(arg, relax.Var) and arg in func.params:
                    reads.setdefault(arg, []).append((var, value))
    params, quantized_inputs = [], {}
    for param in func.params:
        users = reads.get(param, [])
        qps = {qparams_of(v) if _op_name(v) == _QUANTIZE else None for _, v in users}
        if users and len(qps) == 1 and None not in qps:
            (qp,) = qps
            new = relax.Var(param.name, relax.type.TensorType(static_shape(param), str(qp.dtype)))
            quantized_inputs.update({var: new for var, _ in users})
            params.append(new)
            io.inputs.append(qp)
        else:
            params.append(param)
            io.inputs.append(None)
    result = func.body.body
    outs = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    values = dict(bound)
    output_vars = {}
    for out in outs:
        value = values.get(out)
        qp = qparams_of(value) if _op_name(value) == _DEQUANTIZE else None
        if qp is not None and not is_constant(value.args[0]):
            output_vars[out] = qp
        io.outputs.append(qp)
    body = _IOStripper(quantized_inputs, output_vars).visit_expr(func.body)
    new = relax.Function(params, body, None, func.is_pure, func.attrs, func.span)
    mod = mod.clone()
    mod["main"] = new
    return relax.transform.DeadCodeElimination(["main"])(mod)

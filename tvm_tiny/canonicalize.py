"""``CanonicalizeSelfAttention``: rewrite every recognizable MHSA into one canonical op chain.

Rewrite (per attention found)::

    any projections/layout plumbing → matmul(softmax(s · matmul(Q, K)), V) → plumbing → out-proj
    ⇒  q,k,v = add(matmul(x, Wq|Wk|Wv), b)   (x: the true [1, S, E] input, weights per head order)
       Q = permute_dims(reshape(q, [1,S,H,P]), [0,2,1,3]); K = ... [0,2,3,1]; V = ... [0,2,1,3]
       y = add(matmul(reshape(permute_dims(matmul(softmax(multiply(matmul(Q,K), s)), V),
                                           [0,2,1,3]), [1,S,H·P]), Wo), bo)

The attention core is found with a dataflow pattern (``matmul(softmax(scaled matmul), ·)``); the
rest is recovered by exact index tracing through layout operators (``layout_trace.py``), so the
onnx.helper, ``torch.onnx.export`` (packed ``in_proj`` split by ``take``/``split``,
sequence-first, √scale on Q and K) and hand-written PyTorch styles all land in the same form,
which ``patterns.py`` then matches with a single pattern.

Preconditions: constants bound in the function (``from_onnx(keep_params_in_input=False)``);
``FoldConstant`` first, so shape arithmetic of the exporters is folded. Runs before partitioning.
Not rewritten (each with a reason, see :func:`find_attention`): masked scores, cross-attention,
weights or intermediates used outside the attention, batch > 1, non-constant weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from .layout_trace import LayoutTracer, Traced
from .mhsa_weights import MhsaShape, MhsaWeights
from .relax_compat import constant_value, is_constant, static_shape

# Deliberately loose (any softmax feeding a matmul): find_attention() then proves or rejects the
# rest, so near misses such as masked scores are reported instead of silently skipped.
ATTENTION_CORE = is_op("relax.matmul")(is_op("relax.nn.softmax")(wildcard()), wildcard())
"""``A·V`` with ``A = softmax(...)``: the anchor every MHSA shares."""


class Rejected(Exception):
    """An attention core that is not a self-attention we can offload (the message says why)."""


@dataclass
class AttentionMatch:
    """A recognized self-attention: its input, weights, shape and the var it computes."""

    x: relax.Expr
    weights: MhsaWeights
    shape: MhsaShape
    root: relax.Var
    root_shape: tuple[int, ...]
    region: list[relax.Var]


@dataclass(frozen=True)
class _Projection:
    data: relax.Expr
    weight: np.ndarray  # [E, N]
    bias: np.ndarray | None  # [N]
    consts: tuple[relax.Expr, ...]
    vars: tuple[relax.Var, ...]


class _Uses:
    """Who uses each var and each constant in a function (for leak and sharing checks)."""

    def __init__(self, func: relax.Function) -> None:
        self.var_users: dict[relax.Var, list[relax.Var | None]] = {}
        self.const_users: list[tuple[relax.Expr, relax.Var]] = []
        for block in func.body.blocks:
            for binding in block.bindings:
                self._scan(binding.value, binding.var)
        self._scan(func.body.body, None)  # the function result counts as an outside user

    def _scan(self, expr: relax.Expr, user: relax.Var | None) -> None:
        if isinstance(expr, relax.Var):
            self.var_users.setdefault(expr, []).append(user)
        elif is_constant(expr):
            if user is not None:
                self.const_users.append((expr, user))
        elif isinstance(expr, relax.Call):
            for arg in expr.args:
                self._scan(arg, user)
        elif isinstance(expr, relax.Tuple):
            for field in expr.fields:
                self._scan(field, user)
        elif isinstance(expr, relax.TupleGetItem):
            self._scan(expr.tuple_value, user)

    def users_of(self, var: relax.Var) -> list[relax.Var | None]:
        return self.var_users.get(var, [])

    def const_used_outside(self, const: relax.Expr, region: set[relax.Var]) -> bool:
        return any(c.same_as(const) and user not in region for c, user in self.const_users)


def _op_name(value: relax.Expr | None) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _as_projection(tracer: LayoutTracer, expr: relax.Expr) -> _Projection:
    """``add(matmul(data, W), b)`` / ``add(b, matmul(..))`` / ``matmul(data, W)`` with constants."""
    value = tracer.producer(expr)
    bias, vars_ = None, [expr]
    if _op_name(value) == "relax.add":
        a, b = value.args
        matmul_var, bias_expr = (a, b) if is_constant(b) else (b, a)
        if not is_constant(bias_expr):
            raise Rejected("projection bias is not a constant")
        bias = constant_value(bias_expr).reshape(-1)
        value = tracer.producer(matmul_var)
        vars_.append(matmul_var)
    if _op_name(value) != "relax.matmul":
        raise Rejected("Q/K/V do not come from a matmul projection")
    data, weight_expr = value.args
    if not is_constant(weight_expr):
        raise Rejected("projection weight is not a constant (bind parameters first)")
    weight = constant_value(weight_expr)
    if weight.ndim != 2:
        raise Rejected(f"projection weight has rank {weight.ndim}, expected 2")
    if bias is not None and bias.shape[0] != weight.shape[1]:
        raise Rejected(f"projection bias has {bias.shape[0]} values for {weight.shape[1]} outputs")
    # Only the weight matrix counts for the sharing check: exporters merge equal biases (e.g. the
    # zero biases of untrained torch layers) into one initializer, which costs nothing to copy.
    return _Projection(data, weight, bias, (weight_expr,), tuple(vars_))


def _head_columns(index: np.ndarray, width: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a traced [G, S, P] index into per-head columns [G, P] and projection rows [G, S]."""
    cols, rows = index % width, index // width
    if not (cols == cols[:, :1, :]).all():
        raise Rejected(f"{what}: head columns vary along the sequence")
    if not (rows == rows[:, :, :1]).all():
        raise Rejected(f"{what}: sequence rows vary inside a head")
    return cols[:, 0, :], rows[:, :, 0]


def find_attention(func: relax.Function, bindings: dict[relax.Var, relax.Expr],
                   core: relax.Var) -> AttentionMatch:
    """Recognize the self-attention around ``core`` (an ``A·V`` var) or raise :class:`Rejected`."""
    tracer = LayoutTracer(bindings)
    uses = _Uses(func)
    probs_var, v_op = bindings[core].args
    probs = bindings[probs_var]
    if int(probs.attrs.axis) not in (-1, len(static_shape(probs_var)) - 1):
        raise Rejected("softmax is not over the last axis")
    scores = tracer.trace(probs.args[0])
    qk_value = tracer.producer(scores.source) if scores else None
    if scores is None or _op_name(qk_value) != "relax.matmul" or not np.array_equal(
            scores.index.reshape(-1), np.arange(scores.index.size)):
        raise Rejected("scores are modified before softmax (masked attention?)")
    q_op, k_op = qk_value.args
    traces: dict[str, Traced] = {}
    for name, op in (("Q", q_op), ("K", k_op), ("V", v_op)):
        traced = tracer.trace(op)
        if traced is None or len(traced.index.shape) < 3:
            raise Rejected(f"{name} operand has no static [.., S, P] shape")
        traces[name] = traced
    k_index = np.swapaxes(traces["K"].index, -1, -2)
    seq, proj = traces["Q"].index.shape[-2:]
    groups = int(np.prod(traces["Q"].index.shape[:-2]))
    projections, cols, rows = {}, {}, {}
    for name, index in (("Q", traces["Q"].index), ("K", k_index), ("V", traces["V"].index)):
        if index.shape[-2] != seq:
            raise Rejected(f"{name} has sequence length {index.shape[-2]}, Q has {seq} "
                           "(cross-attention?)")
        if index.shape[-1] != proj or int(np.prod(index.shape[:-2])) != groups:
            raise Rejected(f"{name} has head layout {list(index.shape)}, Q has "
                           f"{list(traces['Q'].index.shape)}")
        projections[name] = _as_projection(tracer, traces[name].source)
        width = projections[name].weight.shape[1]
        cols[name], rows[name] = _head_columns(index.reshape(groups, seq, proj), width, name)
    x, embed = _common_input(tracer, projections)
    x_rows = {name: _input_rows(tracer, projections[name].data, x, embed) for name in projections}
    for name in projections:
        if not np.array_equal(x_rows[name][rows[name]], np.tile(np.arange(seq), (groups, 1))):
            raise Rejected(f"{name} rows are not the input sequence in order (batch > 1?)")
    heads = groups
    root, root_shape, wo, bo, out_region = _output_projection(
        tracer, uses, bindings, core, heads, seq, proj)
    scale = scores.scale * traces["Q"].scale * traces["K"].scale
    v_scale = traces["V"].scale

    def gather(name: str, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
        p = projections[name]
        order = cols[name].reshape(-1)
        bias = None if p.bias is None else (p.bias[order] * factor).astype(np.float32)
        return (p.weight[:, order] * factor).astype(np.float32), bias

    wq, bq = gather("Q")
    wk, bk = gather("K")
    wv, bv = gather("V", v_scale)
    weights = MhsaWeights(wq=wq, wk=wk, wv=wv, wo=wo, bq=bq, bk=bk, bv=bv, bo=bo,
                          scale=float(scale))
    shape = MhsaShape(seq=seq, embed=embed, heads=heads, proj=proj, out_features=wo.shape[1])
    region = {core, probs_var, *scores.through, scores.source, *out_region}
    for traced in traces.values():
        region.update(traced.through)
    for p in projections.values():
        region.update(p.vars)
    _check_no_leaks(uses, region, root)
    for p in projections.values():
        for const in p.consts:
            if uses.const_used_outside(const, region):
                raise Rejected("a projection weight is shared with nodes outside the attention")
    return AttentionMatch(x, weights, shape, root, root_shape, sorted(region, key=str))


def _common_input(tracer: LayoutTracer, projections: dict[str, _Projection]
                  ) -> tuple[relax.Expr, int]:
    sources = {name: tracer.trace(p.data) for name, p in projections.items()}
    if any(t is None for t in sources.values()):
        raise Rejected("projection input has no static shape")
    first = sources["Q"].source
    for name, traced in sources.items():
        if not traced.source.same_as(first):
            raise Rejected(f"{name} is projected from a different tensor than Q (cross-attention)")
    embed = projections["Q"].weight.shape[0]
    for name, p in projections.items():
        if p.weight.shape[0] != embed:
            raise Rejected(f"{name} weight expects {p.weight.shape[0]} features, Q {embed}")
    return first, embed


def _input_rows(tracer: LayoutTracer, data: relax.Expr, x: relax.Expr, embed: int) -> np.ndarray:
    """Row r of the projection input is row ``result[r]`` of ``x`` (viewed as [rows, E])."""
    traced = tracer.trace(data)
    index = traced.index.reshape(-1, embed)
    x_shape = static_shape(x)
    if x_shape is None or x_shape[-1] != embed:
        raise Rejected(f"input {x_shape} does not end in the embedding size {embed}")
    if not np.array_equal(index % embed, np.tile(np.arange(embed), (index.shape[0], 1))):
        raise Rejected("projection input permutes the embedding axis")
    return index[:, 0] // embed


def _output_projection(tracer: LayoutTracer, uses: _Uses, bindings: dict[relax.Var, relax.Expr],
                       core: relax.Var, heads: int, seq: int, proj: int):  # noqa: ANN202
    """Follow ``core`` forward through single-use layout ops to ``add(matmul(ctx, Wo), bo)``."""
    chain, current = [], core
    while True:
        users = uses.users_of(current)
        if len(users) != 1 or users[0] is None:
            raise Rejected("attention output is used outside the attention")
        nxt = users[0]
        if _op_name(bindings.get(nxt)) == "relax.matmul":
            break
        if tracer._step(bindings.get(nxt)) is None:  # not a layout op
            raise Rejected("attention output does not reach an output projection")
        chain.append(nxt)
        current = nxt
    matmul_var = nxt
    ctx, wo_expr = bindings[matmul_var].args
    if not is_constant(wo_expr) or not ctx.same_as(current):
        raise Rejected("output projection weight is not a constant")
    wo_src = constant_value(wo_expr)
    root, bo_src, region = matmul_var, None, [*chain, matmul_var]
    consts = [wo_expr]
    users = uses.users_of(matmul_var)
    if len(users) == 1 and users[0] is not None and _op_name(bindings.get(users[0])) == "relax.add":
        a, b = bindings[users[0]].args
        bias_expr = b if is_constant(b) else a if is_constant(a) else None
        if bias_expr is not None and constant_value(bias_expr).size == wo_src.shape[1]:
            bo_src = constant_value(bias_expr).reshape(-1).astype(np.float32)
            root = users[0]
            region.append(root)
    traced = tracer.trace(ctx)
    if traced is None or not traced.source.same_as(core) or traced.scale != 1.0:
        raise Rejected("output projection input is not a re-layout of the attention output")
    index = traced.index.reshape(-1, wo_src.shape[0])
    if index.shape[0] != seq or wo_src.shape[0] != heads * proj:
        raise Rejected(f"output projection input {list(index.shape)} is not [S, H*P]")
    g, s, p = index // (seq * proj), (index // proj) % seq, index % proj
    if not (np.array_equal(s, np.tile(np.arange(seq)[:, None], (1, index.shape[1])))
            and (g == g[:1]).all() and (p == p[:1]).all()):
        raise Rejected("output projection input mixes sequence positions")
    order = np.empty(heads * proj, dtype=np.int64)
    order[g[0] * proj + p[0]] = np.arange(heads * proj)
    wo = wo_src[order].astype(np.float32)
    for const in consts:
        if uses.const_used_outside(const, set(region)):
            raise Rejected("the output projection weight is shared outside the attention")
    root_shape = static_shape(root)
    if root_shape is None or int(np.prod(root_shape[:-1])) != seq:
        raise Rejected("output projection result is not [.., S, E_out]")
    return root, root_shape, wo, bo_src, region


def _check_no_leaks(uses: _Uses, region: set[relax.Var], root: relax.Var) -> None:
    for var in region:
        if var.same_as(root):
            continue
        for user in uses.users_of(var):
            if user is None or user not in region:
                raise Rejected(f"intermediate '{var.name}' is used outside the attention")


def canonical_attention(match: AttentionMatch) -> tuple[relax.Expr, relax.Constant]:
    """The canonical op chain of ``match`` (see the module docstring), shaped like its root,
    and its scale constant, which identifies the region to the partitioner's pattern check."""
    s, e, h, p = match.shape.seq, match.shape.embed, match.shape.heads, match.shape.proj
    w = match.weights
    x = match.x
    if static_shape(x) != (1, s, e):
        x = relax.op.reshape(x, (1, s, e))

    def project(data: relax.Expr, weight: np.ndarray, bias: np.ndarray | None) -> relax.Expr:
        out = relax.op.matmul(data, relax.const(weight))
        return out if bias is None else relax.op.add(out, relax.const(bias))

    def heads(value: relax.Expr, axes: list[int]) -> relax.Expr:
        return relax.op.permute_dims(relax.op.reshape(value, (1, s, h, p)), axes)

    q = heads(project(x, w.wq, w.bq), [0, 2, 1, 3])
    k = heads(project(x, w.wk, w.bk), [0, 2, 3, 1])
    v = heads(project(x, w.wv, w.bv), [0, 2, 1, 3])
    scale = relax.const(np.float32(w.scale))
    scores = relax.op.multiply(relax.op.matmul(q, k), scale)
    ctx = relax.op.matmul(relax.op.nn.softmax(scores, axis=-1), v)
    ctx = relax.op.reshape(relax.op.permute_dims(ctx, [0, 2, 1, 3]), (1, s, h * p))
    out = project(ctx, w.wo, w.bo)
    if tuple(match.root_shape) != (1, s, match.shape.out_features):
        out = relax.op.reshape(out, match.root_shape)
    return out, scale


def attention_cores(func: relax.Function) -> list[tuple[relax.Var, dict]]:
    """Every ``A·V`` var of ``func`` with the bindings of its dataflow block."""
    found = []
    for block in func.body.blocks:
        bindings = {b.var: b.value for b in block.bindings}
        for var, value in bindings.items():
            if isinstance(value, relax.Call) and ATTENTION_CORE.match(value, var2val=bindings):
                found.append((var, bindings))
    return found


def canonicalize_function(func: relax.Function
                          ) -> tuple[relax.Function, list[str], list[relax.Expr]]:
    """Rewrite every recognized attention of ``func``.

    Returns the function, the rejection reasons and the scale constants of the canonical regions.
    """
    rejections: list[str] = []
    approved: list[relax.Expr] = []
    replacements: dict[relax.Var, relax.Expr] = {}
    for core, bindings in attention_cores(func):
        try:
            match = find_attention(func, bindings, core)
        except Rejected as why:
            rejections.append(f"attention at '{core.name}': {why}")
            continue
        replacements[match.root], scale = canonical_attention(match)
        approved.append(scale)
    if not replacements:
        return func, rejections, approved
    return _replace_bindings(func, replacements), rejections, approved


def _replace_bindings(func: relax.Function, replacements: dict[relax.Var, relax.Expr]
                      ) -> relax.Function:
    """Rebuild ``func`` with new values for some bound vars (dead code is left to DCE)."""

    @relax.expr_functor.mutator
    class _Replacer(relax.PyExprMutator):
        def visit_var_binding_(self, binding: relax.VarBinding) -> None:
            if binding.var in replacements:
                new_value = self.visit_expr(replacements[binding.var])
                emit = (self.builder_.emit if isinstance(binding.var, relax.DataflowVar)
                        else self.builder_.emit_output)
                new_var = emit(new_value, name_hint=binding.var.name)
                self.set_var_remap(binding.var, new_var)
                return
            super().visit_var_binding_(binding)

    return _Replacer().visit_expr(func)


@tvm.transform.module_pass(opt_level=0, name="CanonicalizeSelfAttention")
class CanonicalizeSelfAttention:
    """Module pass form of :func:`canonicalize_function`.

    ``rejections`` collects why attentions were not rewritten; ``approved`` holds the scale
    constant of every canonical region, so the partitioner offloads exactly those.
    """

    def __init__(self) -> None:
        self.rejections: list[str] = []
        self.approved: list[relax.Expr] = []

    def is_approved(self, scale: relax.Expr) -> bool:
        return any(scale.same_as(c) for c in self.approved)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                new_func, rejected, approved = canonicalize_function(func)
                self.rejections.extend(rejected)
                self.approved.extend(approved)
                if not new_func.same_as(func):
                    updates[gv] = new_func
        for gv, func in updates.items():
            mod[gv] = func
        return mod

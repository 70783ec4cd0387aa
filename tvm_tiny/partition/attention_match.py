"""Recognize multi-head self-attention in a Relax function, whatever the exporter wrote.

:func:`find_attention` starts from an attention core ``A·V`` (``A = softmax(...)``) and proves, by
exact index tracing through layout operators (``layout_trace.py``), that it is a self-attention
with constant projections: it recovers the per-head columns of the Q/K/V projections, the scale,
the output projection's row order and, for QDQ (int8) graphs, the quantization parameters at each
point and the int8 weights (read from the ``dequantize(int8 constant)`` that
``qdq.FoldConstantExceptInt8Weights`` keeps in the IR). Anything it cannot prove raises
:class:`Rejected` with the reason (masked scores, cross-attention, shared weights, leaked
intermediates, batch > 1, ...), and the attention stays with TVM. Each proof is one function
below, called in order by :func:`find_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_tiny.ir.mhsa import MhsaShape, MhsaWeights
from tvm_tiny.ir.quant import MhsaInt8Params, QParams, QWeight
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.partition.layout_trace import LayoutTracer, QdqPair, Traced, per_tensor_qparams
from tvm_tiny.partition.qdq import int8_matmul_weight, is_int8_weight, is_matrix_transpose

# Index tracing holds one int64 per traced element; bound it (H·S² = 16M scores: 128 MiB).
MAX_TRACED_ELEMENTS = 1 << 24


class Rejected(Exception):
    """An attention core that is not a self-attention we can offload (the message says why)."""


@dataclass
class AttentionMatch:
    """A recognized self-attention: its input, weights, shape and the var it computes.

    For QDQ graphs ``x`` is the int8 input tensor, ``root`` the int8 output and ``quant`` holds
    the quantization (activation parameters at each point, int8 weights in the canonical head
    order of :class:`MhsaWeights`, and the rounding points the exported graph makes in between);
    ``weights`` are then the dequantized (float) weights.
    """

    x: relax.Expr
    weights: MhsaWeights
    shape: MhsaShape
    root: relax.Var
    root_shape: tuple[int, ...]
    region: list[relax.Var]
    quant: MhsaInt8Params | None = None


@dataclass(frozen=True)
class _Projection:
    data: relax.Expr
    weight: np.ndarray  # float32 [E, N], as ``x @ W`` reads it
    bias: np.ndarray | None  # [N]
    consts: tuple[relax.Expr, ...]  # the float weight constant, for the sharing check
    vars: tuple[relax.Var, ...]
    acc_point: QParams | None = None  # QDQ: the matmul output's rounding before the bias
    int8: QWeight | None = None  # QDQ: the weight's int8 form, read from its ``dequantize``
    weight_vars: tuple[relax.Var, ...] = ()  # QDQ: the weight's dequantize (and transpose) vars


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

    def sole_user(self, var: relax.Var) -> relax.Var | None:
        users = self.users_of(var)
        return users[0] if len(users) == 1 else None

    def const_used_outside(self, const: relax.Expr, region: set[relax.Var]) -> bool:
        return any(c.same_as(const) and user not in region for c, user in self.const_users)

    def weight_used_outside(self, consts: tuple[relax.Expr, ...],
                            weight_vars: tuple[relax.Var, ...], region: set[relax.Var]) -> bool:
        """Whether a weight (a float constant, or the vars dequantizing an int8 one) is read
        outside ``region``: the kernel would copy it, and the rest of the graph still need it."""
        inside = region | set(weight_vars)
        return (any(self.const_used_outside(c, inside) for c in consts)
                or any(user is None or user not in inside
                       for var in weight_vars for user in self.users_of(var)))


def _op_name(value: relax.Expr | None) -> str | None:
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return value.op.name
    return None


def _consistent(pairs: list[QdqPair], what: str) -> QParams:
    """The one quantization of a tensor seen through several Q/DQ pairs (they must agree)."""
    if not pairs:
        raise Rejected(f"{what} is not quantized while the rest of the attention is")
    for pair in pairs[1:]:
        if pair.params != pairs[0].params:
            raise Rejected(f"{what} is re-quantized with different parameters along its layout")
    return pairs[0].params


def _int8(weight: QWeight | None, what: str) -> QWeight:
    """The int8 form of a weight of a QDQ attention; Rejected when it has none."""
    if weight is None:
        raise Rejected(f"{what} weight is not a symmetric int8 DequantizeLinear constant")
    return weight


@dataclass(frozen=True)
class _Weight:
    """A matmul's weight operand: its float value as ``x @ W`` reads it, its int8 form (QDQ
    graphs) and what the sharing check must look at."""

    value: np.ndarray
    int8: QWeight | None
    consts: tuple[relax.Expr, ...]
    vars: tuple[relax.Var, ...]


class _Matcher:
    """State shared by the steps of one :func:`find_attention` call."""

    def __init__(self, func: relax.Function, bindings: dict[relax.Var, relax.Expr]) -> None:
        self.bindings = bindings
        self.tracer = LayoutTracer(bindings)
        self.uses = _Uses(func)

    def unwrap_qdq(self, expr: relax.Expr) -> tuple[relax.Expr, list[relax.Var], QParams | None]:
        """Step over one ``dequantize(quantize(t))`` pair (an intermediate rounding) if present."""
        pair = self.tracer.qdq_pair(self.tracer.producer(expr))
        if pair is None:
            return expr, [], None
        return pair[0], [expr, pair[1].quantized], pair[1].params

    def weight(self, expr: relax.Expr) -> _Weight | None:
        """``expr`` as a weight: a float constant, or (QDQ graphs, where
        ``qdq.FoldConstantExceptInt8Weights`` keeps them) ``dequantize(int8 constant)``,
        directly or transposed. None when it is neither."""
        if is_constant(expr):
            return _Weight(constant_value(expr), None, (expr,), ())
        value, vars_ = self.tracer.producer(expr), [expr]
        transposed = is_matrix_transpose(value)
        if transposed:
            vars_.append(value.args[0])
            value = self.tracer.producer(value.args[0])
        if not is_int8_weight(value):
            return None
        folded, int8 = int8_matmul_weight(value, transposed)
        return _Weight(folded, int8, (), tuple(vars_))

    def projection(self, expr: relax.Expr) -> _Projection:
        """``add(matmul(data, W), b)`` / ``add(b, matmul(..))`` / ``matmul(data, W)``; in QDQ
        graphs an intermediate Q/DQ pair between matmul and add is allowed (we round once)."""
        value = self.tracer.producer(expr)
        bias, vars_, acc_point = None, [expr], None
        if _op_name(value) == "relax.add":
            a, b = value.args
            matmul_var, bias_expr = (a, b) if is_constant(b) else (b, a)
            if not is_constant(bias_expr):
                raise Rejected("projection bias is not a constant")
            bias = constant_value(bias_expr).reshape(-1)
            matmul_var, pair_vars, acc_point = self.unwrap_qdq(matmul_var)
            vars_ += pair_vars
            value = self.tracer.producer(matmul_var)
            vars_.append(matmul_var)
        if _op_name(value) != "relax.matmul":
            raise Rejected("Q/K/V do not come from a matmul projection")
        data, weight_expr = value.args
        weight = self.weight(weight_expr)
        if weight is None:
            raise Rejected("projection weight is not a constant (bind parameters first)")
        if weight.value.ndim != 2:
            raise Rejected(f"projection weight has rank {weight.value.ndim}, expected 2")
        if bias is not None and bias.shape[0] != weight.value.shape[1]:
            raise Rejected(f"projection bias has {bias.shape[0]} values for "
                           f"{weight.value.shape[1]} outputs")
        # Only the weight matrix counts for the sharing check: exporters merge equal biases (e.g.
        # the zero biases of untrained torch layers) into one initializer, cheap to copy.
        return _Projection(data, weight.value, bias, weight.consts, tuple(vars_), acc_point,
                           weight.int8, weight.vars)


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
    """Recognize the self-attention around ``core`` (an ``A·V`` var) or raise :class:`Rejected`.

    Each step proves one property, in this order (the first failure is the reported reason):
    the weights are a softmax of unmasked Q·Kᵀ; Q, K and V are heads of constant projections of
    one layout; they project one tensor, row by row; the context reaches an output projection;
    nothing of the region is read outside it; in QDQ graphs, every tensor is quantized once.
    QDQ weights must still be ``dequantize(int8 constant)`` (``qdq.FoldConstantExceptInt8Weights``).
    """
    m = _Matcher(func, bindings)
    probs_var, v_op = bindings[core].args
    softmax = _softmax_weights(m, probs_var)
    scores, qk_value = _unmasked_scores(m, softmax.call)
    heads = _head_projections(m, qk_value, v_op)
    x, x_pairs, embed = _self_attention_input(m, heads)
    out = _output_projection(m, core, heads.groups, heads.seq, heads.proj)
    factors = _scalar_factors(heads, scores, quantized=[
        bool(x_pairs), bool(heads.traces["Q"].quant), softmax.point is not None,
        out.y_point is not None])
    weights = _canonical_weights(heads, out, factors)
    shape = MhsaShape(seq=heads.seq, embed=embed, heads=heads.groups, proj=heads.proj,
                      out_features=out.wo.shape[1])
    region = _region(core, softmax, scores, heads, out)
    _check_self_contained(m, region, out.root, heads.projections)
    quant = None
    if factors.in_projections:
        x = x_pairs[0].quantized
        quant = _int8_quantization(heads, scores, softmax, out, x_pairs, factors, weights)
    return AttentionMatch(x, weights, shape, out.root, out.root_shape, sorted(region, key=str),
                          quant)


@dataclass(frozen=True)
class _Softmax:
    var: relax.Var  # the softmax's own output (before an exported rounding of it)
    call: relax.Call
    region: list[relax.Var]  # the rounding's vars, if any
    point: QParams | None  # QDQ: the probabilities' quantization


def _softmax_weights(m: _Matcher, probs_var: relax.Expr) -> _Softmax:
    """The attention weights are a softmax over the last axis (rounded once in QDQ graphs)."""
    softmax_var, region, point = m.unwrap_qdq(probs_var)
    probs = m.bindings.get(softmax_var)
    if _op_name(probs) != "relax.nn.softmax":
        raise Rejected("attention weights do not come from a softmax")
    if int(probs.attrs.axis) not in (-1, len(static_shape(softmax_var)) - 1):
        raise Rejected("softmax is not over the last axis")
    return _Softmax(softmax_var, probs, region, point)


def _unmasked_scores(m: _Matcher, softmax: relax.Call) -> tuple[Traced, relax.Call]:
    """The softmax reads Q·Kᵀ itself, only re-laid-out and scaled: no mask, no score bias.
    Returns the scores traced back to that matmul, and the matmul."""
    score_shape = static_shape(softmax.args[0])
    if score_shape is not None and int(np.prod(score_shape)) > MAX_TRACED_ELEMENTS:
        raise Rejected(f"attention scores {list(score_shape)} have more than "
                       f"{MAX_TRACED_ELEMENTS} elements, beyond what the partitioner analyzes")
    scores = m.tracer.trace(softmax.args[0])
    qk_value = m.tracer.producer(scores.source) if scores else None
    if scores is None or _op_name(qk_value) != "relax.matmul" or not np.array_equal(
            scores.index.reshape(-1), np.arange(scores.index.size)):
        raise Rejected("scores are modified before softmax (masked attention?)")
    return scores, qk_value


@dataclass(frozen=True)
class _Heads:
    """Q, K and V as heads of their projections: ``cols[n]`` [G, P] are the projection columns
    of each head, ``rows[n]`` [G, S] the projection rows of each head's sequence positions."""

    traces: dict[str, Traced]
    projections: dict[str, _Projection]
    cols: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    seq: int
    proj: int
    groups: int  # heads (times batch, which the input check then rejects)


def _head_projections(m: _Matcher, qk_value: relax.Call, v_op: relax.Expr) -> _Heads:
    """Q, K and V have one sequence length (self-attention) and one head layout, and each is a
    re-layout of a constant projection whose columns are constant along the sequence."""
    q_op, k_op = qk_value.args
    traces: dict[str, Traced] = {}
    for name, op in (("Q", q_op), ("K", k_op), ("V", v_op)):
        traced = m.tracer.trace(op)
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
        projections[name] = m.projection(traces[name].source)
        width = projections[name].weight.shape[1]
        cols[name], rows[name] = _head_columns(index.reshape(groups, seq, proj), width, name)
    return _Heads(traces, projections, cols, rows, seq, proj, groups)


def _self_attention_input(m: _Matcher, heads: _Heads
                          ) -> tuple[relax.Expr, list[QdqPair], int]:
    """Q, K and V project one tensor, the sequence positions of every head being its rows in
    order (which fails for batch > 1). Returns that tensor, its quantization (QDQ graphs,
    nearest first) and the embedding size."""
    projections, seq = heads.projections, heads.seq
    x, x_pairs, embed = _common_input(m.tracer, projections)
    expected_rows = np.tile(np.arange(seq), (heads.groups, 1))
    try:
        for name in projections:
            x_rows = _input_rows(m.tracer, projections[name].data, x, embed)
            if not np.array_equal(x_rows[heads.rows[name]], expected_rows):
                raise Rejected(f"{name} rows are not the input sequence in order (batch > 1?)")
    except Rejected as why:
        # The source is laid out differently (e.g. channels-first conv features transposed into
        # tokens): the kernel then reads the projection input TVM materializes, if it is shared.
        x, x_pairs = _materialized_input(m.tracer, projections, embed, seq, why)
        for name in projections:
            if not np.array_equal(heads.rows[name], expected_rows):
                raise Rejected(f"{name} rows are not the input sequence in order "
                               "(batch > 1?)") from why
    return x, x_pairs, embed


@dataclass(frozen=True)
class _Factors:
    """Where the scalar factors of the traces go."""

    in_projections: bool  # QDQ graph: Q and K factors are folded into their projections
    q: float
    k: float
    v: float
    scale: float  # the factor of Q·Kᵀ left before the softmax
    quantized: tuple[bool, ...]  # x, Q, probabilities, y: which of them a Q/DQ pair rounds


def _scalar_factors(heads: _Heads, scores: Traced, quantized: list[bool]) -> _Factors:
    """Split the scalar factors the traces met between the projections and the score scale.

    In QDQ graphs Q and K are quantized after any scalar factor (torch applies sqrt(scale) to
    both): the factors belong to the projections the kernel quantizes, not to the scores.
    """
    traces = heads.traces
    in_projections = any(quantized)
    q = traces["Q"].scale if in_projections else 1.0
    k = traces["K"].scale if in_projections else 1.0
    scale = scores.scale * traces["Q"].scale * traces["K"].scale / (q * k)
    return _Factors(in_projections, q, k, traces["V"].scale, scale, tuple(quantized))


def _canonical_weights(heads: _Heads, out: _OutputProjection, factors: _Factors
                       ) -> MhsaWeights:
    """The float weights in canonical head order, the factors folded into them."""

    def gather(name: str, factor: float) -> tuple[np.ndarray, np.ndarray | None]:
        p = heads.projections[name]
        order = heads.cols[name].reshape(-1)
        bias = None if p.bias is None else (p.bias[order] * factor).astype(np.float32)
        return (p.weight[:, order] * factor).astype(np.float32), bias

    wq, bq = gather("Q", factors.q)
    wk, bk = gather("K", factors.k)
    wv, bv = gather("V", factors.v)
    return MhsaWeights(wq=wq, wk=wk, wv=wv, wo=out.wo, bq=bq, bk=bk, bv=bv, bo=out.bo,
                       scale=float(factors.scale))


def _region(core: relax.Var, softmax: _Softmax, scores: Traced, heads: _Heads,
            out: _OutputProjection) -> set[relax.Var]:
    """Every var the kernel replaces: from the projections through the core to the output."""
    region = {core, softmax.var, *softmax.region, *scores.through, scores.source, *out.region}
    for traced in heads.traces.values():
        region.update(traced.through)
    for p in heads.projections.values():
        region.update(p.vars)
    return region


def _check_self_contained(m: _Matcher, region: set[relax.Var], root: relax.Var,
                          projections: dict[str, _Projection]) -> None:
    """No intermediate of the region and no projection weight is read outside it: the kernel
    replaces the whole region, and holds its own copy of the weights."""
    _check_no_leaks(m.uses, region, root)
    for p in projections.values():
        if m.uses.weight_used_outside(p.consts, p.weight_vars, region):
            raise Rejected("a projection weight is shared with nodes outside the attention")


def _int8_quantization(heads: _Heads, scores: Traced, softmax: _Softmax,
                       out: _OutputProjection, x_pairs: list[QdqPair], factors: _Factors,
                       weights: MhsaWeights) -> MhsaInt8Params:
    """A QDQ attention is quantized at every tensor the int8 kernel materializes, each once
    (consistently along its layout), and its weights are symmetric int8."""
    if not all(factors.quantized):
        raise Rejected("the attention is only partly quantized (QDQ around some tensors)")
    if factors.v != 1.0:
        raise Rejected("V is rescaled between its quantization and the attention")
    traces, projections, cols = heads.traces, heads.projections, heads.cols
    return MhsaInt8Params(
        x=x_pairs[0].params,
        q=_consistent(traces["Q"].quant, "Q"), k=_consistent(traces["K"].quant, "K"),
        v=_consistent(traces["V"].quant, "V"),
        scores=_consistent(scores.quant[:1], "softmax input"), probs=softmax.point,
        ctx=out.ctx_point, y=out.y_point,
        wq=_int8(projections["Q"].int8, "Q").take_columns(
            cols["Q"].reshape(-1)).scaled(factors.q),
        wk=_int8(projections["K"].int8, "K").take_columns(
            cols["K"].reshape(-1)).scaled(factors.k),
        wv=_int8(projections["V"].int8, "V").take_columns(cols["V"].reshape(-1)),
        wo=_int8(out.wo_int8, "output").take_rows(out.wo_order),
        bq=weights.bq, bk=weights.bk, bv=weights.bv, bo=out.bo, scale=weights.scale,
        # A Q/K rounding before a factor folded into the projection would sit at another
        # point of the computation: only replicate it when no factor is folded.
        q_acc=projections["Q"].acc_point if factors.q == 1.0 else None,
        k_acc=projections["K"].acc_point if factors.k == 1.0 else None,
        v_acc=projections["V"].acc_point if factors.v == 1.0 else None,
        o_acc=out.acc_point,
        qk_acc=(scores.quant[-1].params if len(scores.quant) > 1 and scores.scale != 1.0
                else None),
    )


def _common_input(tracer: LayoutTracer, projections: dict[str, _Projection]
                  ) -> tuple[relax.Expr, list[QdqPair], int]:
    """The one tensor Q, K and V are projected from, and its quantization (QDQ graphs)."""
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
    # In QDQ graphs the input's quantization nearest to the source is the kernel's int8 input.
    points = [t.quant[-1] for t in sources.values() if t.quant]
    if points and (len(points) != 3 or any(not p.quantized.same_as(points[0].quantized)
                                           for p in points)):
        raise Rejected("Q, K and V read differently quantized copies of the input")
    return first, points, embed


def _materialized_input(tracer: LayoutTracer, projections: dict[str, _Projection], embed: int,
                        seq: int, why: Rejected) -> tuple[relax.Expr, list[QdqPair]]:
    """The shared [.., S, E] projection input itself (and its nearest quantization, QDQ);
    ``why`` is the reason the traced source could not be used, re-raised if this fails too."""
    data = projections["Q"].data
    shape = static_shape(data)
    if (any(not p.data.same_as(data) for p in projections.values()) or shape is None
            or shape[-1] != embed or int(np.prod(shape[:-1])) != seq):
        raise why
    traced = tracer.trace(data)
    return data, traced.quant[:1] if traced is not None else []


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


@dataclass
class _OutputProjection:
    root: relax.Var
    root_shape: tuple[int, ...]
    wo: np.ndarray  # float [H*P, E_out], rows in canonical (head, p) order
    bo: np.ndarray | None
    region: list[relax.Var]
    wo_int8: QWeight | None  # QDQ: the weight's int8 form, rows as found
    wo_order: np.ndarray  # row order taking the weight as found to wo
    ctx_point: QParams | None
    y_point: QParams | None
    acc_point: QParams | None = None


_CHAIN_OPS = ("relax.quantize", "relax.dequantize")


def _output_projection(m: _Matcher, core: relax.Var, heads: int, seq: int, proj: int
                       ) -> _OutputProjection:
    """Follow ``core`` forward through single-use layout (and Q/DQ) ops to the output projection
    ``add(matmul(ctx, Wo), bo)``; in QDQ graphs the root is the quantize of that result."""
    bindings, uses, tracer = m.bindings, m.uses, m.tracer
    chain, current = [], core
    while True:
        nxt = uses.sole_user(current)
        if nxt is None:
            raise Rejected("attention output is used outside the attention")
        value = bindings.get(nxt)
        if _op_name(value) == "relax.matmul":
            break
        if _op_name(value) not in _CHAIN_OPS and tracer.layout_step(value) is None:
            raise Rejected("attention output does not reach an output projection")
        chain.append(nxt)
        current = nxt
    matmul_var = nxt
    ctx, wo_expr = bindings[matmul_var].args
    wo = m.weight(wo_expr)
    if wo is None or not ctx.same_as(current):
        raise Rejected("output projection weight is not a constant")
    wo_src = wo.value
    root, bo_src, region, acc_point = matmul_var, None, [*chain, matmul_var], None
    after, pair = _after_intermediate_qdq(m, matmul_var)
    user = uses.sole_user(after)
    if user is not None and _op_name(bindings.get(user)) == "relax.add":
        a, b = bindings[user].args
        bias_expr = b if is_constant(b) else a if is_constant(a) else None
        if bias_expr is not None and constant_value(bias_expr).size == wo_src.shape[1]:
            bo_src = constant_value(bias_expr).reshape(-1).astype(np.float32)
            root = user
            region += [*pair, root]
            if pair:
                acc_point = m.tracer.qdq_pair(bindings[pair[1]])[1].params
    y_point = None
    user = uses.sole_user(root)
    if user is not None and _op_name(bindings.get(user)) == "relax.quantize":
        params = per_tensor_qparams(bindings[user])
        if params is not None:
            y_point = _output_qparams(params, str(user.ty.dtype))
            root = user
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
    if uses.weight_used_outside(wo.consts, wo.vars, set(region)):
        raise Rejected("the output projection weight is shared outside the attention")
    root_shape = static_shape(root)
    if root_shape is None or int(np.prod(root_shape[:-1])) != seq:
        raise Rejected("output projection result is not [.., S, E_out]")
    ctx_point = _consistent(traced.quant, "attention context") if traced.quant else None
    return _OutputProjection(root, root_shape, wo_src[order].astype(np.float32), bo_src, region,
                             wo.int8, order, ctx_point, y_point, acc_point)


def _output_qparams(params: tuple[float, int], dtype: str) -> QParams:
    """The output quantize's parameters; Rejected when they are no valid quantization."""
    try:
        return QParams(params[0], params[1], dtype)
    except ValueError as why:
        raise Rejected(f"the attention output's quantization is invalid: {why}") from why


def _after_intermediate_qdq(m: _Matcher, var: relax.Var) -> tuple[relax.Var, list[relax.Var]]:
    """The var past a ``quantize → dequantize`` directly after ``var`` and that pair's vars
    (QDQ graphs round the matmul before the bias add); ``var`` itself when there is none."""
    q_var = m.uses.sole_user(var)
    if q_var is None or _op_name(m.bindings.get(q_var)) != "relax.quantize":
        return var, []
    dq_var = m.uses.sole_user(q_var)
    if dq_var is None or m.tracer.qdq_pair(m.bindings.get(dq_var)) is None:
        return var, []
    return dq_var, [q_var, dq_var]


def _check_no_leaks(uses: _Uses, region: set[relax.Var], root: relax.Var) -> None:
    for var in region:
        if var.same_as(root):
            continue
        for user in uses.users_of(var):
            if user is None or user not in region:
                raise Rejected(f"intermediate '{var.name}' is used outside the attention")

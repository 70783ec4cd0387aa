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

QDQ (int8) attentions become the same chain with one ``quantize`` per tensor the int8 kernel
materializes (x in, Q/K/V, softmax input and output, context, y out) and the weights as
``dequantize(int8 constant)``; the region then maps int8 to int8 (``tvm_tiny.mhsa_s8``).

Every chain reads its input ``x`` through the proof mark (``proof_mark.py``): that is how the
MHSA patterns know a region is one this pass proved, and not the same ops met verbatim in a
graph it rejected. ``RemoveProofMarks`` takes the marks out again.

Preconditions: constants bound in the function (``from_onnx(keep_params_in_input=False)``);
``qdq.FoldConstantExceptInt8Weights`` first, so shape arithmetic of the exporters is folded while
the int8 weights of QDQ graphs stay ``dequantize(int8 constant)``. Runs before partitioning.
Not rewritten (each with a reason, see ``attention_match.find_attention``): masked scores,
cross-attention, weights or intermediates used outside the attention, batch > 1, non-constant
weights, partly quantized attentions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.ir.relax_compat import static_shape
from tvm_tiny.partition.attention_match import AttentionMatch, Rejected, find_attention
from tvm_tiny.partition.proof_mark import mark_proven

# Deliberately loose (any softmax feeding a matmul, directly or through a Q/DQ pair):
# find_attention() then proves or rejects the rest, so near misses such as masked scores are
# reported instead of silently skipped.
_SOFTMAX = is_op("relax.nn.softmax")(wildcard())
_QDQ_SOFTMAX = is_op("relax.dequantize")(
    is_op("relax.quantize")(_SOFTMAX, wildcard(), wildcard()), wildcard(), wildcard())
ATTENTION_CORE = is_op("relax.matmul")(_SOFTMAX | _QDQ_SOFTMAX, wildcard())
"""``A·V`` with ``A = softmax(...)``: the anchor every MHSA shares."""


Bind = Callable[[relax.Expr, str], relax.Expr]
"""Emits an expression as its own binding (optionally named) and returns the var: Q, K and V
must read one node."""


def canonical_attention(match: AttentionMatch, bind: Bind) -> relax.Expr:
    """The canonical op chain of ``match`` (see the module docstring), shaped like its root,
    reading its input through the proof mark."""
    if match.quant is not None:
        return _canonical_int8(match, bind)
    s, e, h, p = match.shape.seq, match.shape.embed, match.shape.heads, match.shape.proj
    w = match.weights
    x = match.x
    if static_shape(x) != (1, s, e):
        x = bind(relax.op.reshape(x, (1, s, e)), "")
    x = bind(mark_proven(x), x.name)  # named as its input: the kernel's input is named so

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
    return out


def _qparams(point: QParams) -> tuple[relax.Constant, relax.Constant]:
    return (relax.const(np.float32(point.scale)),
            relax.const(np.array(point.zero_point, dtype=str(point.dtype))))


def _quantize(value: relax.Expr, point: QParams) -> relax.Expr:
    scale, zero_point = _qparams(point)
    return relax.op.quantize(value, scale, zero_point, axis=-1, out_dtype=str(point.dtype))


def _dequantize(value: relax.Expr, point: QParams) -> relax.Expr:
    scale, zero_point = _qparams(point)
    return relax.op.dequantize(value, scale, zero_point, axis=-1, out_dtype="float32")


def _int8_weight(weight: QWeight) -> relax.Expr:
    """``dequantize(int8 constant, per-column scales, 0)``: exact int8 values stay visible."""
    zero = relax.const(np.zeros(weight.scale.shape, dtype=np.int8))
    return relax.op.dequantize(relax.const(weight.values), relax.const(weight.scale), zero,
                               axis=1, out_dtype="float32")


def _canonical_int8(match: AttentionMatch, bind: Bind) -> relax.Expr:
    """The canonical QDQ chain: int8 in, one quantize per tensor the int8 kernel holds, int8 out."""
    s, e, h, p = match.shape.seq, match.shape.embed, match.shape.heads, match.shape.proj
    w, qz = match.weights, match.quant
    xq = match.x
    if static_shape(xq) != (1, s, e):
        xq = bind(relax.op.reshape(xq, (1, s, e)), "")
    x = bind(_dequantize(bind(mark_proven(xq), xq.name), qz.x), "")

    def rounded(value: relax.Expr, point: QParams | None) -> relax.Expr:
        """An exported intermediate rounding (``dequantize(quantize(.))``) when there is one."""
        return value if point is None else _dequantize(_quantize(value, point), point)

    def project(data: relax.Expr, weight: QWeight, bias: np.ndarray | None,
                point: QParams, acc: QParams | None) -> relax.Expr:
        out = relax.op.matmul(data, _int8_weight(weight))
        if bias is not None:
            out = relax.op.add(rounded(out, acc), relax.const(bias))
        return _quantize(out, point)

    def heads(value: relax.Expr, point: QParams, axes: list[int]) -> relax.Expr:
        return relax.op.permute_dims(
            relax.op.reshape(_dequantize(value, point), (1, s, h, p)), axes)

    q = heads(project(x, qz.wq, w.bq, qz.q, qz.q_acc), qz.q, [0, 2, 1, 3])
    k = heads(project(x, qz.wk, w.bk, qz.k, qz.k_acc), qz.k, [0, 2, 3, 1])
    v = heads(project(x, qz.wv, w.bv, qz.v, qz.v_acc), qz.v, [0, 2, 1, 3])
    scale = relax.const(np.float32(w.scale))
    scores = _quantize(relax.op.multiply(rounded(relax.op.matmul(q, k), qz.qk_acc), scale),
                       qz.scores)
    probs = _quantize(relax.op.nn.softmax(_dequantize(scores, qz.scores), axis=-1), qz.probs)
    ctx = _quantize(relax.op.matmul(_dequantize(probs, qz.probs), v), qz.ctx)
    ctx = relax.op.reshape(relax.op.permute_dims(_dequantize(ctx, qz.ctx), [0, 2, 1, 3]),
                           (1, s, h * p))
    out = project(ctx, qz.wo, w.bo, qz.y, qz.o_acc)
    if tuple(match.root_shape) != (1, s, match.shape.out_features):
        out = relax.op.reshape(out, match.root_shape)
    return out


def attention_cores(func: relax.Function) -> list[tuple[relax.Var, dict]]:
    """Every ``A·V`` var of ``func`` with the bindings of its dataflow block."""
    found = []
    for block in func.body.blocks:
        bindings = {b.var: b.value for b in block.bindings}
        for var, value in bindings.items():
            if isinstance(value, relax.Call) and ATTENTION_CORE.match(value, var2val=bindings):
                found.append((var, bindings))
    return found


def canonicalize_function(func: relax.Function) -> tuple[relax.Function, list[str]]:
    """Rewrite every recognized attention of ``func``; returns the function and the reason each
    attention left as it was could not be rewritten."""
    rejections: list[str] = []
    replacements: dict[relax.Var, AttentionMatch] = {}
    for core, bindings in attention_cores(func):
        try:
            match = find_attention(func, bindings, core)
        except Rejected as why:
            rejections.append(f"attention at '{core.name}': {why}")
            continue
        replacements[match.root] = match
    if not replacements:
        return func, rejections
    return _replace_bindings(func, replacements), rejections


def _replace_bindings(func: relax.Function, replacements: dict[relax.Var, AttentionMatch]
                      ) -> relax.Function:
    """Rebuild ``func`` with each match's root bound to its canonical chain (dead code is left
    to DCE)."""

    @relax.expr_functor.mutator
    class _Replacer(relax.PyExprMutator):
        def visit_var_binding_(self, binding: relax.VarBinding) -> None:
            if binding.var in replacements:
                def bind(expr: relax.Expr, name_hint: str) -> relax.Expr:
                    return self.builder_.emit(self.visit_expr(expr), name_hint)

                chain = canonical_attention(replacements[binding.var], bind)
                new_value = self.visit_expr(chain)
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

    ``rejections`` collects why attentions were not rewritten (the partitioner's report); what
    was rewritten is in the IR itself, each chain behind a proof mark.
    """

    def __init__(self) -> None:
        self.rejections: list[str] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.IRModule:
        mod = mod.clone()  # the pass infrastructure hands us the caller's module
        updates = {}
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                new_func, rejected = canonicalize_function(func)
                self.rejections.extend(rejected)
                if not new_func.same_as(func):
                    updates[gv] = new_func
        for gv, func in updates.items():
            mod[gv] = func
        return mod

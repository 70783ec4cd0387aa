"""Relax dataflow patterns of the operations tvm_tiny offloads (composite ``tvm_tiny.<op>``).

Naming contract: composite ``tvm_tiny.mhsa`` ↔ kernel ``tt_mhsa_<dtype>`` (``codegen.py`` holds the
one composite → emitter table). The MHSA pattern is the *canonical* form written by
``canonicalize.CanonicalizeSelfAttention``; exporter variants are normalized before matching, so
one pattern serves every export style. Later entries in ``tiny_patterns()`` have lower priority.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from tvm.relax import Expr
from tvm.relax.backend.pattern_registry import register_patterns
from tvm.relax.backend.utils import has_leaking_intermediate_variables
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard
from tvm.relax.transform import FusionPattern, PatternCheckContext

from tvm_tiny.ir.sparse import csr_bytes

MHSA_COMPOSITE = "tvm_tiny.mhsa"
MHSA_S8_COMPOSITE = "tvm_tiny.mhsa_s8"
LINEAR_SPARSE_COMPOSITE = "tvm_tiny.linear"
MHSA_COMPOSITES = (MHSA_COMPOSITE, MHSA_S8_COMPOSITE)


def _projection(data: DFPattern) -> tuple[DFPattern, DFPattern, DFPattern]:
    """``matmul(data, W) [+ b]`` → (pattern, weight, bias)."""
    weight, bias = is_const(), is_const()
    matmul = is_op("relax.matmul")(data, weight)
    return is_op("relax.add")(matmul, bias) | matmul, weight, bias


def make_mhsa_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """The canonical MHSA chain with named annotations (``root``, ``x``, ``wq`` ... ``scale``)."""
    x = wildcard()  # one node: Q, K and V must read the same tensor (self-attention)

    def heads(projection: DFPattern) -> DFPattern:
        return is_op("relax.permute_dims")(is_op("relax.reshape")(projection, wildcard()))

    q, wq, bq = _projection(x)
    k, wk, bk = _projection(x)
    v, wv, bv = _projection(x)
    scale = is_const()
    scores = is_op("relax.multiply")(is_op("relax.matmul")(heads(q), heads(k)), scale)
    probs = is_op("relax.nn.softmax")(scores)
    ctx = is_op("relax.matmul")(probs, heads(v))
    merged = is_op("relax.reshape")(is_op("relax.permute_dims")(ctx), wildcard())
    out, wo, bo = _projection(merged)
    annotations = {"root": out, "x": x, "wq": wq, "bq": bq, "wk": wk, "bk": bk, "wv": wv,
                   "bv": bv, "wo": wo, "bo": bo, "scale": scale, "probs": probs}
    return out, annotations


def make_mhsa_s8_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """The canonical QDQ MHSA chain (int8 in, int8 out) with named annotations.

    Every tensor the int8 kernel materializes is a ``quantize`` (``q_x`` is the int8 input's
    ``dequantize``); weights are ``dequantize(int8 constant)``. Annotations name the quantize and
    dequantize calls so the code generator reads each scale/zero point from its own node.
    """
    xq = wildcard()

    def qparams() -> tuple[DFPattern, DFPattern]:
        return is_const(), is_const()

    def quantize(value: DFPattern) -> DFPattern:
        return is_op("relax.quantize")(value, *qparams())

    def dequantize(value: DFPattern) -> DFPattern:
        return is_op("relax.dequantize")(value, *qparams())

    def int8_weight() -> DFPattern:
        return is_op("relax.dequantize")(is_const(), is_const(), is_const())

    x = dequantize(xq)

    def rounded(value: DFPattern) -> tuple[DFPattern, DFPattern]:
        """``value`` or its exported intermediate rounding; returns (pattern, its quantize)."""
        acc = quantize(value)
        return is_op("relax.dequantize")(acc, *qparams()) | value, acc

    def projection(data: DFPattern) -> tuple[DFPattern, DFPattern, DFPattern, DFPattern]:
        weight, bias = int8_weight(), is_const()
        matmul = is_op("relax.matmul")(data, weight)
        inner, acc = rounded(matmul)
        return quantize(is_op("relax.add")(inner, bias) | matmul), weight, bias, acc

    def heads(quantized: DFPattern) -> DFPattern:
        return is_op("relax.permute_dims")(
            is_op("relax.reshape")(dequantize(quantized), wildcard()))

    q, wq, bq, q_acc = projection(x)
    k, wk, bk, k_acc = projection(x)
    v, wv, bv, v_acc = projection(x)
    scale = is_const()
    qk, qk_acc = rounded(is_op("relax.matmul")(heads(q), heads(k)))
    scores = quantize(is_op("relax.multiply")(qk, scale))
    probs = quantize(is_op("relax.nn.softmax")(dequantize(scores)))
    ctx = quantize(is_op("relax.matmul")(dequantize(probs), heads(v)))
    merged = is_op("relax.reshape")(is_op("relax.permute_dims")(dequantize(ctx)), wildcard())
    out, wo, bo, o_acc = projection(merged)
    annotations = {"root": out, "xq": xq, "x": x, "q": q, "k": k, "v": v, "scores": scores,
                   "probs": probs, "ctx": ctx, "wq": wq, "bq": bq, "wk": wk, "bk": bk,
                   "wv": wv, "bv": bv, "wo": wo, "bo": bo, "scale": scale, "q_acc": q_acc,
                   "k_acc": k_acc, "v_acc": v_acc, "o_acc": o_acc, "qk_acc": qk_acc}
    return out, annotations


def _check_mhsa(context: PatternCheckContext, is_approved: Callable[[Expr], bool] | None) -> bool:
    # An intermediate (e.g. the attention probabilities) read outside the region would lose its
    # producer once the region becomes one kernel: keep such graphs with TVM.
    if has_leaking_intermediate_variables(context):
        return False
    if str(context.annotated_expr["x"].ty.dtype) != "float32":
        return False  # the float kernel; int8 regions match the mhsa_s8 pattern instead
    # The canonical form also occurs verbatim in onnx.helper graphs. Only regions that
    # CanonicalizeSelfAttention proved (no shared weights, no leaks, batch 1) are offloaded.
    return is_approved is None or is_approved(context.annotated_expr["scale"])


def _check_mhsa_s8(context: PatternCheckContext,
                   is_approved: Callable[[Expr], bool] | None) -> bool:
    if has_leaking_intermediate_variables(context):
        return False
    if str(context.annotated_expr["xq"].ty.dtype) != "int8":
        return False
    return is_approved is None or is_approved(context.annotated_expr["scale"])


def make_linear_sparse_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """``add(matmul(x, W const [K, N]), b const [N]) | matmul(x, W)`` (annotations ``root``,
    ``x``, ``w``, ``b``, ``matmul``)."""
    x = wildcard()
    root, weight, bias = _projection(x)
    annotations = {"root": root, "x": x, "w": weight, "b": bias}
    return root, annotations


def sparse_stored_bytes(nnz: int, k: int, n: int) -> int:
    """Bytes of the CSR-by-output-column weights (``tt_linear_f32_csr``) of a [K, N] weight:
    ``sparse_format.csr_bytes`` of its transpose (N rows of K columns)."""
    return csr_bytes(nnz, n, k)


def _check_linear_sparse(context: PatternCheckContext) -> bool:
    """Offload a float32 linear layer only when its pruned weight is smaller stored sparse.

    Dense weights never match, so models without pruned layers are unaffected. Not gated by the
    canonicalizer's approval (that is for MHSA regions); MHSA regions are claimed first because
    their patterns come earlier in ``tiny_patterns``.
    """
    from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape

    if has_leaking_intermediate_variables(context):
        return False
    x, w = context.annotated_expr["x"], context.annotated_expr["w"]
    b = context.annotated_expr.get("b")
    x_shape, w_shape = static_shape(x), static_shape(w)
    if x_shape is None or w_shape is None or len(x_shape) < 1 or len(w_shape) != 2:
        return False
    if str(x.ty.dtype) != "float32" or str(w.ty.dtype) != "float32":
        return False
    k, n = w_shape
    if x_shape[-1] != k or k < 1 or n < 1:
        return False
    if b is not None and (not is_constant(b) or str(b.ty.dtype) != "float32"
                          or static_shape(b) != (n,)):
        return False  # a broadcast [.., N] bias is not a per-output bias
    if not is_constant(w):
        return False
    weights = constant_value(w)
    if not np.all(np.isfinite(weights)):
        return False
    nnz = int(np.count_nonzero(weights))
    return sparse_stored_bytes(nnz, k, n) < 4 * k * n


def tiny_patterns(is_approved: Callable[[Expr], bool] | None = None,
                  sparse: bool = True) -> list[FusionPattern]:
    """All tvm_tiny patterns, highest priority first (pure: builds, registers nothing).

    ``is_approved(scale_constant)`` restricts the MHSA patterns to regions the canonicalizer
    proved; ``partition_for_tiny`` passes it. The sparse linear pattern does not use it: it
    matches by the sparsity of its constant weight alone. Without ``is_approved`` only the
    structural checks apply. ``sparse=False`` leaves the pruned linear layers to TVM (dense).
    """
    check = functools.partial(_check_mhsa, is_approved=is_approved)
    mhsa_s8, s8_annotations = make_mhsa_s8_pattern()
    mhsa, annotations = make_mhsa_pattern()
    linear, linear_annotations = make_linear_sparse_pattern()
    # The int8 chain contains the float chain's ops plus Q/DQ; it is listed first so a QDQ
    # region is claimed whole by the int8 pattern.
    found = [
        FusionPattern(MHSA_S8_COMPOSITE, mhsa_s8, s8_annotations, functools.partial(
            _check_mhsa_s8, is_approved=is_approved)),
        FusionPattern(MHSA_COMPOSITE, mhsa, annotations, check),
    ]
    if sparse:
        # After the MHSA patterns: their projections are claimed by the MHSA regions first.
        found.append(FusionPattern(LINEAR_SPARSE_COMPOSITE, linear, linear_annotations,
                                   _check_linear_sparse))
    return found


def register_tiny_patterns() -> None:
    """Register the patterns in TVM's registry (``get_patterns_with_prefix("tvm_tiny")``)."""
    register_patterns(tiny_patterns())

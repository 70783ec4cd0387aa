"""Relax dataflow patterns of the operations tvm_tiny offloads, in TVM's pattern registry.

Naming contract: composite ``tvm_tiny.<op>`` ↔ kernel ``tt_<op>_<type>`` (``codegen/ext.py`` holds
the one composite → emitter table). The MHSA patterns match the *canonical* chains written by
``canonicalize.CanonicalizeSelfAttention``, and only those it proved: their checks require the
chain's input to be a proof mark (``proof_mark.py``). Exporter variants are normalized before
matching, so one pattern per dtype serves every export style.

Registration happens once, when this module is imported (the only work done at import), with
TVM's ``register_patterns``: later entries have higher priority, so the fused MHSA patterns,
which contain the linear pattern's ops, come after it and win where both match.
``partition_for_tiny`` looks them up with ``get_patterns_with_prefix(PATTERN_PREFIX)``, highest
priority first, as ``relax/backend/contrib/tensorrt.py`` does.

Patterns: ``tvm_tiny.mhsa`` / ``tvm_tiny.mhsa_s8`` (attention), ``tvm_tiny.linear`` (pruned
float32 linear layers), ``tvm_tiny.linear_s8`` (int8 linear layers) and ``tvm_tiny.conv_s8``
(int8 convolutions, standard, pointwise and depthwise; ``read_conv_s8`` says why one is not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.pattern_registry import Pattern, register_patterns
from tvm.relax.backend.utils import has_leaking_intermediate_variables
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard
from tvm.relax.transform import PatternCheckContext

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.ir.relax_compat import constant_value, is_constant, static_shape
from tvm_tiny.ir.sparse import csr_bytes
from tvm_tiny.partition.layout_trace import per_tensor_qparams
from tvm_tiny.partition.proof_mark import is_proof_mark
from tvm_tiny.partition.qdq import int8_matmul_weight, is_int8_weight, is_matrix_transpose
from tvm_tiny.reference.conv_s8 import ConvGeometry, ConvS8Quant, lower_conv_s8, weight_matrix
from tvm_tiny.reference.linear_s8 import LinearS8Quant, lower_linear_s8

CODEGEN_NAME = "tvm_tiny"
"""The ``Codegen`` attribute of offloaded functions: ``relax.ext.tvm_tiny`` generates them."""

PATTERN_PREFIX = f"{CODEGEN_NAME}."
"""Every tvm_tiny composite name starts with it (and no other backend's does)."""

_QUANTIZE = tvm.ir.Op.get("relax.quantize")

MHSA_COMPOSITE = "tvm_tiny.mhsa"
MHSA_S8_COMPOSITE = "tvm_tiny.mhsa_s8"
LINEAR_SPARSE_COMPOSITE = "tvm_tiny.linear"
LINEAR_S8_COMPOSITE = "tvm_tiny.linear_s8"
CONV_S8_COMPOSITE = "tvm_tiny.conv_s8"
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


def _check_mhsa(context: PatternCheckContext) -> bool:
    """A canonical float32 MHSA that ``CanonicalizeSelfAttention`` proved."""
    # The canonical form also occurs verbatim in onnx.helper graphs, near misses included (a
    # weight shared with another layer): only a chain reading a proof mark was proved.
    if not is_proof_mark(context.annotated_expr["x"]):
        return False
    # An intermediate (e.g. the attention probabilities) read outside the region would lose its
    # producer once the region becomes one kernel: keep such graphs with TVM.
    if has_leaking_intermediate_variables(context):
        return False
    # The float kernel; int8 regions match the mhsa_s8 pattern instead.
    return str(context.annotated_expr["x"].ty.dtype) == DType.FLOAT32


def _check_mhsa_s8(context: PatternCheckContext) -> bool:
    """A canonical int8 MHSA that ``CanonicalizeSelfAttention`` proved (see :func:`_check_mhsa`)."""
    if not is_proof_mark(context.annotated_expr["xq"]):
        return False
    if has_leaking_intermediate_variables(context):
        return False
    return str(context.annotated_expr["xq"].ty.dtype) == DType.INT8


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

    Dense weights never match, so models without pruned layers are unaffected. Not gated by a
    proof mark (that is for MHSA regions); MHSA regions are claimed first because their patterns
    have the higher priority (:func:`tiny_patterns`).
    """
    # An intermediate read outside the region would lose its producer: keep it with TVM.
    if has_leaking_intermediate_variables(context):
        return False
    x, w = context.annotated_expr["x"], context.annotated_expr["w"]
    b = context.annotated_expr.get("b")
    x_shape, w_shape = static_shape(x), static_shape(w)
    if x_shape is None or w_shape is None or len(x_shape) < 1 or len(w_shape) != 2:
        return False
    if str(x.ty.dtype) != DType.FLOAT32 or str(w.ty.dtype) != DType.FLOAT32:
        return False
    k, n = w_shape
    if x_shape[-1] != k or k < 1 or n < 1:
        return False
    if b is not None and (not is_constant(b) or str(b.ty.dtype) != DType.FLOAT32
                          or static_shape(b) != (n,)):
        return False  # a broadcast [.., N] bias is not a per-output bias
    if not is_constant(w):
        return False
    weights = constant_value(w)
    if not np.all(np.isfinite(weights)):
        return False
    nnz = int(np.count_nonzero(weights))
    return sparse_stored_bytes(nnz, k, n) < 4 * k * n


def make_linear_s8_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """The QDQ int8 linear layer (int8 in, int8 out) with named annotations: ``quantize(
    [relu | clip](add?(dequantize(quantize(matmul)) | matmul, b const)))`` of ``matmul(
    dequantize(x_q), dequantize(W_q const) [transposed])``. ``acc`` is the exported rounding
    point after the MatMul (the two-step form), ``act`` a following ReLU or Clip."""
    xq = wildcard()
    x = is_op("relax.dequantize")(xq, is_const(), is_const())
    w_dq = is_op("relax.dequantize")(is_const(), is_const(), is_const())
    weight = is_op("relax.permute_dims")(w_dq) | w_dq
    matmul = is_op("relax.matmul")(x, weight)
    acc = is_op("relax.quantize")(matmul, is_const(), is_const())
    inner = is_op("relax.dequantize")(acc, is_const(), is_const()) | matmul
    bias = is_const()
    body = is_op("relax.add")(inner, bias) | inner
    act = is_op("relax.nn.relu")(body) | is_op("relax.clip")(body, wildcard(), wildcard())
    root = is_op("relax.quantize")(act | body, is_const(), is_const())
    annotations = {"root": root, "xq": xq, "x": x, "w_dq": w_dq, "weight": weight,
                   "matmul": matmul, "acc": acc, "bias": bias, "act": act}
    return root, annotations


def _prim_float(expr: relax.Expr) -> float | None:
    """The value of a constant ``PrimValue`` (Clip's bounds), or None."""
    value = getattr(expr, "value", None)
    return float(value.value) if hasattr(value, "value") else None


def _quantized(call: relax.Expr, dtype: str) -> QParams | None:
    params = per_tensor_qparams(call)
    if params is None:
        return None
    try:
        return QParams(params[0], params[1], dtype)
    except ValueError:
        return None


def _act_bounds(act: relax.Expr | None) -> tuple[float | None, float | None] | None:
    """The real (lower, upper) bounds of a matched ReLU/Clip (None: unbounded), or None when a
    Clip bound is not a constant."""
    if act is None:
        return None, None
    if act.op.name == "relax.nn.relu":
        return 0.0, None
    lo, hi = _prim_float(act.args[1]), _prim_float(act.args[2])
    return None if lo is None or hi is None else (lo, hi)


def linear_s8_matched(matched: dict[DFPattern, relax.Expr], annotations: dict[str, DFPattern]
                      ) -> dict[str, relax.Expr]:
    """``extract_matched_expr``'s answer by annotation name (the names it matched)."""
    return {name: matched[p] for name, p in annotations.items() if p in matched}


def read_linear_s8(annotated: Mapping[str, relax.Expr]) -> tuple[LinearS8Quant | None, str]:
    """The :class:`LinearS8Quant` of a matched ``tvm_tiny.linear_s8`` chain (``annotated``:
    annotation name → matched expression), or None and why the int8 kernel cannot take it."""
    def get(name: str) -> relax.Expr | None:
        return annotated.get(name, None)

    xq, root, w_dq = get("xq"), get("root"), get("w_dq")
    if str(xq.ty.dtype) != DType.INT8 or str(root.attrs.out_dtype) != DType.INT8:
        return None, "input or output is not int8"
    if not is_int8_weight(w_dq):
        return None, "weight is not a symmetric int8 matrix"
    _, weight = int8_matmul_weight(w_dq, is_matrix_transpose(get("weight")))
    if weight is None:
        return None, "weight scales do not run along the output columns"
    x_shape = static_shape(xq)
    k, n = weight.values.shape
    if x_shape is None or len(x_shape) < 1 or x_shape[-1] != k:
        return None, "input shape is not static [..., K]"
    x, y = _quantized(get("x"), DType.INT8), _quantized(root, DType.INT8)
    acc = None if get("acc") is None else _quantized(get("acc"), DType.INT8)
    if x is None or y is None or (get("acc") is not None and acc is None):
        return None, "a quantization point is not per-tensor int8"
    bias = get("bias")
    b = None
    if bias is not None:
        b = constant_value(bias).astype(np.float32)
        if b.size != n or b.shape[-1] != n:
            return None, "the bias is not one value per output column"
        b = b.reshape(-1)
    bounds = _act_bounds(get("act"))
    if bounds is None:
        return None, "Clip bounds are not constants"
    quant = LinearS8Quant(x, weight, b, y, acc, *bounds)
    try:
        lower_linear_s8(quant)
    except ValueError as why:
        return None, str(why)
    return quant, ""


def _check_linear_s8(context: PatternCheckContext) -> bool:
    """A QDQ int8 linear layer outside attention that ``tt_linear_s8`` computes."""
    # An attention's projection reads a proof mark: the MHSA patterns own it (or, unmatched,
    # the partitioner keeps the whole model with TVM), never the linear kernel.
    if is_proof_mark(context.annotated_expr["xq"]):
        return False
    # An intermediate (the rounded MatMul, the float bias add) read outside the region would
    # lose its producer once the region becomes one kernel: keep it with TVM.
    if has_leaking_intermediate_variables(context):
        return False
    quant, _reason = read_linear_s8(context.annotated_expr)
    return quant is not None


def linear_s8_int8_weights(func: relax.Function) -> list[relax.Var]:
    """The weight ``dequantize`` vars of the int8 linear layers of ``func`` the
    ``tvm_tiny.linear_s8`` pattern takes: the partitioner's second constant fold leaves them
    (the kernel reads their int8 constants), as it leaves the MHSAs'."""
    return _single_weights(func, make_linear_s8_pattern, read_linear_s8, skip_proof_marks=True)


# ---------------------------------------------------------------- int8 convolution
def make_conv_s8_pattern() -> tuple[DFPattern, dict[str, DFPattern]]:
    """The QDQ int8 convolution (int8 in, int8 out) with named annotations: ``quantize(
    [relu | clip](add?(dequantize(quantize(conv)) | conv, b const)))`` of ``conv2d(
    dequantize(x_q), dequantize(W_q const))``, the linear layer's chain with ``conv2d`` for the
    MatMul (``acc``: the exported rounding point before the bias add; onnxruntime's quantizer
    writes none, its Conv carries the bias)."""
    xq = wildcard()
    x = is_op("relax.dequantize")(xq, is_const(), is_const())
    w_dq = is_op("relax.dequantize")(is_const(), is_const(), is_const())
    conv = is_op("relax.nn.conv2d")(x, w_dq)
    acc = is_op("relax.quantize")(conv, is_const(), is_const())
    inner = is_op("relax.dequantize")(acc, is_const(), is_const()) | conv
    bias = is_const()
    body = is_op("relax.add")(inner, bias) | inner
    act = is_op("relax.nn.relu")(body) | is_op("relax.clip")(body, wildcard(), wildcard())
    root = is_op("relax.quantize")(act | body, is_const(), is_const())
    annotations = {"root": root, "xq": xq, "x": x, "w_dq": w_dq, "conv": conv, "acc": acc,
                   "bias": bias, "act": act}
    return root, annotations


def _conv_weight(w_dq: relax.Call, out_channels: int) -> QWeight | None:
    """The int8 OIHW weight of a symmetric ``dequantize`` with one scale or one per output
    channel (axis 0), as the [K, O] matrix of ``reference.conv_s8``; None otherwise."""
    if not all(is_constant(a) for a in w_dq.args[:3]):
        return None
    values, scale, zero_point = (constant_value(a) for a in w_dq.args[:3])
    if values.dtype != np.int8 or values.ndim != 4 or np.any(zero_point != 0):
        return None
    scale = np.asarray(scale, np.float32).reshape(-1)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return None
    if scale.size != 1 and (int(w_dq.attrs.axis) % 4 != 0 or scale.size != out_channels):
        return None
    per_channel = np.ascontiguousarray(np.broadcast_to(scale, (out_channels,)), np.float32)
    return QWeight(weight_matrix(values, 1), per_channel)


def _conv_geometry(conv: relax.Call, x_shape: tuple[int, ...], out_channels: int,
                   kernel: tuple[int, int]) -> tuple[ConvGeometry | None, str]:
    """The :class:`ConvGeometry` of a ``conv2d`` call, or None and why the kernel cannot take
    it (layouts, dilation, groups)."""
    a = conv.attrs
    layouts = (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        return None, f"conv2d layouts {'/'.join(layouts)}, not NCHW/OIHW/NCHW"
    dilation = tuple(int(v) for v in a.dilation)
    if dilation != (1, 1):
        return None, f"conv2d dilation {dilation}: the int8 conv kernel takes dilation 1 only"
    pad = tuple(int(v) for v in a.padding)
    padding = pad * 4 if len(pad) == 1 else (pad * 2 if len(pad) == 2 else pad)
    try:
        geometry = ConvGeometry(int(x_shape[0]), int(x_shape[1]), int(x_shape[2]),
                                int(x_shape[3]), out_channels, kernel,
                                tuple(int(v) for v in a.strides), padding, int(a.groups))
    except ValueError as why:
        return None, str(why)
    return geometry, ""


def read_conv_s8(annotated: Mapping[str, relax.Expr]) -> tuple[ConvS8Quant | None, str]:
    """The :class:`ConvS8Quant` of a matched ``tvm_tiny.conv_s8`` chain (``annotated``:
    annotation name → matched expression), or None and why the int8 kernel cannot take it."""
    xq, root, w_dq, conv = (annotated.get(n) for n in ("xq", "root", "w_dq", "conv"))
    if str(xq.ty.dtype) != DType.INT8 or str(root.attrs.out_dtype) != DType.INT8:
        return None, "conv2d input or output is not int8"
    x_shape, w_shape = static_shape(xq), static_shape(w_dq)
    if x_shape is None or len(x_shape) != 4 or w_shape is None or len(w_shape) != 4:
        return None, f"conv2d input {x_shape} or weight {w_shape} is not a static 4-D shape"
    out_channels = int(w_shape[0])
    geometry, reason = _conv_geometry(conv, x_shape, out_channels, (w_shape[2], w_shape[3]))
    if geometry is None:
        return None, reason
    weight = _conv_weight(w_dq, out_channels)
    if weight is None:
        return None, "conv2d weight is not symmetric int8 OIHW with per-tensor or " \
                     "per-output-channel scales"
    x, y = _quantized(annotated.get("x"), DType.INT8), _quantized(root, DType.INT8)
    acc = None if annotated.get("acc") is None else _quantized(annotated["acc"], DType.INT8)
    if x is None or y is None or (annotated.get("acc") is not None and acc is None):
        return None, "a quantization point of the conv2d is not per-tensor int8"
    b = None
    if annotated.get("bias") is not None:
        b = constant_value(annotated["bias"]).astype(np.float32)
        # [O, 1, 1] or [1, O, 1, 1] broadcast along the channels of the NCHW output; any other
        # shape (a 1-D [O] runs along the width) is not a per-channel bias.
        if b.size != out_channels or b.ndim < 3 or b.shape[-3] != out_channels:
            return None, f"conv2d bias {b.shape} is not one value per output channel"
        b = b.reshape(-1)
    bounds = _act_bounds(annotated.get("act"))
    if bounds is None:
        return None, "Clip bounds are not constants"
    quant = ConvS8Quant(geometry, LinearS8Quant(x, weight, b, y, acc, *bounds))
    try:
        lower_conv_s8(quant)
    except ValueError as why:
        return None, str(why)
    return quant, ""


def _check_conv_s8(context: PatternCheckContext) -> bool:
    """A QDQ int8 convolution that ``tt_conv_s8`` computes; the others stay with TVM (and the
    integer Relax rule of ``integerize/conv.py``)."""
    # An intermediate (the float conv output, the bias add) read outside the region would lose
    # its producer once the region becomes one kernel: keep it with TVM.
    if has_leaking_intermediate_variables(context):
        return False
    quant, _reason = read_conv_s8(context.annotated_expr)
    return quant is not None


def conv_s8_int8_weights(func: relax.Function) -> list[relax.Var]:
    """The weight ``dequantize`` vars of the int8 convolutions of ``func`` the
    ``tvm_tiny.conv_s8`` pattern takes (left unfolded, as the linear layers' are)."""
    return _single_weights(func, make_conv_s8_pattern, read_conv_s8, skip_proof_marks=False)


def kept_int8_weights(func: relax.Function) -> list[relax.Var]:
    """Every int8 weight an offloaded kernel reads: the MHSAs', the int8 linear layers' and
    the int8 convolutions'."""
    return canonical_int8_weights(func) + linear_s8_int8_weights(func) \
        + conv_s8_int8_weights(func)


def tiny_patterns() -> list[Pattern]:
    """All tvm_tiny patterns in registration order: later entries have higher priority (pure:
    builds, registers nothing).

    The int8 MHSA chain contains the float chain's ops plus Q/DQ and the MHSA chains contain the
    linear patterns' projections, so the order is the linear ones, float MHSA, int8 MHSA: a QDQ
    region is claimed whole by the int8 pattern and no projection of an attention by a linear one.
    The int8 conv pattern shares no op with the others (it anchors on ``conv2d``); it sits with
    the linear ones. Tuples rather than ``FusionPattern`` objects, because TVM's ``atexit``
    cleanup of the registry only tracks patterns registered as tuples.
    """
    return [
        (LINEAR_SPARSE_COMPOSITE, *make_linear_sparse_pattern(), _check_linear_sparse),
        (LINEAR_S8_COMPOSITE, *make_linear_s8_pattern(), _check_linear_s8),
        (CONV_S8_COMPOSITE, *make_conv_s8_pattern(), _check_conv_s8),
        (MHSA_COMPOSITE, *make_mhsa_pattern(), _check_mhsa),
        (MHSA_S8_COMPOSITE, *make_mhsa_s8_pattern(), _check_mhsa_s8),
    ]


def _matches_at_quantizes(func: relax.Function, pattern: DFPattern
                          ) -> Iterator[tuple[dict[DFPattern, relax.Expr],
                                              dict[relax.Expr, relax.Var]]]:
    """(matched, value -> var) for every output ``quantize`` of ``func`` where ``pattern``
    matches (the int8 chains end in their output quantize): the walk the kept-weight lists of
    the int8 patterns share."""
    for block in func.body.blocks:
        var2val = {b.var: b.value for b in block.bindings}
        var_of = {value: var for var, value in var2val.items()}
        for value in var2val.values():
            if not (isinstance(value, relax.Call) and value.op.same_as(_QUANTIZE)):
                continue
            matched = pattern.extract_matched_expr(value, var2val)
            if matched is not None:
                yield matched, var_of


def _single_weights(func: relax.Function, make: Callable[[], tuple[DFPattern, dict[str,
                    DFPattern]]], read: Callable[[Mapping[str, relax.Expr]], tuple[object, str]],
                    skip_proof_marks: bool) -> list[relax.Var]:
    """The ``w_dq`` vars of the one-weight int8 patterns (linear, conv) that ``read`` accepts."""
    pattern, annotations = make()
    found: list[relax.Var] = []
    for matched, var_of in _matches_at_quantizes(func, pattern):
        if skip_proof_marks and is_proof_mark(matched[annotations["xq"]]):
            continue  # an attention's projection: the MHSA patterns own it
        if read(linear_s8_matched(matched, annotations))[0] is not None \
                and matched[annotations["w_dq"]] in var_of:
            found.append(var_of[matched[annotations["w_dq"]]])
    return found


def canonical_int8_weights(func: relax.Function) -> list[relax.Var]:
    """The weight ``dequantize`` vars of every proved canonical int8 MHSA of ``func`` (the
    regions the ``tvm_tiny.mhsa_s8`` pattern matches at a proof mark): the partitioner's second
    constant fold must leave them, the kernel reads their int8 constants."""
    pattern, annotations = make_mhsa_s8_pattern()
    found: list[relax.Var] = []
    for matched, var_of in _matches_at_quantizes(func, pattern):
        if is_proof_mark(matched[annotations["xq"]]):
            found += [var_of[matched[annotations[w]]] for w in ("wq", "wk", "wv", "wo")]
    return found


register_patterns(tiny_patterns())

"""Integer LayerNorm over the last axis (``relax.nn.layer_norm``, and the decomposed form).

``Q(layer_norm(DQ(x), gamma, beta))`` in int64 Relax, as Deeploy's and I-BERT's integer
LayerNorms: exact integer mean and variance of the int8 input, an integer square root (Newton,
on the row's sum of squares normalized into [2^60, 2^62) so that every row gets 31 significant
bits), one fixed-point reciprocal per row, gamma and beta folded into per-channel gains and
offsets, and one rounding shift to the output point. Every step is an elementwise or reduction
Relax op on integers, so TVM's own TIR-to-C code compiles it; the constants and the program are
:class:`tvm_tiny.reference.integer_norm.LayerNormS8` and its golden model
:func:`~tvm_tiny.reference.integer_norm.layer_norm_s8`.

The decomposed form an exporter writes (``ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt,
Div[, Mul gamma][, Add beta]``) is matched as one region and computed by the same program.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.integerize.rule import (
    NotInteger,
    Operand,
    OpMatch,
    QConst,
    QTensor,
    region_rule,
    rule,
)
from tvm_tiny.reference.integer_norm import (
    ISQRT_NEWTON_STEPS,
    LN_FRAC_BITS,
    NORM_SEARCH,
    LayerNormS8,
    layer_norm_params,
)


def _i64(v: int | np.ndarray) -> relax.Constant:
    return relax.const(np.asarray(v, np.int64), "int64")


def _float_constant(operand: Operand, what: str) -> np.ndarray:
    if isinstance(operand, QConst):
        return np.asarray(operand.real, np.float64)
    if isinstance(operand, np.ndarray):
        return operand.astype(np.float64)
    raise NotInteger(f"LayerNorm {what} is not a constant")


SUM32_MAX_N = 33025
"""Up to this many values per row, ``sum (x - zp)^2 <= 255^2 n`` fits int32, and the row sums are
int32 (one multiply-accumulate each on a 32-bit core, where int64 takes several)."""


def isqrt_seeded_expr(tn: relax.Expr) -> relax.Expr:
    """``floor(sqrt(tn))`` of an int64 ``tn`` in [2^60, 2^62) with two int64 divisions, where
    :func:`~tvm_tiny.reference.integer_norm.isqrt_normalized` takes five: the root of
    ``v = tn >> 32`` (in [2^28, 2^30)) by the same Newton iteration in int32 (one hardware
    divide per step on a Cortex-M), ``(r32 + 1) << 16`` as the start (above the root, relative
    error at most 2^-14), two int64 Newton steps (the error squares: under 2^-28 of a unit),
    and the same final correction. The result is the same integer: both are the floor of the
    square root (``tests/test_integerize_rules.py`` checks it on squares and their neighbours).
    """
    op = relax.op
    v = op.astype(op.right_shift(tn, _i64(32)), "int32")
    r = op.add(op.right_shift(v, _i32(16)), _i32(1 << 14))
    for _ in range(ISQRT_NEWTON_STEPS):
        r = op.right_shift(op.add(r, op.divide(v, r)), _i32(1))
    r = op.subtract(r, op.astype(op.greater(op.multiply(r, r), v), "int32"))
    r = op.left_shift(op.astype(op.add(r, _i32(1)), "int64"), _i64(16))
    for _ in range(2):
        r = op.right_shift(op.add(r, op.divide(tn, r)), _i64(1))
    return op.subtract(r, op.astype(op.greater(op.multiply(r, r), tn), "int64"))


def _i32(v: int) -> relax.Constant:
    return relax.const(np.asarray(v, np.int32), "int32")


def layer_norm_expr(x: relax.Expr, p: LayerNormS8) -> relax.Expr:
    """The integer program of ``p`` on the int8 tensor ``x`` (normalized along its last axis),
    integer for integer the golden :func:`tvm_tiny.reference.integer_norm.layer_norm_s8`.

    Rows of at most :data:`SUM32_MAX_N` values sum in int32, and the sum of squares of the
    centred values ``c = n d - S`` is ``n (n sum d^2 - S^2)``, the same integer computed from
    int32 sums (expand the square; ``sum d = S``)."""
    op = relax.op
    narrow = p.n <= SUM32_MAX_N
    wide, zp = ("int32", _i32(p.x_zero)) if narrow else ("int64", _i64(p.x_zero))

    def d() -> relax.Expr:
        return op.subtract(op.astype(x, wide), zp)

    def centered() -> relax.Expr:
        # c = n d - sum(d), rebuilt from the int8 x at every use: the [.., n] tensor then never
        # outlives one fused function (held between the variance and the output it would take
        # 4 or 8 bytes per element of the arena), and each copy is read once, so it inlines.
        n = _i32(p.n) if narrow else _i64(p.n)
        return op.astype(op.subtract(op.multiply(d(), n), row_sum), "int64")

    row_sum = op.sum(d(), axis=[-1], keepdims=True)
    if narrow:
        sq = op.astype(op.sum(op.multiply(d(), d()), axis=[-1], keepdims=True), "int64")
        s64 = op.astype(row_sum, "int64")
        t = op.multiply(op.subtract(op.multiply(sq, _i64(p.n)), op.multiply(s64, s64)),
                        _i64(p.n))
    else:
        t = op.sum(op.multiply(centered(), centered()), axis=[-1], keepdims=True)
    t = op.maximum(op.add(op.left_shift(t, _i64(2 * p.k0)), _i64(p.eps)), _i64(1))
    k = None
    for j in range(1, NORM_SEARCH + 1):
        below = op.astype(op.less(t, _i64(1 << (62 - 2 * j))), "int64")
        k = below if k is None else op.add(k, below)
    r = isqrt_seeded_expr(op.left_shift(t, op.multiply(k, _i64(2))))
    # r is positive: C's truncating division (relax divide on integers) is the floor the golden
    # model takes, without the sign fix-up TVM's floor_divide adds
    inv = op.divide(_i64(1 << 62), r)
    sh = op.maximum(op.subtract(_i64(62 - LN_FRAC_BITS - p.k0), k), _i64(0))
    # |norm| <= 2^LN_FRAC_BITS and |gain| < 2^31: as int32 values widened for the product, a
    # 32-bit core multiplies them in one instruction (SMULL) where int64 operands take three
    norm = op.astype(op.right_shift(op.multiply(centered(), inv), sh), "int32")
    acc = op.add(op.multiply(op.astype(norm, "int64"), _i64(p.gain)), _i64(p.offset))
    y = op.right_shift(op.add(acc, _i64(1 << (p.out_shift - 1))), _i64(p.out_shift))
    lo, hi = p.out.range
    y = op.clip(op.add(y, _i64(p.out.zero_point)), lo, hi)
    return op.astype(y, str(p.out.dtype))


def _integer_layer_norm(match: OpMatch, x: QTensor, gamma: np.ndarray | None,
                        beta: np.ndarray | None, epsilon: float) -> relax.Expr:
    if match.output_shape != x.shape:
        raise NotInteger(f"LayerNorm output shape {match.output_shape} is not the input's")
    n = x.shape[-1]
    for name, v in (("gamma", gamma), ("beta", beta)):
        if v is not None and v.size not in (1, n):
            raise NotInteger(f"LayerNorm {name} of shape {v.shape} is not per channel")
    gamma = None if gamma is None else np.broadcast_to(gamma.reshape(-1), (n,))
    beta = None if beta is None else np.broadcast_to(beta.reshape(-1), (n,))
    try:
        p = layer_norm_params(n, x.qp, gamma, beta, epsilon, match.output)
    except ValueError as err:
        raise NotInteger(str(err)) from None
    return layer_norm_expr(x.value, p)


@rule("relax.nn.layer_norm")
def layer_norm_int8(match: OpMatch) -> relax.Expr:
    """``relax.nn.layer_norm`` over the last axis with constant gamma and beta."""
    x, gamma, beta = match.operands[:3]
    if not isinstance(x, QTensor):
        raise NotInteger("LayerNorm input is not a quantized tensor")
    axes = [int(a) for a in match.call.attrs.axes]
    if axes not in ([-1], [len(x.shape) - 1]):
        raise NotInteger(f"LayerNorm over axes {axes}, not the last axis alone")
    attrs = match.call.attrs
    g = _float_constant(gamma, "gamma") if attrs.scale else None
    b = _float_constant(beta, "beta") if attrs.center else None
    return _integer_layer_norm(match, x, g, b, float(attrs.epsilon))


# --- the decomposed form --------------------------------------------------------------------


class _Region:
    """A region's ops by var, and its leaves, for walking the decomposed LayerNorm backwards."""

    def __init__(self, match: OpMatch) -> None:
        self.calls = {var: call for var, call in match.region}
        self.leaves = match.leaves

    def call(self, expr: relax.Expr, name: str) -> relax.Call:
        call = self.calls.get(expr)
        if call is None or call.op.name != name:
            got = "a leaf" if call is None else call.op.name
            raise NotInteger(f"decomposed LayerNorm: expected {name}, found {got}")
        return call

    def op_name(self, expr: relax.Expr) -> str | None:
        call = self.calls.get(expr)
        return None if call is None else call.op.name

    def constant(self, expr: relax.Expr) -> np.ndarray | None:
        leaf = self.leaves.get(expr)
        if isinstance(leaf, QConst):
            return np.asarray(leaf.real, np.float64)
        if isinstance(leaf, np.ndarray):
            return leaf.astype(np.float64)
        return None

    def split_constant(self, call: relax.Call) -> tuple[relax.Expr, np.ndarray]:
        """(the non-constant argument, the constant) of a binary op with one constant."""
        a, b = call.args[:2]
        cb = self.constant(b)
        if cb is not None:
            return a, cb
        ca = self.constant(a)
        if ca is not None:
            return b, ca
        raise NotInteger(f"decomposed LayerNorm: {call.op.name} has no constant operand")


def _is_last_axis_mean(call: relax.Call, ndim: int) -> bool:
    axes = [int(a) for a in call.attrs.axis] if call.attrs.axis is not None else []
    return axes in ([-1], [ndim - 1]) and bool(call.attrs.keepdims)


def _decomposed(match: OpMatch) -> tuple[QTensor, np.ndarray | None, np.ndarray | None, float]:
    """(x, gamma, beta, eps) of ``[(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)] [* gamma]
    [+ beta]``, or NotInteger naming the first op that does not fit."""
    reg = _Region(match)
    top = match.region[-1][0]
    beta = gamma = None
    visited = 0
    if reg.op_name(top) == "relax.add":
        top, beta = reg.split_constant(reg.calls[top])
        visited += 1
    if reg.op_name(top) == "relax.multiply":
        top, gamma = reg.split_constant(reg.calls[top])
        visited += 1
    div = reg.call(top, "relax.divide")
    centered, std = div.args[:2]
    sub = reg.call(centered, "relax.subtract")
    x_expr, mean_var = sub.args[:2]
    x = reg.leaves.get(x_expr)
    if not isinstance(x, QTensor):
        raise NotInteger("decomposed LayerNorm: the centered input is not a quantized tensor")
    mean1 = reg.call(mean_var, "relax.mean")
    if not mean1.args[0].same_as(x_expr) or not _is_last_axis_mean(mean1, len(x.shape)):
        raise NotInteger("decomposed LayerNorm: the mean is not over the input's last axis")
    sqrt = reg.call(std, "relax.sqrt")
    var_expr, eps = reg.split_constant(reg.call(sqrt.args[0], "relax.add"))
    mean2 = reg.call(var_expr, "relax.mean")
    if not _is_last_axis_mean(mean2, len(x.shape)):
        raise NotInteger("decomposed LayerNorm: the variance is not over the last axis")
    sq = reg.calls.get(mean2.args[0])
    if sq is not None and sq.op.name == "relax.power":
        base, exponent = sq.args[:2]
        if reg.constant(exponent) is None or float(np.asarray(reg.constant(exponent))) != 2.0:
            raise NotInteger("decomposed LayerNorm: power is not a square")
        ok = base.same_as(centered)
    elif sq is not None and sq.op.name == "relax.multiply":
        ok = sq.args[0].same_as(centered) and sq.args[1].same_as(centered)
    else:
        ok = False
    if not ok:
        raise NotInteger("decomposed LayerNorm: the variance is not the mean of the centered "
                         "input squared")
    if eps.size != 1:
        raise NotInteger("decomposed LayerNorm: epsilon is not a scalar")
    if len(match.region) != visited + 7:  # div, sub, mean, sqrt, add eps, mean, square
        raise NotInteger("decomposed LayerNorm: the region has ops besides the LayerNorm")
    return x, gamma, beta, float(eps.reshape(-1)[0])


@region_rule("relax.add", "relax.divide", "relax.multiply")
def decomposed_layer_norm_int8(match: OpMatch) -> relax.Expr:
    """A LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div[/Mul][/Add] in one region."""
    if not any(call.op.name == "relax.mean" for _, call in match.region):
        raise NotInteger("region is not a decomposed LayerNorm (no mean)")
    x, gamma, beta, eps = _decomposed(match)
    return _integer_layer_norm(match, x, gamma, beta, eps)

"""numpy golden models of the integer LayerNorm, Softmax, pooling/mean and Conv rules, bit for bit.

The rules in :mod:`tvm_tiny.integerize` (``layernorm``, ``softmax``, ``pool``, ``conv``) write
Relax that TVM compiles to integer C; the functions here compute the same integers in numpy
int64, so a test compares the compiled code against them exactly. The constants of each integer
program (fixed-point gains, lookup tables, shifts) are derived once, here, by the ``*_params``
functions: the rule and the golden model read the same numbers, so they cannot drift apart.

Every program ends in one rounding to the output point: :func:`requantize8` (the MHSA kernel's
``(acc * mult + 2^(n-1)) >> n``, :func:`tvm_tiny.reference.mhsa_s8.requantize`) or a rounding
right shift by a power of two (LayerNorm). Float QDQ semantics (``quantize(op(dequantize(x)))``)
is the target they approximate; the tests count the difference in output steps. No TVM import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvm_tiny.ir.quant import QParams, quantize_multipliers, round_half_away
from tvm_tiny.reference.mhsa_s8 import requantize

__all__ = [
    "ISQRT_NEWTON_STEPS",
    "LN_FRAC_BITS",
    "NORM_SEARCH",
    "SOFTMAX_LUT_BITS",
    "LayerNormS8",
    "SoftmaxS8",
    "avg_pool_counts",
    "conv2d_s8",
    "conv_bias",
    "isqrt_normalized",
    "layer_norm_params",
    "layer_norm_s8",
    "max_pool2d_s8",
    "mean_s8",
    "normalize_shift",
    "requantize8",
    "softmax_params",
    "softmax_s8",
    "sum_pool2d_s8",
]

LN_FRAC_BITS = 30
"""Fraction bits of the normalized LayerNorm value ``(x - mean) / sqrt(N var + eps)`` (its
magnitude is at most 1, so it fits in 31 bits)."""

NORM_SEARCH = 30
"""A LayerNorm row's ``T`` is shifted left by ``2 k`` (``k`` in [0, NORM_SEARCH]) into
[2^60, 2^62): every row's square root then has 31 significant bits, whatever its variance."""

ISQRT_NEWTON_STEPS = 5
"""Newton steps of the integer square root from the start ``(T >> 32) + 2^30`` (never below the
root, relative error at most 1/4; the error squares each step: 5 steps reach the floor)."""

SOFTMAX_LUT_BITS = 22
"""``exp(-s_x d)`` is stored as ``round(2^22 exp(-s_x d))``; the row maximum contributes
2^22, so every table error is below 2^-23 of the row sum."""

_LN_SUMSQ_LIMIT = 2**62


def requantize8(acc: np.ndarray, real: np.ndarray | float, out: QParams) -> np.ndarray:
    """``clamp(z + requant(acc, real))`` on ``out``'s range: what
    :func:`tvm_tiny.integerize.requant.requantize` computes (int64 result)."""
    mult, shift = quantize_multipliers(real)
    lo, hi = out.range
    return np.clip(out.zero_point + requantize(acc, mult, shift), lo, hi)


def _round_shift(acc: np.ndarray, n: int) -> np.ndarray:
    """``(acc + 2^(n-1)) >> n``: one rounding, ties toward +infinity (``n >= 1``)."""
    return (np.asarray(acc, np.int64) + (np.int64(1) << np.int64(n - 1))) >> np.int64(n)


# --- LayerNorm ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNormS8:
    """The constants of one integer LayerNorm over the last axis (length ``n``).

    With ``d = q - x_zero`` and ``c = n d - sum(d)`` (exact), ``T = (sum(c^2) << 2 k0) + eps``
    is ``4^k0 n^3 (var(d) + eps / s_x^2)``; normalized by ``4^k`` into [2^60, 2^62), its integer
    root ``r`` gives ``norm = c * (2^62 // r) >> (32 - k0 - k)``, the normalized value times
    2^30. ``y = clamp(y_zero + (norm * gain + offset + 2^(s-1)) >> s)`` with ``s = 30 + g``,
    ``gain = round(gamma sqrt(n) / s_y 2^g)`` and ``offset = round(beta / s_y 2^s)``.
    """

    n: int
    x_zero: int
    k0: int  # static pre-shift of T: more bits for the epsilon term
    eps: int  # round(eps / s_x^2 n^3 4^k0)
    g: int  # gain fraction bits
    gain: np.ndarray  # int64 [n]
    offset: np.ndarray  # int64 [n]
    out: QParams

    @property
    def out_shift(self) -> int:
        return LN_FRAC_BITS + self.g


def layer_norm_params(n: int, x: QParams, gamma: np.ndarray | None, beta: np.ndarray | None,
                      epsilon: float, out: QParams) -> LayerNormS8:
    """Fold epsilon, ``gamma`` and ``beta`` (float [n], None: 1 and 0) into integers; raise
    ValueError when ``n`` or the scales leave no room in int64."""
    gamma = np.ones(n) if gamma is None else np.asarray(gamma, np.float64).reshape(n)
    beta = np.zeros(n) if beta is None else np.asarray(beta, np.float64).reshape(n)
    lo, hi = x.range
    width = hi - lo  # largest |d_i - d_j|
    e_real = float(epsilon) / (x.scale * x.scale) * float(n) ** 3
    t_max = float(n) ** 3 * width * width / 4.0 + e_real  # n^3 var(d) <= n^3 width^2 / 4
    if t_max * 4.0 >= _LN_SUMSQ_LIMIT or float(n) * width * 2.0**32 >= 2.0**63:
        raise ValueError(f"LayerNorm over {n} values with input scale {x.scale:g}: the "
                         "integer variance does not fit in int64")
    k0 = 0
    while k0 < 16 and t_max * 4.0 ** (k0 + 1) < _LN_SUMSQ_LIMIT / 2:
        k0 += 1
    eps = int(round_half_away(e_real * 4.0**k0))
    gain_real = gamma * math.sqrt(n) / out.scale  # output steps per unit normalized value
    gm = float(np.abs(gain_real).max())
    # beta beyond gm + 2^9 steps saturates the output whatever the normalized value: clip it
    # (exact) so that the offset always fits next to the product.
    bound = gm + 512.0
    offset_real = np.clip(beta / out.scale, -bound, bound)
    g = 31 - math.ceil(math.log2(bound)) - 1  # bound * 2^(30 + g) <= 2^60
    if gm > 0:
        g = min(g, math.floor(math.log2((2**31 - 1) / gm)))
    if LN_FRAC_BITS + g < 1:
        raise ValueError(f"LayerNorm gain up to {gm:g} output steps is too large for int64")
    gain = round_half_away(gain_real * 2.0**g).astype(np.int64)
    offset = round_half_away(offset_real * 2.0 ** (LN_FRAC_BITS + g)).astype(np.int64)
    return LayerNormS8(n=n, x_zero=x.zero_point, k0=k0, eps=eps, g=g, gain=gain, offset=offset,
                       out=out)


def normalize_shift(t: np.ndarray) -> np.ndarray:
    """``k`` in [0, NORM_SEARCH] with ``t << 2k`` in [2^60, 2^62) for 1 <= t < 2^62: the count
    of ``j`` in 1..30 with ``t < 2^(62 - 2j)`` (comparisons, no count-leading-zeros op)."""
    t = np.asarray(t, np.int64)
    k = np.zeros(t.shape, np.int64)
    for j in range(1, NORM_SEARCH + 1):
        k = k + (t < (np.int64(1) << np.int64(62 - 2 * j))).astype(np.int64)
    return k


def isqrt_normalized(t: np.ndarray) -> np.ndarray:
    """``floor(sqrt(t))`` of int64 ``t`` in [2^60, 2^62) (in [2^30, 2^31)) by integer Newton."""
    t = np.asarray(t, np.int64)
    r = (t >> np.int64(32)) + (np.int64(1) << np.int64(30))
    for _ in range(ISQRT_NEWTON_STEPS):
        r = (r + t // r) >> np.int64(1)
    return r - (r * r > t).astype(np.int64)


def layer_norm_s8(q: np.ndarray, p: LayerNormS8) -> np.ndarray:
    """Integer LayerNorm over the last axis of ``q`` (int8, last axis ``p.n``); int64 result."""
    d = np.asarray(q, np.int64) - p.x_zero
    c = p.n * d - d.sum(axis=-1, keepdims=True)
    t = ((c * c).sum(axis=-1, keepdims=True) << np.int64(2 * p.k0)) + p.eps
    t = np.maximum(t, 1)
    k = normalize_shift(t)
    r = isqrt_normalized(t << (2 * k))
    inv = (np.int64(1) << np.int64(62)) // r
    sh = np.maximum(np.int64(62 - LN_FRAC_BITS) - p.k0 - k, 0)
    norm = (c * inv) >> sh
    acc = norm * p.gain + p.offset
    lo, hi = p.out.range
    return np.clip(p.out.zero_point + _round_shift(acc, p.out_shift), lo, hi)


# --- Softmax --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftmaxS8:
    """Integer softmax: ``e = lut[max - q]``, ``y = clamp(z + (e M + D // 2) // D)`` with
    ``D = sum(e) << shift`` and ``M / 2^shift`` = 1 / s_y (round half up, one rounding; the
    MHSA kernel's :func:`tvm_tiny.reference.mhsa_s8.softmax_s8` is the same program)."""

    lut: np.ndarray  # int64 [256]: round(2^22 exp(-s_x d)), d = 0..255
    mult: int
    shift: int
    out: QParams


def softmax_params(n: int, x: QParams, out: QParams) -> SoftmaxS8:
    """The table of ``exp(-s_x d)`` and 1 / s_y as ``mult / 2^shift`` with ``mult`` in
    [2^23, 2^24] (ValueError when a row of ``n`` values would overflow int64)."""
    lo, hi = x.range
    d = np.arange(hi - lo + 1, dtype=np.float64)
    lut = round_half_away(np.exp(-x.scale * d) * 2.0**SOFTMAX_LUT_BITS).astype(np.int64)
    inv = 1.0 / out.scale
    shift = 24 - math.ceil(math.log2(inv))
    if shift < 0 or math.log2(n) + SOFTMAX_LUT_BITS + shift >= 62:
        raise ValueError(f"softmax over {n} values to output scale {out.scale:g}: the "
                         "integer normalization does not fit in int64")
    mult = int(round_half_away(inv * 2.0**shift))
    return SoftmaxS8(lut=lut, mult=mult, shift=shift, out=out)


def softmax_s8(q: np.ndarray, p: SoftmaxS8, axis: int = -1) -> np.ndarray:
    """Integer softmax of int8 ``q`` along ``axis``; int64 result."""
    q = np.asarray(q, np.int64)
    e = p.lut[q.max(axis=axis, keepdims=True) - q]
    den = e.sum(axis=axis, keepdims=True) << np.int64(p.shift)
    lo, hi = p.out.range
    return np.clip(p.out.zero_point + (e * p.mult + den // 2) // den, lo, hi)


# --- pooling and mean -----------------------------------------------------------------------


def _window_starts(size: int, out: int, kernel: int, stride: int, dilation: int, pad: int
                   ) -> list[list[int]]:
    """Input indices of each output position's window along one axis (padding excluded)."""
    rows = []
    for o in range(out):
        idx = [o * stride - pad + j * dilation for j in range(kernel)]
        rows.append([i for i in idx if 0 <= i < size])
    return rows


def avg_pool_counts(size_hw: tuple[int, int], out_hw: tuple[int, int],
                    pool: tuple[int, int], strides: tuple[int, int],
                    dilation: tuple[int, int], padding: tuple[int, int, int, int],
                    count_include_pad: bool) -> np.ndarray:
    """int64 [OH, OW]: the divisor of each output position (valid inputs, or the whole window
    inside the padded input when ``count_include_pad``)."""
    counts = []
    for axis in range(2):
        size, pad_lo, pad_hi = size_hw[axis], padding[axis], padding[axis + 2]
        if count_include_pad:
            rows = _window_starts(size + pad_lo + pad_hi, out_hw[axis], pool[axis],
                                  strides[axis], dilation[axis], 0)
        else:
            rows = _window_starts(size, out_hw[axis], pool[axis], strides[axis],
                                  dilation[axis], pad_lo)
        counts.append(np.array([len(r) for r in rows], np.int64))
    return counts[0][:, None] * counts[1][None, :]


def sum_pool2d_s8(q: np.ndarray, x_zero: int, out_hw: tuple[int, int],
                  pool: tuple[int, int], strides: tuple[int, int],
                  dilation: tuple[int, int], padding: tuple[int, int, int, int]) -> np.ndarray:
    """int64 [N, C, OH, OW]: ``sum(q - x_zero)`` over each window's valid inputs (NCHW)."""
    d = np.asarray(q, np.int64) - x_zero
    h, w = d.shape[2:]
    rows = _window_starts(h, out_hw[0], pool[0], strides[0], dilation[0], padding[0])
    cols = _window_starts(w, out_hw[1], pool[1], strides[1], dilation[1], padding[1])
    acc = np.zeros(d.shape[:2] + tuple(out_hw), np.int64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if r and c:
                acc[:, :, i, j] = d[:, :, r][:, :, :, c].sum(axis=(2, 3))
    return acc


def max_pool2d_s8(q: np.ndarray, x: QParams, out: QParams, out_hw: tuple[int, int],
                  pool: tuple[int, int], strides: tuple[int, int],
                  dilation: tuple[int, int], padding: tuple[int, int, int, int]) -> np.ndarray:
    """Integer max pooling (exact), requantized when ``x`` and ``out`` differ; int64 result."""
    q = np.asarray(q, np.int64)
    h, w = q.shape[2:]
    rows = _window_starts(h, out_hw[0], pool[0], strides[0], dilation[0], padding[0])
    cols = _window_starts(w, out_hw[1], pool[1], strides[1], dilation[1], padding[1])
    m = np.full(q.shape[:2] + tuple(out_hw), x.range[0], np.int64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if r and c:
                m[:, :, i, j] = q[:, :, r][:, :, :, c].max(axis=(2, 3))
    if x == out:
        return m
    return requantize8(m - x.zero_point, x.scale / out.scale, out)


def mean_s8(q: np.ndarray, x: QParams, out: QParams, axes: tuple[int, ...],
            keepdims: bool) -> np.ndarray:
    """Integer mean over ``axes``: int32 sum, one rounding division by the count fused into
    the requantization to ``out``; int64 result."""
    q = np.asarray(q, np.int64)
    count = int(np.prod([q.shape[a] for a in axes]))
    acc = (q - x.zero_point).sum(axis=axes, keepdims=keepdims)
    return requantize8(acc, x.scale / (out.scale * count), out)


# --- Conv -----------------------------------------------------------------------------------


def conv_bias(bias: np.ndarray | None, x: QParams, w_scale: np.ndarray, w_sum: np.ndarray
              ) -> np.ndarray:
    """int64 [O]: the float ``bias`` in accumulator units ``s_x s_w[o]`` (rounded half away)
    minus ``x_zero * sum(w[o])``, the zero-point correction of an input padded with x_zero."""
    b = np.zeros(len(w_sum)) if bias is None else np.asarray(bias, np.float64)
    b_int = round_half_away(b / (x.scale * np.asarray(w_scale, np.float64))).astype(np.int64)
    return b_int - np.int64(x.zero_point) * np.asarray(w_sum, np.int64)


def conv2d_s8(q: np.ndarray, x: QParams, w: np.ndarray, w_scale: np.ndarray,
              bias: np.ndarray | None, out: QParams, strides: tuple[int, int],
              padding: tuple[int, int, int, int], dilation: tuple[int, int],
              groups: int) -> np.ndarray:
    """Integer NCHW/OIHW conv: ``q`` padded with x_zero (the real 0), int32 products with the
    symmetric int8 ``w``, :func:`conv_bias`, per-channel requantization; int64 result."""
    q = np.asarray(q, np.int64)
    w = np.asarray(w, np.int64)
    pt, pl, pb, pr = padding
    xp = np.pad(q, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=x.zero_point)
    n, c, h, wd = xp.shape
    o, cg, kh, kw = w.shape
    oh = (h - (kh - 1) * dilation[0] - 1) // strides[0] + 1
    ow = (wd - (kw - 1) * dilation[1] - 1) // strides[1] + 1
    og = o // groups
    acc = np.zeros((n, o, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, r0:r0 + (oh - 1) * strides[0] + 1:strides[0],
                       c0:c0 + (ow - 1) * strides[1] + 1:strides[1]]
            for grp in range(groups):
                xs = patch[:, grp * cg:(grp + 1) * cg]
                ws = w[grp * og:(grp + 1) * og, :, i, j]
                acc[:, grp * og:(grp + 1) * og] += np.einsum("nchw,oc->nohw", xs, ws)
    w_scale = np.broadcast_to(np.asarray(w_scale, np.float64), (o,))
    acc = acc + conv_bias(bias, x, w_scale, w.sum(axis=(1, 2, 3)))[None, :, None, None]
    real = (x.scale * w_scale / out.scale)[:, None, None]
    return requantize8(acc, real, out)

"""The integer program of the int8 MHSA: every constant the kernel and its golden model share.

:func:`lower_s8` derives, offline, what ``tt_mhsa_s8`` computes with from an
:class:`~tvm_tiny.ir.quant.MhsaInt8Params`: int32 biases, fixed-point multipliers and shifts, the
softmax lookup table and, with FWSA, the fused int8 weights. The C layouts of those constants are
``codegen.mhsa_s8_layout``'s; the numpy model that runs the program is ``reference.mhsa_s8``.
Both read the :class:`LoweredMhsaS8` made here, so the code generator and the golden model
cannot drift apart. No TVM import.

Notation: S sequence, E embedding, H heads, P projection per head, E_out output features
(``kernels/include/tt_mhsa_s8.h``). The integer program (all sums exact in int32; the bounds are
checked by :func:`lower_s8`)::

  requant(acc, M, shift) = (acc * M + 2**(n-1)) >> n,  n = 31 - shift       (int64 product)
  X  = x - zp_x
  Q  = clamp8(zp_q + requant(X Wq + bq32, Mq[n], sq[n]))        likewise K, V  [S][H*P]
  s  = clamp8(zp_s + requant((Q_h - zp_q)(K_h - zp_k)^T, Ms[h], ss[h]))          [S][S]
  e  = lut[max_j s - s]          sum = sum_j e          D = sum << g
  pr = min(127, zp_p + (e * Gm + D // 2) // D)          (unsigned 32-bit division)
  c  = clamp8(zp_c + requant((pr - zp_p)(V_h - zp_v), Mc, sc))                   [S][P]
  y  = clamp8(zp_y + requant(sum_h (c_h - zp_c) Wo_h + bo32, Mo[o], so[o]))      [S][E_out]

With FWSA (``fuse_qk``) the scores are instead
``s = clamp8(zp_s + requant(T [X | kappa]^T, Ms[h], ss[h]))`` with
``T = clamp16(requant(X Wf_h + bf32_h, Mt[h], st[h]))`` kept in int16, where Wf_h [E][E+1] and
bf_h [E+1] carry, in their last column, the row-constant terms FWSA drops (see
:func:`_fwsa_real_weights`), and ``kappa`` is a constant key column.

Exported rounding points (optional ``q_acc``/``k_acc``/``v_acc``/``o_acc``/``qk_acc``): QDQ
models (onnxruntime's quantize_static) round each projection's MatMul output before the float
bias add, and Q K^T before the scale multiply. When such a field is given, that step becomes
two requantizations (B = :data:`ACC_BIAS_BITS`)::

  q1  = clamp8(zp_acc + requant(X W, M1[n], s1[n]))           (no bias; M1 = s_x s_w[n] / s_acc)
  out = clamp8(zp_out + requant(((q1 - zp_acc) << B) + b2[n], M2, s2))
        b2[n] = round_half_away(b[n] / s_acc * 2**B) (0 without a bias), M2 = s_acc / (2**B s_out)
  s1  = clamp8(zp_qk + requant((Q_h - zp_q)(K_h - zp_k)^T, Ms[h], ss[h]))  Ms = s_q s_k / s_qk
  s   = clamp8(zp_s + requant((s1 - zp_qk) << B, M2, s2))       M2 = s_qk scale / (2**B s_s)

(``requant(d << B, M / 2**B) == requant(d, M)``: without a bias these are exactly the
``requant(q1 - zp_acc, s_acc / s_out)`` of the exported graph.) FWSA (``fuse_qk``) never forms
Q, K or Q K^T, so it ignores ``q_acc``, ``k_acc`` and ``qk_acc`` and keeps its single rounding
of the scores (it departs from the exported rounding points there); ``v_acc`` and ``o_acc``
apply with and without FWSA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape
from tvm_tiny.ir.quant import (
    ACC_POINTS,
    INT8_MAX,
    INT8_MIN,
    MhsaInt8Params,
    QParams,
    quantize_multiplier,
    quantize_multipliers,
    round_half_away,
)

__all__ = [
    "ACC_BIAS_BITS",
    "ACC_STAGE_BITS",
    "INT16_MAX",
    "LUT_FRAC_BITS",
    "FusedQK",
    "LoweredMhsaS8",
    "Requantization",
    "SecondStage",
    "UnfusedQK",
    "lower_s8",
    "probs_multiplier",
    "softmax_lut",
]

INT16_MAX = 32767
INT32_MAX = 2**31 - 1

LUT_FRAC_BITS = 15
"""The softmax LUT holds exp(-s_scores * d) in unsigned Q0.15 (lut[0] = 32768, fits uint16)."""

ACC_BIAS_BITS = 16
"""B of the two-step requantizations (C: TT_MHSA_S8_ACC_BIAS_BITS): stage 2 adds the bias in
units of s_acc / 2**B to (q1 - zp_acc) << B, so the bias keeps 16 fractional bits below one
step of the MatMul output: the exported graph adds it in float32, and with 8 bits one output in
a thousand (int8 EEGFormer's Q, K and V) fell on the other side of a rounding boundary than
onnxruntime's; |(q1 - zp_acc) << B| <= 255 * 2**16 leaves the bias 2**31 - 2**24 or so."""

ACC_STAGE_BITS = dict(zip(ACC_POINTS, (1, 2, 4, 8, 16)))
"""Bits of ``acc_stages`` (C: TT_MHSA_S8_ACC_Q ... TT_MHSA_S8_ACC_QK): which steps are two-step,
by rounding point (``ir.quant.ACC_POINTS``: q, k, v, o, qk)."""

MAX_DIM = 32767
"""Largest S, E, P, E_out and H*P: keeps every int32 sum of the kernel exact (see lower_s8)."""

PROBS_MAX_MULT_BITS = 16
"""Gm <= 2**16, so e * Gm + D // 2 < 2**15 * 2**16 + 2**30 < 2**32 (unsigned division)."""

X_MAX = 255
"""Largest |x - zp_x| (and |q - zp| of any int8 tensor): the bounds below start from it."""

W_MAX = 128
"""Largest |w| of an int8 weight, as the bounds count it."""

BIAS_FLOOR_BITS = 24
"""FWSA: |bf / (s_x wf_scale)| stays below 2**24 even when Wf_h vanishes (_fwsa_weight_scales)."""


# ---------------------------------------------------------------- softmax constants
def softmax_lut(scores_scale: float) -> np.ndarray:
    """uint16[256]: lut[d] = round(2**15 * exp(-scores_scale * d)), the exponential of a score
    d steps below its row maximum (TFLM-style; exact per input value, no polynomial)."""
    d = np.arange(256, dtype=np.float64)
    return round_half_away(2.0**LUT_FRAC_BITS * np.exp(-float(scores_scale) * d)).astype(
        np.uint16)


def probs_multiplier(probs_scale: float, seq: int) -> tuple[int, int]:
    """(Gm, g): 1/s_probs ~= Gm / 2**g with the largest g <= 16 such that D = sum << g stays
    below 2**31 (sum <= S * 2**15) and Gm <= 2**16."""
    inv = 1.0 / float(probs_scale)
    g = max(0, min(16, 16 - math.ceil(math.log2(seq)))) if seq > 1 else 16
    while g > 0 and round_half_away(inv * 2.0**g) > 2**PROBS_MAX_MULT_BITS:
        g -= 1
    gm = int(np.clip(round_half_away(inv * 2.0**g), 1, 2**PROBS_MAX_MULT_BITS))
    return gm, g


# ---------------------------------------------------------------- the lowered program
@dataclass(frozen=True)
class SecondStage:
    """The second requantization of a step with an exported rounding point: the first one
    stops at the rounding point (``acc_zero_point``, s_acc), this one goes on to the step's
    output, adding ``bias`` (int32 b2, None without a bias) in units of s_acc / 2**B."""

    mult: int
    shift: int
    acc_zero_point: int
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class Requantization:
    """One int32 accumulator -> int8 step: ``clamp8(zp + requant(acc + bias, mult, shift))``
    (the output zero point is in ``LoweredMhsaS8.zp``). ``mult``/``shift`` are int32 per output
    column (per head for scores and T); ``bias`` int32, None when the C pointer is NULL (no
    bias, or it moved to the second stage); ``second`` is the two-step tail, if any."""

    mult: np.ndarray
    shift: np.ndarray
    bias: np.ndarray | None = None
    second: SecondStage | None = None


@dataclass(frozen=True)
class UnfusedQK:
    """Q and K projected separately: int8 ``wq``, ``wk`` [E, H*P] and their requantizations."""

    wq: np.ndarray
    wk: np.ndarray
    q: Requantization
    k: Requantization


@dataclass(frozen=True)
class FusedQK:
    """FWSA: int8 ``wf`` [H, E(r), E+1(c)] with t_c = sum_r X_r wf[h, r, c], the int16 T's
    requantization ``t`` (per head; bias ``bf`` int32 [H, E+1]), ``t_scale`` float64 [H] the
    real scale of T, and ``kappa`` the constant key column X[:, E]."""

    wf: np.ndarray
    t: Requantization
    t_scale: np.ndarray
    kappa: int


@dataclass(frozen=True)
class LoweredMhsaS8:
    """The integer program of one int8 MHSA, in math layouts (``x @ W``): what the kernel
    computes, before the C layouts of ``codegen.mhsa_s8_layout``. Multipliers follow
    :func:`~tvm_tiny.ir.quant.quantize_multiplier`."""

    shape: MhsaShape
    zp: dict[str, int]  # x, q, k, v, scores, probs, ctx, y
    qk: UnfusedQK | FusedQK
    wv: np.ndarray  # int8 [E, H*P]
    wo: np.ndarray  # int8 [H*P, E_out]
    v: Requantization  # [H*P]
    scores: Requantization  # [H]
    ctx_mult: int
    ctx_shift: int
    softmax_lut: np.ndarray  # uint16 [256]
    probs_mult: int  # Gm
    probs_shift: int  # g
    o: Requantization  # [E_out]

    @property
    def fused(self) -> bool:
        return isinstance(self.qk, FusedQK)

    def second_stages(self) -> dict[str, SecondStage]:
        """The two-step requantizations by rounding point (``ACC_POINTS`` order)."""
        steps = {"v": self.v, "o": self.o, "qk": self.scores}
        if isinstance(self.qk, UnfusedQK):
            steps |= {"q": self.qk.q, "k": self.qk.k}
        return {name: steps[name].second for name in ACC_POINTS
                if name in steps and steps[name].second is not None}

    @property
    def acc_stages(self) -> int:
        """The C ``acc_stages`` bit set (:data:`ACC_STAGE_BITS`)."""
        return sum(ACC_STAGE_BITS[name] for name in self.second_stages())


# ---------------------------------------------------------------- lowering
def lower_s8(params: MhsaInt8Params, shape: MhsaShape, config: KernelConfig) -> LoweredMhsaS8:
    """Derive the integer program: int32 biases, multipliers and shifts, the softmax LUT, and
    with ``config.fuse_qk`` the fused int8 Wf_h (per head, per tensor) with its int16 T scale.

    Every int32 sum of the kernel is bounded here: |X| <= 255 and |w| <= 128, so projections
    stay below 255*128*E + |b| (the bias gets that headroom), scores below 255*255*P, the
    context below 255*255*S, y below 255*128*H*P + |bo|, and the fused T X^T below
    T_max*255*E by the choice of T_max; with every dimension <= 32767 all fit.
    """
    params.check_shape(shape)
    _check_kernel_limits(params, shape)
    hp = shape.heads * shape.proj
    x_scale = params.x.scale
    v = _projection(params, "v", params.bv, x_scale * _scales(params.wv.scale), params.v, hp,
                    X_MAX * W_MAX * shape.embed)
    o = _projection(params, "o", params.bo, params.ctx.scale * _scales(params.wo.scale),
                    params.y, shape.out_features, X_MAX * W_MAX * hp)
    qk, scores = (_fused_qk(params, shape) if config.fuse_qk else _unfused_qk(params, shape))
    ctx_mult, ctx_shift = quantize_multiplier(params.probs.scale * params.v.scale
                                              / params.ctx.scale)
    probs_mult, probs_shift = probs_multiplier(params.probs.scale, shape.seq)
    zp = {name: int(getattr(params, name).zero_point)
          for name in ("x", "q", "k", "v", "scores", "probs", "ctx", "y")}
    return LoweredMhsaS8(
        shape=shape, zp=zp, qk=qk, wv=params.wv.values, wo=params.wo.values, v=v,
        scores=scores, ctx_mult=ctx_mult, ctx_shift=ctx_shift,
        softmax_lut=softmax_lut(params.scores.scale), probs_mult=probs_mult,
        probs_shift=probs_shift, o=o)


def _check_kernel_limits(params: MhsaInt8Params, shape: MhsaShape) -> None:
    """What the kernel cannot take: dimensions past :data:`MAX_DIM` (its int32 sums would
    overflow) and activations quantized to anything but int8."""
    for name in ("seq", "embed", "proj", "out_features"):
        if getattr(shape, name) > MAX_DIM:
            raise ValueError(f"int8 MHSA: {name} = {getattr(shape, name)} exceeds {MAX_DIM}")
    if shape.heads * shape.proj > MAX_DIM:
        raise ValueError(f"int8 MHSA: H*P = {shape.heads * shape.proj} exceeds {MAX_DIM}")
    for name, point in params.activations().items():
        if point.dtype != DType.INT8:
            raise ValueError(f"int8 MHSA: {name} is quantized to {point.dtype}; the kernel "
                             "takes int8 tensors only")


def _scales(scale: np.ndarray) -> np.ndarray:
    return scale.astype(np.float64)


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 (mult, shift) arrays shaped like ``real``, as the kernel's tables hold them."""
    return quantize_multipliers(real, np.int32)


def _realized(mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The real factor a (mult, shift) pair actually applies."""
    return np.asarray(mult, np.float64) * np.exp2(np.asarray(shift, np.float64) - 31)


def _bias32(name: str, b: np.ndarray | None, in_scale: np.ndarray, n: int,
            headroom: int) -> np.ndarray:
    """``b`` in units of ``in_scale`` (int32 zeros without a bias); ValueError unless it fits
    int32 beside an accumulator of up to ``headroom``."""
    if b is None:
        return np.zeros(n, dtype=np.int32)
    q = round_half_away(np.asarray(b, np.float64) / np.asarray(in_scale, np.float64))
    if np.any(np.abs(q) > INT32_MAX - headroom):
        raise ValueError(f"bias {name} does not fit int32 next to the accumulator "
                         f"(max |b / (s_in * s_w)| = {np.abs(q).max():.3g})")
    return q.astype(np.int32)


def _projection(params: MhsaInt8Params, name: str, bias: np.ndarray | None,
                in_scale: np.ndarray, out: QParams, n: int, headroom: int) -> Requantization:
    """Requantization of the projection accumulator ``X W (+ b)`` (input scale ``in_scale``
    [n]) to ``out``: one step, or two with the rounding point ``<name>_acc``."""
    acc = getattr(params, f"{name}_acc")
    if acc is None:
        mult, shift = _multipliers(in_scale / out.scale)
        b32 = None if bias is None else _bias32(f"b{name}", bias, in_scale, n, headroom)
        return Requantization(mult, shift, b32)
    m2, s2 = quantize_multiplier(acc.scale / (2.0**ACC_BIAS_BITS * out.scale))
    b2 = None
    if bias is not None:
        step = np.full(n, acc.scale / 2.0**ACC_BIAS_BITS)  # b2 = b / s_acc * 2**B
        b2 = _bias32(f"b{name} (two-step)", bias, step, n, 255 << ACC_BIAS_BITS)
    mult, shift = _multipliers(in_scale / acc.scale)
    return Requantization(mult, shift, None, SecondStage(m2, s2, int(acc.zero_point), b2))


def _unfused_qk(params: MhsaInt8Params, shape: MhsaShape) -> tuple[UnfusedQK, Requantization]:
    """Q and K projections, and the scores' requantization (two-step with ``qk_acc``)."""
    hp, room = shape.heads * shape.proj, X_MAX * W_MAX * shape.embed
    sx = params.x.scale
    q = _projection(params, "q", params.bq, sx * _scales(params.wq.scale), params.q, hp, room)
    k = _projection(params, "k", params.bk, sx * _scales(params.wk.scale), params.k, hp, room)
    qk_scale = params.q.scale * params.k.scale
    second = None
    if params.qk_acc is None:
        mult, shift = quantize_multiplier(qk_scale * params.scale / params.scores.scale)
    else:
        mult, shift = quantize_multiplier(qk_scale / params.qk_acc.scale)
        second = SecondStage(*quantize_multiplier(params.qk_acc.scale * params.scale / (
            2.0**ACC_BIAS_BITS * params.scores.scale)), int(params.qk_acc.zero_point))
    h = shape.heads
    scores = Requantization(np.full(h, mult, np.int32), np.full(h, shift, np.int32),
                            second=second)
    return UnfusedQK(params.wq.values, params.wk.values, q, k), scores


def _fused_qk(params: MhsaInt8Params, shape: MhsaShape) -> tuple[FusedQK, Requantization]:
    """FWSA: the fused int8 Wf_h and int32 bf_h per head, T's requantization to int16 and the
    scores' requantization (module docstring)."""
    e = shape.embed
    sx = params.x.scale
    zp_x = int(params.x.zero_point)
    a_max = max(INT8_MAX - zp_x, zp_x - INT8_MIN)  # largest |x - zp_x|
    kappa = a_max  # the constant key column; |X| <= a_max keeps the bound below
    wf_real, bf_real = _fwsa_real_weights(params, shape, kappa)
    wf_scale = _fwsa_weight_scales(wf_real, bf_real, sx)
    wf = np.clip(round_half_away(wf_real / wf_scale[:, None, None]), -INT8_MAX, INT8_MAX)
    t_max = min(INT16_MAX, INT32_MAX // (a_max * (e + 1)))  # |T| <= t_max: T X^T fits int32
    bf, t_mult, t_shift, t_scale = _fwsa_t_requantization(
        params, shape, wf, bf_real, sx * wf_scale, a_max, t_max)
    score_mult, score_shift = _multipliers(t_scale * sx / params.scores.scale)
    t = Requantization(t_mult, t_shift, bf if params.bq is not None else None)
    return FusedQK(wf.astype(np.int8), t, t_scale, kappa), Requantization(score_mult,
                                                                          score_shift)


def _fwsa_real_weights(params: MhsaInt8Params, shape: MhsaShape, kappa: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Real Wf [H][E(r)][E+1(c)] and bf [H][E+1] from the dequantized Q and K weights.

    Wf_h = scale Wq_h Wk_h^T and bf_h = scale bq_h Wk_h^T. The terms FWSA drops,
    c_i = x_i u_h + beta_h with u_h = scale Wq_h bk_h and beta_h = scale bq_h . bk_h, are
    constant along a softmax row, but the int8 scores are clamped to the calibrated range of
    the unfused scores, so a row shift would saturate them: they are kept as one more column
    of T (T_E = c_i / (kappa s_x)) against a constant key column X_E = kappa, so that T X^T
    equals the unfused scores up to rounding.
    """
    e, h, p = shape.embed, shape.heads, shape.proj
    sx = params.x.scale
    wq = params.wq.dequantize().reshape(e, h, p).transpose(1, 0, 2)  # [H][E][P]
    wk = params.wk.dequantize().reshape(e, h, p).transpose(1, 0, 2)
    wf_real = np.zeros((h, e, e + 1))
    wf_real[:, :, :e] = params.scale * np.einsum("hrp,hcp->hrc", wq, wk)
    bf_real = np.zeros((h, e + 1))
    if params.bk is not None:
        bk = np.asarray(params.bk, np.float64).reshape(h, p)
        wf_real[:, :, e] = params.scale * np.einsum("hrp,hp->hr", wq, bk) / (kappa * sx)
    if params.bq is not None:
        bq = np.asarray(params.bq, np.float64).reshape(h, p)
        bf_real[:, :e] = params.scale * np.einsum("hp,hcp->hc", bq, wk)
        if params.bk is not None:
            bf_real[:, e] = params.scale * np.einsum("hp,hp->h", bq, bk) / (kappa * sx)
    return wf_real, bf_real


def _fwsa_weight_scales(wf_real: np.ndarray, bf_real: np.ndarray, sx: float) -> np.ndarray:
    """Per-head int8 scale of Wf_h: max |Wf_h| -> 127, but large enough that the fused bias
    stays representable when Wf_h vanishes (an all-zero Q or K head, as in pruned models):
    |bf / (s_x wf_scale)| < 2**24; a floor keeps an all-zero head from dividing by zero."""
    h = wf_real.shape[0]
    return np.maximum.reduce([
        np.abs(wf_real).reshape(h, -1).max(axis=1) / INT8_MAX,
        np.abs(bf_real).max(axis=1) / (sx * 2.0**BIAS_FLOOR_BITS),
        np.full(h, 1e-30),
    ])


def _fwsa_t_requantization(params: MhsaInt8Params, shape: MhsaShape, wf: np.ndarray,
                           bf_real: np.ndarray, in_scale: np.ndarray, a_max: int, t_max: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per head: the int32 bf_h (in units of ``in_scale`` = s_x wf_scale), and T's multiplier
    and shift, chosen so |T| stays below ``t_max`` for any input; returns (bf, t_mult,
    t_shift, t_scale), t_scale being the real scale of the int16 T."""
    e, h = shape.embed, shape.heads
    bf = np.zeros((h, e + 1), np.int32)
    t_mult = np.zeros(h, np.int32)
    t_shift = np.zeros(h, np.int32)
    t_scale = np.zeros(h)
    for head in range(h):
        if params.bq is not None:
            bf[head] = _bias32("bf", bf_real[head], np.full(e + 1, in_scale[head]), e + 1,
                               X_MAX * W_MAX * e)
        bound = a_max * np.abs(wf[head]).sum(axis=0) + np.abs(bf[head].astype(np.int64))
        m_t = min(1.0, (t_max - 1) / bound.max()) if bound.max() > 0 else 1.0
        t_mult[head], t_shift[head] = quantize_multiplier(m_t)
        t_scale[head] = in_scale[head] / _realized(t_mult[head], t_shift[head])
    return bf, t_mult, t_shift, t_scale

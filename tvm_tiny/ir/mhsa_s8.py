"""int8 MHSA: quantization parameters, the integer program, its bit-exact numpy model, C layouts.

The C kernels ``tt_mhsa_s8`` (``kernels/mhsa/tt_mhsa_s8.c``, portable reference, and
``kernels/mhsa/tt_mhsa_s8_simd.c``, Arm DSP / GAP9 SIMD) run the integer program defined here;
:func:`reference_mhsa_s8` computes it in numpy int64 and must agree bit for bit. Like
:mod:`tvm_tiny.ir.mhsa` this module imports no TVM, so the kernel tests, the benchmarks
and the code generator share it.

Quantization is affine, ``real = scale * (q - zero_point)`` with int8 ``q``; weights are
symmetric int8 (zero point 0) with one scale per output column (per channel) or one for all
(per tensor: all equal). Notation: S sequence, E embedding, H heads, P projection per head,
E_out output features (``kernels/include/tt_mhsa_s8.h``).

The integer program (all sums exact in int32; the bounds are checked by :func:`lower_s8`)::

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
bf_h [E+1] carry, in their last column, the row-constant terms FWSA drops (see lower_s8), and
``kappa`` is a constant key column.

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
from dataclasses import dataclass, field, fields

import numpy as np

from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, MhsaWeights, reference_mhsa_f32

__all__ = [
    "ACC_ARRAY_FIELDS",
    "ACC_BIAS_BITS",
    "ACC_STAGE_BITS",
    "LUT_FRAC_BITS",
    "LoweredMhsaS8",
    "MhsaInt8Params",
    "QParams",
    "QWeight",
    "SCALAR_FIELDS",
    "arrange_s8",
    "block_rows_s8",
    "calibrate_s8",
    "cluster_scratch_bytes_s8",
    "context_mode_s8",
    "dequantize",
    "float_reference_s8",
    "lower_s8",
    "probs_multiplier",
    "quantize",
    "quantize_multiplier",
    "reference_mhsa_s8",
    "requantize",
    "scalar_fields_s8",
    "scratch_bytes_s8",
    "softmax_lut",
    "softmax_s8",
]

INT8_MIN, INT8_MAX = -128, 127
INT16_MAX = 32767
INT32_MAX = 2**31 - 1

LUT_FRAC_BITS = 15
"""The softmax LUT holds exp(-s_scores * d) in unsigned Q0.15 (lut[0] = 32768, fits uint16)."""

ACC_BIAS_BITS = 8
"""B of the two-step requantizations (C: TT_MHSA_S8_ACC_BIAS_BITS): stage 2 adds the bias in
units of s_acc / 2**B to (q1 - zp_acc) << B, so the bias keeps 8 fractional bits below one step
of the MatMul output; |(q1 - zp_acc) << B| <= 255 * 256 leaves the bias 2**31 - 65281."""

ACC_STAGE_BITS = {"q": 1, "k": 2, "v": 4, "o": 8, "qk": 16}
"""Bits of ``acc_stages`` (C: TT_MHSA_S8_ACC_Q ... TT_MHSA_S8_ACC_QK): which steps are two-step."""

MIN_SCALE = 1e-8
"""Smallest activation scale calibrate_s8 picks (degenerate, all-zero ranges)."""

MAX_DIM = 32767
"""Largest S, E, P, E_out and H*P: keeps every int32 sum of the kernel exact (see lower_s8)."""

PROBS_MAX_MULT_BITS = 16
"""Gm <= 2**16, so e * Gm + D // 2 < 2**15 * 2**16 + 2**30 < 2**32 (unsigned division)."""

_GROUP_ORDER = np.array([0, 2, 1, 3])
"""Byte order inside every group of 4 int8 weights in flash: [w0, w2, w1, w3]. Arm's SXTB16
sign-extends bytes 0 and 2, so SXTB16(word) = (w0, w1) and SXTB16(word ROR 8) = (w2, w3): the
natural int16 pairs SMLAD multiplies with the activations. The permutation is its own inverse."""


# ---------------------------------------------------------------- quantization parameters
@dataclass(frozen=True)
class QParams:
    """Affine int8 quantization of one activation tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (float, int, np.floating)) and math.isfinite(self.scale)
                and self.scale > 0):
            raise ValueError(f"QParams.scale must be a finite float > 0, got {self.scale!r}")
        if not isinstance(self.zero_point, (int, np.integer)) or not (
                INT8_MIN <= self.zero_point <= INT8_MAX):
            raise ValueError(f"QParams.zero_point must be an int in [-128, 127], "
                             f"got {self.zero_point!r}")

    @classmethod
    def from_range(cls, lo: float, hi: float) -> QParams:
        """Asymmetric int8 parameters covering [lo, hi] (widened to include 0; a range
        narrower than 255 * MIN_SCALE gets scale MIN_SCALE)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = max((hi - lo) / 255.0, MIN_SCALE)
        zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
        return cls(scale, zero_point)


@dataclass(frozen=True)
class QWeight:
    """Symmetric int8 weights in ``x @ W`` layout: ``values`` int8 [K, N], ``scale`` float32 [N]
    (one per output column; per-tensor quantization repeats one value)."""

    values: np.ndarray
    scale: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.values, np.ndarray) or self.values.dtype != np.int8 \
                or self.values.ndim != 2:
            raise TypeError(f"QWeight.values must be a 2-D int8 array, got "
                            f"{getattr(self.values, 'dtype', type(self.values).__name__)} "
                            f"{getattr(self.values, 'shape', '')}")
        if not isinstance(self.scale, np.ndarray) or self.scale.dtype != np.float32 \
                or self.scale.shape != (self.values.shape[1],):
            raise TypeError(f"QWeight.scale must be float32 [{self.values.shape[1]}], got "
                            f"{getattr(self.scale, 'dtype', None)} "
                            f"{getattr(self.scale, 'shape', None)}")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError("QWeight.scale must be finite and > 0")

    @classmethod
    def quantize(cls, w: np.ndarray, per_channel: bool = True) -> QWeight:
        """Symmetric int8 quantization of float [K, N] weights (max |w| -> 127)."""
        w = np.asarray(w, dtype=np.float64)
        amax = np.abs(w).max(axis=0) if per_channel else np.full(w.shape[1], np.abs(w).max())
        scale = np.where(amax / INT8_MAX > 1e-30, amax / INT8_MAX, 1.0).astype(np.float32)
        values = np.clip(_round_half_away(w / scale.astype(np.float64)), -INT8_MAX, INT8_MAX)
        return cls(values.astype(np.int8), scale)

    def dequantize(self) -> np.ndarray:
        """float64 [K, N]."""
        return self.values.astype(np.float64) * self.scale.astype(np.float64)


@dataclass(frozen=True)
class MhsaInt8Params:
    """Quantized MHSA layer. Activations: ``x`` input, ``q``/``k``/``v`` projections,
    ``scores`` softmax input (``scale * Q K^T``), ``probs`` softmax output, ``ctx`` attention
    context (heads concatenated), ``y`` output. Weights ``wq``/``wk``/``wv`` [E, H*P], ``wo``
    [H*P, E_out]. Biases are float32 real values (None = no bias), quantized offline to int32
    with scale s_in * s_w[n], rounded half away from zero. ``scale`` is the real factor of
    Q K^T before the softmax (usually 1/sqrt(P)).

    Optional exported rounding points (None: one rounding, as before): ``q_acc``, ``k_acc``,
    ``v_acc``, ``o_acc`` quantize a projection's MatMul output before its bias add, ``qk_acc``
    quantizes Q K^T before the multiplication by ``scale`` (module docstring; FWSA ignores
    ``q_acc``, ``k_acc`` and ``qk_acc``)."""

    x: QParams
    q: QParams
    k: QParams
    v: QParams
    scores: QParams
    probs: QParams
    ctx: QParams
    y: QParams
    wq: QWeight
    wk: QWeight
    wv: QWeight
    wo: QWeight
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bo: np.ndarray | None
    scale: float
    q_acc: QParams | None = None
    k_acc: QParams | None = None
    v_acc: QParams | None = None
    o_acc: QParams | None = None
    qk_acc: QParams | None = None

    def check_shape(self, shape: MhsaShape) -> None:
        """Raise ValueError unless the weights belong to a layer of ``shape``."""
        e, hp, e_out = shape.embed, shape.heads * shape.proj, shape.out_features
        for name, want in (("wq", (e, hp)), ("wk", (e, hp)), ("wv", (e, hp)),
                           ("wo", (hp, e_out))):
            got = getattr(self, name).values.shape
            if got != want:
                raise ValueError(f"MhsaInt8Params.{name} has shape {got}, shape {shape} "
                                 f"needs {want}")
        for name, n in (("bq", hp), ("bk", hp), ("bv", hp), ("bo", e_out)):
            b = getattr(self, name)
            if b is not None and (not isinstance(b, np.ndarray) or b.shape != (n,)):
                raise ValueError(f"MhsaInt8Params.{name} must be None or float [{n}], got "
                                 f"{getattr(b, 'shape', type(b).__name__)}")
        if not math.isfinite(self.scale):
            raise ValueError(f"MhsaInt8Params.scale must be finite, got {self.scale}")
        for name in ACC_STAGE_BITS:
            acc = getattr(self, f"{name}_acc")
            if acc is not None and not isinstance(acc, QParams):
                raise TypeError(f"MhsaInt8Params.{name}_acc must be None or QParams, got "
                                f"{type(acc).__name__}")


# ---------------------------------------------------------------- integer primitives
def _round_half_away(v: np.ndarray | float) -> np.ndarray:
    """Round half away from zero (the rounding of every offline quantization here)."""
    v = np.asarray(v, dtype=np.float64)
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(mult, shift) with real ~= mult * 2**(shift - 31), |mult| in [2**30, 2**31) (CMSIS-NN's
    convention: Q31 multiplier, shift > 0 means left). Values below 2**-32 give (0, 0), which
    requantizes everything to 0; |real| >= 2**30 raises ValueError."""
    real = float(real)
    if not math.isfinite(real):
        raise ValueError(f"requantization multiplier must be finite, got {real}")
    if real == 0.0:
        return 0, 0
    frac, exp = math.frexp(real)  # real = frac * 2**exp, 0.5 <= |frac| < 1
    mult = int(_round_half_away(frac * 2.0**31))
    if abs(mult) == 2**31:
        mult //= 2
        exp += 1
    if exp < -31:  # total right shift would exceed 62: |acc * real| < 0.5 for any int32 acc
        return 0, 0
    if exp > 30:
        raise ValueError(f"requantization multiplier {real} is too large (>= 2**30)")
    return mult, exp


def requantize(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``(acc * mult + 2**(n-1)) >> n`` with ``n = 31 - shift``, in int64 (broadcasting): one
    rounding, ties toward +infinity; identical to CMSIS-NN's ``arm_nn_requantize`` built with
    ``CMSIS_NN_USE_SINGLE_ROUNDING``."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    n = 31 - np.asarray(shift, dtype=np.int64)
    return (acc * mult + (np.int64(1) << (n - 1))) >> n


def _clamp8(v: np.ndarray) -> np.ndarray:
    return np.clip(v, INT8_MIN, INT8_MAX)


def softmax_lut(scores_scale: float) -> np.ndarray:
    """uint16[256]: lut[d] = round(2**15 * exp(-scores_scale * d)), the exponential of a score
    d steps below its row maximum (TFLM-style; exact per input value, no polynomial)."""
    d = np.arange(256, dtype=np.float64)
    return _round_half_away(2.0**LUT_FRAC_BITS * np.exp(-float(scores_scale) * d)).astype(
        np.uint16)


def probs_multiplier(probs_scale: float, seq: int) -> tuple[int, int]:
    """(Gm, g): 1/s_probs ~= Gm / 2**g with the largest g <= 16 such that D = sum << g stays
    below 2**31 (sum <= S * 2**15) and Gm <= 2**16."""
    inv = 1.0 / float(probs_scale)
    g = max(0, min(16, 16 - math.ceil(math.log2(seq)))) if seq > 1 else 16
    while g > 0 and _round_half_away(inv * 2.0**g) > 2**PROBS_MAX_MULT_BITS:
        g -= 1
    gm = int(np.clip(_round_half_away(inv * 2.0**g), 1, 2**PROBS_MAX_MULT_BITS))
    return gm, g


def softmax_s8(scores: np.ndarray, lut: np.ndarray, probs_mult: int, probs_shift: int,
               probs_zero_point: int) -> np.ndarray:
    """Integer softmax over the last axis of int8 ``scores`` (any leading shape), as the kernel:
    ``e = lut[max - s]``, ``D = sum(e) << g``, ``p = min(127, zp + (e * Gm + D // 2) // D)``
    (round half up). Returns int64 values in [-128, 127]."""
    s = np.asarray(scores, dtype=np.int64)
    e = lut.astype(np.int64)[s.max(axis=-1, keepdims=True) - s]
    den = e.sum(axis=-1, keepdims=True) << probs_shift
    q = (e * probs_mult + den // 2) // den
    return np.minimum(INT8_MAX, probs_zero_point + q)


# ---------------------------------------------------------------- the integer program
@dataclass(frozen=True)
class LoweredMhsaS8:
    """The integer program of one int8 MHSA, in math layouts (``x @ W``): what the kernel
    computes, before the C layouts of :func:`arrange_s8`. Multipliers follow
    :func:`quantize_multiplier`; every ``*_mult`` has a matching ``*_shift``."""

    shape: MhsaShape
    fused: bool
    zp: dict[str, int]  # x, q, k, v, scores, probs, ctx, y
    wq: np.ndarray | None  # int8 [E, H*P] (unfused)
    wk: np.ndarray | None
    wf: np.ndarray | None  # int8 [H, E(r), E+1(c)]: t_c = sum_r X_r wf[h, r, c]   (fused)
    wv: np.ndarray  # int8 [E, H*P]
    wo: np.ndarray  # int8 [H*P, E_out]
    bq: np.ndarray  # int32 [H*P] (zeros when absent)
    bk: np.ndarray
    bf: np.ndarray  # int32 [H, E+1] (fused)
    bv: np.ndarray
    bo: np.ndarray  # int32 [E_out]
    has_bias: dict[str, bool]  # which biases the C struct gets (others stay NULL)
    q_mult: np.ndarray  # int32 [H*P]
    q_shift: np.ndarray
    k_mult: np.ndarray
    k_shift: np.ndarray
    v_mult: np.ndarray
    v_shift: np.ndarray
    t_mult: np.ndarray  # int32 [H] (fused)
    t_shift: np.ndarray
    score_mult: np.ndarray  # int32 [H]
    score_shift: np.ndarray
    o_mult: np.ndarray  # int32 [E_out]
    o_shift: np.ndarray
    ctx_mult: int
    ctx_shift: int
    softmax_lut: np.ndarray  # uint16 [256]
    probs_mult: int  # Gm
    probs_shift: int  # g
    t_scale: np.ndarray  # float64 [H]: real scale of the int16 T (fused), for reports
    fused_one: int  # fused: kappa, the constant key column X[:, E] (0 unfused)
    # two-step requantizations: name ("q", "k", "v", "o", "qk") -> (M2, s2, zp_acc); the
    # stage-1 multipliers are q_mult ... score_mult above, the stage-1 biases are zero
    stage2: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    bias2: dict[str, np.ndarray] = field(default_factory=dict)  # name -> int32 b2 (if a bias)

    @property
    def acc_stages(self) -> int:
        return sum(ACC_STAGE_BITS[name] for name in self.stage2)


def _multipliers(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(r) for r in np.asarray(real, dtype=np.float64).ravel()]
    mult = np.array([m for m, _ in pairs], dtype=np.int32).reshape(np.shape(real))
    shift = np.array([s for _, s in pairs], dtype=np.int32).reshape(np.shape(real))
    return mult, shift


def _realized(mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.asarray(mult, np.float64) * np.exp2(np.asarray(shift, np.float64) - 31)


def _bias32(name: str, b: np.ndarray | None, in_scale: np.ndarray, n: int,
            headroom: int) -> np.ndarray:
    if b is None:
        return np.zeros(n, dtype=np.int32)
    q = _round_half_away(np.asarray(b, np.float64) / np.asarray(in_scale, np.float64))
    if np.any(np.abs(q) > INT32_MAX - headroom):
        raise ValueError(f"bias {name} does not fit int32 next to the accumulator "
                         f"(max |b / (s_in * s_w)| = {np.abs(q).max():.3g})")
    return q.astype(np.int32)


def _check_dims(shape: MhsaShape) -> None:
    for name in ("seq", "embed", "proj", "out_features"):
        if getattr(shape, name) > MAX_DIM:
            raise ValueError(f"int8 MHSA: {name} = {getattr(shape, name)} exceeds {MAX_DIM}")
    if shape.heads * shape.proj > MAX_DIM:
        raise ValueError(f"int8 MHSA: H*P = {shape.heads * shape.proj} exceeds {MAX_DIM}")


def lower_s8(params: MhsaInt8Params, shape: MhsaShape, config: KernelConfig) -> LoweredMhsaS8:
    """Derive the integer program: int32 biases, multipliers and shifts, the softmax LUT, and
    with ``config.fuse_qk`` the fused int8 Wf_h (per head, per tensor) with its int16 T scale.

    Every int32 sum of the kernel is bounded here: |X| <= 255 and |w| <= 128, so projections
    stay below 255*128*E + |b| (the bias gets that headroom), scores below 255*255*P, the
    context below 255*255*S, y below 255*128*H*P + |bo|, and the fused T X^T below
    T_max*255*E by the choice of T_max; with every dimension <= 32767 all fit.
    """
    params.check_shape(shape)
    _check_dims(shape)
    s, e, h, p, e_out = shape.seq, shape.embed, shape.heads, shape.proj, shape.out_features
    hp = h * p
    zp = {f.name: int(getattr(params, f.name).zero_point) for f in fields(params)
          if isinstance(getattr(params, f.name), QParams)}
    sx = params.x.scale
    wq_s, wk_s, wv_s, wo_s = (w.scale.astype(np.float64) for w in
                              (params.wq, params.wk, params.wv, params.wo))
    proj_room = 255 * 128 * e

    stage2: dict[str, tuple[int, int, int]] = {}
    bias2: dict[str, np.ndarray] = {}

    def projection(name: str, b: np.ndarray | None, in_scale: np.ndarray, out: QParams,
                   n: int, room: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mult, shift, int32 bias) of the accumulator's (first) requantization."""
        acc = getattr(params, f"{name}_acc")
        if acc is None:
            return (*_multipliers(in_scale / out.scale), _bias32(f"b{name}", b, in_scale, n, room))
        stage2[name] = (*quantize_multiplier(acc.scale / (2.0**ACC_BIAS_BITS * out.scale)),
                        int(acc.zero_point))
        if b is not None:
            step = np.full(n, acc.scale / 2.0**ACC_BIAS_BITS)  # b2 = b / s_acc * 2**B
            bias2[name] = _bias32(f"b{name} (two-step)", b, step, n, 255 << ACC_BIAS_BITS)
        return (*_multipliers(in_scale / acc.scale), np.zeros(n, np.int32))

    v_mult, v_shift, bv = projection("v", params.bv, sx * wv_s, params.v, hp, proj_room)
    o_mult, o_shift, bo = projection("o", params.bo, params.ctx.scale * wo_s, params.y, e_out,
                                     255 * 128 * hp)
    ctx_mult, ctx_shift = quantize_multiplier(params.probs.scale * params.v.scale
                                              / params.ctx.scale)
    probs_mult, probs_shift = probs_multiplier(params.probs.scale, s)
    zeros_hp = np.zeros(hp, np.int32)
    zeros_h = np.zeros(h, np.int32)
    common = dict(
        shape=shape, fused=config.fuse_qk, zp=zp, wv=params.wv.values, wo=params.wo.values,
        bv=bv, bo=bo, v_mult=v_mult, v_shift=v_shift, o_mult=o_mult, o_shift=o_shift,
        ctx_mult=ctx_mult, ctx_shift=ctx_shift, softmax_lut=softmax_lut(params.scores.scale),
        probs_mult=probs_mult, probs_shift=probs_shift, stage2=stage2, bias2=bias2)

    has_bias = {"bv": params.bv is not None and "v" not in stage2,
                "bo": params.bo is not None and "o" not in stage2}
    if not config.fuse_qk:
        q_mult, q_shift, bq = projection("q", params.bq, sx * wq_s, params.q, hp, proj_room)
        k_mult, k_shift, bk = projection("k", params.bk, sx * wk_s, params.k, hp, proj_room)
        if params.qk_acc is None:
            sm, ss = quantize_multiplier(params.q.scale * params.k.scale * params.scale
                                         / params.scores.scale)
        else:
            sm, ss = quantize_multiplier(params.q.scale * params.k.scale / params.qk_acc.scale)
            stage2["qk"] = (*quantize_multiplier(params.qk_acc.scale * params.scale / (
                2.0**ACC_BIAS_BITS * params.scores.scale)), int(params.qk_acc.zero_point))
        return LoweredMhsaS8(
            **common, wq=params.wq.values, wk=params.wk.values, wf=None, bq=bq, bk=bk,
            bf=np.zeros((h, e + 1), np.int32),
            has_bias={"bq": params.bq is not None and "q" not in stage2,
                      "bk": params.bk is not None and "k" not in stage2, "bf": False,
                      **has_bias},
            q_mult=q_mult, q_shift=q_shift, k_mult=k_mult, k_shift=k_shift,
            t_mult=zeros_h, t_shift=zeros_h, score_mult=np.full(h, sm, np.int32),
            score_shift=np.full(h, ss, np.int32), t_scale=np.zeros(h), fused_one=0)

    # FWSA: Wf_h = scale Wq_h Wk_h^T and bf_h = scale bq_h Wk_h^T from the dequantized weights,
    # re-quantized per head. The terms FWSA drops, c_i = x_i u_h + beta_h with u_h = scale Wq_h
    # bk_h and beta_h = scale bq_h . bk_h, are constant along a softmax row, but the int8 scores
    # are clamped to the calibrated range of the unfused scores, so a row shift would saturate
    # them: they are kept as one more column of T (T_E = c_i / (kappa s_x)) against a constant
    # key column X_E = kappa, so that T X^T equals the unfused scores up to rounding.
    wq = params.wq.dequantize().reshape(e, h, p).transpose(1, 0, 2)  # [H][E][P]
    wk = params.wk.dequantize().reshape(e, h, p).transpose(1, 0, 2)
    a_max = max(INT8_MAX - zp["x"], zp["x"] - INT8_MIN)  # largest |x - zp_x|
    kappa = a_max  # the constant key column; |X| <= a_max keeps the bound below
    wf_real = np.zeros((h, e, e + 1))  # [H][E(r)][E+1(c)]
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
    # The scale must also keep the fused bias representable when Wf_h vanishes (an all-zero
    # Q or K head, as in pruned models): |bf / (s_x wf_scale)| stays below 2^24; a floor keeps
    # an all-zero head from dividing by a zero scale.
    wf_scale = np.maximum.reduce([
        np.abs(wf_real).reshape(h, -1).max(axis=1) / INT8_MAX,
        np.abs(bf_real).max(axis=1) / (sx * 2.0**24),
        np.full(h, 1e-30),
    ])
    wf = np.clip(_round_half_away(wf_real / wf_scale[:, None, None]), -INT8_MAX, INT8_MAX)
    t_max = min(INT16_MAX, INT32_MAX // (a_max * (e + 1)))  # |T| <= t_max: T X^T fits int32
    bf = np.zeros((h, e + 1), np.int32)
    t_mult = np.zeros(h, np.int32)
    t_shift = np.zeros(h, np.int32)
    t_scale = np.zeros(h)
    for head in range(h):
        in_scale = sx * wf_scale[head]
        if params.bq is not None:
            bf[head] = _bias32("bf", bf_real[head], np.full(e + 1, in_scale), e + 1, proj_room)
        bound = a_max * np.abs(wf[head]).sum(axis=0) + np.abs(bf[head].astype(np.int64))
        m_t = min(1.0, (t_max - 1) / bound.max()) if bound.max() > 0 else 1.0
        t_mult[head], t_shift[head] = quantize_multiplier(m_t)
        t_scale[head] = in_scale / _realized(t_mult[head], t_shift[head])
    score_mult, score_shift = _multipliers(t_scale * sx / params.scores.scale)
    return LoweredMhsaS8(
        **common, wq=None, wk=None, wf=wf.astype(np.int8), bq=zeros_hp, bk=zeros_hp, bf=bf,
        has_bias={"bq": False, "bk": False, "bf": params.bq is not None, **has_bias},
        q_mult=zeros_hp, q_shift=zeros_hp, k_mult=zeros_hp, k_shift=zeros_hp,
        t_mult=t_mult, t_shift=t_shift, score_mult=score_mult, score_shift=score_shift,
        t_scale=t_scale, fused_one=kappa)


def _mhsa_s8_one(x_q: np.ndarray, low: LoweredMhsaS8) -> np.ndarray:
    shape, zp = low.shape, low.zp
    h_count, p = shape.heads, shape.proj
    xm = x_q.astype(np.int64) - zp["x"]  # [S][E]

    def requant8(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, z: int,
                 name: str) -> np.ndarray:
        """clamp8(z + requant(acc)), or the two-step requantization of ``name``."""
        if name not in low.stage2:
            return _clamp8(z + requantize(acc, mult, shift))
        m2, s2, z_acc = low.stage2[name]
        q1 = _clamp8(z_acc + requantize(acc, mult, shift))
        d = (q1 - z_acc) << ACC_BIAS_BITS
        if name in low.bias2:
            d = d + low.bias2[name].astype(np.int64)
        return _clamp8(z + requantize(d, m2, s2))

    def project(w: np.ndarray, b: np.ndarray, mult: np.ndarray, shift: np.ndarray,
                z: int, name: str) -> np.ndarray:
        acc = xm @ w.astype(np.int64) + b.astype(np.int64)
        return requant8(acc, mult, shift, z, name)

    v = project(low.wv, low.bv, low.v_mult, low.v_shift, zp["v"], "v")
    if not low.fused:
        q = project(low.wq, low.bq, low.q_mult, low.q_shift, zp["q"], "q")
        k = project(low.wk, low.bk, low.k_mult, low.k_shift, zp["k"], "k")
    y_acc = np.zeros((shape.seq, shape.out_features), np.int64)
    for h in range(h_count):
        cols = slice(h * p, (h + 1) * p)
        if low.fused:
            t_acc = xm @ low.wf[h].astype(np.int64) + low.bf[h].astype(np.int64)
            t = np.clip(requantize(t_acc, low.t_mult[h], low.t_shift[h]), -INT16_MAX - 1,
                        INT16_MAX)  # [S][E+1]
            keys = np.concatenate([xm, np.full((len(xm), 1), low.fused_one)], axis=1)
            s_acc = t @ keys.T
        else:
            s_acc = (q[:, cols] - zp["q"]) @ (k[:, cols] - zp["k"]).T
        scores = requant8(s_acc, low.score_mult[h], low.score_shift[h], zp["scores"], "qk")
        probs = softmax_s8(scores, low.softmax_lut, low.probs_mult, low.probs_shift,
                           zp["probs"])
        c_acc = (probs - zp["probs"]) @ (v[:, cols] - zp["v"])
        ctx = _clamp8(zp["ctx"] + requantize(c_acc, low.ctx_mult, low.ctx_shift))
        y_acc += (ctx - zp["ctx"]) @ low.wo[cols].astype(np.int64)
    y = requant8(y_acc + low.bo, low.o_mult, low.o_shift, zp["y"], "o")
    return y.astype(np.int8)


def reference_mhsa_s8(x_q: np.ndarray, params: MhsaInt8Params, shape: MhsaShape,
                      config: KernelConfig) -> np.ndarray:
    """The integer program in numpy int64: what ``tt_mhsa_s8`` returns, bit for bit.

    ``x_q`` is int8 [S, E] or [B, S, E]; returns int8 [S, E_out] or [B, S, E_out]. Computed
    layer-wise (no tiling); integer sums do not depend on order, so depth-first tiling, head
    order and register tiles cannot change the result.
    """
    x_q = np.asarray(x_q)
    if x_q.dtype != np.int8:
        raise TypeError(f"x_q must be int8, got {x_q.dtype}")
    low = lower_s8(params, shape, config)
    if x_q.ndim == 3:
        return np.stack([_mhsa_s8_one(xb, low) for xb in x_q])
    if x_q.shape != (shape.seq, shape.embed):
        raise ValueError(f"x_q has shape {x_q.shape}, expected {(shape.seq, shape.embed)}")
    return _mhsa_s8_one(x_q, low)


# ---------------------------------------------------------------- float reference, calibration
def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Round half away from zero, clamp to int8."""
    q = _round_half_away(np.asarray(x, np.float64) / qp.scale) + qp.zero_point
    return _clamp8(q).astype(np.int8)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    return qp.scale * (np.asarray(q, np.float64) - qp.zero_point)


def _dequantized_weights(params: MhsaInt8Params) -> MhsaWeights:
    def f32(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a, np.float32)

    return MhsaWeights(
        wq=params.wq.dequantize().astype(np.float32), wk=params.wk.dequantize().astype(
            np.float32), wv=params.wv.dequantize().astype(np.float32),
        wo=params.wo.dequantize().astype(np.float32), bq=f32(params.bq), bk=f32(params.bk),
        bv=f32(params.bv), bo=f32(params.bo), scale=float(params.scale))


def float_reference_s8(x_q: np.ndarray, params: MhsaInt8Params, shape: MhsaShape) -> np.ndarray:
    """Dequantize x and the weights, run the float64 MHSA, quantize y: the int8 result an
    ideal (infinitely precise) kernel would give; the integer program differs from it by the
    rounding of its intermediate int8 tensors."""
    weights = _dequantized_weights(params)
    y = reference_mhsa_f32(dequantize(x_q, params.x), weights, shape.heads)
    return quantize(y, params.y)


def calibrate_s8(weights: MhsaWeights, x_calib: np.ndarray, heads: int, *,
                 per_channel: bool = True, x_qparams: QParams | None = None,
                 acc_points: bool = False) -> MhsaInt8Params:
    """Post-training quantization of a float MHSA from calibration inputs [S, E] or [B, S, E]:
    symmetric int8 weights, and min/max asymmetric int8 parameters for every activation, except
    the softmax output (scale 1/256, zero point -128: TFLite's fixed choice). ``acc_points``
    also calibrates the exported rounding points q_acc, k_acc, v_acc, o_acc (MatMul outputs
    before the bias) and qk_acc (Q K^T before the scale), as a QDQ export has them."""
    x = np.asarray(x_calib, np.float64)
    if x.ndim == 2:
        x = x[None]
    seq = x.shape[1]
    shape = weights.shape_for(seq=seq, heads=heads)
    p = shape.proj
    xq = x_qparams or QParams.from_range(x.min(), x.max())
    wq, wk, wv, wo = (QWeight.quantize(w, per_channel) for w in
                      (weights.wq, weights.wk, weights.wv, weights.wo))

    def proj(w: QWeight, b: np.ndarray | None) -> np.ndarray:
        out = x @ w.dequantize()
        return out if b is None else out + b

    q, k, v = proj(wq, weights.bq), proj(wk, weights.bk), proj(wv, weights.bv)

    def heads_of(t: np.ndarray) -> np.ndarray:
        return t.reshape(t.shape[0], seq, heads, p).transpose(0, 2, 1, 3)

    scores = weights.scale * heads_of(q) @ heads_of(k).transpose(0, 1, 3, 2)
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    ctx = (att @ heads_of(v)).transpose(0, 2, 1, 3).reshape(x.shape[0], seq, heads * p)
    y = ctx @ wo.dequantize()
    if weights.bo is not None:
        y = y + weights.bo

    def rng(t: np.ndarray) -> QParams:
        return QParams.from_range(t.min(), t.max())

    acc: dict[str, QParams] = {}
    if acc_points:
        acc = {"q_acc": rng(x @ wq.dequantize()), "k_acc": rng(x @ wk.dequantize()),
               "v_acc": rng(x @ wv.dequantize()), "o_acc": rng(ctx @ wo.dequantize()),
               "qk_acc": rng(heads_of(q) @ heads_of(k).transpose(0, 1, 3, 2))}
    return MhsaInt8Params(
        x=xq, q=rng(q), k=rng(k), v=rng(v), scores=rng(scores), probs=QParams(1 / 256, -128),
        ctx=rng(ctx), y=rng(y), wq=wq, wk=wk, wv=wv, wo=wo, bq=weights.bq, bk=weights.bk,
        bv=weights.bv, bo=weights.bo, scale=float(weights.scale), **acc)


# ---------------------------------------------------------------- C layouts and scratch
def _ceil4(n: int) -> int:
    return (n + 3) & ~3


def _kernel_rows(w: np.ndarray, k4: int | None = None) -> np.ndarray:
    """[..., N, K] int8 rows -> [..., N, k4]: zero-padded to k4 (default K rounded up to a
    multiple of 4), each group of 4 stored in :data:`_GROUP_ORDER`."""
    k = w.shape[-1]
    k4 = _ceil4(k) if k4 is None else k4
    padded = np.zeros((*w.shape[:-1], k4), np.int8)
    padded[..., :k] = w
    grouped = padded.reshape(*w.shape[:-1], k4 // 4, 4)[..., _GROUP_ORDER]
    return np.ascontiguousarray(grouped.reshape(*w.shape[:-1], k4))


def arrange_s8(params: MhsaInt8Params, shape: MhsaShape,
               config: KernelConfig) -> dict[str, np.ndarray]:
    """The array fields of ``tt_mhsa_s8_params``, keyed by field name, C order.

    Weights are int8, transposed per head so every dot product is contiguous, each row padded
    with zeros to a multiple of 4 and every group of 4 stored as [w0, w2, w1, w3] (Arm SXTB16
    then yields the natural int16 pairs for SMLAD): wq, wk, wv [H][P][E4]; wf [H][E+1][EK]
    (EK = E+1 rounded up to a multiple of 4) with row c = column c of the augmented Wf_h;
    wo [H][E_out][P4]. Biases int32: bq, bk, bv [H][P], bf [H][E+1], bo
    [E_out] (absent ones omitted: NULL). Multipliers and shifts int32: q_/k_/v_ [H][P],
    t_ and score_ [H], o_ [E_out]. softmax_lut uint16 [256]. The Q/K variant ``config`` does not
    use is omitted. Two-step requantizations (``*_acc`` set): the stage-2 biases q2_bias,
    k2_bias, v2_bias [H][P] and o2_bias [E_out] (:data:`ACC_ARRAY_FIELDS`) replace bq, bk, bv,
    bo, and q_ ... o_ and score_ become the stage-1 multipliers (acc -> int8 at s_acc).
    Scalars: :func:`scalar_fields_s8`.
    """
    low = lower_s8(params, shape, config)
    h, p, e = shape.heads, shape.proj, shape.embed

    def heads_major(w: np.ndarray) -> np.ndarray:  # [E, H*P] -> [H][P][E4]
        return _kernel_rows(w.T.reshape(h, p, e))

    out: dict[str, np.ndarray] = {}
    if low.fused:
        out["wf"] = _kernel_rows(low.wf.transpose(0, 2, 1), _ceil4(e + 1))
        if low.has_bias["bf"]:
            out["bf"] = np.ascontiguousarray(low.bf)
        out["t_mult"], out["t_shift"] = low.t_mult, low.t_shift
    else:
        out["wq"], out["wk"] = heads_major(low.wq), heads_major(low.wk)
        for name in ("bq", "bk"):
            if low.has_bias[name]:
                out[name] = getattr(low, name).reshape(h, p)
        out["q_mult"], out["q_shift"] = low.q_mult.reshape(h, p), low.q_shift.reshape(h, p)
        out["k_mult"], out["k_shift"] = low.k_mult.reshape(h, p), low.k_shift.reshape(h, p)
    out["wv"] = heads_major(low.wv)
    if low.has_bias["bv"]:
        out["bv"] = low.bv.reshape(h, p)
    out["v_mult"], out["v_shift"] = low.v_mult.reshape(h, p), low.v_shift.reshape(h, p)
    out["score_mult"], out["score_shift"] = low.score_mult, low.score_shift
    out["wo"] = _kernel_rows(low.wo.reshape(h, p, shape.out_features).transpose(0, 2, 1))
    if low.has_bias["bo"]:
        out["bo"] = low.bo
    out["o_mult"], out["o_shift"] = low.o_mult, low.o_shift
    out["softmax_lut"] = low.softmax_lut
    for name, b2 in low.bias2.items():  # two-step biases (ACC_ARRAY_FIELDS)
        out[f"{name}2_bias"] = b2.reshape(h, p) if name != "o" else b2
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


SCALAR_FIELDS = ("ctx_mult", "ctx_shift", "probs_mult", "probs_shift", "fused_one",
                 "x_zero_point",
                 "q_zero_point", "k_zero_point", "v_zero_point", "scores_zero_point",
                 "probs_zero_point", "ctx_zero_point", "y_zero_point",
                 "acc_stages",
                 "q2_mult", "q2_shift", "q_acc_zero_point",
                 "k2_mult", "k2_shift", "k_acc_zero_point",
                 "v2_mult", "v2_shift", "v_acc_zero_point",
                 "o2_mult", "o2_shift", "o_acc_zero_point",
                 "score2_mult", "score2_shift", "qk_acc_zero_point")
"""The int32 scalar fields of ``tt_mhsa_s8_params``, in struct order. The struct is: the array
fields of :func:`arrange_s8`'s table (wq ... softmax_lut), these scalars, then
:data:`ACC_ARRAY_FIELDS`. From ``acc_stages`` on, the fields describe the optional two-step
requantizations (all 0 when none is used)."""

ACC_ARRAY_FIELDS = ("q2_bias", "k2_bias", "v2_bias", "o2_bias")
"""int32 pointer fields at the end of ``tt_mhsa_s8_params``: the stage-2 biases
round_half_away(b / s_acc * 2**ACC_BIAS_BITS) of the two-step projections ([H][P]; o2_bias
[E_out]); NULL unless that projection is two-step and has a bias."""


def scalar_fields_s8(params: MhsaInt8Params, shape: MhsaShape,
                     config: KernelConfig) -> dict[str, int]:
    """The int32 scalar fields of ``tt_mhsa_s8_params`` (:data:`SCALAR_FIELDS` order)."""
    low = lower_s8(params, shape, config)
    values = {"ctx_mult": low.ctx_mult, "ctx_shift": low.ctx_shift,
              "probs_mult": low.probs_mult, "probs_shift": low.probs_shift,
              "fused_one": low.fused_one}
    for name in ("x", "q", "k", "v", "scores", "probs", "ctx", "y"):
        values[f"{name}_zero_point"] = low.zp[name]
    values["acc_stages"] = low.acc_stages
    for name in ACC_STAGE_BITS:
        m2, s2, z_acc = low.stage2.get(name, (0, 0, 0))
        prefix = "score2" if name == "qk" else f"{name}2"
        values[f"{prefix}_mult"], values[f"{prefix}_shift"] = m2, s2
        values[f"{name}_acc_zero_point"] = z_acc
    return {k: int(values[k]) for k in SCALAR_FIELDS}


def block_rows_s8(shape: MhsaShape, config: KernelConfig) -> int:
    """Query rows per block X: rows_per_block rounded up to even (the kernels' register tiles
    take rows in pairs and every block must start on an even row), at most S."""
    return min(shape.seq, config.rows_per_block + (config.rows_per_block & 1))


def _accumulator_bytes(shape: MhsaShape, x: int) -> tuple[int, bool]:
    """(bytes, context mode) of the out-projection accumulator: an int32 y [S][E_out], or the
    int8 context of all heads [S][H*P] plus an int32 y block [X][E_out] when that is smaller."""
    y32 = 4 * shape.seq * shape.out_features
    ctx = _ceil4(shape.seq * shape.heads * shape.proj) + 4 * x * shape.out_features
    return (ctx, True) if ctx < y32 else (y32, False)


def context_mode_s8(shape: MhsaShape, config: KernelConfig) -> bool:
    """True when the kernel keeps the int8 context of all heads and projects it at the end
    (``tt_mhsa_s8_context_bytes`` > 0), False when it accumulates an int32 y head by head."""
    return _accumulator_bytes(shape, block_rows_s8(shape, config))[1]


def scratch_bytes_s8(shape: MhsaShape, config: KernelConfig) -> int:
    """Scratch bytes ``tt_mhsa_s8`` needs; equals ``tt_mhsa_s8_get_buffer_size``.

    With X = :func:`block_rows_s8`, n4 = n rounded up to a multiple of 4 and int16 buffers
    holding values minus their zero point (zero-padded rows)::

      acc     min(4 S E_out,                     int32 y, summed head by head, or
                  4 ceil(S H P / 4) + 4 X E_out) int8 context of all heads + int32 y block
      kx16    2 S P4         unfused: K_h [S][P4]
              2 S EK         fused: [X - zp_x | kappa] [S][EK], EK = (E+1) rounded up to 4
      vt16    2 P S4         V_h^T [P][S4]
      xb16    2 X E4         unfused: x block
              2 X EK         fused: T block (int16)
      q16     2 X P4         Q block (unfused), then the context block
      sc8     4 ceil(X S / 4) int8 scores block
      p16     2 X S4         softmax output block
      panel   4 max(K4, P4)  two weight rows widened to int16 (K4 = E4, fused EK)
    """
    s, e, p = shape.seq, shape.embed, shape.proj
    x = block_rows_s8(shape, config)
    k4 = _ceil4(e + 1) if config.fuse_qk else _ceil4(e)  # row length of x (and T) buffers
    p4, s4 = _ceil4(p), _ceil4(s)
    kx16 = 2 * s * k4 if config.fuse_qk else 2 * s * p4
    acc, _ = _accumulator_bytes(shape, x)
    return (acc + kx16 + 2 * p * s4 + 2 * x * k4 + 2 * x * p4 + _ceil4(x * s) + 2 * x * s4
            + 4 * max(k4, p4))


def cluster_scratch_bytes_s8(shape: MhsaShape, config: KernelConfig, cores: int) -> int:
    """Scratch bytes ``tt_mhsa_s8_cluster`` needs: one head scratch per busy core
    (A = min(cores, H)); equals ``tt_mhsa_s8_cluster_get_buffer_size``."""
    return min(cores, shape.heads) * scratch_bytes_s8(shape, config)

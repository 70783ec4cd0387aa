"""Quantization types, the one set the partitioner, the code generators and golden models share.

Quantization is affine, ``real = scale * (q - zero_point)``. Activations are quantized per
tensor (:class:`QParams`); weights are symmetric int8 (zero point 0) with one scale per output
column, or one for all (per tensor: all equal) (:class:`QWeight`). :class:`MhsaInt8Params` is
one int8 MHSA layer: the partitioner reads it out of a QDQ graph, the tests calibrate it from a
float layer, ``codegen.mhsa_s8`` lowers it to C and ``reference.mhsa_s8`` computes it in numpy.

Nothing here imports TVM, so the kernel tests and the benchmarks use these types without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.mhsa import MhsaShape

__all__ = [
    "ACC_POINTS",
    "INT8_MAX",
    "INT8_MIN",
    "MIN_SCALE",
    "QUANTIZED_DTYPES",
    "MhsaInt8Params",
    "QParams",
    "QWeight",
    "dequantize",
    "quantize",
    "quantize_multiplier",
    "round_half_away",
]

INT8_MIN, INT8_MAX = -128, 127

QUANTIZED_DTYPES = (DType.INT8, DType.UINT8, DType.INT16)
"""Integer types a QDQ graph may quantize an activation to (ONNX QuantizeLinear outputs the
partitioner can meet). Only int8 reaches a kernel; the others are representable so that reading
a graph never fails on them (the int8 lowering rejects them by name)."""

MIN_SCALE = 1e-8
"""Smallest activation scale :meth:`QParams.from_range` picks (degenerate, all-zero ranges)."""

ACC_POINTS = ("q", "k", "v", "o", "qk")
"""Names of the optional exported rounding points of an MHSA (``MhsaInt8Params.<name>_acc``):
the Q, K, V and output projections' MatMul outputs before their bias, and Q K^T before the
scale (``ir.mhsa_s8`` explains the two-step requantizations they become)."""


def round_half_away(v: np.ndarray | float) -> np.ndarray:
    """Round half away from zero: the rounding of every offline quantization here (CMSIS-NN's
    and TFLite's choice for weights and multipliers; numpy's own ``round`` is half to even)."""
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
    mult = int(round_half_away(frac * 2.0**31))
    if abs(mult) == 2**31:
        mult //= 2
        exp += 1
    if exp < -31:  # total right shift would exceed 62: |acc * real| < 0.5 for any int32 acc
        return 0, 0
    if exp > 30:
        raise ValueError(f"requantization multiplier {real} is too large (>= 2**30)")
    return mult, exp


def quantize_multipliers(real: np.ndarray | float, dtype: type = np.int64
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` elementwise: (mult, shift) arrays of ``dtype`` shaped like
    ``real`` (per-channel multipliers of every integer kernel and rule)."""
    flat = np.atleast_1d(np.asarray(real, dtype=np.float64)).reshape(-1)
    pairs = [quantize_multiplier(float(r)) for r in flat]
    shape = np.shape(real)
    mult = np.array([m for m, _ in pairs], dtype=dtype).reshape(shape)
    shift = np.array([s for _, s in pairs], dtype=dtype).reshape(shape)
    return mult, shift


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of one activation: real = scale * (q - zero_point), q of
    ``dtype`` (int8 unless a graph says otherwise)."""

    scale: float
    zero_point: int
    dtype: DType = DType.INT8

    def __post_init__(self) -> None:
        if not (isinstance(self.scale, (float, int, np.floating)) and math.isfinite(self.scale)
                and self.scale > 0):
            raise ValueError(f"QParams.scale must be a finite float > 0, got {self.scale!r}")
        if self.dtype not in QUANTIZED_DTYPES:
            raise ValueError(f"QParams.dtype must be one of "
                             f"{', '.join(map(str, QUANTIZED_DTYPES))}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", DType(self.dtype))  # a TVM/ONNX spelling -> member
        lo, hi = self.range
        if not isinstance(self.zero_point, (int, np.integer)) or not (
                lo <= self.zero_point <= hi):
            raise ValueError(f"QParams.zero_point must be an int in [{lo}, {hi}] for "
                             f"{self.dtype}, got {self.zero_point!r}")

    @property
    def range(self) -> tuple[int, int]:
        """Smallest and largest value of ``dtype``."""
        info = np.iinfo(str(self.dtype))
        return int(info.min), int(info.max)

    @classmethod
    def from_range(cls, lo: float, hi: float) -> QParams:
        """Asymmetric int8 parameters covering [lo, hi] (widened to include 0; a range
        narrower than 255 * MIN_SCALE gets scale MIN_SCALE)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        scale = max((hi - lo) / 255.0, MIN_SCALE)
        zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
        return cls(scale, zero_point)


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """``x`` on ``qp``'s grid: round half away from zero, clamp to the range of ``qp.dtype``."""
    lo, hi = qp.range
    q = round_half_away(np.asarray(x, np.float64) / qp.scale) + qp.zero_point
    return np.clip(q, lo, hi).astype(str(qp.dtype))


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """The real values of ``q`` (float64)."""
    return qp.scale * (np.asarray(q, np.float64) - qp.zero_point)


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
        values = np.clip(round_half_away(w / scale.astype(np.float64)), -INT8_MAX, INT8_MAX)
        return cls(values.astype(np.int8), scale)

    def dequantize(self) -> np.ndarray:
        """float64 [K, N]."""
        return self.values.astype(np.float64) * self.scale.astype(np.float64)

    def take_columns(self, order: np.ndarray) -> QWeight:
        """Output columns ``order`` (e.g. a projection's columns in canonical head order)."""
        return QWeight(np.ascontiguousarray(self.values[:, order]),
                       np.ascontiguousarray(self.scale[order]))

    def take_rows(self, order: np.ndarray) -> QWeight:
        """Input rows ``order``; the per-column scales are unchanged."""
        return QWeight(np.ascontiguousarray(self.values[order]), self.scale)

    def scaled(self, factor: float) -> QWeight:
        """The same integers standing for ``factor`` times the real weight (a scalar the graph
        multiplies the projection by, folded into the scales)."""
        return QWeight(self.values, (self.scale * np.float32(factor)).astype(np.float32))


@dataclass(frozen=True)
class MhsaInt8Params:
    """Quantized MHSA layer. Activations: ``x`` input, ``q``/``k``/``v`` projections,
    ``scores`` softmax input (``scale * Q K^T``), ``probs`` softmax output, ``ctx`` attention
    context (heads concatenated), ``y`` output. Weights ``wq``/``wk``/``wv`` [E, H*P], ``wo``
    [H*P, E_out], heads in the canonical order of ``MhsaWeights``. Biases are float32 real
    values (None = no bias), quantized offline to int32 with scale s_in * s_w[n], rounded half
    away from zero. ``scale`` is the real factor of Q K^T before the softmax (usually
    1/sqrt(P)).

    Optional exported rounding points (None: one rounding): ``q_acc``, ``k_acc``, ``v_acc``,
    ``o_acc`` quantize a projection's MatMul output before its bias add, ``qk_acc`` quantizes
    Q K^T before the multiplication by ``scale`` (:data:`ACC_POINTS`; FWSA ignores ``q_acc``,
    ``k_acc`` and ``qk_acc``)."""

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

    def activations(self) -> dict[str, QParams]:
        """Every activation's quantization by field name, the rounding points included."""
        points = {name: getattr(self, name)
                  for name in ("x", "q", "k", "v", "scores", "probs", "ctx", "y")}
        for name in ACC_POINTS:
            acc = getattr(self, f"{name}_acc")
            if acc is not None:
                points[f"{name}_acc"] = acc
        return points

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
        for name in ACC_POINTS:
            acc = getattr(self, f"{name}_acc")
            if acc is not None and not isinstance(acc, QParams):
                raise TypeError(f"MhsaInt8Params.{name}_acc must be None or QParams, got "
                                f"{type(acc).__name__}")

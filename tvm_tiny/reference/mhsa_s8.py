"""numpy golden model of the int8 MHSA kernel ``tt_mhsa_s8``, bit for bit.

:func:`reference_mhsa_s8` runs the integer program ``ir.mhsa_s8.lower_s8`` derives (its module
docstring states it) in numpy int64, layer-wise. Every C variant (``kernels/mhsa/tt_mhsa_s8.c``,
the production kernel, and ``tt_mhsa_s8_reference.c``, the portable reference) must return
exactly these integers. :func:`float_reference_s8` is the ideal answer the integer program
approximates, for accuracy figures. No TVM import.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, MhsaWeights
from tvm_tiny.ir.mhsa_s8 import (
    ACC_BIAS_BITS,
    INT16_MAX,
    FusedQK,
    LoweredMhsaS8,
    Requantization,
    lower_s8,
)
from tvm_tiny.ir.quant import INT8_MAX, INT8_MIN, MhsaInt8Params, dequantize, quantize
from tvm_tiny.reference.mhsa_f32 import reference_mhsa_f32

__all__ = ["float_reference_s8", "reference_mhsa_s8", "requantize", "softmax_s8"]


def requantize(acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``(acc * mult + 2**(n-1)) >> n`` with ``n = 31 - shift``, in int64 (broadcasting): one
    rounding, ties toward +infinity; identical to CMSIS-NN's ``arm_nn_requantize`` built with
    ``CMSIS_NN_USE_SINGLE_ROUNDING``."""
    acc = np.asarray(acc, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.int64)
    n = 31 - np.asarray(shift, dtype=np.int64)
    return (acc * mult + (np.int64(1) << (n - 1))) >> n


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


def _clamp8(v: np.ndarray) -> np.ndarray:
    return np.clip(v, INT8_MIN, INT8_MAX)


def _requantize8(acc: np.ndarray, step: Requantization, zero_point: int,
                 head: int | None = None) -> np.ndarray:
    """``clamp8(zero_point + requant(acc))``, or the two-step requantization when ``step`` has
    a second stage. ``head`` selects one head of a per-head step (scores)."""
    mult, shift = (step.mult, step.shift) if head is None else (step.mult[head],
                                                                step.shift[head])
    second = step.second
    if second is None:
        return _clamp8(zero_point + requantize(acc, mult, shift))
    q1 = _clamp8(second.acc_zero_point + requantize(acc, mult, shift))
    d = (q1 - second.acc_zero_point) << ACC_BIAS_BITS
    if second.bias is not None:
        d = d + second.bias.astype(np.int64)
    return _clamp8(zero_point + requantize(d, second.mult, second.shift))


def _with_bias(acc: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return acc if bias is None else acc + bias.astype(np.int64)


def _project(xm: np.ndarray, w: np.ndarray, step: Requantization, zero_point: int
             ) -> np.ndarray:
    """An int8 projection of the zero-point-free input ``xm`` [S][E]."""
    return _requantize8(_with_bias(xm @ w.astype(np.int64), step.bias), step, zero_point)


def _head_scores(xm: np.ndarray, low: LoweredMhsaS8, q: np.ndarray | None, k: np.ndarray | None,
                 h: int) -> np.ndarray:
    """int8 scores [S][S] of head ``h``: from Q and K, or with FWSA from T and [X | kappa]."""
    zp = low.zp
    if isinstance(low.qk, FusedQK):
        fused = low.qk
        t_acc = _with_bias(xm @ fused.wf[h].astype(np.int64),
                           None if fused.t.bias is None else fused.t.bias[h])
        t = np.clip(requantize(t_acc, fused.t.mult[h], fused.t.shift[h]), -INT16_MAX - 1,
                    INT16_MAX)  # [S][E+1]
        keys = np.concatenate([xm, np.full((len(xm), 1), fused.kappa)], axis=1)
        s_acc = t @ keys.T
    else:
        cols = slice(h * low.shape.proj, (h + 1) * low.shape.proj)
        s_acc = (q[:, cols] - zp["q"]) @ (k[:, cols] - zp["k"]).T
    return _requantize8(s_acc, low.scores, zp["scores"], head=h)


def _mhsa_s8_one(x_q: np.ndarray, low: LoweredMhsaS8) -> np.ndarray:
    """One batch item: the projections, then head by head scores, softmax, context and its
    share of the output projection, then y."""
    shape, zp = low.shape, low.zp
    p = shape.proj
    xm = x_q.astype(np.int64) - zp["x"]  # [S][E]
    v = _project(xm, low.wv, low.v, zp["v"])
    q = k = None
    if not isinstance(low.qk, FusedQK):
        q = _project(xm, low.qk.wq, low.qk.q, zp["q"])
        k = _project(xm, low.qk.wk, low.qk.k, zp["k"])
    y_acc = np.zeros((shape.seq, shape.out_features), np.int64)
    for h in range(shape.heads):
        cols = slice(h * p, (h + 1) * p)
        scores = _head_scores(xm, low, q, k, h)
        probs = softmax_s8(scores, low.softmax_lut, low.probs_mult, low.probs_shift,
                           zp["probs"])
        c_acc = (probs - zp["probs"]) @ (v[:, cols] - zp["v"])
        ctx = _clamp8(zp["ctx"] + requantize(c_acc, low.ctx_mult, low.ctx_shift))
        y_acc += (ctx - zp["ctx"]) @ low.wo[cols].astype(np.int64)
    y = _requantize8(_with_bias(y_acc, low.o.bias), low.o, zp["y"])
    return y.astype(np.int8)


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

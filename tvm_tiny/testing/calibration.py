"""Post-training quantization of a float MHSA layer, for the int8 kernel tests and benchmarks.

:func:`calibrate_s8` turns a float :class:`~tvm_tiny.ir.mhsa.MhsaWeights` and calibration inputs
into an :class:`~tvm_tiny.ir.quant.MhsaInt8Params` the way a simple QDQ exporter would (min/max
ranges, TFLite's fixed softmax output), so the C kernels and the golden model can be exercised
on many random layers without onnxruntime. Models reach the int8 kernel through
``tvm_tiny.quantize`` and the partitioner instead.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.ir.mhsa import MhsaWeights
from tvm_tiny.ir.quant import MhsaInt8Params, QParams, QWeight

__all__ = ["calibrate_s8"]

PROBS_QPARAMS = QParams(1 / 256, -128)
"""The softmax output's quantization: TFLite's fixed choice (probabilities 0 .. 255/256)."""


def calibrate_s8(weights: MhsaWeights, x_calib: np.ndarray, heads: int, *,
                 per_channel: bool = True, x_qparams: QParams | None = None,
                 acc_points: bool = False) -> MhsaInt8Params:
    """Post-training quantization of a float MHSA from calibration inputs [S, E] or [B, S, E]:
    symmetric int8 weights, and min/max asymmetric int8 parameters for every activation, except
    the softmax output (:data:`PROBS_QPARAMS`). ``acc_points`` also calibrates the exported
    rounding points q_acc, k_acc, v_acc, o_acc (MatMul outputs before the bias) and qk_acc
    (Q K^T before the scale), as a QDQ export has them."""
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
        x=xq, q=rng(q), k=rng(k), v=rng(v), scores=rng(scores), probs=PROBS_QPARAMS,
        ctx=rng(ctx), y=rng(y), wq=wq, wk=wk, wv=wv, wo=wo, bq=weights.bq, bk=weights.bk,
        bv=weights.bv, bo=weights.bo, scale=float(weights.scale), **acc)

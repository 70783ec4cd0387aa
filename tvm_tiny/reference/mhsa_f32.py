"""numpy golden model of the float32 MHSA kernel ``tt_mhsa_f32``: the plain formula, in float64.

The kernel (``kernels/mhsa/tt_mhsa_f32.c``) is tested against :func:`reference_mhsa_f32` within
named tolerances, and the tuner checks every measured config against it. It is computed unfused
and in float64 so that neither FWSA nor the kernel's float32 rounding can hide in the reference.
No TVM import.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.ir.mhsa import MhsaWeights

__all__ = ["reference_mhsa_f32"]


def reference_mhsa_f32(x: np.ndarray, weights: MhsaWeights, heads: int) -> np.ndarray:
    """Layer-wise float64 MHSA of ``weights`` (ONNX-style, ``x @ W + b``) with ``heads`` heads.

    ``x`` is [S, E] or [B, S, E]; returns float64 [S, E_out] or [B, S, E_out].
    """
    xf = np.asarray(x, dtype=np.float64)
    if xf.ndim == 2:
        return reference_mhsa_f32(xf[None], weights, heads)[0]
    if xf.ndim != 3:
        raise ValueError(f"x must be [S, E] or [B, S, E], got shape {xf.shape}")
    batch, seq, embed = xf.shape
    shape = weights.shape_for(seq=seq, heads=heads)
    if embed != shape.embed:
        raise ValueError(f"x has E = {embed}, weights expect E = {shape.embed}")
    p = shape.proj

    def project(w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        y = xf @ w.astype(np.float64)
        if b is not None:
            y = y + b.astype(np.float64)
        return y.reshape(batch, seq, heads, p).transpose(0, 2, 1, 3)  # [B, H, S, P]

    q = project(weights.wq, weights.bq)
    k = project(weights.wk, weights.bk)
    v = project(weights.wv, weights.bv)
    scores = weights.scale * (q @ k.transpose(0, 1, 3, 2))  # [B, H, S, S]
    scores = scores - scores.max(axis=-1, keepdims=True)
    attn = np.exp(scores)
    attn /= attn.sum(axis=-1, keepdims=True)
    ctx = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * p)
    y = ctx @ weights.wo.astype(np.float64)
    if weights.bo is not None:
        y = y + weights.bo.astype(np.float64)
    return y

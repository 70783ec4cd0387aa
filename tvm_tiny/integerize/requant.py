"""Fixed-point requantization as Relax, with the MHSA kernel's single rounding.

``requant(acc, mult, shift) = (acc * mult + 2^(n-1)) >> n`` with ``n = 31 - shift`` (round half
up, one rounding; ``kernels/include/tt_mhsa_s8_common.h`` ``s8_requant``, and
:func:`tvm_tiny.reference.mhsa_s8.requantize` in numpy), then ``clamp(zero_point + ., lo, hi)``.
``mult`` and ``shift`` come from :func:`tvm_tiny.ir.quant.quantize_multiplier` of the real
multiplier, per tensor (scalars) or per channel (vectors along the last axis).

TVM compiles the chain this module writes (int64 product, add, arithmetic shift, add, clip,
cast) into the integer code of the op it follows; a rule never writes its own.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from tvm_tiny.ir.quant import quantize_multipliers


def _const(values: np.ndarray, dtype: str) -> relax.Constant:
    return relax.const(np.asarray(values).astype(dtype), dtype)


def requantize(acc: relax.Expr, real: np.ndarray | float, zero_point: int, *,
               lo: int = -128, hi: int = 127, out_dtype: str = "int8") -> relax.Expr:
    """``clamp(zero_point + requant(acc, real), lo, hi)`` as ``out_dtype`` (``acc``: an integer
    tensor, int32 accumulators usually; ``real``: scalar or per last-axis channel)."""
    mult, shift = quantize_multipliers(real)
    n = 31 - shift
    if np.any(mult == 0):
        # quantize_multiplier's (0, 0): the product rounds to 0 for any int32 accumulator.
        n = np.where(mult == 0, 1, n)
    rounding = np.left_shift(np.int64(1), n - 1)
    t = relax.op.astype(acc, "int64")
    t = relax.op.multiply(t, _const(mult, "int64"))
    t = relax.op.add(t, _const(rounding, "int64"))
    t = relax.op.right_shift(t, _const(n, "int64"))
    t = relax.op.add(t, _const(np.int64(zero_point), "int64"))
    t = relax.op.clip(t, lo, hi)
    return relax.op.astype(t, out_dtype)

"""C layouts of the int8 MHSA: the ``tt_mhsa_s8_params`` fields and the kernel's scratch size.

:func:`arrange_s8` and :func:`scalar_fields_s8` lay the integer program of
``ir.mhsa_s8.lower_s8`` out as the arrays and int32 scalars of ``tt_mhsa_s8_params``
(``kernels/include/tt_mhsa_s8.h`` documents every field), weights pre-arranged offline for the
SIMD dot products; :func:`scratch_bytes_s8` mirrors ``tt_mhsa_s8_get_buffer_size`` so the
memory planner and the C code agree. The emitter (``codegen.mhsa_s8``), the kernel tests and the
kernel benchmark all call these; no TVM import.
"""

from __future__ import annotations

import numpy as np

from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape
from tvm_tiny.ir.mhsa_s8 import FusedQK, LoweredMhsaS8, lower_s8
from tvm_tiny.ir.quant import ACC_POINTS, MhsaInt8Params

__all__ = [
    "ACC_ARRAY_FIELDS",
    "ARRAY_FIELDS",
    "SCALAR_FIELDS",
    "arrange_s8",
    "block_rows_s8",
    "cluster_scratch_bytes_s8",
    "context_mode_s8",
    "scalar_fields_s8",
    "scratch_bytes_s8",
]

ARRAY_FIELDS = ("wq", "wk", "wf", "wv", "wo", "bq", "bk", "bf", "bv", "bo", "q_mult", "q_shift",
                "k_mult", "k_shift", "t_mult", "t_shift", "v_mult", "v_shift", "score_mult",
                "score_shift", "o_mult", "o_shift", "softmax_lut")
"""The pointer fields at the start of ``tt_mhsa_s8_params``, in struct order (absent ones are
NULL): :func:`arrange_s8`'s arrays except :data:`ACC_ARRAY_FIELDS`."""

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
"""The int32 scalar fields of ``tt_mhsa_s8_params``, in struct order. The struct is:
:data:`ARRAY_FIELDS`, these scalars, then :data:`ACC_ARRAY_FIELDS`. From ``acc_stages`` on, the
fields describe the optional two-step requantizations (all 0 when none is used)."""

ACC_ARRAY_FIELDS = ("q2_bias", "k2_bias", "v2_bias", "o2_bias")
"""int32 pointer fields at the end of ``tt_mhsa_s8_params``: the stage-2 biases
round_half_away(b / s_acc * 2**ACC_BIAS_BITS) of the two-step projections ([H][P]; o2_bias
[E_out]); NULL unless that projection is two-step and has a bias."""

_GROUP_ORDER = np.array([0, 2, 1, 3])
"""Byte order inside every group of 4 int8 weights in flash: [w0, w2, w1, w3]. Arm's SXTB16
sign-extends bytes 0 and 2, so SXTB16(word) = (w0, w1) and SXTB16(word ROR 8) = (w2, w3): the
natural int16 pairs SMLAD multiplies with the activations. The permutation is its own inverse."""


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


# ---------------------------------------------------------------- params struct
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
    h, p = shape.heads, shape.proj
    out = _qk_arrays(low)
    out["wv"] = _heads_major(low.wv, shape)
    if low.v.bias is not None:
        out["bv"] = low.v.bias.reshape(h, p)
    out["v_mult"], out["v_shift"] = low.v.mult.reshape(h, p), low.v.shift.reshape(h, p)
    out["score_mult"], out["score_shift"] = low.scores.mult, low.scores.shift
    out["wo"] = _kernel_rows(low.wo.reshape(h, p, shape.out_features).transpose(0, 2, 1))
    if low.o.bias is not None:
        out["bo"] = low.o.bias
    out["o_mult"], out["o_shift"] = low.o.mult, low.o.shift
    out["softmax_lut"] = low.softmax_lut
    for name, second in low.second_stages().items():  # two-step biases (ACC_ARRAY_FIELDS)
        if second.bias is not None:
            out[f"{name}2_bias"] = second.bias.reshape(h, p) if name != "o" else second.bias
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _heads_major(w: np.ndarray, shape: MhsaShape) -> np.ndarray:
    """[E, H*P] -> [H][P][E4]: row (h, p) is column h*P+p of w, in kernel row layout."""
    return _kernel_rows(w.T.reshape(shape.heads, shape.proj, shape.embed))


def _qk_arrays(low: LoweredMhsaS8) -> dict[str, np.ndarray]:
    """The Q/K fields of the variant ``low`` uses: wq, wk (+ biases, multipliers) unfused, or
    FWSA's wf, bf and T multipliers."""
    shape = low.shape
    h, p, e = shape.heads, shape.proj, shape.embed
    out: dict[str, np.ndarray] = {}
    if isinstance(low.qk, FusedQK):
        out["wf"] = _kernel_rows(low.qk.wf.transpose(0, 2, 1), _ceil4(e + 1))
        if low.qk.t.bias is not None:
            out["bf"] = np.ascontiguousarray(low.qk.t.bias)
        out["t_mult"], out["t_shift"] = low.qk.t.mult, low.qk.t.shift
        return out
    out["wq"], out["wk"] = _heads_major(low.qk.wq, shape), _heads_major(low.qk.wk, shape)
    for name, step in (("q", low.qk.q), ("k", low.qk.k)):
        if step.bias is not None:
            out[f"b{name}"] = step.bias.reshape(h, p)
        out[f"{name}_mult"] = step.mult.reshape(h, p)
        out[f"{name}_shift"] = step.shift.reshape(h, p)
    return out


def scalar_fields_s8(params: MhsaInt8Params, shape: MhsaShape,
                     config: KernelConfig) -> dict[str, int]:
    """The int32 scalar fields of ``tt_mhsa_s8_params`` (:data:`SCALAR_FIELDS` order)."""
    low = lower_s8(params, shape, config)
    values = {"ctx_mult": low.ctx_mult, "ctx_shift": low.ctx_shift,
              "probs_mult": low.probs_mult, "probs_shift": low.probs_shift,
              "fused_one": low.qk.kappa if isinstance(low.qk, FusedQK) else 0}
    for name, zero_point in low.zp.items():
        values[f"{name}_zero_point"] = zero_point
    values["acc_stages"] = low.acc_stages
    seconds = low.second_stages()
    for name in ACC_POINTS:
        second = seconds.get(name)
        prefix = "score2" if name == "qk" else f"{name}2"
        values[f"{prefix}_mult"] = second.mult if second else 0
        values[f"{prefix}_shift"] = second.shift if second else 0
        values[f"{name}_acc_zero_point"] = second.acc_zero_point if second else 0
    return {k: int(values[k]) for k in SCALAR_FIELDS}


# ---------------------------------------------------------------- scratch
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

"""Weights of one MHSA layer: shapes, kernel layouts and FWSA fusion.

The C kernel ``tt_mhsa_f32`` (``kernels/mhsa/tt_mhsa_f32.c``) reads its weights
in layouts chosen so that every inner loop is a contiguous dot product; this
module produces those layouts offline from ONNX-style matrices (``x @ W + b``),
fuses Q and K for fused-weight self-attention (FWSA), and mirrors the kernel's
scratch formula so the planner and the C code agree on memory. It imports no
TVM so the kernel tests and the code generator can share it. The numpy reference
the kernel is tested against is ``tvm_tiny.reference.mhsa_f32``.

Notation: S sequence, E embedding, H heads, P projection per head, E_out
output features (see ``kernels/include/tt_mhsa.h``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.sparse import (
    UINT16_LIMIT,
    CsrMatrix,
    csr_bytes,
    csr_rows,
    dense_bytes,
    smaller_sparse,
)

__all__ = [
    "FLOAT32_BYTES",
    "KernelConfig",
    "MhsaShape",
    "MhsaWeights",
    "SPARSE_FIELDS",
    "arrange_f32",
    "is_pruned",
    "scratch_bytes",
    "sparse_matrices",
    "stored_arrays_f32",
    "stored_params_bytes",
    "unfused_params_bytes",
]

FLOAT32_BYTES = 4
"""sizeof(float) on every supported target."""

DEFAULT_ROWS_PER_BLOCK = 8
"""Default DFT block: 8 query rows keep the score block small (8*S floats)
while amortizing the per-block call overhead; the tuner may pick another."""


@dataclass(frozen=True)
class MhsaShape:
    """Shape of one self-attention layer, as the C ``tt_mhsa_dims``."""

    seq: int
    embed: int
    heads: int
    proj: int
    out_features: int

    def __post_init__(self) -> None:
        for name in ("seq", "embed", "heads", "proj", "out_features"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"MhsaShape.{name} must be a positive int, got {value!r}")

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the unfused layer: Q, K, V and O projections
        plus Q K^T and A V (the softmax is not counted)."""
        s, e, h, p, e_out = self.seq, self.embed, self.heads, self.proj, self.out_features
        return s * e * h * p * 3 + s * h * p * e_out + 2 * h * s * s * p


@dataclass(frozen=True)
class KernelConfig:
    """Kernel knobs, as the C ``tt_mhsa_config``, plus the storage of pruned weights.

    ``sparse``: store each weight matrix the kernel reads (wq, wk or wf, wv, wo) row-compressed
    when that is smaller (:func:`sparse_matrices`); False keeps every matrix dense. Dense
    weights are never smaller compressed, so the knob only matters for pruned layers.
    """

    rows_per_block: int
    fuse_qk: bool
    sparse: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rows_per_block, (int, np.integer)) or self.rows_per_block < 1:
            raise ValueError(
                f"KernelConfig.rows_per_block must be a positive int, got {self.rows_per_block!r}"
            )

    @classmethod
    def default_for(cls, shape: MhsaShape, weights: MhsaWeights | None = None,
                    dtype: DType = DType.FLOAT32) -> KernelConfig:
        """Config used when no tuning record exists.

        int8 MHSAs default to separate Q and K: FWSA never forms Q, K or Q K^T, so it skips the
        three rounding points the exported QDQ graph has there and departs from onnxruntime's
        reference by several output steps (int8 EEGFormer's MHSA: max 6, mean 0.97 fused; max
        3, mean 0.16 unfused), beyond the int8 bar of one step per op.

        FWSA replaces 2*E*P Q/K weights per head by E*E, so it is chosen only
        when that shrinks the parameters (E < 2P). With ``weights`` whose Q or K
        matrices are pruned the comparison is made on the bytes actually stored:
        the fused Wq_h Wk_h^T is dense even when Wq and Wk are sparse, so
        separate row-compressed Q and K can be the smaller choice.
        """
        rows = min(shape.seq, DEFAULT_ROWS_PER_BLOCK)
        if dtype == DType.INT8:
            return cls(rows, fuse_qk=False)
        by_shape = cls(rows, fuse_qk=shape.embed < 2 * shape.proj)
        if weights is None or not is_pruned(weights, shape):
            return by_shape  # dense layers: no layout is arranged (FWSA fusion is an einsum)
        unfused, fused = cls(rows, False), cls(rows, True)
        unfused_dense, unfused_csr = stored_arrays_f32(weights, shape, unfused)
        fused_dense, fused_csr = stored_arrays_f32(weights, shape, fused)
        unfused_bytes = stored_params_bytes(unfused_dense, unfused_csr)
        fused_bytes = stored_params_bytes(fused_dense, fused_csr)
        return fused if fused_bytes < unfused_bytes else unfused


def _check_array(name: str, array: np.ndarray | None, expected: tuple[int, ...]) -> None:
    if array is None:
        return
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        dtype = getattr(array, "dtype", type(array).__name__)
        raise TypeError(f"MhsaWeights.{name} must be a float32 numpy array, got {dtype}")
    if array.shape != expected:
        raise ValueError(f"MhsaWeights.{name} has shape {array.shape}, expected {expected}")


@dataclass(frozen=True)
class MhsaWeights:
    """ONNX-style weights of one MHSA layer: ``Q = x @ wq + bq`` etc.

    ``wq``, ``wk``, ``wv`` are [E, H*P] (head h = columns h*P .. h*P+P-1),
    ``wo`` is [H*P, E_out]; ``bq``, ``bk``, ``bv`` are [H*P] and ``bo`` is
    [E_out], each optional (None = no bias). ``scale`` multiplies Q K^T,
    usually 1/sqrt(P). All arrays are float32.
    """

    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bo: np.ndarray | None
    scale: float

    def __post_init__(self) -> None:
        if not isinstance(self.wq, np.ndarray) or self.wq.ndim != 2:
            raise ValueError(
                f"MhsaWeights.wq must be a 2-D [E, H*P] array, "
                f"got {getattr(self.wq, 'shape', None)}"
            )
        embed, hp = self.wq.shape
        _check_array("wq", self.wq, (embed, hp))
        _check_array("wk", self.wk, (embed, hp))
        _check_array("wv", self.wv, (embed, hp))
        if not isinstance(self.wo, np.ndarray) or self.wo.ndim != 2:
            raise ValueError(
                f"MhsaWeights.wo must be a 2-D [H*P, E_out] array, "
                f"got {getattr(self.wo, 'shape', None)}"
            )
        _check_array("wo", self.wo, (hp, self.wo.shape[1]))
        _check_array("bq", self.bq, (hp,))
        _check_array("bk", self.bk, (hp,))
        _check_array("bv", self.bv, (hp,))
        _check_array("bo", self.bo, (self.wo.shape[1],))

    def shape_for(self, seq: int, heads: int) -> MhsaShape:
        """The layer shape for a sequence length and head count (the weights
        alone only fix H*P)."""
        embed, hp = self.wq.shape
        if hp % heads:
            raise ValueError(f"H*P = {hp} is not divisible by heads = {heads}")
        return MhsaShape(
            seq=seq, embed=embed, heads=heads, proj=hp // heads, out_features=self.wo.shape[1]
        )

    def check_shape(self, shape: MhsaShape) -> None:
        """Raise ValueError unless these weights belong to a layer of ``shape``."""
        embed, hp = self.wq.shape
        got = (embed, hp, self.wo.shape[1])
        want = (shape.embed, shape.heads * shape.proj, shape.out_features)
        if got != want:
            raise ValueError(
                f"weights have (E, H*P, E_out) = {got}, but shape {shape} needs {want}"
            )


def _heads_major(w: np.ndarray, heads: int) -> np.ndarray:
    """[E, H*P] -> [H][P][E]: row (h, p) is column h*P+p of w, so each output
    element of a projection is a contiguous dot product over E."""
    embed, hp = w.shape
    return np.ascontiguousarray(w.T.reshape(heads, hp // heads, embed))


def arrange_f32(
    weights: MhsaWeights, shape: MhsaShape, config: KernelConfig
) -> dict[str, np.ndarray]:
    """Weights in the layouts ``tt_mhsa_f32`` reads, keyed by ``tt_mhsa_f32_params`` field.

    Absent biases, and the Q/K variant ``config`` does not use, are omitted
    (the C pointer stays NULL). With ``config.fuse_qk`` the fused ``wf`` [H][E][E]
    and ``bf`` [H][E] are computed in float64 and rounded once to float32, so
    fusion adds one rounding rather than E of them.

    Layouts: wq, wk, wv [H][P][E]; bq, bk, bv [H][P]; wf [H][E][E] with
    wf[h][c][r] = scale (Wq_h Wk_h^T)[r][c]; bf [H][E]; wo [H][E_out][P];
    bo [E_out].
    """
    weights.check_shape(shape)
    h, p, e = shape.heads, shape.proj, shape.embed
    out: dict[str, np.ndarray] = {}
    if config.fuse_qk:
        wq = weights.wq.astype(np.float64).reshape(e, h, p).transpose(1, 0, 2)  # [H][E][P]
        wk = weights.wk.astype(np.float64).reshape(e, h, p).transpose(1, 0, 2)  # [H][E][P]
        # Wf_h = scale Wq_h Wk_h^T is [E(r)][E(c)]; the kernel wants row c = column c.
        wf = weights.scale * np.einsum("hrp,hcp->hcr", wq, wk)
        out["wf"] = np.ascontiguousarray(wf, dtype=np.float32)
        if weights.bq is not None:
            bq = weights.bq.astype(np.float64).reshape(h, p)
            bf = weights.scale * np.einsum("hp,hcp->hc", bq, wk)
            out["bf"] = np.ascontiguousarray(bf, dtype=np.float32)
        # bk only adds terms constant along a softmax row: it cancels and is dropped.
    else:
        out["wq"] = _heads_major(weights.wq, h)
        out["wk"] = _heads_major(weights.wk, h)
        if weights.bq is not None:
            out["bq"] = np.ascontiguousarray(weights.bq.reshape(h, p))
        if weights.bk is not None:
            out["bk"] = np.ascontiguousarray(weights.bk.reshape(h, p))
    out["wv"] = _heads_major(weights.wv, h)
    if weights.bv is not None:
        out["bv"] = np.ascontiguousarray(weights.bv.reshape(h, p))
    # Wo rows h*P .. h*P+P-1 form head h's [P][E_out] block; transposed to
    # [E_out][P] so y[i][o] += ctx_i . wo[h][o] is contiguous over P.
    out["wo"] = np.ascontiguousarray(
        weights.wo.reshape(h, p, shape.out_features).transpose(0, 2, 1)
    )
    if weights.bo is not None:
        out["bo"] = np.ascontiguousarray(weights.bo)
    return out


SPARSE_FIELDS = ("wq", "wk", "wf", "wv", "wo")
"""The weight matrices ``tt_mhsa_f32`` also accepts row-compressed (``tt_mhsa_f32_sparse``)."""


def sparse_matrices(arrays: dict[str, np.ndarray]) -> dict[str, CsrMatrix]:
    """The matrices of ``arrays`` (``arrange_f32``) that take fewer bytes row-compressed, by
    field. Rows are the layouts' leading dimensions flattened (e.g. wq [H][P][E] is H*P rows of
    E), which is how the kernel indexes them; a row length above 65535 stays dense (the kernel's
    column indices are 16-bit)."""
    out: dict[str, CsrMatrix] = {}
    for name in SPARSE_FIELDS:
        if name not in arrays:
            continue
        matrix = arrays[name].reshape(-1, arrays[name].shape[-1])
        if matrix.shape[1] < UINT16_LIMIT and smaller_sparse(matrix):
            out[name] = csr_rows(matrix)
    return out


def is_pruned(weights: MhsaWeights, shape: MhsaShape) -> bool:
    """True when Wq, Wk, Wv or Wo is smaller stored row-compressed in its kernel layout (rows
    of E for wq/wk/wv, of P for wo), counted from the ONNX matrices without arranging them.
    A fused Wf can only be sparse when Wq or Wk is, so it need not be formed to decide."""
    h, p, e, e_out = shape.heads, shape.proj, shape.embed, shape.out_features
    layouts = ((weights.wq, h * p, e), (weights.wk, h * p, e), (weights.wv, h * p, e),
               (weights.wo, h * e_out, p))
    return any(cols < UINT16_LIMIT and csr_bytes(int(np.count_nonzero(w)), rows, cols)
               < dense_bytes(rows, cols) for w, rows, cols in layouts)


def stored_arrays_f32(weights: MhsaWeights, shape: MhsaShape, config: KernelConfig
                      ) -> tuple[dict[str, np.ndarray], dict[str, CsrMatrix]]:
    """What an instance stores: the dense arrays of ``arrange_f32`` minus the matrices kept
    row-compressed (only when ``config.sparse``), and those compressed matrices."""
    arrays = arrange_f32(weights, shape, config)
    compressed = sparse_matrices(arrays) if config.sparse else {}
    return {k: v for k, v in arrays.items() if k not in compressed}, compressed


def scratch_bytes(shape: MhsaShape, config: KernelConfig) -> int:
    """Scratch bytes ``tt_mhsa_f32`` needs; equals ``tt_mhsa_f32_get_buffer_size``.

    One head is live at a time, so with x = min(rows_per_block, S), in floats:
    unfused 2SP (K_h, V_h) + xP (q) + xS (scores) + xP (context);
    fused SP (V_h) + xE (x Wf_h) + xS + xP. Independent of H.
    """
    s, e, p = shape.seq, shape.embed, shape.proj
    x = min(config.rows_per_block, s)
    floats = (
        s * p + x * e + x * s + x * p  # V_h^T, x Wf_h block, scores, context
        if config.fuse_qk
        else 2 * s * p + x * p + x * s + x * p  # K_h and V_h^T, q block, scores, context
    )
    return floats * FLOAT32_BYTES


def cluster_scratch_bytes(shape: MhsaShape, config: KernelConfig, cores: int) -> int:
    """Scratch bytes ``tt_mhsa_f32_cluster`` needs on ``cores`` cores; equals
    ``tt_mhsa_f32_cluster_get_buffer_size``: one head scratch per active core (A = min(cores, H))
    plus the partial outputs of cores 1 .. A-1."""
    active = min(cores, shape.heads)
    out_bytes = shape.seq * shape.out_features * FLOAT32_BYTES
    return active * scratch_bytes(shape, config) + (active - 1) * out_bytes


def unfused_params_bytes(shape: MhsaShape, *, with_biases: bool = True) -> int:
    """float32 bytes of the unfused Q, K, V, O weights (4HEP with E_out = E),
    plus all four biases when ``with_biases``: the "before fusion" figure."""
    h, p, e, e_out = shape.heads, shape.proj, shape.embed, shape.out_features
    count = 3 * e * h * p + h * p * e_out
    if with_biases:
        count += 3 * h * p + e_out
    return count * FLOAT32_BYTES


def stored_params_bytes(arrays: dict[str, np.ndarray],
                        compressed: dict[str, CsrMatrix] | None = None) -> int:
    """Bytes the kernel's weight arrays occupy in flash (e.g. of ``arrange_f32``), plus those
    of its row-compressed matrices."""
    dense = sum(int(a.nbytes) for a in arrays.values())
    return dense + sum(m.stored_bytes for m in (compressed or {}).values())

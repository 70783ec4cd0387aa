"""Row-compressed (CSR) storage of pruned float32 weights, shared by the sparse linear kernel
(``tt_linear_f32_csr``) and the MHSA kernel's pruned projections (``tt_csr_f32`` in
``tt_mhsa.h``).

Both kernels compute every output as one dot product over a row of their weight layout, so both
store the nonzeros of each such row contiguously: ``row_ptr`` [R+1] int32, column indices
(uint16 when the row length C < 65536, else int32) and float32 values. A matrix is worth storing
this way only when that is smaller than dense (:func:`smaller_sparse`): 6 bytes per nonzero plus
4 per row against 4 per element, i.e. below about two thirds density. No TVM import: the kernel
tests and the weight layouts use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT32_BYTES = 4
ROW_PTR_BYTES = 4
UINT16_LIMIT = 65536


def index_bytes(cols: int) -> int:
    """Bytes of one column index for rows of ``cols`` columns (uint16 below 65536)."""
    return 2 if cols < UINT16_LIMIT else 4


def csr_bytes(nnz: int, rows: int, cols: int) -> int:
    """Bytes of a CSR matrix: float values, column indices, int32 row pointers."""
    return FLOAT32_BYTES * nnz + index_bytes(cols) * nnz + ROW_PTR_BYTES * (rows + 1)


def dense_bytes(rows: int, cols: int) -> int:
    return FLOAT32_BYTES * rows * cols


def smaller_sparse(matrix: np.ndarray) -> bool:
    """True when the 2-D ``matrix`` (rows = outputs) takes fewer bytes stored as CSR."""
    rows, cols = matrix.shape
    return csr_bytes(int(np.count_nonzero(matrix)), rows, cols) < dense_bytes(rows, cols)


@dataclass(frozen=True)
class CsrMatrix:
    """A [rows][cols] matrix by rows: row r's nonzeros are ``col_idx/values[row_ptr[r]:
    row_ptr[r+1]]``, columns ascending."""

    rows: int
    cols: int
    row_ptr: np.ndarray  # [rows+1] int32
    col_idx: np.ndarray  # [nnz] uint16 (cols < 65536) or int32
    values: np.ndarray  # [nnz] float32

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def stored_bytes(self) -> int:
        return csr_bytes(self.nnz, self.rows, self.cols)

    @property
    def dense_bytes(self) -> int:
        return dense_bytes(self.rows, self.cols)

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.rows, self.cols), dtype=np.float32)
        rows = np.repeat(np.arange(self.rows), np.diff(self.row_ptr))
        out[rows, self.col_idx.astype(np.int64)] = self.values
        return out


def csr_rows(matrix: np.ndarray) -> CsrMatrix:
    """``matrix`` [R, C] (any float dtype, 2-D) compressed by rows, as float32."""
    if matrix.ndim != 2:
        raise ValueError(f"csr_rows needs a 2-D matrix, got shape {matrix.shape}")
    rows, cols = matrix.shape
    dense = np.ascontiguousarray(matrix, dtype=np.float32)
    row_of, col_of = np.nonzero(dense)  # row-major: grouped by row, columns ascending
    counts = np.bincount(row_of, minlength=rows)
    row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    index_dtype = np.uint16 if cols < UINT16_LIMIT else np.int32
    return CsrMatrix(int(rows), int(cols), row_ptr, col_of.astype(index_dtype),
                     dense[row_of, col_of].astype(np.float32))

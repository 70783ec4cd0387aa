/**
 * @file tt_linear.h
 * @brief Sparse (pruned) float32 linear layers of tvm_tiny.
 *
 * Semantics (ONNX style, row vectors times weights): for R rows of x[R][K],
 * @code
 *   y[r][n] = sum_k x[r][k] W[k][n] + b[n]        y is [R][N]
 * @endcode
 * where only the nonzero entries of W are stored.
 *
 * Storage format: CSR of W^T, i.e. compressed by OUTPUT column. For every
 * output n, the nonzeros of column n of W are stored contiguously as pairs
 * (k_idx[j], values[j]) for j in col_ptr[n] .. col_ptr[n+1]-1, k ascending:
 *
 * | field   | layout   | meaning                                              |
 * |---------|----------|------------------------------------------------------|
 * | col_ptr | [N+1]    | int32; col_ptr[0] = 0, col_ptr[N] = nnz, ascending   |
 * | k_idx16 | [nnz]    | uint16 input index k (when K <= 65535), else NULL    |
 * | k_idx32 | [nnz]    | int32 input index k (when K > 65535), else NULL      |
 * | values  | [nnz]    | float32 W[k_idx[j]][n]                               |
 * | bias    | [N]      | float32 b, or NULL for a zero bias                   |
 *
 * Why this format on a Cortex-M4: each output is one dot product kept in an
 * FPU register, for four rows of x at once. Per nonzero the inner loop does
 * two sequential loads from flash (index, value), four loads of x (the input
 * rows are small and sit in SRAM) and four VMLAs, and writes y once per
 * output and row (measured on stm32l4 in QEMU: a 50%-pruned FFN takes 3.3x
 * fewer instructions than TVM's dense matmuls, 1.7x fewer than the same loop
 * over one row at a time; benchmarks/sparse.py). The alternative, CSC
 * by input row k (scatter: y[n] += x[k] * w), needs a load AND a store of
 * y[n] per nonzero (the M4 has no cache to absorb them) and cannot keep the
 * accumulator in a register; a bitmap or block format spends instructions on
 * bit tests or on the zeros kept inside blocks. Sequential streaming of the
 * index and value arrays also suits the flash prefetch buffer (ART on
 * STM32). 16-bit indices halve the index traffic and storage when K < 65536.
 *
 * The bias is added after the dot product, as TVM's matmul-then-add does.
 * Indices are written offline by the code generator and must be < K; they
 * are not re-checked per call (the col_ptr array is).
 */
#ifndef TT_LINEAR_H
#define TT_LINEAR_H

#include <stdint.h>

#include "tt_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Shape of one linear layer. All fields must be >= 1. */
typedef struct {
  int32_t rows;         /**< R: rows of x (product of its leading dimensions). */
  int32_t in_features;  /**< K: columns of x, rows of W. */
  int32_t out_features; /**< N: columns of W and of y. */
} tt_linear_dims;

/** @brief Pruned weights in CSR-by-output-column form (see the file comment). */
typedef struct {
  const int32_t *col_ptr;  /**< [N+1] start of each output's nonzeros. */
  const uint16_t *k_idx16; /**< [nnz] 16-bit input indices, or NULL. */
  const int32_t *k_idx32;  /**< [nnz] 32-bit input indices, or NULL. */
  const float *values;     /**< [nnz] nonzero weights. */
  const float *bias;       /**< [N] bias, or NULL. */
  int32_t nnz;             /**< Stored nonzeros (>= 0). */
} tt_linear_f32_csr_params;

/**
 * @brief y = x W + b with W stored sparse (CSR by output column).
 *
 * Exactly one of k_idx16 / k_idx32 must be non-NULL when nnz > 0; y must not
 * overlap x. Needs no scratch.
 *
 * @return TT_OK, or TT_ARG_ERROR (NULL pointer, bad dimension, inconsistent
 *         col_ptr, overlapping x/y); nothing is written on error.
 */
tt_status tt_linear_f32_csr(const tt_linear_dims *dims, const tt_linear_f32_csr_params *p,
                            const float *x, float *y);

#ifdef __cplusplus
}
#endif

#endif /* TT_LINEAR_H */

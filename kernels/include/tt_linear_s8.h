/**
 * @file tt_linear_s8.h
 * @brief int8 linear layers (MatMul/Gemm + bias + requantization, optional
 *        ReLU/clamp) of tvm_tiny: int8 in, int8 out, int32 accumulation.
 *
 * Semantics (ONNX style, rows of x times the weight), for R rows of x[R][K]:
 * @code
 *   acc[r][n] = sum_k x[r][k] W[k][n] + kernel_bias[n]
 *             = sum_k (x[r][k] - zp_x) W[k][n] + bias[n]     (kernel_bias folds zp_x)
 *   requant(a, M, sh) = (a * M + 2^(m-1)) >> m,  m = 31 - sh  (64-bit product, one
 *                                                            rounding, ties up)
 *   one step:  y = clamp(zp_y + requant(acc, mult[n], shift[n]), act_min, act_max)
 *   two steps: q1 = clamp8(zp_acc + requant(acc, mult[n], shift[n]))
 *              y  = clamp(zp_y + requant(((q1 - zp_acc) << 8) + bias2[n], mult2,
 *                                        shift2), act_min, act_max)
 * @endcode
 * The two-step form reproduces the exported graph that rounds after the
 * MatMul and again after the bias add (MatMul -> Q -> DQ -> Add -> Q), with
 * the arithmetic of the int8 MHSA's two-step projections (tt_mhsa_s8.h,
 * TT_MHSA_S8_ACC_BIAS_BITS = 16): bias2 is the bias in units of s_acc / 2^16.
 * A following ReLU or Clip of the float graph is exactly the clamp to
 * [act_min, act_max] (quantize is monotone; ReLU: act_min = zp_y).
 *
 * kernel_bias[n] = bias[n] - zp_x sum_k W[k][n] (int32; without the bias in the
 * two-step form) is computed offline by the code generator, as CMSIS-NN's
 * prepare step computes its kernel sums: the kernels then multiply the raw
 * int8 x. All paths compute the same integers (the sums are exact in int32:
 * K <= TT_LINEAR_S8_MAX_K and the code generator bounds |kernel_bias|).
 *
 * Weight layout (`weights`, int8, 4-byte aligned, written by
 * tvm_tiny.codegen.linear_s8): W^T (one row per output column n), each row
 * zero-padded to K4 = K rounded up to a multiple of 4, and the columns taken
 * in pairs (2p, 2p+1) interleaved by groups of 4 k:
 * @code
 *   [n=2p k0..3][n=2p+1 k0..3][n=2p k4..7][n=2p+1 k4..7] ...   (N*K4 bytes)
 * @endcode
 * (a last odd column is one contiguous row of K4). One double-word load then
 * gives four k of both columns of a register tile.
 *
 * Paths (one file, kernels/linear/tt_linear_s8.c, all bit-identical):
 * - Cortex-M with the DSP extension (__ARM_FEATURE_DSP): a block of x rows is
 *   widened once into the scratch (SXTB16 order [x0 x2 x1 x3], row pairs
 *   interleaved); 2x2 register tiles (2 rows x 2 columns) of SMLAD, the
 *   weights sign-extended by SXTB16 straight from flash;
 * - RISC-V (GAP9; TT_LINEAR_S8_SDOT4): the x block copied, zero-padded, to the
 *   scratch; 2x2 tiles of 4-way int8 dot products (tt_sdot4: pv.sdotsp.b
 *   with the GAP SDK, portable C otherwise);
 * - portable C (TT_LINEAR_S8_PORTABLE, or any other target): plain loops.
 * TT_LINEAR_S8_SMLAD selects the SMLAD structure on any target (through the
 * portable helpers of tt_simd.h), so host tests check its loops too.
 */
#ifndef TT_LINEAR_S8_H
#define TT_LINEAR_S8_H

#include <stdint.h>

#include "tt_linear.h"
#include "tt_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Largest K: |sum_k x W| <= 128 * 128 * K stays far inside int32. */
#define TT_LINEAR_S8_MAX_K 32767

/** Fractional bits of bias2 in the two-step form (= TT_MHSA_S8_ACC_BIAS_BITS). */
#define TT_LINEAR_S8_ACC_BIAS_BITS 16

/** @brief Knobs of tt_linear_s8 (results never depend on them). */
typedef struct {
  /** x rows widened into the scratch per block (>= 1; rounded up to even,
   *  at most R). Larger blocks re-read the weights less often. */
  int32_t rows_per_block;
} tt_linear_s8_config;

/** @brief Parameters of one int8 linear layer (see the file comment). */
typedef struct {
  const int8_t *weights;      /**< [N*K4] pre-arranged int8 W^T, 4-byte aligned. */
  const int32_t *kernel_bias; /**< [N] bias[n] - zp_x sum_k W[k][n]. */
  const int32_t *mult;        /**< [N] (per_channel) or [1]: stage-1 multipliers. */
  const int32_t *shift;       /**< same layout; each in -31 .. 30. */
  int32_t per_channel;        /**< 1: mult/shift per output column; 0: one value. */
  int32_t y_zero_point;       /**< zp_y, -128 .. 127. */
  int32_t act_min;            /**< output clamp, -128 <= act_min <= act_max <= 127. */
  int32_t act_max;
  int32_t two_step;           /**< 0: one requantization; 1: the two-step form. */
  int32_t acc_zero_point;     /**< two-step: zp_acc of the rounding point, -128 .. 127. */
  int32_t mult2;              /**< two-step: stage-2 multiplier and shift (per tensor). */
  int32_t shift2;
  const int32_t *bias2;       /**< two-step: [N] stage-2 bias, or NULL (zero). */
} tt_linear_s8_params;

/**
 * @brief Scratch bytes tt_linear_s8 needs: 2 * X * K4 with X the block rows
 *        (rows_per_block rounded up to even, at most R); the same on every path.
 * @return the size, or TT_ARG_ERROR for invalid dims or config.
 */
int32_t tt_linear_s8_get_buffer_size(const tt_linear_dims *dims, const tt_linear_s8_config *cfg);

/**
 * @brief y[R][N] = the int8 linear layer of x[R][K] (see the file comment).
 *
 * @param[in]  dims     R, K (1 .. TT_LINEAR_S8_MAX_K), N; R*K and R*N < 2^31.
 * @param[in]  cfg      knobs.
 * @param[in]  p        parameters.
 * @param[in]  x        int8 [R][K].
 * @param[out] y        int8 [R][N]; must not overlap x or the scratch.
 * @param      scratch  4-byte aligned, at least tt_linear_s8_get_buffer_size bytes,
 *                      not overlapping x.
 * @return TT_OK; TT_ARG_ERROR (NULL or misaligned pointer, bad dimension, knob or
 *         parameter, overlapping buffers) or TT_SCRATCH_ERROR; nothing is written
 *         on error.
 */
tt_status tt_linear_s8(const tt_linear_dims *dims, const tt_linear_s8_config *cfg,
                       const tt_linear_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                       int32_t scratch_bytes);

#ifdef __cplusplus
}
#endif

#endif /* TT_LINEAR_S8_H */

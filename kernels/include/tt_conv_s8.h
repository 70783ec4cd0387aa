/**
 * @file tt_conv_s8.h
 * @brief int8 2-D convolutions (Conv + bias + requantization, optional
 *        ReLU/clamp) of tvm_tiny: int8 in, int8 out, int32 accumulation, the
 *        ONNX layouts at the interface (x NCHW, W OIHW, y NCHW).
 *
 * Semantics, per image, output channel o and output pixel (oy, ox):
 * @code
 *   acc = sum_{c,i,j} (x[c][oy*SH - PT + i][ox*SW - PL + j] - zp_x) W[o][c][i][j] + bias[o]
 * @endcode
 * with x read as zp_x outside the image (the input zero point is the real 0
 * of the float graph's padding), then exactly the output stage of
 * tt_linear_s8 (tt_linear_s8.h: one step, or the two-step form that rounds
 * after the conv and again after the bias add), clamp to [act_min, act_max]
 * for a following ReLU/Clip. Dilation 1 only.
 *
 * Two kernels, chosen by the shape (tt_conv_s8 dispatches):
 * - **standard** (groups == 1; pointwise 1x1 included): a block of X output
 *   pixels is gathered (im2col) into the scratch as int8 rows [X][K],
 *   K = C*KH*KW in (c, i, j) order, padding written as zp_x; the block is one
 *   tt_linear_s8 call (its SMLAD 2x2 register tiles on Cortex-M DSP, 4-way dot
 *   products on GAP9, portable C elsewhere: the path is tt_linear_s8's), whose
 *   [X][O] result is transposed into the NCHW output. A pointwise conv
 *   (1x1, stride 1, no padding) gathers by a plain transpose of the block.
 *   `gemm.weights` is W as the [K][O] matrix of tt_linear_s8 (W[o] flattened
 *   is column o), arranged as tt_linear_s8.h says; `gemm.kernel_bias[o]` =
 *   bias[o] - zp_x sum W[o] (the padding holds zp_x, so it stays exact).
 * - **depthwise** (groups == C == O, channel multiplier 1): a direct kernel,
 *   one channel at a time, the channel plane first copied into the scratch
 *   with its padding filled with zp_x (so every window is branch-free; 3x3
 *   keeps its weights in registers); `gemm.weights` is W in its natural
 *   [C][KH*KW] order, `gemm.kernel_bias[c]` = bias[c] - zp_x sum W[c] as
 *   above. The same C code on every target (bit-identical by construction).
 * Both compute the same integers as tvm_tiny.reference.conv_s8.
 */
#ifndef TT_CONV_S8_H
#define TT_CONV_S8_H

#include <stdint.h>

#include "tt_linear_s8.h"
#include "tt_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Shape of one convolution (batch of NCHW images). */
typedef struct {
  int32_t batch;        /**< N >= 1. */
  int32_t in_channels;  /**< C. */
  int32_t in_height;    /**< H. */
  int32_t in_width;     /**< W. */
  int32_t out_channels; /**< O. */
  int32_t kernel_h;     /**< KH. */
  int32_t kernel_w;     /**< KW. */
  int32_t stride_h;     /**< SH >= 1. */
  int32_t stride_w;     /**< SW >= 1. */
  int32_t pad_top;      /**< PT >= 0 (likewise the other three). */
  int32_t pad_left;     /**< PL. */
  int32_t pad_bottom;   /**< PB. */
  int32_t pad_right;    /**< PR. */
  int32_t dilation_h;   /**< must be 1. */
  int32_t dilation_w;   /**< must be 1. */
  int32_t groups;       /**< 1 (standard) or C == O (depthwise). */
} tt_conv_s8_dims;

/** @brief Knobs of tt_conv_s8 (results never depend on them). */
typedef struct {
  /** Output pixels gathered per block by the standard kernel (>= 1; rounded
   *  up to even, at most OH*OW): scratch grows by about 3 K + O bytes per
   *  pixel, the per-block costs shrink. Unused by the depthwise kernel. */
  int32_t pixels_per_block;
} tt_conv_s8_config;

/** @brief Parameters: the tt_linear_s8 parameters of the output channels
 *         (weights laid out as the file comment says) and the input zero point. */
typedef struct {
  tt_linear_s8_params gemm;
  int32_t x_zero_point; /**< zp_x, -128 .. 127: the padding value. */
} tt_conv_s8_params;

/** @brief OH = (H + PT + PB - KH) / SH + 1, or TT_ARG_ERROR for invalid dims. */
int32_t tt_conv_s8_out_height(const tt_conv_s8_dims *dims);

/** @brief OW = (W + PL + PR - KW) / SW + 1, or TT_ARG_ERROR for invalid dims. */
int32_t tt_conv_s8_out_width(const tt_conv_s8_dims *dims);

/**
 * @brief Scratch bytes tt_conv_s8 needs. Standard: ceil4(X K) + ceil4(X O) +
 *        tt_linear_s8_get_buffer_size({X, K, O}, {X}), X the block pixels
 *        (pixels_per_block rounded up to even, at most OH*OW); depthwise: one
 *        padded plane, ceil4((H+PT+PB) (W+PL+PR)), or 0 without padding.
 * @return the size, or TT_ARG_ERROR for invalid dims (dilation != 1 included)
 *         or config.
 */
int32_t tt_conv_s8_get_buffer_size(const tt_conv_s8_dims *dims, const tt_conv_s8_config *cfg);

/**
 * @brief y = the int8 convolution of x (see the file comment).
 *
 * @param[in]  dims     shape; dilation 1, groups 1 or C == O; K = C*KH*KW at
 *                      most TT_LINEAR_S8_MAX_K; every tensor < 2^31 bytes.
 * @param[in]  cfg      knobs.
 * @param[in]  p        parameters.
 * @param[in]  x        int8 [N][C][H][W].
 * @param[out] y        int8 [N][O][OH][OW]; must not overlap x or the scratch.
 * @param      scratch  4-byte aligned, at least tt_conv_s8_get_buffer_size bytes
 *                      (may be NULL when that is 0), not overlapping x.
 * @return TT_OK; TT_ARG_ERROR (NULL or misaligned pointer, bad dimension, knob or
 *         parameter, overlapping buffers) or TT_SCRATCH_ERROR; nothing is written
 *         on error.
 */
tt_status tt_conv_s8(const tt_conv_s8_dims *dims, const tt_conv_s8_config *cfg,
                     const tt_conv_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                     int32_t scratch_bytes);

#ifdef __cplusplus
}
#endif

#endif /* TT_CONV_S8_H */

/**
 * @file tt_mhsa_s8.h
 * @brief int8 multi-head self-attention (MHSA) kernels of tvm_tiny.
 *
 * Shapes and knobs are those of the float kernel (tt_mhsa.h: tt_mhsa_dims,
 * tt_mhsa_config); one call processes one batch item x[S][E] -> y[S][E_out].
 *
 * Quantization is affine, real = scale * (q - zero_point), with int8 activations
 * and symmetric int8 weights (per output channel or per tensor). The integer
 * program, computed bit-exactly by every variant and by the numpy model
 * tvm_tiny.reference.mhsa_s8.reference_mhsa_s8 (all sums exact in int32):
 * @code
 *   requant(acc, M, shift) = (acc * M + 2^(n-1)) >> n,  n = 31 - shift   (64-bit product)
 *   X  = x - zp_x
 *   Q  = clamp8(zp_q + requant(X Wq + bq, q_mult[n], q_shift[n]))      likewise K and V
 *   s  = clamp8(zp_s + requant((Q_h - zp_q)(K_h - zp_k)^T, score_mult[h], score_shift[h]))
 *   e  = lut[max_j(s) - s],  D = (sum_j e) << probs_shift              per score row
 *   pr = min(127, zp_p + (e * probs_mult + D / 2) / D)                  unsigned division
 *   c  = clamp8(zp_c + requant((pr - zp_p)(V_h - zp_v), ctx_mult, ctx_shift))
 *   y  = clamp8(zp_y + requant(sum_h (c_h - zp_c) Wo_h + bo, o_mult[o], o_shift[o]))
 * @endcode
 * requant rounds once, ties toward +infinity (CMSIS-NN's arm_nn_requantize with
 * CMSIS_NN_USE_SINGLE_ROUNDING). With FWSA (fuse_qk) the scores are
 * clamp8(zp_s + requant(T [X | kappa]^T, score_mult[h], score_shift[h])) with
 * T = clamp16(requant(X Wf_h + bf_h, t_mult[h], t_shift[h])) held in int16
 * [S][E+1]: Wf_h = scale Wq_h Wk_h^T and bf_h = scale bq_h Wk_h^T, plus a last
 * column carrying the terms FWSA drops (x_i Wq_h bk_h^T + bq_h bk_h^T) against
 * the constant key column kappa = fused_one. Those terms are constant along a
 * softmax row, but without them the int8 scores would leave the calibrated
 * range and saturate.
 *
 * Two-step requantizations (the rounding points of a QDQ export, e.g.
 * onnxruntime quantize_static: MatMul -> Q/DQ (s_acc) -> Add(bias) -> Q/DQ (s_out),
 * and MatMul(Q, K^T) -> Q/DQ (s_qk) -> Mul(scale) -> Q/DQ (s_scores)). Bit
 * TT_MHSA_S8_ACC_Q/K/V/O/QK of acc_stages makes that step round twice, with
 * B = TT_MHSA_S8_ACC_BIAS_BITS (16):
 * @code
 *   q1  = clamp8(zp_acc + requant(acc, mult[n], shift[n]))    stage 1: q_/k_/v_/o_ and
 *                                                             score_ become s_in s_w / s_acc
 *                                                             (bq/bk/bv/bo are then NULL)
 *   out = clamp8(zp_out + requant((q1 - zp_acc) 2^B + b2[n], X2_mult, X2_shift))
 * @endcode
 * X2_mult/X2_shift = s_acc / (2^B s_out) (scores: s_qk scale / (2^B s_scores)),
 * per tensor; b2 = round_half_away(b / s_acc 2^B), the bias in units of s_acc / 2^B
 * (q2_bias ... o2_bias; NULL: no bias, b2 = 0, and the scores never have one).
 * |(q1 - zp_acc) 2^B| <= 65280, so |b2| < 2^31 - 65280 keeps the sum in int32
 * (checked offline). requant(d 2^B, M / 2^B) = requant(d, M): without a bias
 * this is exactly clamp8(zp_out + requant(q1 - zp_acc, s_acc / s_out)). FWSA
 * never forms Q, K or Q K^T: with fuse_qk the Q, K and QK bits must be 0 (the
 * scores keep their single rounding, departing from the exported rounding
 * points there; tvm_tiny.ir.mhsa_s8.lower_s8 drops q_acc/k_acc/qk_acc); V and O
 * may be two-step. The extra requantization is per output element, not per MAC.
 *
 * Depth-first tiling as in tt_mhsa.h: per head, K_h and V_h^T go to scratch,
 * then per block of X query rows the scores, softmax and context; the
 * H x S x S map never exists. The out-projection sums over heads exactly in
 * int32 and is requantized once: either accumulated head by head into an int32
 * y [S][E_out] (accumulator mode), or, when smaller, run at the end from the
 * int8 context of all heads [S][H*P] one block of rows at a time (context
 * mode); see tt_mhsa_s8_get_buffer_size(). X = rows_per_block rounded up to
 * even (rows go in pairs), at most S.
 *
 * Layouts (C order; produced offline by
 * tvm_tiny.codegen.mhsa_s8_layout.arrange_s8). Weight rows are zero-padded to
 * n4 = n rounded up to a multiple of 4, and every group of 4 bytes is stored
 * as [w0, w2, w1, w3] so that Arm's SXTB16 yields the natural int16 pairs
 * (w0, w1), (w2, w3):
 *
 * | field       | type     | layout          | meaning                               |
 * |-------------|----------|-----------------|---------------------------------------|
 * | wq, wk, wv  | int8     | [H][P][E4]      | row (h, p) = column h*P+p of W        |
 * | wf          | int8     | [H][E+1][EK]    | row c = column c of Wf_h (fused)      |
 * | wo          | int8     | [H][E_out][P4]  | row (h, o) = Wo[h*P .. h*P+P-1][o]    |
 * | bq, bk, bv  | int32    | [H][P]          | bias / (s_x s_w[n]), or NULL          |
 * | bf          | int32    | [H][E+1]        | fused bias, or NULL                   |
 * | bo          | int32    | [E_out]         | bias / (s_ctx s_wo[o]), or NULL       |
 * | q_, k_, v_  | int32    | [H][P]          | mult/shift of s_x s_w[n] / s_out      |
 * | t_          | int32    | [H]             | mult/shift of the int16 T (fused)     |
 * | score_      | int32    | [H]             | mult/shift of the scores              |
 * | o_          | int32    | [E_out]         | mult/shift of s_ctx s_wo[o] / s_y     |
 * | softmax_lut | uint16   | [256]           | round(2^15 exp(-s_scores d))          |
 * | q2_bias ... | int32    | [H][P]          | two-step stage-2 bias b2, or NULL     |
 * | o2_bias     | int32    | [E_out]         | two-step stage-2 bias b2, or NULL     |
 *
 * EK = E+1 rounded up to a multiple of 4. Every weight array and the scratch
 * must be 4-byte aligned.
 *
 * Variants (same symbols; link exactly one of the first two):
 * - mhsa/tt_mhsa_s8_reference.c: portable C reference, plain loops (tests).
 * - mhsa/tt_mhsa_s8.c: the production kernel: 2x2 register tiles over int16
 *   operands through tt_simd.h: SMLAD on Cortex-M with the DSP extension, the
 *   PULP 2- and 4-way dot products on GAP9 (with TT_MHSA_S8_SDOT4, the unfused
 *   Q/K/V projections use int8 x int8 4-way dot products), portable C
 *   elsewhere.
 * - mhsa/tt_mhsa_s8_cluster.c: heads split across a cluster (tt_cluster.h) on
 *   top of either.
 */
#ifndef TT_MHSA_S8_H
#define TT_MHSA_S8_H

#include <stdint.h>

#include "tt_mhsa.h"
#include "tt_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Largest S, E, P, E_out and H*P: keeps every int32 sum of the kernel exact. */
#define TT_MHSA_S8_MAX_DIM 32767

/** Fixed-point bits of the stage-2 bias of a two-step requantization (B). */
#define TT_MHSA_S8_ACC_BIAS_BITS 16

/** Bits of tt_mhsa_s8_params.acc_stages: the steps requantized twice. */
#define TT_MHSA_S8_ACC_Q 1   /**< Q projection (not with fuse_qk) */
#define TT_MHSA_S8_ACC_K 2   /**< K projection (not with fuse_qk) */
#define TT_MHSA_S8_ACC_V 4   /**< V projection */
#define TT_MHSA_S8_ACC_O 8   /**< out-projection */
#define TT_MHSA_S8_ACC_QK 16 /**< scores: Q K^T, then the attention scale (not with fuse_qk) */

/** @brief int8 MHSA parameters, in the layouts of the table in the file comment.
 *  The pointers of the unused Q/K variant must be NULL. The fields from
 *  acc_stages on (two-step requantizations) were appended to the end: zero /
 *  NULL (e.g. left out of a designated initializer) means single rounding
 *  everywhere. */
typedef struct {
  const int8_t *wq;           /**< [H][P][E4], NULL when fuse_qk. */
  const int8_t *wk;           /**< [H][P][E4], NULL when fuse_qk. */
  const int8_t *wf;           /**< [H][E+1][EK], NULL when !fuse_qk. */
  const int8_t *wv;           /**< [H][P][E4]. */
  const int8_t *wo;           /**< [H][E_out][P4]. */
  const int32_t *bq;          /**< [H][P] or NULL; NULL when fuse_qk. */
  const int32_t *bk;          /**< [H][P] or NULL; NULL when fuse_qk. */
  const int32_t *bf;          /**< [H][E+1] or NULL; NULL when !fuse_qk. */
  const int32_t *bv;          /**< [H][P] or NULL. */
  const int32_t *bo;          /**< [E_out] or NULL. */
  const int32_t *q_mult;      /**< [H][P], NULL when fuse_qk. */
  const int32_t *q_shift;     /**< [H][P], NULL when fuse_qk. */
  const int32_t *k_mult;      /**< [H][P], NULL when fuse_qk. */
  const int32_t *k_shift;     /**< [H][P], NULL when fuse_qk. */
  const int32_t *t_mult;      /**< [H], NULL when !fuse_qk. */
  const int32_t *t_shift;     /**< [H], NULL when !fuse_qk. */
  const int32_t *v_mult;      /**< [H][P]. */
  const int32_t *v_shift;     /**< [H][P]. */
  const int32_t *score_mult;  /**< [H]. */
  const int32_t *score_shift; /**< [H]. */
  const int32_t *o_mult;      /**< [E_out]. */
  const int32_t *o_shift;     /**< [E_out]. */
  const uint16_t *softmax_lut; /**< [256]. */
  int32_t ctx_mult;           /**< mult of s_probs s_v / s_ctx. */
  int32_t ctx_shift;          /**< shift of s_probs s_v / s_ctx. */
  int32_t probs_mult;         /**< Gm, 1 .. 65536: 1 / s_probs ~= Gm / 2^g. */
  int32_t probs_shift;        /**< g, 0 .. 16, with S << (15 + g) <= 2^31. */
  int32_t fused_one;          /**< kappa, 0 .. 255: the constant key column (fused). */
  int32_t x_zero_point;
  int32_t q_zero_point;
  int32_t k_zero_point;
  int32_t v_zero_point;
  int32_t scores_zero_point;
  int32_t probs_zero_point;
  int32_t ctx_zero_point;
  int32_t y_zero_point;
  int32_t acc_stages;         /**< TT_MHSA_S8_ACC_* bits; 0: one rounding everywhere. */
  int32_t q2_mult;            /**< stage 2 of Q: s_q_acc / (2^B s_q) (bit ACC_Q). */
  int32_t q2_shift;
  int32_t q_acc_zero_point;   /**< zero point of the stage-1 Q (bit ACC_Q). */
  int32_t k2_mult;            /**< likewise K (bit ACC_K). */
  int32_t k2_shift;
  int32_t k_acc_zero_point;
  int32_t v2_mult;            /**< likewise V (bit ACC_V). */
  int32_t v2_shift;
  int32_t v_acc_zero_point;
  int32_t o2_mult;            /**< likewise the output y (bit ACC_O). */
  int32_t o2_shift;
  int32_t o_acc_zero_point;
  int32_t score2_mult;        /**< stage 2 of the scores: s_qk scale / (2^B s_scores). */
  int32_t score2_shift;
  int32_t qk_acc_zero_point;  /**< zero point of the stage-1 Q K^T (bit ACC_QK). */
  const int32_t *q2_bias;     /**< [H][P] or NULL (bit ACC_Q only). */
  const int32_t *k2_bias;     /**< [H][P] or NULL (bit ACC_K only). */
  const int32_t *v2_bias;     /**< [H][P] or NULL (bit ACC_V only). */
  const int32_t *o2_bias;     /**< [E_out] or NULL (bit ACC_O only). */
} tt_mhsa_s8_params;

/**
 * @brief Bytes of scratch memory tt_mhsa_s8() needs.
 *
 * With X = min(rows_per_block rounded up to even, S) and n4 = n rounded up to
 * a multiple of 4:
 * @code
 *   acc                             out-projection accumulator, the smaller of
 *       4 S E_out                   accumulator mode: int32 y [S][E_out]
 *       4 ceil(S H P / 4) + 4 X E_out  context mode: int8 context of all heads
 *                                   [S][H*P], int32 y of one block [X][E_out]
 * + 2 S P4    (fused: 2 S EK)       K_h        (fused: [X - zp_x | kappa], all rows)
 * + 2 P S4                          V_h^T
 * + 2 X E4    (fused: 2 X EK)       x block    (fused: int16 T block)
 * + 2 X P4                          Q block, then context block
 * + 4 ceil(X S / 4)                 int8 score block
 * + 2 X S4                          softmax output block
 * + 4 max(E4, P4) (fused: EK, P4)   two weight rows widened to int16
 * @endcode
 * Context mode is used when its accumulator is strictly smaller. The size is
 * independent of H except for the context (one head is live at a time).
 * Mirrored by tvm_tiny.codegen.mhsa_s8_layout.scratch_bytes_s8.
 *
 * @return the size in bytes (> 0), or TT_ARG_ERROR (< 0) if a pointer is NULL,
 *         a field is out of range (a dimension above TT_MHSA_S8_MAX_DIM
 *         included), or the size does not fit in int32_t.
 */
int32_t tt_mhsa_s8_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg);

/**
 * @brief Bytes of the int8 context [S][H*P] at the start of the scratch in
 *        context mode (S*H*P rounded up to a multiple of 4); 0 in accumulator
 *        mode, where the scratch starts with the int32 y [S][E_out].
 * @return >= 0, or TT_ARG_ERROR as tt_mhsa_s8_get_buffer_size().
 */
int32_t tt_mhsa_s8_context_bytes(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg);

/**
 * @brief int8 multi-head self-attention of one batch item, depth-first tiled.
 *
 * @param[in]  dims           layer shape
 * @param[in]  cfg            kernel config (block size, FWSA on/off)
 * @param[in]  p              parameters in the documented layouts
 * @param[in]  x              input, int8 [S][E]
 * @param[out] y              output, int8 [S][E_out]; must not overlap x or scratch
 * @param[in,out] scratch     working memory, at least tt_mhsa_s8_get_buffer_size()
 *                            bytes, 4-byte aligned; contents on entry ignored
 * @param[in]  scratch_bytes  size of `scratch` in bytes
 * @return TT_OK;
 *         TT_ARG_ERROR on NULL pointers, bad dims or config, a Q/K pointer set
 *         that does not match `fuse_qk`, unaligned weights or scratch, zero
 *         points outside [-128, 127], probs_mult/probs_shift out of range,
 *         acc_stages with unknown bits (or Q/K/QK bits with fuse_qk), a stage-2
 *         shift outside -31 .. 30, a stage-2 bias without its bit, or
 *         overlapping x, y and scratch;
 *         TT_SCRATCH_ERROR if scratch_bytes is too small.
 *         On error nothing is written.
 */
tt_status tt_mhsa_s8(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                     const tt_mhsa_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                     int32_t scratch_bytes);

/**
 * @brief The head loop of tt_mhsa_s8() alone: heads h_first, h_first + h_step,
 *        ... < H, without the final requantization.
 *
 * Accumulator mode (tt_mhsa_s8_context_bytes() == 0): adds each head's share
 * of the out-projection into the int32 y [S][E_out] at the start of the
 * scratch, which the caller initialises (to bo, or to 0 for partial sums).
 * Context mode: writes each head's int8 context columns into @p context
 * ([S][H*P]; NULL: the start of this scratch).
 * Parallel drivers give each core its own scratch and heads, then call
 * tt_mhsa_s8_finish().
 *
 * @return TT_OK; TT_ARG_ERROR as tt_mhsa_s8() (y is not involved), or
 *         h_first < 0 or h_step < 1; TT_SCRATCH_ERROR as tt_mhsa_s8().
 */
tt_status tt_mhsa_s8_heads(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                           const tt_mhsa_s8_params *p, const int8_t *x, int8_t *scratch,
                           int32_t scratch_bytes, int32_t h_first, int32_t h_step,
                           int8_t *context);

/**
 * @brief Rows first .. last-1 of y (first even) after every head has run.
 *
 * Accumulator mode: y = clamp8(zp_y + requant(y32, o_mult[o], o_shift[o])) from
 * the int32 y at the start of @p scratch (which holds the sum of all heads
 * and bo). Context mode: the out-projection of those rows of @p context (NULL:
 * the start of @p scratch), using @p scratch's other buffers as workspace.
 * Arguments are trusted (checked by tt_mhsa_s8_heads()).
 */
void tt_mhsa_s8_finish(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                       const tt_mhsa_s8_params *p, int8_t *scratch, const int8_t *context,
                       int8_t *y, int32_t first, int32_t last);

/**
 * @brief Bytes of scratch tt_mhsa_s8_cluster() needs on @p cores cores:
 *        min(cores, H) * tt_mhsa_s8_get_buffer_size() (one head scratch per
 *        busy core; in accumulator mode each one's int32 y holds a partial sum).
 * @return the size in bytes (> 0), or TT_ARG_ERROR (< 0) as
 *         tt_mhsa_s8_get_buffer_size(), or cores < 1, or a size beyond int32_t.
 */
int32_t tt_mhsa_s8_cluster_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                                           int32_t cores);

/**
 * @brief tt_mhsa_s8() on a cluster of @p cores cores (tt_cluster.h port layer).
 *
 * Fork 1: core c < A = min(cores, H) runs heads c, c + A, ... into its own
 * int32 y (accumulator mode; core 0's starts at bo, the others at 0) or into
 * core 0's int8 context (context mode, disjoint columns).
 * Fork 2: each core takes a block of rows: adds the partial sums of cores
 * 1 .. A-1 into core 0's and requantizes (accumulator mode), or runs the
 * out-projection of those rows with its own scratch (context mode). Integer
 * sums are exact, so the result equals tt_mhsa_s8() bit for bit.
 *
 * @return TT_OK; TT_ARG_ERROR or TT_SCRATCH_ERROR as tt_mhsa_s8() (scratch sized
 *         by tt_mhsa_s8_cluster_get_buffer_size()), or cores outside
 *         1 .. TT_CLUSTER_MAX_CORES.
 */
tt_status tt_mhsa_s8_cluster(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                             const tt_mhsa_s8_params *p, const int8_t *x, int8_t *y,
                             int8_t *scratch, int32_t scratch_bytes, int32_t cores);

#ifdef __cplusplus
}
#endif

#endif /* TT_MHSA_S8_H */

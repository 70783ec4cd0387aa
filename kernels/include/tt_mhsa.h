/**
 * @file tt_mhsa.h
 * @brief Multi-head self-attention (MHSA) kernels of tvm_tiny.
 *
 * Notation: S sequence length, E embedding (input features), H heads,
 * P projection size per head, E_out output features. One call processes one
 * batch item x[S][E] -> y[S][E_out]; the caller loops over the batch.
 *
 * Semantics (ONNX style, row vectors times weights, x @ W + b):
 * @code
 *   Q = x Wq + bq,  K = x Wk + bk,  V = x Wv + bv      each [S][H*P]
 *   A_h = softmax_rows(scale * Q_h K_h^T)              head h = columns h*P .. h*P+P-1
 *   y = concat_h(A_h V_h) Wo + bo                      [S][E_out]
 * @endcode
 *
 * Two techniques keep RAM small (see DESIGN.md section 5):
 * - Depth-first tiling (DFT): per head, per block of `rows_per_block` query
 *   rows, the score rows are computed, soft-maxed in place, multiplied by V_h
 *   and accumulated into y. Neither the H x S x S attention map nor the full
 *   context matrix is ever stored.
 * - Fused-weight self-attention (FWSA, `fuse_qk`): the scores of head h are
 *   computed as (x Wf_h + bf_h) x^T with Wf_h = scale Wq_h Wk_h^T (E x E) and
 *   bf_h = scale bq_h Wk_h^T; the dropped bias terms are constant along a
 *   softmax row and cancel. Pays off in parameters when E < 2P.
 *
 * Weight layouts (float32, C order). The Python side (tvm_tiny/mhsa_weights.py,
 * `arrange_f32`) re-arranges the ONNX matrices offline so that every output
 * element of every stage is one contiguous dot product:
 *
 * | field | layout            | meaning                                        |
 * |-------|-------------------|------------------------------------------------|
 * | wq    | [H][P][E]         | wq[h][p][e] = Wq[e][h*P+p]                     |
 * | bq    | [H][P]            | bq[h][p]    = bq[h*P+p]                        |
 * | wk    | [H][P][E]         | wk[h][p][e] = Wk[e][h*P+p]                     |
 * | bk    | [H][P]            | bk[h][p]    = bk[h*P+p]                        |
 * | wf    | [H][E][E]         | wf[h][c][r] = scale * (Wq_h Wk_h^T)[r][c]      |
 * | bf    | [H][E]            | bf[h][c]    = scale * (bq_h Wk_h^T)[c]         |
 * | wv    | [H][P][E]         | wv[h][p][e] = Wv[e][h*P+p]                     |
 * | bv    | [H][P]            | bv[h][p]    = bv[h*P+p]                        |
 * | wo    | [H][E_out][P]     | wo[h][o][p] = Wo[h*P+p][o]                     |
 * | bo    | [E_out]           | bo[o]                                          |
 *
 * Every bias may be NULL, meaning a zero bias.
 *
 * Pruned weights (`sparse`): any of the five matrices wq, wk, wf, wv, wo may
 * instead be stored row-compressed (CSR over the rows of its layout above,
 * i.e. by output, the format of tt_linear.h, with 16-bit column indices):
 * its dense pointer is then NULL and its tt_csr_f32 in `sparse` is set. Each
 * output element becomes a dot product over the row's nonzeros only, summed
 * in the same (ascending column) order as the dense loop, so with finite
 * inputs the result equals the dense kernel's bit for bit (a skipped zero
 * term adds +-0). The code generator stores a matrix sparse only when that
 * is smaller, and the tuner may keep it dense (tvm_tiny/mhsa_weights.py).
 */
#ifndef TT_MHSA_H
#define TT_MHSA_H

#include <stdint.h>

#include "tt_status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Shape of one MHSA layer. All fields must be >= 1. */
typedef struct {
  int32_t seq;          /**< S: tokens per batch item. */
  int32_t embed;        /**< E: input features per token. */
  int32_t heads;        /**< H: attention heads. */
  int32_t proj;         /**< P: features per head (Q, K and V width). */
  int32_t out_features; /**< E_out: output features per token (columns of Wo). */
} tt_mhsa_dims;

/** @brief Kernel knobs (chosen by the code generator or the tuner). */
typedef struct {
  /** DFT block size x: query rows whose scores are held at once, >= 1.
   *  Values above S behave like S (and size the scratch like S). */
  int32_t rows_per_block;
  /** 1: FWSA, use `wf`/`bf`; 0: separate Q and K projections, use
   *  `wq`/`bq`/`wk`/`bk`. Any other value is an argument error. */
  int32_t fuse_qk;
} tt_mhsa_config;

/** @brief One weight matrix of R rows x C columns stored row-compressed (CSR).
 *
 *  The nonzeros of row r are (col_idx[z], values[z]) for z in
 *  row_ptr[r] .. row_ptr[r+1]-1, columns ascending; row_ptr[0] = 0 and
 *  row_ptr is non-decreasing (checked per call). Column indices must be < C
 *  (written offline, not re-checked). `row_ptr == NULL` means "not sparse". */
typedef struct {
  const int32_t *row_ptr;  /**< [R+1] start of each row's nonzeros, or NULL. */
  const uint16_t *col_idx; /**< [nnz] column of each nonzero (C <= 65535). */
  const float *values;     /**< [nnz] the nonzero weights. */
} tt_csr_f32;

/** @brief The row-compressed matrices of a pruned MHSA layer; rows and
 *  columns are those of the dense layouts (wq: R = H*P, C = E; wf: R = H*E,
 *  C = E; wo: R = H*E_out, C = P). A matrix whose row_ptr is NULL is dense. */
typedef struct {
  tt_csr_f32 wq;
  tt_csr_f32 wk;
  tt_csr_f32 wf;
  tt_csr_f32 wv;
  tt_csr_f32 wo;
} tt_mhsa_f32_sparse;

/** @brief float32 MHSA parameters, in the layouts of the table in the file
 *  comment. The pointers of the unused Q/K variant must be NULL. A matrix
 *  that is used is given either dense (its pointer here) or sparse (its
 *  entry in `*sparse`), never both. */
typedef struct {
  const float *wq; /**< [H][P][E], NULL when fuse_qk. */
  const float *bq; /**< [H][P] or NULL; NULL when fuse_qk. */
  const float *wk; /**< [H][P][E], NULL when fuse_qk. */
  const float *bk; /**< [H][P] or NULL; NULL when fuse_qk. */
  const float *wf; /**< [H][E][E], scale folded in; NULL when !fuse_qk. */
  const float *bf; /**< [H][E] or NULL, scale folded in; NULL when !fuse_qk. */
  const float *wv; /**< [H][P][E]. */
  const float *bv; /**< [H][P] or NULL. */
  const float *wo; /**< [H][E_out][P]. */
  const float *bo; /**< [E_out] or NULL. */
  /** Multiplies the Q K^T scores (usually 1/sqrt(P)). Used only when
   *  !fuse_qk; with fuse_qk it is already folded into wf and bf. */
  float scale;
  /** Row-compressed matrices, or NULL when every matrix is dense. */
  const tt_mhsa_f32_sparse *sparse;
} tt_mhsa_f32_params;

/**
 * @brief Bytes of scratch memory tt_mhsa_f32() needs.
 *
 * With x = min(rows_per_block, S), in floats:
 * - unfused: 2*S*P + x*P + x*S + x*P   (K_h, V_h^T, Q block, scores, context)
 * - fused:     S*P + x*E + x*S + x*P   (V_h^T, x Wf_h block, scores, context)
 *
 * times sizeof(float). The scratch holds one head at a time, so the size does
 * not grow with H.
 *
 * @param[in] dims  layer shape
 * @param[in] cfg   kernel config
 * @return the size in bytes (> 0), or TT_ARG_ERROR (< 0) if a pointer is NULL,
 *         a field is out of range, or a buffer size does not fit in int32_t.
 */
int32_t tt_mhsa_f32_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg);

/**
 * @brief float32 multi-head self-attention of one batch item, depth-first tiled.
 *
 * @param[in]  dims           layer shape
 * @param[in]  cfg            kernel config (block size, FWSA on/off)
 * @param[in]  p              weights in the documented layouts
 * @param[in]  x              input, [S][E]
 * @param[out] y              output, [S][E_out]; must not overlap x or scratch
 * @param[in,out] scratch     working memory, at least
 *                            tt_mhsa_f32_get_buffer_size() bytes, float aligned;
 *                            contents on entry are ignored, on exit undefined
 * @param[in]  scratch_bytes  size of `scratch` in bytes
 * @return TT_OK;
 *         TT_ARG_ERROR on NULL pointers, bad dims or config, a Q/K pointer set
 *         that does not match `fuse_qk`, a matrix given both dense and
 *         sparse (or neither), a sparse row_ptr that does not start at 0 or
 *         decreases, a column count above 65535 for a sparse matrix, or
 *         overlapping x, y and scratch;
 *         TT_SCRATCH_ERROR if scratch_bytes is too small.
 *         On error nothing is written.
 */
tt_status tt_mhsa_f32(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                      const tt_mhsa_f32_params *p, const float *x, float *y, float *scratch,
                      int32_t scratch_bytes);

/**
 * @brief The head loop of tt_mhsa_f32() alone: accumulate heads
 *        h_first, h_first + h_step, ... < H into y (y is NOT initialised).
 *
 * Parallel drivers give each core its own heads, its own y (or partial y)
 * and its own scratch of tt_mhsa_f32_get_buffer_size() bytes.
 *
 * @return TT_OK; TT_ARG_ERROR as tt_mhsa_f32(), or h_first < 0 or h_step < 1;
 *         TT_SCRATCH_ERROR as tt_mhsa_f32().
 */
tt_status tt_mhsa_f32_heads(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                            const tt_mhsa_f32_params *p, const float *x, float *y,
                            float *scratch, int32_t scratch_bytes, int32_t h_first,
                            int32_t h_step);

/**
 * @brief Bytes of scratch tt_mhsa_f32_cluster() needs on @p cores cores.
 *
 * With A = min(cores, H) active cores and B = tt_mhsa_f32_get_buffer_size():
 * A * B (one head scratch per core) + (A - 1) * S * E_out * sizeof(float)
 * (the partial outputs of cores 1 .. A-1; core 0 accumulates into y).
 *
 * @return the size in bytes (> 0), or TT_ARG_ERROR (< 0) as
 *         tt_mhsa_f32_get_buffer_size(), or cores < 1, or a size beyond int32_t.
 */
int32_t tt_mhsa_f32_cluster_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                                            int32_t cores);

/**
 * @brief tt_mhsa_f32() on a cluster of @p cores cores (tt_cluster.h port layer).
 *
 * Fork 1: core c computes heads c, c + A, ... (A = min(cores, H)) into y
 * (core 0, initialised with bo) or its partial output (initialised with 0).
 * Fork 2 (when A > 1): the cores add the partial outputs into y, each a
 * block of rows. The summation order differs from tt_mhsa_f32(), so results
 * agree within float rounding, not bit for bit.
 *
 * @return TT_OK; TT_ARG_ERROR or TT_SCRATCH_ERROR as tt_mhsa_f32() (scratch
 *         sized by tt_mhsa_f32_cluster_get_buffer_size()), or cores outside
 *         1 .. TT_CLUSTER_MAX_CORES.
 */
tt_status tt_mhsa_f32_cluster(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                              const tt_mhsa_f32_params *p, const float *x, float *y,
                              float *scratch, int32_t scratch_bytes, int32_t cores);

#ifdef __cplusplus
}
#endif

#endif /* TT_MHSA_H */

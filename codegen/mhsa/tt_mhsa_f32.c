/**
 * @file tt_mhsa_f32.c
 * @brief Portable C float32 multi-head self-attention: depth-first tiling,
 *        optional fused Q/K weights (FWSA). API and layouts: tt_mhsa.h.
 *
 * Loop structure (one batch item):
 * @code
 *   y = bo
 *   for h in heads:
 *     V_h^T = (x Wv_h + bv_h)^T                  [P][S]   scratch
 *     K_h   =  x Wk_h + bk_h        (unfused)    [S][P]   scratch
 *     for each block of X query rows (the last one may be shorter):
 *       unfused: q = scale (x_blk Wq_h + bq_h)   [X][P]
 *                s = q K_h^T                      [X][S]
 *       fused:   t = x_blk Wf_h + bf_h            [X][E]
 *                s = t x^T                        [X][S]
 *       s = softmax_rows(s)                       in place
 *       c = s V_h                                 [X][P]
 *       y[blk] += c Wo_h                          Wo_h = rows h*P .. h*P+P-1 of Wo
 * @endcode
 * Every product above is an "A times B transposed" product over row-major
 * operands (the weights are stored transposed offline), so all inner loops are
 * contiguous dot products; matmul_abt() runs them with a 2x2 register tile.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa.h"

/** Largest element count of any buffer, so that its byte size fits int32_t
 *  and every index below can be computed in int32_t without overflow. */
#define TT_MAX_ELEMS ((int64_t)INT32_MAX / (int64_t)sizeof(float))

/** Where matmul_abt() writes element (i, j) of its result, and how. */
typedef struct {
  float *c;           /**< element (i, j) is c[i * row_stride + j * col_stride] */
  int32_t row_stride; /**< in floats */
  int32_t col_stride; /**< in floats; != 1 stores the result transposed */
  const float *bias;  /**< added to column j, NULL = no bias */
  int32_t accumulate; /**< 1: c += result, 0: c = result */
} matmul_out;

static inline void store(const matmul_out *out, int32_t i, int32_t j, float acc) {
  float *dst = out->c + i * out->row_stride + j * out->col_stride;
  if (out->bias != NULL) {
    acc += out->bias[j];
  }
  if (out->accumulate) {
    acc += *dst;
  }
  *dst = acc;
}

/** a . b over n elements. */
static inline float dot_1x1(const float *a, const float *b, int32_t n) {
  float s = 0.0f;
  for (; n > 0; --n) {
    s += *a++ * *b++;
  }
  return s;
}

/** s[0] = a . b0, s[1] = a . b1: each element of a is loaded once for two MACs. */
static inline void dot_1x2(const float *a, const float *b0, const float *b1, int32_t n,
                           float s[2]) {
  float s0 = 0.0f;
  float s1 = 0.0f;
  for (; n > 0; --n) {
    const float av = *a++;
    s0 += av * *b0++;
    s1 += av * *b1++;
  }
  s[0] = s0;
  s[1] = s1;
}

/** 2x2 register tile, s[2 * r + c] = a_r . b_c: four loads feed four MACs. */
static inline void dot_2x2(const float *a0, const float *a1, const float *b0, const float *b1,
                           int32_t n, float s[4]) {
  float s00 = 0.0f;
  float s01 = 0.0f;
  float s10 = 0.0f;
  float s11 = 0.0f;
  for (; n > 0; --n) {
    const float x0 = *a0++;
    const float x1 = *a1++;
    const float w0 = *b0++;
    const float w1 = *b1++;
    s00 += x0 * w0;
    s01 += x0 * w1;
    s10 += x1 * w0;
    s11 += x1 * w1;
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s10;
  s[3] = s11;
}

/**
 * out(i, j) (+)= sum_k a[i * lda + k] * b[j * ldb + k] (+ bias[j]),
 * for i < m, j < n: C = A B^T with A [m][k] and B [n][k] read row by row.
 * Rows and columns are taken two at a time; an odd last row or column
 * falls back to the 1x2 and 1x1 dot products.
 */
static void matmul_abt(int32_t m, int32_t n, int32_t k, const float *a, int32_t lda,
                       const float *b, int32_t ldb, const matmul_out *out) {
  int32_t i = 0;
  for (; i + 2 <= m; i += 2) {
    const float *a0 = a + i * lda;
    const float *a1 = a0 + lda;
    int32_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const float *b0 = b + j * ldb;
      float s[4];
      dot_2x2(a0, a1, b0, b0 + ldb, k, s);
      store(out, i, j, s[0]);
      store(out, i, j + 1, s[1]);
      store(out, i + 1, j, s[2]);
      store(out, i + 1, j + 1, s[3]);
    }
    if (j < n) { /* odd last column: both rows against it */
      float s[2];
      dot_1x2(b + j * ldb, a0, a1, k, s);
      store(out, i, j, s[0]);
      store(out, i + 1, j, s[1]);
    }
  }
  if (i < m) { /* odd last row */
    const float *a0 = a + i * lda;
    int32_t j = 0;
    for (; j + 2 <= n; j += 2) {
      const float *b0 = b + j * ldb;
      float s[2];
      dot_1x2(a0, b0, b0 + ldb, k, s);
      store(out, i, j, s[0]);
      store(out, i, j + 1, s[1]);
    }
    if (j < n) {
      store(out, i, j, dot_1x1(a0, b + j * ldb, k));
    }
  }
}

/** Numerically stable softmax of one row, in place: subtract the maximum
 *  before expf so nothing overflows; the sum is >= 1 (the maximum gives 1). */
static void softmax_row(float *row, int32_t n) {
  float max = row[0];
  for (int32_t j = 1; j < n; ++j) {
    if (row[j] > max) {
      max = row[j];
    }
  }
  float sum = 0.0f;
  for (int32_t j = 0; j < n; ++j) {
    const float e = expf(row[j] - max);
    row[j] = e;
    sum += e;
  }
  const float inv_sum = 1.0f / sum;
  for (int32_t j = 0; j < n; ++j) {
    row[j] *= inv_sum;
  }
}

static void scale_in_place(float *v, int32_t n, float scale) {
  for (; n > 0; --n) {
    *v++ *= scale;
  }
}

static int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

/** 1 if a * b * c <= TT_MAX_ELEMS, for a, b, c >= 1 (no int64 overflow). */
static int product_fits(int32_t a, int32_t b, int32_t c) {
  const int64_t ab = (int64_t)a * b;
  return ab <= TT_MAX_ELEMS && ab * c <= TT_MAX_ELEMS;
}

/** Scratch size in floats (see tt_mhsa_f32_get_buffer_size), or -1 when the
 *  dims or config are invalid or a buffer would not fit in int32_t bytes. */
static int64_t scratch_floats(const tt_mhsa_dims *d, const tt_mhsa_config *cfg) {
  if (d == NULL || cfg == NULL) {
    return -1;
  }
  if (d->seq < 1 || d->embed < 1 || d->heads < 1 || d->proj < 1 || d->out_features < 1) {
    return -1;
  }
  if (cfg->rows_per_block < 1 || (cfg->fuse_qk != 0 && cfg->fuse_qk != 1)) {
    return -1;
  }
  /* x, y, wq/wk/wv, wo and (fused) wf: the largest arrays indexed below. */
  if (!product_fits(d->seq, d->embed, 1) || !product_fits(d->seq, d->out_features, 1) ||
      !product_fits(d->heads, d->proj, d->embed) ||
      !product_fits(d->heads, d->out_features, d->proj) ||
      (cfg->fuse_qk && !product_fits(d->heads, d->embed, d->embed))) {
    return -1;
  }
  const int64_t s = d->seq;
  const int64_t e = d->embed;
  const int64_t p = d->proj;
  const int64_t x = min_i32(cfg->rows_per_block, d->seq);
  const int64_t floats = cfg->fuse_qk ? s * p + x * e + x * s + x * p     /* V^T, t, scores, ctx */
                                      : 2 * s * p + x * p + x * s + x * p; /* K, V^T, q, ... */
  return floats <= TT_MAX_ELEMS ? floats : -1;
}

/** 1 if the byte ranges [a, a + a_bytes) and [b, b + b_bytes) intersect. */
static int overlaps(const void *a, int64_t a_bytes, const void *b, int64_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a;
  const uintptr_t b0 = (uintptr_t)b;
  return a0 < b0 + (uintptr_t)b_bytes && b0 < a0 + (uintptr_t)a_bytes;
}

/** 1 if the required weights are present and exactly one Q/K variant is given. */
static int params_valid(const tt_mhsa_f32_params *p, int32_t fuse_qk) {
  if (p == NULL || p->wv == NULL || p->wo == NULL) {
    return 0;
  }
  if (fuse_qk) {
    return p->wf != NULL && p->wq == NULL && p->bq == NULL && p->wk == NULL && p->bk == NULL;
  }
  return p->wq != NULL && p->wk != NULL && p->wf == NULL && p->bf == NULL;
}

int32_t tt_mhsa_f32_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg) {
  const int64_t floats = scratch_floats(dims, cfg);
  if (floats < 0) {
    return TT_ARG_ERROR;
  }
  return (int32_t)(floats * (int64_t)sizeof(float));
}

/** Checks of tt_mhsa_f32() and tt_mhsa_f32_heads(): TT_OK or the error to return. */
static tt_status check_args(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                            const tt_mhsa_f32_params *p, const float *x, const float *y,
                            const float *scratch, int32_t scratch_bytes) {
  const int64_t floats = scratch_floats(dims, cfg);
  if (floats < 0 || !params_valid(p, cfg->fuse_qk) || x == NULL || y == NULL ||
      scratch == NULL) {
    return TT_ARG_ERROR;
  }
  const int64_t need_bytes = floats * (int64_t)sizeof(float);
  if (scratch_bytes < need_bytes) {
    return TT_SCRATCH_ERROR;
  }
  const int64_t x_bytes = (int64_t)dims->seq * dims->embed * (int64_t)sizeof(float);
  const int64_t y_bytes = (int64_t)dims->seq * dims->out_features * (int64_t)sizeof(float);
  if (overlaps(x, x_bytes, y, y_bytes) || overlaps(x, x_bytes, scratch, need_bytes) ||
      overlaps(y, y_bytes, scratch, need_bytes)) {
    return TT_ARG_ERROR;
  }
  return TT_OK;
}

/** Accumulate heads h_first, h_first + h_step, ... < H into y (arguments already checked). */
static void mhsa_heads(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                       const tt_mhsa_f32_params *p, const float *x, float *y, float *scratch,
                       int32_t h_first, int32_t h_step) {
  const int32_t S = dims->seq;
  const int32_t E = dims->embed;
  const int32_t H = dims->heads;
  const int32_t P = dims->proj;
  const int32_t E_OUT = dims->out_features;
  const int fused = cfg->fuse_qk;
  const int32_t X = min_i32(cfg->rows_per_block, S); /* query rows per block */
  const int32_t T = fused ? E : P;                    /* width of the per-row query block */

  /* Scratch partition, in this order (sizes in floats):
   *   k_h     S*P   K_h [S][P], unfused only
   *   vt_h    P*S   V_h^T [P][S]
   *   qt      X*T   q block [X][P] (unfused) or t = x Wf_h + bf_h block [X][E] (fused)
   *   scores  X*S   score rows, then their softmax, [X][S]
   *   ctx     X*P   context block [X][P] */
  float *const k_h = scratch;
  float *const vt_h = fused ? scratch : k_h + S * P;
  float *const qt = vt_h + P * S;
  float *const scores = qt + X * T;
  float *const ctx = scores + X * S;

  for (int32_t h = h_first; h < H; h += h_step) {
    const float *wv_h = p->wv + h * P * E;
    const float *bv_h = p->bv != NULL ? p->bv + h * P : NULL;
    const float *wo_h = p->wo + h * E_OUT * P;

    /* V_h^T[p][j] = x_j . wv_h[p] + bv_h[p], stored transposed (column
     * stride S) so that each context element below is a dot product over
     * contiguous keys. */
    const matmul_out v_out = {vt_h, 1, S, bv_h, 0};
    matmul_abt(S, P, E, x, E, wv_h, E, &v_out);

    const float *wq_h = NULL;
    const float *bq_h = NULL;
    const float *wf_h = NULL;
    const float *bf_h = NULL;
    if (fused) {
      wf_h = p->wf + h * E * E;
      bf_h = p->bf != NULL ? p->bf + h * E : NULL;
    } else {
      wq_h = p->wq + h * P * E;
      bq_h = p->bq != NULL ? p->bq + h * P : NULL;
      const matmul_out k_out = {k_h, P, 1, p->bk != NULL ? p->bk + h * P : NULL, 0};
      matmul_abt(S, P, E, x, E, p->wk + h * P * E, E, &k_out);
    }

    for (int32_t i0 = 0; i0 < S; i0 += X) {
      const int32_t rows = min_i32(X, S - i0);
      const float *x_blk = x + i0 * E;
      const matmul_out s_out = {scores, S, 1, NULL, 0};
      if (fused) {
        /* t_i = x_i Wf_h + bf_h, s_ij = t_i . x_j (scale is folded into wf, bf). */
        const matmul_out t_out = {qt, E, 1, bf_h, 0};
        matmul_abt(rows, E, E, x_blk, E, wf_h, E, &t_out);
        matmul_abt(rows, S, E, qt, E, x, E, &s_out);
      } else {
        /* q_i = scale (x_i Wq_h + bq_h), s_ij = q_i . k_j: scaling the X*P
         * query elements is cheaper than scaling the X*S scores. */
        const matmul_out q_out = {qt, P, 1, bq_h, 0};
        matmul_abt(rows, P, E, x_blk, E, wq_h, E, &q_out);
        scale_in_place(qt, rows * P, p->scale);
        matmul_abt(rows, S, P, qt, P, k_h, P, &s_out);
      }
      for (int32_t r = 0; r < rows; ++r) {
        softmax_row(scores + r * S, S);
      }
      /* ctx_i[p] = a_i . V_h^T[p] */
      const matmul_out c_out = {ctx, P, 1, NULL, 0};
      matmul_abt(rows, P, S, scores, S, vt_h, S, &c_out);
      /* y_i[o] += ctx_i . wo_h[o] */
      const matmul_out y_out = {y + i0 * E_OUT, E_OUT, 1, NULL, 1};
      matmul_abt(rows, E_OUT, P, ctx, P, wo_h, P, &y_out);
    }
  }
}

tt_status tt_mhsa_f32_heads(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                            const tt_mhsa_f32_params *p, const float *x, float *y,
                            float *scratch, int32_t scratch_bytes, int32_t h_first,
                            int32_t h_step) {
  const tt_status status = check_args(dims, cfg, p, x, y, scratch, scratch_bytes);
  if (status != TT_OK) {
    return status;
  }
  if (h_first < 0 || h_step < 1) {
    return TT_ARG_ERROR;
  }
  mhsa_heads(dims, cfg, p, x, y, scratch, h_first, h_step);
  return TT_OK;
}

tt_status tt_mhsa_f32(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                      const tt_mhsa_f32_params *p, const float *x, float *y, float *scratch,
                      int32_t scratch_bytes) {
  /* Validate everything once, before the first write. */
  const tt_status status = check_args(dims, cfg, p, x, y, scratch, scratch_bytes);
  if (status != TT_OK) {
    return status;
  }
  const int32_t S = dims->seq;
  const int32_t E_OUT = dims->out_features;
  /* y = bo; every head then accumulates its share of ctx Wo into y. */
  for (int32_t i = 0; i < S; ++i) {
    float *y_row = y + i * E_OUT;
    for (int32_t o = 0; o < E_OUT; ++o) {
      y_row[o] = p->bo != NULL ? p->bo[o] : 0.0f;
    }
  }

  mhsa_heads(dims, cfg, p, x, y, scratch, 0, 1);
  return TT_OK;
}

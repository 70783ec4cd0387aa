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
 * contiguous dot products; matmul_abt() runs them with a register tile (2x2 by default; the
 * tile and the multiply-add form are compile-time variants, see below).
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

/* ---- compile-time variant: register tile and multiply-add form ------------------------------
 *
 * TT_MHSA_F32_TILE_ROWS x TT_MHSA_F32_TILE_COLS (1, 2 or 4 each) is the register tile of
 * matmul_abt(): that many rows of A against that many rows of B per pass over k, so each loaded
 * element feeds several multiply-adds. TT_MHSA_F32_FMA = 1 computes each multiply-add with one
 * fmaf() (a single VFMA on Cortex-M4/M7; a libm call on cores without an FPU), 0 with a
 * separate multiply and add (-std=c99 keeps GCC from contracting them).
 *
 * Without FMA every tile computes each output as the same sequential sum over k, so all tiles
 * give bit-identical results; FMA rounds once per multiply-add instead of twice. The tuner
 * (tvm_tiny/tuning) picks them per board; a build that selects a non-default variant writes
 * tt_mhsa_f32_config.h into the model's include path. Defaults: 2x2, no FMA. */
#if defined(__has_include)
#if __has_include("tt_mhsa_f32_config.h")
#include "tt_mhsa_f32_config.h"
#endif
#endif
#ifndef TT_MHSA_F32_TILE_ROWS
#define TT_MHSA_F32_TILE_ROWS 2
#endif
#ifndef TT_MHSA_F32_TILE_COLS
#define TT_MHSA_F32_TILE_COLS 2
#endif
#ifndef TT_MHSA_F32_FMA
#define TT_MHSA_F32_FMA 0
#endif
#if (TT_MHSA_F32_TILE_ROWS != 1 && TT_MHSA_F32_TILE_ROWS != 2 && TT_MHSA_F32_TILE_ROWS != 4) || \
    (TT_MHSA_F32_TILE_COLS != 1 && TT_MHSA_F32_TILE_COLS != 2 && TT_MHSA_F32_TILE_COLS != 4)
#error "TT_MHSA_F32_TILE_ROWS and TT_MHSA_F32_TILE_COLS must be 1, 2 or 4"
#endif
#if TT_MHSA_F32_FMA
#define TT_MAC(acc, x, w) ((acc) = fmaf((x), (w), (acc)))
#else
#define TT_MAC(acc, x, w) ((acc) += (x) * (w))
#endif

/** a . b over n elements. */
static inline float dot_1x1(const float *a, const float *b, int32_t n) {
  float s = 0.0f;
  for (; n > 0; --n) {
    TT_MAC(s, *a++, *b++);
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
    TT_MAC(s0, av, *b0++);
    TT_MAC(s1, av, *b1++);
  }
  s[0] = s0;
  s[1] = s1;
}

/** s[c] = a . b[c] for c < 4: five loads feed four MACs. */
static inline void dot_1x4(const float *a, const float *const b[4], int32_t n, float s[4]) {
  const float *b0 = b[0];
  const float *b1 = b[1];
  const float *b2 = b[2];
  const float *b3 = b[3];
  float s0 = 0.0f;
  float s1 = 0.0f;
  float s2 = 0.0f;
  float s3 = 0.0f;
  for (; n > 0; --n) {
    const float av = *a++;
    TT_MAC(s0, av, *b0++);
    TT_MAC(s1, av, *b1++);
    TT_MAC(s2, av, *b2++);
    TT_MAC(s3, av, *b3++);
  }
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
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
    TT_MAC(s00, x0, w0);
    TT_MAC(s01, x0, w1);
    TT_MAC(s10, x1, w0);
    TT_MAC(s11, x1, w1);
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s10;
  s[3] = s11;
}

#if TT_MHSA_F32_TILE_ROWS * TT_MHSA_F32_TILE_COLS >= 8
/** 2x4 register tile, s[4 * r + c] = a_r . b_c: six loads feed eight MACs. */
static inline void dot_2x4(const float *const a[2], const float *const b[4], int32_t n,
                           float s[8]) {
  const float *a0 = a[0];
  const float *a1 = a[1];
  const float *b0 = b[0];
  const float *b1 = b[1];
  const float *b2 = b[2];
  const float *b3 = b[3];
  float s00 = 0.0f;
  float s01 = 0.0f;
  float s02 = 0.0f;
  float s03 = 0.0f;
  float s10 = 0.0f;
  float s11 = 0.0f;
  float s12 = 0.0f;
  float s13 = 0.0f;
  for (; n > 0; --n) {
    const float x0 = *a0++;
    const float x1 = *a1++;
    const float w0 = *b0++;
    const float w1 = *b1++;
    const float w2 = *b2++;
    const float w3 = *b3++;
    TT_MAC(s00, x0, w0);
    TT_MAC(s01, x0, w1);
    TT_MAC(s02, x0, w2);
    TT_MAC(s03, x0, w3);
    TT_MAC(s10, x1, w0);
    TT_MAC(s11, x1, w1);
    TT_MAC(s12, x1, w2);
    TT_MAC(s13, x1, w3);
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s02;
  s[3] = s03;
  s[4] = s10;
  s[5] = s11;
  s[6] = s12;
  s[7] = s13;
}
#endif

#if TT_MHSA_F32_TILE_ROWS == 4 && TT_MHSA_F32_TILE_COLS == 4
/** 4x4 register tile, s[4 * r + c] = a_r . b_c: eight loads feed sixteen MACs. */
static inline void dot_4x4(const float *const a[4], const float *const b[4], int32_t n,
                           float s[16]) {
  const float *a0 = a[0];
  const float *a1 = a[1];
  const float *a2 = a[2];
  const float *a3 = a[3];
  const float *b0 = b[0];
  const float *b1 = b[1];
  const float *b2 = b[2];
  const float *b3 = b[3];
  float s00 = 0.0f, s01 = 0.0f, s02 = 0.0f, s03 = 0.0f;
  float s10 = 0.0f, s11 = 0.0f, s12 = 0.0f, s13 = 0.0f;
  float s20 = 0.0f, s21 = 0.0f, s22 = 0.0f, s23 = 0.0f;
  float s30 = 0.0f, s31 = 0.0f, s32 = 0.0f, s33 = 0.0f;
  for (; n > 0; --n) {
    const float x0 = *a0++;
    const float x1 = *a1++;
    const float x2 = *a2++;
    const float x3 = *a3++;
    const float w0 = *b0++;
    const float w1 = *b1++;
    const float w2 = *b2++;
    const float w3 = *b3++;
    TT_MAC(s00, x0, w0);
    TT_MAC(s01, x0, w1);
    TT_MAC(s02, x0, w2);
    TT_MAC(s03, x0, w3);
    TT_MAC(s10, x1, w0);
    TT_MAC(s11, x1, w1);
    TT_MAC(s12, x1, w2);
    TT_MAC(s13, x1, w3);
    TT_MAC(s20, x2, w0);
    TT_MAC(s21, x2, w1);
    TT_MAC(s22, x2, w2);
    TT_MAC(s23, x2, w3);
    TT_MAC(s30, x3, w0);
    TT_MAC(s31, x3, w1);
    TT_MAC(s32, x3, w2);
    TT_MAC(s33, x3, w3);
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s02;
  s[3] = s03;
  s[4] = s10;
  s[5] = s11;
  s[6] = s12;
  s[7] = s13;
  s[8] = s20;
  s[9] = s21;
  s[10] = s22;
  s[11] = s23;
  s[12] = s30;
  s[13] = s31;
  s[14] = s32;
  s[15] = s33;
}
#endif

#if defined(__GNUC__)
#define TT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TT_ALWAYS_INLINE inline
#endif

/**
 * One register tile: the products of `rows` (1, 2 or 4) rows of A starting at a and `cols`
 * (1, 2 or 4) rows of B starting at b, stored at out(i, j). Always inlined with constant rows
 * and cols, so each call site compiles to one fixed kernel. A tile with more rows than columns
 * runs the kernel with the roles of A and B swapped (the same sums).
 */
static TT_ALWAYS_INLINE void tile(const int32_t rows, const int32_t cols, int32_t i, int32_t j,
                                  int32_t k, const float *a, int32_t lda, const float *b,
                                  int32_t ldb, const matmul_out *out) {
  /* Only the first rows (cols) entries are used; constant indices let the compiler keep
   * these arrays and s in registers once the call is inlined. */
  const float *const ar[4] = {a, a + lda, a + 2 * lda, a + 3 * lda};
  const float *const br[4] = {b, b + ldb, b + 2 * ldb, b + 3 * ldb};
  float s[16];
  const int transposed = rows > cols;
  const int32_t lo = transposed ? cols : rows; /* kernel dot_<lo>x<hi> */
  const int32_t hi = transposed ? rows : cols;
  const float *const *p = transposed ? br : ar;
  const float *const *q = transposed ? ar : br;
  if (lo == 1 && hi == 1) {
    s[0] = dot_1x1(p[0], q[0], k);
  } else if (lo == 1 && hi == 2) {
    dot_1x2(p[0], q[0], q[1], k, s);
  } else if (lo == 1) {
    dot_1x4(p[0], q, k, s);
  } else if (hi == 2) {
    dot_2x2(p[0], p[1], q[0], q[1], k, s);
  }
#if TT_MHSA_F32_TILE_ROWS * TT_MHSA_F32_TILE_COLS >= 8
  else if (lo == 2) {
    dot_2x4(p, q, k, s);
  }
#endif
#if TT_MHSA_F32_TILE_ROWS == 4 && TT_MHSA_F32_TILE_COLS == 4
  else {
    dot_4x4(p, q, k, s);
  }
#endif
  /* s holds sum(r, c) at [r * hi + c], or at [c * hi + r] when transposed. Spelled out (not
   * a loop) so that every store folds to a constant index. */
#define TT_STORE(r, c)                                                                     \
  if ((r) < rows && (c) < cols) {                                                          \
    store(out, i + (r), j + (c), transposed ? s[(c) * hi + (r)] : s[(r) * hi + (c)]);      \
  }
  TT_STORE(0, 0) TT_STORE(0, 1) TT_STORE(0, 2) TT_STORE(0, 3)
  TT_STORE(1, 0) TT_STORE(1, 1) TT_STORE(1, 2) TT_STORE(1, 3)
  TT_STORE(2, 0) TT_STORE(2, 1) TT_STORE(2, 2) TT_STORE(2, 3)
  TT_STORE(3, 0) TT_STORE(3, 1) TT_STORE(3, 2) TT_STORE(3, 3)
#undef TT_STORE
}

/** The tiles of `rows` rows of A from row i against every row of B: TT_MHSA_F32_TILE_COLS
 *  columns at a time, then the leftover columns 2 and 1 at a time. */
static TT_ALWAYS_INLINE void row_panel(const int32_t rows, int32_t i, int32_t n, int32_t k,
                                       const float *a, int32_t lda, const float *b,
                                       int32_t ldb, const matmul_out *out) {
  int32_t j = 0;
  for (; j + TT_MHSA_F32_TILE_COLS <= n; j += TT_MHSA_F32_TILE_COLS) {
    tile(rows, TT_MHSA_F32_TILE_COLS, i, j, k, a, lda, b + j * ldb, ldb, out);
  }
  if (TT_MHSA_F32_TILE_COLS == 4 && j + 2 <= n) {
    tile(rows, 2, i, j, k, a, lda, b + j * ldb, ldb, out);
    j += 2;
  }
  if (j < n) {
    tile(rows, 1, i, j, k, a, lda, b + j * ldb, ldb, out);
  }
}

/**
 * out(i, j) (+)= sum_k a[i * lda + k] * b[j * ldb + k] (+ bias[j]),
 * for i < m, j < n: C = A B^T with A [m][k] and B [n][k] read row by row.
 * Rows go TT_MHSA_F32_TILE_ROWS at a time, then the leftover rows 2 and 1 at a time.
 */
static void matmul_abt(int32_t m, int32_t n, int32_t k, const float *a, int32_t lda,
                       const float *b, int32_t ldb, const matmul_out *out) {
  int32_t i = 0;
  for (; i + TT_MHSA_F32_TILE_ROWS <= m; i += TT_MHSA_F32_TILE_ROWS) {
    row_panel(TT_MHSA_F32_TILE_ROWS, i, n, k, a + i * lda, lda, b, ldb, out);
  }
  if (TT_MHSA_F32_TILE_ROWS == 4 && i + 2 <= m) {
    row_panel(2, i, n, k, a + i * lda, lda, b, ldb, out);
    i += 2;
  }
  if (i < m) {
    row_panel(1, i, n, k, a + i * lda, lda, b, ldb, out);
  }
}

/* ---- pruned weights: B row-compressed (tt_csr_f32) ------------------------------------------
 *
 * One CSR row holds the nonzeros of one output (one row of B). Its index and value streams are
 * read once per block of up to four rows of A, each loaded nonzero feeding that many multiply-
 * adds; the sum over a row's nonzeros runs in ascending column order, as the dense loop's over
 * k, so the result is the dense kernel's with the zero terms (+-0) left out. */

/** out(i + r, j) for r < rows (1, 2 or 4): rows of A from a, times CSR row `row` of b. */
static TT_ALWAYS_INLINE void csr_tile(const int32_t rows, int32_t i, int32_t j, const float *a,
                                      int32_t lda, const tt_csr_f32 *b, int32_t row,
                                      const matmul_out *out) {
  const float *const a0 = a;
  const float *const a1 = rows > 1 ? a + lda : a;
  const float *const a2 = rows > 2 ? a + 2 * lda : a;
  const float *const a3 = rows > 3 ? a + 3 * lda : a;
  const int32_t z_end = b->row_ptr[row + 1];
  float s0 = 0.0f;
  float s1 = 0.0f;
  float s2 = 0.0f;
  float s3 = 0.0f;
  for (int32_t z = b->row_ptr[row]; z < z_end; ++z) {
    const int32_t c = b->col_idx[z];
    const float w = b->values[z];
    TT_MAC(s0, a0[c], w);
    if (rows > 1) {
      TT_MAC(s1, a1[c], w);
    }
    if (rows > 2) {
      TT_MAC(s2, a2[c], w);
      TT_MAC(s3, a3[c], w);
    }
  }
  store(out, i, j, s0);
  if (rows > 1) {
    store(out, i + 1, j, s1);
  }
  if (rows > 2) {
    store(out, i + 2, j, s2);
    store(out, i + 3, j, s3);
  }
}

/** out(i, j) (+)= sum over the nonzeros z of CSR row row0 + j of b: a[i * lda + col_idx[z]] *
 *  values[z] (+ bias[j]), for i < m, j < n: matmul_abt() with B row-compressed. */
static void matmul_a_csr(int32_t m, int32_t n, const float *a, int32_t lda, const tt_csr_f32 *b,
                         int32_t row0, const matmul_out *out) {
  for (int32_t j = 0; j < n; ++j) {
    int32_t i = 0;
    for (; i + 4 <= m; i += 4) {
      csr_tile(4, i, j, a + i * lda, lda, b, row0 + j, out);
    }
    if (i + 2 <= m) {
      csr_tile(2, i, j, a + i * lda, lda, b, row0 + j, out);
      i += 2;
    }
    if (i < m) {
      csr_tile(1, i, j, a + i * lda, lda, b, row0 + j, out);
    }
  }
}

/** One weight matrix as the kernel sees it: dense [rows][cols] or row-compressed. */
typedef struct {
  const float *dense;     /**< row-major [rows][cols], or NULL */
  const tt_csr_f32 *csr;  /**< row-compressed, or NULL */
} weight_ref;

/** The matrix `field` of p: its dense pointer, or its CSR form when p->sparse holds one. */
#define TT_WEIGHT(p, field)                                                                  \
  ((weight_ref){(p)->field,                                                                \
                ((p)->sparse != NULL && (p)->sparse->field.row_ptr != NULL) ? &(p)->sparse->field \
                                                                            : NULL})

/** out(i, j) (+)= a_i . row (row0 + j) of w, for i < m, j < n; rows of w are k long. */
static void matmul_aw(int32_t m, int32_t n, int32_t k, const float *a, int32_t lda,
                      weight_ref w, int32_t row0, const matmul_out *out) {
  if (w.csr != NULL) {
    matmul_a_csr(m, n, a, lda, w.csr, row0, out);
  } else {
    matmul_abt(m, n, k, a, lda, w.dense + row0 * k, k, out);
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

/** 1 if w is absent (used = 0) or, when used, given exactly once: dense, or as a CSR matrix
 *  of `rows` rows and at most 65535 columns whose row_ptr starts at 0 and never decreases. */
static int weight_valid(weight_ref w, int used, int32_t rows, int32_t cols) {
  if (!used || w.csr == NULL) {
    return used ? w.dense != NULL : (w.dense == NULL && w.csr == NULL);
  }
  if (w.dense != NULL || cols > UINT16_MAX || w.csr->row_ptr[0] != 0) {
    return 0;
  }
  for (int32_t r = 0; r < rows; ++r) {
    if (w.csr->row_ptr[r + 1] < w.csr->row_ptr[r]) {
      return 0;
    }
  }
  return w.csr->row_ptr[rows] == 0 || (w.csr->col_idx != NULL && w.csr->values != NULL);
}

/** 1 if the required weights are present and exactly one Q/K variant is given. */
static int params_valid(const tt_mhsa_dims *d, const tt_mhsa_f32_params *p, int32_t fuse_qk) {
  if (p == NULL) {
    return 0;
  }
  const int32_t hp = d->heads * d->proj;
  const int32_t he = d->heads * d->embed;
  const int32_t ho = d->heads * d->out_features;
  const int fused = fuse_qk != 0;
  return weight_valid(TT_WEIGHT(p, wv), 1, hp, d->embed) &&
         weight_valid(TT_WEIGHT(p, wo), 1, ho, d->proj) &&
         weight_valid(TT_WEIGHT(p, wf), fused, he, d->embed) &&
         weight_valid(TT_WEIGHT(p, wq), !fused, hp, d->embed) &&
         weight_valid(TT_WEIGHT(p, wk), !fused, hp, d->embed) &&
         (fused ? p->bq == NULL && p->bk == NULL : p->bf == NULL);
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
  if (floats < 0 || !params_valid(dims, p, cfg->fuse_qk) || x == NULL || y == NULL ||
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

  /* Each weight matrix is dense or row-compressed; matmul_aw() takes either, row h*n being the
   * first row of head h's block of n rows. */
  const weight_ref wq = TT_WEIGHT(p, wq);
  const weight_ref wk = TT_WEIGHT(p, wk);
  const weight_ref wf = TT_WEIGHT(p, wf);
  const weight_ref wv = TT_WEIGHT(p, wv);
  const weight_ref wo = TT_WEIGHT(p, wo);

  for (int32_t h = h_first; h < H; h += h_step) {
    const float *bv_h = p->bv != NULL ? p->bv + h * P : NULL;

    /* V_h^T[p][j] = x_j . wv_h[p] + bv_h[p], stored transposed (column
     * stride S) so that each context element below is a dot product over
     * contiguous keys. */
    const matmul_out v_out = {vt_h, 1, S, bv_h, 0};
    matmul_aw(S, P, E, x, E, wv, h * P, &v_out);

    const float *bq_h = NULL;
    const float *bf_h = NULL;
    if (fused) {
      bf_h = p->bf != NULL ? p->bf + h * E : NULL;
    } else {
      bq_h = p->bq != NULL ? p->bq + h * P : NULL;
      const matmul_out k_out = {k_h, P, 1, p->bk != NULL ? p->bk + h * P : NULL, 0};
      matmul_aw(S, P, E, x, E, wk, h * P, &k_out);
    }

    for (int32_t i0 = 0; i0 < S; i0 += X) {
      const int32_t rows = min_i32(X, S - i0);
      const float *x_blk = x + i0 * E;
      const matmul_out s_out = {scores, S, 1, NULL, 0};
      if (fused) {
        /* t_i = x_i Wf_h + bf_h, s_ij = t_i . x_j (scale is folded into wf, bf). */
        const matmul_out t_out = {qt, E, 1, bf_h, 0};
        matmul_aw(rows, E, E, x_blk, E, wf, h * E, &t_out);
        matmul_abt(rows, S, E, qt, E, x, E, &s_out);
      } else {
        /* q_i = scale (x_i Wq_h + bq_h), s_ij = q_i . k_j: scaling the X*P
         * query elements is cheaper than scaling the X*S scores. */
        const matmul_out q_out = {qt, P, 1, bq_h, 0};
        matmul_aw(rows, P, E, x_blk, E, wq, h * P, &q_out);
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
      matmul_aw(rows, E_OUT, P, ctx, P, wo, h * E_OUT, &y_out);
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

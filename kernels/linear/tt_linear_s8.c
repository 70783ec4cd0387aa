/**
 * @file tt_linear_s8.c
 * @brief int8 linear layer (tt_linear_s8.h): Cortex-M DSP (SMLAD), RISC-V /
 *        GAP9 (4-way int8 dot products) and portable C paths, bit-identical.
 *
 * Path selection, at compile time: TT_LINEAR_S8_PORTABLE, TT_LINEAR_S8_SMLAD
 * or TT_LINEAR_S8_SDOT4 if defined; else SMLAD with __ARM_FEATURE_DSP, SDOT4
 * on RISC-V, portable C elsewhere.
 *
 * SIMD paths: for each block of X x rows, the rows go to the scratch once,
 * in a "pair-interleaved" layout (rows 2m and 2m+1 alternate by groups of 4
 * k, as the weight column pairs do), then every column pair sweeps the row
 * pairs of the block with a 2x2 register tile. SMLAD: x widened to int16 in
 * SXTB16 order [x0 x2 x1 x3], so that with the weight word w in natural order
 * SMLAD(x.lo, SXTB16(w)) + SMLAD(x.hi, SXTB16(w ROR 8)) is the 4-term dot
 * product; per group of 4 k a 2x2 tile does 3 double-word loads, 4 SXTB16
 * and 8 SMLAD for 16 MACs. SMLAD one-step layers on the fast requantization
 * (pairs_one) have a branch-free output stage per 2x2 tile: the four outputs
 * minus act_min (act_min folded into the rounding constant), USAT to 0 .. 255,
 * packed into one word, clamped to act_max - act_min and moved back by act_min
 * per byte (USUB8/SEL, UADD8), stored as two halfwords. SDOT4: the x bytes are
 * copied zero-padded and each group is one tt_sdot4 per tile element (4 loads,
 * 4 dot products per 16 MACs).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_linear_s8.h"
#include "tt_linear_s8_common.h"
#include "tt_requant_s8.h"
#include "tt_simd.h"

#if !defined(TT_LINEAR_S8_PORTABLE) && !defined(TT_LINEAR_S8_SMLAD) && \
    !defined(TT_LINEAR_S8_SDOT4)
#if defined(TT_SIMD_ARM_DSP)
#define TT_LINEAR_S8_SMLAD 1
#elif defined(__riscv)
#define TT_LINEAR_S8_SDOT4 1
#else
#define TT_LINEAR_S8_PORTABLE 1
#endif
#endif

#if defined(__GNUC__)
#define TT_ALWAYS_INLINE inline __attribute__((always_inline))
#define TT_NOINLINE __attribute__((noinline))
#else
#define TT_ALWAYS_INLINE inline
#define TT_NOINLINE
#endif

/* ------------------------------------------------------------------ shapes and checks */

static int32_t ceil4(int32_t n) { return (n + 3) & ~3; }

/** Block rows X: rows_per_block rounded up to even, at most R (0 when invalid). */
static int32_t block_rows(const tt_linear_dims *d, const tt_linear_s8_config *cfg) {
  if (d == NULL || cfg == NULL || d->rows < 1 || d->in_features < 1 || d->out_features < 1 ||
      d->in_features > TT_LINEAR_S8_MAX_K || cfg->rows_per_block < 1) {
    return 0;
  }
  const int64_t x = (int64_t)cfg->rows_per_block + (cfg->rows_per_block & 1);
  return (int32_t)(x < d->rows ? x : d->rows);
}

/** Scratch bytes, or -1 when invalid or beyond int32_t. */
static int64_t scratch_bytes(const tt_linear_dims *d, const tt_linear_s8_config *cfg) {
  const int32_t x = block_rows(d, cfg);
  if (x == 0) {
    return -1;
  }
  const int64_t bytes = 2 * (int64_t)x * ceil4(d->in_features);
  const int64_t xy = (int64_t)d->rows * (d->in_features > d->out_features ? d->in_features
                                                                          : d->out_features);
  const int64_t w = (int64_t)d->out_features * ceil4(d->in_features);
  return bytes > INT32_MAX || xy > INT32_MAX || w > INT32_MAX ? -1 : bytes;
}

static int overlaps(const void *a, int64_t a_bytes, const void *b, int64_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a;
  const uintptr_t b0 = (uintptr_t)b;
  return a0 < b0 + (uintptr_t)b_bytes && b0 < a0 + (uintptr_t)a_bytes;
}

static tt_status check(const tt_linear_dims *dims, const tt_linear_s8_config *cfg,
                       const tt_linear_s8_params *p, const int8_t *x, const int8_t *y,
                       const int8_t *scratch, int32_t scratch_bytes_given) {
  const int64_t need = scratch_bytes(dims, cfg);
  if (need < 0 || !tt_linear_s8_params_valid(p, dims->out_features) || x == NULL || y == NULL ||
      scratch == NULL || !tt_s8_aligned4(scratch)) {
    return TT_ARG_ERROR;
  }
  if (scratch_bytes_given < need) {
    return TT_SCRATCH_ERROR;
  }
  const int64_t x_bytes = (int64_t)dims->rows * dims->in_features;
  const int64_t y_bytes = (int64_t)dims->rows * dims->out_features;
  if (overlaps(x, x_bytes, y, y_bytes) || overlaps(x, x_bytes, scratch, need) ||
      overlaps(y, y_bytes, scratch, need)) {
    return TT_ARG_ERROR;
  }
  return TT_OK;
}

int32_t tt_linear_s8_get_buffer_size(const tt_linear_dims *dims, const tt_linear_s8_config *cfg) {
  const int64_t bytes = scratch_bytes(dims, cfg);
  return bytes < 0 ? TT_ARG_ERROR : (int32_t)bytes;
}

/* ------------------------------------------------------------------ requantization */

/** zp + requant(acc, mult, shift) in 64 bits (tt_linear_s8.h; ties up, one rounding). */
static TT_NOINLINE int32_t rq_slow(int32_t acc, int32_t mult, int32_t shift, int32_t zp) {
  const int32_t n = 31 - shift;
  return zp + (int32_t)(((int64_t)acc * mult + ((int64_t)1 << (n - 1))) >> n);
}

/** zp + requant(acc) through the column c prepared by tt_rq_prepare (tt_requant_s8.h: the
 *  low word of the product cannot carry into the rounding since 2^(n-1) is a multiple of 2^32);
 *  s = 0 marks the other shifts, done by rq_slow. */
static TT_ALWAYS_INLINE int32_t rq_apply(int32_t acc, const tt_rq_col *c) {
  return c->s != 0 ? (tt_smmul(acc, c->mult) + c->add) >> c->s
                   : rq_slow(acc, c->mult, c->shift, c->zp);
}

/** Everything the output stage of one column needs. */
typedef struct {
  tt_rq_col c1; /**< stage 1 (zero point: zp_y, or zp_acc when two-step) */
  int32_t off2; /**< two-step: bias2[n] - zp_acc 2^8 */
  int32_t bias; /**< kernel_bias[n] */
} col_out;

/** The layer-wide part of the output stage. */
typedef struct {
  int32_t two_step;
  tt_rq_col c2; /**< stage 2 (zero point zp_y) */
  int32_t lo;
  int32_t hi;
} out_stage;

static col_out col_prepare(const tt_linear_s8_params *p, int32_t n) {
  const int32_t m = p->per_channel ? n : 0;
  col_out c;
  c.c1 = tt_rq_prepare(p->mult[m], p->shift[m], p->two_step ? p->acc_zero_point : p->y_zero_point);
  c.off2 = p->two_step ? (p->bias2 != NULL ? p->bias2[n] : 0) -
                             p->acc_zero_point * (1 << TT_LINEAR_S8_ACC_BIAS_BITS)
                       : 0;
  c.bias = p->kernel_bias[n];
  return c;
}

/** The int8 output of one accumulator (kernel_bias included). */
static TT_ALWAYS_INLINE int8_t out_value(const out_stage *o, const col_out *c, int32_t acc) {
  int32_t v = tt_ssat8(rq_apply(acc, &c->c1));
  if (o->two_step) {
    v = tt_ssat8(rq_apply(v * (1 << TT_LINEAR_S8_ACC_BIAS_BITS) + c->off2, &o->c2));
  }
  v = v < o->lo ? o->lo : v;
  return (int8_t)(v > o->hi ? o->hi : v);
}

static out_stage stage_prepare(const tt_linear_s8_params *p) {
  out_stage o;
  o.two_step = p->two_step;
  o.c2 = tt_rq_prepare(p->mult2, p->shift2, p->y_zero_point);
  o.lo = p->act_min;
  o.hi = p->act_max;
  return o;
}

/** Offset of element (r, k) in a pair-interleaved buffer of `rows` rows of k4 elements:
 *  rows 2m and 2m+1 alternate by groups of 4, a last odd row is contiguous. The weights use
 *  it with rows = columns (tt_linear_s8.h). */
static inline int32_t pi_off(int32_t r, int32_t k, int32_t rows, int32_t k4) {
  if ((r | 1) < rows) {
    return (r & ~1) * k4 + ((k >> 2) << 3) + ((r & 1) << 2) + (k & 3);
  }
  return r * k4 + k;
}

#if defined(TT_LINEAR_S8_PORTABLE)
/* ------------------------------------------------------------------ portable C */

static void linear_s8_run(const tt_linear_dims *d, const tt_linear_s8_config *cfg,
                          const tt_linear_s8_params *p, const int8_t *x, int8_t *y,
                          int8_t *scratch) {
  (void)cfg;
  (void)scratch;
  const int32_t R = d->rows;
  const int32_t K = d->in_features;
  const int32_t N = d->out_features;
  const int32_t k4 = ceil4(K);
  const out_stage o = stage_prepare(p);
  for (int32_t n = 0; n < N; ++n) {
    const col_out c = col_prepare(p, n);
    for (int32_t r = 0; r < R; ++r) {
      int32_t acc = c.bias;
      for (int32_t k = 0; k < K; ++k) {
        acc += (int32_t)x[r * K + k] * p->weights[pi_off(n, k, N, k4)];
      }
      y[r * N + n] = out_value(&o, &c, acc);
    }
  }
}

#else
/* ------------------------------------------------------------------ SIMD block loop */

#if defined(TT_LINEAR_S8_SMLAD)
typedef int16_t xb_t; /**< widened x element */

/** The last group of a row (K % 4 elements of src, zero-padded) to out. */
static void widen_tail(const int8_t *src, int32_t n, int16_t *out) {
  uint32_t w = 0;
  for (int32_t i = 0; i < n; ++i) {
    w |= (uint32_t)(uint8_t)src[i] << (8 * i);
  }
  tt_store32(out, tt_sxtb16(w));
  tt_store32(out + 2, tt_sxtb16_ror8(w));
}

/** x rows [rows][K] into the PI buffer dst [rows][k4], int16 in SXTB16 order per group. */
static TT_NOINLINE void widen_block(const int8_t *x, int32_t K, int32_t rows, int32_t k4,
                                    int16_t *dst) {
  const int32_t full = K & ~3;
  int32_t r = 0;
  for (; r + 1 < rows; r += 2) { /* a row pair: both rows of each group in one sweep */
    const int8_t *s0 = x + r * K;
    const int8_t *s1 = s0 + K;
    int16_t *out = dst + r * k4;
    for (int32_t k = 0; k < full; k += 4, out += 8) {
      const uint32_t w0 = tt_load32(s0 + k);
      const uint32_t w1 = tt_load32(s1 + k);
      tt_store32(out, tt_sxtb16(w0));
      tt_store32(out + 2, tt_sxtb16_ror8(w0));
      tt_store32(out + 4, tt_sxtb16(w1));
      tt_store32(out + 6, tt_sxtb16_ror8(w1));
    }
    if (full < K) {
      widen_tail(s0 + full, K - full, out);
      widen_tail(s1 + full, K - full, out + 4);
    }
  }
  if (r < rows) { /* a last odd row: contiguous */
    const int8_t *src = x + r * K;
    int16_t *out = dst + r * k4;
    for (int32_t k = 0; k < full; k += 4, out += 4) {
      const uint32_t w = tt_load32(src + k);
      tt_store32(out, tt_sxtb16(w));
      tt_store32(out + 2, tt_sxtb16_ror8(w));
    }
    if (full < K) {
      widen_tail(src + full, K - full, out);
    }
  }
}

/** One group of 4 k of the 2x2 tile: a at a PI row pair, w at a weight column pair. */
static TT_ALWAYS_INLINE void step_2x2(const int16_t **a, const int16_t **w, int32_t *s00,
                                      int32_t *s01, int32_t *s10, int32_t *s11) {
  uint32_t w0;
  uint32_t w1;
  uint32_t x0;
  uint32_t x1;
  tt_load2_ia(w, &w0, &w1); /* 4 k of column 0, then of column 1 */
  const uint32_t c0e = tt_sxtb16(w0);
  const uint32_t c0o = tt_sxtb16_ror8(w0);
  const uint32_t c1e = tt_sxtb16(w1);
  const uint32_t c1o = tt_sxtb16_ror8(w1);
  tt_load2_ia(a, &x0, &x1); /* row 0: (x0, x2), (x1, x3) */
  *s00 = tt_smlad(x0, c0e, *s00);
  *s00 = tt_smlad(x1, c0o, *s00);
  *s01 = tt_smlad(x0, c1e, *s01);
  *s01 = tt_smlad(x1, c1o, *s01);
  tt_load2_ia(a, &x0, &x1); /* row 1 */
  *s10 = tt_smlad(x0, c0e, *s10);
  *s10 = tt_smlad(x1, c0o, *s10);
  *s11 = tt_smlad(x0, c1e, *s11);
  *s11 = tt_smlad(x1, c1o, *s11);
}

/** s[2 r + c] += row r . column c over `groups` groups of 4 k; *pa moves past the row pair.
 *  unroll (a constant): 8 or 4 when groups is a positive multiple of it, else 0. */
static TT_ALWAYS_INLINE void dot_2x2_ia4(const int16_t **pa, const int8_t *w8, int32_t groups,
                                         int unroll, int32_t s[4]) {
  const int16_t *a = *pa;
  const int16_t *w = (const int16_t *)(const void *)w8; /* 4-byte aligned; word loads only */
  int32_t s00 = s[0];
  int32_t s01 = s[1];
  int32_t s10 = s[2];
  int32_t s11 = s[3];
  if (unroll == 8) { /* groups a positive multiple of 8 */
    uint32_t n = (uint32_t)groups >> 3;
    do {
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
    } while (--n != 0);
  } else if (unroll) { /* groups a positive multiple of 4 */
    uint32_t n = (uint32_t)groups >> 2;
    do {
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
    } while (--n != 0);
  } else {
    for (int32_t n = groups >> 2; n > 0; --n) {
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
    }
    for (int32_t n = groups & 3; n > 0; --n) {
      step_2x2(&a, &w, &s00, &s01, &s10, &s11);
    }
  }
  *pa = a;
  s[0] = s00;
  s[1] = s01;
  s[2] = s10;
  s[3] = s11;
}

static TT_ALWAYS_INLINE void dot_2x2(const int16_t *a, const int8_t *w8, int32_t groups,
                                     int32_t s[4]) {
  dot_2x2_ia4(&a, w8, groups, 0, s);
}

/** s[c] += one contiguous row . column c of a column pair. */
static TT_ALWAYS_INLINE void dot_1x2(const int16_t *a, const int8_t *w8, int32_t groups,
                                     int32_t s[2]) {
  const int16_t *w = (const int16_t *)(const void *)w8;
  int32_t s0 = s[0];
  int32_t s1 = s[1];
  for (; groups > 0; --groups) {
    uint32_t w0;
    uint32_t w1;
    uint32_t x0;
    uint32_t x1;
    tt_load2_ia(&w, &w0, &w1);
    tt_load2_ia(&a, &x0, &x1);
    s0 = tt_smlad(x0, tt_sxtb16(w0), s0);
    s0 = tt_smlad(x1, tt_sxtb16_ror8(w0), s0);
    s1 = tt_smlad(x0, tt_sxtb16(w1), s1);
    s1 = tt_smlad(x1, tt_sxtb16_ror8(w1), s1);
  }
  s[0] = s0;
  s[1] = s1;
}

/** acc + one row . one column: groups a_gs int16 and w_gs bytes apart (tails). */
static int32_t dot_1(const int16_t *a, int32_t a_gs, const int8_t *w, int32_t w_gs,
                     int32_t groups, int32_t acc) {
  for (; groups > 0; --groups, a += a_gs, w += w_gs) {
    const uint32_t ww = tt_load32(w);
    acc = tt_smlad(tt_load32(a), tt_sxtb16(ww), acc);
    acc = tt_smlad(tt_load32(a + 2), tt_sxtb16_ror8(ww), acc);
  }
  return acc;
}

#else /* TT_LINEAR_S8_SDOT4 */
typedef int8_t xb_t;

/** x rows [rows][K] into the PI buffer dst [rows][k4] of int8, zero-padded. */
static void widen_block(const int8_t *x, int32_t K, int32_t rows, int32_t k4, int8_t *dst) {
  for (int32_t r = 0; r < rows; ++r) {
    const int8_t *src = x + r * K;
    const int32_t gs = (r | 1) < rows ? 8 : 4;
    int8_t *out = dst + pi_off(r, 0, rows, k4);
    int32_t k = 0;
    for (; k + 4 <= K; k += 4, out += gs) {
      tt_store32(out, tt_load32(src + k));
    }
    if (k < K) {
      uint32_t w = 0;
      for (int32_t i = 0; k + i < K; ++i) {
        w |= (uint32_t)(uint8_t)src[k + i] << (8 * i);
      }
      tt_store32(out, w);
    }
  }
}

static TT_ALWAYS_INLINE void dot_2x2(const int8_t *a, const int8_t *w, int32_t groups,
                                     int32_t s[4]) {
  int32_t s00 = s[0];
  int32_t s01 = s[1];
  int32_t s10 = s[2];
  int32_t s11 = s[3];
  for (; groups > 0; --groups, a += 8, w += 8) {
    const uint32_t w0 = tt_load32(w);
    const uint32_t w1 = tt_load32(w + 4);
    const uint32_t x0 = tt_load32(a);
    const uint32_t x1 = tt_load32(a + 4);
    s00 = tt_sdot4(x0, w0, s00);
    s01 = tt_sdot4(x0, w1, s01);
    s10 = tt_sdot4(x1, w0, s10);
    s11 = tt_sdot4(x1, w1, s11);
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s10;
  s[3] = s11;
}

static TT_ALWAYS_INLINE void dot_1x2(const int8_t *a, const int8_t *w, int32_t groups,
                                     int32_t s[2]) {
  int32_t s0 = s[0];
  int32_t s1 = s[1];
  for (; groups > 0; --groups, a += 4, w += 8) {
    const uint32_t x0 = tt_load32(a);
    s0 = tt_sdot4(x0, tt_load32(w), s0);
    s1 = tt_sdot4(x0, tt_load32(w + 4), s1);
  }
  s[0] = s0;
  s[1] = s1;
}

static int32_t dot_1(const int8_t *a, int32_t a_gs, const int8_t *w, int32_t w_gs,
                     int32_t groups, int32_t acc) {
  for (; groups > 0; --groups, a += a_gs, w += w_gs) {
    acc = tt_sdot4(tt_load32(a), tt_load32(w), acc);
  }
  return acc;
}
#endif

/** Output modes of a column pair: OUT_ANY takes every case through out_value; the others
 *  need the fast requantization of both columns (and of stage 2) and are specialized at
 *  compile time, since the output stage runs once per K MACs. */
typedef enum {
  OUT_ANY,      /**< out_value */
  OUT_SAT,      /**< one step, no narrower clamp: ssat8 */
  OUT_CLAMP,    /**< one step, clamp to [lo, hi] */
  OUT_TWO_STEP  /**< two steps, clamp to [lo, hi] */
} out_mode;

static TT_ALWAYS_INLINE int8_t out_fast(out_mode mode, const out_stage *o, const col_out *c,
                                        int32_t acc) {
  if (mode == OUT_ANY) {
    return out_value(o, c, acc);
  }
  int32_t v = (tt_smmul(acc, c->c1.mult) + c->c1.add) >> c->c1.s;
  if (mode == OUT_SAT) {
    return (int8_t)tt_ssat8(v);
  }
  if (mode == OUT_TWO_STEP) {
    v = tt_ssat8(v) * (1 << TT_LINEAR_S8_ACC_BIAS_BITS) + c->off2;
    v = (tt_smmul(v, o->c2.mult) + o->c2.add) >> o->c2.s;
  }
  v = v < o->lo ? o->lo : v;
  return (int8_t)(v > o->hi ? o->hi : v);
}

/** One column pair (w) against every row of the block (xb, rows), outputs at yo. */
static TT_ALWAYS_INLINE void pair_rows(out_mode mode, const xb_t *xb, int32_t rows, int32_t k4,
                                       const int8_t *w, int8_t *yo, int32_t N,
                                       const out_stage *o, const col_out *q0,
                                       const col_out *q1) {
  const int32_t groups = k4 >> 2;
  int32_t i = 0;
  for (; i + 1 < rows; i += 2, yo += 2 * N) {
    int32_t s[4] = {q0->bias, q1->bias, q0->bias, q1->bias};
    dot_2x2(xb + i * k4, w, groups, s);
    yo[0] = out_fast(mode, o, q0, s[0]);
    yo[1] = out_fast(mode, o, q1, s[1]);
    yo[N] = out_fast(mode, o, q0, s[2]);
    yo[N + 1] = out_fast(mode, o, q1, s[3]);
  }
  if (i < rows) { /* last odd row: contiguous */
    int32_t s[2] = {q0->bias, q1->bias};
    dot_1x2(xb + i * k4, w, groups, s);
    yo[0] = out_fast(mode, o, q0, s[0]);
    yo[1] = out_fast(mode, o, q1, s[1]);
  }
}

static TT_NOINLINE void pair_rows_any(const xb_t *xb, int32_t rows, int32_t k4, const int8_t *w,
                                      int8_t *yo, int32_t N, const out_stage *o,
                                      const col_out *q0, const col_out *q1) {
  pair_rows(OUT_ANY, xb, rows, k4, w, yo, N, o, q0, q1);
}

static TT_NOINLINE void pair_rows_sat(const xb_t *xb, int32_t rows, int32_t k4, const int8_t *w,
                                      int8_t *yo, int32_t N, const out_stage *o,
                                      const col_out *q0, const col_out *q1) {
  pair_rows(OUT_SAT, xb, rows, k4, w, yo, N, o, q0, q1);
}

static TT_NOINLINE void pair_rows_clamp(const xb_t *xb, int32_t rows, int32_t k4,
                                        const int8_t *w, int8_t *yo, int32_t N,
                                        const out_stage *o, const col_out *q0,
                                        const col_out *q1) {
  pair_rows(OUT_CLAMP, xb, rows, k4, w, yo, N, o, q0, q1);
}

static TT_NOINLINE void pair_rows_two(const xb_t *xb, int32_t rows, int32_t k4, const int8_t *w,
                                      int8_t *yo, int32_t N, const out_stage *o,
                                      const col_out *q0, const col_out *q1) {
  pair_rows(OUT_TWO_STEP, xb, rows, k4, w, yo, N, o, q0, q1);
}

#if defined(TT_LINEAR_S8_SMLAD)
/* ------------------------------------------------------------------ packed output stage */

/** Bytes 0 and 1 of v to y[0] and y[1]. */
static TT_ALWAYS_INLINE void store2(int8_t *y, uint32_t v) {
#if defined(TT_SIMD_ARM_DSP) && !defined(__ARM_BIG_ENDIAN)
  const uint16_t h = (uint16_t)v;
  memcpy(y, &h, sizeof h);
#else
  uint8_t *b = (uint8_t *)(void *)y;
  b[0] = (uint8_t)v;
  b[1] = (uint8_t)(v >> 8);
#endif
}

/** The one-step output stage of a column pair, fast requantization only: output n - act_min
 *  = (smmul(acc, mult_n) + add_n) >> s_n with add_n = 2^(s_n-1) + (zp_y - act_min) 2^s_n
 *  (|add_n| < 2^21 + 255 2^22 and |smmul| <= 2^30: the sum stays in int32). */
typedef struct { /* the order is the one of out_tile's double-word loads */
  int32_t bias0;
  int32_t bias1;
  int32_t mult0;
  int32_t mult1;
  int32_t add0;
  int32_t add1;
  int32_t s0;
  int32_t s1;
  uint32_t span4; /**< act_max - act_min in every byte */
  uint32_t lo4;   /**< act_min in every byte */
} pair_one;

/** out_tile's asm loads pair_one by offset: a compile-time check of the layout (C99). */
typedef char pair_one_layout_check[offsetof(pair_one, mult0) == 8 &&
                                           offsetof(pair_one, add0) == 16 &&
                                           offsetof(pair_one, s0) == 24 &&
                                           offsetof(pair_one, span4) == 32 &&
                                           offsetof(pair_one, lo4) == 36
                                       ? 1
                                       : -1];

static TT_ALWAYS_INLINE uint32_t one_u(int32_t acc, int32_t mult, int32_t add, int32_t s) {
  return (uint32_t)tt_usat8((tt_smmul(acc, mult) + add) >> s);
}

/** The four outputs of a 2x2 tile (s[2 r + c]: row r, column c) to yo[r N + c]. */
static TT_ALWAYS_INLINE void out_tile(const pair_one *q, const int32_t s[4], int8_t *yo,
                                      int32_t N) {
#if defined(TT_SIMD_ARM_DSP) && !defined(__ARM_BIG_ENDIAN)
  int32_t a0 = s[0];
  int32_t a1 = s[1];
  int32_t a2 = s[2];
  int32_t a3 = s[3];
  int32_t t0;
  int32_t t1;
  __asm__ volatile(
      "ldrd %[t0], %[t1], [%[q], #8]\n\t"
      "smmul %[a0], %[a0], %[t0]\n\t"
      "smmul %[a2], %[a2], %[t0]\n\t"
      "smmul %[a1], %[a1], %[t1]\n\t"
      "smmul %[a3], %[a3], %[t1]\n\t"
      "ldrd %[t0], %[t1], [%[q], #16]\n\t"
      "add %[a0], %[a0], %[t0]\n\t"
      "add %[a2], %[a2], %[t0]\n\t"
      "add %[a1], %[a1], %[t1]\n\t"
      "add %[a3], %[a3], %[t1]\n\t"
      "ldrd %[t0], %[t1], [%[q], #24]\n\t"
      "asr %[a0], %[a0], %[t0]\n\t"
      "asr %[a2], %[a2], %[t0]\n\t"
      "asr %[a1], %[a1], %[t1]\n\t"
      "asr %[a3], %[a3], %[t1]\n\t"
      "usat %[a0], #8, %[a0]\n\t"
      "usat %[a1], #8, %[a1]\n\t"
      "usat %[a2], #8, %[a2]\n\t"
      "usat %[a3], #8, %[a3]\n\t"
      "pkhbt %[a0], %[a0], %[a2], lsl #16\n\t"
      "pkhbt %[a1], %[a1], %[a3], lsl #16\n\t"
      "orr %[a0], %[a0], %[a1], lsl #8\n\t"
      "ldrd %[t0], %[t1], [%[q], #32]\n\t"
      "usub8 %[a1], %[a0], %[t0]\n\t"
      "sel %[a0], %[t0], %[a0]\n\t"
      "uadd8 %[a0], %[a0], %[t1]\n\t"
      "strh %[a0], [%[y]]\n\t"
      "lsr %[a0], %[a0], #16\n\t"
      "strh %[a0], [%[y], %[n]]"
      : [a0] "+&r"(a0), [a1] "+&r"(a1), [a2] "+&r"(a2), [a3] "+&r"(a3), [t0] "=&r"(t0),
        [t1] "=&r"(t1)
      : [q] "r"(q), [y] "r"(yo), [n] "r"(N)
      : "cc", "memory");
#else
  const uint32_t u0 = one_u(s[0], q->mult0, q->add0, q->s0);
  const uint32_t u2 = one_u(s[2], q->mult0, q->add0, q->s0);
  const uint32_t u1 = one_u(s[1], q->mult1, q->add1, q->s1);
  const uint32_t u3 = one_u(s[3], q->mult1, q->add1, q->s1);
  const uint32_t u = tt_pack16((int32_t)u0, (int32_t)u2) |
                     (tt_pack16((int32_t)u1, (int32_t)u3) << 8);
  const uint32_t v = tt_uadd4(tt_umin4(u, q->span4), q->lo4);
  store2(yo, v);
  store2(yo + N, v >> 16);
#endif
}

/** Stage 1 of a two-step column pair on the fast requantization: the stage-2 input
 *  ssat8((smmul(acc, mult_n) + add_n) >> s_n) 2^B + off_n, add_n = 2^(s_n-1) + zp_acc 2^s_n and
 *  off_n = bias2[n] - zp_acc 2^B (out_value's two-step form, zp_acc folded into both). */
typedef struct {
  int32_t mult0;
  int32_t mult1;
  int32_t add0;
  int32_t add1;
  int32_t s0;
  int32_t s1;
  int32_t off0;
  int32_t off1;
} pair_stage1;

static TT_ALWAYS_INLINE int32_t stage1(int32_t acc, int32_t mult, int32_t add, int32_t s,
                                       int32_t off) {
  return tt_ssat8((tt_smmul(acc, mult) + add) >> s) * (1 << TT_LINEAR_S8_ACC_BIAS_BITS) + off;
}

/** pair_rows with both columns on the fast requantization: st NULL (a constant at every call)
 *  for one-step layers, q then holding each column's requantization; else stage 1 per column
 *  from st, and q holding stage 2 (the same for every column). unroll as in dot_2x2_ia4. */
static TT_ALWAYS_INLINE void pair_rows_t(int unroll, const pair_stage1 *st, const pair_one *q,
                                         const xb_t *a, int32_t rows, int32_t k4,
                                         const int8_t *w, int8_t *yo, int32_t N) {
  const int32_t groups = k4 >> 2;
  const xb_t *const end = a + (rows & ~1) * k4;
  while (a != end) { /* dot_2x2 leaves a at the next row pair */
    int32_t s[4] = {q->bias0, q->bias1, q->bias0, q->bias1};
    dot_2x2_ia4(&a, w, groups, unroll, s);
    if (st != NULL) {
      s[0] = stage1(s[0], st->mult0, st->add0, st->s0, st->off0);
      s[1] = stage1(s[1], st->mult1, st->add1, st->s1, st->off1);
      s[2] = stage1(s[2], st->mult0, st->add0, st->s0, st->off0);
      s[3] = stage1(s[3], st->mult1, st->add1, st->s1, st->off1);
    }
    out_tile(q, s, yo, N);
    yo += 2 * N;
  }
  if (rows & 1) { /* last odd row: contiguous */
    int32_t s[2] = {q->bias0, q->bias1};
    dot_1x2(a, w, groups, s);
    if (st != NULL) {
      s[0] = stage1(s[0], st->mult0, st->add0, st->s0, st->off0);
      s[1] = stage1(s[1], st->mult1, st->add1, st->s1, st->off1);
    }
    const uint32_t u = one_u(s[0], q->mult0, q->add0, q->s0) |
                       (one_u(s[1], q->mult1, q->add1, q->s1) << 8);
    store2(yo, tt_uadd4(tt_umin4(u, q->span4), q->lo4));
  }
}

/** tt_rq_prepare's rounding constant 2^(s-1) + zp 2^s, for a shift s already in 1 .. 22. */
static TT_ALWAYS_INLINE int32_t round_add(int32_t s, int32_t zp) {
  return ((int32_t)1 << (s - 1)) + zp * ((int32_t)1 << s);
}

/** The column pairs from c on of a block (outputs y0 = its first row) while both columns of a
 *  pair take the fast requantization (stage 1 for two-step layers, whose caller checked
 *  stage 2); returns the first column not done. two: a constant. The
 *  output stage's lower clamp is folded into the rounding constant (zero point zp_y - act_min),
 *  out_tile's USAT and the byte-lane clamp doing the rest. */
static TT_ALWAYS_INLINE int32_t pairs_t(int unroll, int two, const tt_linear_s8_params *p,
                                        const xb_t *xb, int32_t rows, int32_t k4, int8_t *y0,
                                        int32_t N, int32_t c) {
  const int32_t step = p->per_channel; /* 0 or 1: the mult/shift stride */
  const int32_t *mp = p->mult + step * c;
  const int32_t *shp = p->shift + step * c;
  const int32_t *bp = p->kernel_bias + c;
  const int32_t zl = p->y_zero_point - p->act_min;
  const int32_t za = p->acc_zero_point;
  const int8_t *w = p->weights + c * k4;
  pair_one q;
  pair_stage1 st;
  if (two) {
    const int32_t s2 = -1 - p->shift2;
    q.mult0 = q.mult1 = p->mult2;
    q.add0 = q.add1 = round_add(s2, zl);
    q.s0 = q.s1 = s2;
  }
  q.span4 = (uint32_t)(p->act_max - p->act_min) * 0x01010101u;
  q.lo4 = ((uint32_t)p->act_min & 0xFFu) * 0x01010101u;
  for (; c + 1 < N; c += 2, w += 2 * k4, bp += 2, mp += 2 * step, shp += 2 * step) {
    const int32_t s0 = -1 - shp[0];
    const int32_t s1 = -1 - shp[step];
    if ((uint32_t)(s0 - 1) > 21u || (uint32_t)(s1 - 1) > 21u) {
      break; /* a shift outside 1 .. 22 needs rq_slow (tt_rq_prepare's s = 0) */
    }
    q.bias0 = bp[0];
    q.bias1 = bp[1];
    if (two) {
      const int32_t z8 = za * (1 << TT_LINEAR_S8_ACC_BIAS_BITS);
      st.mult0 = mp[0];
      st.mult1 = mp[step];
      st.add0 = round_add(s0, za);
      st.add1 = round_add(s1, za);
      st.s0 = s0;
      st.s1 = s1;
      st.off0 = (p->bias2 != NULL ? p->bias2[c] : 0) - z8;
      st.off1 = (p->bias2 != NULL ? p->bias2[c + 1] : 0) - z8;
    } else {
      q.mult0 = mp[0];
      q.mult1 = mp[step];
      q.add0 = round_add(s0, zl);
      q.add1 = round_add(s1, zl);
      q.s0 = s0;
      q.s1 = s1;
    }
    pair_rows_t(unroll, two ? &st : NULL, &q, xb, rows, k4, w, y0 + c, N);
  }
  return c;
}

/* The fast paths compiled once per K unrolling (0, 4 or 8 groups per loop trip): the output
 * stage runs once per K MACs, so each is specialized rather than chosen per output. */
static TT_NOINLINE int32_t pairs_fast(const tt_linear_s8_params *p, const xb_t *xb,
                                      int32_t rows, int32_t k4, int8_t *y0, int32_t N, int32_t c) {
  return p->two_step ? pairs_t(0, 1, p, xb, rows, k4, y0, N, c)
                     : pairs_t(0, 0, p, xb, rows, k4, y0, N, c);
}

static TT_NOINLINE int32_t pairs_fast4(const tt_linear_s8_params *p, const xb_t *xb,
                                       int32_t rows, int32_t k4, int8_t *y0, int32_t N,
                                       int32_t c) {
  return p->two_step ? pairs_t(4, 1, p, xb, rows, k4, y0, N, c)
                     : pairs_t(4, 0, p, xb, rows, k4, y0, N, c);
}

static TT_NOINLINE int32_t pairs_fast8(const tt_linear_s8_params *p, const xb_t *xb,
                                       int32_t rows, int32_t k4, int8_t *y0, int32_t N,
                                       int32_t c) {
  return p->two_step ? pairs_t(8, 1, p, xb, rows, k4, y0, N, c)
                     : pairs_t(8, 0, p, xb, rows, k4, y0, N, c);
}

#endif

static void linear_s8_run(const tt_linear_dims *d, const tt_linear_s8_config *cfg,
                          const tt_linear_s8_params *p, const int8_t *x, int8_t *y,
                          int8_t *scratch) {
  const int32_t R = d->rows;
  const int32_t K = d->in_features;
  const int32_t N = d->out_features;
  const int32_t k4 = ceil4(K);
  const int32_t groups = k4 >> 2;
  const int32_t X = block_rows(d, cfg);
  const out_stage o = stage_prepare(p);
  const int full_range = o.lo == -128 && o.hi == 127;
  xb_t *xb = (xb_t *)(void *)scratch;
  for (int32_t r0 = 0; r0 < R; r0 += X) {
    const int32_t rows = R - r0 < X ? R - r0 : X;
    widen_block(x + r0 * K, K, rows, k4, xb);
    int32_t c = 0;
    for (; c + 1 < N; c += 2) {
#if defined(TT_LINEAR_S8_SMLAD)
      if (!o.two_step || o.c2.s != 0) { /* as many pairs as possible on a fast path */
        c = ((k4 & 31) == 0   ? pairs_fast8
             : (k4 & 15) == 0 ? pairs_fast4
                              : pairs_fast)(p, xb, rows, k4, y + r0 * N, N, c);
        if (c + 1 >= N) {
          break;
        }
      }
#endif
      const int8_t *w = p->weights + c * k4; /* column pair c/2 */
      const col_out q0 = col_prepare(p, c);
      const col_out q1 = col_prepare(p, c + 1);
      int8_t *yo = y + r0 * N + c;
      const int fast = q0.c1.s != 0 && q1.c1.s != 0;
      if (fast && !o.two_step) {
        (full_range ? pair_rows_sat : pair_rows_clamp)(xb, rows, k4, w, yo, N, &o, &q0, &q1);
      } else if (fast && o.c2.s != 0) {
        pair_rows_two(xb, rows, k4, w, yo, N, &o, &q0, &q1);
      } else {
        pair_rows_any(xb, rows, k4, w, yo, N, &o, &q0, &q1);
      }
    }
    if (c < N) { /* last odd column: contiguous */
      const int8_t *w = p->weights + c * k4;
      const col_out q0 = col_prepare(p, c);
      int8_t *yo = y + r0 * N + c;
      int32_t i = 0;
      for (; i + 1 < rows; i += 2, yo += 2 * N) {
        const xb_t *a = xb + i * k4;
        yo[0] = out_value(&o, &q0, dot_1(a, 8, w, 4, groups, q0.bias));
        yo[N] = out_value(&o, &q0, dot_1(a + 4, 8, w, 4, groups, q0.bias));
      }
      if (i < rows) {
        yo[0] = out_value(&o, &q0, dot_1(xb + i * k4, 4, w, 4, groups, q0.bias));
      }
    }
  }
}
#endif

tt_status tt_linear_s8(const tt_linear_dims *dims, const tt_linear_s8_config *cfg,
                       const tt_linear_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                       int32_t scratch_bytes_given) {
  if (dims == NULL || cfg == NULL) {
    return TT_ARG_ERROR;
  }
  const tt_status status = check(dims, cfg, p, x, y, scratch, scratch_bytes_given);
  if (status != TT_OK) {
    return status;
  }
  linear_s8_run(dims, cfg, p, x, y, scratch);
  return TT_OK;
}

/**
 * @file tt_mhsa_s8.c
 * @brief int8 MHSA with 2x2 register tiles over packed int16 operands
 *        (tt_simd.h): SMLAD on Cortex-M with the DSP extension, pv.sdotsp on
 *        GAP9, portable C elsewhere. Same API, scratch and results (bit for
 *        bit) as the reference tt_mhsa_s8_reference.c: link exactly one.
 *
 * Every product is C = A B^T over int16 operands holding values minus their
 * zero point, with K zero-padded to a multiple of 4. The operand buffers use a
 * "pair-interleaved" (PI) layout: rows 2m and 2m+1 alternate in groups of 4
 * elements,
 *   [r0 k0..3][r1 k0..3][r0 k4..7][r1 k4..7] ...  (a last odd row is contiguous)
 * so one pointer walks both rows of a 2x2 tile with double-word loads. Per
 * group of 4 k the tile does 4 double-word loads and 8 SMLAD = 16 MACs.
 *
 * Weights stay int8 in flash; for each pair of weight rows (output columns)
 * the kernel widens them once into the int16 `panel` (SXTB16 on the groups
 * stored as [w0, w2, w1, w3] gives the natural pairs) and sweeps every A row
 * pair of the block against it, so the widening is paid once per X rows.
 *
 * With TT_MHSA_S8_SDOT4 (GAP9: 4-way int8 dot products, defined by default on
 * RISC-V) the unfused Q/K/V projections instead multiply the raw int8 x block
 * (groups permuted like the weights) with the int8 weights directly:
 * sum (x - zp_x) w = sum x w - zp_x sum w, the column sums being taken once
 * per column pair and block.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa_s8.h"
#include "tt_mhsa_s8_common.h"
#include "tt_requant_s8.h"
#include "tt_simd.h"

#if !defined(TT_MHSA_S8_SDOT4) && !defined(TT_MHSA_S8_NO_SDOT4) && defined(__riscv)
#define TT_MHSA_S8_SDOT4 1
#endif

#if defined(__GNUC__)
#define TT_ALWAYS_INLINE inline __attribute__((always_inline))
#define TT_NOINLINE __attribute__((noinline))
#else
#define TT_ALWAYS_INLINE inline
#define TT_NOINLINE
#endif

/** Offset of element (r, k) in a PI buffer of `rows` rows of k4 elements. */
static inline int32_t pi_off(int32_t r, int32_t k, int32_t rows, int32_t k4) {
  if ((r | 1) < rows) {
    return (r & ~1) * k4 + ((k >> 2) << 3) + ((r & 1) << 2) + (k & 3);
  }
  return r * k4 + k;
}

/** Zero columns n .. k4-1 of every row of a PI buffer of `rows` rows: the padding the dot
 *  products read. */
static void pi_zero_pads(int16_t *buf, int32_t rows, int32_t n, int32_t k4) {
  for (int32_t r = 0; n < k4 && r < rows; ++r) {
    for (int32_t k = n; k < k4; ++k) {
      buf[pi_off(r, k, rows, k4)] = 0;
    }
  }
}

/* ------------------------------------------------------------------ dot products */

/** One group of 4 k of a 2x2 tile: a, b point at PI row pairs. */
static TT_ALWAYS_INLINE void step_2x2(const int16_t **a, const int16_t **b, int32_t *s00,
                                      int32_t *s01, int32_t *s10, int32_t *s11) {
  uint32_t b00;
  uint32_t b01;
  uint32_t b10;
  uint32_t b11;
  uint32_t x0;
  uint32_t x1;
  tt_load2_ia(b, &b00, &b01);
  tt_load2_ia(b, &b10, &b11);
  tt_load2_ia(a, &x0, &x1);
  *s00 = tt_smlad(x0, b00, *s00);
  *s00 = tt_smlad(x1, b01, *s00);
  *s01 = tt_smlad(x0, b10, *s01);
  *s01 = tt_smlad(x1, b11, *s01);
  tt_load2_ia(a, &x0, &x1);
  *s10 = tt_smlad(x0, b00, *s10);
  *s10 = tt_smlad(x1, b01, *s10);
  *s11 = tt_smlad(x0, b10, *s11);
  *s11 = tt_smlad(x1, b11, *s11);
}

/** s[2 r + c] += A row r . B row c for the PI row pairs at a and b. */
static TT_ALWAYS_INLINE void dot_2x2(const int16_t *a, const int16_t *b, int32_t groups,
                                     int32_t s[4]) {
  int32_t s00 = s[0];
  int32_t s01 = s[1];
  int32_t s10 = s[2];
  int32_t s11 = s[3];
  for (int32_t n = groups >> 2; n > 0; --n) {
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
  }
  if (groups & 2) {
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
  }
  if (groups & 1) {
    step_2x2(&a, &b, &s00, &s01, &s10, &s11);
  }
  s[0] = s00;
  s[1] = s01;
  s[2] = s10;
  s[3] = s11;
}

/** acc + a . b, rows whose groups of 4 are a_gs and b_gs int16 apart (4: contiguous,
 *  8: one row of a PI pair). */
static int32_t dot_1x1(const int16_t *a, int32_t a_gs, const int16_t *b, int32_t b_gs,
                       int32_t groups, int32_t acc) {
  for (; groups > 0; --groups) {
    acc = tt_smlad(tt_load32(a), tt_load32(b), acc);
    acc = tt_smlad(tt_load32(a + 2), tt_load32(b + 2), acc);
    a += a_gs;
    b += b_gs;
  }
  return acc;
}

/* ------------------------------------------------------------------ requantization */

/** zp + requant(acc) in 64 bits (the shifts tt_rq_prepare does not take fast). */
static TT_NOINLINE int32_t rq_slow(int32_t acc, int32_t mult, int32_t shift, int32_t zp) {
  return zp + s8_requant(acc, mult, shift);
}

/** zp + requant(acc) through the prepared column c. */
static TT_ALWAYS_INLINE int32_t rq_apply(int32_t acc, const tt_rq_col *c, int fast) {
  return fast ? (tt_smmul(acc, c->mult) + c->add) >> c->s
              : rq_slow(acc, c->mult, c->shift, c->zp);
}

static int32_t rq_one(int32_t acc, const tt_rq_col *c) {
  return rq_slow(acc, c->mult, c->shift, c->zp);
}

/* ------------------------------------------------------------------ operand widening */

/** rows int8 rows of n values (src, rows `stride` bytes apart) minus zp into the PI buffer
 *  dst [rows][k4]; column `one_col` (if < k4) holds `one`; the rest is zero padding. */
static void widen_rows(const int8_t *src, int32_t stride, int32_t rows, int32_t n, int32_t zp,
                       int32_t k4, int32_t one_col, int32_t one, int16_t *dst) {
  const uint32_t neg_zp = tt_pack16(-zp, -zp);
  for (int32_t r = 0; r < rows; ++r, src += stride) {
    const int32_t gs = (r | 1) < rows ? 8 : 4;
    int16_t *out = dst + pi_off(r, 0, rows, k4);
    int32_t e = 0;
    for (; e + 4 <= n; e += 4, out += gs) {
      const uint32_t w = tt_load32(src + e);
      const uint32_t even = tt_sxtab16(neg_zp, w);     /* x0, x2 */
      const uint32_t odd = tt_sxtab16_ror8(neg_zp, w); /* x1, x3 */
      tt_store32(out, (even & 0xFFFFu) | (odd << 16));
      tt_store32(out + 2, (even >> 16) | (odd & 0xFFFF0000u));
    }
    for (int32_t k = e; k < k4; ++k) { /* the rest: values, then `one`, then padding */
      if (k > e && (k & 3) == 0) {
        out += gs;
      }
      out[k & 3] = (int16_t)(k < n ? src[k] - zp : (k == one_col ? one : 0));
    }
  }
}

/** x rows first .. first+rows-1 minus zp_x into the PI buffer dst [rows][EK]; fused, column
 *  E holds kappa. */
static void widen_x(const s8_job *job, int32_t first, int32_t rows, int16_t *dst) {
  widen_rows(job->x + first * job->E, job->E, rows, job->E, job->p->x_zero_point, job->EK,
             job->fused ? job->E : job->EK, job->p->fused_one, dst);
}

/** Weight rows w0 (and w1 unless NULL), k4 int8 each with groups stored [w0, w2, w1, w3],
 *  widened into the PI panel (a pair, or one contiguous row). */
static void widen_w(const int8_t *w0, const int8_t *w1, int32_t k4, int16_t *panel) {
  if (w1 == NULL) {
    for (int32_t k = 0; k < k4; k += 4, panel += 4) {
      const uint32_t a = tt_load32(w0 + k);
      tt_store32(panel, tt_sxtb16(a));
      tt_store32(panel + 2, tt_sxtb16_ror8(a));
    }
    return;
  }
  for (int32_t k = 0; k < k4; k += 4, panel += 8) {
    const uint32_t a = tt_load32(w0 + k);
    const uint32_t b = tt_load32(w1 + k);
    tt_store32(panel, tt_sxtb16(a));
    tt_store32(panel + 2, tt_sxtb16_ror8(a));
    tt_store32(panel + 4, tt_sxtb16(b));
    tt_store32(panel + 6, tt_sxtb16_ror8(b));
  }
}

/* ------------------------------------------------------------------ C = A B^T */

/** What to do with C(i, j), i indexing A rows, j B rows; r = row_off + i. */
typedef enum {
  OUT_PI16,   /**< requant to int8, minus zp, into PI dst at (r, j) */
  OUT_PI16_T, /**< the same, transposed: PI dst at (j, r) */
  OUT_T16,    /**< requant to int16 into PI dst at (r, j) (fused T) */
  OUT_I8,     /**< requant (per tensor) to int8 into dst[r * ld + j] */
  OUT_NOT8,   /**< the same, stored bitwise inverted (~s = -1 - s: the score rows) */
  OUT_ACC32   /**< dst[r * ld + j] += C */
} out_kind;

/** Stage 2 of a two-step requantization (tt_mhsa_s8.h): the stage-1 int8 value v (its zero
 *  point zp_acc included) becomes clamp8(zp + requant((v - zp_acc) 2^B + bias2[j], mult2,
 *  shift2)), zp the output's. */
typedef struct {
  int32_t zp_acc;
  int32_t mult2;
  int32_t shift2;
  const int32_t *bias2; /**< per B row (output column), or NULL */
} stage2_par;

typedef struct {
  void *dst;
  int32_t rows;          /**< PI dst: rows and row length */
  int32_t k4;
  int32_t ld;            /**< OUT_I8 / OUT_NOT8 / OUT_ACC32: row stride */
  int32_t row_off;       /**< added to i (even) */
  const int32_t *bias;   /**< per B row (output column), or NULL */
  const int32_t *mult;   /**< requantization: mult[j * mstep], shift[j * mstep] */
  const int32_t *shift;
  int32_t mstep;         /**< 1: per column, 0: per tensor */
  int32_t zp;
  const stage2_par *two; /**< two-step requantization, or NULL (one rounding) */
} mm_out;

/** The stage-2 input offset of column j: bias2[j] - zp_acc 2^B, so that stage 2 takes
 *  v 2^B + offset. */
static TT_ALWAYS_INLINE int32_t stage2_offset(const stage2_par *t, int32_t j) {
  return (t->bias2 != NULL ? t->bias2[j] : 0) - t->zp_acc * (1 << TT_MHSA_S8_ACC_BIAS_BITS);
}

/** Stage 2 of v (stage-1 int8 value) through the prepared c2 (zero point folded in). */
static TT_ALWAYS_INLINE int32_t stage2_apply(int32_t v, int32_t offset, const tt_rq_col *c2) {
  return tt_ssat8(rq_apply(v * (1 << TT_MHSA_S8_ACC_BIAS_BITS) + offset, c2, c2->s != 0));
}

/** Saturate a requantized value to the output type. */
static TT_ALWAYS_INLINE int32_t out_sat(out_kind kind, int32_t v) {
  return kind == OUT_T16 ? tt_ssat16(v) : tt_ssat8(v);
}

/** Store C(i, j) = acc (one element; tails). */
static void store_1(out_kind kind, const mm_out *o, int32_t i, int32_t j, int32_t acc,
                    const tt_rq_col *c, const tt_rq_col *c2) {
  const int32_t r = o->row_off + i;
  if (kind == OUT_ACC32) {
    ((int32_t *)o->dst)[r * o->ld + j] = acc;
    return;
  }
  int32_t v = out_sat(kind, rq_one(acc, c));
  if (o->two != NULL) {
    v = stage2_apply(v, stage2_offset(o->two, (kind == OUT_I8 || kind == OUT_NOT8) ? 0 : j), c2);
  }
  if (kind == OUT_I8 || kind == OUT_NOT8) {
    ((int8_t *)o->dst)[r * o->ld + j] = (int8_t)(kind == OUT_NOT8 ? ~v : v);
  } else if (kind == OUT_PI16_T) {
    ((int16_t *)o->dst)[pi_off(j, r, o->rows, o->k4)] = (int16_t)(v - o->zp);
  } else {
    ((int16_t *)o->dst)[pi_off(r, j, o->rows, o->k4)] = (int16_t)(v - o->zp);
  }
}

/** Requantize and store the 2x2 tile s_rc at row pair i (r = row_off + i even), column pair
 *  j whose running destination offset is `at` (see mm); `fast`: both columns take the fast
 *  requantization. */
static TT_ALWAYS_INLINE void store_2x2(out_kind kind, void *dst, int32_t ld, int32_t at,
                                       int32_t r, int32_t s00, int32_t s01, int32_t s10,
                                       int32_t s11, const tt_rq_col *c0, const tt_rq_col *c1,
                                       int fast, uint32_t zp2, const tt_rq_col *c2, int32_t t0,
                                       int32_t t1) {
  if (kind == OUT_ACC32) {
    int32_t *d = (int32_t *)dst + at;
    d[0] = s00;
    d[1] = s01;
    d[ld] = s10;
    d[ld + 1] = s11;
    return;
  }
  if (kind == OUT_I8 || kind == OUT_NOT8) {
    c1 = c0; /* scores and context: one multiplier per tensor (mstep 0) */
  }
  int32_t v00 = out_sat(kind, rq_apply(s00, c0, fast));
  int32_t v01 = out_sat(kind, rq_apply(s01, c1, fast));
  int32_t v10 = out_sat(kind, rq_apply(s10, c0, fast));
  int32_t v11 = out_sat(kind, rq_apply(s11, c1, fast));
  if (c2 != NULL) { /* two-step: per output element, not per MAC */
    v00 = stage2_apply(v00, t0, c2);
    v01 = stage2_apply(v01, t1, c2);
    v10 = stage2_apply(v10, t0, c2);
    v11 = stage2_apply(v11, t1, c2);
  }
  if (kind == OUT_I8 || kind == OUT_NOT8) {
    int8_t *d = (int8_t *)dst + at;
    const int32_t inv = kind == OUT_NOT8 ? -1 : 0; /* ~v = v ^ -1 */
    d[0] = (int8_t)(v00 ^ inv);
    d[1] = (int8_t)(v01 ^ inv);
    d[ld] = (int8_t)(v10 ^ inv);
    d[ld + 1] = (int8_t)(v11 ^ inv);
  } else if (kind == OUT_PI16_T) {
    /* rows j, j+1 of dst are a PI pair (at = their start); columns r, r+1 share a group */
    int16_t *d = (int16_t *)dst + at + ((r >> 2) << 3) + (r & 3);
    tt_store32(d, tt_ssub16(tt_pack16(v00, v10), zp2));
    tt_store32(d + 4, tt_ssub16(tt_pack16(v01, v11), zp2));
  } else {
    int16_t *d = (int16_t *)dst + at;
    tt_store32(d, tt_ssub16(tt_pack16(v00, v01), zp2));
    tt_store32(d + 4, tt_ssub16(tt_pack16(v10, v11), zp2));
  }
}

/** Offset of the 2x2 tile at row pair 0, column pair j, and its step per row pair. */
static TT_ALWAYS_INLINE int32_t tile_start(out_kind kind, const mm_out *o, int32_t j,
                                           int32_t *step) {
  if (kind == OUT_I8 || kind == OUT_NOT8 || kind == OUT_ACC32) {
    *step = 2 * o->ld;
    return o->row_off * o->ld + j;
  }
  if (kind == OUT_PI16_T) {
    *step = 0; /* store_2x2 adds the column offset of r */
    return pi_off(j, 0, o->rows, o->k4);
  }
  *step = 2 * o->k4;
  return pi_off(o->row_off, j, o->rows, o->k4);
}

/**
 * C = A B^T for A [m][k4] (PI, rows lda >= k4 long), B [n][k4]: a PI buffer `b16`, or
 * (b16 == NULL) int8 weight
 * rows `w8` widened pairwise into `panel`. Column pairs outside, row pairs inside, so the
 * per-column bias and requantization (and the widened weights) are prepared once per m rows.
 * OUT_ACC32 accumulates onto dst; every other kind starts from the bias.
 */
static TT_ALWAYS_INLINE void mm(out_kind kind, const int16_t *a, int32_t m, int32_t lda,
                                const int16_t *b16, const int8_t *w8, int16_t *panel, int32_t n,
                                int32_t k4, const mm_out *o, int two_step) {
  const int32_t groups = k4 >> 2;
  const int32_t zp = o->zp;
  const uint32_t zp2 = tt_pack16(zp, kind == OUT_T16 ? 0 : zp);
  /* two_step is a constant at every call: the one-rounding instances carry no stage 2 */
  const stage2_par *two = kind == OUT_T16 || kind == OUT_ACC32 || !two_step ? NULL : o->two;
  const int32_t z = kind == OUT_T16 ? 0 : (two != NULL ? two->zp_acc : zp); /* stage 1 */
  const tt_rq_col none = {0, 0, 0, 0, 0};
  const tt_rq_col c2 = two != NULL ? tt_rq_prepare(two->mult2, two->shift2, zp) : none;
  const tt_rq_col *c2p = two != NULL ? &c2 : NULL;
  /* one multiplier for every column (mstep 0): prepared once */
  const tt_rq_col per_tensor =
      kind != OUT_ACC32 && o->mstep == 0 ? tt_rq_prepare(o->mult[0], o->shift[0], z) : none;
  for (int32_t j = 0; j < n; j += 2) {
    const int pair = j + 1 < n;
    const int16_t *b;
    if (b16 != NULL) {
      b = b16 + j * k4;
    } else {
      widen_w(w8 + j * k4, pair ? w8 + (j + 1) * k4 : NULL, k4, panel);
      b = panel;
    }
    tt_rq_col c0 = per_tensor;
    tt_rq_col c1 = per_tensor;
    if (kind != OUT_ACC32 && o->mstep != 0) {
      c0 = tt_rq_prepare(o->mult[j], o->shift[j], z);
      if (pair) {
        c1 = tt_rq_prepare(o->mult[j + 1], o->shift[j + 1], z);
      }
    }
    const int32_t b0 = o->bias != NULL ? o->bias[j] : 0;
    const int32_t b1 = o->bias != NULL && pair ? o->bias[j + 1] : 0;
    const int per_col = kind != OUT_I8 && kind != OUT_NOT8; /* scores: no stage-2 bias */
    const int32_t t0 = two != NULL ? stage2_offset(two, per_col ? j : 0) : 0;
    const int32_t t1 = two != NULL && pair ? stage2_offset(two, per_col ? j + 1 : 0) : t0;
    int32_t i = 0;
    if (pair) {
      /* Locals: the byte stores below may alias *o, so nothing is re-read from it. */
      void *const dst = o->dst;
      const int32_t ld = o->ld;
      const int32_t row_off = o->row_off;
      const int fast = c0.s != 0 && c1.s != 0;
      int32_t step;
      int32_t at = tile_start(kind, o, j, &step);
      for (; i + 2 <= m; i += 2, at += step) {
        int32_t s[4] = {b0, b1, b0, b1};
        if (kind == OUT_ACC32) {
          const int32_t *c = (const int32_t *)dst + at;
          s[0] = c[0];
          s[1] = c[1];
          s[2] = c[ld];
          s[3] = c[ld + 1];
        }
        dot_2x2(a + i * lda, b, groups, s);
        store_2x2(kind, dst, ld, at, row_off + i, s[0], s[1], s[2], s[3], &c0, &c1, fast,
                  zp2, c2p, t0, t1);
      }
    }
    for (; i < m; i += 2) { /* tails: odd last B row (contiguous) or odd last A row */
      const int32_t *acc = (const int32_t *)o->dst;
      const int32_t r = o->row_off + i;
      const int16_t *ai = a + i * lda;
      const int row_pair = i + 1 < m;
      const int32_t a_gs = row_pair ? 8 : 4;
      const int32_t b_gs = pair ? 8 : 4;
      for (int32_t di = 0; di < (row_pair ? 2 : 1); ++di) {
        for (int32_t dj = 0; dj < (pair ? 2 : 1); ++dj) {
          const int32_t init =
              kind == OUT_ACC32 ? acc[(r + di) * o->ld + j + dj] : (dj ? b1 : b0);
          const int32_t sum = dot_1x1(ai + 4 * di, a_gs, b + 4 * dj, b_gs, groups, init);
          store_1(kind, o, i + di, j + dj, sum, dj ? &c1 : &c0, c2p);
        }
      }
    }
  }
}

/* One specialization per output kind (the kind is a constant inside each), and for the kinds
 * that may round twice (Q, K, V, scores) one instance per requantization count, so the usual
 * one-rounding path keeps its registers and has no test per tile. */
static void mm_pi16(const int16_t *a, int32_t m, int32_t lda, const int16_t *b16,
                    const int8_t *w8, int16_t *panel, int32_t n, int32_t k4, const mm_out *o) {
  if (o->two != NULL) {
    mm(OUT_PI16, a, m, lda, b16, w8, panel, n, k4, o, 1);
  } else {
    mm(OUT_PI16, a, m, lda, b16, w8, panel, n, k4, o, 0);
  }
}

static void mm_pi16_t(const int16_t *a, int32_t m, int32_t lda, const int8_t *w8,
                      int16_t *panel, int32_t n, int32_t k4, const mm_out *o) {
  if (o->two != NULL) {
    mm(OUT_PI16_T, a, m, lda, NULL, w8, panel, n, k4, o, 1);
  } else {
    mm(OUT_PI16_T, a, m, lda, NULL, w8, panel, n, k4, o, 0);
  }
}

static void mm_t16(const int16_t *a, int32_t m, int32_t lda, const int8_t *w8, int16_t *panel,
                   int32_t n, int32_t k4, const mm_out *o) {
  mm(OUT_T16, a, m, lda, NULL, w8, panel, n, k4, o, 0);
}

static void mm_i8(const int16_t *a, int32_t m, const int16_t *b16, int32_t n, int32_t k4,
                  const mm_out *o) {
  mm(OUT_I8, a, m, k4, b16, NULL, NULL, n, k4, o, 0);
}

static void mm_not8(const int16_t *a, int32_t m, const int16_t *b16, int32_t n, int32_t k4,
                    const mm_out *o) {
  if (o->two != NULL) {
    mm(OUT_NOT8, a, m, k4, b16, NULL, NULL, n, k4, o, 1);
  } else {
    mm(OUT_NOT8, a, m, k4, b16, NULL, NULL, n, k4, o, 0);
  }
}

static void mm_acc32(const int16_t *a, int32_t m, const int8_t *w8, int16_t *panel, int32_t n,
                     int32_t k4, const mm_out *o) {
  mm(OUT_ACC32, a, m, k4, NULL, w8, panel, n, k4, o, 0);
}

/* ------------------------------------------------------------------ softmax */

/**
 * s8_softmax_row() of one score row held bitwise inverted, sn = ~s = -1 - s: then
 * max - s_j = sn_j - min(sn), so e_j = lut[sn_j - min(sn)] is one load from a base shifted by
 * -min(sn), and the minimum takes 4 bytes per step (tt_min4).
 */
static void softmax_row(const int8_t *sn, int32_t n, const uint16_t *lut, int32_t gm, int32_t g,
                        int32_t zp, int16_t *out, int32_t group_stride) {
  uint32_t m4 = 0x7F7F7F7Fu;
  int32_t j = 0;
  for (; j + 4 <= n; j += 4) {
    m4 = tt_min4(m4, tt_load32(sn + j));
  }
  int32_t mn = 127;
  for (int32_t b = 0; b < 32; b += 8) {
    const int32_t v = (int8_t)(m4 >> b);
    mn = v < mn ? v : mn;
  }
  for (; j < n; ++j) {
    mn = sn[j] < mn ? sn[j] : mn;
  }
  /* base[v] = lut[v - mn] for v in mn .. 127 (formed through integers: base itself may lie
   * before lut when mn > 0; every address dereferenced is inside lut). */
  const uint16_t *base = (const uint16_t *)((uintptr_t)lut - (uintptr_t)(intptr_t)mn * 2u);
  uint32_t sum = 0;
  for (j = 0; j + 4 <= n; j += 4) {
    sum += (uint32_t)base[sn[j]] + base[sn[j + 1]] + base[sn[j + 2]] + base[sn[j + 3]];
  }
  for (; j < n; ++j) {
    sum += base[sn[j]];
  }
  const uint32_t den = sum << g;
  const uint32_t half = den >> 1;
  const uint32_t zp2 = tt_pack16(zp, zp);
  const uint32_t ugm = (uint32_t)gm;
  j = 0;
  if (zp == -128) { /* TFLite's softmax output: min(127, zp + q) - zp = min(q, 255) */
    for (; j + 4 <= n; j += 4, out += group_stride) {
      const int32_t q0 = tt_usat8((int32_t)((base[sn[j]] * ugm + half) / den));
      const int32_t q1 = tt_usat8((int32_t)((base[sn[j + 1]] * ugm + half) / den));
      const int32_t q2 = tt_usat8((int32_t)((base[sn[j + 2]] * ugm + half) / den));
      const int32_t q3 = tt_usat8((int32_t)((base[sn[j + 3]] * ugm + half) / den));
      tt_store32(out, tt_pack16(q0, q1));
      tt_store32(out + 2, tt_pack16(q2, q3));
    }
  }
  for (; j + 4 <= n; j += 4, out += group_stride) {
    const int32_t q0 = (int32_t)((base[sn[j]] * ugm + half) / den);
    const int32_t q1 = (int32_t)((base[sn[j + 1]] * ugm + half) / den);
    const int32_t q2 = (int32_t)((base[sn[j + 2]] * ugm + half) / den);
    const int32_t q3 = (int32_t)((base[sn[j + 3]] * ugm + half) / den);
    /* min(127, zp + q) - zp: q >= 0, so saturating zp + q is enough */
    tt_store32(out, tt_ssub16(tt_pack16(tt_ssat8(zp + q0), tt_ssat8(zp + q1)), zp2));
    tt_store32(out + 2, tt_ssub16(tt_pack16(tt_ssat8(zp + q2), tt_ssat8(zp + q3)), zp2));
  }
  int32_t k = 0;
  for (; j < n; ++j, ++k) {
    const int32_t q = (int32_t)((base[sn[j]] * ugm + half) / den);
    out[k] = (int16_t)(tt_ssat8(zp + q) - zp);
  }
  for (; (n & 3) != 0 && k < 4; ++k) { /* padding */
    out[k] = 0;
  }
}

/* ------------------------------------------------------------------ int8 x int8 (GAP9) */
#if defined(TT_MHSA_S8_SDOT4)

/** Raw x rows first .. first+rows-1 into dst [rows][E4] int8, groups of 4 bytes of a row
 *  pair interleaved like PI and permuted [x0, x2, x1, x3] like the weights; zero padding. */
static void copy_x8(const s8_job *job, int32_t first, int32_t rows, int8_t *dst) {
  const int32_t E = job->E;
  const int32_t E4 = job->E4;
  for (int32_t r = 0; r < rows; ++r) {
    const int8_t *src = job->x + (first + r) * E;
    const int paired = (r | 1) < rows;
    int8_t *out = dst + ((r & ~1) * E4) + (paired ? (r & 1) * 4 : (r & 1) * E4);
    for (int32_t g = 0; g < E4; g += 4, out += paired ? 8 : 4) {
      for (int32_t c = 0; c < 4; ++c) {
        const int32_t e = g + (c == 1 ? 2 : (c == 2 ? 1 : c));
        out[c] = e < E ? src[e] : 0;
      }
    }
  }
}

/** Q/K/V projection of a block from the raw int8 block a8 (copy_x8) and the int8 weight
 *  rows w8 [n][E4]: C = a8 w8^T - zp_x colsum(w8) + bias, stored like mm(kind). */
static TT_ALWAYS_INLINE void mm8(out_kind kind, const s8_job *job, const int8_t *a8, int32_t m,
                                 const int8_t *w8, int32_t n, const mm_out *o, int two_step) {
  const int32_t E4 = job->E4;
  const int32_t groups = E4 >> 2;
  const int32_t zx = job->p->x_zero_point;
  const uint32_t ones = 0x01010101u;
  const uint32_t zp2 = tt_pack16(o->zp, o->zp);
  const stage2_par *two = two_step ? o->two : NULL; /* two_step: constant, as in mm() */
  const int32_t z = two != NULL ? two->zp_acc : o->zp; /* stage 1 */
  const tt_rq_col none = {0, 0, 0, 0, 0};
  const tt_rq_col c2 = two != NULL ? tt_rq_prepare(two->mult2, two->shift2, o->zp) : none;
  const tt_rq_col *c2p = two != NULL ? &c2 : NULL;
  for (int32_t j = 0; j < n; j += 2) {
    const int pair = j + 1 < n;
    const int8_t *w0 = w8 + j * E4;
    const int8_t *w1 = pair ? w0 + E4 : w0;
    int32_t sum0 = 0;
    int32_t sum1 = 0;
    for (int32_t g = 0; g < E4; g += 4) {
      sum0 = tt_sdot4(ones, tt_load32(w0 + g), sum0);
      sum1 = tt_sdot4(ones, tt_load32(w1 + g), sum1);
    }
    const int32_t b0 = (o->bias != NULL ? o->bias[j] : 0) - zx * sum0;
    const int32_t b1 = (o->bias != NULL && pair ? o->bias[j + 1] : 0) - zx * sum1;
    const tt_rq_col c0 = tt_rq_prepare(o->mult[j * o->mstep], o->shift[j * o->mstep], z);
    const tt_rq_col c1 = pair ? tt_rq_prepare(o->mult[(j + 1) * o->mstep],
                                              o->shift[(j + 1) * o->mstep], z)
                              : c0;
    const int32_t t0 = two != NULL ? stage2_offset(two, j) : 0;
    const int32_t t1 = two != NULL && pair ? stage2_offset(two, j + 1) : t0;
    int32_t step;
    int32_t at = tile_start(kind, o, j, &step);
    for (int32_t i = 0; i < m; i += 2, at += step) {
      const int row_pair = i + 1 < m;
      const int8_t *ai = a8 + i * E4;
      const int32_t a_step = row_pair ? 8 : 4;
      const int8_t *a1 = row_pair ? ai + 4 : ai;
      int32_t s[4] = {b0, b1, b0, b1};
      for (int32_t g = 0; g < groups; ++g) {
        const uint32_t x0 = tt_load32(ai + g * a_step);
        const uint32_t x1 = tt_load32(a1 + g * a_step);
        const uint32_t v0 = tt_load32(w0 + 4 * g);
        const uint32_t v1 = tt_load32(w1 + 4 * g);
        s[0] = tt_sdot4(x0, v0, s[0]);
        s[1] = tt_sdot4(x0, v1, s[1]);
        s[2] = tt_sdot4(x1, v0, s[2]);
        s[3] = tt_sdot4(x1, v1, s[3]);
      }
      if (row_pair && pair) {
        store_2x2(kind, o->dst, o->ld, at, o->row_off + i, s[0], s[1], s[2], s[3], &c0, &c1,
                  c0.s != 0 && c1.s != 0, zp2, c2p, t0, t1);
      } else {
        store_1(kind, o, i, j, s[0], &c0, c2p);
        if (pair) {
          store_1(kind, o, i, j + 1, s[1], &c1, c2p);
        }
        if (row_pair) {
          store_1(kind, o, i + 1, j, s[2], &c0, c2p);
        }
      }
    }
  }
}

static void mm8_pi16(const s8_job *job, const int8_t *a8, int32_t m, const int8_t *w8,
                     int32_t n, const mm_out *o) {
  if (o->two != NULL) {
    mm8(OUT_PI16, job, a8, m, w8, n, o, 1);
  } else {
    mm8(OUT_PI16, job, a8, m, w8, n, o, 0);
  }
}

static void mm8_pi16_t(const s8_job *job, const int8_t *a8, int32_t m, const int8_t *w8,
                       int32_t n, const mm_out *o) {
  if (o->two != NULL) {
    mm8(OUT_PI16_T, job, a8, m, w8, n, o, 1);
  } else {
    mm8(OUT_PI16_T, job, a8, m, w8, n, o, 0);
  }
}

#endif /* TT_MHSA_S8_SDOT4 */

/* ------------------------------------------------------------------ the head */

static void mhsa_s8_prepare(const s8_job *job) {
  if (job->fused) {
    widen_x(job, 0, job->S, job->kx16); /* [X - zp_x | kappa] for every head and block */
  } else {
    pi_zero_pads(job->kx16, job->S, job->P, job->P4);
  }
  pi_zero_pads(job->vt16, job->P, job->S, job->S4);
}

/** The per-column output of a projection onto head h's P columns. */
static mm_out proj_out(const s8_job *job, int32_t h, const int32_t *bias, const int32_t *mult,
                       const int32_t *shift, int32_t zp, const stage2_par *two) {
  const int32_t hp = h * job->P;
  mm_out o = {NULL, 0, 0, 0, 0, bias != NULL ? bias + hp : NULL, mult + hp, shift + hp, 1, zp,
              two};
  return o;
}

/** Stage 2 of step `bit` (TT_MHSA_S8_ACC_*), bias2 from column `first` on. */
static stage2_par stage2_of(int32_t zp_acc, int32_t mult2, int32_t shift2, const int32_t *bias2,
                            int32_t first) {
  stage2_par t = {zp_acc, mult2, shift2, bias2 != NULL ? bias2 + first : NULL};
  return t;
}

static void mhsa_s8_head(const s8_job *job, int32_t h) {
  const tt_mhsa_s8_params *p = job->p;
  const int32_t S = job->S;
  const int32_t E = job->E;
  const int32_t P = job->P;
  const int32_t EO = job->EO;
  const int32_t E4 = job->E4;
  const int32_t P4 = job->P4;
  const int32_t S4 = job->S4;
  const int8_t *wv = p->wv + h * P * E4;
  const int8_t *wo = p->wo + h * EO * P4;

  /* Two-step requantizations (NULL: one rounding). */
  const int32_t st = p->acc_stages;
  const stage2_par q2 = stage2_of(p->q_acc_zero_point, p->q2_mult, p->q2_shift, p->q2_bias, h * P);
  const stage2_par k2 = stage2_of(p->k_acc_zero_point, p->k2_mult, p->k2_shift, p->k2_bias, h * P);
  const stage2_par v2 = stage2_of(p->v_acc_zero_point, p->v2_mult, p->v2_shift, p->v2_bias, h * P);
  const stage2_par qk2 = stage2_of(p->qk_acc_zero_point, p->score2_mult, p->score2_shift, NULL, 0);

  /* V_h^T (PI [P][S4]) and, unfused, K_h (PI [S][P4]). */
  mm_out v_out = proj_out(job, h, p->bv, p->v_mult, p->v_shift, p->v_zero_point,
                          (st & TT_MHSA_S8_ACC_V) != 0 ? &v2 : NULL);
  v_out.dst = job->vt16;
  v_out.rows = P;
  v_out.k4 = S4;
  if (job->fused) {
    mm_pi16_t(job->kx16, S, job->EK, wv, job->panel, P, E4, &v_out);
  } else {
    mm_out k_out = proj_out(job, h, p->bk, p->k_mult, p->k_shift, p->k_zero_point,
                            (st & TT_MHSA_S8_ACC_K) != 0 ? &k2 : NULL);
    k_out.dst = job->kx16;
    k_out.rows = S;
    k_out.k4 = P4;
    const int8_t *wk = p->wk + h * P * E4;
    /* The block buffers xb16 .. p16 (contiguous, idle until the queries) stage as many x
     * rows as they hold, so each weight panel is widened once per `rows` rows. */
    const int32_t work = (int32_t)((const int8_t *)job->panel - (const int8_t *)job->xb16);
#if defined(TT_MHSA_S8_SDOT4)
    const int32_t fits = (work / E4) & ~1;
#else
    const int32_t fits = (work / (2 * E4)) & ~1;
#endif
    const int32_t block = s8_min(S, fits > job->X ? fits : job->X); /* xb16 holds X rows */
    for (int32_t i0 = 0; i0 < S; i0 += block) {
      const int32_t rows = s8_min(block, S - i0);
      v_out.row_off = i0;
      k_out.row_off = i0;
#if defined(TT_MHSA_S8_SDOT4)
      copy_x8(job, i0, rows, (int8_t *)job->xb16);
      mm8_pi16_t(job, (const int8_t *)job->xb16, rows, wv, P, &v_out);
      mm8_pi16(job, (const int8_t *)job->xb16, rows, wk, P, &k_out);
#else
      widen_x(job, i0, rows, job->xb16);
      mm_pi16_t(job->xb16, rows, E4, wv, job->panel, P, E4, &v_out);
      mm_pi16(job->xb16, rows, E4, NULL, wk, job->panel, P, E4, &k_out);
#endif
    }
  }

  for (int32_t i0 = 0; i0 < S; i0 += job->X) {
    const int32_t rows = s8_min(job->X, S - i0);
    /* (the K/V staging above and the previous block's row count left other padding) */
    pi_zero_pads(job->q16, rows, P, P4);
    /* score rows, stored bitwise inverted for softmax_row */
    const mm_out s_out = {job->sc8, 0, 0, S, 0, NULL, p->score_mult + h, p->score_shift + h,
                          0, p->scores_zero_point,
                          (st & TT_MHSA_S8_ACC_QK) != 0 ? &qk2 : NULL};
    if (job->fused) {
      /* T = requant16(X_blk Wf_h + bf_h) [rows][EK] (E+1 columns), then s = T [X|kappa]^T */
      const int32_t EK = job->EK;
      const mm_out t_out = {job->xb16, rows, EK, 0, 0,
                            p->bf != NULL ? p->bf + h * (E + 1) : NULL, p->t_mult + h,
                            p->t_shift + h, 0, 0, NULL};
      pi_zero_pads(job->xb16, rows, E + 1, EK);
      mm_t16(job->kx16 + i0 * EK, rows, EK, p->wf + h * (E + 1) * EK, job->panel, E + 1, EK,
             &t_out);
      mm_not8(job->xb16, rows, job->kx16, S, EK, &s_out);
    } else {
      mm_out q_out = proj_out(job, h, p->bq, p->q_mult, p->q_shift, p->q_zero_point,
                              (st & TT_MHSA_S8_ACC_Q) != 0 ? &q2 : NULL);
      q_out.dst = job->q16;
      q_out.rows = rows;
      q_out.k4 = P4;
#if defined(TT_MHSA_S8_SDOT4)
      copy_x8(job, i0, rows, (int8_t *)job->xb16);
      mm8_pi16(job, (const int8_t *)job->xb16, rows, p->wq + h * P * E4, P, &q_out);
#else
      widen_x(job, i0, rows, job->xb16);
      mm_pi16(job->xb16, rows, E4, NULL, p->wq + h * P * E4, job->panel, P, E4, &q_out);
#endif
      mm_not8(job->q16, rows, job->kx16, S, P4, &s_out);
    }
    for (int32_t r = 0; r < rows; ++r) {
      softmax_row(job->sc8 + r * S, S, p->softmax_lut, p->probs_mult, p->probs_shift,
                  p->probs_zero_point, job->p16 + pi_off(r, 0, rows, S4),
                  (r | 1) < rows ? 8 : 4);
    }
    if (job->ctx_mode) { /* context int8 into ctx8 [S][H*P], columns of head h */
      const mm_out c_out = {job->ctx8 + h * P, 0, 0, job->H * P, i0, NULL, &p->ctx_mult,
                            &p->ctx_shift, 0, p->ctx_zero_point, NULL};
      mm_i8(job->p16, rows, job->vt16, P, S4, &c_out);
    } else { /* context PI [rows][P4] into q16 (Q is no longer needed), then y32 += c Wo_h */
      const mm_out c_out = {job->q16, rows, P4, 0, 0, NULL, &p->ctx_mult, &p->ctx_shift, 0,
                            p->ctx_zero_point, NULL};
      mm_pi16(job->p16, rows, S4, job->vt16, NULL, NULL, P, S4, &c_out);
      const mm_out y_out = {job->y32, 0, 0, EO, i0, NULL, NULL, NULL, 0, 0, NULL};
      mm_acc32(job->q16, rows, wo, job->panel, EO, P4, &y_out);
    }
  }
}

static void mhsa_s8_out_block(const s8_job *job, int32_t i0, int32_t rows, int8_t *y) {
  const tt_mhsa_s8_params *p = job->p;
  const int32_t P = job->P;
  const int32_t EO = job->EO;
  const int32_t HP = job->H * P;
  const int32_t zc = p->ctx_zero_point;
  for (int32_t r = 0; r < rows; ++r) {
    for (int32_t o = 0; o < EO; ++o) {
      job->y32[r * EO + o] = p->bo != NULL ? p->bo[o] : 0;
    }
  }
  const mm_out y_out = {job->y32, 0, 0, EO, 0, NULL, NULL, NULL, 0, 0, NULL};
  for (int32_t h = 0; h < job->H; ++h) {
    /* (ctx8 - zp_c) of head h, rows i0 .., into the PI block q16 [rows][P4] */
    widen_rows(job->ctx8 + i0 * HP + h * P, HP, rows, P, zc, job->P4, job->P4, 0, job->q16);
    mm_acc32(job->q16, rows, p->wo + h * EO * job->P4, job->panel, EO, job->P4, &y_out);
  }
  if ((p->acc_stages & TT_MHSA_S8_ACC_O) != 0) { /* two-step: per output element */
    for (int32_t r = 0; r < rows; ++r) {
      for (int32_t o = 0; o < EO; ++o) {
        y[(i0 + r) * EO + o] = s8_out_y(p, job->y32[r * EO + o], o);
      }
    }
    return;
  }
  for (int32_t o = 0; o < EO; ++o) {
    const tt_rq_col c = tt_rq_prepare(p->o_mult[o], p->o_shift[o], p->y_zero_point);
    for (int32_t r = 0; r < rows; ++r) {
      const int32_t acc = job->y32[r * EO + o];
      y[(i0 + r) * EO + o] = (int8_t)tt_ssat8(rq_apply(acc, &c, c.s != 0));
    }
  }
}

/**
 * @file tt_mhsa_s8_common.h
 * @brief NOT an API: internal to the int8 MHSA variants (tt_mhsa_s8.c,
 *        tt_mhsa_s8_reference.c), kept in include/ so that every build that copies the
 *        kernel headers finds it: argument checks, the scratch layout,
 *        requantization and the public entry points (it defines functions, so
 *        exactly one .c file per variant includes it). That file defines
 *        `static void mhsa_s8_prepare(const s8_job *job)`: work shared by all
 *        heads of one call (run once, after the scratch is split; it also
 *        zeroes the padding the dot products read), and
 *        `static void mhsa_s8_head(const s8_job *job, int32_t h)`: add head
 *        h's share of the out-projection into job->y32 (accumulator mode) or
 *        store its context columns into job->ctx8 (context mode), and
 *        `static void mhsa_s8_out_block(const s8_job *job, int32_t i0,
 *        int32_t rows, int8_t *y)`: context mode, the out-projection of rows
 *        i0 .. i0+rows-1 (i0 even) into y.
 *
 * Scratch layout (byte offsets in this order, every size a multiple of 4;
 * tt_mhsa_s8.h gives the formula):
 *   acc | kx16 | vt16 | xb16 | q16 | sc8 | p16 | panel
 * with acc = y32 [S][E_out] int32 (accumulator mode) or ctx8 [S][H*P] int8
 * followed by y32 [X][E_out] (context mode, when that is smaller).
 */
#ifndef TT_MHSA_S8_COMMON_H
#define TT_MHSA_S8_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa_s8.h"

/** Everything one head needs: shape, knobs, parameters, input, scratch buffers. */
typedef struct {
  int32_t S, E, H, P, EO; /**< seq, embed, heads, proj, out_features */
  int32_t X;              /**< query rows per block (even, or S) */
  int32_t E4, P4, S4;     /**< E, P, S rounded up to a multiple of 4 */
  int32_t EK;             /**< row length of the x and T buffers: E4, fused (E+1) rounded up */
  int32_t fused;
  int32_t ctx_mode; /**< 1: context mode (ctx8 + block y32), 0: accumulator mode */
  const tt_mhsa_s8_params *p;
  const int8_t *x;
  int32_t *y32;   /**< accumulator mode: [S][EO]; context mode: [X][EO] (one block) */
  int8_t *ctx8;   /**< context mode: int8 context of all heads [S][H*P], else NULL */
  int16_t *kx16;  /**< unfused: K_h - zp_k [S][P4]; fused: [x - zp_x | kappa] [S][EK] */
  int16_t *vt16;  /**< V_h^T - zp_v [P][S4] */
  int16_t *xb16;  /**< unfused: x block - zp_x [X][E4]; fused: T block [X][EK] */
  int16_t *q16;   /**< unfused: Q block - zp_q, then context block - zp_c [X][P4] */
  int8_t *sc8;    /**< int8 score block [X][S] */
  int16_t *p16;   /**< softmax output block - zp_p [X][S4] */
  int16_t *panel; /**< two weight rows widened to int16 [2][max(E4, P4)] */
} s8_job;

static int32_t s8_ceil4(int32_t n) { return (n + 3) & ~3; }

static int32_t s8_min(int32_t a, int32_t b) { return a < b ? a : b; }

/** Byte sizes of the scratch buffers (in layout order), or 0 on invalid dims/config;
 *  *ctx_mode tells which accumulator the first one is. */
static int s8_buffer_sizes(const tt_mhsa_dims *d, const tt_mhsa_config *cfg, int64_t sizes[8],
                           int32_t *ctx_mode) {
  if (d == NULL || cfg == NULL) {
    return 0;
  }
  if (d->seq < 1 || d->embed < 1 || d->heads < 1 || d->proj < 1 || d->out_features < 1) {
    return 0;
  }
  if (d->seq > TT_MHSA_S8_MAX_DIM || d->embed > TT_MHSA_S8_MAX_DIM ||
      d->proj > TT_MHSA_S8_MAX_DIM || d->out_features > TT_MHSA_S8_MAX_DIM ||
      (int64_t)d->heads * d->proj > TT_MHSA_S8_MAX_DIM) {
    return 0;
  }
  if (cfg->rows_per_block < 1 || (cfg->fuse_qk != 0 && cfg->fuse_qk != 1)) {
    return 0;
  }
  const int64_t s = d->seq;
  const int64_t eo = d->out_features;
  const int64_t p = d->proj;
  const int64_t e4 = cfg->fuse_qk ? s8_ceil4(d->embed + 1) : s8_ceil4(d->embed); /* EK */
  const int64_t p4 = s8_ceil4(d->proj);
  const int64_t s4 = s8_ceil4(d->seq);
  const int64_t rpb = cfg->rows_per_block < d->seq ? cfg->rows_per_block : d->seq;
  const int64_t x = rpb + (rpb & 1) < s ? rpb + (rpb & 1) : s;
  const int64_t y32_all = 4 * s * eo;
  const int64_t ctx = ((s * d->heads * p + 3) & ~(int64_t)3) + 4 * x * eo;
  *ctx_mode = ctx < y32_all;
  sizes[0] = *ctx_mode ? ctx : y32_all;          /* acc */
  sizes[1] = cfg->fuse_qk ? 2 * s * e4 : 2 * s * p4; /* kx16 */
  sizes[2] = 2 * p * s4;                           /* vt16 */
  sizes[3] = 2 * x * e4;                           /* xb16 */
  sizes[4] = 2 * x * p4;                           /* q16 */
  sizes[5] = (x * s + 3) & ~(int64_t)3;            /* sc8 */
  sizes[6] = 2 * x * s4;                           /* p16 */
  sizes[7] = 4 * (e4 > p4 ? e4 : p4);              /* panel */
  return 1;
}

/** Scratch bytes, or -1 when invalid or beyond int32_t. */
static int64_t s8_scratch_bytes(const tt_mhsa_dims *d, const tt_mhsa_config *cfg) {
  int64_t sizes[8];
  int32_t ctx_mode;
  if (!s8_buffer_sizes(d, cfg, sizes, &ctx_mode)) {
    return -1;
  }
  int64_t total = 0;
  for (int i = 0; i < 8; ++i) {
    total += sizes[i];
  }
  /* Also bounds the largest weight array, H*(E+1)*EK (fused) or H*P*E4, and x, y. */
  const int64_t wf =
      cfg->fuse_qk ? (int64_t)d->heads * (d->embed + 1) * s8_ceil4(d->embed + 1) : 0;
  const int64_t xy = (int64_t)d->seq * (d->embed > d->out_features ? d->embed : d->out_features);
  if (total > INT32_MAX || wf > INT32_MAX || xy > INT32_MAX) {
    return -1;
  }
  return total;
}

static int s8_aligned4(const void *ptr) { return ((uintptr_t)ptr & 3u) == 0; }

static int s8_zp_ok(int32_t zp) { return zp >= -128 && zp <= 127; }

/** 1 if the required parameters are present, aligned and in range, and exactly the
 *  Q/K variant of fuse_qk is given. */
static int s8_params_valid(const tt_mhsa_s8_params *p, int32_t fused) {
  if (p == NULL || p->wv == NULL || p->wo == NULL || p->v_mult == NULL || p->v_shift == NULL ||
      p->score_mult == NULL || p->score_shift == NULL || p->o_mult == NULL ||
      p->o_shift == NULL || p->softmax_lut == NULL) {
    return 0;
  }
  if (!s8_aligned4(p->wv) || !s8_aligned4(p->wo)) {
    return 0;
  }
  if (fused) {
    if (p->wf == NULL || !s8_aligned4(p->wf) || p->t_mult == NULL || p->t_shift == NULL ||
        p->wq != NULL || p->wk != NULL || p->bq != NULL || p->bk != NULL ||
        p->q_mult != NULL || p->q_shift != NULL || p->k_mult != NULL || p->k_shift != NULL) {
      return 0;
    }
  } else if (p->wq == NULL || p->wk == NULL || !s8_aligned4(p->wq) || !s8_aligned4(p->wk) ||
             p->q_mult == NULL || p->q_shift == NULL || p->k_mult == NULL ||
             p->k_shift == NULL || p->wf != NULL || p->bf != NULL || p->t_mult != NULL ||
             p->t_shift != NULL) {
    return 0;
  }
  if (!s8_zp_ok(p->x_zero_point) || !s8_zp_ok(p->q_zero_point) || !s8_zp_ok(p->k_zero_point) ||
      !s8_zp_ok(p->v_zero_point) || !s8_zp_ok(p->scores_zero_point) ||
      !s8_zp_ok(p->probs_zero_point) || !s8_zp_ok(p->ctx_zero_point) ||
      !s8_zp_ok(p->y_zero_point)) {
    return 0;
  }
  if (p->probs_mult < 1 || p->probs_mult > 65536 || p->probs_shift < 0 || p->probs_shift > 16 ||
      p->ctx_shift < -31 || p->ctx_shift > 30 || p->fused_one < 0 || p->fused_one > 255) {
    return 0;
  }
  /* Two-step requantizations: known bits (no Q/K/QK with FWSA), stage-2 shifts in the
   * range s8_requant takes, zero points in range, biases only where their bit is set. */
  const int32_t st = p->acc_stages;
  if (st < 0 || st > 31 ||
      (fused && (st & (TT_MHSA_S8_ACC_Q | TT_MHSA_S8_ACC_K | TT_MHSA_S8_ACC_QK)) != 0)) {
    return 0;
  }
  const int32_t s2[5][4] = {
      {TT_MHSA_S8_ACC_Q, p->q2_shift, p->q_acc_zero_point, p->q2_bias != NULL},
      {TT_MHSA_S8_ACC_K, p->k2_shift, p->k_acc_zero_point, p->k2_bias != NULL},
      {TT_MHSA_S8_ACC_V, p->v2_shift, p->v_acc_zero_point, p->v2_bias != NULL},
      {TT_MHSA_S8_ACC_O, p->o2_shift, p->o_acc_zero_point, p->o2_bias != NULL},
      {TT_MHSA_S8_ACC_QK, p->score2_shift, p->qk_acc_zero_point, 0}};
  for (int i = 0; i < 5; ++i) {
    if ((st & s2[i][0]) != 0 ? (s2[i][1] < -31 || s2[i][1] > 30 || !s8_zp_ok(s2[i][2]))
                             : s2[i][3] != 0) {
      return 0;
    }
  }
  /* The softmax sums stay in range only with entries <= 2^15, and the row maximum's
   * entry lut[0] >= 1 keeps the denominator positive. */
  if (p->softmax_lut[0] < 1) {
    return 0;
  }
  for (int32_t d = 0; d < 256; ++d) {
    if (p->softmax_lut[d] > 32768u) {
      return 0;
    }
  }
  return 1;
}

/** 1 if the byte ranges [a, a + a_bytes) and [b, b + b_bytes) intersect. */
static int s8_overlaps(const void *a, int64_t a_bytes, const void *b, int64_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a;
  const uintptr_t b0 = (uintptr_t)b;
  return a0 < b0 + (uintptr_t)b_bytes && b0 < a0 + (uintptr_t)a_bytes;
}

/** Checks shared by every entry point; y may be NULL (tt_mhsa_s8_heads). */
static tt_status s8_check(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                          const tt_mhsa_s8_params *p, const int8_t *x, const int8_t *y,
                          int check_y, const int8_t *scratch, int32_t scratch_bytes) {
  const int64_t need = s8_scratch_bytes(dims, cfg);
  if (need < 0 || !s8_params_valid(p, cfg->fuse_qk) || x == NULL || scratch == NULL ||
      !s8_aligned4(scratch) || (check_y && y == NULL)) {
    return TT_ARG_ERROR;
  }
  /* The prefix of S << (15 + g) <= 2^31 keeps D = sum << g below 2^31. */
  if (((int64_t)dims->seq << (15 + p->probs_shift)) > ((int64_t)1 << 31)) {
    return TT_ARG_ERROR;
  }
  if (scratch_bytes < need) {
    return TT_SCRATCH_ERROR;
  }
  const int64_t x_bytes = (int64_t)dims->seq * dims->embed;
  if (s8_overlaps(x, x_bytes, scratch, need)) {
    return TT_ARG_ERROR;
  }
  if (check_y) {
    const int64_t y_bytes = (int64_t)dims->seq * dims->out_features;
    if (s8_overlaps(x, x_bytes, y, y_bytes) || s8_overlaps(y, y_bytes, scratch, need)) {
      return TT_ARG_ERROR;
    }
  }
  return TT_OK;
}

/** Split the scratch into the job's buffers (arguments already checked). The variant's
 *  mhsa_s8_prepare() and its block loops keep the zero padding of the int16 operands. */
static void s8_job_init(s8_job *job, const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                        const tt_mhsa_s8_params *p, const int8_t *x, int8_t *scratch) {
  int64_t sizes[8];
  (void)s8_buffer_sizes(dims, cfg, sizes, &job->ctx_mode);
  job->S = dims->seq;
  job->E = dims->embed;
  job->H = dims->heads;
  job->P = dims->proj;
  job->EO = dims->out_features;
  job->E4 = s8_ceil4(dims->embed);
  job->EK = cfg->fuse_qk ? s8_ceil4(dims->embed + 1) : job->E4;
  job->X = (int32_t)(sizes[3] / 2 / job->EK);
  job->P4 = s8_ceil4(dims->proj);
  job->S4 = s8_ceil4(dims->seq);
  job->fused = cfg->fuse_qk;
  job->p = p;
  job->x = x;
  int8_t *at = scratch;
  if (job->ctx_mode) {
    const int32_t ctx_bytes = (job->S * job->H * job->P + 3) & ~3;
    job->ctx8 = at;
    job->y32 = (int32_t *)(void *)(at + ctx_bytes);
  } else {
    job->ctx8 = NULL;
    job->y32 = (int32_t *)(void *)at;
  }
  at += sizes[0];
  job->kx16 = (int16_t *)(void *)at;
  at += sizes[1];
  job->vt16 = (int16_t *)(void *)at;
  at += sizes[2];
  job->xb16 = (int16_t *)(void *)at;
  at += sizes[3];
  job->q16 = (int16_t *)(void *)at;
  at += sizes[4];
  job->sc8 = at;
  at += sizes[5];
  job->p16 = (int16_t *)(void *)at;
  at += sizes[6];
  job->panel = (int16_t *)(void *)at;
}

/**
 * (acc * mult + 2^(n-1)) >> n with n = 31 - shift in 1 .. 62 (64-bit product): round half
 * up, one rounding. For n > 32 only the high word of the product is needed:
 * floor((hi 2^32 + lo + 2^(n-1)) / 2^n) = (hi + 2^(n-33)) >> (n-32) since lo < 2^32.
 * Right shifts of negative values are arithmetic on every supported compiler.
 */
static inline int32_t s8_requant(int32_t acc, int32_t mult, int32_t shift) {
  const int32_t n = 31 - shift;
  if (n > 32) {
    const int32_t hi = (int32_t)(((int64_t)acc * mult) >> 32);
    return (hi + ((int32_t)1 << (n - 33))) >> (n - 32);
  }
  return (int32_t)(((int64_t)acc * mult + ((int64_t)1 << (n - 1))) >> n);
}

/** clamp8(zp + requant(...)) - zp: the int8 value, stored minus its zero point. */
static inline int16_t s8_requant_off(int32_t acc, int32_t mult, int32_t shift, int32_t zp) {
  int32_t v = zp + s8_requant(acc, mult, shift);
  v = v < -128 ? -128 : (v > 127 ? 127 : v);
  return (int16_t)(v - zp);
}

/** clamp8(zp + requant(...)). */
static inline int8_t s8_requant8(int32_t acc, int32_t mult, int32_t shift, int32_t zp) {
  int32_t v = zp + s8_requant(acc, mult, shift);
  return (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
}

/** clamp16(requant(...)): the fused T. */
static inline int16_t s8_requant16(int32_t acc, int32_t mult, int32_t shift) {
  const int32_t v = s8_requant(acc, mult, shift);
  return (int16_t)(v < -32768 ? -32768 : (v > 32767 ? 32767 : v));
}

/** Stage 2 of a two-step requantization: clamp8(zp + requant((q1 - zp_acc) 2^B + bias,
 *  mult, shift)) from the stage-1 int8 value q1 (its zero point included). */
static inline int32_t s8_stage2(int32_t q1, int32_t zp_acc, int32_t bias, int32_t mult,
                                int32_t shift, int32_t zp) {
  const int32_t v = zp + s8_requant((q1 - zp_acc) * (1 << TT_MHSA_S8_ACC_BIAS_BITS) + bias,
                                    mult, shift);
  return v < -128 ? -128 : (v > 127 ? 127 : v);
}

/** One output y[., o] from its int32 sum (bo included): one or two requantizations. */
static inline int8_t s8_out_y(const tt_mhsa_s8_params *p, int32_t acc, int32_t o) {
  if ((p->acc_stages & TT_MHSA_S8_ACC_O) == 0) {
    return s8_requant8(acc, p->o_mult[o], p->o_shift[o], p->y_zero_point);
  }
  const int32_t q1 = s8_requant8(acc, p->o_mult[o], p->o_shift[o], p->o_acc_zero_point);
  return (int8_t)s8_stage2(q1, p->o_acc_zero_point, p->o2_bias != NULL ? p->o2_bias[o] : 0,
                           p->o2_mult, p->o2_shift, p->y_zero_point);
}

static void mhsa_s8_prepare(const s8_job *job);
static void mhsa_s8_head(const s8_job *job, int32_t h);
static void mhsa_s8_out_block(const s8_job *job, int32_t i0, int32_t rows, int8_t *y);

int32_t tt_mhsa_s8_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg) {
  const int64_t bytes = s8_scratch_bytes(dims, cfg);
  return bytes < 0 ? TT_ARG_ERROR : (int32_t)bytes;
}

int32_t tt_mhsa_s8_context_bytes(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg) {
  int64_t sizes[8];
  int32_t ctx_mode;
  if (s8_scratch_bytes(dims, cfg) < 0 || !s8_buffer_sizes(dims, cfg, sizes, &ctx_mode)) {
    return TT_ARG_ERROR;
  }
  return ctx_mode ? (dims->seq * dims->heads * dims->proj + 3) & ~3 : 0;
}

tt_status tt_mhsa_s8_heads(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                           const tt_mhsa_s8_params *p, const int8_t *x, int8_t *scratch,
                           int32_t scratch_bytes, int32_t h_first, int32_t h_step,
                           int8_t *context) {
  const tt_status status = s8_check(dims, cfg, p, x, NULL, 0, scratch, scratch_bytes);
  if (status != TT_OK) {
    return status;
  }
  if (h_first < 0 || h_step < 1) {
    return TT_ARG_ERROR;
  }
  s8_job job;
  s8_job_init(&job, dims, cfg, p, x, scratch);
  if (job.ctx_mode && context != NULL) {
    job.ctx8 = context;
  }
  mhsa_s8_prepare(&job);
  for (int32_t h = h_first; h < job.H; h += h_step) {
    mhsa_s8_head(&job, h);
  }
  return TT_OK;
}

void tt_mhsa_s8_finish(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                       const tt_mhsa_s8_params *p, int8_t *scratch, const int8_t *context,
                       int8_t *y, int32_t first, int32_t last) {
  s8_job job;
  s8_job_init(&job, dims, cfg, p, NULL, scratch);
  if (!job.ctx_mode) { /* y = requant(y32) */
    const int32_t eo = job.EO;
    for (int32_t i = first; i < last; ++i) {
      for (int32_t o = 0; o < eo; ++o) {
        y[i * eo + o] = s8_out_y(p, job.y32[i * eo + o], o);
      }
    }
    return;
  }
  if (context != NULL) {
    job.ctx8 = (int8_t *)(uintptr_t)context; /* read only below */
  }
  for (int32_t i0 = first; i0 < last; i0 += job.X) {
    mhsa_s8_out_block(&job, i0, s8_min(job.X, last - i0), y);
  }
}

tt_status tt_mhsa_s8(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                     const tt_mhsa_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                     int32_t scratch_bytes) {
  /* Validate everything once, before the first write. */
  const tt_status status = s8_check(dims, cfg, p, x, y, 1, scratch, scratch_bytes);
  if (status != TT_OK) {
    return status;
  }
  s8_job job;
  s8_job_init(&job, dims, cfg, p, x, scratch);
  mhsa_s8_prepare(&job);
  if (!job.ctx_mode) { /* y32 = bo */
    for (int32_t i = 0; i < job.S; ++i) {
      for (int32_t o = 0; o < job.EO; ++o) {
        job.y32[i * job.EO + o] = p->bo != NULL ? p->bo[o] : 0;
      }
    }
  }
  for (int32_t h = 0; h < job.H; ++h) {
    mhsa_s8_head(&job, h);
  }
  tt_mhsa_s8_finish(dims, cfg, p, scratch, NULL, y, 0, job.S);
  return TT_OK;
}

#endif /* TT_MHSA_S8_COMMON_H */

/**
 * @file tt_mhsa_s8_reference.c
 * @brief Portable C reference of the int8 MHSA (API, layouts, integer program:
 *        tt_mhsa_s8.h). Plain loops, one output element at a time: the oracle
 *        the production kernel (tt_mhsa_s8.c) is checked against, and the
 *        fallback for any C99 target.
 *
 * Loop structure (one batch item; the public entry points are in
 * tt_mhsa_s8_common.h):
 * @code
 *   fused: X = [x - zp_x | kappa]                    [S][EK]  kx16 (once per call)
 *   y32 = bo
 *   for h in heads:
 *     V_h^T - zp_v                                   [P][S4]  vt16
 *     unfused: K_h - zp_k                            [S][P4]  kx16
 *     for each block of X query rows:
 *       unfused: Q - zp_q                           [X][P4]  q16
 *                s = requant((Q - zp_q)(K - zp_k)^T) [X][S]   sc8
 *       fused:   T = requant16(X_blk Wf_h + bf_h)    [X][EK]  xb16 (E+1 columns)
 *                s = requant(T X^T)                  [X][S]   sc8
 *       pr = softmax_rows(s) - zp_p                  [X][S4]  p16
 *       c  = requant(pr (V_h - zp_v)) - zp_c         [X][P4]  q16
 *       accumulator mode: y32[blk] += c Wo_h         [S][E_out]
 *       context mode:     ctx8[blk, h] = c + zp_c    [S][H*P]
 *   accumulator mode: y = requant(y32)
 *   context mode: per block, y32 = bo + sum_h (ctx8[blk, h] - zp_c) Wo_h, y = requant(y32)
 * @endcode
 * The int16 buffers are row-major with rows of n4 elements here (the SIMD
 * variant interleaves row pairs in the same space).
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_mhsa_s8.h"
#include "tt_mhsa_s8_common.h"

/**
 * Integer softmax of one int8 score row s[0 .. n-1]; output j (minus zp_p) goes to
 * out[(j / 4) * group_stride + j % 4] (group_stride 4: contiguous; 8: one row of a pair
 * of interleaved rows).
 *
 *   e_j = lut[max - s_j]  (Q0.15),  D = (sum_j e_j) << g,
 *   p_j = min(127, zp + (e_j Gm + D / 2) / D)       (unsigned; round half up)
 *
 * sum <= S 2^15 and the checked S << (15 + g) <= 2^31 keep D <= 2^31, and Gm <= 2^16 keeps
 * e_j Gm + D / 2 < 2^32. p_j >= zp always, so only the upper clamp is needed.
 */
static void s8_softmax_row(const int8_t *s, int32_t n, const uint16_t *lut, int32_t gm,
                           int32_t g, int32_t zp, int16_t *out, int32_t group_stride) {
  int32_t max = s[0];
  for (int32_t j = 1; j < n; ++j) {
    if (s[j] > max) {
      max = s[j];
    }
  }
  uint32_t sum = 0;
  for (int32_t j = 0; j < n; ++j) {
    sum += lut[max - s[j]];
  }
  const uint32_t den = sum << g;
  const uint32_t half = den >> 1;
  const int32_t top = 127 - zp;
  for (int32_t j = 0; j < n; ++j) {
    const uint32_t q = ((uint32_t)lut[max - s[j]] * (uint32_t)gm + half) / den;
    out[(j >> 2) * group_stride + (j & 3)] = (int16_t)((int32_t)q > top ? top : (int32_t)q);
  }
}

/** A projection's output n (h*P + c, or o) minus zp_out from its int32 sum (bias included):
 *  clamp8(zp_out + requant(acc)), or the two-step requantization when `bit` is set in
 *  acc_stages (stage 1 to zp_acc, stage 2 with bias2[n]). */
static inline int16_t proj_off(const tt_mhsa_s8_params *p, int32_t bit, int32_t acc, int32_t mult,
                        int32_t shift, int32_t zp_out, int32_t zp_acc, int32_t mult2,
                        int32_t shift2, const int32_t *bias2, int32_t n) {
  if ((p->acc_stages & bit) == 0) {
    return s8_requant_off(acc, mult, shift, zp_out);
  }
  const int32_t q1 = s8_requant8(acc, mult, shift, zp_acc);
  return (int16_t)(s8_stage2(q1, zp_acc, bias2 != NULL ? bias2[n] : 0, mult2, shift2, zp_out) -
                   zp_out);
}

/** One int8 score from its int32 sum: one or (ACC_QK) two requantizations. */
static inline int8_t score8(const tt_mhsa_s8_params *p, int32_t acc, int32_t h) {
  if ((p->acc_stages & TT_MHSA_S8_ACC_QK) == 0) {
    return s8_requant8(acc, p->score_mult[h], p->score_shift[h], p->scores_zero_point);
  }
  const int32_t q1 = s8_requant8(acc, p->score_mult[h], p->score_shift[h], p->qk_acc_zero_point);
  return (int8_t)s8_stage2(q1, p->qk_acc_zero_point, 0, p->score2_mult, p->score2_shift,
                           p->scores_zero_point);
}

/** Weight k of a row stored with groups of 4 as [w0, w2, w1, w3]: swap k % 4 == 1 and 2. */
static int32_t w_at(const int8_t *row, int32_t k) {
  return row[(k & ~3) | ((k & 1) << 1) | ((k & 2) >> 1)];
}

/** sum_k a[k] * w_at(w, k) over k < n: activation (int16) times a stored weight row. */
static int32_t dot_w(const int16_t *a, const int8_t *w, int32_t n) {
  int32_t acc = 0;
  for (int32_t k = 0; k < n; ++k) {
    acc += (int32_t)a[k] * w_at(w, k);
  }
  return acc;
}

/** sum_k a[k] * b[k] over k < n. */
static int32_t dot16(const int16_t *a, const int16_t *b, int32_t n) {
  int32_t acc = 0;
  for (int32_t k = 0; k < n; ++k) {
    acc += (int32_t)a[k] * b[k];
  }
  return acc;
}

/** dst[r][e] = x[r][e] - zp_x for rows r < rows, row stride EK (padding stays 0); fused,
 *  also dst[r][E] = kappa. */
static void widen_x(const s8_job *job, int32_t first_row, int32_t rows, int16_t *dst) {
  const int32_t zx = job->p->x_zero_point;
  for (int32_t r = 0; r < rows; ++r) {
    const int8_t *src = job->x + (first_row + r) * job->E;
    for (int32_t e = 0; e < job->E; ++e) {
      dst[r * job->EK + e] = (int16_t)(src[e] - zx);
    }
    if (job->fused) {
      dst[r * job->EK + job->E] = (int16_t)job->p->fused_one;
    }
  }
}

static void mhsa_s8_prepare(const s8_job *job) {
  /* Zero the int16 buffers: their padding columns (k >= n in an n4-wide row) are never
   * written and must read as 0 in the dot products. */
  for (int16_t *w = job->kx16; w < (int16_t *)(void *)job->sc8; ++w) {
    *w = 0;
  }
  for (int16_t *w = job->p16; w < job->panel + 2 * (job->EK > job->P4 ? job->EK : job->P4);
       ++w) {
    *w = 0;
  }
  if (job->fused) {
    widen_x(job, 0, job->S, job->kx16); /* X for every head and block */
  }
}

static void mhsa_s8_head(const s8_job *job, int32_t h) {
  const tt_mhsa_s8_params *p = job->p;
  const int32_t S = job->S;
  const int32_t E = job->E;
  const int32_t P = job->P;
  const int32_t EO = job->EO;
  const int32_t E4 = job->E4;
  const int32_t EK = job->EK;
  const int32_t P4 = job->P4;
  const int32_t S4 = job->S4;
  int16_t *const xrows = job->fused ? job->kx16 : job->xb16; /* X - zp_x, row stride EK */

  /* V_h^T and (unfused) K_h over all S rows, one x row at a time through xb16. */
  for (int32_t i = 0; i < S; ++i) {
    const int16_t *xi = xrows;
    if (job->fused) {
      xi = xrows + i * EK;
    } else {
      widen_x(job, i, 1, job->xb16);
    }
    for (int32_t c = 0; c < P; ++c) {
      const int32_t n = h * P + c;
      const int32_t bv = p->bv != NULL ? p->bv[n] : 0;
      job->vt16[c * S4 + i] =
          proj_off(p, TT_MHSA_S8_ACC_V, dot_w(xi, p->wv + n * E4, E4) + bv, p->v_mult[n],
                   p->v_shift[n], p->v_zero_point, p->v_acc_zero_point, p->v2_mult,
                   p->v2_shift, p->v2_bias, n);
      if (!job->fused) {
        const int32_t bk = p->bk != NULL ? p->bk[n] : 0;
        job->kx16[i * P4 + c] =
            proj_off(p, TT_MHSA_S8_ACC_K, dot_w(xi, p->wk + n * E4, E4) + bk, p->k_mult[n],
                     p->k_shift[n], p->k_zero_point, p->k_acc_zero_point, p->k2_mult,
                     p->k2_shift, p->k2_bias, n);
      }
    }
  }

  for (int32_t i0 = 0; i0 < S; i0 += job->X) {
    const int32_t rows = s8_min(job->X, S - i0);
    /* Score rows of the block. */
    if (job->fused) {
      const int8_t *wf = p->wf + h * (E + 1) * EK;
      for (int32_t r = 0; r < rows; ++r) {
        const int16_t *xi = xrows + (i0 + r) * EK;
        for (int32_t c = 0; c <= E; ++c) {
          const int32_t bf = p->bf != NULL ? p->bf[h * (E + 1) + c] : 0;
          job->xb16[r * EK + c] = s8_requant16(dot_w(xi, wf + c * EK, EK) + bf, p->t_mult[h],
                                               p->t_shift[h]);
        }
        for (int32_t j = 0; j < S; ++j) {
          job->sc8[r * S + j] =
              s8_requant8(dot16(job->xb16 + r * EK, xrows + j * EK, EK), p->score_mult[h],
                          p->score_shift[h], p->scores_zero_point);
        }
      }
    } else {
      for (int32_t r = 0; r < rows; ++r) {
        widen_x(job, i0 + r, 1, job->xb16);
        for (int32_t c = 0; c < P; ++c) {
          const int32_t n = h * P + c;
          const int32_t bq = p->bq != NULL ? p->bq[n] : 0;
          job->q16[r * P4 + c] =
              proj_off(p, TT_MHSA_S8_ACC_Q, dot_w(job->xb16, p->wq + n * E4, E4) + bq,
                       p->q_mult[n], p->q_shift[n], p->q_zero_point, p->q_acc_zero_point,
                       p->q2_mult, p->q2_shift, p->q2_bias, n);
        }
        for (int32_t j = 0; j < S; ++j) {
          job->sc8[r * S + j] = score8(p, dot16(job->q16 + r * P4, job->kx16 + j * P4, P4), h);
        }
      }
    }
    for (int32_t r = 0; r < rows; ++r) {
      s8_softmax_row(job->sc8 + r * S, S, p->softmax_lut, p->probs_mult, p->probs_shift,
                     p->probs_zero_point, job->p16 + r * S4, 4);
      /* Context of row r (into q16: the row's Q is no longer needed). */
      int16_t *ctx = job->q16 + r * P4;
      for (int32_t c = 0; c < P; ++c) {
        ctx[c] = s8_requant_off(dot16(job->p16 + r * S4, job->vt16 + c * S4, S4), p->ctx_mult,
                                p->ctx_shift, p->ctx_zero_point);
      }
      if (job->ctx_mode) { /* keep it for the out-projection at the end */
        int8_t *keep = job->ctx8 + (i0 + r) * job->H * P + h * P;
        for (int32_t c = 0; c < P; ++c) {
          keep[c] = (int8_t)(ctx[c] + p->ctx_zero_point);
        }
      } else { /* y32 += c Wo_h */
        int32_t *y_row = job->y32 + (i0 + r) * EO;
        for (int32_t o = 0; o < EO; ++o) {
          y_row[o] += dot_w(ctx, p->wo + (h * EO + o) * P4, P4);
        }
      }
    }
  }
}

static void mhsa_s8_out_block(const s8_job *job, int32_t i0, int32_t rows, int8_t *y) {
  const tt_mhsa_s8_params *p = job->p;
  const int32_t P = job->P;
  const int32_t EO = job->EO;
  const int32_t HP = job->H * P;
  for (int32_t r = 0; r < rows; ++r) {
    int32_t *acc = job->y32 + r * EO;
    for (int32_t o = 0; o < EO; ++o) {
      acc[o] = p->bo != NULL ? p->bo[o] : 0;
    }
    for (int32_t h = 0; h < job->H; ++h) {
      const int8_t *src = job->ctx8 + (i0 + r) * HP + h * P;
      for (int32_t c = 0; c < P; ++c) {
        job->q16[c] = (int16_t)(src[c] - p->ctx_zero_point);
      }
      for (int32_t o = 0; o < EO; ++o) {
        acc[o] += dot_w(job->q16, p->wo + (h * EO + o) * job->P4, job->P4);
      }
    }
    for (int32_t o = 0; o < EO; ++o) {
      y[(i0 + r) * EO + o] = s8_out_y(p, acc[o], o);
    }
  }
}

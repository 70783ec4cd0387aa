/**
 * @file tt_conv_s8.c
 * @brief int8 convolutions (tt_conv_s8.h): the standard kernel (im2col blocks
 *        through tt_linear_s8) and the direct depthwise kernel.
 *
 * Standard: per image, the OH*OW output pixels go in blocks of X. A block's
 * receptive fields are gathered into the scratch as int8 rows [X][K] (the
 * rows tt_linear_s8 takes), the padding written as zp_x; one tt_linear_s8
 * call multiplies them by the pre-arranged weights into [X][O], which is
 * transposed into the NCHW output. The GEMM is tt_linear_s8 itself, called
 * through its public interface, so the conv inherits its SIMD paths (SMLAD
 * 2x2 register tiles with the branch-free output stage, 4-way dot products on
 * RISC-V, portable C) and its bit-exactness unchanged. The gather costs a
 * few instructions per byte of the block, spread over O MACs; the transpose
 * a few per output, spread over K MACs.
 *
 * Depthwise: one channel at a time, direct sums over the KH*KW window, with
 * the bounds checks only on the border pixels; the output stage is
 * tt_linear_s8's (one step or two steps, then the clamp), computed here with
 * the same integer formulas.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_conv_s8.h"
#include "tt_linear_s8.h"
#include "tt_linear_s8_common.h"
#include "tt_requant_s8.h"
#include "tt_simd.h"

/* ------------------------------------------------------------------ shapes and checks */

static int64_t ceil4_64(int64_t n) {
  return (n + 3) & ~(int64_t)3;
}

static int overlaps(const void *a, int64_t a_bytes, const void *b, int64_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a;
  const uintptr_t b0 = (uintptr_t)b;
  return a_bytes > 0 && b_bytes > 0 && a0 < b0 + (uintptr_t)b_bytes && b0 < a0 + (uintptr_t)a_bytes;
}

static int is_depthwise(const tt_conv_s8_dims *d) {
  return d->groups != 1 && d->groups == d->in_channels && d->groups == d->out_channels;
}

/** Whether the dims describe a convolution this kernel computes (sizes in int32 ranges). */
static int dims_valid(const tt_conv_s8_dims *d) {
  if (d == NULL || d->batch < 1 || d->in_channels < 1 || d->in_height < 1 || d->in_width < 1 ||
      d->out_channels < 1 || d->kernel_h < 1 || d->kernel_w < 1 || d->stride_h < 1 ||
      d->stride_w < 1 || d->pad_top < 0 || d->pad_left < 0 || d->pad_bottom < 0 ||
      d->pad_right < 0 || d->dilation_h != 1 || d->dilation_w != 1) {
    return 0;
  }
  if (d->groups != 1 && !is_depthwise(d)) {
    return 0;
  }
  const int64_t hp = (int64_t)d->in_height + d->pad_top + d->pad_bottom;
  const int64_t wp = (int64_t)d->in_width + d->pad_left + d->pad_right;
  if (hp < d->kernel_h || wp < d->kernel_w || hp > INT32_MAX || wp > INT32_MAX) {
    return 0;
  }
  const int64_t k = (int64_t)(d->groups == 1 ? d->in_channels : 1) * d->kernel_h * d->kernel_w;
  const int64_t oh = (hp - d->kernel_h) / d->stride_h + 1;
  const int64_t ow = (wp - d->kernel_w) / d->stride_w + 1;
  const int64_t x_bytes = (int64_t)d->batch * d->in_channels * d->in_height * d->in_width;
  const int64_t y_bytes = (int64_t)d->batch * d->out_channels * oh * ow;
  const int64_t w_bytes = (int64_t)d->out_channels * ceil4_64(k);
  return k <= TT_LINEAR_S8_MAX_K && x_bytes <= INT32_MAX && y_bytes <= INT32_MAX &&
         hp * wp <= INT32_MAX && w_bytes <= INT32_MAX && oh * ow * ceil4_64(k) <= INT32_MAX;
}

int32_t tt_conv_s8_out_height(const tt_conv_s8_dims *dims) {
  if (!dims_valid(dims)) {
    return TT_ARG_ERROR;
  }
  return (dims->in_height + dims->pad_top + dims->pad_bottom - dims->kernel_h) / dims->stride_h + 1;
}

int32_t tt_conv_s8_out_width(const tt_conv_s8_dims *dims) {
  if (!dims_valid(dims)) {
    return TT_ARG_ERROR;
  }
  return (dims->in_width + dims->pad_left + dims->pad_right - dims->kernel_w) / dims->stride_w + 1;
}

/** The standard kernel's geometry of one call. */
typedef struct {
  int32_t oh;
  int32_t ow;
  int32_t pixels; /**< OH*OW */
  int32_t k;      /**< C*KH*KW */
  int32_t x;      /**< block pixels */
  int32_t col_bytes;
  int32_t yb_bytes;
  int32_t gemm_bytes;
} std_plan;

/** The plan of a valid standard conv; plan.x == 0 when cfg is invalid. */
static std_plan plan_standard(const tt_conv_s8_dims *d, const tt_conv_s8_config *cfg) {
  std_plan s;
  memset(&s, 0, sizeof s);
  s.oh = tt_conv_s8_out_height(d);
  s.ow = tt_conv_s8_out_width(d);
  s.pixels = s.oh * s.ow;
  s.k = d->in_channels * d->kernel_h * d->kernel_w;
  if (cfg == NULL || cfg->pixels_per_block < 1) {
    return s;
  }
  const int64_t x = (int64_t)cfg->pixels_per_block + (cfg->pixels_per_block & 1);
  const int32_t xb = (int32_t)(x < s.pixels ? x : s.pixels);
  const tt_linear_dims gd = {xb, s.k, d->out_channels};
  const tt_linear_s8_config gc = {xb};
  const int64_t col = ceil4_64((int64_t)xb * s.k);
  const int64_t yb = ceil4_64((int64_t)xb * d->out_channels);
  const int32_t gemm = tt_linear_s8_get_buffer_size(&gd, &gc);
  if (gemm < 0 || col + yb + gemm > INT32_MAX) {
    return s;
  }
  s.x = xb;
  s.col_bytes = (int32_t)col;
  s.yb_bytes = (int32_t)yb;
  s.gemm_bytes = gemm;
  return s;
}

/** Padded bytes of one channel plane, 0 when there is no padding (the plane is read in place). */
static int64_t dw_plane_bytes(const tt_conv_s8_dims *d) {
  if ((d->pad_top | d->pad_left | d->pad_bottom | d->pad_right) == 0) {
    return 0;
  }
  return ceil4_64(((int64_t)d->in_height + d->pad_top + d->pad_bottom) *
                  ((int64_t)d->in_width + d->pad_left + d->pad_right));
}

int32_t tt_conv_s8_get_buffer_size(const tt_conv_s8_dims *dims, const tt_conv_s8_config *cfg) {
  if (!dims_valid(dims) || cfg == NULL || cfg->pixels_per_block < 1) {
    return TT_ARG_ERROR;
  }
  if (is_depthwise(dims)) {
    return (int32_t)dw_plane_bytes(dims);
  }
  const std_plan s = plan_standard(dims, cfg);
  return s.x == 0 ? TT_ARG_ERROR : s.col_bytes + s.yb_bytes + s.gemm_bytes;
}

/** The checks of tt_linear_s8's parameters (the depthwise kernel applies them itself). */
static int params_valid(const tt_conv_s8_params *cp, int32_t n) {
  return tt_s8_in_int8(cp->x_zero_point) && tt_linear_s8_params_valid(&cp->gemm, n);
}

/* ------------------------------------------------------------------ standard: im2col + GEMM */

/** Receptive fields of output pixels p0 .. p0+rows-1 of one image x [C][H][W] as int8 rows
 *  col [rows][K], K in (c, i, j) order, zp outside the image. */
static void gather(const tt_conv_s8_dims *d, const std_plan *s, const int8_t *x, int32_t p0,
                   int32_t rows, int8_t zp, int8_t *col) {
  const int32_t C = d->in_channels;
  const int32_t H = d->in_height;
  const int32_t W = d->in_width;
  const int32_t KH = d->kernel_h;
  const int32_t KW = d->kernel_w;
  int32_t oy = p0 / s->ow;
  int32_t ox = p0 - oy * s->ow;
  for (int32_t r = 0; r < rows; ++r) {
    const int32_t iy0 = oy * d->stride_h - d->pad_top;
    const int32_t ix0 = ox * d->stride_w - d->pad_left;
    const int inside_x = ix0 >= 0 && ix0 + KW <= W;
    int8_t *dst = col + r * s->k;
    for (int32_t c = 0; c < C; ++c) {
      const int8_t *plane = x + c * H * W;
      for (int32_t i = 0; i < KH; ++i, dst += KW) {
        const int32_t iy = iy0 + i;
        if (iy < 0 || iy >= H) {
          memset(dst, zp, (size_t)KW);
          continue;
        }
        const int8_t *src = plane + iy * W + ix0;
        if (inside_x) {
          for (int32_t j = 0; j < KW; ++j) {
            dst[j] = src[j];
          }
        } else {
          for (int32_t j = 0; j < KW; ++j) {
            const int32_t ix = ix0 + j;
            dst[j] = ix >= 0 && ix < W ? src[j] : zp;
          }
        }
      }
    }
    if (++ox == s->ow) {
      ox = 0;
      ++oy;
    }
  }
}

/** Pointwise gather (1x1, stride 1, no padding): col [rows][C] = x [C][P] columns p0 .. */
static void gather_pointwise(int32_t C, int32_t P, const int8_t *x, int32_t p0, int32_t rows,
                             int8_t *col) {
  for (int32_t c = 0; c < C; ++c) {
    const int8_t *src = x + c * P + p0;
    int8_t *dst = col + c;
    for (int32_t r = 0; r < rows; ++r, dst += C) {
      *dst = src[r];
    }
  }
}

/** yb [rows][O] to the NCHW output y [O][P] at pixels p0 .. */
static void scatter(int32_t O, int32_t P, const int8_t *yb, int32_t p0, int32_t rows, int8_t *y) {
  for (int32_t o = 0; o < O; ++o) {
    const int8_t *src = yb + o;
    int8_t *dst = y + o * P + p0;
    for (int32_t r = 0; r < rows; ++r, src += O) {
      dst[r] = *src;
    }
  }
}

static tt_status conv_standard(const tt_conv_s8_dims *d, const std_plan *s,
                               const tt_conv_s8_params *p, const int8_t *x, int8_t *y,
                               int8_t *scratch) {
  int8_t *col = scratch;
  int8_t *yb = scratch + s->col_bytes;
  int8_t *gemm = yb + s->yb_bytes;
  const int32_t O = d->out_channels;
  const int32_t P = s->pixels;
  const int pointwise = d->kernel_h == 1 && d->kernel_w == 1 && d->stride_h == 1 &&
                        d->stride_w == 1 && d->pad_top == 0 && d->pad_left == 0 &&
                        d->pad_bottom == 0 && d->pad_right == 0;
  const tt_linear_s8_config gc = {s->x};
  const int32_t plane_in = d->in_channels * d->in_height * d->in_width;
  for (int32_t n = 0; n < d->batch; ++n) {
    const int8_t *xn = x + n * plane_in;
    int8_t *yn = y + n * O * P;
    for (int32_t p0 = 0; p0 < P; p0 += s->x) {
      const int32_t rows = P - p0 < s->x ? P - p0 : s->x;
      if (pointwise) {
        gather_pointwise(d->in_channels, P, xn, p0, rows, col);
      } else {
        gather(d, s, xn, p0, rows, (int8_t)p->x_zero_point, col);
      }
      const tt_linear_dims gd = {rows, s->k, O};
      const tt_status st = tt_linear_s8(&gd, &gc, &p->gemm, col, yb, gemm, s->gemm_bytes);
      if (st != TT_OK) {
        return st; /* only possible on the first block, before any output is written */
      }
      scatter(O, P, yb, p0, rows, yn);
    }
  }
  return TT_OK;
}

/* ------------------------------------------------------------------ depthwise: direct */

/** zp + requant(acc, mult, shift) (tt_linear_s8.h: 64-bit product, one rounding, ties up)
 *  through the column r prepared by tt_rq_prepare, once per channel as tt_linear_s8 does. */
static int32_t rq_apply(int32_t acc, const tt_rq_col *r) {
  if (r->s != 0) {
    return (tt_smmul(acc, r->mult) + r->add) >> r->s;
  }
  const int32_t n = 31 - r->shift;
  return r->zp + (int32_t)(((int64_t)acc * r->mult + ((int64_t)1 << (n - 1))) >> n);
}

/** The output stage of one channel (tt_linear_s8's: one or two steps, then the clamp). */
typedef struct {
  tt_rq_col c1; /**< stage 1, zero point zp_y (or zp_acc in the two-step form) */
  tt_rq_col c2; /**< two-step: stage 2, zero point zp_y */
  int32_t off2; /**< two-step: bias2[c] - zp_acc 2^B (B = TT_LINEAR_S8_ACC_BIAS_BITS) */
  int32_t two_step;
  int32_t lo;
  int32_t hi;
} dw_channel;

static dw_channel dw_prepare(const tt_linear_s8_params *p, int32_t c) {
  const int32_t m = p->per_channel ? c : 0;
  dw_channel q;
  q.c1 = tt_rq_prepare(p->mult[m], p->shift[m], p->two_step ? p->acc_zero_point : p->y_zero_point);
  q.c2 = tt_rq_prepare(p->mult2, p->shift2, p->y_zero_point);
  q.off2 = p->two_step ? (p->bias2 != NULL ? p->bias2[c] : 0) -
                             p->acc_zero_point * (1 << TT_LINEAR_S8_ACC_BIAS_BITS)
                       : 0;
  q.two_step = p->two_step;
  q.lo = p->act_min;
  q.hi = p->act_max;
  return q;
}

static inline int8_t dw_out(const dw_channel *q, int32_t acc) {
  int32_t v = tt_ssat8(rq_apply(acc, &q->c1));
  if (q->two_step) {
    v = tt_ssat8(rq_apply(v * (1 << TT_LINEAR_S8_ACC_BIAS_BITS) + q->off2, &q->c2));
  }
  v = v < q->lo ? q->lo : v;
  return (int8_t)(v > q->hi ? q->hi : v);
}

#if defined(TT_SIMD_ARM_DSP) && !defined(TT_CONV_S8_DW_SMLAD)
#define TT_CONV_S8_DW_SMLAD 1
#endif

#if defined(TT_CONV_S8_DW_SMLAD)
#if defined(__GNUC__)
#define TT_CONV_NOINLINE __attribute__((noinline))
#define TT_CONV_INLINE inline __attribute__((always_inline))
#else
#define TT_CONV_NOINLINE
#define TT_CONV_INLINE inline
#endif

/** One-step outputs on the fast requantization: clamp((smmul(acc, mult) + add) >> s, lo, hi)
 *  (the clamp range lies inside int8, so it includes the saturation). */
typedef struct {
  int32_t mult;
  int32_t add;
  int32_t s;
  int32_t lo;
  int32_t hi;
} dw_fast;

static TT_CONV_INLINE int8_t dw_out_t(int fast, const dw_fast *f, const dw_channel *q,
                                      int32_t acc) {
  if (!fast) {
    return dw_out(q, acc);
  }
  int32_t v = (tt_smmul(acc, f->mult) + f->add) >> f->s;
  v = v < f->lo ? f->lo : v;
  return (int8_t)(v > f->hi ? f->hi : v);
}

/** 3x3, stride 1: the n outputs of one row, two at a time. Per kernel row, one word of x
 *  (columns i .. i+3) gives (x0, x2) and (x1, x3) by SXTB16; with wp = (w0, w2) and w1,
 *  out[i] += SMLAD((x0, x2), wp) + x1 w1 and out[i+1] += SMLAD((x1, x3), wp) + x2 w1: 6 MACs
 *  in 7 instructions. Column i+3 of the last pair is the row's last padded column. */
static TT_CONV_INLINE void dw_row3_t(int fast, const int8_t *src, int32_t W, const int8_t *w,
                                     int32_t bias, const dw_channel *q, int32_t n, int8_t *out) {
  const uint32_t p0 = tt_pack16(w[0], w[2]);
  const uint32_t p1 = tt_pack16(w[3], w[5]);
  const uint32_t p2 = tt_pack16(w[6], w[8]);
  const int32_t m0 = w[1];
  const int32_t m1 = w[4];
  const int32_t m2 = w[7];
  const dw_fast f = {q->c1.mult, q->c1.add, q->c1.s, q->lo, q->hi};
  int32_t i = 0;
  for (; i + 1 < n; i += 2, src += 2) {
    const uint32_t r0 = tt_load32(src);
    const uint32_t r1 = tt_load32(src + W);
    const uint32_t r2 = tt_load32(src + 2 * W);
    uint32_t e = tt_sxtb16(r0);
    uint32_t o = tt_sxtb16_ror8(r0);
    int32_t a0 = tt_smlad(e, p0, bias) + (int16_t)o * m0;
    int32_t a1 = tt_smlad(o, p0, bias) + (int16_t)(e >> 16) * m0;
    e = tt_sxtb16(r1);
    o = tt_sxtb16_ror8(r1);
    a0 = tt_smlad(e, p1, a0) + (int16_t)o * m1;
    a1 = tt_smlad(o, p1, a1) + (int16_t)(e >> 16) * m1;
    e = tt_sxtb16(r2);
    o = tt_sxtb16_ror8(r2);
    a0 = tt_smlad(e, p2, a0) + (int16_t)o * m2;
    a1 = tt_smlad(o, p2, a1) + (int16_t)(e >> 16) * m2;
    out[i] = dw_out_t(fast, &f, q, a0);
    out[i + 1] = dw_out_t(fast, &f, q, a1);
  }
  if (i < n) {
    int32_t acc = bias;
    for (int32_t r = 0; r < 3; ++r) {
      for (int32_t j = 0; j < 3; ++j) {
        acc += (int32_t)src[r * W + j] * w[3 * r + j];
      }
    }
    out[i] = dw_out(q, acc);
  }
}

static TT_CONV_NOINLINE void dw_row3_fast(const int8_t *src, int32_t W, const int8_t *w,
                                          int32_t bias, const dw_channel *q, int32_t n,
                                          int8_t *out) {
  dw_row3_t(1, src, W, w, bias, q, n, out);
}

static TT_CONV_NOINLINE void dw_row3_any(const int8_t *src, int32_t W, const int8_t *w,
                                         int32_t bias, const dw_channel *q, int32_t n,
                                         int8_t *out) {
  dw_row3_t(0, src, W, w, bias, q, n, out);
}

static void dw_row3(const int8_t *src, int32_t W, const int8_t *w, int32_t bias,
                    const dw_channel *q, int32_t n, int8_t *out) {
  (!q->two_step && q->c1.s != 0 ? dw_row3_fast : dw_row3_any)(src, W, w, bias, q, n, out);
}
#endif

/** The interior outputs ox in [lo, hi) of one row: every tap inside the image. src = the
 *  window of ox = lo. 3x3 keeps its nine weights in registers. */
static void dw_interior(const int8_t *src, int32_t W, int32_t SW, const int8_t *w, int32_t KH,
                        int32_t KW, int32_t bias, const dw_channel *q, int32_t n, int8_t *out) {
#if defined(TT_CONV_S8_DW_SMLAD)
  if (KH == 3 && KW == 3 && SW == 1) {
    dw_row3(src, W, w, bias, q, n, out);
    return;
  }
#endif
  if (KH == 3 && KW == 3) {
    const int32_t w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4];
    const int32_t w5 = w[5], w6 = w[6], w7 = w[7], w8 = w[8];
    for (int32_t i = 0; i < n; ++i, src += SW) {
      const int8_t *r0 = src;
      const int8_t *r1 = src + W;
      const int8_t *r2 = r1 + W;
      int32_t acc = bias + r0[0] * w0 + r0[1] * w1 + r0[2] * w2;
      acc += r1[0] * w3 + r1[1] * w4 + r1[2] * w5;
      acc += r2[0] * w6 + r2[1] * w7 + r2[2] * w8;
      out[i] = dw_out(q, acc);
    }
    return;
  }
  for (int32_t i = 0; i < n; ++i, src += SW) {
    int32_t acc = bias;
    const int8_t *row = src;
    const int8_t *wr = w;
    for (int32_t a = 0; a < KH; ++a, row += W, wr += KW) {
      for (int32_t b = 0; b < KW; ++b) {
        acc += (int32_t)row[b] * wr[b];
      }
    }
    out[i] = dw_out(q, acc);
  }
}

/** One channel plane [H][W] into dst [H+PT+PB][W+PL+PR], the border filled with zp. */
static void dw_pad_plane(const tt_conv_s8_dims *d, const int8_t *plane, int8_t zp, int8_t *dst) {
  const int32_t W = d->in_width;
  const int32_t WP = W + d->pad_left + d->pad_right;
  const int32_t HP = d->in_height + d->pad_top + d->pad_bottom;
  memset(dst, zp, (size_t)WP * (size_t)d->pad_top);
  int8_t *row = dst + d->pad_top * WP;
  for (int32_t i = 0; i < d->in_height; ++i, row += WP, plane += W) {
    memset(row, zp, (size_t)d->pad_left);
    memcpy(row + d->pad_left, plane, (size_t)W);
    memset(row + d->pad_left + W, zp, (size_t)d->pad_right);
  }
  memset(row, zp, (size_t)WP * (size_t)(HP - d->pad_top - d->in_height));
}

static void conv_depthwise(const tt_conv_s8_dims *d, const tt_conv_s8_params *cp, const int8_t *x,
                           int8_t *y, int8_t *scratch) {
  const tt_linear_s8_params *p = &cp->gemm;
  const int32_t C = d->in_channels;
  const int32_t H = d->in_height;
  const int32_t W = d->in_width;
  const int32_t KH = d->kernel_h;
  const int32_t KW = d->kernel_w;
  const int32_t OH = tt_conv_s8_out_height(d);
  const int32_t OW = tt_conv_s8_out_width(d);
  const int padded = dw_plane_bytes(d) != 0;
  const int32_t WP = W + d->pad_left + d->pad_right;
  for (int32_t n = 0; n < d->batch; ++n) {
    for (int32_t c = 0; c < C; ++c) {
      const int8_t *plane = x + (n * C + c) * H * W;
      if (padded) {
        dw_pad_plane(d, plane, (int8_t)cp->x_zero_point, scratch);
        plane = scratch;
      }
      const int8_t *w = p->weights + c * KH * KW;
      const dw_channel q = dw_prepare(p, c);
      const int32_t bias = p->kernel_bias[c];
      int8_t *out = y + (n * C + c) * OH * OW;
      for (int32_t oy = 0; oy < OH; ++oy, out += OW) {
        dw_interior(plane + oy * d->stride_h * WP, WP, d->stride_w, w, KH, KW, bias, &q, OW, out);
      }
    }
  }
}

/* ------------------------------------------------------------------ entry */

tt_status tt_conv_s8(const tt_conv_s8_dims *dims, const tt_conv_s8_config *cfg,
                     const tt_conv_s8_params *p, const int8_t *x, int8_t *y, int8_t *scratch,
                     int32_t scratch_bytes) {
  const int32_t need = tt_conv_s8_get_buffer_size(dims, cfg);
  if (need < 0 || p == NULL || x == NULL || y == NULL || !params_valid(p, dims->out_channels)) {
    return TT_ARG_ERROR;
  }
  if (need > 0 && (scratch == NULL || !tt_s8_aligned4(scratch))) {
    return TT_ARG_ERROR;
  }
  if (scratch_bytes < need) {
    return TT_SCRATCH_ERROR;
  }
  const int64_t x_bytes =
      (int64_t)dims->batch * dims->in_channels * dims->in_height * dims->in_width;
  const int64_t y_bytes = (int64_t)dims->batch * dims->out_channels * tt_conv_s8_out_height(dims) *
                          tt_conv_s8_out_width(dims);
  if (overlaps(x, x_bytes, y, y_bytes) || overlaps(x, x_bytes, scratch, need) ||
      overlaps(y, y_bytes, scratch, need)) {
    return TT_ARG_ERROR;
  }
  if (is_depthwise(dims)) {
    conv_depthwise(dims, p, x, y, scratch);
    return TT_OK;
  }
  const std_plan s = plan_standard(dims, cfg);
  return conv_standard(dims, &s, p, x, y, scratch);
}

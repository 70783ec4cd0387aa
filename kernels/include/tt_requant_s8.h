/**
 * @file tt_requant_s8.h
 * @brief NOT an API: the per-column requantization prepared once, internal to
 *        tt_linear_s8.c, tt_mhsa_s8.c and tt_conv_s8.c (its depthwise kernel),
 *        kept in include/ so that every build that copies the kernel headers
 *        finds it. One definition keeps the fast form of the kernels the same
 *        integers.
 */
#ifndef TT_REQUANT_S8_H
#define TT_REQUANT_S8_H

#include <stdint.h>

/** Requantization of one output column, prepared once per column: zp + requant(acc) is
 *  (smmul(acc, mult) + add) >> s with add = 2^(s-1) + zp 2^s when the total shift n = 31 -
 *  shift lies in 33 .. 54 (s = n - 32; one rounding, ties up, zp folded in exactly, and
 *  |smmul| < 2^30 keeps the sum in int32); s = 0 marks the other shifts, done in 64 bits. */
typedef struct {
  int32_t mult;
  int32_t add;
  int32_t s;
  int32_t shift;
  int32_t zp;
} tt_rq_col;

static inline tt_rq_col tt_rq_prepare(int32_t mult, int32_t shift, int32_t zp) {
  const int32_t s = 31 - shift - 32;
  tt_rq_col c = {mult, 0, 0, shift, zp};
  if (s >= 1 && s <= 22) {
    c.s = s;
    c.add = ((int32_t)1 << (s - 1)) + zp * ((int32_t)1 << s);
  }
  return c;
}

#endif /* TT_REQUANT_S8_H */

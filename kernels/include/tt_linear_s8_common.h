/**
 * @file tt_linear_s8_common.h
 * @brief NOT an API: the argument checks of tt_linear_s8_params, internal to
 *        tt_linear_s8.c and tt_conv_s8.c (which passes its standard
 *        convolutions to tt_linear_s8 and runs its depthwise ones on the same
 *        parameters), kept in include/ so that every build that copies the
 *        kernel headers finds it. One definition keeps the two kernels
 *        accepting exactly the same parameters.
 */
#ifndef TT_LINEAR_S8_COMMON_H
#define TT_LINEAR_S8_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "tt_linear_s8.h"

static inline int tt_s8_aligned4(const void *ptr) {
  return ((uintptr_t)ptr & 3u) == 0;
}

static inline int tt_s8_in_int8(int32_t v) {
  return v >= -128 && v <= 127;
}

static inline int tt_s8_shift_ok(int32_t s) {
  return s >= -31 && s <= 30;
}

/** 1 if p is valid for n output columns (tt_linear_s8.h), else 0 (also for NULL). */
static inline int tt_linear_s8_params_valid(const tt_linear_s8_params *p, int32_t n) {
  if (p == NULL || p->weights == NULL || !tt_s8_aligned4(p->weights) || p->kernel_bias == NULL ||
      p->mult == NULL || p->shift == NULL) {
    return 0;
  }
  if ((p->per_channel != 0 && p->per_channel != 1) || (p->two_step != 0 && p->two_step != 1)) {
    return 0;
  }
  if (!tt_s8_in_int8(p->y_zero_point) || !tt_s8_in_int8(p->act_min) || !tt_s8_in_int8(p->act_max) ||
      p->act_min > p->act_max) {
    return 0;
  }
  for (int32_t c = 0; c < (p->per_channel ? n : 1); ++c) {
    if (!tt_s8_shift_ok(p->shift[c])) {
      return 0;
    }
  }
  if (p->two_step) {
    return tt_s8_in_int8(p->acc_zero_point) && tt_s8_shift_ok(p->shift2);
  }
  return p->bias2 == NULL && p->acc_zero_point == 0 && p->mult2 == 0 && p->shift2 == 0;
}

#endif /* TT_LINEAR_S8_COMMON_H */

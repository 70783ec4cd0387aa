/**
 * @file tt_simd.h
 * @brief Packed-integer SIMD helpers of the kernels: 2-way int16 and 4-way int8
 *        dot products, byte widening, word loads. One portable C definition
 *        each, replaced by one instruction where the ISA has it:
 *
 * | helper           | meaning (lanes little-endian)            | Cortex-M DSP      | GAP9 (XpulpV2)   |
 * |------------------|------------------------------------------|-------------------|------------------|
 * | tt_smlad         | acc + a.h0 b.h0 + a.h1 b.h1 (int16)      | SMLAD             | pv.sdotsp.h      |
 * | tt_sdot4         | acc + sum_i a.b_i b.b_i (int8)           | -                 | pv.sdotsp.b      |
 * | tt_sxtb16        | (int16) bytes 0 and 2                    | SXTB16            | -                |
 * | tt_sxtb16_ror8   | (int16) bytes 1 and 3                    | SXTB16 ..., ROR 8 | -                |
 * | tt_sxtab16(_ror8)| add + the above, per 16-bit lane         | SXTAB16           | -                |
 * | tt_pack16        | lo | hi << 16 (two int16)                 | PKHBT             | pv.pack          |
 * | tt_ssub16        | a - b per int16 lane (mod 2^16)          | SSUB16            | pv.sub.h         |
 * | tt_min4          | per-lane minimum of 4 int8               | SSUB8 + SEL       | pv.min.b         |
 * | tt_umin4         | per-lane minimum of 4 uint8              | USUB8 + SEL       | pv.minu.b        |
 * | tt_uadd4         | a + b per uint8 lane (mod 2^8)           | UADD8             | pv.add.b         |
 * | tt_smmul         | high word of the 64-bit product a b      | SMMUL             | mulh             |
 * | tt_ssat8/16      | saturate to int8 / int16                 | SSAT              | p.clip           |
 * | tt_usat8         | saturate to 0 .. 255                     | USAT              | p.clipu          |
 * | tt_load2_ia      | two words at p, then p += 8 bytes        | LDRD post-index   | 2 p.lw           |
 *
 * Every variant gives identical results (sums wrap modulo 2^32 like the
 * instructions; the kernels keep them in range). The Arm paths need
 * __ARM_FEATURE_DSP (Cortex-M4/M7/M33 with DSP); the XpulpV2 paths need the
 * GAP SDK's GCC and TT_SIMD_XPULP defined (not built in this repository's CI,
 * which runs the portable paths on rv32imc QEMU).
 *
 * Word loads use memcpy (one LDR/LW; no strict-aliasing hazard on buffers
 * written as int16). tt_load2_ia requires 4-byte aligned addresses on Arm.
 */
#ifndef TT_SIMD_H
#define TT_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
#include <arm_acle.h>
#define TT_SIMD_ARM_DSP 1
#elif defined(TT_SIMD_XPULP) && defined(__GNUC__)
#define TT_SIMD_PULP 1
typedef int8_t tt_v4s __attribute__((vector_size(4)));
typedef int16_t tt_v2s __attribute__((vector_size(4)));
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** @brief The word at @p p (any alignment). */
static inline uint32_t tt_load32(const void *p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/** @brief Store the word @p v at @p p (any alignment). */
static inline void tt_store32(void *p, uint32_t v) { memcpy(p, &v, sizeof v); }

/** @brief *a = word at *p, *b = word at *p + 4, then *p += 8 bytes (4-byte aligned). */
static inline void tt_load2_ia(const int16_t **p, uint32_t *a, uint32_t *b) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t lo;
  uint32_t hi;
  __asm__ volatile("ldrd %0, %1, [%2], #8" : "=r"(lo), "=r"(hi), "+r"(*p) : : "memory");
  *a = lo;
  *b = hi;
#else
  *a = tt_load32(*p);
  *b = tt_load32(*p + 2);
  *p += 4;
#endif
}

/** @brief Two int16 lanes: lo in bits 0..15, hi in bits 16..31. */
static inline uint32_t tt_pack16(int32_t lo, int32_t hi) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(lo), "r"(hi));
  return r;
#else
  return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16);
#endif
}

/** @brief acc + a.lo * b.lo + a.hi * b.hi (signed 16-bit lanes, wrapping int32 sum). */
static inline int32_t tt_smlad(uint32_t a, uint32_t b, int32_t acc) {
#if defined(TT_SIMD_ARM_DSP)
  return __smlad((int16x2_t)a, (int16x2_t)b, acc);
#elif defined(TT_SIMD_PULP)
  tt_v2s va;
  tt_v2s vb;
  memcpy(&va, &a, 4);
  memcpy(&vb, &b, 4);
  return __builtin_pulp_sdotsp2(va, vb, acc);
#else
  const int32_t p0 = (int32_t)(int16_t)(a & 0xFFFFu) * (int16_t)(b & 0xFFFFu);
  const int32_t p1 = (int32_t)(int16_t)(a >> 16) * (int16_t)(b >> 16);
  return (int32_t)((uint32_t)acc + (uint32_t)p0 + (uint32_t)p1);
#endif
}

/** @brief a - b per signed 16-bit lane (wrapping). */
static inline uint32_t tt_ssub16(uint32_t a, uint32_t b) {
#if defined(TT_SIMD_ARM_DSP)
  return (uint32_t)__ssub16((int16x2_t)a, (int16x2_t)b);
#else
  return tt_pack16((int32_t)(a & 0xFFFFu) - (int32_t)(b & 0xFFFFu),
                   (int32_t)(a >> 16) - (int32_t)(b >> 16));
#endif
}

/** @brief Per-lane minimum of the four signed bytes of a and b. */
static inline uint32_t tt_min4(uint32_t a, uint32_t b) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r; /* GE[i] = (a.b_i >= b.b_i), then GE ? b : a; one asm keeps the flags together */
  __asm__("ssub8 %0, %1, %2\n\tsel %0, %2, %1" : "=&r"(r) : "r"(a), "r"(b) : "cc");
  return r;
#else
  uint32_t r = 0;
  for (int i = 0; i < 32; i += 8) {
    const int32_t x = (int8_t)(a >> i);
    const int32_t y = (int8_t)(b >> i);
    r |= ((uint32_t)(x < y ? x : y) & 0xFFu) << i;
  }
  return r;
#endif
}

/** @brief Per-lane minimum of the four unsigned bytes of a and b. */
static inline uint32_t tt_umin4(uint32_t a, uint32_t b) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r; /* GE[i] = (a.b_i >= b.b_i), then GE ? b : a; one asm keeps the flags together */
  __asm__("usub8 %0, %1, %2\n\tsel %0, %2, %1" : "=&r"(r) : "r"(a), "r"(b) : "cc");
  return r;
#else
  uint32_t r = 0;
  for (int i = 0; i < 32; i += 8) {
    const uint32_t x = (a >> i) & 0xFFu;
    const uint32_t y = (b >> i) & 0xFFu;
    r |= (x < y ? x : y) << i;
  }
  return r;
#endif
}

/** @brief a + b per unsigned byte lane (wrapping). */
static inline uint32_t tt_uadd4(uint32_t a, uint32_t b) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r;
  __asm__("uadd8 %0, %1, %2" : "=r"(r) : "r"(a), "r"(b) : "cc");
  return r;
#else
  return ((a & 0x7F7F7F7Fu) + (b & 0x7F7F7F7Fu)) ^ ((a ^ b) & 0x80808080u);
#endif
}

/** @brief The high word of the 64-bit product a * b: floor(a b / 2^32). */
static inline int32_t tt_smmul(int32_t a, int32_t b) {
#if defined(TT_SIMD_ARM_DSP)
  int32_t r;
  __asm__("smmul %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
#else
  return (int32_t)(((int64_t)a * b) >> 32); /* arithmetic shift on every supported compiler */
#endif
}

/** @brief v saturated to [-128, 127]. */
static inline int32_t tt_ssat8(int32_t v) {
#if defined(TT_SIMD_ARM_DSP)
  return __ssat(v, 8);
#else
  return v < -128 ? -128 : (v > 127 ? 127 : v);
#endif
}

/** @brief v saturated to [0, 255]. */
static inline int32_t tt_usat8(int32_t v) {
#if defined(TT_SIMD_ARM_DSP)
  return (int32_t)__usat(v, 8);
#else
  return v < 0 ? 0 : (v > 255 ? 255 : v);
#endif
}

/** @brief v saturated to [-32768, 32767]. */
static inline int32_t tt_ssat16(int32_t v) {
#if defined(TT_SIMD_ARM_DSP)
  return __ssat(v, 16);
#else
  return v < -32768 ? -32768 : (v > 32767 ? 32767 : v);
#endif
}

/** @brief acc + the sum of the four products of the signed bytes of a and b (wrapping). */
static inline int32_t tt_sdot4(uint32_t a, uint32_t b, int32_t acc) {
#if defined(TT_SIMD_PULP)
  tt_v4s va;
  tt_v4s vb;
  memcpy(&va, &a, 4);
  memcpy(&vb, &b, 4);
  return __builtin_pulp_sdotsp4(va, vb, acc);
#else
  uint32_t sum = (uint32_t)acc;
  for (int i = 0; i < 32; i += 8) {
    sum += (uint32_t)((int32_t)(int8_t)(a >> i) * (int8_t)(b >> i));
  }
  return (int32_t)sum;
#endif
}

/** @brief Sign-extend bytes 0 and 2 of @p x into the two int16 lanes. */
static inline uint32_t tt_sxtb16(uint32_t x) {
#if defined(TT_SIMD_ARM_DSP)
  return (uint32_t)__sxtb16((int8x4_t)x);
#else
  return tt_pack16((int8_t)x, (int8_t)(x >> 16));
#endif
}

/** @brief Sign-extend bytes 1 and 3 of @p x into the two int16 lanes. */
static inline uint32_t tt_sxtb16_ror8(uint32_t x) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
#else
  return tt_pack16((int8_t)(x >> 8), (int8_t)(x >> 24));
#endif
}

/** @brief Lanes of @p add plus the sign-extended bytes 0 and 2 of @p x (mod 2^16). */
static inline uint32_t tt_sxtab16(uint32_t add, uint32_t x) {
#if defined(TT_SIMD_ARM_DSP)
  return (uint32_t)__sxtab16((int16x2_t)add, (int8x4_t)x);
#else
  return tt_pack16((int32_t)(add & 0xFFFFu) + (int8_t)x, (int32_t)(add >> 16) + (int8_t)(x >> 16));
#endif
}

/** @brief Lanes of @p add plus the sign-extended bytes 1 and 3 of @p x (mod 2^16). */
static inline uint32_t tt_sxtab16_ror8(uint32_t add, uint32_t x) {
#if defined(TT_SIMD_ARM_DSP)
  uint32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(add), "r"(x));
  return r;
#else
  return tt_pack16((int32_t)(add & 0xFFFFu) + (int8_t)(x >> 8),
                   (int32_t)(add >> 16) + (int8_t)(x >> 24));
#endif
}

#ifdef __cplusplus
}
#endif

#endif /* TT_SIMD_H */

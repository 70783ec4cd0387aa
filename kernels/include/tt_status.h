/**
 * @file tt_status.h
 * @brief Status codes returned by every tvm_tiny C kernel.
 *
 * Kernels validate their arguments once at entry and return one of these
 * codes; callers (generated code, the runtime) must check it in release
 * builds too, not only under an assert.
 */
#ifndef TT_STATUS_H
#define TT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Result of a tvm_tiny kernel call. */
typedef enum {
  /** The kernel ran and wrote its outputs. */
  TT_OK = 0,
  /** A NULL pointer, a non-positive or too large dimension, a bad config
   *  field, or overlapping buffers; no output was written. */
  TT_ARG_ERROR = -1,
  /** The caller's scratch buffer is smaller than the kernel's
   *  `*_get_buffer_size`; no output was written. */
  TT_SCRATCH_ERROR = -2
} tt_status;

#ifdef __cplusplus
}
#endif

#endif /* TT_STATUS_H */

/*
 * tvm_tiny C runtime: the few services a generated model needs, without a heap.
 *
 *  - Workspace: TVM's TIR C code asks for intermediates through TVMBackendAllocWorkspace().
 *    The generated entry point binds a region of the model's static arena (planned at build time
 *    for exactly that kernel call) before each call; allocations are a LIFO bump inside it.
 *  - Packed calls: TIR kernels use TVM's packed ABI; tt_call_packed() wraps DLTensor pointers
 *    into TVMFFIAny arguments (type kTVMFFIDLTensorPtr).
 *  - Errors: TVMFFIErrorSetRaisedFromCStr*() and our own failures record a message that
 *    tt_last_error() returns.
 *
 * State: TVMBackendAllocWorkspace() has no context parameter, so the bound workspace region and
 * the last error message are the only mutable statics of the runtime. One model runs at a time.
 */
#ifndef TVM_TINY_TT_RUNTIME_H_
#define TVM_TINY_TT_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#include "dlpack/dlpack.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TT_ALIGNED(n) __attribute__((aligned(n)))
#else
#define TT_ALIGNED(n)
#endif

/** Largest argument count of one packed TIR call (checked by the AOT emitter at build time). */
#define TT_MAX_PACKED_ARGS 32

/** Status codes of the runtime and of generated entry points (0 is success). */
typedef enum {
  TT_RUNTIME_OK = 0,
  TT_RUNTIME_NULL_ARGUMENT = -10,      /**< an input/output pointer was NULL */
  TT_RUNTIME_ARENA_TOO_SMALL = -11,    /**< caller-provided arena smaller than ARENA_BYTES */
  TT_RUNTIME_KERNEL_FAILED = -12,      /**< a kernel returned non-zero; see tt_last_error() */
  TT_RUNTIME_WORKSPACE_EXHAUSTED = -13, /**< TIR asked for more workspace than planned */
  TT_RUNTIME_TOO_MANY_ARGS = -14       /**< more than TT_MAX_PACKED_ARGS packed arguments */
} tt_runtime_status;

/** Signature of a TIR kernel compiled by TVM's C code generator (packed ABI). */
typedef int32_t (*tt_packed_fn)(void *self, void *args, int32_t num_args, void *result);

/**
 * @brief Describe a tensor for a TIR call (no copy; CPU device, compact row-major).
 * @param[in] data   first element
 * @param[in] ndim   number of dimensions
 * @param[in] shape  @p ndim extents (must outlive the call)
 * @param[in] code   DLDataTypeCode (kDLFloat, kDLInt, kDLUInt)
 * @param[in] bits   element width in bits
 */
DLTensor tt_make_tensor(void *data, int32_t ndim, const int64_t *shape, uint8_t code,
                        uint8_t bits);

/**
 * @brief Call a TIR kernel with DLTensor arguments (inputs first, then outputs).
 * @return 0, TT_RUNTIME_TOO_MANY_ARGS, or TT_RUNTIME_KERNEL_FAILED (message recorded)
 */
int32_t tt_call_packed(tt_packed_fn fn, const char *name, DLTensor *const *tensors,
                       int32_t num_tensors);

/** @brief Let the next TIR call allocate workspace in [base, base + size). */
void tt_workspace_bind(uint8_t *base, size_t size);

/** @brief Forget the bound workspace region (any allocation fails until the next bind). */
void tt_workspace_unbind(void);

/** @brief Bytes of the bound workspace region in use right now (for tests and reports). */
size_t tt_workspace_used(void);

/** @brief Record an error message (copied, truncated to the buffer). */
void tt_set_error(const char *message);

/** @brief The last recorded error message, or "" when none. */
const char *tt_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* TVM_TINY_TT_RUNTIME_H_ */

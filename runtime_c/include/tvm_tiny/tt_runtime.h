/*
 * tvm_tiny C runtime: the few services a generated model needs, without a heap and without
 * mutable state of its own.
 *
 *  - Context: every generated model owns one tt_context (a static named after the model), which
 *    holds all the mutable state of its runs: the TIR workspace bound for the current kernel
 *    call and the last error message. Every function here takes the context it works on, so
 *    any number of models can live in one firmware.
 *  - Workspace: TVM's TIR C code asks for intermediates through TVMBackendAllocWorkspace(),
 *    which has no context argument. Each model's TIR source renames it (and the other TVM
 *    backend functions) to a function of that model, which calls tt_workspace_alloc() on the
 *    model's context. The generated entry point binds a region of the model's arena (planned at
 *    build time for exactly that kernel call) before each call; allocations are a LIFO bump
 *    inside it.
 *  - Packed calls: TIR kernels use TVM's packed ABI; tt_call_packed() wraps DLTensor pointers
 *    into TVMFFIAny arguments (type kTVMFFIDLTensorPtr).
 *  - Errors: failures record a message in the context; the model's <prefix>_last_error()
 *    returns it.
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

/** Workspace allocations are aligned like the arena so TIR vector loads stay aligned. */
#define TT_WORKSPACE_ALIGNMENT 16u

/** Bytes of an error message, terminating NUL included (longer messages are truncated). */
#define TT_ERROR_BYTES 160u

/** Status codes of the runtime and of generated entry points (0 is success). */
typedef enum {
  TT_RUNTIME_OK = 0,
  TT_RUNTIME_NULL_ARGUMENT = -10,       /**< an input/output pointer was NULL */
  TT_RUNTIME_ARENA_TOO_SMALL = -11,     /**< caller-provided arena smaller than ARENA_BYTES */
  TT_RUNTIME_KERNEL_FAILED = -12,       /**< a kernel returned non-zero; see the last error */
  TT_RUNTIME_WORKSPACE_EXHAUSTED = -13, /**< TIR asked for more workspace than planned */
  TT_RUNTIME_TOO_MANY_ARGS = -14        /**< more than TT_MAX_PACKED_ARGS packed arguments */
} tt_runtime_status;

/** The TIR workspace bound for one kernel call: a LIFO bump allocator over [base, base + size). */
typedef struct {
  uint8_t *base; /**< first byte of the region (NULL: nothing bound, every allocation fails) */
  size_t size;   /**< bytes of the region */
  size_t used;   /**< bytes allocated now */
} tt_workspace;

/** All mutable state of one model's runs (zero-initialized: nothing bound, no error). */
typedef struct {
  tt_workspace workspace;          /**< bound by the entry point around each TIR call */
  char last_error[TT_ERROR_BYTES]; /**< "" until a run fails */
} tt_context;

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
DLTensor tt_make_tensor(void *data, int32_t ndim, const int64_t *shape, uint8_t code, uint8_t bits);

/**
 * @brief Call a TIR kernel with DLTensor arguments (inputs first, then outputs).
 * @return 0, TT_RUNTIME_TOO_MANY_ARGS, or TT_RUNTIME_KERNEL_FAILED (the caller records which
 *         kernel failed in its context)
 */
int32_t tt_call_packed(tt_packed_fn fn, DLTensor *const *tensors, int32_t num_tensors);

/** @brief Let the next TIR call of @p ctx's model allocate workspace in [base, base + size). */
void tt_workspace_bind(tt_context *ctx, uint8_t *base, size_t size);

/** @brief Forget the bound workspace region (any allocation fails until the next bind). */
void tt_workspace_unbind(tt_context *ctx);

/** @brief Bytes of the bound workspace region in use right now (for tests and reports). */
size_t tt_workspace_used(const tt_context *ctx);

/**
 * @brief TVMBackendAllocWorkspace() of one model: @p nbytes (rounded up to
 *        TT_WORKSPACE_ALIGNMENT) from the bound region, or NULL (message recorded).
 */
void *tt_workspace_alloc(tt_context *ctx, uint64_t nbytes);

/** @brief TVMBackendFreeWorkspace() of one model: freeing the latest block rewinds to it. */
int tt_workspace_free(tt_context *ctx, void *ptr);

/** @brief Record an error message in @p ctx (copied, truncated to TT_ERROR_BYTES). */
void tt_set_error(tt_context *ctx, const char *message);

/** @brief Record "<kind>: <part 0><part 1>..." (TVM's TVMFFIErrorSetRaisedFromCStr* form). */
void tt_set_error_parts(tt_context *ctx, const char *kind, const char *const *parts,
                        int32_t num_parts);

/** @brief The last error message recorded in @p ctx, or "" when none. */
const char *tt_last_error(const tt_context *ctx);

#ifdef __cplusplus
}
#endif

#endif /* TVM_TINY_TT_RUNTIME_H_ */

/*
 * tvm_tiny C runtime: workspace, packed calls and errors (see tt_runtime.h).
 * No heap and no mutable statics: every function works on the caller's tt_context.
 */
#include "tvm_tiny/tt_runtime.h"

#include <string.h>

#include "tvm/ffi/c_api.h"

static size_t tt_align_up(size_t value) {
  return (value + (TT_WORKSPACE_ALIGNMENT - 1u)) & ~(size_t)(TT_WORKSPACE_ALIGNMENT - 1u);
}

static void tt_append_error(tt_context *ctx, size_t *len, const char *part) {
  while (part != NULL && *part != '\0' && *len + 1u < TT_ERROR_BYTES) {
    ctx->last_error[(*len)++] = *part++;
  }
  ctx->last_error[*len] = '\0';
}

void tt_set_error(tt_context *ctx, const char *message) {
  size_t len = 0;
  tt_append_error(ctx, &len, message);
}

void tt_set_error_parts(tt_context *ctx, const char *kind, const char *const *parts,
                        int32_t num_parts) {
  size_t len = 0;
  int32_t i;
  tt_append_error(ctx, &len, kind);
  tt_append_error(ctx, &len, ": ");
  for (i = 0; i < num_parts; ++i) {
    tt_append_error(ctx, &len, parts[i]);
  }
}

const char *tt_last_error(const tt_context *ctx) {
  return ctx->last_error;
}

DLTensor tt_make_tensor(void *data, int32_t ndim, const int64_t *shape, uint8_t code,
                        uint8_t bits) {
  DLTensor t;
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype.code = code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  /* TIR only reads the shape; DLPack declares it non-const. */
  t.shape = (int64_t *)(uintptr_t)shape;
  t.strides = NULL;
  t.byte_offset = 0;
  return t;
}

int32_t tt_call_packed(tt_packed_fn fn, DLTensor *const *tensors, int32_t num_tensors) {
  TVMFFIAny args[TT_MAX_PACKED_ARGS];
  TVMFFIAny result;
  int32_t i;
  int32_t rc;
  if (num_tensors > TT_MAX_PACKED_ARGS) {
    return TT_RUNTIME_TOO_MANY_ARGS;
  }
  for (i = 0; i < num_tensors; ++i) {
    memset(&args[i], 0, sizeof(args[i]));
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = tensors[i];
  }
  memset(&result, 0, sizeof(result));
  result.type_index = kTVMFFINone;
  rc = fn(NULL, args, num_tensors, &result);
  return rc == 0 ? TT_RUNTIME_OK : TT_RUNTIME_KERNEL_FAILED;
}

void tt_workspace_bind(tt_context *ctx, uint8_t *base, size_t size) {
  ctx->workspace.base = base;
  ctx->workspace.size = size;
  ctx->workspace.used = 0;
}

void tt_workspace_unbind(tt_context *ctx) {
  tt_workspace_bind(ctx, NULL, 0);
}

size_t tt_workspace_used(const tt_context *ctx) {
  return ctx->workspace.used;
}

void *tt_workspace_alloc(tt_context *ctx, uint64_t nbytes) {
  tt_workspace *ws = &ctx->workspace;
  size_t need = tt_align_up((size_t)nbytes);
  void *ptr;
  if (ws->base == NULL || need > ws->size - ws->used) {
    tt_set_error(ctx, "TVMBackendAllocWorkspace: request exceeds the planned workspace");
    return NULL;
  }
  ptr = ws->base + ws->used;
  ws->used += need;
  return ptr;
}

int tt_workspace_free(tt_context *ctx, void *ptr) {
  tt_workspace *ws = &ctx->workspace;
  /* LIFO: freeing the most recent block rewinds the bump pointer to it. */
  if (ptr != NULL && (uint8_t *)ptr >= ws->base && (uint8_t *)ptr < ws->base + ws->used) {
    ws->used = (size_t)((uint8_t *)ptr - ws->base);
  }
  return 0;
}

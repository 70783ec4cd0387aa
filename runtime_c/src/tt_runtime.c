/*
 * tvm_tiny C runtime: workspace, packed calls and errors (see tt_runtime.h).
 * No heap: the workspace is a caller-bound region of the static arena.
 */
#include "tvm_tiny/tt_runtime.h"

#include <string.h>

#include "tvm/ffi/c_api.h"
#include "tvm/runtime/c_backend_api.h"

/* Workspace allocations are aligned like the arena so TIR vector loads stay aligned. */
#define TT_WORKSPACE_ALIGNMENT 16u
#define TT_ERROR_BYTES 160u

/* The only mutable state: TVMBackendAllocWorkspace() has no context argument. */
static uint8_t *g_workspace_base;
static size_t g_workspace_size;
static size_t g_workspace_used;
static char g_last_error[TT_ERROR_BYTES];

static size_t tt_align_up(size_t value) {
  return (value + (TT_WORKSPACE_ALIGNMENT - 1u)) & ~(size_t)(TT_WORKSPACE_ALIGNMENT - 1u);
}

static void tt_append_error(size_t *len, const char *part) {
  while (part != NULL && *part != '\0' && *len + 1u < TT_ERROR_BYTES) {
    g_last_error[(*len)++] = *part++;
  }
  g_last_error[*len] = '\0';
}

void tt_set_error(const char *message) {
  size_t len = 0;
  tt_append_error(&len, message);
}

const char *tt_last_error(void) { return g_last_error; }

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

int32_t tt_call_packed(tt_packed_fn fn, const char *name, DLTensor *const *tensors,
                       int32_t num_tensors) {
  TVMFFIAny args[TT_MAX_PACKED_ARGS];
  TVMFFIAny result;
  int32_t i;
  int32_t rc;
  if (num_tensors > TT_MAX_PACKED_ARGS) {
    tt_set_error("too many packed arguments");
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
  if (rc != 0) {
    size_t len = 0;
    tt_append_error(&len, "TIR kernel failed: ");
    tt_append_error(&len, name);
    return TT_RUNTIME_KERNEL_FAILED;
  }
  return TT_RUNTIME_OK;
}

void tt_workspace_bind(uint8_t *base, size_t size) {
  g_workspace_base = base;
  g_workspace_size = size;
  g_workspace_used = 0;
}

void tt_workspace_unbind(void) { tt_workspace_bind(NULL, 0); }

size_t tt_workspace_used(void) { return g_workspace_used; }

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  size_t need = tt_align_up((size_t)nbytes);
  void *ptr;
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  if (g_workspace_base == NULL || need > g_workspace_size - g_workspace_used) {
    tt_set_error("TVMBackendAllocWorkspace: request exceeds the planned workspace");
    return NULL;
  }
  ptr = g_workspace_base + g_workspace_used;
  g_workspace_used += need;
  return ptr;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type;
  (void)device_id;
  /* LIFO: freeing the most recent block rewinds the bump pointer to it. */
  if (ptr != NULL && (uint8_t *)ptr >= g_workspace_base &&
      (uint8_t *)ptr < g_workspace_base + g_workspace_used) {
    g_workspace_used = (size_t)((uint8_t *)ptr - g_workspace_base);
  }
  return 0;
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {
  size_t len = 0;
  tt_append_error(&len, kind);
  tt_append_error(&len, ": ");
  tt_append_error(&len, message);
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **message_parts,
                                       int32_t num_parts) {
  size_t len = 0;
  int32_t i;
  tt_append_error(&len, kind);
  tt_append_error(&len, ": ");
  for (i = 0; i < num_parts; ++i) {
    tt_append_error(&len, message_parts[i]);
  }
}

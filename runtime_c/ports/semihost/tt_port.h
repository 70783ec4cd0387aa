/*
 * tvm_tiny board port for emulated boards: semihosting file I/O, stack high-water mark and the
 * RISC-V retired-instruction counter. Used by the generated firmware harness (firmware/main.c);
 * the model itself needs none of it.
 *
 * Semihosting hands file operations to the emulator's host (QEMU -semihosting-config
 * target=native); paths are relative to the directory QEMU runs in. Only open/read/write/close
 * are used: stdio's fopen() would need a heap, and the firmware has none.
 */
#ifndef TVM_TINY_TT_PORT_H_
#define TVM_TINY_TT_PORT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Status of the file helpers. */
typedef enum {
  TT_PORT_OK = 0,
  TT_PORT_NO_FILE = -1,   /**< the file cannot be opened */
  TT_PORT_SHORT_FILE = -2 /**< fewer bytes than expected could be read or written */
} tt_port_status;

/** @brief Read exactly @p bytes of file @p path into @p dst. */
tt_port_status tt_port_read_file(const char *path, void *dst, size_t bytes);

/** @brief Create or replace file @p path with @p bytes bytes from @p src. */
tt_port_status tt_port_write_file(const char *path, const void *src, size_t bytes);

/**
 * @brief Compare @p count floats with the reference file @p path, chunk by chunk (no buffer
 *        of the reference size is needed).
 *
 * Element i matches when |got[i] - ref[i]| <= atol + rtol * |ref[i]|.
 * @param[out] max_error  largest |got - ref| seen
 * @return the number of mismatching elements (>= 0), or a negative tt_port_status.
 */
int32_t tt_port_compare_f32_file(const char *path, const float *got, size_t count, float atol,
                                 float rtol, float *max_error);

/** @brief Compare @p bytes bytes exactly with file @p path; same return convention. */
int32_t tt_port_compare_bytes_file(const char *path, const void *got, size_t bytes);

/** @brief FNV-1a (32 bit) hash of @p bytes bytes: a bit-exact checksum of an output. */
uint32_t tt_port_fnv1a(const void *data, size_t bytes);

/** @brief Fill the unused part of the stack with a pattern (call first thing in main). */
void tt_port_stack_paint(void);

/** @brief Deepest stack use since tt_port_stack_paint(), in bytes (pattern scan). */
size_t tt_port_stack_used(void);

/** @brief Bytes reserved for the stack by the linker script. */
size_t tt_port_stack_size(void);

/**
 * @brief Retired-instruction counter: RISC-V minstret(h). On Arm there is none that an emulator
 *        models (DWT CYCCNT counts cycles and reads 0 in QEMU).
 * @param[out] value  the counter
 * @return 1 when @p value was read, 0 when the core has no such counter.
 */
int tt_port_instret(uint64_t *value);

#ifdef __cplusplus
}
#endif

#endif /* TVM_TINY_TT_PORT_H_ */

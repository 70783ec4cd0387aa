/*
 * Semihosting board port (see tt_port.h).
 */
#define _POSIX_C_SOURCE 200809L /* open/read/write/close under -std=c99 */

#include "tt_port.h"

#include <fcntl.h>
#include <math.h>
#include <unistd.h>

/* Linker-script symbols (firmware/<board>.ld): the stack reservation [limit, top). */
extern uint8_t __tt_stack_limit[];
extern uint8_t __stack[];

#define TT_STACK_PATTERN 0xA5u
#define TT_STACK_GUARD 64u /* bytes below the painter's own frame left untouched */
#define TT_COMPARE_CHUNK 64u

static tt_port_status read_all(int fd, uint8_t *dst, size_t bytes) {
  while (bytes > 0) {
    const ssize_t n = read(fd, dst, bytes);
    if (n <= 0) {
      return TT_PORT_SHORT_FILE;
    }
    dst += n;
    bytes -= (size_t)n;
  }
  return TT_PORT_OK;
}

tt_port_status tt_port_read_file(const char *path, void *dst, size_t bytes) {
  const int fd = open(path, O_RDONLY);
  tt_port_status status;
  if (fd < 0) {
    return TT_PORT_NO_FILE;
  }
  status = read_all(fd, (uint8_t *)dst, bytes);
  close(fd);
  return status;
}

tt_port_status tt_port_write_file(const char *path, const void *src, size_t bytes) {
  const uint8_t *p = (const uint8_t *)src;
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    return TT_PORT_NO_FILE;
  }
  while (bytes > 0) {
    const ssize_t n = write(fd, p, bytes);
    if (n <= 0) {
      close(fd);
      return TT_PORT_SHORT_FILE;
    }
    p += n;
    bytes -= (size_t)n;
  }
  close(fd);
  return TT_PORT_OK;
}

int32_t tt_port_compare_f32_file(const char *path, const float *got, size_t count, float atol,
                                 float rtol, float *max_error) {
  float ref[TT_COMPARE_CHUNK];
  int32_t mismatches = 0;
  const int fd = open(path, O_RDONLY);
  *max_error = 0.0f;
  if (fd < 0) {
    return TT_PORT_NO_FILE;
  }
  for (size_t done = 0; done < count;) {
    const size_t n = count - done < TT_COMPARE_CHUNK ? count - done : TT_COMPARE_CHUNK;
    if (read_all(fd, (uint8_t *)ref, n * sizeof(float)) != TT_PORT_OK) {
      close(fd);
      return TT_PORT_SHORT_FILE;
    }
    for (size_t i = 0; i < n; ++i) {
      const float err = fabsf(got[done + i] - ref[i]);
      if (err > *max_error || err != err) {
        *max_error = err;
      }
      if (!(err <= atol + rtol * fabsf(ref[i]))) { /* NaN never matches */
        ++mismatches;
      }
    }
    done += n;
  }
  close(fd);
  return mismatches;
}

int32_t tt_port_compare_bytes_file(const char *path, const void *got, size_t bytes) {
  uint8_t ref[TT_COMPARE_CHUNK];
  const uint8_t *p = (const uint8_t *)got;
  int32_t mismatches = 0;
  const int fd = open(path, O_RDONLY);
  if (fd < 0) {
    return TT_PORT_NO_FILE;
  }
  for (size_t done = 0; done < bytes;) {
    const size_t n = bytes - done < TT_COMPARE_CHUNK ? bytes - done : TT_COMPARE_CHUNK;
    if (read_all(fd, ref, n) != TT_PORT_OK) {
      close(fd);
      return TT_PORT_SHORT_FILE;
    }
    for (size_t i = 0; i < n; ++i) {
      mismatches += p[done + i] != ref[i];
    }
    done += n;
  }
  close(fd);
  return mismatches;
}

uint32_t tt_port_fnv1a(const void *data, size_t bytes) {
  const uint8_t *p = (const uint8_t *)data;
  uint32_t hash = 2166136261u; /* FNV-1a 32-bit offset basis */
  for (size_t i = 0; i < bytes; ++i) {
    hash = (hash ^ p[i]) * 16777619u; /* FNV prime */
  }
  return hash;
}

void tt_port_stack_paint(void) {
  uint8_t *const frame = (uint8_t *)__builtin_frame_address(0);
  volatile uint8_t *p = __tt_stack_limit;
  while (p + TT_STACK_GUARD < frame) {
    *p++ = TT_STACK_PATTERN;
  }
}

size_t tt_port_stack_used(void) {
  const uint8_t *p = __tt_stack_limit;
  while (p < __stack && *p == TT_STACK_PATTERN) {
    ++p;
  }
  return (size_t)(__stack - p);
}

size_t tt_port_stack_size(void) { return (size_t)(__stack - __tt_stack_limit); }

int tt_port_instret(uint64_t *value) {
#if defined(__riscv) && __riscv_xlen == 32
  uint32_t hi;
  uint32_t lo;
  uint32_t hi2;
  do { /* minstreth may carry between the two reads */
    __asm__ volatile(".option push\n\t.option arch, +zicsr\n\t"
                     "csrr %0, minstreth\n\tcsrr %1, minstret\n\tcsrr %2, minstreth\n\t"
                     ".option pop"
                     : "=r"(hi), "=r"(lo), "=r"(hi2));
  } while (hi != hi2);
  *value = ((uint64_t)hi << 32) | lo;
  return 1;
#elif defined(__riscv)
  __asm__ volatile(".option push\n\t.option arch, +zicsr\n\tcsrr %0, minstret\n\t.option pop"
                   : "=r"(*value));
  return 1;
#else
  *value = 0;
  return 0;
#endif
}

/*
 * tvm_tiny instruction-count windows.
 *
 * tt_window_begin() and tt_window_end() do nothing; they exist so that an emulator can watch
 * their addresses. The QEMU plugin runtime_c/tools/qemu_wincount counts the INSTRUCTIONS (not
 * cycles) executed between a begin and the matching end; windows nest.
 *
 * Generated entry points wrap every kernel call in TT_STEP_BEGIN(i) / TT_STEP_END(i). They
 * expand to nothing unless TT_PROFILE_STEPS is defined (board profiling builds), so host builds
 * and deployed firmware are unchanged.
 */
#ifndef TVM_TINY_TT_PROFILE_H_
#define TVM_TINY_TT_PROFILE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** @brief Opens an instruction-count window (a marker: the function body is empty). */
void tt_window_begin(void);

/** @brief Closes the innermost open instruction-count window. */
void tt_window_end(void);

#if defined(TT_PROFILE_STEPS)
#define TT_STEP_BEGIN(step) tt_window_begin()
#define TT_STEP_END(step) tt_window_end()
#else
#define TT_STEP_BEGIN(step) ((void)0)
#define TT_STEP_END(step) ((void)0)
#endif

#ifdef __cplusplus
}
#endif

#endif /* TVM_TINY_TT_PROFILE_H_ */

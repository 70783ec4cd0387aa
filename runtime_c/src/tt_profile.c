/*
 * Instruction-count window markers (see tt_profile.h).
 *
 * The emulator identifies a window by the address of the marker's first instruction, so the
 * markers must stay real, distinct functions: noipa keeps GCC from inlining, cloning or
 * folding them, and their asm statements differ so no identical-code folding can merge them.
 */
#include "tvm_tiny/tt_profile.h"

#if defined(__GNUC__) && !defined(__clang__)
#define TT_MARKER __attribute__((noipa, used))
#elif defined(__GNUC__)
#define TT_MARKER __attribute__((noinline, used))
#else
#define TT_MARKER
#endif

TT_MARKER void tt_window_begin(void) { __asm__ volatile("/* tt_window_begin */" ::: "memory"); }

TT_MARKER void tt_window_end(void) { __asm__ volatile("/* tt_window_end */" ::: "memory"); }

/**
 * @file tt_cluster_serial.c
 * @brief Portable cluster port (tt_cluster.h): the cores of a fork run one
 *        after another on the calling core.
 *
 * Same results as a parallel cluster for fork-join kernels whose cores write
 * disjoint memory. With TT_PROFILE_STEPS each core's task is one instruction
 * window, so an emulator measures every core's work separately; the parallel
 * latency derived from them is a model, not a measurement.
 *
 * State: the current core id and fork width are the port's only mutable
 * statics (the GAP SDK reads them from hardware registers instead).
 */
#include <stddef.h>

#include "tt_cluster.h"
#include "tvm_tiny/tt_profile.h"

static int32_t g_core_id;
static int32_t g_num_cores = 1;

void tt_cluster_fork(int32_t cores, tt_cluster_task task, void *arg) {
  for (int32_t core = 0; core < cores; ++core) {
    g_core_id = core;
    g_num_cores = cores;
#if defined(TT_PROFILE_STEPS)
    tt_window_begin();
#endif
    task(arg);
#if defined(TT_PROFILE_STEPS)
    tt_window_end();
#endif
  }
  g_core_id = 0;
  g_num_cores = 1;
}

int32_t tt_cluster_core_id(void) { return g_core_id; }

int32_t tt_cluster_num_cores(void) { return g_num_cores; }

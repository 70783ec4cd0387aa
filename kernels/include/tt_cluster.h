/**
 * @file tt_cluster.h
 * @brief The cluster port layer the parallel kernels are written against
 *        (DESIGN.md section 4): fork a task onto the cores, core id, barrier.
 *
 * The model is fork-join: tt_cluster_fork() runs the task once per core and
 * returns when every core has finished, so its return IS the barrier. Kernels
 * that need a barrier between phases fork once per phase.
 *
 * Implementations:
 * - port/tt_cluster_serial.c (portable, used everywhere here): runs the cores
 *   one after another on the calling core. Built with TT_PROFILE_STEPS, each
 *   core's task is an instruction-count window (tt_profile.h), from which the
 *   parallel latency is MODELLED as the maximum over cores plus a fork/join
 *   cost (tvm_tiny.emulator).
 * - GAP SDK (not in this repository; needs the SDK): tt_cluster_fork maps to
 *   pi_cl_team_fork(cores, task, arg), tt_cluster_core_id to pi_core_id().
 */
#ifndef TT_CLUSTER_H
#define TT_CLUSTER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Largest core count a fork accepts (GAP9's cluster has 8 compute cores). */
#define TT_CLUSTER_MAX_CORES 16

/** A task run by every core of a fork; `arg` is shared by all cores. */
typedef void (*tt_cluster_task)(void *arg);

/**
 * @brief Run task(arg) on cores 0 .. cores-1 and return when all finished.
 * @param[in] cores  1 .. TT_CLUSTER_MAX_CORES (callers check the range)
 */
void tt_cluster_fork(int32_t cores, tt_cluster_task task, void *arg);

/** @brief Id of the calling core inside a task (0 outside any fork). */
int32_t tt_cluster_core_id(void);

/** @brief Cores of the current fork (1 outside any fork). */
int32_t tt_cluster_num_cores(void);

#ifdef __cplusplus
}
#endif

#endif /* TT_CLUSTER_H */

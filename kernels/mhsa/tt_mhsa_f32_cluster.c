/**
 * @file tt_mhsa_f32_cluster.c
 * @brief float32 MHSA split across the cores of a cluster by heads
 *        (tt_mhsa.h, tt_cluster.h).
 *
 * @code
 *   fork 1, core c < A:   y_c = (c == 0 ? bo : 0);  y_c += heads c, c+A, ...
 *                         (y_0 is y itself, y_1 .. y_{A-1} live in scratch)
 *   fork 2, every core:   y[rows of c] += y_1 + ... + y_{A-1}
 * @endcode
 * A = min(cores, H): cores beyond the head count idle in fork 1.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_cluster.h"
#include "tt_mhsa.h"

/** Everything the tasks of one call share (lives on the caller's stack). */
typedef struct {
  const tt_mhsa_dims *dims;
  const tt_mhsa_config *cfg;
  const tt_mhsa_f32_params *p;
  const float *x;
  float *y;
  float *scratch;         /* A head scratches, then A-1 partial outputs */
  int32_t head_bytes;     /* scratch bytes of one core */
  int32_t active;         /* A */
  tt_status status[TT_CLUSTER_MAX_CORES];
} cluster_job;

static int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

static float *partial(const cluster_job *job, int32_t core) {
  const int32_t out_floats = job->dims->seq * job->dims->out_features;
  float *partials = job->scratch + (job->head_bytes / (int32_t)sizeof(float)) * job->active;
  return core == 0 ? job->y : partials + (core - 1) * out_floats;
}

static void heads_task(void *arg) {
  cluster_job *job = (cluster_job *)arg;
  const int32_t core = tt_cluster_core_id();
  if (core >= job->active) {
    return;
  }
  const int32_t E_OUT = job->dims->out_features;
  float *y = partial(job, core);
  for (int32_t i = 0; i < job->dims->seq; ++i) {
    for (int32_t o = 0; o < E_OUT; ++o) {
      y[i * E_OUT + o] = core == 0 && job->p->bo != NULL ? job->p->bo[o] : 0.0f;
    }
  }
  float *scratch = job->scratch + (job->head_bytes / (int32_t)sizeof(float)) * core;
  job->status[core] = tt_mhsa_f32_heads(job->dims, job->cfg, job->p, job->x, y, scratch,
                                        job->head_bytes, core, job->active);
}

static void reduce_task(void *arg) {
  const cluster_job *job = (const cluster_job *)arg;
  const int32_t core = tt_cluster_core_id();
  const int32_t cores = tt_cluster_num_cores();
  const int32_t S = job->dims->seq;
  const int32_t E_OUT = job->dims->out_features;
  const int32_t rows = (S + cores - 1) / cores;
  const int32_t first = min_i32(core * rows, S);
  const int32_t last = min_i32(first + rows, S);
  for (int32_t c = 1; c < job->active; ++c) {
    const float *y_c = partial(job, c);
    for (int32_t k = first * E_OUT; k < last * E_OUT; ++k) {
      job->y[k] += y_c[k];
    }
  }
}

int32_t tt_mhsa_f32_cluster_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                                            int32_t cores) {
  const int32_t head_bytes = tt_mhsa_f32_get_buffer_size(dims, cfg);
  if (head_bytes < 0 || cores < 1) {
    return TT_ARG_ERROR;
  }
  const int64_t active = min_i32(cores, dims->heads);
  const int64_t bytes = active * head_bytes + (active - 1) * (int64_t)dims->seq *
                                                  dims->out_features * (int64_t)sizeof(float);
  return bytes <= INT32_MAX ? (int32_t)bytes : TT_ARG_ERROR;
}

tt_status tt_mhsa_f32_cluster(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                              const tt_mhsa_f32_params *p, const float *x, float *y,
                              float *scratch, int32_t scratch_bytes, int32_t cores) {
  if (cores < 1 || cores > TT_CLUSTER_MAX_CORES) {
    return TT_ARG_ERROR;
  }
  const int32_t need = tt_mhsa_f32_cluster_get_buffer_size(dims, cfg, cores);
  if (need < 0 || scratch == NULL || y == NULL) {
    return TT_ARG_ERROR;
  }
  if (scratch_bytes < need) {
    return TT_SCRATCH_ERROR;
  }
  cluster_job job = {dims, cfg, p, x, y, scratch, tt_mhsa_f32_get_buffer_size(dims, cfg),
                     min_i32(cores, dims->heads), {TT_OK}};
  tt_cluster_fork(cores, heads_task, &job);
  for (int32_t c = 0; c < job.active; ++c) {
    if (job.status[c] != TT_OK) {
      return job.status[c];
    }
  }
  if (job.active > 1) {
    tt_cluster_fork(cores, reduce_task, &job);
  }
  return TT_OK;
}

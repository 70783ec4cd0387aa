/**
 * @file tt_mhsa_s8_cluster.c
 * @brief int8 MHSA split across the cores of a cluster by heads (tt_mhsa_s8.h,
 *        tt_cluster.h), on top of either tt_mhsa_s8.c or tt_mhsa_s8_reference.c.
 *
 * @code
 *   fork 1, core c < A:  accumulator mode: y32_c = (c == 0 ? bo : 0), y32_c += heads c, c+A, ...
 *                        context mode:     heads c, c+A, ... -> columns of core 0's ctx8
 *   fork 2, core c < A:  its block of rows: accumulator mode: y32_0 += y32_1 + ... + y32_{A-1},
 *                        y = requant(y32_0); context mode: y = out-projection of ctx8
 * @endcode
 * A = min(cores, H); core c's scratch is the c-th tt_mhsa_s8_get_buffer_size()
 * bytes of the caller's scratch. Integer sums are exact, so y equals
 * tt_mhsa_s8()'s bit for bit.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_cluster.h"
#include "tt_mhsa_s8.h"

/** Everything the tasks of one call share (lives on the caller's stack). */
typedef struct {
  const tt_mhsa_dims *dims;
  const tt_mhsa_config *cfg;
  const tt_mhsa_s8_params *p;
  const int8_t *x;
  int8_t *y;
  int8_t *scratch;      /* A head scratches */
  int32_t head_bytes;   /* scratch bytes of one core */
  int32_t active;       /* A */
  int32_t context_mode; /* tt_mhsa_s8_context_bytes() > 0 */
  int32_t chunk;        /* rows per core in fork 2, a multiple of the block rows */
  tt_status status[TT_CLUSTER_MAX_CORES];
} s8_cluster_job;

static int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

static int8_t *core_scratch(const s8_cluster_job *job, int32_t core) {
  return job->scratch + job->head_bytes * core;
}

static void heads_task(void *arg) {
  s8_cluster_job *job = (s8_cluster_job *)arg;
  const int32_t core = tt_cluster_core_id();
  if (core >= job->active) {
    return;
  }
  int8_t *scratch = core_scratch(job, core);
  if (!job->context_mode) { /* this core's partial y32 [S][E_out] at the start of its scratch */
    int32_t *y32 = (int32_t *)(void *)scratch;
    const int32_t eo = job->dims->out_features;
    for (int32_t i = 0; i < job->dims->seq; ++i) {
      for (int32_t o = 0; o < eo; ++o) {
        y32[i * eo + o] = core == 0 && job->p->bo != NULL ? job->p->bo[o] : 0;
      }
    }
  }
  job->status[core] =
      tt_mhsa_s8_heads(job->dims, job->cfg, job->p, job->x, scratch, job->head_bytes, core,
                       job->active, job->context_mode ? core_scratch(job, 0) : NULL);
}

static void finish_task(void *arg) {
  const s8_cluster_job *job = (const s8_cluster_job *)arg;
  const int32_t core = tt_cluster_core_id();
  if (core >= job->active) {
    return;
  }
  const int32_t S = job->dims->seq;
  const int32_t first = min_i32(core * job->chunk, S);
  const int32_t last = min_i32(first + job->chunk, S);
  if (first >= last) {
    return;
  }
  if (job->context_mode) {
    tt_mhsa_s8_finish(job->dims, job->cfg, job->p, core_scratch(job, core),
                      core_scratch(job, 0), job->y, first, last);
    return;
  }
  const int32_t eo = job->dims->out_features;
  int32_t *y32 = (int32_t *)(void *)core_scratch(job, 0);
  for (int32_t c = 1; c < job->active; ++c) {
    const int32_t *part = (const int32_t *)(const void *)core_scratch(job, c);
    for (int32_t k = first * eo; k < last * eo; ++k) {
      y32[k] += part[k];
    }
  }
  tt_mhsa_s8_finish(job->dims, job->cfg, job->p, core_scratch(job, 0), NULL, job->y, first,
                    last);
}

int32_t tt_mhsa_s8_cluster_get_buffer_size(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                                           int32_t cores) {
  const int32_t head_bytes = tt_mhsa_s8_get_buffer_size(dims, cfg);
  if (head_bytes < 0 || cores < 1) {
    return TT_ARG_ERROR;
  }
  const int64_t bytes = (int64_t)min_i32(cores, dims->heads) * head_bytes;
  return bytes <= INT32_MAX ? (int32_t)bytes : TT_ARG_ERROR;
}

/** 1 if the byte ranges [a, a + a_bytes) and [b, b + b_bytes) intersect. */
static int overlaps(const void *a, int64_t a_bytes, const void *b, int64_t b_bytes) {
  const uintptr_t a0 = (uintptr_t)a;
  const uintptr_t b0 = (uintptr_t)b;
  return a0 < b0 + (uintptr_t)b_bytes && b0 < a0 + (uintptr_t)a_bytes;
}

tt_status tt_mhsa_s8_cluster(const tt_mhsa_dims *dims, const tt_mhsa_config *cfg,
                             const tt_mhsa_s8_params *p, const int8_t *x, int8_t *y,
                             int8_t *scratch, int32_t scratch_bytes, int32_t cores) {
  if (cores < 1 || cores > TT_CLUSTER_MAX_CORES) {
    return TT_ARG_ERROR;
  }
  const int32_t need = tt_mhsa_s8_cluster_get_buffer_size(dims, cfg, cores);
  if (need < 0 || scratch == NULL || y == NULL || x == NULL) {
    return TT_ARG_ERROR;
  }
  if (scratch_bytes < need) {
    return TT_SCRATCH_ERROR;
  }
  const int64_t y_bytes = (int64_t)dims->seq * dims->out_features;
  if (overlaps(y, y_bytes, x, (int64_t)dims->seq * dims->embed) ||
      overlaps(y, y_bytes, scratch, need)) {
    return TT_ARG_ERROR;
  }
  const int32_t head_bytes = tt_mhsa_s8_get_buffer_size(dims, cfg);
  /* Check every other argument once, before y is written: no head runs (h_first = H). */
  const tt_status status =
      tt_mhsa_s8_heads(dims, cfg, p, x, scratch, head_bytes, dims->heads, 1, NULL);
  if (status != TT_OK) {
    return status;
  }
  const int32_t active = min_i32(cores, dims->heads);
  /* Block rows X (see tt_mhsa_s8.h): fork 2 hands out whole blocks, so every core's first
   * row is even. */
  const int32_t rpb = min_i32(cfg->rows_per_block, dims->seq);
  const int32_t block = min_i32(rpb + (rpb & 1), dims->seq);
  const int32_t blocks = (dims->seq + block - 1) / block;
  s8_cluster_job job = {dims, cfg, p, x, y, scratch, head_bytes, active,
                        tt_mhsa_s8_context_bytes(dims, cfg) > 0,
                        ((blocks + active - 1) / active) * block, {TT_OK}};
  tt_cluster_fork(cores, heads_task, &job);
  for (int32_t c = 0; c < active; ++c) {
    if (job.status[c] != TT_OK) {
      return job.status[c];
    }
  }
  tt_cluster_fork(cores, finish_task, &job);
  return TT_OK;
}

/*
 * wincount: a QEMU TCG plugin that counts guest INSTRUCTIONS (not cycles) between marker
 * functions, exactly and deterministically.
 *
 * The firmware calls tt_window_begin() and tt_window_end() (runtime_c/src/tt_profile.c) around
 * what it measures; windows may nest (the whole model run, and inside it one window per kernel
 * call). The plugin counts every executed instruction with an inline add, and the first
 * instruction of each marker function opens or closes a window:
 *
 *   window = instructions from the begin marker's first instruction (included) to the end
 *            marker's first instruction (excluded)
 *
 * Arguments (QEMU 7.2: -plugin libwincount.so,begin=0x...,end=0x...[,out=FILE][,labels=FILE]):
 *   begin, end  addresses of the two marker functions (bit 0, the Thumb bit, is ignored)
 *   out         write the report to FILE (default: qemu_plugin_outs, shown with -d plugin)
 *   labels      a text file with one label per line, given to the windows in the order they open
 *
 * Report, one line per window in the order the windows opened, then a total:
 *   wincount: window <i> depth <d> instructions <n> label <label>
 *   wincount: total <instructions executed while the plugin ran> windows <count>
 *
 * Debian ships QEMU's plugin support but not qemu-plugin.h, so the few API functions used are
 * declared here. Build per QEMU version: -DAPI_VERSION=1 for QEMU 7.x and 8.x.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef API_VERSION
#error "build with -DAPI_VERSION=<the QEMU plugin API version>"
#endif

/* ---- the part of QEMU's qemu-plugin.h this plugin needs (API version 1) ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* opaque here: nothing is read from it */
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = API_VERSION;
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info, int argc,
                                                               char **argv);
/* ---- end of the API declarations ---- */

#define MAX_WINDOWS 65536u /* windows recorded; later ones are counted as dropped */
#define MAX_DEPTH 64u      /* nesting depth of open windows */
#define MAX_LABEL 96u      /* bytes of one label, including the terminator */

typedef struct {
  uint64_t begin;
  uint64_t end;
  uint32_t depth;
  int closed;
} window_t;

/* One vCPU (the boards are single-core machines); the counters are only touched from it. */
static uint64_t g_insns;
static uint64_t g_begin_addr = UINT64_MAX;
static uint64_t g_end_addr = UINT64_MAX;
static window_t g_windows[MAX_WINDOWS];
static uint32_t g_num_windows;
static uint32_t g_dropped;
static uint32_t g_open[MAX_DEPTH];
static uint32_t g_depth;
static uint32_t g_unbalanced;
/* Labels of the windows in opening order: a fixed table (6 MiB of host memory in the QEMU
 * process), so the plugin needs no heap either. */
static char g_labels[MAX_WINDOWS][MAX_LABEL];
static uint32_t g_num_labels;
static char g_out_path[4096]; /* "" = print the report on QEMU's log instead */

static void on_begin(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  (void)userdata;
  if (g_num_windows < MAX_WINDOWS && g_depth < MAX_DEPTH) {
    window_t *w = &g_windows[g_num_windows];
    w->begin = g_insns;
    w->depth = g_depth;
    w->closed = 0;
    g_open[g_depth++] = g_num_windows++;
  } else {
    ++g_dropped;
  }
  ++g_insns; /* the marker instruction itself (it has no inline counter) */
}

static void on_end(unsigned int vcpu, void *userdata) {
  (void)vcpu;
  (void)userdata;
  if (g_depth > 0) {
    window_t *w = &g_windows[g_open[--g_depth]];
    w->end = g_insns;
    w->closed = 1;
  } else {
    ++g_unbalanced;
  }
  ++g_insns;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    const uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
    if (vaddr == g_begin_addr) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, NULL);
    } else if (vaddr == g_end_addr) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
    } else {
      qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &g_insns, 1);
    }
  }
}

static void report(FILE *out) {
  char line[256];
  for (uint32_t i = 0; i < g_num_windows; ++i) {
    const window_t *w = &g_windows[i];
    const char *label = i < g_num_labels ? g_labels[i] : "-";
    if (w->closed) {
      snprintf(line, sizeof(line), "wincount: window %" PRIu32 " depth %" PRIu32
               " instructions %" PRIu64 " label %.95s\n", i, w->depth, w->end - w->begin, label);
    } else {
      snprintf(line, sizeof(line), "wincount: window %" PRIu32 " depth %" PRIu32
               " unclosed label %.95s\n", i, w->depth, label);
    }
    if (out != NULL) {
      fputs(line, out);
    } else {
      qemu_plugin_outs(line);
    }
  }
  snprintf(line, sizeof(line), "wincount: total %" PRIu64 " windows %" PRIu32 " dropped %" PRIu32
           " unbalanced %" PRIu32 "\n", g_insns, g_num_windows, g_dropped, g_unbalanced);
  if (out != NULL) {
    fputs(line, out);
  } else {
    qemu_plugin_outs(line);
  }
}

static void on_atexit(qemu_plugin_id_t id, void *userdata) {
  (void)id;
  (void)userdata;
  FILE *out = NULL;
  if (g_out_path[0] != '\0') {
    out = fopen(g_out_path, "w");
    if (out == NULL) {
      qemu_plugin_outs("wincount: cannot open the out= file; reporting here\n");
    }
  }
  report(out);
  if (out != NULL) {
    fclose(out);
  }
}

static int parse_addr(const char *text, uint64_t *addr) {
  char *end = NULL;
  const unsigned long long value = strtoull(text, &end, 0);
  if (end == text || *end != '\0') {
    return -1;
  }
  *addr = (uint64_t)value & ~(uint64_t)1; /* drop the Thumb bit of ARM function symbols */
  return 0;
}

/* Read one line into buf (truncated to its size), consuming the rest of a longer line.
 * Returns 0 at end of file. */
static int read_line(FILE *f, char *buf, size_t size) {
  if (fgets(buf, (int)size, f) == NULL) {
    return 0;
  }
  if (strchr(buf, '\n') == NULL) {
    int c;
    do {
      c = fgetc(f);
    } while (c != '\n' && c != EOF);
  }
  buf[strcspn(buf, "\r\n")] = '\0';
  return 1;
}

static int load_labels(const char *path) {
  FILE *f = fopen(path, "r");
  char buf[MAX_LABEL];
  if (f == NULL) {
    return -1;
  }
  while (g_num_labels < MAX_WINDOWS && read_line(f, buf, sizeof(buf))) {
    memcpy(g_labels[g_num_labels++], buf, sizeof(buf));
  }
  fclose(f);
  return 0;
}

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    const char *arg = argv[i];
    int bad = 0;
    if (strncmp(arg, "begin=", 6) == 0) {
      bad = parse_addr(arg + 6, &g_begin_addr);
    } else if (strncmp(arg, "end=", 4) == 0) {
      bad = parse_addr(arg + 4, &g_end_addr);
    } else if (strncmp(arg, "out=", 4) == 0) {
      bad = strlen(arg + 4) >= sizeof(g_out_path);
      if (!bad) {
        strcpy(g_out_path, arg + 4);
      }
    } else if (strncmp(arg, "labels=", 7) == 0) {
      bad = load_labels(arg + 7);
    } else {
      bad = 1;
    }
    if (bad) {
      fprintf(stderr, "wincount: bad argument '%s' (expected begin=, end=, out=, labels=)\n",
              arg);
      return -1;
    }
  }
  if (g_begin_addr == UINT64_MAX || g_end_addr == UINT64_MAX || g_begin_addr == g_end_addr) {
    fprintf(stderr, "wincount: need two distinct marker addresses: begin=ADDR,end=ADDR\n");
    return -1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
  return 0;
}

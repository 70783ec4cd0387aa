"""Firmware projects: a compiled model plus everything needed to build and emulate it.

:func:`export_project` writes a self-contained directory that builds with the board's cross
toolchain and ``make`` alone (no Python, no TVM)::

    Makefile                 make: build/model.elf and build/model_profiled.elf; make run: QEMU
    codegen/ runtime/        the model's sources (``lib.files``), unchanged
    ports/semihost/          board port: semihosting file I/O, stack high-water mark, minstret
    firmware/main.c          harness: read inputs, run once between window markers, write outputs
    firmware/<board>.ld      linker script with the board's real memory sizes
    firmware/windows*.txt    labels of the instruction-count windows (run, then one per kernel)
    tools/qemu_wincount/     the QEMU plugin counting instructions between the markers
    sample/                  a sample input and the host's outputs for it (checked by main.c)

``model.elf`` measures the whole run; ``model_profiled.elf`` is the same firmware with the
entry point compiled with ``-DTT_PROFILE_STEPS``, which adds one window per kernel call (the
marker calls cost a few instructions each, so totals come from ``model.elf``).
:func:`tvm_tiny.firmware.qemu.run_on_board` builds the same project in the cache and runs it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tvm_tiny import __version__
from tvm_tiny.ir.cformat import c_type
from tvm_tiny.targets.boards import Board, MemoryKind, get_board
from tvm_tiny.targets.resources import runtime_dir
from tvm_tiny.targets.toolchain import WARNING_FLAGS, write_tree

if TYPE_CHECKING:
    from tvm_tiny.module import TinyModule

ELF = "build/model.elf"
PROFILED_ELF = "build/model_profiled.elf"
LABELS = "firmware/windows.txt"
PROFILED_LABELS = "firmware/windows_profiled.txt"
PORT_DIR = "ports/semihost"
PLUGIN_SOURCE = "tools/qemu_wincount/wincount.c"
SAMPLE_DIR = "sample"
MAX_LABEL_CHARS = 90  # the plugin keeps 95 characters per label

# Board outputs match the host's when |board - host| <= ATOL + RTOL * |host|. Both run the same
# C with -ffp-contract=off (-std=c99), so the only differences come from libm (picolibc vs glibc
# expf/erff/sqrtf, a few ulps each) propagating through a few layers: 1e-4 leaves a margin of
# two orders of magnitude over the 1e-6 differences seen on the test encoders.
OUTPUT_ATOL = 1e-4
OUTPUT_RTOL = 1e-4


def board_for(lib: TinyModule, board: Board | None = None) -> Board:
    """The board a project for ``lib`` targets (``board`` overrides the library's target)."""
    board = board or get_board(lib.target)
    if board.is_host or board.toolchain is None or board.placement is None:
        raise ValueError(
            f"model '{lib.name}' was built for target '{lib.target}', which is not a board; "
            "build it with target=<board> (see tvm_tiny.boards())")
    return board


def cluster_steps(lib: TinyModule) -> dict[str, dict[str, int]]:
    """Offloaded kernels split across a cluster: name -> {"cores", "active_cores", "forks"}."""
    return {e["name"]: e["cluster"] for e in lib.metadata["offloaded"] if "cluster" in e}


def window_labels(lib: TinyModule, profiled: bool) -> list[str]:
    """Labels of the windows in the order they open: the run, then (profiled) each kernel call
    and, inside a cluster kernel, each core's task of each fork."""
    labels = ["run"]
    if profiled:
        clusters = cluster_steps(lib)
        for step in lib.metadata["steps"]:
            labels.append(step["name"])
            cluster = clusters.get(step["name"])
            if cluster is not None:
                labels += [f"{step['name']} fork{f} core{c}" for f in range(cluster["forks"])
                           for c in range(cluster["cores"])]
    return [label.replace("\n", " ")[:MAX_LABEL_CHARS] for label in labels]


def profiled_sources(lib: TinyModule) -> list[str]:
    """Translation units whose code depends on ``TT_PROFILE_STEPS``: the entry point (a window
    per kernel call) and the cluster port (a window per core); the profiled firmware builds them
    a second time with the define."""
    return [p for p in lib.source_files()
            if "TT_STEP_BEGIN(" in lib.files[p] or "TT_PROFILE_STEPS" in lib.files[p]]


def per_kernel(steps: list[tuple[str, int]]) -> dict[str, int]:
    """Instructions per kernel name, summed over its calls (a kernel may run more than once)."""
    totals: dict[str, int] = {}
    for name, count in steps:
        totals[name] = totals.get(name, 0) + count
    return totals


# -- linker script ------------------------------------------------------------------------------
def linker_script(board: Board) -> str:
    """GNU ld script: the board's memories at their real sizes, picolibc's crt0 symbols, no heap.

    Code and constants go to ``placement.code``, ``.data``/``.bss`` (arena, I/O buffers) to
    ``placement.data`` and a ``placement.stack_bytes`` stack to ``placement.stack``; a model that
    does not fit fails to link with "region ... overflowed".
    """
    place = board.placement
    assert place is not None and board.emulator is not None
    code, data, stack = place.code, place.data, place.stack
    regions = []
    for mem in board.memories:
        attrs = "rx" if mem.kind is MemoryKind.FLASH else "rwx"
        regions.append(
            f"  {mem.name} ({attrs}) : ORIGIN = 0x{mem.emulated_origin:08X}, LENGTH = {mem.size}"
            f"  /* {mem.size // 1024} KiB; on the part at 0x{mem.origin:08X} */")
    return _LINKER_SCRIPT.format(
        board=board.name, machine=board.emulator.machine, version=__version__,
        regions="\n".join(regions), code=code, data=data, stack=stack,
        stack_bytes=place.stack_bytes)


_LINKER_SCRIPT = """\
/*
 * Linker script for board '{board}' (generated by tvm_tiny {version}; do not edit).
 * Memory SIZES are the real part's; ORIGINs are where the emulator (QEMU {machine}) maps them.
 * A model that does not fit fails to link ("region ... overflowed by N bytes").
 * Symbols follow picolibc's crt0 (data copy, bss clear, TLS); there is no heap.
 */
ENTRY(_start)

MEMORY
{{
{regions}
}}

PHDRS
{{
  text PT_LOAD;
  ram PT_LOAD;
  ram_init PT_LOAD;
  tls PT_TLS;
}}

SECTIONS
{{
  .init : {{
    KEEP (*(.text.init.enter))
    KEEP (*(.data.init.enter))
    KEEP (*(SORT_BY_NAME(.init) SORT_BY_NAME(.init.*)))
  }} >{code} AT>{code} :text

  .text : {{
    *(.text.unlikely .text.unlikely.*)
    *(.text.startup .text.startup.*)
    *(.text .text.*)
    KEEP (*(.fini .fini.*))
    *(.rodata .rodata.*)
    *(.srodata .srodata.*)
    *(.data.rel.ro .data.rel.ro.*)
    *(.got .got.*)
    . = ALIGN(8);
    PROVIDE_HIDDEN(__preinit_array_start = .);
    KEEP (*(.preinit_array))
    PROVIDE_HIDDEN(__preinit_array_end = .);
    PROVIDE_HIDDEN(__init_array_start = .);
    KEEP (*(SORT_BY_INIT_PRIORITY(.init_array.*) SORT_BY_INIT_PRIORITY(.ctors.*)))
    KEEP (*(.init_array .ctors))
    PROVIDE_HIDDEN(__init_array_end = .);
    PROVIDE_HIDDEN(__fini_array_start = .);
    KEEP (*(SORT_BY_INIT_PRIORITY(.fini_array.*) SORT_BY_INIT_PRIORITY(.dtors.*)))
    KEEP (*(.fini_array .dtors))
    PROVIDE_HIDDEN(__fini_array_end = .);
  }} >{code} AT>{code} :text

  .data : ALIGN_WITH_INPUT {{
    *(.data .data.*)
    . = ALIGN(8);
    PROVIDE(__global_pointer$ = . + 0x800);
    *(.sdata .sdata.* .sdata2.*)
  }} >{data} AT>{code} :ram_init
  PROVIDE(__data_start = ADDR(.data));
  PROVIDE(__data_source = LOADADDR(.data));

  .tdata : ALIGN_WITH_INPUT {{
    *(.tdata .tdata.*)
    PROVIDE(__data_end = .);
  }} >{data} AT>{code} :tls :ram_init
  PROVIDE(__tls_base = ADDR(.tdata));
  PROVIDE(__tdata_size = SIZEOF(.tdata));
  PROVIDE(__data_source_end = LOADADDR(.tdata) + SIZEOF(.tdata));
  PROVIDE(__data_size = __data_end - __data_start);
  PROVIDE(__data_source_size = __data_source_end - __data_source);

  .tbss (NOLOAD) : {{
    *(.tbss .tbss.*)
    *(.tcommon)
    PROVIDE(__tls_end = .);
  }} >{data} AT>{data} :tls :ram
  PROVIDE(__bss_start = ADDR(.tbss));
  PROVIDE(__tbss_size = SIZEOF(.tbss));
  PROVIDE(__tls_size = __tls_end - __tls_base);
  PROVIDE(__tls_align = MAX(ALIGNOF(.tdata), ALIGNOF(.tbss)));
  PROVIDE(__arm32_tls_tcb_offset = MAX(8, __tls_align));

  /* .tbss takes no space of its own in the layout; reserve it. */
  .tbss_space (NOLOAD) : {{
    . = ADDR(.tbss);
    . = . + SIZEOF(.tbss);
  }} >{data} AT>{data} :ram

  .bss (NOLOAD) : {{
    *(.sbss*)
    *(.bss .bss.*)
    *(COMMON)
    . = ALIGN(8);
    __bss_end = .;
  }} >{data} AT>{data} :ram
  PROVIDE(__bss_size = __bss_end - __bss_start);

  /* No heap: tvm_tiny never allocates, and any malloc() returns NULL. */
  PROVIDE(__heap_start = __bss_end);
  PROVIDE(__heap_end = __bss_end);

  .stack (NOLOAD) : {{
    . = ALIGN(8);
    __tt_stack_limit = .;
    . = . + {stack_bytes};
    __stack = .;
  }} >{stack} :ram

  /DISCARD/ : {{
    *(.note .note.*)
    *(.eh_frame .eh_frame.*)
    *(.ARM.extab* .gnu.linkonce.armextab.*)
    *(.ARM.exidx*)
  }}
}}

ASSERT(__data_size == __data_source_size, "ERROR: .data/.tdata flash size does not match RAM size");
"""


# -- firmware harness ---------------------------------------------------------------------------
def firmware_main(lib: TinyModule, board: Board) -> str:
    """``firmware/main.c``: inputs from files, one run between window markers, outputs to files,
    checksums, stack high-water mark, ``minstret`` (RISC-V), and a check against expected files
    when they are present. Exit status: 0 ok, 1 model error, 2 I/O error, 3 output mismatch."""
    upper = lib.prefix.upper()
    buffers, binds, reads, reports = [], [], [], []
    for i, t in enumerate(lib.inputs):
        ctype = c_type(t.dtype)
        buffers.append(f"static {ctype} tt_in{i}[{upper}_{t.name.upper()}_SIZE / sizeof({ctype})]"
                       f" TT_ALIGNED(16); /* {t.dtype}{list(t.shape)} */")
        binds.append(f"  inputs.{t.name} = tt_in{i};")
        reads.append(f'  if (tt_port_read_file("input{i}.bin", tt_in{i}, sizeof(tt_in{i})) != '
                     f'TT_PORT_OK) {{\n    printf("tvm_tiny: cannot read input{i}.bin '
                     f'({t.name}, %u bytes)\\n", (unsigned)sizeof(tt_in{i}));\n'
                     f'    return TT_EXIT_IO;\n  }}')
    for i, t in enumerate(lib.outputs):
        ctype = c_type(t.dtype)
        buffers.append(f"static {ctype} tt_out{i}[{upper}_{t.name.upper()}_SIZE / "
                       f"sizeof({ctype})] TT_ALIGNED(16); /* {t.dtype}{list(t.shape)} */")
        binds.append(f"  outputs.{t.name} = tt_out{i};")
        compare = (f'tt_port_compare_f32_file("expected{i}.bin", tt_out{i}, '
                   f'sizeof(tt_out{i}) / sizeof(float), TT_OUTPUT_ATOL, TT_OUTPUT_RTOL, &err)'
                   if t.dtype == "float32" else
                   f'tt_port_compare_bytes_file("expected{i}.bin", tt_out{i}, sizeof(tt_out{i}))')
        reports.append(_REPORT_OUTPUT.format(i=i, name=t.name, compare=compare))
    return _MAIN_C.format(
        model=lib.name, board=board.name, prefix=lib.prefix, version=__version__,
        atol=OUTPUT_ATOL, rtol=OUTPUT_RTOL, buffers="\n".join(buffers),
        binds="\n".join(binds), reads="\n".join(reads), reports="\n".join(reports))


_REPORT_OUTPUT = """\
  {{
    float err = 0.0f;
    int32_t mismatches;
    double sum = 0.0;
    for (size_t k = 0; k < sizeof(tt_out{i}) / sizeof(tt_out{i}[0]); ++k) {{
      sum += (double)tt_out{i}[k];
    }}
    printf("tvm_tiny: output {i} {name} fnv1a 0x%08" PRIx32 " sum %.9g\\n",
           tt_port_fnv1a(tt_out{i}, sizeof(tt_out{i})), sum);
    if (tt_port_write_file("output{i}.bin", tt_out{i}, sizeof(tt_out{i})) != TT_PORT_OK) {{
      printf("tvm_tiny: cannot write output{i}.bin\\n");
      status = TT_EXIT_IO;
    }}
    mismatches = {compare};
    if (mismatches == TT_PORT_NO_FILE) {{
      printf("tvm_tiny: output {i} not checked (no expected{i}.bin)\\n");
    }} else if (mismatches != 0) {{
      printf("tvm_tiny: output {i} MISMATCH: %ld elements differ (max |error| %g)\\n",
             (long)mismatches, (double)err);
      if (status == TT_EXIT_OK) status = TT_EXIT_MISMATCH;
    }} else {{
      printf("tvm_tiny: output {i} matches expected{i}.bin (max |error| %g)\\n", (double)err);
    }}
  }}"""

_MAIN_C = """\
/*
 * tvm_tiny firmware harness: model '{model}' on board '{board}' (generated by tvm_tiny {version};
 * do not edit). Reads input<i>.bin through semihosting, runs the model once between
 * tt_window_begin()/tt_window_end() (the emulator counts the INSTRUCTIONS in between), writes
 * output<i>.bin, prints checksums and checks the outputs against expected<i>.bin when present.
 * Exit status: 0 ok, 1 model error, 2 I/O error, 3 output mismatch.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tt_port.h"
#include "tvm_tiny/tt_profile.h"
#include "tvm_tiny/tt_runtime.h"
#include "{prefix}.h"

enum {{ TT_EXIT_OK = 0, TT_EXIT_MODEL = 1, TT_EXIT_IO = 2, TT_EXIT_MISMATCH = 3 }};

/* Outputs match when |board - host| <= ATOL + RTOL * |host| (see tvm_tiny/project.py). */
#define TT_OUTPUT_ATOL {atol}f
#define TT_OUTPUT_RTOL {rtol}f

{buffers}

int main(void) {{
  struct {prefix}_inputs inputs;
  struct {prefix}_outputs outputs;
  uint64_t instret_before = 0;
  uint64_t instret_after = 0;
  int have_instret;
  int32_t rc;
  int status = TT_EXIT_OK;

  tt_port_stack_paint();
{reads}
{binds}
  have_instret = tt_port_instret(&instret_before);
  tt_window_begin();
  rc = {prefix}_run(&inputs, &outputs);
  tt_window_end();
  (void)tt_port_instret(&instret_after);

  printf("tvm_tiny: model {model} board {board} status %ld\\n", (long)rc);
  printf("tvm_tiny: stack_used %lu of %lu bytes\\n", (unsigned long)tt_port_stack_used(),
         (unsigned long)tt_port_stack_size());
  if (have_instret) {{
    printf("tvm_tiny: minstret %" PRIu64 "\\n", instret_after - instret_before);
  }}
  if (rc != 0) {{
    printf("tvm_tiny: error: %s\\n", tt_last_error());
    return TT_EXIT_MODEL;
  }}
{reports}
  return status;
}}
"""


# -- Makefile -----------------------------------------------------------------------------------
def _make_list(items: list[str]) -> str:
    return " \\\n  ".join(items)


def firmware_cflags(board: Board) -> list[str]:
    """C flags of every firmware translation unit (after the toolchain's arch flags); the
    tuner's measurement firmware uses the same, so its counts are the deployed code's."""
    assert board.toolchain is not None
    return [*WARNING_FLAGS, "-O2", "-ffunction-sections", "-fdata-sections",
            *board.toolchain.libc_flags]


def firmware_ldflags(board: Board, script: str) -> list[str]:
    """Link flags of a firmware (after the arch flags) with linker script ``script``."""
    assert board.toolchain is not None
    tc = board.toolchain
    return [*tc.libc_flags, *tc.link_flags, f"-T{script}", "-Wl,--gc-sections",
            "-Wl,--print-memory-usage"]


def makefile(lib: TinyModule, board: Board, plugin_api: int) -> str:
    """The project's Makefile: ``make`` builds both ELFs, ``make run`` emulates them."""
    assert board.toolchain is not None and board.emulator is not None
    tc, emu = board.toolchain, board.emulator
    sources = [*lib.source_files(), f"{PORT_DIR}/tt_port.c", "firmware/main.c"]
    cflags = firmware_cflags(board)
    ldflags = firmware_ldflags(board, f"firmware/{board.name}.ld")
    includes = [f"-I{d}" for d in (*lib.include_dirs(), PORT_DIR)]
    return _MAKEFILE.format(
        model=lib.name, board=board.name, description=board.description, version=__version__,
        machine=emu.machine, packages=f"{tc.debian_packages} {emu.debian_package} make",
        cc=tc.cc, nm=tc.nm, qemu=emu.binary, plugin_api=plugin_api,
        arch=shlex.join(tc.arch_flags), cflags=shlex.join(cflags), ldflags=shlex.join(ldflags),
        includes=shlex.join(includes),
        qemu_flags=shlex.join(emu.argv()[1:]), sources=_make_list(sources),
        profiled=_make_list(profiled_sources(lib)),
        elf=ELF, profiled_elf=PROFILED_ELF, labels=LABELS, profiled_labels=PROFILED_LABELS,
        plugin_source=PLUGIN_SOURCE, sample=SAMPLE_DIR)


_MAKEFILE = """\
# tvm_tiny project: model '{model}' for board '{board}' (generated by tvm_tiny {version}).
# {description}
# Needs only the cross toolchain, make and QEMU (Debian: {packages}):
#   make       build {elf} and {profiled_elf} (one instruction window per kernel call)
#   make run   run both in QEMU {machine}: output checksums, check against the host's outputs,
#              and the INSTRUCTION counts (QEMU -icount shift=0 + the wincount plugin; not cycles)

CC := {cc}
NM := {nm}
QEMU := {qemu}
HOSTCC ?= cc
# QEMU TCG plugin API version: 1 for QEMU 7.x/8.x.
QEMU_PLUGIN_API ?= {plugin_api}

ARCH := {arch}
CFLAGS := $(ARCH) {cflags}
LDFLAGS := $(ARCH) {ldflags}
INCLUDES := {includes}
QEMU_FLAGS := {qemu_flags}

SRCS := \\
  {sources}
# Compiled a second time with -DTT_PROFILE_STEPS: one instruction window per kernel call (and,
# in the cluster port, per core) in {profiled_elf}.
PROFILED_SRCS := \\
  {profiled}

OBJS := $(patsubst %.c,build/obj/%.o,$(SRCS))
PROFILED_OBJS := $(patsubst %.c,build/obj/%.o,$(filter-out $(PROFILED_SRCS),$(SRCS))) \\
  $(patsubst %.c,build/profiled/%.o,$(PROFILED_SRCS))
PLUGIN := build/libwincount.so

.PHONY: all run clean
all: {elf} {profiled_elf}

build/obj/%.o: %.c
\t@mkdir -p $(@D)
\t$(CC) $(CFLAGS) $(INCLUDES) -c $< -o $@

build/profiled/%.o: %.c
\t@mkdir -p $(@D)
\t$(CC) $(CFLAGS) $(INCLUDES) -DTT_PROFILE_STEPS -c $< -o $@

# Link, keep the per-region memory use (ld --print-memory-usage) next to the ELF.
define link
\t$(CC) $(1) $(LDFLAGS) -Wl,-Map=$(2:.elf=.map) -o $(2) -lm > $(2:.elf=.memory.txt)
\t@cat $(2:.elf=.memory.txt)
endef

{elf}: $(OBJS) firmware/{board}.ld
\t$(call link,$(OBJS),$@)

{profiled_elf}: $(PROFILED_OBJS) firmware/{board}.ld
\t$(call link,$(PROFILED_OBJS),$@)

$(PLUGIN): {plugin_source}
\t@mkdir -p $(@D)
\t$(HOSTCC) -std=gnu11 -O2 -Wall -Wextra -shared -fPIC -DAPI_VERSION=$(QEMU_PLUGIN_API) $< -o $@

# Address of a symbol of an ELF; the plugin's begin=/end= marker arguments of an ELF.
addr = $$($(NM) $(1) | awk '$$3 == "$(2)" {{print "0x" $$1}}')
markers = begin=$(call addr,$(1),tt_window_begin),end=$(call addr,$(1),tt_window_end)

# Run an ELF in {sample}/ (inputs and expected outputs), then print the instruction windows.
define emulate
\tcd {sample} && $(QEMU) $(QEMU_FLAGS) -kernel ../$(1) \\
\t  -plugin ../$(PLUGIN),$(call markers,../$(1)),labels=../$(2),out=../$(1:.elf=.windows.txt)
\t@cat $(1:.elf=.windows.txt)
endef

run: all $(PLUGIN)
\t$(call emulate,{elf},{labels})
\t$(call emulate,{profiled_elf},{profiled_labels})

clean:
\trm -rf build
"""


# -- the project --------------------------------------------------------------------------------
def project_files(lib: TinyModule, board: Board, plugin_api: int) -> dict[str, str]:
    """Every text file of the project except the sample data."""
    files: dict[str, str] = dict(lib.files)
    port = runtime_dir() / "ports" / "semihost"
    for name in ("tt_port.h", "tt_port.c"):
        files[f"{PORT_DIR}/{name}"] = (port / name).read_text()
    files[PLUGIN_SOURCE] = (runtime_dir() / "tools" / "qemu_wincount" / "wincount.c").read_text()
    files["firmware/main.c"] = firmware_main(lib, board)
    files[f"firmware/{board.name}.ld"] = linker_script(board)
    files[LABELS] = "\n".join(window_labels(lib, profiled=False)) + "\n"
    files[PROFILED_LABELS] = "\n".join(window_labels(lib, profiled=True)) + "\n"
    files["Makefile"] = makefile(lib, board, plugin_api)
    return files


def sample_inputs(lib: TinyModule, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal inputs (integers: uniform over a small range)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in lib.inputs:
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            arrays.append(rng.standard_normal(t.shape).astype(t.dtype))
        else:
            arrays.append(rng.integers(-8, 8, size=t.shape).astype(t.dtype))
    return arrays


def export_project(lib: TinyModule, directory: str | Path,
                   inputs: list[np.ndarray] | None = None, *,
                   board: Board | None = None) -> Path:
    """Write a self-contained firmware project for ``lib``'s board into ``directory``.

    ``make -C directory`` builds it with the cross toolchain alone; ``make run`` runs it in QEMU,
    checks the outputs against the host's outputs for the sample input and prints the
    instruction counts of the run and of every kernel call.

    Parameters
    ----------
    lib
        A model built for a board (``tvm_tiny.build(model, target="stm32h7")``).
    directory
        Created if missing; existing files of the same names are replaced.
    inputs
        The sample input (default: seeded random); its host outputs become the expected ones.
    board
        Override the board profile (e.g. a variant with other memory sizes).
    """
    from tvm_tiny.firmware.qemu import plugin_api_version

    board = board_for(lib, board)
    assert board.emulator is not None
    root = Path(directory)
    files: dict[str, str | bytes] = dict(
        project_files(lib, board, plugin_api_version(board.emulator.binary, required=False)))
    arrays = [np.ascontiguousarray(a) for a in (inputs or sample_inputs(lib))]
    for i, array in enumerate(arrays):
        files[f"{SAMPLE_DIR}/input{i}.bin"] = array.tobytes()
    for i, expected in enumerate(lib.run(*arrays)):
        files[f"{SAMPLE_DIR}/expected{i}.bin"] = expected.tobytes()
    write_tree(root, files)
    return root

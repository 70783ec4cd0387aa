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
model's ``profiled_sources`` (the entry point, and the cluster port) compiled with
``-DTT_PROFILE_STEPS``, which adds one window per kernel call (the marker calls cost a few
instructions each, so totals come from ``model.elf``).

:func:`model_firmware` is the project as a :class:`tvm_tiny.firmware.builder.FirmwareSpec`:
:func:`tvm_tiny.firmware.runner.run_on_board` builds that spec with the firmware builder, and
the Makefile is rendered from the same spec and the same flag functions, so ``make`` and
``run_on_board`` link the same ELF bytes.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import numpy as np

from tvm_tiny.firmware.builder import (
    LINK_LIBS,
    PORT_DIR,
    PROFILE_DEFINES,
    FirmwareSpec,
    Image,
    Unit,
    board_flags,
    include_dirs,
    port_files,
)
from tvm_tiny.firmware.linker import linker_script
from tvm_tiny.firmware.model import FirmwareModel, board_for, window_labels
from tvm_tiny.firmware.qemu import plugin_api_version, plugin_source
from tvm_tiny.firmware.windows import labels_text
from tvm_tiny.ir.cformat import c_type
from tvm_tiny.ir.version import __version__
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.toolchain import write_tree

ELF = "build/model.elf"
PROFILED_ELF = "build/model_profiled.elf"
LABELS = "firmware/windows.txt"
PROFILED_LABELS = "firmware/windows_profiled.txt"
PLUGIN_SOURCE = "tools/qemu_wincount/wincount.c"
SAMPLE_DIR = "sample"
#: Object groups of a model firmware (``build/<group>/``): every unit, and the profiled units.
PLAIN_GROUP = "obj"
PROFILED_GROUP = "profiled"

# Board outputs match the host's when |board - host| <= ATOL + RTOL * |host|. Both run the same
# C with -ffp-contract=off (-std=c99), so the only differences come from libm (picolibc vs glibc
# expf/erff/sqrtf, a few ulps each) propagating through a few layers: 1e-4 leaves a margin of
# two orders of magnitude over the 1e-6 differences seen on the test encoders.
OUTPUT_ATOL = 1e-4
OUTPUT_RTOL = 1e-4


# -- firmware harness ---------------------------------------------------------------------------
def firmware_main(lib: FirmwareModel, board: Board) -> str:
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
    printf("tvm_tiny: error: %s\\n", {prefix}_last_error());
    return TT_EXIT_MODEL;
  }}
{reports}
  return status;
}}
"""


# -- Makefile -----------------------------------------------------------------------------------
def _make_list(items: list[str]) -> str:
    return " \\\n  ".join(items)


def makefile(lib: FirmwareModel, spec: FirmwareSpec, plugin_api: int) -> str:
    """The project's Makefile: ``make`` builds both ELFs of ``spec``, ``make run`` emulates them.

    Rendered from the spec and :func:`tvm_tiny.firmware.builder.board_flags`, the same as the
    firmware builder's commands (``compile_argv``/``link_argv``); a spec the two pattern rules
    cannot express is refused rather than exported with other flags.
    """
    board = spec.board
    assert board.toolchain is not None and board.emulator is not None
    tc, emu = board.toolchain, board.emulator
    plain, profiled = spec.image(ELF), spec.image(PROFILED_ELF)
    sources = [u.source for u in plain.units]
    profiled_srcs = [u.source for u in profiled.units if u.group == PROFILED_GROUP]
    expected = _images(sources, profiled_srcs)
    if (plain.units, profiled.units) != expected:
        raise ValueError(f"firmware '{spec.name}': its units do not follow the Makefile's "
                         "rules (build/obj: no extra flags; build/profiled: PROFILE_FLAGS)")
    flags = board_flags(board)
    return _MAKEFILE.format(
        model=lib.name, board=board.name, description=board.description, version=__version__,
        machine=emu.machine, packages=f"{tc.debian_packages} {emu.debian_package} make",
        cc=flags.cc, nm=tc.nm, qemu=emu.binary, plugin_api=plugin_api,
        arch=shlex.join(flags.arch), cflags=shlex.join(flags.cflags),
        profile_flags=shlex.join(PROFILE_DEFINES),
        ldflags=shlex.join(flags.ldflags(spec.script)), libs=shlex.join(LINK_LIBS),
        includes=shlex.join(f"-I{d}" for d in include_dirs(spec.files)),
        qemu_flags=shlex.join(emu.argv()[1:]), sources=_make_list(sources),
        profiled=_make_list(profiled_srcs),
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

# The firmware builder's flags for this board (tvm_tiny.firmware.builder.board_flags).
ARCH := {arch}
CFLAGS := {cflags}
PROFILE_FLAGS := {profile_flags}
INCLUDES := {includes}
LDFLAGS := {ldflags}
LIBS := {libs}
QEMU_FLAGS := {qemu_flags}

SRCS := \\
  {sources}
# Compiled a second time with $(PROFILE_FLAGS): one instruction window per kernel call (and,
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
\t$(CC) $(ARCH) $(CFLAGS) $(INCLUDES) -c $< -o $@

build/profiled/%.o: %.c
\t@mkdir -p $(@D)
\t$(CC) $(ARCH) $(CFLAGS) $(PROFILE_FLAGS) $(INCLUDES) -c $< -o $@

# Link, keep the per-region memory use (ld --print-memory-usage) next to the ELF.
define link
\t$(CC) $(ARCH) $(1) $(LDFLAGS) -Wl,-Map=$(2:.elf=.map) -o $(2) $(LIBS) > $(2:.elf=.memory.txt)
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
def _images(sources: list[str], profiled: list[str]) -> tuple[tuple[Unit, ...], tuple[Unit, ...]]:
    """Units of ``model.elf`` and ``model_profiled.elf``. The profiled image links the other
    units first, then the profiled ones (the Makefile's ``PROFILED_OBJS`` order)."""
    plain = tuple(Unit(s, PLAIN_GROUP) for s in sources)
    again = tuple(Unit(s, PROFILED_GROUP, PROFILE_DEFINES) for s in profiled)
    return plain, tuple(u for u in plain if u.source not in profiled) + again


def model_firmware(lib: FirmwareModel, board: Board | None = None,
                   plugin_api: int | None = None) -> FirmwareSpec:
    """The project of ``lib`` for ``board`` (default: the model's) as a firmware spec: every
    text file of the project (the sample data aside), ``model.elf`` and ``model_profiled.elf``.

    ``plugin_api`` is written into the Makefile (default: the installed QEMU's, else 1).
    """
    board = board_for(lib, board)
    assert board.emulator is not None
    if plugin_api is None:
        plugin_api = plugin_api_version(board.emulator.binary, required=False)
    files: dict[str, str] = dict(lib.files)
    files.update(port_files())
    files[PLUGIN_SOURCE] = plugin_source()
    files["firmware/main.c"] = firmware_main(lib, board)
    script = f"firmware/{board.name}.ld"
    files[script] = linker_script(board)
    files[LABELS] = labels_text(window_labels(lib, profiled=False))
    files[PROFILED_LABELS] = labels_text(window_labels(lib, profiled=True))
    sources = [*lib.source_files(), f"{PORT_DIR}/tt_port.c", "firmware/main.c"]
    unknown = [p for p in lib.profiled_sources if p not in sources]
    if unknown:
        raise ValueError(f"model '{lib.name}': profiled sources {unknown} are not among its "
                         "translation units")
    plain, profiled = _images(sources, [s for s in sources if s in lib.profiled_sources])
    spec = FirmwareSpec(lib.prefix, board, files, script,
                        (Image(ELF, plain), Image(PROFILED_ELF, profiled)))
    return dataclasses.replace(spec, files={**files, "Makefile": makefile(lib, spec, plugin_api)})


def sample_inputs(lib: FirmwareModel, seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal inputs (integers: uniform over a small range)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in lib.inputs:
        if np.issubdtype(np.dtype(t.dtype), np.floating):
            arrays.append(rng.standard_normal(t.shape).astype(t.dtype))
        else:
            arrays.append(rng.integers(-8, 8, size=t.shape).astype(t.dtype))
    return arrays


def export_project(lib: FirmwareModel, directory: str | Path,
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
    spec = model_firmware(lib, board)
    root = Path(directory)
    files: dict[str, str | bytes] = dict(spec.files)
    arrays = [np.ascontiguousarray(a) for a in (inputs or sample_inputs(lib))]
    for i, array in enumerate(arrays):
        files[f"{SAMPLE_DIR}/input{i}.bin"] = array.tobytes()
    for i, expected in enumerate(lib.run(*arrays)):
        files[f"{SAMPLE_DIR}/expected{i}.bin"] = expected.tobytes()
    write_tree(root, files)
    return root

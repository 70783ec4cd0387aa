"""The tuner's measurement firmware: sources, build and one emulated run.

``main.c`` reads one input, then calls every kernel instance of the batch in turn between
``tt_window_begin()`` / ``tt_window_end()`` and writes its output. Each kernel variant of the
batch is a compile group of its own (the kernel library compiled with that variant's macros and
renamed symbols, plus the instances that use it), so several variants share one firmware. The
int8 kernel has no variants: its library is compiled once, as a build compiles it, and x and y
are int8 (the harness's only dtype-dependent part).

The firmware is a :class:`tvm_tiny.firmware.builder.FirmwareSpec` built by the same builder as a
deployed model's (the board's flags, the one include rule, the board's linker script with the real
memory sizes), so a measured instance runs the code a build with that config runs; every unit is
compiled with ``TT_PROFILE_STEPS`` so the cluster port opens one window per core task. It runs
through :func:`tvm_tiny.firmware.qemu.emulate` and its windows are read with
:func:`tvm_tiny.firmware.windows.parse_windows` (``partial``: a batch may stop at a hanging or
crashing config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_tiny.codegen.kernel import GeneratedKernel
from tvm_tiny.codegen.variant import compile_flags
from tvm_tiny.firmware.builder import (
    PORT_DIR,
    PROFILE_DEFINES,
    FirmwareSpec,
    Image,
    Unit,
    compile_and_link,
    compile_unit,
    port_files,
    tvm_headers,
)
from tvm_tiny.firmware.linker import linker_script
from tvm_tiny.firmware.qemu import emulate as emulate_firmware
from tvm_tiny.firmware.windows import Window, model_cluster_call, nested
from tvm_tiny.ir.enums import DType
from tvm_tiny.targets.resources import kernels_dir, runtime_dir
from tvm_tiny.targets.toolchain import write_tree
from tvm_tiny.tuning.space import ConfigEntity, ConfigSpace
from tvm_tiny.tuning.task import TuningTask

ELF = "build/tune.elf"
#: Where the firmware runs (inputs, outputs ``y<k>.bin``), inside the firmware's directory.
RUN_DIR = "run"
#: The compile group of everything that is not a kernel variant's (port, markers, harness).
COMMON = "common"

_STATUS = re.compile(r"tt_tune: config (\d+) status (-?\d+)")


_MAIN_C = """\
/* tvm_tiny tuning harness (generated): {count} configs of {task} on {board}; each instance runs
 * once between tt_window_begin()/tt_window_end() and writes y<k>.bin. Exit: 0 ok, 2 I/O. */
#include <stdint.h>
#include <stdio.h>

#include "tt_port.h"
#include "tvm_tiny/tt_profile.h"
#include "tvm_tiny/tt_runtime.h"

typedef int32_t (*tt_tune_fn)(const void *const *args, void *const *outs, uint8_t *scratch,
                              int32_t scratch_bytes);
{decls}

static const struct {{
  tt_tune_fn fn;
  int32_t scratch_bytes;
}} tt_tune_configs[{count}] = {{
{table}
}};

static {elem} tt_x[{x_elems}] TT_ALIGNED(16);
static {elem} tt_y[{y_elems}] TT_ALIGNED(16);
static uint8_t tt_scratch[{scratch}] TT_ALIGNED(16);

int main(void) {{
  char name[16];
  if (tt_port_read_file("x.bin", tt_x, sizeof(tt_x)) != TT_PORT_OK) {{
    printf("tvm_tiny: cannot read x.bin\\n");
    return 2;
  }}
  for (int32_t k = 0; k < {count}; ++k) {{
    const void *args[1] = {{tt_x}};
    void *outs[1] = {{tt_y}};
    int32_t rc;
    for (int32_t i = 0; i < {y_elems}; ++i) {{
      tt_y[i] = {fill}; /* an instance that leaves y unwritten fails the check */
    }}
    tt_window_begin();
    rc = tt_tune_configs[k].fn(args, outs, tt_scratch, tt_tune_configs[k].scratch_bytes);
    tt_window_end();
    snprintf(name, sizeof(name), "y%ld.bin", (long)k);
    if (tt_port_write_file(name, tt_y, sizeof(tt_y)) != TT_PORT_OK) {{
      printf("tvm_tiny: cannot write %s\\n", name);
      return 2;
    }}
    printf("tt_tune: config %ld status %ld\\n", (long)k, (long)rc);
    fflush(stdout); /* a later instance may hang: this line must be out first */
  }}
  return 0;
}}
"""


#: Per dtype of the task: (C element type of x and y, the value y is filled with before each
#: instance). float32: a value no output takes. int8 has no such value: a pattern varying
#: with the element and the instance, which an unwritten y cannot match bit for bit.
_IO = {DType.FLOAT32: ("float", "-1e30f"), DType.INT8: ("int8_t", "(int8_t)(i * 37 + k * 11)")}


@dataclass
class Firmware:
    """One measurement firmware: its spec, and what each instance k of it measures."""

    spec: FirmwareSpec
    entities: list[ConfigEntity]
    labels: list[str]  # window labels in the order they open
    instances: dict[int, Unit] = field(default_factory=dict)  # entity index -> its unit
    cluster: dict[int, tuple[int, int]] = field(default_factory=dict)  # k -> (cores, forks)


def firmware_sources(task: TuningTask, space: ConfigSpace, entities: list[ConfigEntity],
                     kernels: dict[int, GeneratedKernel]) -> Firmware:
    """The firmware measuring ``entities`` (their instances ``kernels[entity.index]``)."""
    board = space.board
    files: dict[str, str] = {}
    groups: dict[str, list[Unit]] = {}
    instances: dict[int, Unit] = {}
    labels: list[str] = []
    cluster: dict[int, tuple[int, int]] = {}
    decls, table = [], []
    shape = task.shape
    library: list[str] = []

    def add(group: str, flags: tuple[str, ...], source: str) -> Unit:
        unit = Unit(source, group, (*PROFILE_DEFINES, *flags))
        if unit not in groups.setdefault(group, []):
            groups[group].append(unit)
        return unit

    for k, entity in enumerate(entities):
        kernel = kernels[entity.index]
        variant = entity.variant()
        if task.workload.dtype == DType.FLOAT32:
            group, variant_flags = variant.name, tuple(compile_flags(variant))
        else:  # no variants: compiled once, with the flags a build uses
            group, variant_flags = str(task.workload.dtype), ()
        path = f"src/cfg{entity.index}.c"
        files[path] = kernel.source
        instances[entity.index] = add(group, variant_flags, path)
        for rel in kernel.library_sources:
            # The kernel library once per variant (renamed symbols); the port once.
            if rel.startswith("mhsa/"):
                add(group, variant_flags, f"kernels/{rel}")
            else:
                add(COMMON, (), f"kernels/{rel}")
            if rel not in library:
                library.append(rel)
        decls.append(f"int32_t {kernel.c_function}(const void *const *args, void *const *outs, "
                     "uint8_t *scratch, int32_t scratch_bytes);")
        table.append(f"  {{{kernel.c_function}, {kernel.scratch_bytes}}},")
        labels.append(f"cfg{entity.index}")
        cores = board.cluster_cores
        if cores > 1:
            forks = 2 if min(cores, shape.heads) > 1 else 1
            cluster[k] = (cores, forks)
            labels += [f"cfg{entity.index} fork{f} core{c}" for f in range(forks)
                       for c in range(cores)]
    for rel in library:
        files[f"kernels/{rel}"] = (kernels_dir() / rel).read_text()
    for header in sorted((kernels_dir() / "include").glob("*.h")):
        files[f"kernels/include/{header.name}"] = header.read_text()
    for rel in ("include/tvm_tiny/tt_profile.h", "include/tvm_tiny/tt_runtime.h",
                "src/tt_profile.c"):
        files[f"runtime/{rel}"] = (runtime_dir() / rel).read_text()
    files.update(tvm_headers())
    files.update(port_files())
    for source in ("runtime/src/tt_profile.c", f"{PORT_DIR}/tt_port.c", "main.c"):
        add(COMMON, (), source)
    scratch = max(kernels[e.index].scratch_bytes for e in entities)
    elem, fill = _IO[task.workload.dtype]
    files["main.c"] = _MAIN_C.format(
        count=len(entities), task=task.describe(), board=board.name, decls="\n".join(decls),
        table="\n".join(table), elem=elem, fill=fill, x_elems=shape.seq * shape.embed,
        y_elems=shape.seq * shape.out_features, scratch=max(scratch, 16))
    script = f"firmware/{board.name}.ld"
    files[script] = linker_script(board)
    units = tuple(u for group in groups.values() for u in group)
    spec = FirmwareSpec("tune", board, files, script, (Image(ELF, units),))
    return Firmware(spec, list(entities), labels, instances, cluster)


def compile_firmware(fw: Firmware, directory: Path, timeout_s: float) -> None:
    """Write ``fw``'s tree into ``directory``, then compile and link it there (raises
    :class:`tvm_tiny.ir.errors.ToolchainError` with the failing command and its output)."""
    write_tree(directory, dict(fw.spec.files))
    compile_and_link(fw.spec, directory, timeout_s)


def compile_instance(fw: Firmware, directory: Path, entity: ConfigEntity) -> str | None:
    """Compile one instance alone (no link) in ``fw``'s tree; the compiler's message when it
    fails."""
    return compile_unit(fw.spec, fw.instances[entity.index], directory)


@dataclass(frozen=True)
class EmulatedRun:
    """One run of a measurement firmware (possibly stopped early by a bad config)."""

    statuses: dict[int, int]  # k -> kernel status, for every instance that returned
    windows: list[Window]  # the windows closed before the run stopped, in opening order
    outputs: dict[str, bytes]  # files the firmware wrote (``y<k>.bin``)
    failure: str | None  # why the run did not complete


def emulate(fw: Firmware, directory: Path, x: np.ndarray, timeout_s: float) -> EmulatedRun:
    """Run the built firmware once on input ``x``; a timeout or a crash is a ``failure``, with
    what the instances before it measured kept."""
    board = fw.spec.board
    run = emulate_firmware(board, directory / ELF, fw.labels, {"x.bin": x.tobytes()},
                           run_dir=directory / RUN_DIR, timeout_s=timeout_s,
                           keep_partial_on_timeout=True)
    failure = None
    if run.exit_code is None:
        failure = f"timeout after {timeout_s} s"
    elif run.exit_code != 0:
        failure = f"firmware exited with {run.exit_code}: {run.console.strip()[-500:]}"
    statuses = {int(m.group(1)): int(m.group(2)) for m in _STATUS.finditer(run.console)}
    return EmulatedRun(statuses, run.windows(partial=True), run.files, failure)


def window_costs(fw: Firmware, windows: list[Window]) -> dict[int, tuple[float, float]]:
    """(cost, all_cost) per instance k from the windows: the instructions of its window, or on
    a cluster the modelled parallel latency and the instructions of all cores one after
    another. An instance whose windows are incomplete gets no cost (it is measured again)."""
    costs: dict[int, tuple[float, float]] = {}
    for k, (window, cores_of) in enumerate(nested(windows, 0, strict=False)):
        serial = window.instructions
        if k not in fw.cluster:
            costs[k] = (float(serial), float(serial))
            continue
        cores, forks = fw.cluster[k]
        if len(cores_of) == cores * forks:
            call = model_cluster_call(window.label, serial, cores_of, cores, forks)
            costs[k] = (float(call.modelled), float(serial))
    return costs

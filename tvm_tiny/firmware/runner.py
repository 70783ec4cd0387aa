"""Run a model on an emulated board and count its INSTRUCTIONS exactly (DESIGN.md §4).

:func:`run_on_board` builds the model's firmware (:func:`tvm_tiny.firmware.project.model_firmware`)
in the cache with the firmware builder, runs both of its ELFs in QEMU through
:func:`tvm_tiny.firmware.qemu.emulate`, and reads back the outputs (semihosting files), the
instruction count of the run, of every kernel call, the memory use per linker region and the
stack high-water mark. On RISC-V the firmware also reads ``minstret`` around the run, an
independent cross-check of the plugin.

Every count here is a number of executed instructions, never cycles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_tiny.firmware.builder import build_cached, memory_usage
from tvm_tiny.firmware.model import (
    FirmwareModel,
    board_for,
    cluster_steps,
    step_names,
    window_labels,
)
from tvm_tiny.firmware.project import ELF, PROFILED_ELF, model_firmware
from tvm_tiny.firmware.qemu import Emulation, check_board_tools, emulate, plugin_api_version
from tvm_tiny.firmware.windows import (
    FORK_JOIN_INSTRUCTIONS,
    MAX_LABEL_CHARS,
    Window,
    model_cluster_call,
    nested,
)
from tvm_tiny.ir.errors import RunError, ToolchainError
from tvm_tiny.targets.boards import Board

_EXIT_MEANING = {1: "the model returned an error", 2: "a semihosting file operation failed",
                 3: "the outputs differ from the expected files"}


@dataclass(frozen=True)
class ClusterModel:
    """MODELLED latency of the cluster kernels (GAP9): each core's task is measured (the
    portable port runs the cores one after another), the parallel time of a fork is modelled as
    the slowest core plus :data:`FORK_JOIN_INSTRUCTIONS`. Instructions, not cycles."""

    cores: int
    fork_join_instructions: int
    per_core: dict[str, list[list[int]]]  # kernel call -> per fork -> instructions per core
    modelled_per_step: dict[str, int]  # cluster kernel call -> modelled parallel instructions
    serial_instructions: int  # the whole run with the cores one after another (measured)
    modelled_instructions: int  # the whole run with each fork modelled as parallel


@dataclass(frozen=True)
class BoardRun:
    """One model run on an emulated board. Every count is INSTRUCTIONS executed, not cycles."""

    board: str
    machine: str
    outputs: list[np.ndarray]
    instructions: int  # one model run (entry point call), firmware without per-kernel markers
    per_step: list[tuple[str, int]]  # each kernel call in order: (kernel name, instructions)
    per_kernel: dict[str, int]  # kernel name -> instructions, summed over its calls
    profiled_instructions: int  # the run in the per-kernel firmware (markers cost a few each)
    minstret: int | None  # RISC-V: minstret delta around the run (cross-check), else None
    memory: dict[str, tuple[int, int]]  # linker region -> (bytes used, bytes available)
    stack_used: int  # deepest stack use of the firmware (painted-stack scan), bytes
    stack_bytes: int  # stack reserved by the linker script
    cluster: ClusterModel | None = None  # GAP9: MODELLED parallel latency of cluster kernels


def per_kernel(steps: list[tuple[str, int]]) -> dict[str, int]:
    """Instructions per kernel name, summed over its calls (a kernel may run more than once)."""
    totals: dict[str, int] = {}
    for name, count in steps:
        totals[name] = totals.get(name, 0) + count
    return totals


def build_firmware(lib: FirmwareModel, board: Board | None = None) -> Path:
    """Build the model's firmware for ``board`` in the cache; return its directory.

    The directory is keyed by the content of every file and every command, so an unchanged
    model reuses its build. A model that does not fit the board's memories fails here with the
    linker's "region ... overflowed" message.
    """
    board = board_for(lib, board)
    check_board_tools(board)
    assert board.emulator is not None
    spec = model_firmware(lib, board, plugin_api_version(board.emulator.binary))
    return build_cached(spec)


def _emulate(lib: FirmwareModel, board: Board, elf: Path, profiled: bool,
             arrays: Sequence[np.ndarray]) -> tuple[Emulation, list[np.ndarray]]:
    assert board.emulator is not None
    run = emulate(board, elf, window_labels(lib, profiled),
                  {f"input{i}.bin": a.tobytes() for i, a in enumerate(arrays)})
    if run.exit_code == 1:
        detail = re.search(r"tvm_tiny: error: (.*)", run.console)
        raise RunError(f"model '{lib.name}' failed on {board.name}: "
                       f"{detail.group(1) if detail else run.console.strip()}")
    if run.exit_code != 0:
        meaning = _EXIT_MEANING.get(run.exit_code or 0, "the emulator failed")
        raise ToolchainError(f"{board.emulator.binary} exited with {run.exit_code}: {meaning}",
                             [board.emulator.binary, str(elf)], run.console)
    outputs = [np.frombuffer(run.files[f"output{i}.bin"], dtype=t.dtype).reshape(t.shape).copy()
               for i, t in enumerate(lib.outputs)]
    return run, outputs


def _cluster_model(lib: FirmwareModel, serial_total: int, profiled: list[Window],
                   steps: list[tuple[str, int]]) -> ClusterModel | None:
    """Group the per-core windows (depth 2) under their kernel call and model the forks."""
    clusters = cluster_steps(lib)
    if not clusters:
        return None
    per_core: dict[str, list[list[int]]] = {}
    modelled: dict[str, int] = {}
    saved = 0
    for (name, count), (_, windows) in zip(steps, nested(profiled[1:], 1)):
        cluster = clusters.get(name)
        if cluster is None:
            continue
        call = model_cluster_call(name, count, windows, cluster["cores"], cluster["forks"])
        per_core[name] = call.forks
        modelled[name] = call.modelled
        saved += call.serial - call.modelled
    cores = max(c["cores"] for c in clusters.values())
    return ClusterModel(cores, FORK_JOIN_INSTRUCTIONS, per_core, modelled, serial_total,
                        serial_total - saved)


def _field(pattern: str, console: str) -> int | None:
    match = re.search(pattern, console)
    return int(match.group(1)) if match else None


def run_on_board(lib: FirmwareModel, inputs: Sequence[np.ndarray], *,
                 board: Board | None = None) -> BoardRun:
    """Cross-compile ``lib`` for its board, run it in the board's emulator, count instructions.

    ``inputs`` are the model's inputs, already checked against its input specs (contiguous, of
    the right dtype and shape). Runs two firmwares of the same project: ``model.elf`` gives the
    outputs and the exact instruction count of one run; ``model_profiled.elf`` gives one window
    per kernel call. Counts are deterministic.
    """
    board = board_for(lib, board)
    assert board.emulator is not None and board.placement is not None
    directory = build_firmware(lib, board)
    plain, outputs = _emulate(lib, board, directory / ELF, False, inputs)
    profiled, profiled_outputs = _emulate(lib, board, directory / PROFILED_ELF, True, inputs)
    plain_windows, profiled_windows = plain.windows(), profiled.windows()
    steps = [(w.label, w.instructions) for w in profiled_windows if w.depth == 1]
    expected = step_names(lib)
    # The plugin holds labels up to MAX_LABEL_CHARS; long fused TIR names come back truncated.
    if [w.depth for w in plain_windows] != [0] or profiled_windows[0].depth != 0 or \
            [n for n, _ in steps] != [name[:MAX_LABEL_CHARS] for name in expected]:
        raise ToolchainError(f"unexpected instruction windows on {board.name}: "
                             f"{plain_windows} / {profiled_windows}")
    steps = [(name, count) for name, (_, count) in zip(expected, steps)]
    cluster = _cluster_model(lib, plain_windows[0].instructions, profiled_windows, steps)
    for a, b in zip(outputs, profiled_outputs):
        if a.tobytes() != b.tobytes():
            raise ToolchainError("the per-kernel firmware computed different outputs than the "
                                 "plain one; the window markers must not change results")
    return BoardRun(
        board=board.name, machine=board.emulator.machine, outputs=outputs,
        instructions=plain_windows[0].instructions, per_step=steps,
        per_kernel=per_kernel(steps), profiled_instructions=profiled_windows[0].instructions,
        minstret=_field(r"tvm_tiny: minstret (\d+)", plain.console),
        memory=memory_usage(directory / ELF),
        stack_used=_field(r"tvm_tiny: stack_used (\d+)", plain.console) or 0,
        stack_bytes=board.placement.stack_bytes, cluster=cluster)

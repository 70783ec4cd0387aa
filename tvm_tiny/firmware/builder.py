"""The one firmware builder: board flags, the include rule, compiling and linking a source tree.

Every firmware of tvm_tiny (a model's, :mod:`tvm_tiny.firmware.project`; a kernel harness,
:mod:`tvm_tiny.firmware.kernel_firmware`; the tuner's measurement firmware,
:mod:`tvm_tiny.tuning.firmware`) is a :class:`FirmwareSpec`: a tree of text files plus the ELF
images to link from it. This module is the only place that turns a spec into compiler and linker
commands, so the three cannot drift apart:

* one set of flags per board, :func:`board_flags`, derived from the board profile
  (:class:`tvm_tiny.targets.boards.Toolchain`); the exported project's Makefile renders the same
  values (:func:`tvm_tiny.firmware.project.makefile`);
* one include rule, :func:`include_dirs`: the tree's include roots (:data:`INCLUDE_ROOTS`) that
  hold a file, in that order, and nothing outside the tree;
* every translation unit compiled alone (``cc ARCH CFLAGS unit-flags INCLUDES -c src -o obj``,
  run from the tree's root with relative paths), every image linked the same way.

The argv lists are deterministic: the same spec gives the same ELF bytes whether this module or
the exported Makefile builds it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import Board
from tvm_tiny.targets.resources import TVM_HEADERS, runtime_dir, tvm_header_dirs
from tvm_tiny.targets.toolchain import (
    WARNING_FLAGS,
    cache_dir,
    require_tool,
    tree_hash,
    write_tree,
)

#: Optimisation and section flags of every firmware translation unit.
OPT_FLAGS = ("-O2", "-ffunction-sections", "-fdata-sections")
#: Libraries linked into every firmware, after the objects.
LINK_LIBS = ("-lm",)
#: Defined for the translation units whose code opens instruction windows in a profiled image
#: (an AOT entry point: one window per kernel call; the cluster port: one per core task).
PROFILE_DEFINES = ("-DTT_PROFILE_STEPS",)

#: The board port every firmware links (semihosting file I/O, stack paint, ``minstret``).
PORT_DIR = "ports/semihost"
#: Directories of a firmware tree that go on the include path, in this order, when they hold a
#: file: a model's generated headers, the kernel library's headers, the runtime's (with the TVM
#: and DLPack headers), the port's.
INCLUDE_ROOTS = ("codegen/host/include", "kernels/include", "runtime/include", PORT_DIR)
#: Parallel compiler processes of one build (the machines have two cores).
PARALLEL_COMPILES = 2


@dataclass(frozen=True)
class BoardFlags:
    """Compiler and linker flags of every firmware for one board, as argv fragments."""

    cc: str
    arch: tuple[str, ...]  # -mcpu/-march...: first on every compile and link command
    cflags: tuple[str, ...]  # every translation unit, after ``arch``
    libc: tuple[str, ...]  # picolibc specs (in ``cflags`` and at link time)
    link: tuple[str, ...]  # crt0 and OS library selection

    def ldflags(self, script: str) -> tuple[str, ...]:
        """Link flags (after the objects) with linker script ``script``."""
        return (*self.libc, *self.link, f"-T{script}", "-Wl,--gc-sections",
                "-Wl,--print-memory-usage")


def board_flags(board: Board) -> BoardFlags:
    """The flags of every firmware built for ``board`` (model, kernel harness, tuner).

    C99 with all warnings as errors (:data:`tvm_tiny.targets.toolchain.WARNING_FLAGS`, as the
    host build), ``-O2`` with per-function sections so ``--gc-sections`` drops unused code, and
    the board toolchain's arch, libc and crt0 flags.
    """
    if board.toolchain is None:
        raise ValueError(f"board '{board.name}' has no cross toolchain")
    tc = board.toolchain
    return BoardFlags(cc=tc.cc, arch=tuple(tc.arch_flags),
                      cflags=(*WARNING_FLAGS, *OPT_FLAGS, *tc.libc_flags),
                      libc=tuple(tc.libc_flags), link=tuple(tc.link_flags))


def include_dirs(files: Mapping[str, object]) -> list[str]:
    """The include path of a firmware tree: each of :data:`INCLUDE_ROOTS` that holds a file."""
    return [root for root in INCLUDE_ROOTS if any(p.startswith(f"{root}/") for p in files)]


@dataclass(frozen=True)
class Unit:
    """One translation unit: a ``.c`` file of the tree compiled with extra ``flags``.

    Units of different ``group`` get object directories of their own, so one source can be
    compiled twice (plain and profiled; once per kernel variant in the tuner).
    """

    source: str
    group: str = "obj"
    flags: tuple[str, ...] = ()

    @property
    def obj(self) -> str:
        """Path of the object file in the tree (``build/<group>/<source>.o``)."""
        return f"build/{self.group}/{self.source.removesuffix('.c')}.o"


@dataclass(frozen=True)
class Image:
    """One ELF linked from ``units`` in that order (link order fixes the memory layout)."""

    elf: str
    units: tuple[Unit, ...]

    @property
    def memory_report(self) -> str:
        """Where the linker's ``--print-memory-usage`` table is kept next to the ELF."""
        return self.elf.removesuffix(".elf") + ".memory.txt"


@dataclass(frozen=True)
class FirmwareSpec:
    """A firmware: its source tree (relative path -> text), linker script and images."""

    name: str
    board: Board
    files: Mapping[str, str | bytes]
    script: str  # path of the linker script in ``files``
    images: tuple[Image, ...]

    def units(self) -> list[Unit]:
        """Every distinct translation unit of the images, in first-use order."""
        return list(dict.fromkeys(u for image in self.images for u in image.units))

    def image(self, elf: str) -> Image:
        for image in self.images:
            if image.elf == elf:
                return image
        raise KeyError(f"firmware '{self.name}' has no image {elf}")


def compile_argv(spec: FirmwareSpec, unit: Unit) -> list[str]:
    """``cc ARCH CFLAGS unit-flags INCLUDES -c source -o object`` (run in the tree's root)."""
    flags = board_flags(spec.board)
    return [flags.cc, *flags.arch, *flags.cflags, *unit.flags,
            *(f"-I{d}" for d in include_dirs(spec.files)), "-c", unit.source, "-o", unit.obj]


def link_argv(spec: FirmwareSpec, image: Image) -> list[str]:
    """``cc ARCH objects LDFLAGS -Wl,-Map=... -o elf -lm`` (run in the tree's root)."""
    flags = board_flags(spec.board)
    return [flags.cc, *flags.arch, *(u.obj for u in image.units), *flags.ldflags(spec.script),
            f"-Wl,-Map={image.elf.removesuffix('.elf')}.map", "-o", image.elf, *LINK_LIBS]


def tvm_headers(root: str = "runtime/include") -> dict[str, str]:
    """The TVM and DLPack headers the runtime includes (``tt_runtime.h``), copied from the
    installed wheels under ``root`` (never vendored)."""
    files = {}
    for header in TVM_HEADERS:
        for directory in tvm_header_dirs():
            if (directory / header).is_file():
                files[f"{root}/{header}"] = (directory / header).read_text()
                break
        else:
            raise FileNotFoundError(f"TVM header {header} not found in {tvm_header_dirs()}")
    return files


@dataclass
class _Job:
    argv: list[str]
    what: str
    output: Path | None = None  # where to keep the command's stdout (the memory report)
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)


def _run_jobs(jobs: list[_Job], cwd: Path, deadline: float | None) -> None:
    """Run ``jobs`` up to :data:`PARALLEL_COMPILES` at a time in ``cwd``; on the first failure
    or at ``deadline`` stop the others and raise :class:`ToolchainError` with the command and
    its output."""
    pending = list(jobs)
    running: list[_Job] = []
    failure: ToolchainError | None = None
    try:
        while (pending or running) and failure is None:
            while pending and len(running) < PARALLEL_COMPILES:
                job = pending.pop(0)
                job.proc = subprocess.Popen(job.argv, cwd=cwd, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
                running.append(job)
            job = running.pop(0)
            assert job.proc is not None
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
            try:
                out, err = job.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                job.proc.kill()
                job.proc.communicate()
                failure = ToolchainError(f"{job.what} timed out", job.argv)
                break
            if job.proc.returncode != 0:
                failure = ToolchainError(f"{job.what} failed (exit {job.proc.returncode})",
                                         job.argv, err + out)
            elif job.output is not None:
                job.output.write_text(out)
    finally:
        for job in running:
            assert job.proc is not None
            job.proc.kill()
            job.proc.communicate()
    if failure is not None:
        raise failure


def _require_compiler(board: Board) -> None:
    assert board.toolchain is not None
    require_tool(board.toolchain.cc, board.toolchain.debian_packages)


def compile_and_link(spec: FirmwareSpec, directory: Path, timeout_s: float | None = None) -> None:
    """Compile every unit of ``spec`` and link every image in ``directory``, which already
    holds the tree (:func:`write_tree`). ``timeout_s`` bounds the whole build."""
    _require_compiler(spec.board)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    what = f"firmware build of '{spec.name}' for {spec.board.name}"
    units = spec.units()
    for unit in units:
        (directory / unit.obj).parent.mkdir(parents=True, exist_ok=True)
    _run_jobs([_Job(compile_argv(spec, u), what) for u in units], directory, deadline)
    for image in spec.images:
        (directory / image.elf).parent.mkdir(parents=True, exist_ok=True)
    _run_jobs([_Job(link_argv(spec, image), what, directory / image.memory_report)
               for image in spec.images], directory, deadline)


def compile_unit(spec: FirmwareSpec, unit: Unit, directory: Path) -> str | None:
    """Compile one unit alone in ``directory`` (the tree); the compiler's message if it fails.

    The tuner uses it to find which instance of a batch breaks the build.
    """
    _require_compiler(spec.board)
    (directory / unit.obj).parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(compile_argv(spec, unit), cwd=directory, capture_output=True,
                          text=True, check=False)
    return None if proc.returncode == 0 else proc.stderr + proc.stdout


def build_cached(spec: FirmwareSpec, kind: str = "fw") -> Path:
    """Build ``spec`` in the cache and return its directory (the tree plus ``build/``).

    The directory is keyed by every file and every command, so an unchanged firmware is reused.
    It is built under a temporary name and renamed when complete, so concurrent builds of the
    same firmware (pytest-xdist, tuner workers) never see a half-built one.
    """
    commands = [" ".join(compile_argv(spec, u)) for u in spec.units()]
    commands += [" ".join(link_argv(spec, image)) for image in spec.images]
    key = tree_hash(dict(spec.files), tuple(commands))
    directory = cache_dir() / f"{kind}-{spec.board.name}-{spec.name}-{key}"

    def complete() -> bool:
        return all((directory / image.elf).exists() for image in spec.images)

    if complete():
        return directory
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tree(tmp, dict(spec.files))
    try:
        compile_and_link(spec, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists() and not complete():
        # Never a build in progress (those live under tmp names): a crashed copy. Replace it.
        shutil.rmtree(directory, ignore_errors=True)
    try:
        tmp.rename(directory)
    except OSError:  # another process built it first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def port_files() -> dict[str, str]:
    """The semihosting board port (:data:`PORT_DIR`) every firmware links."""
    port = runtime_dir() / "ports" / "semihost"
    return {f"{PORT_DIR}/{name}": (port / name).read_text() for name in ("tt_port.h", "tt_port.c")}


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_REGION = re.compile(r"^\s*(\S+):\s+(\d+)\s*(B|KB|MB|GB)\s+(\d+)\s*(B|KB|MB|GB)\s+[\d.]+%")


def parse_memory_usage(text: str) -> dict[str, tuple[int, int]]:
    """``ld --print-memory-usage`` → {region: (bytes used, region size)} (ld prints exact
    multiples: a value shown in KB is a whole number of KiB)."""
    regions = {}
    for line in text.splitlines():
        if m := _REGION.match(line):
            regions[m.group(1)] = (int(m.group(2)) * _UNITS[m.group(3)],
                                   int(m.group(4)) * _UNITS[m.group(5)])
    return regions


def memory_usage(elf: Path) -> dict[str, tuple[int, int]]:
    """The memory use per linker region of a built ELF (:func:`parse_memory_usage` of the
    report the builder keeps next to it)."""
    return parse_memory_usage(elf.with_suffix(".memory.txt").read_text())


__all__ = ["INCLUDE_ROOTS", "PORT_DIR", "PROFILE_DEFINES", "BoardFlags", "FirmwareSpec", "Image",
           "Unit", "board_flags", "build_cached", "compile_and_link", "compile_argv",
           "compile_unit", "include_dirs", "link_argv", "memory_usage", "parse_memory_usage",
           "port_files", "tvm_headers"]

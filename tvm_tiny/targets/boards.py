"""Board profiles: everything the build, the firmware and the emulator need to know, as data.

A :class:`Board` names its cores (ISA, count), SIMD features, memories (name, origin on the real
part, size, and where the emulator maps it), where code, data and the stack go, the cross
toolchain's argv flags, the TVM ``c`` target attributes, and the QEMU machine that runs it
(DESIGN.md §4). Nothing here runs a tool; :mod:`tvm_tiny.firmware.builder` derives the firmware
flags, :mod:`tvm_tiny.firmware.linker` the linker scripts from these records, and
:mod:`tvm_tiny.firmware.qemu` runs them.

The emulated machines are much larger than the real parts, so the linker scripts carry the real
memory SIZES (a model that does not fit fails to link) at emulator ADDRESSES: the Cortex-M parts
boot from address 0 on the MPS2 machines, and GAP9's L2 sits at the RISC-V ``virt`` RAM base.

Note on names: ``tvm_tiny.boards()`` (the function listing profile names) shadows this module as
an attribute of the package; import from it with ``from tvm_tiny.boards import get_board``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import tvm

from tvm_tiny.ir.errors import MemoryPlanError

KIB = 1024
MIB = 1024 * KIB


class Isa(enum.Enum):
    """Instruction set of a core."""

    X86_64 = "x86-64"
    ARMV7EM = "armv7e-m"  # Cortex-M4 / M7: Thumb-2 with the DSP extension
    RV32IMC = "rv32imc"


class SimdFeature(enum.Enum):
    """Vector/DSP and floating-point features a kernel may use (portable C is always there)."""

    ARM_DSP = "arm-dsp"  # dual 16-bit MACs (SMLAD) of ARMv7E-M
    FPU_SP = "fpu-sp"  # single-precision FPU
    FPU_DP = "fpu-dp"  # double-precision FPU
    XPULP_V2 = "xpulpv2"  # GAP9 packed SIMD and hardware loops; not emulated, so unused here


class MemoryKind(enum.Enum):
    FLASH = "flash"  # non-volatile, read-only at run time: code and constants
    RAM = "ram"


@dataclass(frozen=True)
class Memory:
    """One memory of the part. ``size`` is the real size, enforced by the linker script."""

    name: str  # linker MEMORY region name
    kind: MemoryKind
    origin: int  # address on the real part
    size: int
    emulated_origin: int  # address the firmware uses on the emulated machine
    description: str = ""


@dataclass(frozen=True)
class Core:
    name: str
    isa: Isa
    count: int = 1
    role: str = ""


RUNTIME_STATIC_BYTES = 2048
"""RAM reserved in the data memory for the statics that are not the model's: picolibc's
semihosting crt0 (1,280 B of .bss), libc's .data/.bss (about 40 B) and tt_runtime's error
buffer and workspace pointers (176 B), 1,496 B in an stm32l4 firmware's map, rounded up so a
model the build accepts also links (``tests/test_boards.py`` checks it against the map)."""


@dataclass(frozen=True)
class Placement:
    """Which memory holds what. The arena and the firmware's I/O buffers live in ``data``."""

    code: str  # .text and .rodata: code and constant parameters
    data: str  # .data and .bss: arena, I/O buffers, runtime statics
    stack: str
    stack_bytes: int
    runtime_static_bytes: int = RUNTIME_STATIC_BYTES  # libc and runtime statics in ``data``


@dataclass(frozen=True)
class Toolchain:
    """A cross C toolchain (picolibc, semihosting) as argv fragments."""

    prefix: str  # e.g. "arm-none-eabi-"
    debian_packages: str
    arch_flags: tuple[str, ...]
    libc_flags: tuple[str, ...] = ("--specs=picolibc.specs",)
    link_flags: tuple[str, ...] = ("--oslib=semihost", "--crt0=semihost")

    @property
    def cc(self) -> str:
        return self.prefix + "gcc"

    @property
    def nm(self) -> str:
        return self.prefix + "nm"


@dataclass(frozen=True)
class Emulator:
    """A QEMU system machine running the firmware with exact instruction counting."""

    binary: str  # e.g. "qemu-system-arm"
    machine: str
    debian_package: str
    extra_args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """QEMU arguments before ``-kernel``: no display, semihosting for I/O, and
        ``-icount shift=0`` so guest time (and RISC-V ``minstret``) follows instructions."""
        return [self.binary, "-M", self.machine, *self.extra_args, "-nographic",
                "-monitor", "none", "-serial", "none",
                "-semihosting-config", "enable=on,target=native", "-icount", "shift=0"]


@dataclass(frozen=True)
class Board:
    """A compilation target: the host, or a microcontroller board run in an emulator."""

    name: str
    description: str
    cores: tuple[Core, ...]
    tvm_target_attrs: tuple[tuple[str, Any], ...]  # TVM "c" target: mcpu (Arm) / march (RISC-V)
    simd: frozenset[SimdFeature] = frozenset()
    memories: tuple[Memory, ...] = ()
    placement: Placement | None = None
    toolchain: Toolchain | None = None
    emulator: Emulator | None = None
    notes: tuple[str, ...] = field(default=())
    #: The small fast memory a kernel's scratch should live in (tuning validity rule); None:
    #: the data memory. Kept separate from ``placement`` so deployed layouts are unchanged.
    fast_memory: str | None = None

    @property
    def isa(self) -> Isa:
        return self.cores[0].isa

    @property
    def is_host(self) -> bool:
        return self.emulator is None

    @property
    def cluster_cores(self) -> int:
        """Cores of the largest group (GAP9: the 8-core cluster; 1 elsewhere)."""
        return max(c.count for c in self.cores)

    def fast_memory_bytes(self) -> int | None:
        """Bytes of the fast memory left for kernel scratch (the stack's share removed when it
        lives there); None for the host."""
        if self.placement is None:
            return None
        mem = self.memory(self.fast_memory or self.placement.data)
        stack = self.placement.stack_bytes if self.placement.stack == mem.name else 0
        return mem.size - stack

    def memory(self, name: str) -> Memory:
        for mem in self.memories:
            if mem.name == name:
                return mem
        raise KeyError(f"board '{self.name}' has no memory '{name}'")

    def tvm_target(self) -> Any:
        """The TVM ``c`` target carrying this board's mcpu/march attributes."""
        return tvm.target.Target(dict(self.tvm_target_attrs))


_ARM = "gcc-arm-none-eabi picolibc-arm-none-eabi"
_RISCV = "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf"
_STACK = 8 * KIB


def _stm32_flash(size: int) -> Memory:
    return Memory("FLASH", MemoryKind.FLASH, 0x0800_0000, size, 0x0000_0000,
                  "embedded flash (the MPS2 machines boot from address 0)")


# The Cortex-M4F core shared by STM32L4 and the MPS2 AN386 board QEMU emulates for it.
_CORTEX_M4: dict[str, Any] = {
    "cores": (Core("cortex-m4", Isa.ARMV7EM),),
    "tvm_target_attrs": (("kind", "c"), ("mcpu", "cortex-m4")),
    "simd": frozenset({SimdFeature.ARM_DSP, SimdFeature.FPU_SP}),
}
_CORTEX_M4_TOOLS: dict[str, Any] = {
    "toolchain": Toolchain("arm-none-eabi-", _ARM, (
        "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")),
    "emulator": Emulator("qemu-system-arm", "mps2-an386", "qemu-system-arm"),
}

HOST = Board(
    name="host",
    description="the build machine (gcc, x86-64), run through ctypes",
    cores=(Core("x86-64", Isa.X86_64),),
    tvm_target_attrs=(("kind", "c"),),
)

STM32L4 = Board(
    name="stm32l4",
    description="STM32L4 (e.g. L476): Cortex-M4F with DSP, 96+32 KiB SRAM, 1 MiB flash",
    **_CORTEX_M4,
    memories=(
        _stm32_flash(1 * MIB),
        Memory("SRAM1", MemoryKind.RAM, 0x2000_0000, 96 * KIB, 0x2000_0000),
        # SRAM2 sits at 0x10000000 on the part (aliased after SRAM1 on L47x); the MPS2 machine
        # has RAM only after SRAM1, so the firmware uses it there.
        Memory("SRAM2", MemoryKind.RAM, 0x1000_0000, 32 * KIB, 0x2001_8000),
    ),
    placement=Placement(code="FLASH", data="SRAM1", stack="SRAM2", stack_bytes=_STACK),
    **_CORTEX_M4_TOOLS,
)

MPS2_AN386 = Board(
    name="mps2_an386",
    description="Arm MPS2+ FPGA board with the AN386 Cortex-M4 image (the machine QEMU emulates "
                "for stm32l4): 4 MiB code SSRAM, 4 MiB data SSRAM; for baselines too large for "
                "a real STM32 part",
    **_CORTEX_M4,
    memories=(
        Memory("SSRAM1", MemoryKind.FLASH, 0x0000_0000, 4 * MIB, 0x0000_0000,
               "code SSRAM (holds code and constants as flash would)"),
        Memory("SSRAM23", MemoryKind.RAM, 0x2000_0000, 4 * MIB, 0x2000_0000, "data SSRAM"),
    ),
    placement=Placement(code="SSRAM1", data="SSRAM23", stack="SSRAM23", stack_bytes=_STACK),
    **_CORTEX_M4_TOOLS,
)

STM32H7 = Board(
    name="stm32h7",
    description="STM32H7 (e.g. H743): Cortex-M7 with DSP and DP FPU, 128 KiB DTCM + 512 KiB "
                "AXI SRAM, 2 MiB flash",
    cores=(Core("cortex-m7", Isa.ARMV7EM),),
    tvm_target_attrs=(("kind", "c"), ("mcpu", "cortex-m7")),
    simd=frozenset({SimdFeature.ARM_DSP, SimdFeature.FPU_SP, SimdFeature.FPU_DP}),
    memories=(
        _stm32_flash(2 * MIB),
        Memory("DTCM", MemoryKind.RAM, 0x2000_0000, 128 * KIB, 0x2000_0000,
               "data tightly-coupled memory"),
        # AXI SRAM is at 0x24000000 on the part; the MPS2 SSRAM ends at 0x20400000.
        Memory("SRAM", MemoryKind.RAM, 0x2400_0000, 512 * KIB, 0x2008_0000, "AXI SRAM"),
    ),
    placement=Placement(code="FLASH", data="SRAM", stack="DTCM", stack_bytes=_STACK),
    toolchain=Toolchain("arm-none-eabi-", _ARM, (
        "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")),
    emulator=Emulator("qemu-system-arm", "mps2-an500", "qemu-system-arm"),
    fast_memory="DTCM",
)

STM32F746 = Board(
    name="stm32f746",
    description="STM32F746: Cortex-M7 with DSP and SP FPU, 320 KiB SRAM, 1 MiB flash",
    cores=(Core("cortex-m7", Isa.ARMV7EM),),
    tvm_target_attrs=(("kind", "c"), ("mcpu", "cortex-m7")),
    simd=frozenset({SimdFeature.ARM_DSP, SimdFeature.FPU_SP}),
    memories=(
        _stm32_flash(1 * MIB),
        Memory("SRAM", MemoryKind.RAM, 0x2000_0000, 320 * KIB, 0x2000_0000,
               "DTCM 64 KiB + SRAM1 240 KiB + SRAM2 16 KiB, contiguous"),
    ),
    placement=Placement(code="FLASH", data="SRAM", stack="SRAM", stack_bytes=_STACK),
    toolchain=Toolchain("arm-none-eabi-", _ARM, (
        "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16")),
    emulator=Emulator("qemu-system-arm", "mps2-an500", "qemu-system-arm"),
)

GAP9 = Board(
    name="gap9",
    description="GreenWaves GAP9: fabric controller + 8-core cluster (RV32IMC here; Xpulp "
                "extensions are not emulated), 128 KiB L1, 1.5 MiB L2",
    cores=(Core("fc", Isa.RV32IMC, 1, "fabric controller"),
           Core("cluster", Isa.RV32IMC, 8, "compute cluster")),
    tvm_target_attrs=(("kind", "c"), ("march", "rv32imc")),
    simd=frozenset({SimdFeature.XPULP_V2}),
    memories=(
        # GAP9 runs code from L2 (loaded from external flash/MRAM at boot), so code, constants,
        # data and stack all live in L2; QEMU virt boots at its RAM base 0x80000000.
        Memory("L2", MemoryKind.RAM, 0x1C00_0000, 1536 * KIB, 0x8000_0000, "L2 SRAM"),
        Memory("L1", MemoryKind.RAM, 0x1000_0000, 128 * KIB, 0x8018_0000,
               "cluster TCDM (unused by the portable port)"),
    ),
    placement=Placement(code="L2", data="L2", stack="L2", stack_bytes=_STACK),
    toolchain=Toolchain("riscv64-unknown-elf-", _RISCV, (
        "-march=rv32imc", "-mabi=ilp32", "-mcmodel=medany")),
    emulator=Emulator("qemu-system-riscv32", "virt", "qemu-system-misc", ("-bios", "none")),
    notes=("rv32imc has no FPU: float32 kernels run on libgcc soft-float, so instruction counts "
           "overstate GAP9 (whose cores have FPUs) by a large factor",),
    fast_memory="L1",
)

_BOARDS: dict[str, Board] = {b.name: b for b in (HOST, STM32L4, MPS2_AN386, STM32H7, STM32F746,
                                                  GAP9)}


def get_board(name: str) -> Board:
    """The profile called ``name``; unknown names list the known ones."""
    try:
        return _BOARDS[name]
    except KeyError:
        known = ", ".join(sorted(_BOARDS))
        raise ValueError(f"unknown target '{name}'; known targets: {known}") from None


def board_names() -> list[str]:
    """Names of every board profile (``tvm_tiny.boards()``)."""
    return sorted(_BOARDS)


@dataclass(frozen=True)
class MemoryNeed:
    """What the build knows must go into one memory, before anything is linked."""

    memory: str
    size: int
    parts: tuple[tuple[str, int], ...]  # (what, bytes)

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        return " + ".join(f"{what} {b}" for what, b in self.parts)


def memory_needs(board: Board, *, arena_bytes: int, params_bytes: int,
                 io_bytes: int) -> list[MemoryNeed]:
    """Bytes each memory of ``board`` must hold at least: params in the code memory, arena, I/O
    buffers and the reserve for libc and runtime statics in the data memory, the stack in the
    stack memory. Code comes on top and is counted by the linker script."""
    if board.placement is None:
        return []
    place = board.placement
    parts: dict[str, list[tuple[str, int]]] = {m.name: [] for m in board.memories}
    parts[place.code].append(("params", params_bytes))
    parts[place.data].append(("arena", arena_bytes))
    parts[place.data].append(("inputs+outputs", io_bytes))
    parts[place.data].append(("runtime statics", place.runtime_static_bytes))
    parts[place.stack].append(("stack", place.stack_bytes))
    return [MemoryNeed(m.name, m.size, tuple(parts[m.name])) for m in board.memories
            if parts[m.name]]


def check_fit(board: Board, model: str, needs: list[MemoryNeed]) -> None:
    """Raise :class:`MemoryPlanError` naming every memory the model cannot fit in."""
    over = [n for n in needs if n.total > n.size]
    if not over:
        return
    lines = [f"{n.memory} needs at least {n.total} bytes ({n.describe()}), {n.size} available: "
             f"{n.total - n.size} bytes over" for n in over]
    raise MemoryPlanError(f"model '{model}' does not fit board '{board.name}': "
                          + "; ".join(lines) + " (code and libc come on top)")

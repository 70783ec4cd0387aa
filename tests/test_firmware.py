"""The one firmware builder (tvm_tiny/firmware): board flags, the include rule, specs of the
model, kernel and tuner firmwares, the exported Makefile, window parsing and the cluster model.

Nothing here runs QEMU or a cross compiler (``make -n`` only prints commands); the emulated
runs of these firmwares are in tests/test_boards.py, tests/test_mhsa_s8_kernel.py and
tests/test_tuning.py.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess

import pytest

import tvm_tiny
from tvm_tiny.codegen.variant import compile_flags
from tvm_tiny.firmware.builder import (
    INCLUDE_ROOTS,
    PROFILE_DEFINES,
    FirmwareSpec,
    Image,
    Unit,
    board_flags,
    compile_argv,
    include_dirs,
    link_argv,
)
from tvm_tiny.firmware.kernel_firmware import ELF as KERNEL_ELF
from tvm_tiny.firmware.kernel_firmware import kernel_firmware
from tvm_tiny.firmware.model import profiled_sources
from tvm_tiny.firmware.project import (
    ELF,
    PROFILED_ELF,
    PROFILED_GROUP,
    export_project,
    model_firmware,
)
from tvm_tiny.firmware.windows import (
    FORK_JOIN_INSTRUCTIONS,
    Window,
    labels_text,
    model_cluster_call,
    nested,
    parse_windows,
)
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.targets.boards import board_names, get_board
from tvm_tiny.tuning import measure
from tvm_tiny.tuning.firmware import Firmware, firmware_sources, window_costs
from tvm_tiny.tuning.space import config_space
from tvm_tiny.tuning.task import extract_tasks

FIRMWARE_BOARDS = [n for n in board_names() if get_board(n).toolchain is not None]
CLUSTER_PORT = "runtime/src/port/tt_cluster_serial.c"

#: The compile flags every firmware used before the builder was shared (the Makefile's CFLAGS,
#: kernel_firmware's WARNING_FLAGS + OPT_FLAGS + libc, the tuner's firmware_cflags): pinned so a
#: change of board flags is a deliberate one (it changes every instruction count).
COMMON_CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-ffunction-sections",
                 "-fdata-sections", "--specs=picolibc.specs"]
ARCH = {
    "stm32l4": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "mps2_an386": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
    "stm32h7": ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"],
    "stm32f746": ["-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"],
    "gap9": ["-march=rv32imc", "-mabi=ilp32", "-mcmodel=medany"],
}


@pytest.fixture(scope="module")
def board_lib(data_dir):
    """``board_lib(board)``: the two-layer test encoder built for ``board`` (cached)."""
    cache: dict[str, tvm_tiny.TinyModule] = {}

    def get(board: str) -> tvm_tiny.TinyModule:
        if board not in cache:
            cache[board] = tvm_tiny.build(data_dir / "encoder_helper_relu.onnx", target=board)
        return cache[board]

    return get


# -- flags and the include rule ---------------------------------------------------------------
@pytest.mark.parametrize("board", FIRMWARE_BOARDS)
def test_board_flags_are_the_pinned_flags(board):
    flags = board_flags(get_board(board))
    assert list(flags.arch) == ARCH[board]
    assert list(flags.cflags) == COMMON_CFLAGS
    assert list(flags.ldflags("fw.ld")) == [
        "--specs=picolibc.specs", "--oslib=semihost", "--crt0=semihost", "-Tfw.ld",
        "-Wl,--gc-sections", "-Wl,--print-memory-usage"]


def test_host_has_no_firmware_flags():
    with pytest.raises(ValueError, match="'host' has no cross toolchain"):
        board_flags(get_board("host"))


def test_include_rule_takes_the_tree_roots_in_order():
    files = {"ports/semihost/tt_port.h": "", "runtime/include/tvm_tiny/tt_profile.h": "",
             "src/include/not_a_root.h": "", "kernels/include/tt_mhsa.h": "", "main.c": ""}
    assert include_dirs(files) == ["kernels/include", "runtime/include", "ports/semihost"]
    assert include_dirs({"codegen/host/include/m.h": "", **files})[0] == INCLUDE_ROOTS[0]
    assert include_dirs({"main.c": ""}) == []


def test_compile_and_link_commands():
    board = get_board("stm32l4")
    unit = Unit("src/a.c", "v1", ("-DX=1",))
    spec = FirmwareSpec("t", board, {"src/a.c": "", "runtime/include/x.h": ""}, "fw.ld",
                        (Image("build/t.elf", (Unit("main.c"), unit)),))
    flags = board_flags(board)
    assert compile_argv(spec, unit) == [
        "arm-none-eabi-gcc", *ARCH["stm32l4"], *COMMON_CFLAGS, "-DX=1", "-Iruntime/include",
        "-c", "src/a.c", "-o", "build/v1/src/a.o"]
    assert link_argv(spec, spec.images[0]) == [
        "arm-none-eabi-gcc", *ARCH["stm32l4"], "build/obj/main.o", "build/v1/src/a.o",
        *flags.ldflags("fw.ld"), "-Wl,-Map=build/t.map", "-o", "build/t.elf", "-lm"]
    assert spec.images[0].memory_report == "build/t.memory.txt"


# -- the model firmware -------------------------------------------------------------------------
def _marker_sources(lib: tvm_tiny.TinyModule) -> list[str]:
    """Test-only cross-check: the translation units whose text uses the step markers."""
    return [p for p in lib.source_files()
            if "TT_STEP_BEGIN(" in lib.files[p] or "TT_PROFILE_STEPS" in lib.files[p]]


@pytest.mark.parametrize("board,cluster", [("stm32l4", False), ("gap9", True)])
def test_profiled_sources_come_from_the_build(board_lib, board, cluster):
    """The build names the entry point and (GAP9) the cluster port; they are exactly the units
    whose code depends on TT_PROFILE_STEPS, and only they are compiled a second time."""
    lib = board_lib(board)
    entry = f"codegen/host/src/{lib.prefix}.c"
    assert lib.profiled_sources == ((entry, CLUSTER_PORT) if cluster else (entry,))
    assert sorted(lib.profiled_sources) == _marker_sources(lib)
    spec = model_firmware(lib)
    plain, profiled = spec.image(ELF), spec.image(PROFILED_ELF)
    assert [u.source for u in plain.units] == [*lib.source_files(), "ports/semihost/tt_port.c",
                                                "firmware/main.c"]
    again = [u for u in profiled.units if u.group == PROFILED_GROUP]
    assert [u.source for u in again] == sorted(lib.profiled_sources)
    assert all(u.flags == PROFILE_DEFINES for u in again)
    # The profiled image links the unchanged objects first (the Makefile's PROFILED_OBJS).
    assert profiled.units[:len(plain.units) - len(again)] == tuple(
        u for u in plain.units if u.source not in lib.profiled_sources)


def test_profiled_sources_of_a_build():
    entry = "codegen/host/src/tvmtiny_m.c"
    assert profiled_sources("tvmtiny_m", ["mhsa/tt_mhsa_f32.c"]) == (entry,)
    assert profiled_sources("tvmtiny_m", ["mhsa/tt_mhsa_f32_cluster.c",
                                          "port/tt_cluster_serial.c"]) == (entry, CLUSTER_PORT)


def test_unknown_profiled_source_is_refused(board_lib):
    lib = dataclasses.replace(board_lib("stm32l4"), profiled_sources=("codegen/host/src/x.c",))
    with pytest.raises(ValueError, match=r"profiled sources \['codegen/host/src/x.c'\]"):
        model_firmware(lib)


@pytest.mark.parametrize("board", ["stm32l4", "gap9"])
def test_makefile_runs_the_builder_commands(board_lib, board, tmp_path):
    """``make -n`` of an exported project prints exactly the builder's compile and link
    commands (the Makefile is rendered from the same spec and board flags)."""
    if shutil.which("make") is None:
        pytest.skip("make not installed (run `make setup`)")
    lib = board_lib(board)
    out = export_project(lib, tmp_path / board)
    dry = subprocess.run(["make", "-n", "-C", str(out), "all"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    compiles = [line for line in dry if " -c " in line]
    links = [line.split(" > ")[0] for line in dry if " -o build/model" in line]
    spec = model_firmware(lib)
    assert sorted(compiles) == sorted(shlex.join(compile_argv(spec, u)) for u in spec.units())
    assert sorted(links) == sorted(shlex.join(link_argv(spec, i)) for i in spec.images)
    makefile = (out / "Makefile").read_text()
    flags = board_flags(get_board(board))
    assert f"CFLAGS := {shlex.join(flags.cflags)}\n" in makefile
    assert f"ARCH := {shlex.join(flags.arch)}\n" in makefile


# -- the kernel and tuner firmwares --------------------------------------------------------------
def test_kernel_firmware_spec():
    spec = kernel_firmware(get_board("gap9"), "k", {"main.c": "int main(void) { return 0; }\n"},
                           ["mhsa/tt_mhsa_f32.c", "port/tt_cluster_serial.c"], ["TT_X=2"])
    (image,) = spec.images
    assert image.elf == KERNEL_ELF
    assert [u.source for u in image.units] == [
        "runtime/src/tt_profile.c", "ports/semihost/tt_port.c", "main.c",
        "kernels/mhsa/tt_mhsa_f32.c", "kernels/port/tt_cluster_serial.c"]
    assert all(u.flags == ("-DTT_X=2",) for u in image.units)
    assert include_dirs(spec.files) == ["kernels/include", "runtime/include", "ports/semihost"]
    assert spec.script == "firmware/gap9.ld" and spec.script in spec.files


@pytest.mark.parametrize("board", ["stm32h7", "gap9"])
def test_tuner_firmware_spec(data_dir, board):
    """Two kernel variants in one firmware: each a compile group with its macros and renamed
    symbols; everything compiled with TT_PROFILE_STEPS; the include path inside the tree."""
    (task,) = extract_tasks(data_dir / "mhsa_helper_mul.onnx", board)
    space = config_space(task)
    first = space.get(space.valid_indices()[0])
    other = next(space.get(i) for i in space.valid_indices()
                 if space.get(i).variant() != first.variant())
    entities = [first, other]
    kernels = {e.index: measure._instance(task, space, e) for e in entities}
    fw = firmware_sources(task, space, entities, kernels)
    (image,) = fw.spec.images
    for entity in entities:
        unit = fw.instances[entity.index]
        assert unit.group == entity.variant().name
        assert unit.flags == (*PROFILE_DEFINES, *compile_flags(entity.variant()))
        library = [u for u in image.units if u.source == "kernels/mhsa/tt_mhsa_f32.c"
                   and u.group == unit.group]
        assert len(library) == 1 and library[0].flags == unit.flags
    assert all(u.flags[:1] == PROFILE_DEFINES for u in image.units)
    assert include_dirs(fw.spec.files) == ["kernels/include", "runtime/include", "ports/semihost"]
    argv = compile_argv(fw.spec, image.units[0])
    assert all(not a[2:].startswith("/") for a in argv if a.startswith("-I"))
    assert "runtime/include/dlpack/dlpack.h" in fw.spec.files
    cores = get_board(board).cluster_cores
    assert len(fw.labels) == 2 * (1 + (2 * cores if cores > 1 else 0))


# -- windows --------------------------------------------------------------------------------------
REPORT = """\
wincount: window 0 depth 0 instructions 1000 label run
wincount: window 1 depth 1 instructions 300 label k0
wincount: window 2 depth 1 instructions 500 label k1
wincount: total 5000 windows 3 dropped 0 unbalanced 0
"""


def test_parse_windows():
    assert parse_windows(REPORT) == [Window("run", 0, 1000), Window("k0", 1, 300),
                                     Window("k1", 1, 500)]


@pytest.mark.parametrize("report,message", [
    (REPORT.replace("instructions 500", "unclosed"), "window 2 \\(k1\\) never closed"),
    (REPORT.replace("dropped 0", "dropped 2"), "2 windows dropped"),
    (REPORT.replace("unbalanced 0", "unbalanced 1"), "1 unbalanced end markers"),
    ("\n".join(REPORT.splitlines()[:-1]), "wrote no report"),
], ids=["unclosed", "dropped", "unbalanced", "no-total"])
def test_parse_windows_is_strict(report, message):
    with pytest.raises(ToolchainError, match=message):
        parse_windows(report)


def test_partial_windows_stop_at_the_first_unclosed():
    stopped = REPORT.replace("depth 1 instructions 300", "depth 1 unclosed")
    stopped = "\n".join(stopped.splitlines()[:-1])  # a killed emulator writes no total
    assert parse_windows(stopped, partial=True) == [Window("run", 0, 1000)]
    assert parse_windows("", partial=True) == []


def test_labels_text_keeps_what_the_plugin_keeps():
    assert labels_text(["run", "a\nb", "x" * 200]) == f"run\na b\n{'x' * 90}\n"


def test_nested_and_cluster_model():
    windows = [Window("run", 0, 10_000), Window("k", 1, 5000), Window("c0", 2, 1000),
               Window("c1", 2, 1200), Window("c0", 2, 100), Window("c1", 2, 90),
               Window("tir", 1, 2000)]
    groups = nested(windows[1:], 1)
    assert [(w.label, cores) for w, cores in groups] == [("k", [1000, 1200, 100, 90]),
                                                         ("tir", [])]
    call = model_cluster_call("k", 5000, groups[0][1], cores=2, forks=2)
    assert call.forks == [[1000, 1200], [100, 90]]
    assert call.modelled == 5000 - 2390 + (1200 + 100 + FORK_JOIN_INSTRUCTIONS * 2)
    with pytest.raises(ToolchainError, match="expected 2 forks of 4 core windows, got 4"):
        model_cluster_call("k", 5000, groups[0][1], cores=4, forks=2)
    with pytest.raises(ToolchainError, match="unexpected instruction window"):
        nested(windows, 1)


def test_tuner_window_costs():
    """Instance 0 single-core, 1 on two cores (its windows complete), 2 on two cores with a
    core window missing: it gets no cost and is measured again."""
    spec = FirmwareSpec("t", get_board("gap9"), {}, "fw.ld", ())
    fw = Firmware(spec, [], [], cluster={1: (2, 1), 2: (2, 1)})
    windows = [Window("cfg0", 0, 700), Window("cfg1", 0, 900), Window("c", 1, 400),
               Window("c", 1, 300), Window("cfg2", 0, 800), Window("c", 1, 50)]
    assert window_costs(fw, windows) == {
        0: (700.0, 700.0), 1: (900.0 - 700 + 400 + FORK_JOIN_INSTRUCTIONS, 900.0)}


def test_version_stamp_of_generated_files(board_lib):
    """Linker script, harness and Makefile carry the tvm_tiny version, not Python reprs."""
    spec = model_firmware(board_lib("stm32l4"))
    for path in ("firmware/stm32l4.ld", "firmware/main.c", "Makefile"):
        assert f"tvm_tiny {tvm_tiny.__version__}" in spec.files[path], path
        assert not re.search(r"<[a-z_.]+ object at 0x", str(spec.files[path]))

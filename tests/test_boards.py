"""Board profiles, emulated runs with exact instruction counts, exported projects, fit checks.

Emulator tests build the small encoder of tests/data (``encoder_helper(8, 16, 2, layers=2,
activation='relu')``) once per board, run it in QEMU through :meth:`TinyModule.run_on_board`
and through an exported project's ``make run``. Every count is instructions, not cycles.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pytest

import tvm_tiny
from tvm_tiny.firmware.builder import parse_memory_usage
from tvm_tiny.firmware.project import ELF, PROFILED_ELF
from tvm_tiny.firmware.qemu import wincount_plugin
from tvm_tiny.firmware.runner import build_firmware
from tvm_tiny.firmware.windows import FORK_JOIN_INSTRUCTIONS, parse_windows
from tvm_tiny.ir.errors import MemoryPlanError, ToolchainError
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, cluster_scratch_bytes
from tvm_tiny.targets.boards import KIB, get_board
from tvm_tiny.targets.resources import kernels_dir, runtime_dir
from tvm_tiny.targets.toolchain import compile_host_library
from tvm_tiny.testing.models import encoder_helper, mhsa_helper

#: Boards every emulator test runs on: one per emulated machine family (M4, M7, RV32).
BOARDS = ["stm32l4", "stm32h7", "gap9"]
MODEL = "encoder_helper_relu"

#: Board vs host outputs: the same C with -ffp-contract=off; only libm differs (picolibc vs
#: glibc expf/erff/sqrtf, a few ulps), well below this (and the harness's own 1e-4 check).
BOARD_ATOL = 1e-5

#: RISC-V minstret is read by the harness just outside the plugin's window: the csrr
#: instructions and the two marker calls lie between the two reads (13 on rv32imc).
MINSTRET_SLACK = 32


def _require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")


def _tools(board_name: str) -> tuple[str, ...]:
    board = get_board(board_name)
    assert board.toolchain is not None and board.emulator is not None
    return (board.toolchain.cc, board.emulator.binary, "make", "gcc")


@pytest.fixture(scope="session")
def board_lib(data_dir):
    """``board_lib(board)``: the test encoder built for ``board`` (once per session)."""
    cache: dict[str, tvm_tiny.TinyModule] = {}

    def get(board: str) -> tvm_tiny.TinyModule:
        if board not in cache:
            cache[board] = tvm_tiny.build(data_dir / f"{MODEL}.onnx", target=board)
        return cache[board]

    return get


@pytest.fixture(scope="session")
def model_input(board_lib):
    rng = np.random.default_rng(0)
    (spec,) = board_lib("stm32l4").inputs
    return rng.standard_normal(spec.shape).astype(spec.dtype)


@pytest.fixture(scope="session")
def board_runs(board_lib, model_input):
    """``board_runs(board)``: two run_on_board results of the test encoder (once per session)."""
    cache: dict[str, tuple] = {}

    def get(board: str) -> tuple:
        _require(*_tools(board))
        if board not in cache:
            lib = board_lib(board)
            cache[board] = (lib.run_on_board(model_input), lib.run_on_board(model_input))
        return cache[board]

    return get


# -- profiles (no emulator) -------------------------------------------------------------------
def test_board_names():
    assert tvm_tiny.boards() == ["gap9", "host", "mps2_an386", "stm32f746", "stm32h7", "stm32l4"]


@pytest.mark.parametrize("name,attr,value", [
    ("stm32l4", "mcpu", "cortex-m4"), ("stm32h7", "mcpu", "cortex-m7"),
    ("stm32f746", "mcpu", "cortex-m7"), ("gap9", "march", "rv32imc")])
def test_tvm_target_attrs(name, attr, value):
    target = get_board(name).tvm_target()
    assert str(target.kind) == "c"
    assert str(target.attrs[attr]) == value


@pytest.mark.parametrize("name,attr", [("stm32l4", '"mcpu":"cortex-m4"'),
                                       ("stm32h7", '"mcpu":"cortex-m7"'),
                                       ("gap9", '"march":"rv32imc"')])
def test_build_passes_the_board_target_to_tvm(board_lib, name, attr):
    """TVM's C code generator records the target it compiled for in the TIR source."""
    lib = board_lib(name)
    tir = lib.files[f"codegen/host/src/{lib.prefix}_tir.c"]
    (line,) = [t for t in tir.splitlines() if t.startswith("// tvm target:")]
    assert attr in line
    assert lib.metadata["target"] == name


@pytest.mark.parametrize("name,sizes", [
    ("stm32l4", {"FLASH": 1024 * KIB, "SRAM1": 96 * KIB, "SRAM2": 32 * KIB}),
    ("stm32h7", {"FLASH": 2048 * KIB, "DTCM": 128 * KIB, "SRAM": 512 * KIB}),
    ("stm32f746", {"FLASH": 1024 * KIB, "SRAM": 320 * KIB}),
    ("gap9", {"L2": 1536 * KIB, "L1": 128 * KIB})])
def test_memory_sizes(name, sizes):
    board = get_board(name)
    assert {m.name: m.size for m in board.memories} == sizes
    place = board.placement
    assert place is not None
    assert {place.code, place.data, place.stack} <= set(sizes)


def test_gap9_cluster():
    board = get_board("gap9")
    assert board.cluster_cores == 8
    assert sum(c.count for c in board.cores) == 9


def test_unknown_board_lists_names():
    with pytest.raises(ValueError, match="stm32h7") as err:
        get_board("stm32x")
    assert "stm32x" in str(err.value)


def test_host_build_has_no_markers(board_lib, tmp_path):
    """TT_STEP_BEGIN/END expand to nothing unless TT_PROFILE_STEPS is defined."""
    _require("gcc")
    lib = board_lib("stm32l4")
    src = lib.write_sources(tmp_path)
    entry = src / f"codegen/host/src/{lib.prefix}.c"
    assert entry.read_text().count("TT_STEP_BEGIN(") == len(lib.metadata["steps"])

    def preprocess(*flags: str) -> str:
        return subprocess.run(
            ["gcc", "-E", *flags, "-Icodegen/host/include", "-Iruntime/include", str(entry)],
            cwd=src, capture_output=True, text=True, check=True).stdout

    calls = r"tt_window_begin\(\);"
    assert len(re.findall(calls, preprocess())) == 0
    assert len(re.findall(calls, preprocess("-DTT_PROFILE_STEPS"))) == len(lib.metadata["steps"])


# -- fit checks ---------------------------------------------------------------------------------
def test_arena_too_big_names_memory_and_bytes():
    """S=128 attention: TVM alone holds H*S*S scores and misses stm32l4's 96 KiB SRAM1; the
    depth-first tvm_tiny kernel fits."""
    model = mhsa_helper(128, 16, 2, 8)
    host = tvm_tiny.build(model, target="host", offload=False)
    io_bytes = sum(t.nbytes for t in host.inputs + host.outputs)
    statics = get_board("stm32l4").placement.runtime_static_bytes
    need = host.metadata["arena_bytes"] + io_bytes + statics
    with pytest.raises(MemoryPlanError) as err:
        tvm_tiny.build(model, target="stm32l4", offload=False)
    message = str(err.value)
    assert "SRAM1" in message and "stm32l4" in message
    assert f"needs at least {need} bytes" in message
    assert f"{96 * KIB} available" in message and f"{need - 96 * KIB} bytes over" in message
    fits = tvm_tiny.build(model, target="stm32l4")
    (sram1,) = [n for n in fits.metadata["memory_needs"] if n["memory"] == "SRAM1"]
    assert sram1["bytes"] == fits.metadata["arena_bytes"] + io_bytes + statics <= 96 * KIB


def test_weights_too_big_for_flash():
    model = encoder_helper(4, 160, 2, layers=1)  # ~1.2 MB of float32 weights
    with pytest.raises(MemoryPlanError) as err:
        tvm_tiny.build(model, target="stm32l4")
    match = re.search(r"FLASH needs at least (\d+) bytes \(params (\d+)\), (\d+) available",
                      str(err.value))
    assert match, str(err.value)
    assert int(match.group(1)) == int(match.group(2)) > 1024 * KIB == int(match.group(3))


# -- emulated runs ------------------------------------------------------------------------------
@pytest.mark.emulator
@pytest.mark.parametrize("board", BOARDS)
def test_run_on_board_matches_host(board, board_lib, board_runs, model_input):
    first, second = board_runs(board)
    (ref,) = board_lib(board).run(model_input)
    (out,) = first.outputs
    assert out.shape == ref.shape and out.dtype == ref.dtype
    np.testing.assert_allclose(out, ref, rtol=0, atol=BOARD_ATOL)
    assert first.board == board


@pytest.mark.emulator
@pytest.mark.parametrize("board", BOARDS)
def test_instruction_counts_are_exact_and_deterministic(board, board_lib, board_runs):
    first, second = board_runs(board)
    lib = board_lib(board)
    assert first.instructions > 0
    assert (first.instructions, first.per_step) == (second.instructions, second.per_step)
    assert first.outputs[0].tobytes() == second.outputs[0].tobytes()
    steps = [s["name"] for s in lib.metadata["steps"]]
    assert [name for name, _ in first.per_step] == steps
    assert all(count > 0 for _, count in first.per_step)
    assert set(first.per_kernel) == set(steps)
    assert sum(first.per_kernel.values()) == sum(c for _, c in first.per_step)
    # Kernel windows nest inside the run window of the profiled firmware, whose markers add a
    # few instructions per window (kernel calls, and cluster cores) to the plain firmware's.
    assert sum(first.per_kernel.values()) < first.profiled_instructions
    windows = len(steps) + sum(len(f) * len(f[0]) for f in (
        first.cluster.per_core.values() if first.cluster else ()))
    assert 0 < first.profiled_instructions - first.instructions <= 16 * windows
    # Both offloaded MHSAs have the same shape: equal work up to a few instructions.
    mhsa = [c for n, c in first.per_step if n.startswith("tvm_tiny_mhsa")]
    assert len(mhsa) == 2 and abs(mhsa[0] - mhsa[1]) < 0.01 * mhsa[0]


@pytest.mark.emulator
def test_minstret_cross_checks_the_plugin(board_runs):
    run, _ = board_runs("gap9")
    assert run.minstret is not None
    assert 0 <= run.minstret - run.instructions <= MINSTRET_SLACK
    arm, _ = board_runs("stm32l4")
    assert arm.minstret is None


@pytest.mark.emulator
@pytest.mark.parametrize("board", BOARDS)
def test_memory_use_against_the_board(board, board_lib, board_runs):
    run, _ = board_runs(board)
    lib = board_lib(board)
    spec = get_board(board)
    place = spec.placement
    assert place is not None
    assert {name: size for name, (_, size) in run.memory.items()} == \
        {m.name: m.size for m in spec.memories}
    needs = {n["memory"]: n["bytes"] for n in lib.metadata["memory_needs"]}
    statics = place.runtime_static_bytes
    for name, (used, size) in run.memory.items():
        reserve = statics if name == place.data else 0
        assert needs.get(name, 0) - reserve <= used <= size, name
    if place.data not in (place.code, place.stack):
        # What the data memory holds beyond arena and I/O (libc, crt0, tt_runtime statics) stays
        # within the reserve the fit check counts, so an accepted model always links.
        model_bytes = lib.metadata["arena_bytes"] + sum(
            t.nbytes for t in lib.inputs + lib.outputs)
        assert 0 < run.memory[place.data][0] - model_bytes <= statics
    assert 0 < run.stack_used < run.stack_bytes == place.stack_bytes


@pytest.mark.emulator
def test_counts_differ_between_isas(board_runs):
    """Soft-float RV32IMC needs many more instructions than the Cortex-M FPU parts."""
    m4, _ = board_runs("stm32l4")
    rv, _ = board_runs("gap9")
    assert rv.instructions > 5 * m4.instructions


# -- exported projects --------------------------------------------------------------------------
@pytest.mark.emulator
@pytest.mark.parametrize("board", BOARDS)
def test_export_project_make_and_run(board, board_lib, board_runs, model_input, tmp_path):
    _require(*_tools(board))
    lib = board_lib(board)
    out = tvm_tiny.export_project(lib, tmp_path / board, inputs=[model_input])
    makefile = (out / "Makefile").read_text()
    assert "python" not in makefile.lower() and "tvm_tiny/" not in makefile
    build = subprocess.run(["make", "-C", str(out), "-j2"], capture_output=True, text=True,
                           check=False)
    assert build.returncode == 0, build.stderr
    regions = parse_memory_usage((out / "build/model.memory.txt").read_text())
    assert set(regions) == {m.name for m in get_board(board).memories}
    run = subprocess.run(["make", "-C", str(out), "run"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    console = run.stdout + run.stderr
    assert "tvm_tiny: output 0 matches expected0.bin" in console
    plain = parse_windows((out / "build/model.windows.txt").read_text())
    profiled = parse_windows((out / "build/model_profiled.windows.txt").read_text())
    # Same sources and flags as run_on_board's cached build (the Makefile is rendered from the
    # firmware builder's spec): the same ELF bytes, so the same instruction counts.
    cached = build_firmware(lib)
    for elf in (ELF, PROFILED_ELF):
        assert (out / elf).read_bytes() == (cached / elf).read_bytes(), elf
    board_run, _ = board_runs(board)
    assert [w.instructions for w in plain] == [board_run.instructions]
    assert [(w.label, w.instructions) for w in profiled if w.depth == 1] == board_run.per_step


@pytest.mark.emulator
def test_linker_script_enforces_real_sizes(board_lib):
    """A board whose flash is smaller than the firmware fails to link, naming the region."""
    _require(*_tools("stm32l4"))
    lib = board_lib("stm32l4")
    real = get_board("stm32l4")
    tiny_flash = tuple(dataclasses.replace(m, size=16 * KIB) if m.name == "FLASH" else m
                       for m in real.memories)
    variant = dataclasses.replace(real, name="stm32l4_16k", memories=tiny_flash)
    with pytest.raises(ToolchainError, match=r"region `FLASH' overflowed by \d+ bytes"):
        build_firmware(lib, variant)


def test_export_needs_a_board(tmp_path):
    lib = tvm_tiny.build(mhsa_helper(4, 8, 2, 4), target="host")
    with pytest.raises(ValueError, match="'host', which is not a board"):
        tvm_tiny.export_project(lib, tmp_path / "out")


def test_plugin_needs_a_host_compiler(monkeypatch, tmp_path):
    """Without gcc the lazily built plugin fails with the package to install."""
    _require("qemu-system-arm")
    wincount_plugin("qemu-system-arm")  # resolves (and caches) the QEMU version first
    monkeypatch.setenv("TVM_TINY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainError, match="apt-get install gcc"):
        wincount_plugin("qemu-system-arm")


def test_memory_region_parser():
    text = ("Memory region         Used Size  Region Size  %age Used\n"
            "           FLASH:       30688 B         2 MB      1.46%\n"
            "            DTCM:          8 KB       128 KB      6.25%\n"
            "              L1:          0 GB       128 KB      0.00%\n")
    assert parse_memory_usage(text) == {"FLASH": (30688, 2 * 1024 * KIB),
                                        "DTCM": (8 * KIB, 128 * KIB), "L1": (0, 128 * KIB)}



# -- GAP9 cluster port ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster_kernel():
    """The MHSA kernels and the serial cluster port, built for the host (ctypes)."""
    import ctypes

    _require("gcc")
    names = ["mhsa/tt_mhsa_f32.c", "mhsa/tt_mhsa_f32_cluster.c", "port/tt_cluster_serial.c"]
    files = {f"src/{n}": (kernels_dir() / n).read_text() for n in names}
    for header in ("tt_mhsa.h", "tt_status.h", "tt_cluster.h"):
        files[f"include/{header}"] = (kernels_dir() / "include" / header).read_text()
    files["include/tvm_tiny/tt_profile.h"] = \
        (runtime_dir() / "include/tvm_tiny/tt_profile.h").read_text()
    lib = ctypes.CDLL(str(compile_host_library(
        files, [f"src/{n}" for n in names], ["include"], "tt_cluster_test")))
    lib.tt_mhsa_f32_cluster_get_buffer_size.restype = ctypes.c_int32
    return lib


@pytest.mark.parametrize("seq,embed,heads,proj,rows,fuse,cores", [
    (8, 16, 2, 8, 8, False, 8), (12, 24, 3, 4, 5, True, 2), (16, 32, 4, 8, 3, False, 8),
    (5, 8, 1, 8, 2, False, 8), (16, 32, 4, 8, 16, True, 1)])
def test_cluster_scratch_formula_matches_c(cluster_kernel, seq, embed, heads, proj, rows, fuse,
                                           cores):
    import ctypes

    class Dims(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int32) for n in ("seq", "embed", "heads", "proj", "out")]

    class Config(ctypes.Structure):
        _fields_ = [("rows_per_block", ctypes.c_int32), ("fuse_qk", ctypes.c_int32)]

    shape = MhsaShape(seq, embed, heads, proj, embed)
    expected = cluster_scratch_bytes(shape, KernelConfig(rows, fuse), cores)
    got = cluster_kernel.tt_mhsa_f32_cluster_get_buffer_size(
        ctypes.byref(Dims(seq, embed, heads, proj, embed)), ctypes.byref(Config(rows, int(fuse))),
        cores)
    assert got == expected
    assert cluster_kernel.tt_mhsa_f32_cluster_get_buffer_size(
        ctypes.byref(Dims(seq, embed, heads, proj, embed)), ctypes.byref(Config(rows, int(fuse))),
        0) < 0


def test_gap9_splits_heads_across_the_cluster(data_dir):
    """The GAP9 build calls the cluster kernel (heads over 8 cores, run core by core by the
    portable port); on the host it computes what the single-core build computes."""
    path = data_dir / "encoder_helper_gelu.onnx"  # H=4: four busy cores
    gap9 = tvm_tiny.build(path, target="gap9")
    host = tvm_tiny.build(path, target="host")
    for entry in gap9.metadata["offloaded"]:
        assert entry["cluster"] == {"cores": 8, "active_cores": 4, "forks": 2}
        source = gap9.files[f"codegen/host/src/{gap9.prefix}_{entry['name']}.c"]
        assert "tt_mhsa_f32_cluster(" in source and ", 8);" in source
    assert all("cluster" not in e for e in host.metadata["offloaded"])
    assert "runtime/src/port/tt_cluster_serial.c" in gap9.files
    for g, h in zip(gap9.metadata["offloaded"], host.metadata["offloaded"]):
        shape = MhsaShape(g["seq"], g["embed"], g["heads"], g["proj"], g["out_features"])
        config = KernelConfig(g["kernel"]["rows_per_block"], g["kernel"]["fuse_qk"])
        # One head scratch per busy core plus three partial outputs.
        assert g["scratch_bytes"] == cluster_scratch_bytes(shape, config, 8) \
            == 4 * h["scratch_bytes"] + 3 * 4 * g["seq"] * g["out_features"]
    (spec,) = host.inputs
    x = np.random.default_rng(1).standard_normal(spec.shape).astype(spec.dtype)
    np.testing.assert_allclose(gap9.run(x)[0], host.run(x)[0], rtol=0, atol=1e-6)


@pytest.mark.emulator
def test_gap9_modelled_cluster_latency(board_runs, board_lib):
    run, again = board_runs("gap9")
    cluster = run.cluster
    assert cluster is not None and cluster == again.cluster
    lib = board_lib("gap9")
    steps = dict(run.per_step)
    for entry in lib.metadata["offloaded"]:
        name, active = entry["name"], entry["cluster"]["active_cores"]
        heads_fork, reduce_fork = cluster.per_core[name]
        assert len(heads_fork) == len(reduce_fork) == cluster.cores == 8
        busy, idle = heads_fork[:active], heads_fork[active:]
        # One head per busy core (H=2): equal work within 1%; idle cores only return.
        assert max(busy) - min(busy) < 0.01 * max(busy)
        assert max(idle) < 0.001 * min(busy)
        assert sum(heads_fork) + sum(reduce_fork) < steps[name]
        modelled = cluster.modelled_per_step[name]
        assert max(busy) + FORK_JOIN_INSTRUCTIONS < modelled < steps[name]
    assert cluster.serial_instructions == run.instructions
    assert cluster.modelled_instructions < run.instructions
    arm, _ = board_runs("stm32l4")
    assert arm.cluster is None

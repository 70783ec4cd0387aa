"""Bad inputs beyond tests/test_errors.py (issue #9): tensors whose byte sizes overflow 32-bit
offsets, missing host/cross toolchains and emulators, models too big for a board, corrupt
tuning logs. Each must end in a clear error (or warning) naming what is at fault.

Already covered elsewhere, not repeated here: dynamic/zero-size inputs, unknown operators,
corrupt/truncated/missing ONNX files, wrong run-time inputs, NaN weights (test_errors.py); a
model over stm32l4's SRAM1 or FLASH (test_boards.py); an arena below the plan (test_memory.py);
no gcc for the QEMU plugin (test_boards.py).

Tests marked ``xfail(strict=True)`` pin compiler bugs found while writing them; each reason
says what happens instead. When a bug is fixed the test XPASSes, which fails the run: remove
the marker then.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm

import tvm_tiny
from tvm_tiny.ir.errors import MemoryPlanError, TinyError, ToolchainError
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing.models import encoder_helper, mhsa_helper


# -- tensors over 32-bit byte offsets ------------------------------------------------------
def _relu_module(shape: tuple[int, ...], chain: bool = False) -> tvm.IRModule:
    """``main(x) = relu(x)``, or with ``chain`` ``exp(relu(x)) + relu(x)`` (an intermediate the
    arena must hold), for a static float32 ``shape``."""
    bb = tvm.relax.BlockBuilder()
    x = tvm.relax.Var("x", tvm.relax.TensorType(list(shape), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(tvm.relax.op.nn.relu(x))
            if chain:
                y = bb.emit(tvm.relax.op.add(tvm.relax.op.exp(y), y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


HUGE_SHAPE = (1, 70000, 70000)  # 4.9e9 elements: 19,600,000,000 bytes of float32
HUGE_BYTES = 4 * math.prod(HUGE_SHAPE)


def _refused(module: tvm.IRModule, *expected: str) -> None:
    """``build(module)`` must raise a TinyError whose message holds every ``expected`` text;
    an AssertionError (what the xfail markers below expect) says what happened instead."""
    try:
        lib = tvm_tiny.build(module)
    except TinyError as err:
        missing = [text for text in expected if text not in str(err)]
        assert not missing, f"the error does not name {missing}: {err}"
        return
    raise AssertionError(f"build accepted it: inputs {lib.metadata['inputs']}, arena "
                         f"{lib.metadata['arena_bytes']} bytes")


def test_input_over_4_gib_is_refused_naming_shape_and_bytes():
    _refused(_relu_module(HUGE_SHAPE), "[1, 70000, 70000]", str(HUGE_BYTES))


def test_arena_over_2_gib_is_refused_at_build_time():
    # The 4.8e9-byte input is already past 32-bit offsets, so it is named before the arena.
    _refused(_relu_module((1, 40000, 30000), chain=True), "[1, 40000, 30000]", "4800000000")


def test_tensor_over_4_gib_on_a_board_names_memory_and_bytes():
    """On a 32-bit board the fit check refuses it, with the bytes (no int32 wrap-around)."""
    with pytest.raises(MemoryPlanError) as err:
        tvm_tiny.build(_relu_module(HUGE_SHAPE), target="stm32l4")
    message = str(err.value)
    # Either refusal names the bytes: the 32-bit offset limit (checked first) or the board fit.
    assert str(HUGE_BYTES) in message or f"inputs+outputs {2 * HUGE_BYTES}" in message, message


def test_long_sequence_mhsa_does_not_crash_the_partitioner():
    seq = 2**22
    model = mhsa_helper(seq, 4, 1, 4)
    try:
        lib = tvm_tiny.build(model)
    except TinyError as err:  # acceptable: a clear refusal naming the sequence length
        assert str(seq) in str(err)
        return
    assert lib.metadata["offloaded"] or lib.metadata["not_offloaded"]


# -- missing tools ------------------------------------------------------------------------------
@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty directory, and the compile caches are fresh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("TVM_TINY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture(scope="module")
def tiny_model():
    return mhsa_helper(4, 8, 2, 4)


def _x(lib: tvm_tiny.TinyModule) -> np.ndarray:
    (spec,) = lib.inputs
    return np.zeros(spec.shape, spec.dtype)


def test_missing_host_compiler_names_the_package(tiny_model, empty_path):
    lib = tvm_tiny.build(tiny_model, target="host")
    with pytest.raises(ToolchainError, match=r"'gcc' not found.*apt-get install gcc"):
        lib.run(_x(lib))


@pytest.mark.parametrize("board", ["stm32l4", "gap9"])
def test_missing_cross_toolchain_names_the_package(board, tiny_model, empty_path):
    lib = tvm_tiny.build(tiny_model, target=board)
    toolchain = get_board(board).toolchain
    assert toolchain is not None
    with pytest.raises(ToolchainError) as err:
        lib.run_on_board(_x(lib))
    message = str(err.value)
    assert f"'{toolchain.cc}' not found" in message
    assert f"apt-get install {toolchain.debian_packages}" in message


@pytest.mark.parametrize("board", ["stm32l4", "gap9"])
def test_missing_emulator_names_the_package(board, tiny_model, empty_path):
    """The cross toolchain and make are there (symlinked into PATH), QEMU is not."""
    spec = get_board(board)
    assert spec.toolchain is not None and spec.emulator is not None
    for tool in (spec.toolchain.cc, spec.toolchain.nm, "make"):
        found = shutil.which(tool, path=os.defpath + ":/usr/bin:/usr/local/bin")
        if found is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")
        (empty_path / tool).symlink_to(found)
    lib = tvm_tiny.build(tiny_model, target=board)
    with pytest.raises(ToolchainError) as err:
        lib.run_on_board(_x(lib))
    message = str(err.value)
    assert f"'{spec.emulator.binary}' not found" in message
    assert f"apt-get install {spec.emulator.debian_package}" in message


# -- a model too big for the board ----------------------------------------------------------------
def test_model_too_big_for_gap9_l2_names_memory_and_bytes():
    """GAP9 keeps code, weights, arena and stack in one 1.5 MiB L2 (the stm32 cases are in
    test_boards.py): ~2.4 MB of weights must be refused naming L2 and every part's bytes."""
    model = encoder_helper(4, 160, 2, layers=2)
    with pytest.raises(MemoryPlanError) as err:
        tvm_tiny.build(model, target="gap9")
    message = str(err.value)
    match = re.search(r"L2 needs at least (\d+) bytes \(params (\d+) \+ arena (\d+) \+ "
                      r"inputs\+outputs (\d+) \+ runtime statics (\d+) \+ stack (\d+)\), "
                      r"(\d+) available: (\d+) bytes over", message)
    assert match, message
    total, *parts, size, over = (int(g) for g in match.groups())
    assert total == sum(parts) and size == 1536 * 1024 and over == total - size > 0


# -- corrupt tuning logs --------------------------------------------------------------------------
TUNED = (8, 16, 2, 8)  # S, E, H, P of the model the tuning-log tests build (host)
TUNED_ROWS = 3  # rows_per_block of the good record; the default for S = 8 is 8


def _good_record() -> str:
    """One valid tuning-log line for ``mhsa_helper(*TUNED)`` on the host: rows_per_block 3."""
    from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape
    from tvm_tiny.tuning import Workload, config_space
    from tvm_tiny.tuning.log import encode, make_record
    from tvm_tiny.tuning.task import target_string

    s, e, h, p = TUNED
    workload = Workload(MhsaShape(s, e, h, p, e))
    space = config_space(workload, "host")
    entity = space.from_kernel_config(KernelConfig(TUNED_ROWS, False))
    assert entity is not None
    return encode(make_record(target_string(get_board("host")), workload, entity.index,
                              space.record_entity(entity), space.code_hash(entity), [100.0], 0,
                              100.0, 0.0))


def _edit(line: str, edit) -> str:
    data = json.loads(line)
    edit(data)
    return json.dumps(data)


def _build_with_log(tmp_path: Path, text: str | bytes) -> tuple[tvm_tiny.TinyModule, list[str],
                                                                Path]:
    pytest.importorskip("tvm_tiny.tuning")
    path = tmp_path / "tuning.jsonl"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = tvm_tiny.build(mhsa_helper(*TUNED), target="host", tuning_log=str(path))
    from tvm_tiny.tuning import TuningLogWarning

    messages = [str(w.message) for w in caught if issubclass(w.category, TuningLogWarning)]
    return lib, messages, path


def _kernel(lib: tvm_tiny.TinyModule) -> dict:
    (entry,) = lib.metadata["offloaded"]
    return entry["kernel"]


def test_corrupt_lines_are_skipped_naming_them(tmp_path):
    good = _good_record()
    text = (b"not json at all\n" + bytes(range(256)) + b"\n" + good.encode() + b"\n"
            + good[: len(good) // 2].encode() + b"\n")
    lib, messages, path = _build_with_log(tmp_path, text)
    kernel = _kernel(lib)
    assert kernel["rows_per_block"] == TUNED_ROWS, "the one valid record must still apply"
    assert kernel["source"] == f"tuning_log:{path}"
    assert any(str(path) in m and re.search(r"line 1, 2, \d", m) for m in messages), messages


def test_truncated_log_falls_back_to_the_default(tmp_path):
    good = _good_record()
    lib, messages, path = _build_with_log(tmp_path, good[: len(good) - 7])
    kernel = _kernel(lib)
    assert kernel["source"] == "default" and kernel["rows_per_block"] == TUNED[0]
    assert any(str(path) in m and "corrupt" in m for m in messages), messages


@pytest.mark.parametrize("field", ["seq", "rows_per_block"])
def test_record_with_null_fields_is_skipped(field, tmp_path):
    def edit(data: dict) -> None:
        if field == "seq":
            data["input"][2][0][1] = [None, TUNED[1]]
        else:
            data["config"]["entity"][0][2] = [-1, None]

    good = _good_record()
    lib, messages, _ = _build_with_log(tmp_path, _edit(good, edit) + "\n" + good + "\n")
    assert _kernel(lib)["rows_per_block"] == TUNED_ROWS
    assert messages


def test_nan_cost_does_not_mask_a_valid_record(tmp_path):
    good = _good_record()
    nan = _edit(good, lambda d: d["result"].__setitem__(0, [float("nan")]))
    lib, messages, _ = _build_with_log(tmp_path, nan + "\n" + good + "\n")
    assert _kernel(lib)["rows_per_block"] == TUNED_ROWS, _kernel(lib)
    assert messages, "the NaN record should be reported"

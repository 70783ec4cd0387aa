"""Tuning of the int8 MHSA kernel ``tt_mhsa_s8`` (issue 14, deliverable 5).

The int8 task has the float task's path (task, space, measure, log, apply) with two knobs,
``rows_per_block`` and ``fuse_qk``: the int8 kernel's register tile is fixed, so there is no
variant knob. Host-only tests use a small onnxruntime-quantized MHSA; the emulator tests measure
on stm32l4 (and GAP9's cluster model) and check every output bit for bit against the golden
model ``tvm_tiny.reference.mhsa_s8``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tvm_tiny
from tvm_tiny.codegen.mhsa_s8_layout import (
    arrange_s8,
    block_rows_s8,
    cluster_scratch_bytes_s8,
    scratch_bytes_s8,
)
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.kernel_config import KernelVariant, Tile
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, stored_params_bytes
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing.models import example_inputs, mhsa_helper
from tvm_tiny.tuning import measure
from tvm_tiny.tuning.apply import kernel_configs, shipped_log
from tvm_tiny.tuning.log import decode, encode, load_records, make_record
from tvm_tiny.tuning.measure import MeasureErrorNo, MeasureOptions, measure_batch
from tvm_tiny.tuning.space import (
    config_space,
    rows_per_block_candidates,
    rows_per_block_candidates_s8,
)
from tvm_tiny.tuning.task import TASK_NAMES, TuningTask, Workload, extract_tasks

SHAPE = (16, 32, 4, 8)  # S, E, H, P of the test model (E_out = E)
S8 = Workload(MhsaShape(16, 32, 4, 8, 32), DType.INT8)
F32 = Workload(MhsaShape(16, 32, 4, 8, 32))


def _require_board_tools(board: str) -> None:
    b = get_board(board)
    assert b.toolchain is not None and b.emulator is not None
    for tool in (b.toolchain.cc, b.emulator.binary, "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")


@pytest.fixture(scope="module")
def qdq_model():
    """A QDQ MHSA (onnxruntime static quantization, 16 seeded calibration inputs)."""
    model = mhsa_helper(*SHAPE)
    rng = np.random.default_rng(7)
    calibration = [rng.standard_normal((1, SHAPE[0], SHAPE[1])).astype(np.float32)
                   for _ in range(16)]
    return tvm_tiny.quantize(model, calibration)


@pytest.fixture(scope="module")
def task(qdq_model) -> TuningTask:
    (task,) = extract_tasks(qdq_model, "stm32l4")
    return task


def _record(workload: Workload, board: str, values: dict, cost: float, error_no: int = 0):
    space = config_space(workload, board)
    entity = space.entity(values)
    return make_record(f"c -model={board}", workload, entity.index, space.record_entity(entity),
                       space.code_hash(entity), [cost], error_no, cost, 1.0)


# -- task ---------------------------------------------------------------------------------------
def test_int8_mhsa_becomes_an_int8_task(task):
    assert TASK_NAMES[DType.INT8] == "tt_mhsa_s8"
    assert task.name == "tt_mhsa_s8" and task.workload == S8
    assert task.workload.args() == [["TENSOR", [16, 32], "int8"], 4, 8, 32]
    assert task.quant is not None and task.quant.wq.values.dtype == np.int8
    # The default is the build's (by shape: int8 layers are never pruned).
    assert task.default_config() == KernelConfig.default_for(task.shape)
    with pytest.raises(ValueError, match="quantization"):
        TuningTask("stm32l4", S8, task.weights)


def test_int8_and_float_args_do_not_mix():
    args = json.loads(json.dumps(S8.args()))
    assert Workload.from_args("tt_mhsa_s8", args) == S8
    with pytest.raises(ValueError):
        Workload.from_args("tt_mhsa_f32", args)
    with pytest.raises(ValueError):
        Workload.from_args("tt_mhsa_s8", F32.args())
    assert S8.key() != F32.key()


# -- space --------------------------------------------------------------------------------------
def test_int8_space_has_block_rows_and_fwsa_only():
    space = config_space(S8, "stm32l4")
    assert [k.name for k in space.knobs] == ["rows_per_block", "fuse_qk"]
    assert space.knob("rows_per_block").values == (2, 4, 6, 8, 10, 12, 14, 16)
    assert len(space) == 16
    for index in range(len(space)):
        entity = space.get(index)
        assert space.index_of(entity.as_dict()) == index
        assert entity.variant() == KernelVariant()
        assert np.all(np.isfinite(space.features(entity)))
    default = space.from_kernel_config(KernelConfig.default_for(S8.shape))
    assert default is not None and default["rows_per_block"] == 8
    # A float variant does not describe the int8 kernel.
    assert space.from_kernel_config(KernelConfig(8, False), KernelVariant(Tile(4, 4))) is None


@settings(max_examples=25, deadline=None)
@given(seq=st.integers(1, 200))
def test_int8_block_candidates_are_the_blocks_the_kernel_runs(seq):
    """Each candidate is a block size the kernel runs (even, or S), and every block the float
    candidates would run is there exactly once."""
    shape = MhsaShape(seq, 8, 1, 8, 8)
    values = rows_per_block_candidates_s8(seq)
    runs = [block_rows_s8(shape, KernelConfig(x, False)) for x in values]
    assert list(values) == runs == sorted(set(runs))
    assert set(values) == {block_rows_s8(shape, KernelConfig(x, False))
                           for x in rows_per_block_candidates(seq)}


@pytest.mark.parametrize("board", ["stm32l4", "stm32h7", "gap9"])
def test_int8_scratch_is_the_kernel_closed_form(board):
    space = config_space(S8, board)
    cores = get_board(board).cluster_cores
    for index in range(len(space)):
        entity = space.get(index)
        config = entity.kernel_config()
        expected = (cluster_scratch_bytes_s8(S8.shape, config, cores) if cores > 1
                    else scratch_bytes_s8(S8.shape, config))
        assert space.scratch_bytes(entity) == expected


def test_int8_scratch_must_fit_the_fast_memory():
    """S=512 rows: big blocks overflow the STM32H7's DTCM (and GAP9's L1), small ones fit."""
    big = Workload(MhsaShape(512, 64, 4, 16, 64), DType.INT8)
    space = config_space(big, "stm32h7")
    small = space.entity({"rows_per_block": 2, "fuse_qk": False})
    whole = space.entity({"rows_per_block": 512, "fuse_qk": False})
    assert space.is_valid(small)
    assert "does not fit DTCM" in space.check(whole)
    gap9 = config_space(big, "gap9")
    assert "does not fit L1" in gap9.check(gap9.entity({"rows_per_block": 512,
                                                          "fuse_qk": True}))


def test_int8_params_bytes_are_the_arranged_arrays(task):
    """The closed form equals the bytes of ``arrange_s8`` for a layer with biases, fused and
    unfused; onnxruntime's export rounds the projections twice (stage-2 biases)."""
    space = config_space(task)
    assert task.quant is not None and task.quant.q_acc is not None
    for fuse_qk in (False, True):
        entity = space.entity({"rows_per_block": 8, "fuse_qk": fuse_qk})
        arrays = arrange_s8(task.quant, task.shape, entity.kernel_config())
        assert space.params_bytes(entity) == stored_params_bytes(arrays)


# -- records and apply --------------------------------------------------------------------------
def test_int8_records_round_trip(tmp_path):
    record = _record(S8, "stm32l4", {"rows_per_block": 12, "fuse_qk": True}, 1234.0)
    line = encode(record)
    data = json.loads(line)
    assert data["input"][1] == "tt_mhsa_s8"
    assert data["input"][2][0] == ["TENSOR", [16, 32], "int8"]
    assert data["config"]["entity"] == [["rows_per_block", "sp", [-1, 12]],
                                        ["fuse_qk", "ot", True]]
    back = decode(line)
    assert back == record and back.workload == S8
    space = config_space(S8, "stm32l4")
    entity = space.from_record_entity(back.entity)
    assert entity.index == record.config_index and space.code_hash(entity) == record.code_hash
    log = tmp_path / "log.jsonl"
    log.write_text(line + "\n")
    assert load_records(log, board="stm32l4") == [record]


def test_apply_picks_int8_records_without_voting_on_the_float_variant(tmp_path):
    log = tmp_path / "log.jsonl"
    f32 = config_space(F32, "stm32l4")
    records = [
        _record(S8, "stm32l4", {"rows_per_block": 16, "fuse_qk": False}, 500.0),
        _record(S8, "stm32l4", {"rows_per_block": 4, "fuse_qk": True}, 400.0),
        _record(S8, "stm32l4", {"rows_per_block": 2, "fuse_qk": True}, 10.0, error_no=5),
        _record(F32, "stm32l4", {"rows_per_block": 8, "fuse_qk": False, "tile": "4x2",
                                 "fma": False}, 900.0),
    ]
    assert f32.is_valid(f32.get(records[-1].config_index))
    log.write_text("".join(encode(r) + "\n" for r in records))
    applied = kernel_configs({"s8": S8, "f32": F32}, "stm32l4", str(log))
    assert applied["s8"].config == KernelConfig(4, True)
    assert str(applied["s8"].origin) == f"tuning_log:{log}"
    assert applied["s8"].record is not None and applied["s8"].record.mean_cost == 400.0
    # The float record's variant is the model's; the int8 record did not veto it.
    assert applied["f32"].variant == KernelVariant(Tile(4, 2), False)
    assert applied["f32"].config == KernelConfig(8, False)
    # Only int8 in the model: its record applies on its own.
    (alone,) = kernel_configs({"s8": S8}, "stm32l4", str(log)).values()
    assert alone.config == KernelConfig(4, True) and alone.variant == KernelVariant()


def test_build_applies_an_int8_record(qdq_model, tmp_path):
    log = tmp_path / "stm32l4.jsonl"
    log.write_text(encode(_record(S8, "stm32l4", {"rows_per_block": 4, "fuse_qk": True},
                                  100.0)) + "\n")
    lib = tvm_tiny.build(qdq_model, target="stm32l4", tuning_log=str(log))
    (entry,) = lib.metadata["offloaded"]
    assert entry["dtype"] == "int8"
    kernel = entry["kernel"]
    assert kernel["source"] == f"tuning_log:{log}"
    assert (kernel["rows_per_block"], kernel["fuse_qk"]) == (4, True)
    assert entry["scratch_bytes"] == scratch_bytes_s8(S8.shape, KernelConfig(4, True))
    source = next(text for path, text in lib.files.items() if entry["function"] in text
                  and path.endswith(".c") and "rows_per_block = 4" in text)
    assert "tuning_log:" in source  # the header says where the config came from
    # Without the log: the board default (or a shipped record), never this one.
    default = tvm_tiny.build(qdq_model, target="stm32l4").metadata["offloaded"][0]["kernel"]
    assert default["source"] in ("default", "shipped:stm32l4.jsonl")


@pytest.mark.parametrize("board", ["stm32l4", "stm32h7", "gap9"])
def test_shipped_int8_records_are_valid_and_apply(board):
    path = shipped_log(board)
    records = [r for r in load_records(path, board=board) if r.task_name == "tt_mhsa_s8"]
    if not records:
        pytest.skip(f"no int8 records shipped for {board} (benchmarks/tuning.py --int8 --ship)")
    for record in records:
        assert record.ok and record.cost_unit == "instructions"
        space = config_space(record.workload, board)
        entity = space.from_record_entity(record.entity)
        assert space.is_valid(entity) and record.code_hash == space.code_hash(entity)
        (applied,) = kernel_configs({"m": record.workload}, board).values()
        assert str(applied.origin) == f"shipped:{board}.jsonl"
        assert applied.config == entity.kernel_config()


# -- measurement on the emulator ----------------------------------------------------------------
@pytest.mark.emulator
@pytest.mark.parametrize("board", ["stm32l4", "gap9"])
def test_measured_batch_is_bit_exact(qdq_model, board):
    """Every config of a batch runs in one firmware; its int8 output equals the golden model
    of its own program (FWSA included) bit for bit."""
    _require_board_tools(board)
    (task,) = extract_tasks(qdq_model, board)
    space = config_space(task)
    indices = [space.index_of({"rows_per_block": x, "fuse_qk": f})
               for x in (2, 8, 16) for f in (False, True)]
    batch = measure_batch(task, indices, MeasureOptions(qdq_tolerance_steps=None))
    assert batch.firmwares == 1 and batch.task == "tt_mhsa_s8"
    assert batch.modelled == (board == "gap9")
    for result in batch.results:
        assert result.ok, result.error_msg
        assert result.max_error == 0.0 and 1e4 < result.mean_cost < 1e8
    costs = {space.get(r.index).kernel_config(): r.mean_cost for r in batch.results}
    assert len(set(costs.values())) > 1  # the knobs change the code that runs


@pytest.mark.emulator
def test_a_wrong_int8_answer_is_caught(task, monkeypatch):
    _require_board_tools("stm32l4")
    real = measure.reference_mhsa_s8

    def off_by_one(x, params, shape, config):  # noqa: ANN001, ANN202 -- test double
        y = real(x, params, shape, config).astype(np.int16)
        y[0, 0] = y[0, 0] + 1 if y[0, 0] < 127 else y[0, 0] - 1
        return y.astype(np.int8)

    monkeypatch.setattr(measure, "reference_mhsa_s8", off_by_one)
    (result,) = measure_batch(task, [config_space(task).index_of(
        {"rows_per_block": 8, "fuse_qk": False})]).results
    assert result.error_no == MeasureErrorNo.WRONG_ANSWER
    assert "1 of 512 int8 outputs differ" in result.error_msg and result.max_error == 1.0


@pytest.mark.emulator
def test_tune_then_build_runs_the_measured_kernel(qdq_model, tmp_path):
    """A short tuning run logs int8 records; the build applies the best, and the deployed
    kernel runs what was measured (a few instructions of call overhead apart)."""
    _require_board_tools("stm32l4")
    log = tmp_path / "stm32l4.jsonl"
    (result,) = tvm_tiny.tune(qdq_model, target="stm32l4", trials=6, log=str(log), seed=0)
    records = load_records(log, board="stm32l4")
    assert len(records) == 6 and all(r.task_name == "tt_mhsa_s8" for r in records)
    # the FWSA configs of this layer depart from the exported rounding: logged as wrong answers
    assert all(r.ok != r.entity_values()["fuse_qk"] for r in records)
    assert result.default_cost is not None and result.best_cost <= result.default_cost
    best = min(records, key=lambda r: r.mean_cost)
    lib = tvm_tiny.build(qdq_model, target="stm32l4", tuning_log=str(log))
    (entry,) = lib.metadata["offloaded"]
    assert entry["kernel"]["source"] == f"tuning_log:{log}"
    assert entry["kernel"]["rows_per_block"] == best.entity_values()["rows_per_block"][1]
    inputs = list(example_inputs(qdq_model, seed=0).values())
    run = lib.run_on_board(*inputs)
    np.testing.assert_array_equal(run.outputs[0], lib.run(*inputs)[0])
    assert abs(run.per_kernel[entry["name"]] - best.mean_cost) <= 32


def test_fwsa_far_from_the_exported_rounding_is_a_wrong_answer(qdq_model):
    """By default an FWSA config whose program is more than one step from the exported graph's
    (separate Q and K) is refused before it runs, naming the departure; the unfused configs of
    the same batch are not affected (no emulator needed: nothing reaches it)."""
    (task,) = extract_tasks(qdq_model, "stm32l4")
    space = config_space(task)
    fused = space.index_of({"rows_per_block": 8, "fuse_qk": True})
    (result,) = measure_batch(task, [fused]).results
    assert result.error_no == MeasureErrorNo.WRONG_ANSWER
    assert "FWSA departs from the exported rounding points" in result.error_msg
    assert KernelConfig.default_for(task.shape, dtype=DType.INT8).fuse_qk is False

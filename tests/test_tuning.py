"""Kernel tuning (tvm_tiny/tuning): config space, logs, measurement, tuners, apply-best.

Emulator tests tune ``tests/data/mhsa_helper_mul.onnx`` (S=8, E=16, H=2, P=8; no shipped record
exists for it) on stm32h7 once per session (16 trials) and build it with the log. Everything
else runs without QEMU: tuners are driven by a synthetic measurer, logs and apply-best by
hand-made records, and the kernel variants are compiled with host gcc.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import tvm_tiny
from tvm_tiny.codegen.variant import config_header
from tvm_tiny.ir.kernel_config import TILES, KernelVariant, Tile
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, arrange_f32
from tvm_tiny.reference.mhsa_f32 import reference_mhsa_f32
from tvm_tiny.targets.boards import KIB, Memory, MemoryKind, get_board
from tvm_tiny.targets.resources import kernels_dir
from tvm_tiny.targets.toolchain import compile_host_library
from tvm_tiny.tuning import measure
from tvm_tiny.tuning.apply import kernel_configs, shipped_log
from tvm_tiny.tuning.log import (
    TuningLogWarning,
    best_records,
    decode,
    encode,
    load_records,
    make_record,
)
from tvm_tiny.tuning.measure import MeasureErrorNo, MeasureResult, measure_batch
from tvm_tiny.tuning.space import KnobType, config_space, rows_per_block_candidates
from tvm_tiny.tuning.task import TuningTask, Workload, extract_tasks, target_string
from tvm_tiny.tuning.tuner import GridTuner, RandomTuner, XGBTuner, tune_task

MODEL = "mhsa_helper_mul"
SMALL = Workload(MhsaShape(8, 16, 2, 8, 16))
TUNE_TRIALS = 16


def _require_board_tools(board: str = "stm32h7") -> None:
    b = get_board(board)
    assert b.toolchain is not None and b.emulator is not None
    for tool in (b.toolchain.cc, b.emulator.binary, "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")


def _synthetic_cost(space, index: int) -> float:
    """A deterministic landscape with structure the cost model can learn."""
    e = space.get(index)
    x = e["rows_per_block"]
    tile = {"2x2": 1.0, "2x4": 0.9, "4x2": 0.92, "4x4": 0.8}[e["tile"]]
    return 1e6 * tile * (0.7 if e["fma"] else 1.0) * (1.3 if e["fuse_qk"] else 1.0) \
        * (1.0 + 0.3 / x + 0.05 * (x % 2))


def synthetic_measurer(calls: list[list[int]] | None = None):
    def measure_fn(task: TuningTask, indices: list[int]) -> list[MeasureResult]:
        if calls is not None:
            calls.append(list(indices))
        space = config_space(task)
        return [MeasureResult(i, (_synthetic_cost(space, i),), MeasureErrorNo.NO_ERROR)
                for i in indices]
    return measure_fn


@pytest.fixture(scope="session")
def small_task(data_dir) -> TuningTask:
    (task,) = extract_tasks(data_dir / f"{MODEL}.onnx", "stm32h7")
    return task


# -- tasks ------------------------------------------------------------------------------------
def test_one_task_per_distinct_workload(data_dir):
    """The two layers of the encoder share one workload, so one task covers both MHSAs."""
    (task,) = extract_tasks(data_dir / "encoder_helper_relu.onnx", "gap9")
    assert task.board == "gap9" and len(task.symbols) == 2
    assert task.workload == Workload(MhsaShape(8, 16, 2, 8, 16))
    assert task.name == "tt_mhsa_f32"
    assert task.target.endswith("-model=gap9")


def test_workload_args_round_trip():
    args = SMALL.args()
    assert args == [["TENSOR", [8, 16], "float32"], 2, 8, 16]
    assert Workload.from_args("tt_mhsa_f32", json.loads(json.dumps(args))) == SMALL
    with pytest.raises(ValueError):
        Workload.from_args("tt_mhsa_s8", args)


# -- config space -----------------------------------------------------------------------------
def test_space_knobs_and_index_round_trip():
    space = config_space(SMALL, "stm32h7")
    assert [(k.name, k.type) for k in space.knobs] == [
        ("rows_per_block", KnobType.SPLIT), ("fuse_qk", KnobType.OTHER),
        ("tile", KnobType.OTHER), ("fma", KnobType.OTHER)]
    assert len(space) == len(rows_per_block_candidates(8)) * 2 * len(TILES) * 2
    for index in range(len(space)):
        entity = space.get(index)
        assert space.index_of(entity.as_dict()) == index
        assert space.from_record_entity(json.loads(json.dumps(space.record_entity(entity)))) \
            == entity
    with pytest.raises(IndexError):
        space.get(len(space))
    with pytest.raises(ValueError, match="rows_per_block"):
        space.index_of({"rows_per_block": 99, "fuse_qk": False, "tile": "2x2", "fma": False})
    default = space.from_kernel_config(KernelConfig.default_for(SMALL.shape))
    assert default is not None and default.kernel_config() == KernelConfig(8, False)
    assert default.variant() == KernelVariant()


def test_rows_per_block_candidates():
    assert rows_per_block_candidates(8) == tuple(range(1, 9))
    values = rows_per_block_candidates(66)
    assert values[:16] == tuple(range(1, 17)) and {17, 22, 33, 66} <= set(values)
    assert all(1 <= v <= 66 for v in values)


def test_split_knob_records_as_autotvm_split():
    space = config_space(SMALL, "stm32h7")
    entity = space.entity({"rows_per_block": 4, "fuse_qk": True, "tile": "4x2", "fma": True})
    assert space.record_entity(entity) == [["rows_per_block", "sp", [-1, 4]],
                                           ["fuse_qk", "ot", True], ["tile", "ot", "4x2"],
                                           ["fma", "ot", True]]
    assert entity.kernel_config() == KernelConfig(4, True)
    assert entity.variant() == KernelVariant(Tile(4, 2), True)


def test_fast_memory_sizes_come_from_the_boards():
    assert get_board("stm32h7").fast_memory_bytes() == 128 * KIB - 8 * KIB  # DTCM minus stack
    assert get_board("gap9").fast_memory_bytes() == 128 * KIB  # L1 (stack lives in L2)
    assert get_board("stm32l4").fast_memory_bytes() == 96 * KIB  # the data memory


def test_scratch_must_fit_dtcm_on_stm32h7():
    """Long sequence: unfused scratch is 2SP + x(2P + S) floats; x = 256 needs 320 KiB."""
    space = config_space(Workload(MhsaShape(256, 64, 4, 16, 64)), "stm32h7")
    small = space.entity({"rows_per_block": 8, "fuse_qk": False, "tile": "2x2", "fma": False})
    large = space.entity({"rows_per_block": 256, "fuse_qk": False, "tile": "2x2",
                          "fma": False})
    assert space.check(small) is None
    reason = space.check(large)
    assert reason is not None and "DTCM" in reason and str(space.scratch_bytes(large)) in reason
    assert 0 < len(space.valid_indices()) < len(space)


def test_cluster_scratch_must_fit_l1_on_gap9():
    """GAP9 runs 8 head scratches plus 7 partial outputs in L1: large blocks do not fit."""
    space = config_space(Workload(MhsaShape(66, 16, 8, 2, 16)), "gap9")
    fits = space.entity({"rows_per_block": 8, "fuse_qk": False, "tile": "2x2", "fma": False})
    too_big = space.entity({"rows_per_block": 66, "fuse_qk": False, "tile": "2x2",
                            "fma": False})
    assert space.check(fits) is None
    assert space.scratch_bytes(too_big) > 128 * KIB
    assert "L1" in (space.check(too_big) or "")


def test_weights_must_fit_the_code_memory():
    """FWSA stores H*E*E Q/K weights: with E >> P it is the variant that does not fit."""
    board = get_board("stm32l4")
    small_flash = dataclasses.replace(board, memories=(
        Memory("FLASH", MemoryKind.FLASH, 0x0800_0000, 256 * KIB, 0),
        *board.memories[1:]))
    space = config_space(Workload(MhsaShape(8, 256, 2, 16, 256)), small_flash)
    unfused = space.entity({"rows_per_block": 8, "fuse_qk": False, "tile": "2x2", "fma": False})
    fused = space.entity({"rows_per_block": 8, "fuse_qk": True, "tile": "2x2", "fma": False})
    assert space.check(unfused) is None
    assert "FLASH" in (space.check(fused) or "")


def test_features_are_finite_and_fixed_length():
    space = config_space(Workload(MhsaShape(66, 16, 8, 2, 16)), "gap9")
    matrix = space.feature_matrix(list(range(len(space))))
    assert matrix.shape[0] == len(space) and np.all(np.isfinite(matrix))
    assert len({tuple(row) for row in matrix}) == len(space)  # every config is distinguishable


# -- logs ---------------------------------------------------------------------------------------
def _record(index: int, cost: float, board: str = "stm32h7", error_no: int = 0,
            workload: Workload = SMALL):
    space = config_space(workload, board)
    entity = space.get(index)
    return make_record(target_string(get_board(board)), workload, index,
                       space.record_entity(entity), space.code_hash(entity),
                       [cost] if error_no == 0 else [1e9], error_no, cost, 1.7e9)


def test_log_round_trip_and_autotvm_layout(tmp_path):
    record = _record(5, 12345.0)
    line = encode(record)
    data = json.loads(line)
    target, task_name, args, kwargs = data["input"]
    assert target.startswith("c ") and target.endswith("-model=stm32h7")
    assert task_name == "tt_mhsa_f32" and args == SMALL.args() and kwargs == {}
    assert set(data["config"]) == {"index", "code_hash", "entity"}
    assert data["config"]["index"] == 5
    assert all(len(e) == 3 and e[1] in ("sp", "ot") for e in data["config"]["entity"])
    costs, error_no, all_cost, timestamp = data["result"]
    assert costs == [12345.0] and error_no == 0 and all_cost == 12345.0 and timestamp > 0
    assert data["version"] == 0.2 and data["tvm_tiny_version"] == tvm_tiny.__version__
    assert data["cost_unit"] == "instructions"
    assert decode(line) == record
    path = tmp_path / "log.jsonl"
    from tvm_tiny.tuning.log import append_records

    append_records(path, [record])
    append_records(path, [_record(6, 100.0)])
    assert [r.config_index for r in load_records(path)] == [5, 6]
    assert path.read_text().count("\n") == 2


def test_corrupt_lines_and_other_boards_warn_and_are_skipped(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join([
        encode(_record(1, 500.0)),
        '{"input": ["c -model=stm32h7", "tt_mhsa_f32"',  # truncated line
        "not json at all",
        encode(_record(2, 100.0, board="gap9")),
        json.dumps({"input": [], "config": {}, "result": []}),  # JSON, but not a record
        encode(_record(3, 300.0)),
    ]) + "\n")
    with pytest.warns(TuningLogWarning) as caught:
        records = load_records(path, board="stm32h7")
    messages = " | ".join(str(w.message) for w in caught)
    assert "3 corrupt line(s) (line 2, 3, 5" in messages
    assert "1 record(s) for board 'gap9' (line 4)" in messages and "never applied" in messages
    assert [r.config_index for r in records] == [1, 3]
    # Without a board filter every well-formed record is read (corrupt lines still warn).
    with pytest.warns(TuningLogWarning):
        assert len(load_records(path)) == 3


@pytest.mark.parametrize("edit", [
    lambda d: d["input"][2][0][1].__setitem__(0, None),  # null dimension
    lambda d: d["config"]["entity"][0].__setitem__(2, [-1, None]),  # null split
    lambda d: d["config"]["entity"][0].__setitem__(2, [-1, 2.5]),  # non-integer split
    lambda d: d["result"].__setitem__(0, [float("nan")]),  # NaN cost of a valid record
    lambda d: d["result"].__setitem__(0, []),  # no cost
    lambda d: d.__setitem__("cost_unit", "seconds"),  # not an instruction count
], ids=["null-dim", "null-split", "float-split", "nan-cost", "no-cost", "seconds"])
def test_records_with_bad_values_are_corrupt_lines(edit, tmp_path):
    data = json.loads(encode(_record(3, 300.0)))
    edit(data)
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(data) + "\n" + encode(_record(4, 400.0)) + "\n")
    with pytest.warns(TuningLogWarning, match="1 corrupt line"):
        (record,) = load_records(path, board="stm32h7")
    assert record.config_index == 4


def test_best_records_ignore_errors():
    records = [_record(1, 500.0), _record(2, 50.0, error_no=4), _record(3, 300.0),
               _record(4, 300.0)]
    (best,) = best_records(records).values()
    assert best.config_index == 3 and best.mean_cost == 300.0
    assert records[1].mean_cost == math.inf


def test_apply_best_record_per_workload(tmp_path):
    space = config_space(SMALL, "stm32h7")
    fast = space.index_of({"rows_per_block": 4, "fuse_qk": True, "tile": "4x4", "fma": True})
    failed = space.index_of({"rows_per_block": 2, "fuse_qk": False, "tile": "2x4",
                             "fma": True})
    log = tmp_path / "log.jsonl"
    log.write_text("".join(encode(r) + "\n" for r in [
        _record(0, 900.0), _record(fast, 400.0), _record(failed, 10.0, error_no=5),
        _record(fast, 1.0, board="gap9")]))
    other = Workload(MhsaShape(4, 16, 2, 8, 16))
    with pytest.warns(TuningLogWarning, match="gap9"):
        applied = kernel_configs({"a": SMALL, "b": other}, "stm32h7", str(log))
    assert applied["a"].config == KernelConfig(4, True)
    assert applied["a"].variant == KernelVariant(Tile(4, 4), True)
    assert str(applied["a"].origin) == f"tuning_log:{log}"
    # No record for b: its default config, with the firmware's (shared) variant.
    assert str(applied["b"].origin) == "default"
    assert applied["b"].config == KernelConfig.default_for(other.shape)
    assert applied["b"].variant == applied["a"].variant
    # Built for another board, the stm32h7 records never apply (the gap9 one does).
    with pytest.warns(TuningLogWarning, match="never applied"):
        (on_gap9,) = kernel_configs({"a": SMALL}, "gap9", str(log)).values()
    assert str(on_gap9.origin) == f"tuning_log:{log}" and on_gap9.record.mean_cost == 1.0
    with pytest.warns(TuningLogWarning, match="never applied"):
        (plain,) = kernel_configs({"a": SMALL}, "stm32l4", str(log)).values()
    assert str(plain.origin) == "default"


def test_apply_one_variant_per_firmware(tmp_path):
    """Two workloads whose best records use different variants share the variant with the
    lowest total, each taking its best record with it."""
    other = Workload(MhsaShape(4, 16, 2, 8, 16))
    sa, so = config_space(SMALL, "stm32h7"), config_space(other, "stm32h7")

    def idx(space, rows, tile, fma):
        return space.index_of({"rows_per_block": rows, "fuse_qk": False, "tile": tile,
                               "fma": fma})

    log = tmp_path / "log.jsonl"
    log.write_text("".join(encode(r) + "\n" for r in [
        _record(idx(sa, 8, "4x4", True), 100.0),  # a: best with 4x4+fma
        _record(idx(sa, 4, "2x4", False), 150.0),
        _record(idx(so, 4, "2x4", False), 60.0, workload=other),  # b: best with 2x4
        _record(idx(so, 2, "4x4", True), 200.0, workload=other),
    ]))
    applied = kernel_configs({"a": SMALL, "b": other}, "stm32h7", str(log))
    # 4x4+fma: 100 + 200 = 300; 2x4: 150 + 60 = 210 -> 2x4 for both.
    assert {a.variant for a in applied.values()} == {KernelVariant(Tile(2, 4), False)}
    assert applied["a"].config == KernelConfig(4, False)
    assert applied["b"].config == KernelConfig(4, False)


def test_build_for_host_ignores_records_of_a_board(tmp_path, data_dir):
    log = tmp_path / "log.jsonl"
    log.write_text(encode(_record(3, 100.0)) + "\n")
    with pytest.warns(TuningLogWarning, match="board 'stm32h7'"):
        lib = tvm_tiny.build(data_dir / f"{MODEL}.onnx", target="host", tuning_log=str(log))
    (entry,) = lib.metadata["offloaded"]
    assert entry["kernel"]["source"] == "default"
    assert not any(p.endswith("tt_mhsa_f32_config.h") for p in lib.files)


def test_shipped_logs_apply_without_a_tuning_log():
    """A shipped record applies to builds of its workload on its board (source 'shipped')."""
    path = shipped_log("stm32h7")
    if not path.exists():
        pytest.skip("no shipped log for stm32h7 (benchmarks/tuning.py --ship)")
    records = load_records(path, board="stm32h7")
    assert records and all(r.ok for r in records)
    workload = records[0].workload
    (applied,) = kernel_configs({"m": workload}, "stm32h7").values()
    assert str(applied.origin) == "shipped:stm32h7.jsonl"
    best = min((r for r in records if r.workload == workload), key=lambda r: r.mean_cost)
    assert applied.record is not None and applied.record.mean_cost == best.mean_cost


# -- tuners (synthetic measurements) ----------------------------------------------------------
@pytest.mark.parametrize("tuner_cls", [XGBTuner, RandomTuner, GridTuner],
                         ids=["xgb", "random", "grid"])
def test_tuners_propose_valid_unmeasured_configs(small_task, tuner_cls):
    calls: list[list[int]] = []
    tuner = tuner_cls(small_task, seed=3)
    result = tune_task(small_task, tuner, 40, synthetic_measurer(calls), batch_size=8)
    proposed = [i for batch in calls for i in batch]
    assert len(proposed) == len(set(proposed)) == 40 == result.trials
    assert set(proposed) <= set(tuner.valid)
    space = tuner.space
    default = space.from_kernel_config(small_task.default_config())
    assert default.index in calls[0]  # the default is always in the first batch
    assert result.best_cost == min(_synthetic_cost(space, i) for i in proposed)
    assert [best for _, _, best in result.history] == sorted(
        (best for _, _, best in result.history), reverse=True)


def test_xgb_tuner_is_deterministic(small_task):
    def run(seed: int) -> list[list[int]]:
        calls: list[list[int]] = []
        tune_task(small_task, XGBTuner(small_task, seed=seed), 32, synthetic_measurer(calls))
        return calls

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_xgb_beats_random_on_a_structured_landscape(small_task):
    """The cost model finds the synthetic optimum faster than random search on average."""
    space = config_space(small_task)
    best = min(_synthetic_cost(space, i) for i in space.valid_indices())

    def trials_to_best(tuner) -> int:
        result = tune_task(small_task, tuner, len(space), synthetic_measurer())
        return next(t for t, _, b in result.history if b <= best * 1.02)

    xgb = [trials_to_best(XGBTuner(small_task, seed=s)) for s in range(4)]
    rnd = [trials_to_best(RandomTuner(small_task, seed=s)) for s in range(4)]
    assert sum(xgb) < sum(rnd), (xgb, rnd)


def test_resume_with_a_fake_measurer_skips_measured(small_task, tmp_path):
    log = tmp_path / "log.jsonl"
    first: list[list[int]] = []
    tune_task(small_task, XGBTuner(small_task, 0), 16, synthetic_measurer(first), log=log)
    again: list[list[int]] = []
    result = tune_task(small_task, XGBTuner(small_task, 0), 24, synthetic_measurer(again),
                       log=log)
    before = {i for b in first for i in b}
    after = [i for b in again for i in b]
    assert result.resumed == 16 and len(after) == 8 and not before & set(after)
    assert len(load_records(log)) == 24
    rerun: list[list[int]] = []
    tune_task(small_task, XGBTuner(small_task, 0), 24, synthetic_measurer(rerun), log=log)
    assert rerun == []  # nothing left to measure: the log holds the whole budget


# -- kernel variants (host gcc) ---------------------------------------------------------------
@pytest.fixture(scope="session")
def variant_kernels():
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found (Debian package gcc)")
    libs = {}
    files = {"src/tt_mhsa_f32.c": (kernels_dir() / "mhsa/tt_mhsa_f32.c").read_text()}
    for header in ("tt_mhsa.h", "tt_status.h"):
        files[f"include/{header}"] = (kernels_dir() / "include" / header).read_text()
    for tile in (*TILES, Tile(1, 1), Tile(1, 4), Tile(4, 1)):
        for fma in (False, True):
            variant = KernelVariant(tile, fma)
            flags = tuple(f"-D{k}={v}" for k, v in variant.macros().items())
            libs[variant] = ctypes.CDLL(str(compile_host_library(
                files, ["src/tt_mhsa_f32.c"], ["include"], f"tt_mhsa_{variant.name}", flags)))
    return libs


class _Dims(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("seq", "embed", "heads", "proj", "out_features")]


class _Config(ctypes.Structure):
    _fields_ = [("rows_per_block", ctypes.c_int32), ("fuse_qk", ctypes.c_int32)]


_FIELDS = ("wq", "bq", "wk", "bk", "wf", "bf", "wv", "bv", "wo", "bo")


class _Params(ctypes.Structure):
    _fields_ = [(n, ctypes.POINTER(ctypes.c_float)) for n in _FIELDS] + [
        ("scale", ctypes.c_float), ("sparse", ctypes.c_void_p)]


def _run_kernel(lib, shape: MhsaShape, config: KernelConfig, weights, x) -> np.ndarray:
    arrays = arrange_f32(weights, shape, config)
    params = _Params(scale=weights.scale)
    for name, array in arrays.items():
        setattr(params, name, array.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    from tvm_tiny.ir.mhsa import scratch_bytes

    nbytes = scratch_bytes(shape, config)
    scratch = np.zeros(nbytes // 4 + 1, np.float32)
    y = np.zeros((shape.seq, shape.out_features), np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    status = lib.tt_mhsa_f32(
        ctypes.byref(_Dims(shape.seq, shape.embed, shape.heads, shape.proj,
                           shape.out_features)),
        ctypes.byref(_Config(config.rows_per_block, int(config.fuse_qk))), ctypes.byref(params),
        x.ctypes.data_as(fp), y.ctypes.data_as(fp), scratch.ctypes.data_as(fp), nbytes)
    assert status == 0
    return y


@pytest.mark.parametrize("shape", [MhsaShape(13, 10, 3, 5, 7), MhsaShape(9, 8, 2, 4, 9),
                                   MhsaShape(1, 3, 1, 1, 2)], ids=str)
def test_kernel_variants_match_the_reference(variant_kernels, shape):
    """Every tile (odd edges included) and FMA form is correct; without FMA all tiles compute
    the same sums in the same order, so they are bit-identical to the reference 2x2."""
    rng = np.random.default_rng(0)
    e, hp = shape.embed, shape.heads * shape.proj

    def mat(r, c):
        return (rng.standard_normal((r, c)) / np.sqrt(r)).astype(np.float32)

    from tvm_tiny.ir.mhsa import MhsaWeights

    weights = MhsaWeights(mat(e, hp), mat(e, hp), mat(e, hp), mat(hp, shape.out_features),
                          *(rng.standard_normal(n).astype(np.float32)
                            for n in (hp, hp, hp, shape.out_features)),
                          scale=float(1 / np.sqrt(shape.proj)))
    x = rng.standard_normal((shape.seq, shape.embed)).astype(np.float32)
    ref = reference_mhsa_f32(x, weights, shape.heads)
    for rows in sorted({1, 2, 3, shape.seq}):
        for fuse in (False, True):
            config = KernelConfig(rows, fuse)
            baseline = _run_kernel(variant_kernels[KernelVariant()], shape, config, weights, x)
            for variant, lib in variant_kernels.items():
                y = _run_kernel(lib, shape, config, weights, x)
                np.testing.assert_allclose(y, ref, rtol=1e-5, atol=3e-5, err_msg=variant.name)
                if not variant.fma:
                    np.testing.assert_array_equal(y, baseline, err_msg=variant.name)


def test_variant_config_header():
    header = config_header(KernelVariant(Tile(4, 2), True), "tuning_log:x.jsonl")
    assert "#define TT_MHSA_F32_TILE_ROWS 4" in header
    assert "#define TT_MHSA_F32_TILE_COLS 2" in header and "#define TT_MHSA_F32_FMA 1" in header
    with pytest.raises(ValueError, match="3x2"):
        Tile(3, 2)
    with pytest.raises(ValueError, match="not <rows>x<cols>"):
        Tile.parse("4by2")
    assert Tile.parse("4x2") == Tile(4, 2) and Tile(4, 2).name == "4x2"


# -- measurement and tuning on the emulator ---------------------------------------------------
@pytest.fixture(scope="session")
def tuned(tmp_path_factory, data_dir):
    """16 trials of XGBoost on stm32h7 for the small MHSA: (log path, task results)."""
    _require_board_tools()
    log = tmp_path_factory.mktemp("tuning") / "stm32h7.jsonl"
    results = tvm_tiny.tune(data_dir / f"{MODEL}.onnx", target="stm32h7", trials=TUNE_TRIALS,
                            log=str(log), tuner="xgb", seed=0)
    return log, results


@pytest.mark.emulator
def test_short_tuning_run_writes_valid_records(tuned, small_task):
    log, (result,) = tuned
    records = load_records(log, board="stm32h7")
    assert len(records) == TUNE_TRIALS == result.trials
    space = config_space(small_task)
    assert len({r.config_index for r in records}) == TUNE_TRIALS
    for record in records:
        assert record.workload == small_task.workload and record.cost_unit == "instructions"
        entity = space.from_record_entity(record.entity)
        assert entity.index == record.config_index and space.is_valid(entity)
        assert record.code_hash == space.code_hash(entity)
    assert all(r.error_no == 0 for r in records), [r for r in records if r.error_no]
    ok = [r.mean_cost for r in records]
    assert result.best_cost == min(ok) and result.default_cost in ok
    assert result.best_cost <= result.default_cost


@pytest.mark.emulator
def test_build_with_the_log_uses_the_best_record(tuned, data_dir, model_inputs, reference):
    from conftest import assert_outputs_close

    log, _ = tuned
    (best,) = best_records(load_records(log)).values()
    values = best.entity_values()
    path = data_dir / f"{MODEL}.onnx"
    tuned_lib = tvm_tiny.build(path, target="stm32h7", tuning_log=str(log))
    default_lib = tvm_tiny.build(path, target="stm32h7")
    (entry,) = tuned_lib.metadata["offloaded"]
    kernel = entry["kernel"]
    assert kernel["source"] == f"tuning_log:{log}"
    assert (kernel["rows_per_block"], kernel["fuse_qk"], kernel["tile"], kernel["fma"]) == (
        values["rows_per_block"][1], values["fuse_qk"], values["tile"], values["fma"])
    assert default_lib.metadata["offloaded"][0]["kernel"]["source"] == "default"
    inputs = list(model_inputs(MODEL).values())
    assert_outputs_close(tuned_lib.run(*inputs), reference(MODEL))
    tuned_run = tuned_lib.run_on_board(*inputs)
    default_run = default_lib.run_on_board(*inputs)
    assert_outputs_close(tuned_run.outputs, reference(MODEL))
    name = entry["name"]
    assert tuned_run.per_kernel[name] <= default_run.per_kernel[name]
    # The deployed kernel runs what was measured: the same instance and variant (a few
    # instructions of call overhead differ between the harnesses).
    assert abs(tuned_run.per_kernel[name] - best.mean_cost) <= 32


@pytest.mark.emulator
def test_resume_measures_only_new_configs(tuned, data_dir, tmp_path):
    log, _ = tuned
    copy = tmp_path / "resume.jsonl"
    copy.write_text(log.read_text())
    before = {r.config_index for r in load_records(copy)}
    (result,) = tvm_tiny.tune(data_dir / f"{MODEL}.onnx", target="stm32h7",
                              trials=TUNE_TRIALS + 4, log=str(copy), seed=0)
    records = load_records(copy)
    new = [r.config_index for r in records[len(before):]]
    assert result.resumed == TUNE_TRIALS and result.trials == 4 == len(new)
    assert not before & set(new)


_HANG = """
int32_t tt_test_hang(const void *const *args, void *const *outs, uint8_t *s, int32_t n);
int32_t tt_test_hang(const void *const *args, void *const *outs, uint8_t *s, int32_t n) {
  (void)args;
  (void)outs;
  (void)s;
  (void)n;
  for (;;) {
  }
}
"""


@pytest.mark.emulator
def test_failing_configs_get_error_numbers_and_others_are_measured(small_task, monkeypatch):
    """A config that does not compile, one whose kernel fails at run time, one that hangs and
    an invalid index each get an AutoTVM error number; the rest of the batch is measured."""
    _require_board_tools()
    space = config_space(small_task)
    good, broken, failing, hanging, after = space.valid_indices()[:5]
    real_instance = measure._instance

    def instance(task, sp, entity):
        kernel = real_instance(task, sp, entity)
        if entity.index == broken:
            return dataclasses.replace(kernel, source=kernel.source + "\n#error broken\n")
        if entity.index == failing:  # one float short: the kernel returns TT_SCRATCH_ERROR
            return dataclasses.replace(kernel, scratch_bytes=kernel.scratch_bytes - 4)
        if entity.index == hanging:
            return dataclasses.replace(kernel, source=kernel.source + _HANG,
                                       c_function="tt_test_hang")
        return kernel

    monkeypatch.setattr(measure, "_instance", instance)
    batch = measure_batch(small_task, [good, broken, failing, hanging, after, len(space) + 5],
                          measure.MeasureOptions(timeout_s=8))
    by_index = {r.index: r for r in batch.results}
    assert by_index[good].ok and by_index[good].costs[0] > 0
    assert by_index[after].ok  # measured again, in a firmware without the hanging config
    assert by_index[hanging].error_no == MeasureErrorNo.RUN_TIMEOUT
    assert by_index[broken].error_no == MeasureErrorNo.COMPILE_DEVICE
    assert "broken" in by_index[broken].error_msg
    assert by_index[failing].error_no == MeasureErrorNo.RUNTIME_DEVICE
    assert "status -2" in by_index[failing].error_msg
    assert by_index[len(space) + 5].error_no == MeasureErrorNo.INSTANTIATION_ERROR
    assert batch.cost_unit == "instructions"


@pytest.mark.emulator
def test_wrong_answers_are_caught(small_task, monkeypatch):
    _require_board_tools()
    monkeypatch.setattr(measure, "reference_mhsa_f32",
                        lambda x, w, h: reference_mhsa_f32(x, w, h) + 1.0)
    (result,) = measure_batch(small_task, [0]).results
    assert result.error_no == MeasureErrorNo.WRONG_ANSWER and "reference" in result.error_msg


@pytest.mark.emulator
def test_gap9_costs_are_the_modelled_cluster_latency(data_dir):
    _require_board_tools("gap9")
    (task,) = extract_tasks(data_dir / f"{MODEL}.onnx", "gap9")
    space = config_space(task)
    default = space.from_kernel_config(task.default_config())
    batch = measure_batch(task, [default.index])
    (result,) = batch.results
    assert batch.modelled and result.ok
    # Two heads on two cores: the modelled latency is well below all the work done serially.
    assert result.costs[0] < result.all_cost


@pytest.mark.emulator
def test_dask_executor_plugs_in(data_dir, tmp_path):
    distributed = pytest.importorskip(
        "distributed", reason="distributed not installed (pip install 'tvm-tiny[dask]')")
    _require_board_tools()
    log = tmp_path / "dask.jsonl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None
                                      ) as cluster, distributed.Client(cluster) as client:
            (result,) = tvm_tiny.tune(data_dir / f"{MODEL}.onnx", target="stm32h7", trials=4,
                                      log=str(log), seed=1, executor=client.get_executor(),
                                      batch_size=4)
    assert result.trials == 4 and result.errors == 0
    assert len(load_records(log)) == 4


@pytest.mark.emulator
def test_cli_tune_with_plot(data_dir, tmp_path, capsys):
    _require_board_tools()
    from tvm_tiny.cli import main

    log, plot = tmp_path / "cli.jsonl", tmp_path / "curve.png"
    assert main(["tune", str(data_dir / f"{MODEL}.onnx"), "--trials", "4", "--log", str(log),
                 "--tuner", "xgb,random", "--plot", str(plot)]) == 0
    out = capsys.readouterr()
    assert "| xgb |" in out.out and "| random |" in out.out
    assert "best" in out.err and "instructions" in out.err
    assert plot.stat().st_size > 0
    assert len(load_records(log)) == 4
    assert len(load_records(Path(str(log).replace(".jsonl", ".random.jsonl")))) == 4

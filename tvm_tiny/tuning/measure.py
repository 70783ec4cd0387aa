"""Measure a batch of configs of one task in ONE firmware on the board's emulator.

Each config is emitted by the code generator (:func:`tvm_tiny.codegen.mhsa_f32.emit_mhsa_f32`
or, for int8, :func:`tvm_tiny.codegen.mhsa_s8.emit_mhsa_s8`: exactly what ``build`` emits) as its
own kernel instance with a distinct symbol (``tvmtiny_tune_cfg<index>``). The harness
(``main.c``) reads one input, then calls every instance in turn between ``tt_window_begin()`` /
``tt_window_end()`` and writes its output; QEMU with ``-icount shift=0`` and the ``wincount``
plugin counts the INSTRUCTIONS of each window (not cycles). Every float32 output is checked
against the float64 numpy reference (:func:`tvm_tiny.reference.mhsa_f32.reference_mhsa_f32`)
within :data:`OUTPUT_TOL`; an int8 FWSA config more than one step from the unfused program
(the exported graph's rounding points) is a wrong answer before it runs; every int8 output must
equal the golden model
(:func:`tvm_tiny.reference.mhsa_s8.reference_mhsa_s8` of that config's integer program) bit for
bit, and ``max_error`` is its largest difference in output quantization steps.

On a cluster board (GAP9) the instance calls ``tt_mhsa_f32_cluster`` like the build does; the
cores run one after another (portable port) and each core's task is a window, so the cost is
the MODELLED parallel latency (slowest core per fork plus the assumed fork/join cost, as
:class:`tvm_tiny.firmware.runner.ClusterModel`).

A config that cannot be instantiated, does not compile or link, returns an error status, hangs
or computes a wrong answer gets a result with an AutoTVM error number; the others of its batch
are measured in a new firmware. Nothing here raises for a bad config.

The firmware (:mod:`tvm_tiny.tuning.firmware`) uses the deployed build's compiler flags and
the board's real memory sizes; when the weights of a batch do not fit the code memory together,
the batch is split over several firmwares (each still measures many configs).
"""

from __future__ import annotations

import enum
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_tiny.codegen.kernel import GeneratedKernel
from tvm_tiny.codegen.mhsa_f32 import emit_mhsa_f32
from tvm_tiny.codegen.mhsa_s8 import emit_mhsa_s8
from tvm_tiny.ir.enums import DType
from tvm_tiny.ir.errors import TinyError, ToolchainError
from tvm_tiny.ir.mhsa import KernelConfig
from tvm_tiny.ir.quant import quantize
from tvm_tiny.partition.describe import MhsaDescriptor
from tvm_tiny.reference.mhsa_f32 import reference_mhsa_f32
from tvm_tiny.reference.mhsa_s8 import reference_mhsa_s8
from tvm_tiny.tuning.firmware import (
    Firmware,
    compile_firmware,
    compile_instance,
    emulate,
    firmware_sources,
    window_costs,
)
from tvm_tiny.tuning.space import ConfigEntity, ConfigSpace, config_space
from tvm_tiny.tuning.task import TuningTask

#: What every cost of a record counts (STYLE.md: emulator figures are instructions).
COST_UNIT = "instructions"

#: Output check: max |y - ref| <= OUTPUT_TOL * max(1, max |ref|). The kernel rounds in float32
#: through chained dot products and expf (a few 1e-6 relative at these sizes); FWSA adds one
#: rounding of the fused weights. 1e-4 is the build's own board-vs-host tolerance
#: (tvm_tiny.firmware.project.OUTPUT_ATOL) and leaves a wide margin, while a layout or tiling
#: slip gives O(1) errors.
OUTPUT_TOL = 1e-4

#: Code memory kept free for the harness, kernel library, libc and the runtime when packing the
#: weights of a batch into one firmware.
CODE_RESERVE_BYTES = 96 * 1024

#: numpy element type of x and y per task dtype (what the harness reads and writes).
IO_DTYPES = {DType.FLOAT32: np.float32, DType.INT8: np.int8}



class MeasureErrorNo(enum.IntEnum):
    """AutoTVM's ``MeasureErrorNo`` values (``python/tvm/autotvm/measure/measure.py``)."""

    NO_ERROR = 0
    INSTANTIATION_ERROR = 1  # invalid config or the code generator refused it
    COMPILE_HOST = 2
    COMPILE_DEVICE = 3  # the cross compiler or the linker failed (e.g. memory overflow)
    RUNTIME_DEVICE = 4  # the kernel returned an error status or the firmware crashed
    WRONG_ANSWER = 5  # output differs from the numpy reference
    BUILD_TIMEOUT = 6
    RUN_TIMEOUT = 7
    UNKNOWN_ERROR = 8


@dataclass(frozen=True)
class MeasureResult:
    """The measurement of one config. Costs are INSTRUCTIONS (one deterministic run)."""

    index: int
    costs: tuple[float, ...]
    error_no: MeasureErrorNo
    error_msg: str = ""
    timestamp: float = 0.0
    # max |y - reference| when the output was checked (int8: in output quantization steps)
    max_error: float | None = None
    all_cost: float = 0.0  # instructions of all the work (cluster: every core, serially)

    @property
    def ok(self) -> bool:
        return self.error_no == MeasureErrorNo.NO_ERROR

    @property
    def mean_cost(self) -> float:
        return float(np.mean(self.costs)) if self.ok else math.inf


@dataclass(frozen=True)
class BatchResult:
    """What :func:`measure_batch` returns: one result per requested index, in order."""

    board: str
    task: str
    results: tuple[MeasureResult, ...]
    firmwares: int  # firmwares built and run for this batch
    cost_unit: str = COST_UNIT
    modelled: bool = False  # costs are a modelled cluster latency (GAP9)


@dataclass(frozen=True)
class MeasureOptions:
    """How to measure. ``input_seed`` fixes the input x (standard normal)."""

    input_seed: int = 0
    timeout_s: float = 600.0
    keep_dir: Path | None = None  # keep the last firmware directory here (debugging)
    # int8: how many output steps a config's program may depart from the exported graph's
    # rounding points (separate Q and K) before it is a wrong answer; None measures every
    # program against its own golden model only (the kernel's own tests)
    qdq_tolerance_steps: int | None = 1


def _error(index: int, no: MeasureErrorNo, msg: str) -> MeasureResult:
    """An error result: AutoTVM stores ``[1e9]`` as the costs of a failed measurement."""
    return MeasureResult(index, (1e9,), no, msg[-2000:], time.time(), None, 1e9)


def measure_input(task: TuningTask, seed: int) -> np.ndarray:
    """The input x of a measurement: standard normal, and for int8 quantized with the layer's
    own input parameters (so the integer program sees the values of a real run)."""
    s = task.shape
    x = np.random.default_rng(seed).standard_normal((s.seq, s.embed)).astype(np.float32)
    if task.workload.dtype == DType.INT8:
        assert task.quant is not None  # TuningTask checks it
        return quantize(x, task.quant.x).astype(np.int8)
    return x


def _references(task: TuningTask, entities: list[ConfigEntity],
                x: np.ndarray) -> dict[int, np.ndarray]:
    """The expected output per entity index: one float64 reference for float32; for int8 the
    golden integers of each config's program (FWSA is another program; cached per config)."""
    if task.workload.dtype == DType.FLOAT32:
        reference = reference_mhsa_f32(x, task.weights, task.shape.heads)
        return {e.index: reference for e in entities}
    assert task.quant is not None
    cache: dict[KernelConfig, np.ndarray] = {}
    out = {}
    for entity in entities:
        config = entity.kernel_config()
        if config not in cache:
            cache[config] = reference_mhsa_s8(x, task.quant, task.shape, config)
        out[entity.index] = cache[config]
    return out


def _departures(task: TuningTask, entities: list[ConfigEntity],
                references: dict[int, np.ndarray], x: np.ndarray,
                tolerance: int | None) -> dict[int, str]:
    """int8 FWSA configs whose golden output departs from the unfused program's by more than
    ``tolerance`` steps (``MeasureOptions.qdq_tolerance_steps``) on the measurement input, with
    why: FWSA skips the Q, K and Q K^T rounding points, and a faster config that far from
    onnxruntime is a wrong answer, not a tuning result (checked offline, before anything
    runs)."""
    if task.workload.dtype != DType.INT8 or tolerance is None:
        return {}
    unfused: dict[int, np.ndarray] = {}
    found = {}
    for entity in entities:
        config = entity.kernel_config()
        if not config.fuse_qk:
            continue
        rows = config.rows_per_block
        if rows not in unfused:
            exported = KernelConfig(rows, fuse_qk=False, sparse=config.sparse)
            unfused[rows] = reference_mhsa_s8(x, task.quant, task.shape, exported)
        steps = int(np.abs(references[entity.index].astype(np.int64)
                           - unfused[rows].astype(np.int64)).max())
        if steps > tolerance:
            found[entity.index] = (f"FWSA departs from the exported rounding points of Q, K "
                                   f"and Q K^T by up to {steps} output steps (more than "
                                   f"{tolerance})")
    return found


def _check(task: TuningTask, y: np.ndarray, reference: np.ndarray) -> tuple[float, str | None]:
    """(max error, None) for a right answer, else (max error, why it is wrong). int8 must be
    bit-exact (the error is in steps); float32 within OUTPUT_TOL of the reference's scale."""
    if task.workload.dtype == DType.INT8:
        diff = np.abs(y.astype(np.int64) - reference.astype(np.int64))
        err = float(diff.max())
        if err == 0:
            return err, None
        first = tuple(int(i) for i in np.argwhere(diff > 0)[0])
        return err, (f"{int(np.count_nonzero(diff))} of {diff.size} int8 outputs differ from "
                     f"the golden model (max {err:.0f} steps; first at {first}: got {y[first]}, "
                     f"expected {reference[first]})")
    scale = max(1.0, float(np.abs(reference).max()))
    err = float(np.max(np.abs(y.astype(np.float64) - reference)))
    if not err <= OUTPUT_TOL * scale:  # NaN fails too
        return err, f"max |y - reference| = {err:.3g} > {OUTPUT_TOL * scale:.3g}"
    return err, None


# -- firmware sources ---------------------------------------------------------------------------
def _instance(task: TuningTask, space: ConfigSpace, entity: ConfigEntity) -> GeneratedKernel:
    """The code generator's C instance of one config (a ``GeneratedKernel``)."""
    desc = MhsaDescriptor(f"cfg{entity.index}", task.shape, task.weights, task.workload.dtype,
                          task.quant)
    emit = emit_mhsa_s8 if task.workload.dtype == DType.INT8 else emit_mhsa_f32
    return emit(desc, entity.kernel_config(), "tune", f"tuning trial {entity.index} [{entity}]",
                space.board.cluster_cores)


def _measure_firmware(task: TuningTask, space: ConfigSpace, entities: list[ConfigEntity],
                      kernels: dict[int, GeneratedKernel], x: np.ndarray,
                      references: dict[int, np.ndarray],
                      options: MeasureOptions, counter: list[int]) -> dict[int, MeasureResult]:
    """Build and run one firmware for ``entities``; failures are narrowed down recursively."""
    if not entities:
        return {}
    fw = firmware_sources(task, space, entities, kernels)
    results: dict[int, MeasureResult] = {}
    with tempfile.TemporaryDirectory(prefix="tvm_tiny_tune_") as tmp:
        directory = Path(tmp)
        counter[0] += 1
        try:
            compile_firmware(fw, directory, options.timeout_s)
        except ToolchainError as err:
            return _narrow_build_failure(task, space, entities, kernels, x, references, options,
                                         counter, directory, fw, err)
        run = emulate(fw, directory, x, options.timeout_s)
        costs = window_costs(fw, run.windows)
        shape = task.shape
        for k, entity in enumerate(entities):
            if k not in run.statuses:
                break
            status = run.statuses[k]
            if status != 0:
                results[entity.index] = _error(entity.index, MeasureErrorNo.RUNTIME_DEVICE,
                                               f"kernel returned status {status}")
                continue
            y_file = run.outputs.get(f"y{k}.bin")
            if k not in costs or y_file is None:
                continue  # measured again below
            y = np.frombuffer(y_file, dtype=IO_DTYPES[task.workload.dtype]).reshape(
                shape.seq, shape.out_features)
            err, wrong = _check(task, y, references[entity.index])
            if wrong is not None:
                results[entity.index] = MeasureResult(
                    entity.index, (1e9,), MeasureErrorNo.WRONG_ANSWER, wrong, time.time(),
                    err, 1e9)
            else:
                cost, all_cost = costs[k]
                results[entity.index] = MeasureResult(entity.index, (cost,),
                                                      MeasureErrorNo.NO_ERROR, "", time.time(),
                                                      err, all_cost)
        if options.keep_dir is not None:
            shutil.rmtree(options.keep_dir, ignore_errors=True)
            shutil.copytree(directory, options.keep_dir)
    missing = [e for e in entities if e.index not in results]
    unfinished = [e for k, e in enumerate(entities) if k not in run.statuses]
    if missing and run.failure is not None and unfinished:
        # The instance that was running when the firmware stopped is the culprit; the others
        # without a result (later ones, and earlier ones whose counts a killed emulator never
        # reported) run again in a new firmware.
        culprit = unfinished[0]
        no = (MeasureErrorNo.RUN_TIMEOUT if run.failure.startswith("timeout")
              else MeasureErrorNo.RUNTIME_DEVICE)
        results[culprit.index] = _error(culprit.index, no, run.failure)
        missing = [e for e in missing if e is not culprit]
    elif missing:
        for e in missing:  # ran, but no window or output: should not happen
            results[e.index] = _error(e.index, MeasureErrorNo.UNKNOWN_ERROR,
                                      "no instruction window or output for this instance")
        missing = []
    results.update(_measure_firmware(task, space, missing, kernels, x, references, options,
                                     counter))
    return results


def _narrow_build_failure(task: TuningTask, space: ConfigSpace, entities: list[ConfigEntity],
                          kernels: dict[int, GeneratedKernel], x: np.ndarray,
                      references: dict[int, np.ndarray],
                          options: MeasureOptions, counter: list[int], directory: Path,
                          fw: Firmware, err: ToolchainError) -> dict[int, MeasureResult]:
    """A batch that does not build: blame instances that do not compile alone; then split."""
    results: dict[int, MeasureResult] = {}
    rest = []
    for entity in entities:
        message = compile_instance(fw, directory, entity)
        if message is not None:
            results[entity.index] = _error(entity.index, MeasureErrorNo.COMPILE_DEVICE, message)
        else:
            rest.append(entity)
    if len(rest) == len(entities):
        overflow = "overflow" in err.stderr or "will not fit" in err.stderr
        if len(entities) == 1 or not overflow:
            # A single config that does not link, or a failure no config is to blame for
            # alone: every config of the batch gets the linker's message.
            for entity in entities:
                results[entity.index] = _error(entity.index, MeasureErrorNo.COMPILE_DEVICE,
                                               f"{err}\n{err.stderr}")
            return results
        half = len(entities) // 2  # the weights did not fit together: split the batch
        parts = [entities[:half], entities[half:]]
    else:
        parts = [rest]
    for part in parts:
        results.update(_measure_firmware(task, space, part, kernels, x, references, options,
                                         counter))
    return results


def _pack(space: ConfigSpace, entities: list[ConfigEntity]) -> list[list[ConfigEntity]]:
    """Split a batch so the weights of each firmware fit the code memory together."""
    board = space.board
    if board.placement is None:
        return [entities]
    budget = board.memory(board.placement.code).size - CODE_RESERVE_BYTES
    if board.placement.code == board.placement.data:  # GAP9: one L2 for everything
        s = space.workload.shape
        element = np.dtype(IO_DTYPES[space.workload.dtype]).itemsize
        budget -= element * s.seq * (s.embed + s.out_features)
        budget -= max((space.scratch_bytes(e) for e in entities), default=0)
        budget -= board.placement.stack_bytes
    groups: list[list[ConfigEntity]] = [[]]
    used = 0
    for entity in entities:
        need = space.params_bytes(entity)
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(entity)
        used += need
    return groups


def measure_batch(task: TuningTask, indices: list[int],
                  options: MeasureOptions | None = None) -> BatchResult:
    """Measure the configs ``indices`` of ``task`` in one firmware (more only when their
    weights do not fit the board's code memory together). Never raises for a bad config."""
    options = options or MeasureOptions()
    space = config_space(task)
    board = space.board
    results: dict[int, MeasureResult] = {}
    counter = [0]
    try:
        if board.is_host or board.emulator is None:
            raise TinyError(f"target '{board.name}' has no emulator to count instructions on")
        kernels: dict[int, GeneratedKernel] = {}
        runnable: list[ConfigEntity] = []
        for index in dict.fromkeys(indices):
            try:
                entity = space.get(index)
            except IndexError as err:
                results[index] = _error(index, MeasureErrorNo.INSTANTIATION_ERROR, str(err))
                continue
            reason = space.check(entity)
            if reason is not None:
                results[index] = _error(index, MeasureErrorNo.INSTANTIATION_ERROR, reason)
                continue
            try:
                kernels[index] = _instance(task, space, entity)
            except (TinyError, ValueError) as err:
                results[index] = _error(index, MeasureErrorNo.INSTANTIATION_ERROR, str(err))
                continue
            runnable.append(entity)
        x = measure_input(task, options.input_seed)
        references = _references(task, runnable, x)
        departed = _departures(task, runnable, references, x, options.qdq_tolerance_steps)
        for index, why in departed.items():
            results[index] = MeasureResult(index, (1e9,), MeasureErrorNo.WRONG_ANSWER, why,
                                           time.time(), None, 1e9)
        runnable = [e for e in runnable if e.index not in results]
        for group in _pack(space, runnable):
            results.update(_measure_firmware(task, space, group, kernels, x, references,
                                             options, counter))
    except Exception as err:  # noqa: BLE001 -- a measurement never stops the tuner: every
        # config still unmeasured gets UNKNOWN_ERROR with the reason.
        for index in indices:
            if index not in results:
                results[index] = _error(index, MeasureErrorNo.UNKNOWN_ERROR,
                                        f"{type(err).__name__}: {err}")
    return BatchResult(board.name, task.name, tuple(results[i] for i in indices), counter[0],
                       modelled=board.cluster_cores > 1)


def measure_configs(task: TuningTask, indices: list[int],
                    options: MeasureOptions | None = None) -> list[MeasureResult]:
    """Convenience: the results of :func:`measure_batch` as a list."""
    return list(measure_batch(task, indices, options).results)


__all__ = ["COST_UNIT", "BatchResult", "MeasureErrorNo", "MeasureOptions", "MeasureResult",
           "measure_batch", "measure_configs"]

"""Tuners (XGBoost + simulated annealing, random, grid), the executor-based measurer, and
:func:`tune`, the driver behind ``tvm_tiny.tune``.

A tuner proposes a batch of configs, the measurer runs each batch as one firmware per worker
(:func:`tvm_tiny.tuning.measure.measure_batch` through a ``concurrent.futures.Executor``:
a local ``ProcessPoolExecutor`` by default, or e.g. a Dask ``client.get_executor()``), every
result is appended to the log, and the tuner learns from it. Every source of randomness is a
``numpy.random.Generator`` seeded from the tuner's ``seed``, so a tuner given the same
measurements proposes the same configs.

``XGBTuner`` follows AutoTVM's ``XGBTuner(loss_type="rank", optimizer="sa")``: after each
batch the cost model is retrained on every measurement, simulated annealing over the space
finds the configs it ranks best, and the next batch takes the best of those not yet measured,
plus a share of random configs (exploration). Until the model can rank (two different
results) it proposes random configs.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tvm_tiny.firmware.qemu import check_board_tools
from tvm_tiny.ir.errors import TinyError
from tvm_tiny.targets.boards import board_names, get_board
from tvm_tiny.tuning.cost_model import XGBCostModel
from tvm_tiny.tuning.log import TuningRecord, append_records, load_records, make_record
from tvm_tiny.tuning.measure import MeasureErrorNo, MeasureOptions, MeasureResult, measure_batch
from tvm_tiny.tuning.space import ConfigEntity, ConfigSpace, config_space
from tvm_tiny.tuning.task import TuningTask, extract_tasks

Measurer = Callable[[TuningTask, list[int]], list[MeasureResult]]
"""Measures configs of a task: results in the order of the indices."""


class Tuner:
    """Proposes configs of one task and learns from their measurements."""

    name = "base"

    def __init__(self, task: TuningTask, seed: int = 0, space: ConfigSpace | None = None
                 ) -> None:
        self.task = task
        self.seed = seed
        self.space = space or config_space(task)
        self.rng = np.random.default_rng(seed)
        self.valid = self.space.valid_indices()
        self.valid_set = set(self.valid)
        self.measured: dict[int, float] = {}  # index -> instructions (inf: failed)
        self.best_index: int | None = None
        self.best_cost = math.inf

    def has_next(self) -> bool:
        return len(self.measured) < len(self.valid)

    def unmeasured(self) -> list[int]:
        return [i for i in self.valid if i not in self.measured]

    def next_batch(self, size: int) -> list[int]:
        """Up to ``size`` valid, unmeasured configs to measure next."""
        raise NotImplementedError

    def update(self, indices: Sequence[int], costs: Sequence[float]) -> None:
        """Learn from measurements (instructions; inf for a failed config)."""
        for index, cost in zip(indices, costs):
            self.measured[index] = cost
            if cost < self.best_cost:
                self.best_index, self.best_cost = index, cost

    def load_history(self, records: Sequence[TuningRecord]) -> int:
        """Take in the records of this task from a log (resume); returns how many matched.
        Records whose knob values are not in this space are ignored."""
        indices, costs = [], []
        for record in records:
            try:
                entity = self.space.from_record_entity(record.entity)
            except (KeyError, ValueError):
                continue
            if entity.index not in self.measured and entity.index not in indices:
                indices.append(entity.index)
                costs.append(record.mean_cost)
        self.update(indices, costs)
        return len(indices)


class GridTuner(Tuner):
    """Valid configs in index order."""

    name = "grid"

    def next_batch(self, size: int) -> list[int]:
        return self.unmeasured()[:size]


class RandomTuner(Tuner):
    """Valid configs in a random order (seeded), without repetition."""

    name = "random"

    def __init__(self, task: TuningTask, seed: int = 0, space: ConfigSpace | None = None
                 ) -> None:
        super().__init__(task, seed, space)
        self._order = [int(i) for i in self.rng.permutation(self.valid)]

    def next_batch(self, size: int) -> list[int]:
        return [i for i in self._order if i not in self.measured][:size]


@dataclass(frozen=True)
class AnnealingOptions:
    """AutoTVM's ``SimulatedAnnealingOptimizer`` settings."""

    parallel_size: int = 64  # walkers
    n_iter: int = 200
    temperature: tuple[float, float] = (1.0, 0.0)  # linear from, to
    early_stop: int = 50  # iterations without a new top config


def simulated_annealing(space: ConfigSpace, valid: set[int], score: Callable[[list[int]],
                        np.ndarray], num: int, exclude: set[int], rng: np.random.Generator,
                        options: AnnealingOptions = AnnealingOptions()) -> list[int]:
    """The ``num`` valid configs not in ``exclude`` with the highest ``score`` found by
    simulated annealing (walkers change one knob at a time), best first."""
    candidates = sorted(valid)
    if not candidates or num <= 0:
        return []
    walkers = [int(i) for i in rng.choice(candidates, size=min(options.parallel_size,
                                                                 len(candidates)),
                                          replace=len(candidates) < options.parallel_size)]
    scores = score(walkers)
    top: list[tuple[float, int]] = []  # min-heap of (score, -index) of the best found
    in_top: set[int] = set()

    def offer(points: list[int], values: np.ndarray) -> bool:
        changed = False
        for point, value in zip(points, values):
            if point in exclude or point in in_top:
                continue
            item = (float(value), -point)
            if len(top) < num:
                heapq.heappush(top, item)
            elif item > top[0]:
                in_top.discard(-heapq.heapreplace(top, item)[1])
            else:
                continue
            in_top.add(point)
            changed = True
        return changed

    offer(walkers, scores)
    t0, t1 = options.temperature
    since_change = 0
    for k in range(options.n_iter):
        temp = t0 + (t1 - t0) * k / max(1, options.n_iter - 1)
        moved = [_neighbour(space, valid, p, rng) for p in walkers]
        new_scores = score(moved)
        with np.errstate(over="ignore"):
            accept_p = np.exp(np.minimum((new_scores - scores) / (temp + 1e-5), 1.0))
        accept = rng.random(len(walkers)) < accept_p
        walkers = [m if a else w for m, w, a in zip(moved, walkers, accept)]
        scores = np.where(accept, new_scores, scores)
        since_change = 0 if offer(moved, new_scores) else since_change + 1
        if since_change >= options.early_stop:
            break
    return [-i for _, i in sorted(top, reverse=True)]


def _neighbour(space: ConfigSpace, valid: set[int], index: int, rng: np.random.Generator,
               tries: int = 8) -> int:
    """A valid config differing from ``index`` in one knob (``index`` if none is found)."""
    for _ in range(tries):
        knob = int(rng.integers(len(space.knobs)))
        size = len(space.knobs[knob])
        if size < 2:
            continue
        candidate = space.neighbour(index, knob, int(rng.integers(1, size)))
        if candidate in valid:
            return candidate
    return index


def diverse_sample(space: ConfigSpace, candidates: list[int], size: int,
                   rng: np.random.Generator) -> list[int]:
    """``size`` random configs chosen so that together they cover as many knob values as
    possible (each pick maximises the values not yet covered; ties in random order): the
    first batch teaches the cost model every knob's main effect."""
    order = [int(i) for i in rng.permutation(candidates)]
    covered: set[tuple[str, object]] = set()
    picks: list[int] = []
    while order and len(picks) < size:
        def new_values(index: int) -> int:
            return sum((k, v) not in covered for k, v in space.get(index).values)

        best = max(order, key=new_values)  # first maximum in the random order
        order.remove(best)
        picks.append(best)
        covered.update(space.get(best).values)
    return picks


#: Valid spaces up to this size are predicted whole once per round (cheaper than predicting
#: the annealer's walkers step by step).
PREDICT_ALL_LIMIT = 20000


class XGBTuner(Tuner):
    """Cost-model guided search: XGBoost ranking model + simulated annealing + exploration."""

    name = "xgb"

    def __init__(self, task: TuningTask, seed: int = 0, space: ConfigSpace | None = None, *,
                 plan_size: int = 64, exploration: float = 0.125,
                 annealing: AnnealingOptions = AnnealingOptions()) -> None:
        super().__init__(task, seed, space)
        self.model = XGBCostModel(self.space, seed)
        self.plan_size = plan_size
        self.exploration = exploration
        self.annealing = annealing
        self._plan: list[int] = []

    def update(self, indices: Sequence[int], costs: Sequence[float]) -> None:
        super().update(indices, costs)
        ordered = sorted(self.measured)  # a deterministic training order
        self.model.fit(ordered, [self.measured[i] for i in ordered])
        if self.model.trained:
            score = self.model.predict
            if len(self.valid) <= PREDICT_ALL_LIMIT:
                # One prediction of the whole (small) valid space; the annealer looks it up.
                table = dict(zip(self.valid, self.model.predict(self.valid).tolist()))

                def score(indices: list[int]) -> np.ndarray:
                    return np.array([table[i] for i in indices])

            self._plan = simulated_annealing(
                self.space, self.valid_set, score, self.plan_size, set(self.measured),
                self.rng, self.annealing)

    def next_batch(self, size: int) -> list[int]:
        unmeasured = self.unmeasured()
        if not unmeasured:
            return []
        if not self.model.trained:
            return diverse_sample(self.space, unmeasured, size, self.rng)
        batch: list[int] = []
        n_random = int(round(size * self.exploration))
        for index in self._plan:
            if len(batch) >= size - n_random:
                break
            if index not in self.measured and index not in batch:
                batch.append(index)
        rest = [i for i in unmeasured if i not in batch]
        while len(batch) < size and rest:
            batch.append(rest.pop(int(self.rng.integers(len(rest)))))
        return batch


TUNERS: dict[str, type[Tuner]] = {"xgb": XGBTuner, "random": RandomTuner, "grid": GridTuner}


def make_tuner(name: str, task: TuningTask, seed: int = 0) -> Tuner:
    try:
        return TUNERS[name](task, seed)
    except KeyError:
        raise ValueError(f"unknown tuner '{name}'; known: {', '.join(TUNERS)}") from None


# -- measuring through an executor ------------------------------------------------------------
class ExecutorMeasurer:
    """Measures each batch as ``workers`` firmwares in parallel through an ``Executor``.

    ``executor=None`` starts a local ``ProcessPoolExecutor`` on first use
    and shuts it down in :meth:`close`; any other ``concurrent.futures.Executor`` (e.g. a Dask
    ``Client.get_executor()``) is used as given and left open.
    """

    def __init__(self, executor: Executor | None = None, workers: int = 2,
                 options: MeasureOptions | None = None) -> None:
        self._executor = executor
        self._owned = executor is None
        self.workers = max(1, workers)
        self.options = options or MeasureOptions()
        self.firmwares = 0

    def _get(self) -> Executor:
        if self._executor is None:
            # The platform's default start method (fork on Linux): workers then need no
            # `if __name__ == "__main__"` guard in the caller's script. They only run numpy, the
            # C emitter and subprocesses, never TVM's runtime or XGBoost.
            self._executor = ProcessPoolExecutor(self.workers)
        return self._executor

    def __call__(self, task: TuningTask, indices: list[int]) -> list[MeasureResult]:
        if not indices:
            return []
        n = min(self.workers, len(indices))
        size = -(-len(indices) // n)
        chunks = [indices[i:i + size] for i in range(0, len(indices), size)]
        executor = self._get()
        futures = [executor.submit(measure_batch, task, chunk, self.options) for chunk in chunks]
        results: dict[int, MeasureResult] = {}
        for chunk, future in zip(chunks, futures):
            try:
                batch = future.result()
                self.firmwares += batch.firmwares
                results.update((r.index, r) for r in batch.results)
            except Exception as err:  # noqa: BLE001 -- a lost worker must not stop the tuner
                for index in chunk:
                    results[index] = MeasureResult(index, (1e9,), MeasureErrorNo.UNKNOWN_ERROR,
                                                   f"measurement worker failed: "
                                                   f"{type(err).__name__}: {err}", time.time(),
                                                   None, 1e9)
        return [results[i] for i in indices]

    def close(self) -> None:
        if self._owned and self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> ExecutorMeasurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the tuning loop ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """Reported after every measured batch."""

    task_index: int
    task_count: int
    task: str
    done: int  # configs of this task measured (including those resumed from the log)
    total: int  # the task's trial budget
    best_cost: float  # instructions of the best config so far (inf: none valid yet)
    default_cost: float | None  # instructions of the default config, when measured


@dataclass
class TaskResult:
    """The outcome of tuning one task."""

    task: TuningTask
    tuner: str
    space_size: int
    valid_size: int
    resumed: int  # configs taken from the existing log
    trials: int  # configs measured now
    best: ConfigEntity | None
    best_cost: float
    default: ConfigEntity | None
    default_cost: float | None
    errors: int
    history: list[tuple[int, float, float]] = field(default_factory=list)
    # (trial number, instructions of that trial, best so far); trial 1 is the first measured now

    @property
    def speedup(self) -> float | None:
        """default / best instructions, when both were measured."""
        if self.default_cost is None or not math.isfinite(self.best_cost):
            return None
        return self.default_cost / self.best_cost


def _record(task: TuningTask, space: ConfigSpace, result: MeasureResult,
            modelled: bool) -> TuningRecord:
    entity = space.get(result.index)
    return make_record(task.target, task.workload, entity.index, space.record_entity(entity),
                       space.code_hash(entity), [float(c) for c in result.costs],
                       int(result.error_no), float(result.all_cost), result.timestamp, modelled)


def tune_task(task: TuningTask, tuner: Tuner, trials: int, measurer: Measurer, *,
              log: str | Path | None = None, batch_size: int = 8,
              include_default: bool = True, progress: Callable[[Progress], None] | None = None,
              task_index: int = 0, task_count: int = 1) -> TaskResult:
    """Tune one task until ``trials`` configs of it are measured (counting those already in
    ``log``, which are never measured again) or the valid space is exhausted.

    With ``include_default`` the board's default config goes into the first batch, so the
    best record can never be worse than the default.
    """
    space = tuner.space
    resumed = tuner.load_history(
        [r for r in load_records(log, board=task.board) if r.workload == task.workload]
        if log is not None else [])
    default = space.from_kernel_config(task.default_config())
    if default is not None and default.index not in tuner.valid_set:
        default = None
    budget = min(trials, len(tuner.valid))
    history: list[tuple[int, float, float]] = []
    best = tuner.best_cost  # resumed records count towards the best so far
    errors = 0
    modelled = space.board.cluster_cores > 1

    def report() -> None:
        if progress is not None:
            default_cost = tuner.measured.get(default.index) if default is not None else None
            progress(Progress(task_index, task_count, task.describe(), len(tuner.measured),
                              budget, tuner.best_cost, default_cost))

    report()
    while len(tuner.measured) < budget and tuner.has_next():
        size = min(batch_size, budget - len(tuner.measured))
        batch = tuner.next_batch(size)
        if include_default and default is not None and default.index not in tuner.measured \
                and default.index not in batch:
            batch = [default.index, *batch[:size - 1]]
        if not batch:
            break
        results = measurer(task, batch)
        if log is not None:
            append_records(log, [_record(task, space, r, modelled) for r in results])
        costs = [r.mean_cost for r in results]
        errors += sum(not r.ok for r in results)
        tuner.update(batch, costs)
        for cost in costs:
            best = min(best, cost)
            history.append((len(history) + 1, cost, best))
        report()
    default_cost = tuner.measured.get(default.index) if default is not None else None
    return TaskResult(
        task=task, tuner=tuner.name, space_size=len(space), valid_size=len(tuner.valid),
        resumed=resumed, trials=len(history),
        best=space.get(tuner.best_index) if tuner.best_index is not None else None,
        best_cost=tuner.best_cost, default=default,
        default_cost=default_cost if default_cost is not None and math.isfinite(default_cost)
        else None, errors=errors, history=history)


def tune(model: Any, target: str = "stm32h7", trials: int = 64,
         log: str | Path | None = "tuning_logs/{target}.jsonl", tuner: str = "xgb",
         seed: int = 0, *, executor: Executor | None = None, workers: int = 2,
         batch_size: int = 8, progress: Callable[[Progress], None] | None = None,
         measurer: Measurer | None = None) -> list[TaskResult]:
    """Tune the kernel configs of every offloaded MHSA of ``model`` on board ``target``.

    One task per distinct (board, MHSA workload, dtype) (:func:`extract_tasks`); each gets up
    to ``trials`` measured configs, counting the ones ``log`` already holds for it (a rerun
    resumes, never re-measures). Every measurement is appended to ``log`` as one AutoTVM-style
    JSON line; ``build(model, target, tuning_log=log)`` then applies the best.

    Parameters
    ----------
    model
        ONNX model, path or Relax IRModule (as :func:`tvm_tiny.build`).
    target
        A board with an emulator (``tvm_tiny.boards()`` minus ``host``).
    trials
        Configs measured per task (including those resumed from ``log``).
    log
        JSON-lines log to append to (created if missing; ``{target}`` is replaced by the board
        name, so the default for stm32h7 is ``tuning_logs/stm32h7.jsonl``); None keeps no log.
    tuner
        ``"xgb"`` (XGBoost ranking model + simulated annealing), ``"random"`` or ``"grid"``.
    seed
        Seeds every random choice of the tuner: the same seed and log give the same proposals.
    executor
        A ``concurrent.futures.Executor`` measuring batches (e.g. Dask's
        ``client.get_executor()``); default: a local process pool of ``workers`` processes.
    batch_size
        Configs per round; each round is measured as ``workers`` firmwares.
    progress
        Called after every round with a :class:`Progress`.
    measurer
        Replace the emulator measurement altogether (tests, replays).
    """
    board = get_board(target)
    if log is not None:
        log = str(log).replace("{target}", board.name)
    if board.is_host or board.emulator is None:
        raise TinyError(f"target '{target}' has no emulator to count instructions on; tune for "
                        f"a board: {', '.join(n for n in _board_names() if n != 'host')}")
    tasks = extract_tasks(model, target)
    own = measurer is None
    if own:
        check_board_tools(board)  # fail early, naming the missing package
        measurer = ExecutorMeasurer(executor, workers)
    assert measurer is not None
    results = []
    try:
        for i, task in enumerate(tasks):
            results.append(tune_task(task, make_tuner(tuner, task, seed), trials, measurer,
                                     log=log, batch_size=batch_size, progress=progress,
                                     task_index=i, task_count=len(tasks)))
    finally:
        if own and isinstance(measurer, ExecutorMeasurer):
            measurer.close()
    return results


def _board_names() -> list[str]:
    return board_names()

"""Tuning logs: append-only JSON lines in AutoTVM's record layout (``autotvm/record.py``).

One line per measured config::

    {"input": [target, task name, args, kwargs],
     "config": {"index": i, "code_hash": h, "entity": [[knob, type, value], ...]},
     "result": [costs, error_no, all_cost, timestamp],
     "version": 0.2, "tvm_version": "...", "tvm_tiny_version": "...",
     "cost_unit": "instructions", "modelled": false}

``costs`` are INSTRUCTIONS counted in the board's emulator (one deterministic run; ``[1e9]`` on
error), never seconds: ``cost_unit`` says so. ``all_cost`` is the instructions of all the work
measured (on a cluster: every core's, one after another); ``modelled`` is true when ``costs``
is a modelled cluster latency (GAP9). The target string ends in ``-model=<board>``, which is
how a record names its board.

Reading tolerates damage: a line that is not a record is skipped with a
:class:`TuningLogWarning` naming it, and so are records for another board (never applied).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tvm_tiny.ir.version import __version__
from tvm_tiny.tuning.task import Workload, board_of_target

LOG_VERSION = 0.2
"""AutoTVM's record format version (``autotvm.record.AUTOTVM_LOG_VERSION``)."""


class TuningLogWarning(UserWarning):
    """A tuning log line was skipped (corrupt, or for another board)."""


@dataclass(frozen=True)
class TuningRecord:
    """One measured config of one task."""

    target: str
    task_name: str
    args: list[Any]
    config_index: int
    entity: list[list[Any]]
    costs: list[float]
    error_no: int
    all_cost: float
    timestamp: float
    code_hash: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    version: float = LOG_VERSION
    tvm_tiny_version: str = ""
    tvm_version: str = ""
    cost_unit: str = "instructions"
    modelled: bool = False

    @property
    def board(self) -> str | None:
        return board_of_target(self.target)

    @property
    def workload(self) -> Workload:
        return Workload.from_args(self.task_name, self.args, self.kwargs)

    @property
    def ok(self) -> bool:
        return self.error_no == 0

    @property
    def mean_cost(self) -> float:
        """Mean of the costs of a valid record; infinity for an error record."""
        return sum(self.costs) / len(self.costs) if self.ok and self.costs else math.inf

    def entity_values(self) -> dict[str, Any]:
        return {name: value for name, _, value in self.entity}


def _versions() -> tuple[str, str]:
    try:
        tvm_version = metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        tvm_version = ""
    return __version__, tvm_version


def encode(record: TuningRecord) -> str:
    """One JSON line (no newline) in AutoTVM's layout plus tvm_tiny's fields."""
    return json.dumps({
        "input": [record.target, record.task_name, record.args, record.kwargs],
        "config": {"index": record.config_index, "code_hash": record.code_hash,
                   "entity": record.entity},
        "result": [list(record.costs), record.error_no, record.all_cost, record.timestamp],
        "version": record.version,
        "tvm_version": record.tvm_version,
        "tvm_tiny_version": record.tvm_tiny_version,
        "cost_unit": record.cost_unit,
        "modelled": record.modelled,
    }, separators=(", ", ": "))


def decode(line: str) -> TuningRecord:
    """Parse one line; ``ValueError`` naming what is wrong when it is not a record."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg})") from None
    try:
        target, task_name, args, kwargs = data["input"]
        config = data["config"]
        costs, error_no, all_cost, timestamp = data["result"]
        record = TuningRecord(
            target=str(target), task_name=str(task_name), args=list(args),
            kwargs=dict(kwargs), config_index=int(config["index"]),
            entity=[list(e) for e in config["entity"]], costs=[float(c) for c in costs],
            error_no=int(error_no), all_cost=float(all_cost), timestamp=float(timestamp),
            code_hash=config.get("code_hash"), version=float(data.get("version", LOG_VERSION)),
            tvm_tiny_version=str(data.get("tvm_tiny_version", "")),
            tvm_version=str(data.get("tvm_version", "")),
            cost_unit=str(data.get("cost_unit", "instructions")),
            modelled=bool(data.get("modelled", False)))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a tuning record ({type(err).__name__}: {err})") from None
    if any(len(e) != 3 or not isinstance(e[0], str) for e in record.entity):
        raise ValueError("config.entity items are not [knob, type, value]")
    for name, tag, value in record.entity:
        if tag == "sp" and not (isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError(f"split knob {name!r} has a non-integer value {value!r}")
    if record.ok and not (record.costs and all(math.isfinite(c) and c >= 0
                                               for c in record.costs)):
        # NaN would win or lose every comparison silently; never apply such a record.
        raise ValueError(f"costs {record.costs} of a valid record are not instruction counts")
    if record.cost_unit != "instructions":
        raise ValueError(f"cost_unit {record.cost_unit!r}: only instruction counts are read")
    record.workload  # noqa: B018 -- validates task name and args (ValueError)
    return record


def append_records(path: str | Path, records: Iterable[TuningRecord]) -> None:
    """Append records to ``path`` (created with its directory when missing); never rewrites.
    Each line is written and flushed whole, so an interrupted run leaves whole lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(encode(record) + "\n")
            f.flush()


def _summary(items: list[int]) -> str:
    shown = ", ".join(str(i) for i in items[:5])
    return shown + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def load_records(path: str | Path, board: str | None = None) -> list[TuningRecord]:
    """Every record of ``path`` in file order (a missing file has none).

    Lines that are not records are skipped with a :class:`TuningLogWarning` giving their line
    numbers; with ``board``, records for other boards are skipped with a warning too.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[TuningRecord] = []
    corrupt: list[int] = []
    first_error = ""
    others: dict[str, list[int]] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = decode(line)
            except ValueError as err:
                corrupt.append(number)
                first_error = first_error or str(err)
                continue
            if board is not None and record.board != board:
                others.setdefault(str(record.board), []).append(number)
                continue
            records.append(record)
    if corrupt:
        warnings.warn(f"{path}: skipped {len(corrupt)} corrupt line(s) (line "
                      f"{_summary(corrupt)}; first: {first_error})", TuningLogWarning,
                      stacklevel=2)
    for other, lines in sorted(others.items()):
        warnings.warn(f"{path}: skipped {len(lines)} record(s) for board '{other}' (line "
                      f"{_summary(lines)}); building for '{board}', they are never applied",
                      TuningLogWarning, stacklevel=2)
    return records


def best_records(records: Iterable[TuningRecord]) -> dict[tuple[str, tuple[str, str]],
                                                            TuningRecord]:
    """The best valid record per (board, workload key): lowest mean cost among
    ``error_no == 0`` (AutoTVM's ``ApplyHistoryBest``); the first of equal costs wins."""
    best: dict[tuple[str, tuple[str, str]], TuningRecord] = {}
    for record in records:
        if not record.ok or record.board is None:
            continue
        key = (record.board, record.workload.key())
        if key not in best or record.mean_cost < best[key].mean_cost:
            best[key] = record
    return best


def make_record(target: str, workload: Workload, index: int, entity: list[list[Any]],
                code_hash: str | None, costs: list[float], error_no: int, all_cost: float,
                timestamp: float, modelled: bool = False) -> TuningRecord:
    """A record stamped with the running tvm_tiny and TVM versions."""
    tiny, tvm_version = _versions()
    return TuningRecord(target=target, task_name=workload.task_name, args=workload.args(),
                        kwargs=workload.kwargs(), config_index=index, entity=entity,
                        costs=costs, error_no=error_no,
                        all_cost=all_cost, timestamp=timestamp, code_hash=code_hash,
                        tvm_tiny_version=tiny, tvm_version=tvm_version, modelled=modelled)

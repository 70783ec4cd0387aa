"""Apply the best tuning records to a build, like AutoTVM's ``ApplyHistoryBest``.

For each offloaded MHSA the config comes from the first of these that has a valid record for
its (board, workload): the ``tuning_log`` given to ``build`` (origin
``ConfigSource.TUNING_LOG``), the shipped ``tuning_logs/<board>.jsonl``
(``ConfigSource.SHIPPED_LOG``), else the board default (``ConfigSource.DEFAULT``). Within a log
the best record is the lowest mean cost among ``error_no == 0`` whose knob values are valid in
today's config space on this board.

The kernel variant (register tile, FMA; :class:`~tvm_tiny.ir.kernel_config.KernelVariant`) is
compiled once per firmware, so all MHSAs of a model share one: the variant with the lowest
total of its best records over the tuned workloads among the variants every tuned workload has
a record for, each MHSA then taking its best record with that variant; when no variant covers
every tuned workload, the default variant and each workload's best record with it (else its
default config). An MHSA without records runs its default config with the model's variant.

int8 MHSAs (task ``tt_mhsa_s8``) take their best record the same way, from the same logs; their
kernel has no compile-time variant, so they take no part in choosing the float32 one and report
the model's variant (what their ``metadata`` entry showed before they were tunable).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from tvm_tiny.ir.enums import ConfigSource, DType
from tvm_tiny.ir.kernel_config import DEFAULT_ORIGIN, ConfigOrigin, KernelChoice, KernelVariant
from tvm_tiny.ir.mhsa import KernelConfig, MhsaWeights
from tvm_tiny.targets.boards import get_board
from tvm_tiny.targets.resources import tuning_logs_dir
from tvm_tiny.tuning.log import TuningLogWarning, TuningRecord, load_records
from tvm_tiny.tuning.space import ConfigEntity, config_space
from tvm_tiny.tuning.task import TASK_NAMES, Workload


@dataclass(frozen=True)
class AppliedConfig:
    """The kernel config of one offloaded MHSA and where it came from."""

    config: KernelConfig
    variant: KernelVariant
    origin: ConfigOrigin
    record: TuningRecord | None = None

    @property
    def choice(self) -> KernelChoice:
        """What the code generator needs of it (the record stays with tuning)."""
        return KernelChoice(self.config, self.variant, self.origin)


def shipped_log(board: str) -> Path:
    """``tuning_logs/<board>.jsonl`` shipped with tvm_tiny (may not exist)."""
    return tuning_logs_dir() / f"{board}.jsonl"


def _sources(board: str, tuning_log: str | Path | None
             ) -> list[tuple[ConfigOrigin, list[TuningRecord]]]:
    sources = []
    if tuning_log is not None:
        sources.append((ConfigOrigin(ConfigSource.TUNING_LOG, str(tuning_log)),
                        load_records(tuning_log, board=board)))
    shipped = shipped_log(board)
    if shipped.exists():
        sources.append((ConfigOrigin(ConfigSource.SHIPPED_LOG, shipped.name),
                        load_records(shipped, board=board)))
    return sources


def _candidates(workload: Workload, board: str,
                sources: list[tuple[ConfigOrigin, list[TuningRecord]]],
                scratch_limit: int | None = None
                ) -> tuple[ConfigOrigin, list[tuple[float, ConfigEntity, TuningRecord]]] | None:
    """(source, valid records as (cost, entity, record)) of the first source that has any;
    with ``scratch_limit`` only records whose kernel scratch is at most that many bytes."""
    space = config_space(workload, board)
    for source, records in sources:
        found, unusable = [], 0
        for record in records:
            if not record.ok or record.workload != workload:
                continue
            try:
                entity = space.from_record_entity(record.entity)
            except (KeyError, ValueError):
                unusable += 1
                continue
            if not space.is_valid(entity):
                unusable += 1
                continue
            if scratch_limit is not None and space.scratch_bytes(entity) > scratch_limit:
                continue  # faster, but the model would not fit its memory budget with it
            found.append((record.mean_cost, entity, record))
        if unusable:
            warnings.warn(f"{source}: {unusable} record(s) of {workload.describe()} do not fit "
                          f"today's config space on {board} and are not applied",
                          TuningLogWarning, stacklevel=3)
        if found:
            return source, found
    return None


def kernel_configs(workloads: dict[str, Workload], board: str,
                   tuning_log: str | Path | None = None,
                   weights: dict[str, MhsaWeights] | None = None,
                   scratch_limit: int | None = None) -> dict[str, AppliedConfig]:
    """The applied config of every MHSA (symbol -> workload) of one model on ``board``.

    ``weights`` (symbol -> float32 weights) make the default of an untuned MHSA weigh its
    pruned matrices (``KernelConfig.default_for``). ``scratch_limit``: only records whose
    scratch is at most that many bytes apply, and an untuned MHSA takes its default with fewer
    query rows per block if that is what fits (``build`` sets it when the model would not fit
    its memory otherwise)."""
    get_board(board)  # unknown boards fail here
    tunable = {w for w in workloads.values() if w.dtype in TASK_NAMES}
    sources = _sources(board, tuning_log) if tunable else []
    found = {w: c for w in sorted(tunable, key=lambda w: w.key())
             if (c := _candidates(w, board, sources, scratch_limit)) is not None}
    # Best (cost, entity, record) per (workload, variant).
    best: dict[Workload, dict[KernelVariant, tuple[float, ConfigEntity, TuningRecord]]] = {}
    for workload, (_, items) in found.items():
        per_variant: dict[KernelVariant, tuple[float, ConfigEntity, TuningRecord]] = {}
        for cost, entity, record in items:
            variant = entity.variant()
            if variant not in per_variant or cost < per_variant[variant][0]:
                per_variant[variant] = (cost, entity, record)
        best[workload] = per_variant
    # Only the float32 kernel has variants: int8 records (all of the default variant) do not
    # vote, and an int8 MHSA takes its best record whatever the float32 variant is.
    voters = {w: v for w, v in best.items() if w.dtype == DType.FLOAT32}
    common = set.intersection(*(set(v) for v in voters.values())) if voters else set()
    if common:
        def total(variant: KernelVariant) -> tuple[float, bool, str]:
            return (sum(voters[w][variant][0] for w in voters), not variant.is_default,
                    variant.name)

        chosen = min(common, key=total)
    else:
        chosen = KernelVariant()
    applied: dict[str, AppliedConfig] = {}
    for symbol, workload in workloads.items():
        variant = chosen if workload.dtype == DType.FLOAT32 else KernelVariant()
        pick = best.get(workload, {}).get(variant)
        if pick is not None and math.isfinite(pick[0]):
            _, entity, record = pick
            applied[symbol] = AppliedConfig(entity.kernel_config(), chosen,
                                            found[workload][0], record)
        else:
            default = KernelConfig.default_for(workload.shape, (weights or {}).get(symbol),
                                               workload.dtype)
            if scratch_limit is not None and workload.dtype in TASK_NAMES:
                default = _default_within(default, workload, board, scratch_limit)
            applied[symbol] = AppliedConfig(default, chosen, DEFAULT_ORIGIN)
    return applied


def _default_within(default: KernelConfig, workload: Workload, board: str,
                    scratch_limit: int) -> KernelConfig:
    """The default config with the largest block of query rows, at most the default's, whose
    scratch is within ``scratch_limit`` (larger blocks re-read the weights less); the default
    itself when it fits or when no smaller block does."""
    space = config_space(workload, board)
    for rows in range(default.rows_per_block, 0, -1):
        config = KernelConfig(rows, default.fuse_qk, default.sparse)
        entity = space.from_kernel_config(config)
        if entity is not None and space.scratch_bytes(entity) <= scratch_limit:
            return config
    return default

"""Kernel tuning: default vs tuned INSTRUCTIONS, and how many trials XGBoost and random need.

For each (board, workload) an MHSA-only model (onnx.helper, seed 0) is partitioned into its
tuning task, then:

1. exhaustive: every valid config of the space is measured (spaces here have <= 2000 configs;
   the grid tuner, batches of 32 configs as 2 firmwares of 16). Its log is kept in the cache,
   keyed by the kernel sources, so a rerun measures nothing again;
2. XGBoost, seed 0, ``--trials`` trials measured for real (its own log), then built with
   ``tvm_tiny.build(..., tuning_log=...)`` and run with ``run_on_board``: the MHSA kernel's
   instructions in the deployed firmware;
3. XGBoost and random, seeds 0 .. ``--seeds``-1, replayed against the exhaustive measurements
   (emulator counts are deterministic, so a replayed trial returns exactly what measuring it
   again would, up to a few instructions on RISC-V, where linker relaxation makes a count
   depend on the firmware layout; both are checked against the real run). Reported: trials
   until the best so far is within 5% (and 1%) of the exhaustive best (median over seeds, and
   how many seeds got there within the budget).

Every figure is instructions counted by QEMU (``-icount shift=0`` + the wincount plugin), not
cycles; on GAP9 the MHSA runs on the 8-core cluster model and the figure is the MODELLED
parallel latency (slowest core per fork + an assumed fork/join cost). ``--ship`` rewrites
``tuning_logs/<board>.jsonl`` with the best record per (workload, kernel variant) of these
workloads. Run: ``python benchmarks/tuning.py [--ship]``.

int8 rows (``--int8``): the int8 MHSA (``tt_mhsa_s8``) of the reference networks
(``tvm_tiny.testing.networks``, int8 QDQ, seed 0) on ``--int8-boards`` (default stm32l4). The
space is small (even block sizes times FWSA, about 50 configs), so the exhaustive grid is
measured outright; then XGBoost (seed 0) with ``--int8-trials`` trials measured for real, whose
log is what ``--ship`` takes the best record per workload from. Every measured config's int8
output equals the golden model bit for bit (``tuning.measure``); "deployed" is the MHSA's
instructions in the network built with that log (``run_on_board``), where the network fits
the board. int8 records leave every float32 build's config as it was (other task name).
Run: ``python benchmarks/tuning.py --int8 [--ship]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tvm_tiny
from tvm_tiny.ir.errors import TinyError
from tvm_tiny.targets.boards import get_board
from tvm_tiny.targets.resources import kernels_dir, tuning_logs_dir
from tvm_tiny.targets.toolchain import cache_dir
from tvm_tiny.testing.models import example_inputs, mhsa_helper
from tvm_tiny.testing.networks import NETWORKS, build_network, network_inputs
from tvm_tiny.tuning.log import TuningRecord, encode, load_records
from tvm_tiny.tuning.measure import MeasureErrorNo, MeasureResult
from tvm_tiny.tuning.space import config_space
from tvm_tiny.tuning.task import TuningTask, extract_tasks
from tvm_tiny.tuning.tuner import ExecutorMeasurer, GridTuner, RandomTuner, XGBTuner, tune_task

WORKLOADS = {  # name: (S, E, H, P), from benchmarks/memory.py SHAPES
    "ECGFormer": (66, 16, 8, 2),
    "Attention (Deeploy)": (16, 64, 8, 8),
}
BOARDS = ["stm32h7", "gap9"]
WITHIN = 0.05  # "within 5% of the best"
TIGHT = 0.01  # and within 1%, where the model's advantage over random shows
EXHAUSTIVE_LIMIT = 2000
#: Reference networks whose int8 MHSA is tuned (--int8), and the boards.
S8_NETWORKS = ["eegformer", "tinyradar", "deeploy_attention"]
S8_BOARDS = ["stm32l4"]

_SOURCES = {"tt_mhsa_f32": ("mhsa/tt_mhsa_f32*.c", "port/*.c", "include/tt_mhsa.h",
                            "include/tt_status.h", "include/tt_cluster.h"),
            "tt_mhsa_s8": ("mhsa/tt_mhsa_s8*.c", "port/*.c", "include/tt_mhsa*.h",
                           "include/tt_simd.h", "include/tt_status.h", "include/tt_cluster.h")}


def _sources_hash(board: str, kernel: str = "tt_mhsa_f32") -> str:
    """Kernel sources, board flags and the cross compiler: what the counts depend on."""
    digest = hashlib.sha256()
    root = kernels_dir()
    for pattern in _SOURCES[kernel]:
        for path in sorted(root.glob(pattern)):
            digest.update(path.read_bytes())
    tc = get_board(board).toolchain
    assert tc is not None
    digest.update(" ".join(tc.arch_flags).encode())
    digest.update(subprocess.run([tc.cc, "--version"], capture_output=True, text=True,
                                 check=False).stdout.encode())
    return digest.hexdigest()[:12]


def _task(board: str, shape: tuple[int, int, int, int]) -> TuningTask:
    (task,) = extract_tasks(mhsa_helper(*shape, seed=0), board)
    return task


def exhaustive(task: TuningTask, measurer: ExecutorMeasurer, directory: Path
               ) -> tuple[dict[int, float], Path]:
    s = task.shape
    log = directory / (f"exhaustive-{task.board}-{s.seq}x{s.embed}x{s.heads}x{s.proj}-"
                       f"{task.workload.dtype}-{_sources_hash(task.board, task.name)}.jsonl")
    tuner = GridTuner(task)
    if len(tuner.valid) > EXHAUSTIVE_LIMIT:
        raise SystemExit(f"{task.describe()}: {len(tuner.valid)} valid configs, beyond the "
                         f"exhaustive limit {EXHAUSTIVE_LIMIT}")
    tune_task(task, tuner, len(tuner.valid), measurer, log=log, batch_size=32,
              include_default=False)
    return dict(tuner.measured), log


def replay(table: dict[int, float]):  # noqa: ANN201 -- a Measurer
    def measure(task: TuningTask, indices: list[int]) -> list[MeasureResult]:
        return [MeasureResult(i, (table[i],), MeasureErrorNo.NO_ERROR) if math.isfinite(table[i])
                else MeasureResult(i, (1e9,), MeasureErrorNo.RUNTIME_DEVICE) for i in indices]
    return measure


def trials_to(history: list[tuple[int, float, float]], target: float) -> int | None:
    for trial, _, best in history:
        if best <= target:
            return trial
    return None


def _median(values: list[int | None], budget: int) -> str:
    reached = [v for v in values if v is not None]
    if len(reached) * 2 <= len(values):
        return f">{budget}"
    ordered = sorted(v if v is not None else budget + 1 for v in values)
    return f"{statistics.median(ordered):g}"


def run(board: str, name: str, shape: tuple[int, int, int, int], trials: int, seeds: int,
        directory: Path, measurer: ExecutorMeasurer) -> dict[str, object]:
    task = _task(board, shape)
    space = config_space(task)
    started = time.monotonic()
    table, exhaustive_log = exhaustive(task, measurer, directory)
    valid = {i: c for i, c in table.items() if math.isfinite(c)}
    best_index = min(valid, key=valid.__getitem__)
    best = valid[best_index]
    default = space.from_kernel_config(task.default_config())
    default_cost = table.get(default.index) if default is not None else None
    target = best * (1 + WITHIN)  # seed 0, measured for real

    xgb_log = directory / f"xgb-{board}-{'x'.join(map(str, shape))}.jsonl"
    xgb_log.unlink(missing_ok=True)
    real = tune_task(task, XGBTuner(task, 0), trials, measurer, log=xgb_log)
    replayed = tune_task(task, XGBTuner(task, 0), trials, replay(table))
    replay_same = [c for _, c, _ in real.history] == [c for _, c, _ in replayed.history]
    # The same config measured in two firmwares (exhaustive vs the real XGBoost run).
    real_costs = {r.config_index: r.mean_cost for r in load_records(xgb_log)}
    replay_delta = max((abs(c - table[i]) for i, c in real_costs.items()
                        if math.isfinite(c) and math.isfinite(table[i])), default=0.0)

    model = mhsa_helper(*shape, seed=0)
    lib = tvm_tiny.build(model, target=board, tuning_log=str(xgb_log), name="tuned")
    (entry,) = lib.metadata["offloaded"]
    board_run = lib.run_on_board(*example_inputs(model, seed=0).values())
    deployed = (board_run.cluster.modelled_per_step[entry["name"]] if board_run.cluster
                else board_run.per_kernel[entry["name"]])

    trials_to_target: dict[str, dict[float, list[int | None]]] = {}
    for tuner_name, cls in (("xgb", XGBTuner), ("random", RandomTuner)):
        runs = [tune_task(task, cls(task, seed), trials, replay(table)).history
                for seed in range(seeds)]
        trials_to_target[tuner_name] = {tol: [trials_to(h, best * (1 + tol)) for h in runs]
                                        for tol in (WITHIN, TIGHT)}
    return {
        "board": board, "workload": name, "shape": list(shape), "space": len(space),
        "valid": len(tuner_valid(task)), "default": default_cost, "best": best,
        "best_config": str(space.get(best_index)), "xgb_best": real.best_cost,
        "xgb_config": str(real.best), "xgb_trials_seed0": trials_to(real.history, target),
        "trials_to": trials_to_target, "deployed": deployed, "deployed_kernel": entry["kernel"],
        "replay_same": replay_same, "replay_delta": replay_delta,
        "seconds": round(time.monotonic() - started),
        "logs": [str(exhaustive_log), str(xgb_log)], "modelled": board_run.cluster is not None,
    }


def tuner_valid(task: TuningTask) -> list[int]:
    return config_space(task).valid_indices()


def table(rows: list[dict[str, object]], trials: int, seeds: int) -> str:
    head = (f"| board | workload (S, E, H, P) | configs (valid) | default | exhaustive best | "
            f"default / best | XGBoost best in {trials} | deployed (tuned build) | trials to "
            f"within 5%: XGBoost seed 0 / median XGBoost / median random | within 1%: median "
            f"XGBoost / median random |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        shape = ", ".join(map(str, r["shape"]))
        default = r["default"]
        ratio = f"{default / r['best']:.2f}x" if default else "-"
        default_text = f"{default:,.0f}" if default else "invalid"
        star = "*" if r["modelled"] else ""
        xgb0 = r["xgb_trials_seed0"] if r["xgb_trials_seed0"] is not None else f">{trials}"
        def cell(name: str, tol: float, r=r) -> str:
            values = r["trials_to"][name][tol]
            return f"{_median(values, trials)} ({sum(v is not None for v in values)}/{seeds})"

        lines.append(
            f"| {r['board']}{star} | {r['workload']} ({shape}) | {r['space']} ({r['valid']}) | "
            f"{default_text} | {r['best']:,.0f} | {ratio} | {r['xgb_best']:,.0f} | "
            f"{r['deployed']:,.0f} | {xgb0} / {cell('xgb', WITHIN)} / {cell('random', WITHIN)} | "
            f"{cell('xgb', TIGHT)} / {cell('random', TIGHT)} |")
    return "\n".join(lines)


def ship(rows: list[dict[str, object]]) -> list[Path]:
    """Rewrite tuning_logs/<board>.jsonl: best record per (workload, variant) of ours; records
    of other workloads already there are kept."""
    written = []
    for board in sorted({r["board"] for r in rows}):
        ours = [r for r in rows if r["board"] == board]
        records: list[TuningRecord] = []
        for r in ours:
            for path in r["logs"]:
                records += [rec for rec in load_records(path, board=board) if rec.ok]
        best: dict[tuple, TuningRecord] = {}
        for rec in records:
            values = rec.entity_values()
            # int8 records have no variant knobs: one best record per workload.
            key = (rec.workload.key(), values.get("tile"), values.get("fma"))
            if key not in best or rec.mean_cost < best[key].mean_cost:
                best[key] = rec
        target = tuning_logs_dir() / f"{board}.jsonl"
        keys = {k[0] for k in best}
        kept = [rec for rec in load_records(target, board=board) if rec.workload.key() not in keys]
        lines = [encode(rec) for rec in kept] + [encode(best[k]) for k in sorted(best, key=str)]
        target.write_text("".join(line + "\n" for line in lines))
        written.append(target)
    return written


def run_s8(board: str, network: str, trials: int, directory: Path,
           measurer: ExecutorMeasurer) -> list[dict[str, object]]:
    """The int8 MHSA workloads of one reference network on one board: exhaustive, XGBoost in
    ``trials`` (real measurements), and the MHSAs' instructions in the tuned network."""
    model = build_network(network, dtype="int8")
    rows = []
    for task in extract_tasks(model, board):
        started = time.monotonic()
        space = config_space(task)
        table_, exhaustive_log = exhaustive(task, measurer, directory)
        valid = {i: c for i, c in table_.items() if math.isfinite(c)}
        best_index = min(valid, key=valid.__getitem__)
        default = space.from_kernel_config(task.default_config())
        s = task.shape
        xgb_log = directory / f"xgb-{board}-{network}-{s.seq}x{s.embed}x{s.heads}x{s.proj}-s8.jsonl"
        xgb_log.unlink(missing_ok=True)
        real = tune_task(task, XGBTuner(task, 0), trials, measurer, log=xgb_log)
        rows.append({
            "board": board, "workload": network, "shape": [s.seq, s.embed, s.heads, s.proj],
            "space": len(space), "valid": len(valid), "symbols": list(task.symbols),
            "default": table_.get(default.index) if default is not None else None,
            "default_config": str(default), "best": valid[best_index],
            "best_config": str(space.get(best_index)), "xgb_best": real.best_cost,
            "xgb_config": str(real.best), "xgb_trials": real.trials,
            "logs": [str(xgb_log)], "exhaustive_log": str(exhaustive_log),
            "seconds": round(time.monotonic() - started),
            "modelled": get_board(board).cluster_cores > 1})
    _deployed_s8(model, board, rows)
    return rows


def _deployed_s8(model: object, board: str, rows: list[dict[str, object]]) -> None:
    """The tuned network's MHSA instructions (sum over the MHSAs of each task), or why not."""
    for r in rows:
        r["deployed"], r["deployed_note"] = None, ""
    if not rows:
        return
    log = rows[0]["logs"][0]
    merged = Path(str(log) + ".all")
    merged.write_text("".join(Path(r["logs"][0]).read_text() for r in rows))
    try:
        lib = tvm_tiny.build(model, target=board, tuning_log=str(merged), name="tuned")
        run = lib.run_on_board(*network_inputs(model, seed=0))
    except TinyError as err:  # the int8 network does not fit the board (yet): say so
        for r in rows:
            r["deployed_note"] = str(err).splitlines()[0][:120]
        return
    for r in rows:
        names = [e["name"] for e in lib.metadata["offloaded"] if e["name"] in r["symbols"]]
        counts = (run.cluster.modelled_per_step if run.cluster else run.per_kernel)
        r["deployed"] = sum(counts[n] for n in names) / max(1, len(names))
        r["deployed_kernel"] = [e["kernel"] for e in lib.metadata["offloaded"]
                                if e["name"] in r["symbols"]][0]


def table_s8(rows: list[dict[str, object]], trials: int) -> str:
    lines = ["| board | network (S, E, H, P) | configs (valid) | default | default config | "
             f"exhaustive best | best config | default / best | XGBoost best in {trials} | "
             "deployed (tuned build, per MHSA) |",
             "|---|---|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        shape = ", ".join(map(str, r["shape"]))
        default = r["default"]
        ratio = f"{default / r['best']:.2f}x" if default else "-"
        star = "*" if r["modelled"] else ""
        deployed = (f"{r['deployed']:,.0f}" if r["deployed"] is not None
                    else f"- ({r['deployed_note']})")
        lines.append(
            f"| {r['board']}{star} | {r['workload']} ({shape}) | {r['space']} ({r['valid']}) | "
            f"{default:,.0f} | {r['default_config']} | {r['best']:,.0f} | {r['best_config']} | "
            f"{ratio} | {r['xgb_best']:,.0f} | {deployed} |")
    return "\n".join(lines)


def main_s8(args: argparse.Namespace) -> int:
    rows: list[dict[str, object]] = []
    with ExecutorMeasurer(workers=args.workers) as measurer:
        for board in args.int8_boards:
            for network in args.networks:
                print(f"[tuning int8] {board} {network} {NETWORKS[network]}", file=sys.stderr)
                rows += run_s8(board, network, args.int8_trials, args.out, measurer)
    print(f"int8 MHSA kernel tuning (tvm_tiny {tvm_tiny.__version__}; instructions counted by "
          "QEMU, not cycles; * = GAP9 8-core cluster, MODELLED parallel latency; default = the "
          "board default config; every measured output bit-exact with the golden model)\n")
    print(table_s8(rows, args.int8_trials))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    if args.ship:
        for path in ship(rows):
            print(f"shipped {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", nargs="*", default=BOARDS)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench_tuning")
    parser.add_argument("--ship", action="store_true", help="rewrite tuning_logs/<board>.jsonl")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--int8", action="store_true",
                        help="the int8 MHSA of the reference networks instead")
    parser.add_argument("--int8-boards", nargs="*", default=S8_BOARDS)
    parser.add_argument("--networks", nargs="*", default=S8_NETWORKS)
    parser.add_argument("--int8-trials", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.int8:
        return main_s8(args)
    rows = []
    with ExecutorMeasurer(workers=args.workers) as measurer:
        for board in args.boards:
            for name in args.workloads:
                print(f"[tuning] {board} {name} {WORKLOADS[name]}", file=sys.stderr)
                rows.append(run(board, name, WORKLOADS[name], args.trials, args.seeds,
                                args.out, measurer))
    print(f"MHSA kernel tuning (tvm_tiny {tvm_tiny.__version__}; instructions counted by QEMU, "
          "not cycles; * = GAP9 8-core cluster, MODELLED parallel latency; default = board "
          "default config, 2x2 tile, no FMA)\n")
    print(table(rows, args.trials, args.seeds))
    print(f"\n(n/{args.seeds}): seeds reaching the target within {args.trials} trials; "
          f"XGBoost and random seeds 0..{args.seeds - 1} replayed against the exhaustive "
          "measurements.")
    for r in rows:
        print(f"- replay check {r['board']} {r['workload']}: the configs of the real XGBoost run "
              f"differ from their exhaustive measurement by at most {r['replay_delta']:.0f} "
              f"instructions; replayed seed 0 {'retraces' if r['replay_same'] else 'differs from'}"
              " the real run")
    for r in rows:
        print(f"- {r['board']} {r['workload']}: exhaustive best {r['best_config']}; XGBoost "
              f"(seed 0) best {r['xgb_config']}; deployed kernel {r['deployed_kernel']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
    if args.ship:
        for path in ship(rows):
            print(f"shipped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``tvm-tiny`` command line: build, run, export, report, tune, demo (mirrors the Python API)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from matplotlib.figure import Figure

from tvm_tiny.bench import main as bench_main
from tvm_tiny.build import build
from tvm_tiny.firmware.project import export_project
from tvm_tiny.ir.errors import RunError, TinyError
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing.models import encoder_helper, example_inputs
from tvm_tiny.tuning import report, tune


def _summary(lib: Any) -> str:
    m = lib.metadata
    lines = [f"model '{m['model']}' for target '{m['target']}': entry point {m['entry_point']}()"]
    for entry in m["offloaded"]:
        k = entry["kernel"]
        lines.append(
            f"  offloaded {entry['name']}: S={entry['seq']} E={entry['embed']} H={entry['heads']} "
            f"P={entry['proj']} {entry['dtype']}, rows_per_block={k['rows_per_block']} "
            f"fuse_qk={k['fuse_qk']}{_variant(k)} ({k['source']}); "
            f"params {entry['unfused_params_bytes']} -> {entry['params_bytes']} B; "
            f"peak {entry['peak_bytes']} B{_layerwise(entry['layerwise_peak_bytes'])}"
            + _storage(entry.get("weights", {}))
        )
    for layer in m.get("sparse_linear", []):
        lines.append(
            f"  offloaded {layer['name']}: pruned linear [{layer['rows']}x{layer['in_features']}]"
            f" x [{layer['in_features']}x{layer['out_features']}], "
            f"{100 * layer['density']:.0f}% nonzero, CSR: {layer['dense_bytes']} -> "
            f"{layer['stored_bytes']} B")
    for reason in m.get("not_offloaded", []):
        lines.append(f"  left to TVM: {reason}")
    lines.append(
        f"  arena {m['arena_bytes']} B{_layerwise(m['layerwise_arena_bytes'], 'TVM alone')}, "
        f"params {m['params_bytes']} B, {len(m['tvm_functions'])} TVM kernel calls"
    )
    lines.extend(_params_by_layer(m.get("params_by_layer", [])))
    return "\n".join(lines)


def _params_by_layer(rows: list[dict[str, Any]]) -> list[str]:
    """``    params  42944 B  mhsa       tvm_tiny_mhsa_0`` per layer (TVM's fused function
    names cut to 48 characters)."""
    return [f"    params {r['bytes']:7d} B  {r['kind']:10s} {r['layer'][:48]}" for r in rows]


def _layerwise(value: int | None, who: str = "") -> str:
    """`` (layer-wise 73728 B)`` when the build compared (``compare=True``), else nothing."""
    if value is None:
        return ""
    return f" (layer-wise{', ' + who if who else ''}: {value} B)"


def _storage(weights: dict[str, dict[str, Any]]) -> str:
    """``; CSR: wq 4096 -> 1668 B, ...`` for the row-compressed matrices of an MHSA."""
    csr = [f"{name} {w['dense_bytes']} -> {w['stored_bytes']} B" for name, w in weights.items()
           if w["format"] == "csr"]
    return "; CSR: " + ", ".join(csr) if csr else ""


def _variant(kernel: dict[str, Any]) -> str:
    """`` tile=4x4 fma=True`` when a non-default kernel variant is applied, else nothing."""
    if kernel.get("tile", "2x2") == "2x2" and not kernel.get("fma", False):
        return ""
    return f" tile={kernel['tile']} fma={kernel['fma']}"


def _load_inputs(lib: Any, paths: list[str] | None, seed: int) -> list[np.ndarray]:
    if paths:
        return [np.load(p) for p in paths]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(t.shape).astype(t.dtype) for t in lib.inputs]


def cmd_build(args: argparse.Namespace) -> int:
    lib = build(args.model, target=args.target, offload=not args.no_offload,
                tuning_log=args.tuning_log, sparse=not args.dense)
    out = Path(args.output)
    lib.write_sources(out)
    print(_summary(lib))
    print(f"sources written to {out}/ (codegen/host/src, runtime/, metadata.json)")
    return 0


def _board_report(lib: Any, run: Any, host_outputs: list[np.ndarray]) -> str:
    """Instructions per kernel and memory per memory of one emulated run (instructions, not
    cycles)."""
    board = get_board(run.board)
    lines = [f"instructions on {run.board} (QEMU {run.machine}, -icount shift=0; "
             "instructions, not cycles):",
             f"  {'one model run':56s} {run.instructions:12d}"]
    if run.minstret is not None:
        lines.append(f"  {'minstret around the run (cross-check)':56s} {run.minstret:12d}")
    for name, count in sorted(run.per_kernel.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name[:56]:56s} {count:12d} {100.0 * count / run.instructions:6.1f}%")
    if run.cluster is not None:
        c = run.cluster
        lines.append(
            f"MODELLED {c.cores}-core cluster (each core's work measured, the cores run one "
            f"after another; a fork = slowest core + {c.fork_join_instructions} assumed "
            "fork/join instructions):")
        for name, modelled in c.modelled_per_step.items():
            lines.append(f"  {name[:56]:56s} {modelled:12d} (one core: "
                         f"{dict(run.per_step)[name]})")
        lines.append(f"  {'one model run, modelled':56s} {c.modelled_instructions:12d} "
                     f"({c.serial_instructions / c.modelled_instructions:.2f}x fewer)")
    lines += [f"  note: {note}" for note in board.notes]
    lines.append(f"memory on {run.board} (linked firmware vs the board; the model's share):")
    shares = {n["memory"]: n["parts"] for n in lib.metadata["memory_needs"]}
    for mem in board.memories:
        used, size = run.memory.get(mem.name, (0, mem.size))
        share = ", ".join(f"{k} {v}" for k, v in shares.get(mem.name, {}).items())
        if board.placement is not None and mem.name == board.placement.stack:
            share += f" (stack used {run.stack_used})"
        lines.append(f"  {mem.name:6s} {used:9d} of {size:9d} B ({100.0 * used / size:5.1f}%)"
                     f"{'  ' + share if share else ''}")
    for spec, value, ref in zip(lib.outputs, run.outputs, host_outputs):
        err = float(np.abs(value.astype(np.float64) - ref).max())
        lines.append(f"  output '{spec.name}' on {run.board} vs host: max |error| {err:.3g}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    lib = build(args.model, target=args.target, offload=not args.no_offload,
                tuning_log=args.tuning_log, sparse=not args.dense)
    inputs = _load_inputs(lib, args.input, args.seed)
    outputs = lib.run(*inputs)
    print(_summary(lib))
    board_run = lib.run_on_board(*inputs) if args.target != "host" else None
    for spec, value in zip(lib.outputs, board_run.outputs if board_run else outputs):
        print(f"  output '{spec.name}' {list(value.shape)} {value.dtype}: mean {value.mean():.6g} "
              f"min {value.min():.6g} max {value.max():.6g}")
    if board_run is not None:
        print(_board_report(lib, board_run, outputs))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    lib = build(args.model, target=args.target, offload=not args.no_offload,
                tuning_log=args.tuning_log, sparse=not args.dense)
    out = export_project(lib, args.output)
    print(_summary(lib))
    print(f"project written to {out}/: make -C {out} builds it, make -C {out} run emulates it")
    return 0


def _plan_table(title: str, meta: dict[str, Any]) -> str:
    rows = [f"{title}: arena {meta['arena_bytes']} B", "  buffer                                   "
            "bytes   offset  steps"]
    for b in sorted(meta["memory_plan"], key=lambda b: (b["offset"], b["first_step"])):
        rows.append(f"  {b['name'][:40]:40s} {b['bytes']:7d} {b['offset']:8d}  "
                    f"{b['first_step']}-{b['last_step']}")
    return "\n".join(rows)


def cmd_report(args: argparse.Namespace) -> int:
    lib = build(args.model, target=args.target, tuning_log=args.tuning_log,
                sparse=not args.dense, compare=True)
    print(_summary(lib))
    print(_plan_table("tvm_tiny plan (MHSA offloaded, depth-first)", lib.metadata))
    if lib.metadata["offloaded"]:
        layerwise = {"arena_bytes": lib.metadata["layerwise_arena_bytes"],
                     "memory_plan": lib.metadata["layerwise_memory_plan"]}
        print(_plan_table("layer-wise plan (TVM alone)", layerwise))
    if args.plot:
        plot_memory(lib.metadata, args.plot)
        print(f"memory plot written to {args.plot}")
    if args.profile:
        print(_profile(lib, args.seed))
    return 0


def _profile(lib: Any, seed: int) -> str:
    """Instructions of every kernel call of one emulated run, largest first, with its share."""
    if lib.target == "host":
        raise RunError("--profile counts instructions on an emulated board: pass --target "
                       "stm32l4|stm32h7|stm32f746|gap9")
    run = lib.run_on_board(*_load_inputs(lib, None, seed))
    lines = [f"profile of one run on {run.board} (QEMU {run.machine}; instructions, not cycles),"
             f" {run.profiled_instructions} instructions with per-kernel markers:",
             f"  {'#':>3s} {'kernel call':52s} {'instructions':>12s} {'share':>6s}"]
    order = sorted(enumerate(run.per_step), key=lambda item: -item[1][1])
    for index, (name, count) in order:
        share = 100.0 * count / run.profiled_instructions
        lines.append(f"  {index:3d} {name[:52]:52s} {count:12d} {share:5.1f}%")
    glue = run.profiled_instructions - sum(count for _, count in run.per_step)
    lines.append(f"  {'':3s} {'(entry point glue between kernels)':52s} {glue:12d} "
                 f"{100.0 * glue / run.profiled_instructions:5.1f}%")
    return "\n".join(lines)


def plot_memory(metadata: dict[str, Any], path: str) -> None:
    """Arena bytes in use at each kernel call, tvm_tiny vs layer-wise (TVM alone)."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for key, label in (("layerwise_arena_usage_by_step", "layer-wise (TVM alone)"),
                       ("arena_usage_by_step", "tvm_tiny (depth-first MHSA)")):
        usage = metadata[key]
        ax.step(range(len(usage)), usage, where="mid", label=label)
    ax.axhline(metadata["arena_bytes"], linestyle=":", color="C1",
               label=f"tvm_tiny arena {metadata['arena_bytes']} B")
    ax.axhline(metadata["layerwise_arena_bytes"], linestyle=":", color="C0",
               label=f"layer-wise arena {metadata['layerwise_arena_bytes']} B")
    ax.set_xlabel("kernel call (step)")
    ax.set_ylabel("bytes live in the arena")
    ax.set_title(f"Working memory of '{metadata['model']}' on {metadata['target']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune every MHSA workload of a model on a board; extra tuners (``--tuner xgb,random``)
    run for comparison with logs of their own next to ``--log``."""
    tuners = [t.strip() for t in args.tuner.split(",") if t.strip()]
    log = Path(args.log)
    results = []
    for i, name in enumerate(tuners):
        path = log if i == 0 else log.with_name(f"{log.stem}.{name}{log.suffix}")
        bar = report.ProgressBar(label=f"{name} ")
        try:
            results += tune(args.model, target=args.target, trials=args.trials, log=path,
                            tuner=name, seed=args.seed, workers=args.workers, progress=bar)
        finally:
            bar.close()
        print(f"{name}: records appended to {path}")
    print(report.summary(results))
    if args.plot:
        report.plot_convergence(results, args.plot)
        print(f"convergence plot written to {args.plot}")
    return 0


DEMO_SHAPE = {"seq": 32, "embed": 64, "heads": 4, "layers": 2}
"""Radar-gesture sized encoder (TinyRadar-like: S=32, E=64, H=4), two layers."""


def cmd_demo(args: argparse.Namespace) -> int:
    shape = DEMO_SHAPE
    print(f"[demo] building a {shape['layers']}-layer encoder deterministically "
          f"(S={shape['seq']}, E={shape['embed']}, H={shape['heads']}, seed 0)")
    model = encoder_helper(shape["seq"], shape["embed"], shape["heads"], layers=shape["layers"])
    feeds = example_inputs(model, seed=0)
    reference = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    lib = build(model, target="host", name="demo_encoder", compare=True)
    (output,) = lib.run(*feeds.values())
    baseline = build(model, target="host", offload=False, name="demo_encoder_tvm")
    (base_output,) = baseline.run(*feeds.values())
    err = float(np.abs(output - reference).max())
    rel = err / float(np.abs(reference).max())
    print(_summary(lib))
    print(f"[demo] max |error| vs onnxruntime: {err:.3g} (relative {rel:.3g}); "
          f"TVM alone: {float(np.abs(base_output - reference).max()):.3g}")
    m = lib.metadata
    print(f"[demo] arena: tvm_tiny {m['arena_bytes']} B vs TVM alone "
          f"{baseline.metadata['arena_bytes']} B "
          f"({baseline.metadata['arena_bytes'] / m['arena_bytes']:.2f}x smaller)")
    ok = rel < 1e-4 and len(m["offloaded"]) == shape["layers"]
    print("[demo] " + ("OK: every MHSA offloaded and the output matches onnxruntime" if ok
                       else "FAILED"))
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2, sort_keys=True))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tvm-tiny", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model", help="ONNX model file")
        p.add_argument("--target", default="host", help="target profile (default: host)")
        if name != "tune":
            p.add_argument("--tuning-log", help="apply the best records of this tuning log")
            p.add_argument("--dense", action="store_true",
                           help="keep pruned weights dense (no row-compressed storage)")
        return p

    p = model_command("build", "compile a model to C sources")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--no-offload", action="store_true", help="TVM alone (the baseline)")
    p.set_defaults(func=cmd_build)
    p = model_command("run", "build and run a model (host, or a board in its emulator)")
    p.add_argument("--input", nargs="*", help=".npy input files (default: random, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-offload", action="store_true")
    p.set_defaults(func=cmd_run)
    p = model_command("export", "write a self-contained firmware project for a board")
    p.add_argument("-o", "--output", required=True, help="project directory")
    p.add_argument("--no-offload", action="store_true")
    p.set_defaults(func=cmd_export)
    p = model_command("report", "print the memory plan of both plans")
    p.add_argument("--plot", help="write a PNG of arena use per step for both plans")
    p.add_argument("--profile", action="store_true",
                   help="run on the (emulated) board and print instructions per kernel call")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (--profile)")
    p.set_defaults(func=cmd_report)
    p = model_command("tune", "tune the MHSA kernels on a board (instruction counts, emulated)")
    p.add_argument("--trials", type=int, default=64, help="configs measured per task")
    p.add_argument("--log", required=True, help="JSON-lines tuning log (appended; resumes)")
    p.add_argument("--tuner", default="xgb",
                   help="xgb, random or grid; a comma list compares them (first one: --log)")
    p.add_argument("--plot", help="PNG of best instructions vs trials per tuner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="firmwares measured in parallel")
    p.set_defaults(func=cmd_tune, target="stm32h7")
    p = sub.add_parser("bench", help="benchmark suite: networks x boards x dtypes vs TVM alone",
                       add_help=False)
    p.set_defaults(func=None)
    p = sub.add_parser("demo", help="the main job: build, run and check a 2-layer encoder")
    p.add_argument("--json", help="also write the metadata to this file")
    p.set_defaults(func=cmd_demo)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":  # its own argument parser (--quick, --networks, ...)
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TinyError as err:
        print(f"tvm-tiny: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark suite: every reference network × board × dtype, tvm_tiny vs TVM alone, one run.

Both columns of a row come from the same model built twice (``offload=True`` and ``False``), run
on the same emulator in the same invocation. Every count is **instructions counted by QEMU**
(``-icount shift=0`` plus our TCG plugin), never cycles; GAP9's 8-core figure is **modelled**
(per-core counts of the portable cluster port, slowest core plus an assumed fork/join cost).

Prints a markdown table, writes ``--json`` (default ``benchmarks/results.json``) and a PNG bar
chart (``--plot``, default ``benchmarks/results.png``). ``--quick`` runs a CI-sized subset.
Also available as ``tvm-tiny bench``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tvm_tiny.build import build
from tvm_tiny.ir.errors import MemoryPlanError
from tvm_tiny.ir.version import __version__
from tvm_tiny.testing.networks import NETWORKS, build_network, network_inputs

BOARDS = ("stm32l4", "stm32h7", "gap9")
DTYPES = ("float32", "int8")
QUICK = {"networks": ("deeploy_attention", "ecgformer"), "boards": ("stm32l4", "gap9"),
         "dtypes": DTYPES}


@dataclass
class Row:
    network: str
    board: str
    dtype: str
    macs_mhsa: int
    fits: bool
    fit_error: str
    tiny_total: int | None = None
    tiny_mhsa: int | None = None
    tiny_modelled_8core: int | None = None
    mhsa_modelled_8core: int | None = None
    tvm_total: int | None = None
    tvm_fits: bool = True
    tiny_arena: int = 0
    tvm_arena: int = 0
    tiny_params: int = 0
    tvm_params: int = 0
    tiny_flash: int | None = None
    tvm_flash: int | None = None
    offloaded: int = 0
    # Wall-clock seconds of build() alone (host time, not emulated): one build each, so a rough
    # figure; `farm-bench`-style repeated timing belongs to a quiet machine.
    tiny_build_s: float | None = None
    tvm_build_s: float | None = None

    @property
    def mhsa_instr_per_mac(self) -> float | None:
        if self.tiny_mhsa is None or not self.macs_mhsa:
            return None
        return self.tiny_mhsa / self.macs_mhsa


def _flash(run: object) -> int | None:
    for name, (used, _available) in run.memory.items():
        if name.upper().startswith(("FLASH", "L2")):
            return used
    return None


def _build_and_run(model: object, board: str, offload: bool, inputs: list[np.ndarray],
                   name: str) -> tuple[object, object | None, str, float]:
    """(lib, run or None, fit error text, seconds the build took)."""
    start = time.perf_counter()
    try:
        lib = build(model, target=board, offload=offload, name=name)
    except MemoryPlanError as err:
        return None, None, str(err).splitlines()[0], time.perf_counter() - start
    seconds = time.perf_counter() - start
    return lib, lib.run_on_board(*inputs), "", seconds


def measure(network: str, board: str, dtype: str) -> Row:
    model = build_network(network, dtype)
    inputs = network_inputs(model)
    spec = NETWORKS[network]
    macs = spec.layers * (4 * spec.seq * spec.embed * spec.heads * spec.proj
                          + 2 * spec.heads * spec.seq ** 2 * spec.proj)
    tiny, tiny_run, error, tiny_s = _build_and_run(model, board, True, inputs,
                                                   f"{network}_{dtype}")
    row = Row(network, board, dtype, macs, fits=tiny is not None, fit_error=error,
              tiny_build_s=round(tiny_s, 2))
    if tiny is not None:
        row.offloaded = len(tiny.metadata["offloaded"])
        row.tiny_total = tiny_run.instructions
        row.tiny_mhsa = sum(v for k, v in tiny_run.per_kernel.items()
                            if k.startswith("tvm_tiny_mhsa")) or None
        row.tiny_arena = tiny.metadata["arena_bytes"]
        row.tiny_params = tiny.metadata["params_bytes"]
        row.tiny_flash = _flash(tiny_run)
        if tiny_run.cluster is not None:
            row.tiny_modelled_8core = tiny_run.cluster.modelled_instructions
            row.mhsa_modelled_8core = sum(
                v for k, v in tiny_run.cluster.modelled_per_step.items()
                if k.startswith("tvm_tiny_mhsa")) or None
    base, base_run, base_error, base_s = _build_and_run(model, board, False, inputs,
                                                        f"{network}_{dtype}_tvm")
    row.tvm_build_s = round(base_s, 2)
    row.tvm_fits = base is not None
    if base is not None:
        row.tvm_total = base_run.instructions
        row.tvm_arena = base.metadata["arena_bytes"]
        row.tvm_params = base.metadata["params_bytes"]
        row.tvm_flash = _flash(base_run)
    elif not row.fit_error:
        row.fit_error = f"TVM alone: {base_error}"
    return row


def _num(value: int | float | None, fmt: str = ",") -> str:
    return "–" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    head = ("| network | board | dtype | MHSA offloaded | instructions tvm_tiny | "
            "TVM alone | ratio | MHSA instructions | MHSA instr/MAC | GAP9 8-core model "
            "(modelled) | GAP9 MHSA 8-core speed-up (modelled) | arena B tvm_tiny / TVM | "
            "params B | build s tvm_tiny / TVM | fits |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        ratio = (r.tvm_total / r.tiny_total if r.tvm_total and r.tiny_total else None)
        fits = "yes" if r.fits and r.tvm_fits else ("tvm_tiny only" if r.fits else "no")
        speedup = (r.tiny_mhsa / r.mhsa_modelled_8core
                   if r.tiny_mhsa and r.mhsa_modelled_8core else None)
        lines.append(
            f"| {r.network} | {r.board} | {r.dtype} | {r.offloaded} | {_num(r.tiny_total)} | "
            f"{_num(r.tvm_total)} | {_num(ratio, '.2f')}{'x' if ratio else ''} | "
            f"{_num(r.tiny_mhsa)} | "
            f"{_num(r.mhsa_instr_per_mac, '.2f')} | {_num(r.tiny_modelled_8core)} | "
            f"{_num(speedup, '.1f')}{'x' if speedup else ''} | "
            f"{_num(r.tiny_arena or None)} / {_num(r.tvm_arena or None)} | "
            f"{_num(r.tiny_params or None)} | "
            f"{_num(r.tiny_build_s, '.1f')} / {_num(r.tvm_build_s, '.1f')} | {fits} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    measured = [r for r in rows if r.tiny_total and r.tvm_total]
    labels = [f"{r.network}\n{r.board} {r.dtype}" for r in measured]
    x = np.arange(len(measured))
    fig = Figure(figsize=(max(8, 0.9 * len(measured)), 4.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, [r.tvm_total for r in measured], 0.4, label="TVM alone")
    ax.bar(x + 0.2, [r.tiny_total for r in measured], 0.4, label="tvm_tiny")
    ax.set_yscale("log")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("instructions per inference (QEMU count, not cycles)")
    ax.set_title("tvm_tiny vs TVM alone, same model, same emulator")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized subset")
    parser.add_argument("--networks", nargs="*", default=None)
    parser.add_argument("--boards", nargs="*", default=None)
    parser.add_argument("--dtypes", nargs="*", default=None)
    parser.add_argument("--json", default="benchmarks/results.json")
    parser.add_argument("--plot", default="benchmarks/results.png")
    args = parser.parse_args(argv)
    networks = args.networks or (QUICK["networks"] if args.quick else tuple(NETWORKS))
    boards = args.boards or (QUICK["boards"] if args.quick else BOARDS)
    dtypes = args.dtypes or (QUICK["dtypes"] if args.quick else DTYPES)
    rows = []
    started = time.time()
    for network in networks:
        for dtype in dtypes:
            for board in boards:
                print(f"[bench] {network} {dtype} on {board} ...", file=sys.stderr, flush=True)
                rows.append(measure(network, board, dtype))
    print("Instructions counted in QEMU (-icount shift=0, our TCG plugin): instructions, not "
          "cycles. GAP9 8-core figures are modelled.")
    print(table(rows))
    for r in rows:
        if r.fit_error:
            print(f"- {r.network} {r.dtype} on {r.board}: {r.fit_error}")
    meta = {"commit": _commit(), "tvm_tiny": __version__,
            "python": platform.python_version(), "seconds": round(time.time() - started, 1),
            "unit": "instructions (QEMU), not cycles"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) | {"mhsa_instr_per_mac": r.mhsa_instr_per_mac}
                                for r in rows]}, indent=2))
    plot(rows, args.plot)
    print(f"wrote {args.json} and {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

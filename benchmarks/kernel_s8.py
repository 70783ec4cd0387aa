"""int8 MHSA kernel: INSTRUCTIONS per MAC on an emulated Cortex-M4, portable reference vs SIMD.

Builds one firmware per kernel variant for board ``stm32l4`` (QEMU mps2-an386, Cortex-M4F with
DSP, the board's real 96 KiB data SRAM and 1 MiB flash in the linker script); each firmware
calls ``tt_mhsa_s8`` once per shape and config between window markers, and the QEMU wincount
plugin counts the instructions of each call exactly. Counts are instructions, never cycles.

MACs are the layer's nominal multiply-accumulates, 4 S E H P + 2 H S^2 P (the Q, K, V, O
projections, Q K^T and A V, with E_out = E), whether or not FWSA changes what is executed.
Outputs are also compared with the numpy model (bit-exact, or the script fails).

Cases run in one firmware sharing one scratch; when that does not fit the board, one firmware
per case, and a case that alone does not fit is reported as such (the linker checks the real
memory sizes). Run: ``python benchmarks/kernel_s8.py [--json out.json] [--rows 8]
[--board stm32l4]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tvm_tiny.codegen.mhsa_s8_layout import (
    arrange_s8,
    context_mode_s8,
    scalar_fields_s8,
    scratch_bytes_s8,
)
from tvm_tiny.firmware.kernel_firmware import (
    MhsaS8Case,
    build_kernel_firmware,
    mhsa_s8_harness,
    run_kernel_firmware,
)
from tvm_tiny.ir.errors import ToolchainError
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, MhsaWeights
from tvm_tiny.ir.quant import quantize
from tvm_tiny.reference.mhsa_s8 import reference_mhsa_s8
from tvm_tiny.targets.boards import Board, get_board
from tvm_tiny.testing.calibration import calibrate_s8

SHAPES = [  # name, S, E, H, P (shared notes, paper-and-deeploy.md "shapes")
    ("EEGFormer", 81, 32, 8, 32),
    ("TinyRadar", 32, 64, 16, 64),
    ("CCT", 64, 128, 1, 192),
    ("long", 256, 64, 4, 16),
]
VARIANTS = {  # name (a key of the JSON) -> kernel sources (relative to kernels/)
    "portable": ["mhsa/tt_mhsa_s8_reference.c"],  # the plain-loop reference
    "simd": ["mhsa/tt_mhsa_s8.c"],  # the production kernel (Arm DSP path on this board)
}
SEED = 0


def nominal_macs(s: int, e: int, h: int, p: int) -> int:
    return 4 * s * e * h * p + 2 * h * s * s * p


def make_case(name: str, s: int, e: int, h: int, p: int, rows: int, fuse: bool,
              rng: np.random.Generator) -> tuple[MhsaS8Case, np.ndarray]:
    """A case with random N(0, 1/fan_in) weights, calibrated on its own random input."""
    def mat(r: int, c: int) -> np.ndarray:
        return (rng.standard_normal((r, c)) / np.sqrt(r)).astype(np.float32)

    def vec(n: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    hp = h * p
    weights = MhsaWeights(mat(e, hp), mat(e, hp), mat(e, hp), mat(hp, e), vec(hp), vec(hp),
                          vec(hp), vec(e), float(1 / np.sqrt(p)))
    x = rng.standard_normal((s, e))
    params = calibrate_s8(weights, x, h)
    shape = MhsaShape(s, e, h, p, e)
    config = KernelConfig(rows, fuse)
    x_q = quantize(x, params.x)
    case = MhsaS8Case(name=name, dims=(s, e, h, p, e), rows_per_block=rows, fuse_qk=fuse,
                      arrays=arrange_s8(params, shape, config),
                      scalars=scalar_fields_s8(params, shape, config), x=x_q,
                      scratch_bytes=scratch_bytes_s8(shape, config))
    return case, reference_mhsa_s8(x_q, params, shape, config)


def run_cases(board: Board, variant: str, sources: list[str], cases: list[MhsaS8Case],
              tag: str) -> list[tuple[int, bytes]]:
    """(instructions, y bytes) of each case, from one firmware."""
    elf = build_kernel_firmware(board, f"mhsa_s8_bench_{variant}_{tag}",
                                {"main.c": mhsa_s8_harness(cases)}, sources)
    run = run_kernel_firmware(board, elf, [c.name for c in cases])
    return [(w.instructions, run.files[f"y{k}.bin"]) for k, w in enumerate(run.windows)]


def measure(board: Board, variant: str, sources: list[str], cases: list[MhsaS8Case],
            expected: list[np.ndarray]) -> list[int | None] | None:
    """Instructions of every case (None: the case does not fit the board's memories), or None
    when an output is not bit-exact. One firmware for all cases (one shared scratch), else one
    per case."""
    try:
        results: list[tuple[int, bytes] | None] = list(
            run_cases(board, variant, sources, cases, "all"))
    except ToolchainError as err:
        if "overflowed" not in str(err.stderr):
            raise
        results = []
        for k, case in enumerate(cases):
            try:
                results += run_cases(board, variant, sources, [case], f"case{k}")
            except ToolchainError as case_err:
                if "overflowed" not in str(case_err.stderr):
                    raise
                results.append(None)
    counts: list[int | None] = []
    for k, (case, y) in enumerate(zip(cases, expected)):
        if results[k] is None:
            counts.append(None)
            continue
        count, raw = results[k]
        got = np.frombuffer(raw, np.int8).reshape(y.shape)
        if not np.array_equal(got, y):
            bad = tuple(np.argwhere(got != y)[0])
            print(f"{variant} {case.name}: NOT bit-exact at {bad}: {got[bad]} vs {y[bad]}",
                  file=sys.stderr)
            return None
        counts.append(count)
    return counts


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parent)
    return proc.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="stm32l4")
    parser.add_argument("--rows", type=int, default=8, help="rows_per_block (default 8)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    board = get_board(args.board)

    rng = np.random.default_rng(SEED)
    cases: list[MhsaS8Case] = []
    expected: list[np.ndarray] = []
    meta: list[dict[str, object]] = []
    for name, s, e, h, p in SHAPES:
        for fuse in (False, True):
            case, y = make_case(f"{name} fuse={int(fuse)}", s, e, h, p, args.rows, fuse, rng)
            cases.append(case)
            expected.append(y)
            shape = MhsaShape(s, e, h, p, e)
            meta.append({"shape": name, "S": s, "E": e, "H": h, "P": p, "fuse_qk": fuse,
                         "rows_per_block": args.rows, "macs": nominal_macs(s, e, h, p),
                         "scratch_bytes": case.scratch_bytes,
                         "context_mode": context_mode_s8(shape, KernelConfig(args.rows, fuse)),
                         "params_bytes": sum(int(a.nbytes) for a in case.arrays.values())})
    counts: dict[str, list[int | None]] = {}
    for variant, sources in VARIANTS.items():
        counts[variant] = measure(board, variant, sources, cases, expected)
        if counts[variant] is None:
            return 1

    print(f"int8 MHSA on {board.name} ({board.emulator.machine}), arm-none-eabi-gcc -O2 "
          f"{' '.join(board.toolchain.arch_flags)}; commit {git_commit()}, seed {SEED}")
    print("INSTRUCTIONS (QEMU icount + wincount plugin), not cycles; every output bit-exact "
          "vs tvm_tiny.reference.mhsa_s8.reference_mhsa_s8\n")
    head = (f"{'shape (S,E,H,P)':<26}{'fuse':>5}{'MACs':>11}{'scratch B':>10}"
            f"{'portable':>12}{'/MAC':>6}{'simd':>12}{'/MAC':>6}{'speed-up':>9}")
    print(head)
    print("-" * len(head))
    rows = []
    for k, m in enumerate(meta):
        port, simd = counts["portable"][k], counts["simd"][k]
        label = f"{m['shape']} ({m['S']},{m['E']},{m['H']},{m['P']})"
        head_cols = f"{label:<26}{int(m['fuse_qk']):>5}{m['macs']:>11,}{m['scratch_bytes']:>10,}"
        if port is None or simd is None:
            print(f"{head_cols}   does not fit {board.name}'s memories (scratch + x + y)")
        else:
            print(f"{head_cols}{port:>12,}{port / m['macs']:>6.2f}{simd:>12,}"
                  f"{simd / m['macs']:>6.2f}{port / simd:>8.2f}x")
        rows.append({**m, "portable_instructions": port, "simd_instructions": simd})
    if args.json:
        args.json.write_text(json.dumps({
            "version": 1, "board": board.name, "machine": board.emulator.machine,
            "toolchain": board.toolchain.cc, "flags": list(board.toolchain.arch_flags) + ["-O2"],
            "commit": git_commit(), "seed": SEED, "unit": "instructions", "results": rows},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

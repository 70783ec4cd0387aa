"""int8 linear kernel: INSTRUCTIONS per MAC on an emulated board, portable C vs SIMD.

Builds one kernel firmware per path (``tvm_tiny.firmware.kernel_firmware``) for board
``stm32l4`` (QEMU mps2-an386, Cortex-M4F with DSP; the board's real memories in the linker
script); each firmware calls ``tt_linear_s8`` once per (M, K, N) between window markers and the
QEMU wincount plugin counts the instructions of each call exactly. Counts are instructions,
never cycles. MACs are M K N. Every output is compared with the numpy golden model
(``tvm_tiny.reference.linear_s8``; bit-exact, or the script fails). For reference, CMSIS-NN's
``arm_nn_vec_mat_mult_t_s8`` runs 1.88 instructions per MAC in the same emulator (issue 14).

Run: ``python benchmarks/kernel_linear_s8.py [--board stm32l4] [--rows-per-block 16]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tvm_tiny.codegen.linear_s8 import DEFAULT_ROWS_PER_BLOCK, LinearS8Case, linear_s8_harness
from tvm_tiny.firmware.kernel_firmware import build_kernel_firmware, run_kernel_firmware
from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.reference.linear_s8 import LinearS8Quant, lower_linear_s8, reference_linear_s8
from tvm_tiny.targets.boards import get_board

SHAPES = [  # name, M, K, N
    ("vector", 1, 256, 64),
    ("EEGFormer FFN up", 81, 32, 128),
    ("EEGFormer FFN down", 81, 128, 32),
    ("encoder FFN", 64, 64, 256),
    ("encoder FFN down", 64, 256, 64),
    ("K=64 square", 32, 64, 64),
]
PATHS = {"portable": "TT_LINEAR_S8_PORTABLE", "simd": None}  # simd: the board's default path
SEED = 0


def make_case(name: str, m: int, k: int, n: int, rows_per_block: int, two_step: bool,
              rng: np.random.Generator) -> LinearS8Case:
    weight = QWeight.quantize(rng.standard_normal((k, n)) / np.sqrt(k))
    bias = (0.1 * rng.standard_normal(n)).astype(np.float32)
    acc = QParams(8.0 / 255, 0) if two_step else None
    quant = LinearS8Quant(QParams(0.02, -3), weight, bias, QParams(6.0 / 255, 2), acc, 0.0)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    return LinearS8Case(name, m, lower_linear_s8(quant), x, rows_per_block)


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parent)
    return proc.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--board", default="stm32l4")
    parser.add_argument("--rows-per-block", type=int, default=DEFAULT_ROWS_PER_BLOCK)
    parser.add_argument("--two-step", action="store_true",
                        help="the two-step requantization (MatMul -> Q -> DQ -> Add -> Q)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    board = get_board(args.board)
    rng = np.random.default_rng(SEED)
    cases = [make_case(f"{name} ({m},{k},{n})", m, k, n, args.rows_per_block, args.two_step, rng)
             for name, m, k, n in SHAPES]
    counts: dict[str, list[int]] = {}
    for path, define in PATHS.items():
        elf = build_kernel_firmware(board, f"linear_s8_bench_{path}",
                                    {"main.c": linear_s8_harness(cases)},
                                    ["linear/tt_linear_s8.c"], [define] if define else [])
        run = run_kernel_firmware(board, elf, [c.name for c in cases])
        for i, case in enumerate(cases):
            got = np.frombuffer(run.files[f"y{i}.bin"], np.int8).reshape(case.rows, -1)
            if not np.array_equal(got, reference_linear_s8(case.x, case.low)):
                print(f"{path} {case.name}: NOT bit-exact", file=sys.stderr)
                return 1
        counts[path] = [w.instructions for w in run.windows]

    print(f"int8 linear on {board.name} ({board.emulator.machine}), {board.toolchain.cc} "
          f"{' '.join(board.toolchain.arch_flags)}; rows_per_block={args.rows_per_block}, "
          f"{'two-step' if args.two_step else 'one-step'} requantization, fused ReLU; "
          f"commit {git_commit()}, seed {SEED}")
    print("INSTRUCTIONS (QEMU icount + wincount plugin), not cycles; every output bit-exact "
          "vs tvm_tiny.reference.linear_s8\n")
    head = (f"{'shape (M,K,N)':<32}{'MACs':>10}{'scratch B':>10}{'portable':>12}{'/MAC':>6}"
            f"{'simd':>11}{'/MAC':>6}{'speed-up':>9}")
    print(head)
    print("-" * len(head))
    rows = []
    for i, case in enumerate(cases):
        k, n = case.low.weight.shape
        macs = case.rows * k * n
        port, simd = counts["portable"][i], counts["simd"][i]
        print(f"{case.name:<32}{macs:>10,}{case.scratch_bytes:>10,}{port:>12,}"
              f"{port / macs:>6.2f}{simd:>11,}{simd / macs:>6.2f}{port / simd:>8.2f}x")
        rows.append({"shape": case.name, "M": case.rows, "K": k, "N": n, "macs": macs,
                     "scratch_bytes": case.scratch_bytes, "portable_instructions": port,
                     "simd_instructions": simd})
    if args.json:
        args.json.write_text(json.dumps({
            "version": 1, "board": board.name, "machine": board.emulator.machine,
            "toolchain": board.toolchain.cc, "flags": list(board.toolchain.arch_flags),
            "rows_per_block": args.rows_per_block, "two_step": args.two_step,
            "commit": git_commit(), "seed": SEED, "unit": "instructions", "results": rows},
            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

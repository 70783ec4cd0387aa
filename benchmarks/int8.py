"""int8 MHSA on the emulated Cortex-M4 (stm32l4): tvm_tiny vs TVM alone on the same QDQ model.

For each reference shape an MHSA-only model (onnx.helper, seed 0) is quantized with
``tvm_tiny.quantize`` (onnxruntime static QDQ, 16 seeded calibration inputs), then built twice for
``stm32l4``: MHSA offloaded to the int8 kernel, and ``offload=False`` (TVM runs the QDQ graph as
fake-quant float). Figures are instructions counted by QEMU (mps2-an386, ``-icount shift=0``,
our TCG plugin): instructions, not cycles. MACs = 4·S·E·H·P + 2·H·S²·P. A build that does not fit
the real STM32L4 runs on the same Cortex-M4 with the MPS2 board's 4 MiB memories, and the table
says so.

Run: ``python benchmarks/int8.py [--shapes NAME ...]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import tvm_tiny
from tvm_tiny.ir.errors import MemoryPlanError
from tvm_tiny.testing.models import mhsa_helper

SHAPES = {  # name: (S, E, H, P), the kernel issue's reference shapes
    "EEGFormer": (81, 32, 8, 32),
    "ECGFormer": (66, 16, 8, 2),
    "TinyRadar layer": (32, 64, 16, 64),
    "Attention": (16, 64, 8, 8),
    "CCT": (64, 128, 1, 192),
    "long sequence": (256, 64, 4, 16),
}
BOARD = "stm32l4"
# The same Cortex-M4 with the emulated MPS2 board's 4 MiB memories, where a model that does not
# fit the real STM32L4 (TVM alone, mostly) still runs, so both columns are always measured.
LARGE_M4 = "mps2_an386"


def _run(model: object, offload: bool, x: np.ndarray) -> tuple[object, bool]:
    """(lib, run) on the real stm32l4 when it fits, else on the large M4; and whether it fit."""
    try:
        lib = tvm_tiny.build(model, target=BOARD, offload=offload, name="int8_bench")
        fits = True
    except MemoryPlanError:
        lib = tvm_tiny.build(model, target=LARGE_M4, offload=offload, name="int8_bench")
        fits = False
    return (lib, lib.run_on_board(x)), fits


def measure(name: str, s: int, e: int, h: int, p: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    model = tvm_tiny.quantize(mhsa_helper(s, e, h, p, seed=0),
                              [rng.standard_normal((1, s, e)).astype(np.float32)
                               for _ in range(16)])
    x = rng.standard_normal((1, s, e)).astype(np.float32)
    macs = 4 * s * e * h * p + 2 * h * s * s * p
    row: dict[str, object] = {"name": name, "shape": (s, e, h, p), "macs": macs}
    (lib, run), row["fits"] = _run(model, True, x)
    (_, base_run), row["tvm_fits"] = _run(model, False, x)
    (entry,) = lib.metadata["offloaded"]
    row["kernel"] = entry["kernel"]
    row["mhsa"] = run.per_kernel["tvm_tiny_mhsa_0"]
    row["total"] = run.instructions
    row["tvm_total"] = base_run.instructions
    return row


def _yes(flag: object) -> str:
    return "yes" if flag else "no (run on mps2_an386)"


def _n(value: object) -> str:
    return f"{value:,}" if value else "–"


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| shape (S, E, H, P) | MACs | int8 MHSA instructions | instr/MAC | config "
             "(rows, FWSA) | model: tvm_tiny | model: TVM alone (QDQ, fake-quant float) | "
             "TVM alone / tvm_tiny | fits stm32l4: tvm_tiny / TVM alone |", "|" + "---|" * 9]
    for r in rows:
        mhsa, total, base = r.get("mhsa"), r.get("total"), r.get("tvm_total")
        kernel = r.get("kernel") or {}
        macs = r["macs"]
        per_mac = f"{mhsa / macs:.2f}" if mhsa else "–"
        ratio = f"{base / total:.1f}x" if base and total else "–"
        lines.append(
            f"| {r['name']} {r['shape']} | {macs:,} | {_n(mhsa)} | {per_mac} | "
            f"{kernel.get('rows_per_block', '–')}, {kernel.get('fuse_qk', '–')} | "
            f"{_n(total)} | {_n(base)} | {ratio} | {_yes(r['fits'])} / {_yes(r['tvm_fits'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    rows = []
    for name in args.shapes:
        print(f"[int8] {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, *SHAPES[name]))
    print(f"int8 MHSA-only models on a Cortex-M4 (QEMU mps2-an386): {BOARD} when the build "
          f"fits its memories, else the same core with 4 MiB ({LARGE_M4}). Instructions, not "
          "cycles.")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

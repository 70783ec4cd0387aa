"""int8 on the emulated Cortex-M4 (stm32l4): tvm_tiny vs TVM alone on the same QDQ model.

Two tables. **Networks** (the goals of the int8 issue): every int8 reference network
(``tvm_tiny.testing.networks``, onnxruntime static QDQ, seed 0) built for ``stm32l4``: whether
it fits the real part (else the bytes over, and the run moves to the 4 MiB MPS2 M4), arena and
parameter bytes against the int8 weights it holds, instructions in total, in the MHSAs and in
everything else, instructions per MAC of the whole model (MACs of its MatMul/Gemm/Conv nodes),
the same model with ``offload=False`` (TVM alone, fake-quant float) and the ratio, and the
output against onnxruntime's reference QDQ semantics (``ORT_DISABLE_ALL``, host build, 20
seeded inputs; classifiers 200 and their top-1 agreement). **MHSA shapes**: as follows.

For each reference shape an MHSA-only model (onnx.helper, seed 0) is quantized with
``tvm_tiny.quantize`` (onnxruntime static QDQ, 16 seeded calibration inputs), then built twice for
``stm32l4``: MHSA offloaded to the int8 kernel, and ``offload=False`` (TVM runs the QDQ graph as
fake-quant float). Figures are instructions counted by QEMU (mps2-an386, ``-icount shift=0``,
our TCG plugin): instructions, not cycles. MACs = 4·S·E·H·P + 2·H·S²·P. A build that does not fit
the real STM32L4 runs on the same Cortex-M4 with the MPS2 board's 4 MiB memories, and the table
says so.

Run: ``python benchmarks/int8.py [--networks NAME ...] [--shapes NAME ...]`` (``--networks`` or
``--shapes`` with no names skips that table).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
from onnx import numpy_helper

import tvm_tiny
from tvm_tiny.ir.errors import MemoryPlanError
from tvm_tiny.testing.accuracy import StepStats, compare_with_onnxruntime, model_macs
from tvm_tiny.testing.models import mhsa_helper
from tvm_tiny.testing.networks import NETWORKS, build_network, network_inputs

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


def _build(model: object, offload: bool) -> tuple[object, str]:
    """The lib for the real stm32l4 when it fits, else for the large M4; and "" or why not."""
    try:
        return tvm_tiny.build(model, target=BOARD, offload=offload, name="int8_bench"), ""
    except MemoryPlanError as err:
        why = str(err).splitlines()[0]
        return tvm_tiny.build(model, target=LARGE_M4, offload=offload, name="int8_bench"), why


def _run(model: object, offload: bool, *xs: np.ndarray) -> tuple[tuple[object, object], bool]:
    """(lib, run) on the real stm32l4 when it fits, else on the large M4; and whether it fit."""
    lib, why = _build(model, offload)
    return (lib, lib.run_on_board(*xs)), not why


CLASSIFIERS = ("cct", "tiny_vit")  # [1, classes] logits: top-1 agreement is reported
ACCURACY_INPUTS = {"classifier": 200, "other": 20}


def int8_weights(model: onnx.ModelProto) -> int:
    """Elements of the model's int8 initializers (its quantized weights)."""
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer
               if numpy_helper.to_array(i).dtype == np.int8 and len(i.dims) >= 2)


def _bytes_over(why: str) -> str:
    """"N bytes over" out of a fit error, or the error's first words."""
    for part in why.split(":"):
        if "bytes over" in part:
            return part.strip().split("(")[0].strip()
    return why[:60]


def measure_network(name: str) -> dict[str, object]:
    model = build_network(name, dtype="int8")
    xs = network_inputs(model)
    row: dict[str, object] = {"name": name, "macs": model_macs(model),
                              "weights": int8_weights(model)}
    lib, row["fit_error"] = _build(model, True)
    run = lib.run_on_board(*xs)
    row.update(arena=lib.metadata["arena_bytes"], params=lib.metadata["params_bytes"],
               total=run.instructions,
               mhsa=sum(v for k, v in run.per_kernel.items() if k.startswith("tvm_tiny_mhsa")),
               not_integerized=len(lib.metadata["not_integerized"]))
    base, row["tvm_fit_error"] = _build(model, False)
    row["tvm_total"] = base.run_on_board(*xs).instructions
    classifier = name in CLASSIFIERS
    count = ACCURACY_INPUTS["classifier" if classifier else "other"]
    host = tvm_tiny.build(model, target="host", name="int8_bench_host")
    row["accuracy"] = compare_with_onnxruntime(
        model, host.run, [network_inputs(model, seed=100 + i) for i in range(count)],
        classifier=classifier)
    return row


def network_table(rows: list[dict[str, object]]) -> str:
    lines = ["| network | MACs | fits stm32l4 | arena B | params B / int8 weights | "
             "instructions | MHSA | rest | instr/MAC | TVM alone (fake-quant) | ratio | "
             "fake-quant regions | vs onnxruntime (steps) |", "|" + "---|" * 13]
    for r in rows:
        total, mhsa = r["total"], r["mhsa"]
        fits = "yes" if not r["fit_error"] else f"no: {_bytes_over(r['fit_error'])}"
        acc: StepStats = r["accuracy"]
        lines.append(
            f"| {r['name']} | {r['macs']:,} | {fits} | {r['arena']:,} | "
            f"{r['params']:,} / {r['weights']:,} | {total:,} | {100 * mhsa / total:.1f}% | "
            f"{100 * (total - mhsa) / total:.1f}% | {total / r['macs']:.2f} | "
            f"{r['tvm_total']:,} | {r['tvm_total'] / total:.1f}x | {r['not_integerized']} | "
            f"{acc.summary()} |")
    return "\n".join(lines)


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
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args(argv)
    net_rows = []
    for name in args.networks:
        print(f"[int8] network {name} ...", file=sys.stderr, flush=True)
        net_rows.append(measure_network(name))
    if net_rows:
        print(f"int8 reference networks built for {BOARD} (QEMU mps2-an386 Cortex-M4; a build "
              f"that does not fit runs on {LARGE_M4}). Instructions, not cycles.")
        print(network_table(net_rows))
        print()
    rows = []
    for name in args.shapes:
        print(f"[int8] {name} ...", file=sys.stderr, flush=True)
        rows.append(measure(name, *SHAPES[name]))
    if rows:
        print(f"int8 MHSA-only models on a Cortex-M4 (QEMU mps2-an386): {BOARD} when the "
              f"build fits its memories, else the same core with 4 MiB ({LARGE_M4}). "
              "Instructions, not cycles.")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

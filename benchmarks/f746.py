"""The 320 KiB board: a TinyFormer-sized int8 hybrid model on the STM32F746 (issue #8).

The model is :func:`tvm_tiny.testing.hybrid.hybrid_ode_int8` at ``size="tinyformer"`` (about 0.7 M
parameters: two stride-2 conv stems, a 3-step shared-weight Neural-ODE block at 128 channels,
two encoder layers over 8x8 = 64 tokens with H=4, a linear classifier), int8 QDQ with seeded
calibration. It is built for ``stm32f746`` (320 KiB SRAM, 1 MiB flash) twice: with the MHSAs
offloaded to tvm_tiny and with ``offload=False`` (TVM alone). For each, the table gives what the
build needs per memory (``metadata["memory_needs"]``: params in flash, arena + I/O + stack in
SRAM; code and libc come on top) against the board, and, when the build fits, what the linker
reports after an emulated run (``run_on_board(...).memory``, code included). A build that does
not fit prints the fit error's bytes over. Figures are bytes; nothing is timed except the
emulator's instruction count. Run: ``python benchmarks/f746.py [--no-run]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx

import tvm_tiny
from tvm_tiny.ir.errors import MemoryPlanError
from tvm_tiny.targets.boards import get_board, memory_needs
from tvm_tiny.testing.hybrid import calibration_inputs, hybrid_ode, hybrid_ode_int8, parameter_count

BOARD = "stm32f746"
KIB = 1024


def _needs_from_host(model, offload: bool) -> list[dict[str, object]]:
    """Memory needs on the board computed from a host build (used when the board build is
    refused, so the table still shows how far over it is)."""
    lib = tvm_tiny.build(model, target="host", offload=offload, name="f746")
    io_bytes = sum(t.nbytes for t in lib.inputs + lib.outputs)
    needs = memory_needs(get_board(BOARD), arena_bytes=lib.metadata["arena_bytes"],
                         params_bytes=lib.metadata["params_bytes"], io_bytes=io_bytes)
    return [{"memory": n.memory, "bytes": n.total, "size": n.size, "parts": dict(n.parts)}
            for n in needs]


def qdq_weight_bytes(model) -> int:
    """Bytes of the QDQ file's weights as stored there (int8 weights, int32 biases, float
    scales), shape constants excluded: what flash would hold if every weight stayed int8."""
    sizes = {onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.FLOAT: 4}
    return sum(int(np.prod(i.dims)) * sizes.get(i.data_type, 0) for i in model.graph.initializer)


def measure(model, offload: bool, run: bool) -> dict[str, object]:
    row: dict[str, object] = {"offload": offload}
    try:
        lib = tvm_tiny.build(model, target=BOARD, offload=offload, name="f746")
    except MemoryPlanError as err:
        row["error"] = str(err)
        row["needs"] = _needs_from_host(model, offload)
        return row
    row["needs"] = lib.metadata["memory_needs"]
    row["offloaded"] = [e["dtype"] for e in lib.metadata["offloaded"]]
    if run:
        x = calibration_inputs(model, 1, seed=0)[0]
        result = lib.run_on_board(x)
        (host,) = lib.run(x)
        row["linked"] = result.memory
        row["instructions"] = result.instructions
        row["matches_host"] = bool(np.array_equal(result.outputs[0], host))
        total = sum(result.per_kernel.values())
        row["share_mhsa"] = sum(v for k, v in result.per_kernel.items() if "mhsa" in k) / total
        row["share_conv"] = sum(v for k, v in result.per_kernel.items()
                                if "conv2d" in k or "conv_s8" in k) / total
    return row


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| build | memory | needed by plan (B) | linked, code incl. (B) | board (B) | "
             "fits |", "|---|---|---|---|---|---|"]
    for row in rows:
        label = "tvm_tiny (MHSA offloaded)" if row["offload"] else "TVM alone (offload=False)"
        linked = row.get("linked", {})
        for need in row["needs"]:
            used = linked.get(need["memory"], (None, None))[0]
            over = need["bytes"] - need["size"]
            fits = "yes" if over <= 0 else f"NO, {over} B ({over / KIB:.1f} KiB) over"
            parts = ", ".join(f"{k} {v}" for k, v in need["parts"].items())
            lines.append(f"| {label} | {need['memory']} | {need['bytes']} ({parts}) | "
                         f"{'-' if used is None else used} | {need['size']} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="skip the emulated runs")
    args = parser.parse_args(argv)
    model = hybrid_ode_int8(size="tinyformer")
    print(f"hybrid_ode tinyformer: {parameter_count(hybrid_ode(size='tinyformer'))} float "
          f"parameters, int8 QDQ; board {BOARD}: {get_board(BOARD).description}")
    rows = [measure(model, offload, not args.no_run) for offload in (True, False)]
    print(table(rows))
    stored = qdq_weight_bytes(model)
    flash = get_board(BOARD).memory("FLASH").size
    print(f"weights as stored in the int8 QDQ file: {stored} B ({stored / KIB:.0f} KiB) vs flash "
          f"{flash} B. tvm_tiny keeps them int8 (offloaded MHSA and linear kernels, integer "
          "convolutions); TVM alone folds each DequantizeLinear and stores float32 weights")
    for row in rows:
        needs = {n["memory"]: n for n in row.get("needs", [])}
        for memory, need in needs.items():
            spare = need["size"] - need["bytes"]
            if row["offload"] and spare >= 0:
                print(f"tvm_tiny: {memory} {need['bytes']} of {need['size']} B, {spare} B "
                      f"({spare / KIB:.1f} KiB) to spare by the plan (code and libc come on top)")
    for row in rows:
        name = "tvm_tiny" if row["offload"] else "TVM alone"
        if "error" in row:
            print(f"{name}: build refused: {row['error']}")
        elif "instructions" in row:
            print(f"{name}: {row['instructions']} instructions (emulated, not cycles), MHSA "
                  f"{row['share_mhsa']:.1%}, convolutions {row['share_conv']:.1%}, outputs equal "
                  f"host: {row['matches_host']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""int8 convolution kernel: INSTRUCTIONS per MAC on the emulated Cortex-M4, next to TVM.

Two measurements per shape, both on board ``mps2_an386`` (QEMU mps2-an386, Cortex-M4F with DSP,
arm-none-eabi-gcc -O2; 4 MiB memories so the largest convolutions fit):

- **tt_conv_s8**: one kernel firmware (``tvm_tiny.firmware.kernel_firmware``) calling
  ``tt_conv_s8`` once per shape between window markers, counted exactly by the QEMU wincount
  plugin; every output compared with the numpy golden model (bit-exact, or the script fails);
- **TVM integer Relax**: the same conv as a one-node QDQ ONNX model (onnxruntime's quantizer),
  built by ``tvm_tiny.build`` with the ``tvm_tiny.conv_s8`` pattern withheld, so the conv goes
  through the integer Relax rule (``integerize/conv.py``) and TVM's C; the instructions of its
  conv (and pad) functions from ``run_on_board(...).per_kernel``. The same model with the
  pattern gives the offloaded instance's count in a whole build (AOT call included).

Counts are instructions, never cycles. MACs are N O OH OW K (K = C KH KW, or KH KW depthwise).
Shapes: the convolutions of the f746 hybrid (``benchmarks/f746.py``) and of the ``cct``
network's tokenizer, a depthwise and a pointwise conv.

Run: ``python benchmarks/kernel_conv_s8.py [--pixels-per-block 8] [--no-tvm] [--json out]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from kernel_linear_s8 import git_commit  # this folder: run as a script, like that one
from onnx import TensorProto, helper, numpy_helper

import tvm_tiny
from tvm_tiny.codegen.conv_s8 import DEFAULT_PIXELS_PER_BLOCK, ConvS8Case, conv_s8_harness
from tvm_tiny.firmware.kernel_firmware import build_kernel_firmware, run_kernel_firmware
from tvm_tiny.ir.quant import QParams, QWeight
from tvm_tiny.partition import partitioner
from tvm_tiny.partition.patterns import CONV_S8_COMPOSITE
from tvm_tiny.reference.conv_s8 import (
    ConvGeometry,
    ConvS8Quant,
    lower_conv_s8,
    reference_conv_s8,
    weight_matrix,
)
from tvm_tiny.reference.linear_s8 import LinearS8Quant
from tvm_tiny.targets.boards import get_board

BOARD = "mps2_an386"
SHAPES = [  # name, geometry
    ("hybrid stem.0 3->64 s2", ConvGeometry(1, 3, 32, 32, 64, (3, 3), (2, 2), (1, 1, 1, 1))),
    ("hybrid stem.1 64->128 s2", ConvGeometry(1, 64, 16, 16, 128, (3, 3), (2, 2),
                                              (1, 1, 1, 1))),
    ("hybrid ODE 128->128", ConvGeometry(1, 128, 8, 8, 128, (3, 3), (1, 1), (1, 1, 1, 1))),
    ("cct conv1 3->64", ConvGeometry(1, 3, 32, 32, 64, (3, 3), (1, 1), (1, 1, 1, 1))),
    ("cct conv2 64->128", ConvGeometry(1, 64, 16, 16, 128, (3, 3), (1, 1), (1, 1, 1, 1))),
    ("depthwise 64 3x3", ConvGeometry(1, 64, 16, 16, 64, (3, 3), (1, 1), (1, 1, 1, 1), 64)),
    ("pointwise 64->128", ConvGeometry(1, 64, 16, 16, 128, (1, 1))),
]
SEED = 0


def make_case(name: str, g: ConvGeometry, pixels_per_block: int,
              rng: np.random.Generator) -> ConvS8Case:
    """A conv with fused ReLU, per-channel weights, calibrated-looking scales."""
    cg = 1 if g.depthwise else g.in_channels
    w = rng.standard_normal((g.out_channels, cg, *g.kernel)) / np.sqrt(g.reduction)
    weight = QWeight.quantize(weight_matrix(w, g.groups))
    bias = (0.1 * rng.standard_normal(g.out_channels)).astype(np.float32)
    quant = ConvS8Quant(g, LinearS8Quant(QParams(0.02, -3), weight, bias, QParams(6.0 / 255, 2),
                                         None, 0.0))
    x = rng.integers(-128, 128, g.input_shape, dtype=np.int8)
    return ConvS8Case(name, lower_conv_s8(quant), x, pixels_per_block)


def onnx_conv(g: ConvGeometry, rng: np.random.Generator) -> onnx.ModelProto:
    """The float one-conv (+ ReLU) model of ``g``."""
    cg = 1 if g.depthwise else g.in_channels
    w = (rng.standard_normal((g.out_channels, cg, *g.kernel)) / np.sqrt(g.reduction))
    b = 0.1 * rng.standard_normal(g.out_channels)
    pt, pl, pb, pr = g.padding
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(g.kernel),
                              strides=list(g.strides), pads=[pt, pl, pb, pr], group=g.groups),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      list(g.input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(g.output_shape))],
        [numpy_helper.from_array(w.astype(np.float32), "w"),
         numpy_helper.from_array(b.astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@contextlib.contextmanager
def conv_pattern_withheld() -> Iterator[None]:
    """Partition without the ``tvm_tiny.conv_s8`` pattern (benchmark only): the conv then takes
    the integer Relax rule, as every conv did before the kernel."""
    original = partitioner.get_patterns_with_prefix

    def without_conv(prefix: str) -> list:
        return [p for p in original(prefix) if p.name != CONV_S8_COMPOSITE]

    partitioner.get_patterns_with_prefix = without_conv
    try:
        yield
    finally:
        partitioner.get_patterns_with_prefix = original


def model_counts(g: ConvGeometry, name: str, rng: np.random.Generator) -> tuple[int, int]:
    """(TVM integer Relax conv instructions, offloaded tt_conv_s8 instance instructions)."""
    float_model = onnx_conv(g, rng)
    calibration = [rng.standard_normal(g.input_shape).astype(np.float32) for _ in range(4)]
    qdq = tvm_tiny.quantize(float_model, calibration, per_channel=True)
    x = calibration[0]
    with conv_pattern_withheld():
        tvm_lib = tvm_tiny.build(qdq, target=BOARD, name=f"bench_tvm_{name}")
    if tvm_lib.metadata["conv_s8"]:
        raise RuntimeError("the conv pattern was not withheld")
    per_kernel = tvm_lib.run_on_board(x).per_kernel
    tvm = sum(v for k, v in per_kernel.items() if "conv2d" in k or "pad" in k)
    ours_lib = tvm_tiny.build(qdq, target=BOARD, name=f"bench_tt_{name}")
    if len(ours_lib.metadata["conv_s8"]) != 1:
        raise RuntimeError(f"{name}: the conv was not offloaded")
    per_kernel = ours_lib.run_on_board(x).per_kernel
    ours = sum(v for k, v in per_kernel.items() if "conv_s8" in k)
    return tvm, ours


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixels-per-block", type=int, default=DEFAULT_PIXELS_PER_BLOCK)
    parser.add_argument("--no-tvm", action="store_true", help="skip the TVM model builds")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    board = get_board(BOARD)
    rng = np.random.default_rng(SEED)
    cases = [make_case(name, g, args.pixels_per_block, rng) for name, g in SHAPES]
    elf = build_kernel_firmware(board, "conv_s8_bench", {"main.c": conv_s8_harness(cases)},
                                ["conv/tt_conv_s8.c", "linear/tt_linear_s8.c"])
    run = run_kernel_firmware(board, elf, [c.name for c in cases])
    for i, case in enumerate(cases):
        got = np.frombuffer(run.files[f"y{i}.bin"], np.int8).reshape(
            case.low.geometry.output_shape)
        if not np.array_equal(got, reference_conv_s8(case.x, case.low)):
            print(f"{case.name}: NOT bit-exact", file=sys.stderr)
            return 1
    kernel_counts = [w.instructions for w in run.windows]
    model = [(None, None)] * len(cases) if args.no_tvm else [
        model_counts(g, f"s{i}", rng) for i, (_, g) in enumerate(SHAPES)]

    print(f"int8 conv on {board.name} ({board.emulator.machine}, Cortex-M4), "
          f"{board.toolchain.cc} {' '.join(board.toolchain.arch_flags)} -O2; "
          f"pixels_per_block={args.pixels_per_block}, one-step requantization, fused ReLU; "
          f"commit {git_commit()}, seed {SEED}")
    print("INSTRUCTIONS (QEMU icount + wincount plugin), not cycles; every kernel output "
          "bit-exact vs tvm_tiny.reference.conv_s8\n")
    head = (f"{'shape':<26}{'K':>6}{'MACs':>12}{'scratch B':>10}{'tt_conv_s8':>12}{'/MAC':>6}"
            f"{'in model':>12}{'/MAC':>6}{'TVM int':>13}{'/MAC':>7}{'speed-up':>9}")
    print(head)
    print("-" * len(head))
    rows = []
    for case, count, (tvm, ours) in zip(cases, kernel_counts, model):
        g = case.low.geometry
        macs = g.macs
        line = (f"{case.name:<26}{g.reduction:>6}{macs:>12,}{case.scratch_bytes:>10,}"
                f"{count:>12,}{count / macs:>6.2f}")
        if tvm is not None:
            line += (f"{ours:>12,}{ours / macs:>6.2f}{tvm:>13,}{tvm / macs:>7.2f}"
                     f"{tvm / ours:>8.1f}x")
        print(line)
        rows.append({"shape": case.name, "K": g.reduction, "macs": macs,
                     "scratch_bytes": case.scratch_bytes, "kernel_instructions": count,
                     "model_instructions": ours, "tvm_integer_instructions": tvm})
    if args.json:
        args.json.write_text(json.dumps({
            "version": 1, "board": board.name, "machine": board.emulator.machine,
            "toolchain": board.toolchain.cc, "flags": list(board.toolchain.arch_flags),
            "pixels_per_block": args.pixels_per_block, "commit": git_commit(), "seed": SEED,
            "unit": "instructions", "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sparse FFN weights (issue #8 part 1): flash bytes and instructions, dense vs sparse.

One encoder layer (onnx.helper, seed 0: S=32, E=64, H=4, ReLU FFN 64 -> 256 -> 64) whose two FFN
weight matrices are magnitude-pruned at 0/50/75/90% (numpy, ``tvm_tiny.pruning``); the MHSA stays
dense and offloaded in both builds. For each sparsity the model is built for ``stm32l4`` twice:

- sparse: the default build (pruned FFN matmuls -> ``tvm_tiny.linear`` ->
  ``tt_linear_f32_csr``, CSR by output column, uint16 indices);
- dense: the same pruned model with the sparse pattern switched off, so TVM compiles the FFN
  (``fused_matmul_add1_relu``, ``fused_matmul1_add2_add``).

Columns: params = every constant byte of the firmware (``metadata["params_bytes"]``, flash);
FFN weights = the two FFN layers' weights+biases dense vs as stored; instructions (QEMU
``mps2-an386``, ``-icount``; INSTRUCTIONS, not cycles) of the FFN kernels: dense = the two TVM
matmul kernels, sparse = the two ``tvm_tiny_linear_*`` kernels (+ the ReLU and residual add TVM
then runs unfused, in parentheses the FFN total), and the whole model run.
Run: ``python benchmarks/sparse.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator

import numpy as np

import tvm_tiny
from tvm_tiny import patterns
from tvm_tiny.models import example_inputs
from tvm_tiny.pruning import pruned_ffn_encoder

SPARSITIES = (0.0, 0.5, 0.75, 0.9)
SHAPE = {"seq": 32, "embed": 64, "heads": 4, "ffn": 256}
BOARD = "stm32l4"


@contextlib.contextmanager
def sparse_pattern_off() -> Iterator[None]:
    """Build with the ``tvm_tiny.linear`` check rejecting everything (dense baseline)."""
    saved = patterns._check_linear_sparse
    patterns._check_linear_sparse = lambda context: False
    try:
        yield
    finally:
        patterns._check_linear_sparse = saved


def measure(sparsity: float) -> dict[str, object]:
    model = pruned_ffn_encoder(sparsity, **SHAPE)
    x = list(example_inputs(model).values())
    sparse_lib = tvm_tiny.build(model, target=BOARD, name="sparse_ffn")
    with sparse_pattern_off():
        dense_lib = tvm_tiny.build(model, target=BOARD, name="sparse_ffn")
    assert dense_lib.metadata["sparse_linear"] == []
    sparse_run = sparse_lib.run_on_board(*x)
    dense_run = dense_lib.run_on_board(*x)
    np.testing.assert_allclose(sparse_run.outputs[0], dense_run.outputs[0], rtol=0, atol=1e-4)
    layers = sparse_lib.metadata["sparse_linear"]
    names = {e["name"] for e in layers}
    dense_ffn = sum(v for k, v in dense_run.per_kernel.items() if "matmul" in k)
    sparse_kernels = sum(v for k, v in sparse_run.per_kernel.items() if k in names)
    # The FFN in the sparse build: the linear kernels plus what TVM no longer fuses into them
    # (ReLU, residual add): every step after the MHSA's add + layer_norm and before the last LN.
    steps = [name for name, _ in sparse_run.per_step]
    first = steps.index("layer_norm") + 1
    last = len(steps) - 1 - steps[::-1].index("layer_norm")
    sparse_ffn = sum(v for _, v in sparse_run.per_step[first:last])
    dense_w = sum(4 * (e * f + f) for e, f in ((SHAPE["embed"], SHAPE["ffn"]),
                                               (SHAPE["ffn"], SHAPE["embed"])))
    return {
        "sparsity": sparsity,
        "sparse_layers": len(layers),
        "density": [round(e["density"], 4) for e in layers],
        "params_dense": dense_lib.metadata["params_bytes"],
        "params_sparse": sparse_lib.metadata["params_bytes"],
        "ffn_bytes_dense": dense_w,
        "ffn_bytes_stored": sum(e["stored_bytes"] for e in layers) if layers else dense_w,
        "ffn_instr_dense": dense_ffn,
        "ffn_instr_sparse_kernels": sparse_kernels if layers else dense_ffn,
        "ffn_instr_sparse_total": sparse_ffn if layers else dense_ffn,
        "model_instr_dense": dense_run.instructions,
        "model_instr_sparse": sparse_run.instructions,
    }


def table(rows: list[dict[str, object]]) -> str:
    out = ["| pruned | sparse layers | params (flash) dense → sparse (B) | FFN weights dense → "
           "stored (B) | FFN instr. dense TVM | FFN instr. sparse kernels (FFN total) | "
           "speed-up | model instr. dense → sparse |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = r["ffn_instr_dense"] / r["ffn_instr_sparse_total"]
        out.append(
            f"| {100 * r['sparsity']:.0f}% | {r['sparse_layers']} | {r['params_dense']} → "
            f"{r['params_sparse']} ({100 * r['params_sparse'] / r['params_dense']:.0f}%) | "
            f"{r['ffn_bytes_dense']} → {r['ffn_bytes_stored']} | {r['ffn_instr_dense']:,} | "
            f"{r['ffn_instr_sparse_kernels']:,} ({r['ffn_instr_sparse_total']:,}) | "
            f"{speed:.2f}x | {r['model_instr_dense']:,} → {r['model_instr_sparse']:,} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = [measure(s) for s in SPARSITIES]
    print(f"board {BOARD} (QEMU, instructions not cycles); model {SHAPE}, 1 layer")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pruned weights (issue #8 part 1): flash bytes and instructions, dense vs sparse, on stm32l4.

One encoder layer (onnx.helper, seed 0: S=32, E=64, H=4, P=16, ReLU FFN 64 -> 256 -> 64) whose
weights are magnitude-pruned (numpy, ``tvm_tiny.testing.pruning``) at 0/50/75/90%, in three groups:

- ``attn``: the MHSA's Q, K, V and output projections only. The MHSA is offloaded in every
  tvm_tiny build; ``sparse`` stores its pruned matrices row-compressed inside ``tt_mhsa_f32``;
- ``ffn``: the two FFN matrices only. ``sparse`` offloads them to ``tt_linear_f32_csr``
  (``tvm_tiny.linear``); ``dense`` leaves them to TVM;
- ``both``: attention and FFN.

Each model is built three times for ``stm32l4`` and run in QEMU (``mps2-an386``, ``-icount``;
INSTRUCTIONS, not cycles): **TVM alone** (``offload=False``; when its layer-wise plan does not
fit the STM32L4's SRAM1, built for ``mps2_an386``, the same core and machine, and starred),
**tvm_tiny dense**
(``sparse=False``: MHSA offloaded, every weight dense) and **tvm_tiny sparse** (the default
build). Columns: params = every constant byte of the firmware (``metadata["params_bytes"]``,
flash); the pruned group's weights as dense bytes and as stored; instructions of the pruned
group's kernels (the MHSA kernel, or the FFN: the two TVM matmuls dense, the sparse kernels plus
the ReLU and residual add TVM then runs unfused); the whole model.
Run: ``python benchmarks/sparse.py [--json out.json] [--sparsities 0.5,0.9] [--groups attn]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

import tvm_tiny
from tvm_tiny.firmware.runner import BoardRun
from tvm_tiny.ir.errors import MemoryPlanError
from tvm_tiny.testing.models import example_inputs
from tvm_tiny.testing.pruning import pruned_encoder

SPARSITIES = (0.0, 0.5, 0.75, 0.9)
GROUPS = {"attn": ("attn",), "ffn": ("ffn",), "both": ("attn", "ffn")}
SHAPE = {"seq": 32, "embed": 64, "heads": 4, "ffn": 256}
BOARD = "stm32l4"
FALLBACK_BOARD = "mps2_an386"


def _ffn_instructions(run: BoardRun, sparse_names: set[str]) -> int:
    """Instructions of the FFN: every step between the MHSA's layer norm and the last one
    (matmuls, ReLU, residual add; sparse kernels when offloaded)."""
    if not sparse_names:
        return sum(v for k, v in run.per_kernel.items() if "matmul" in k)
    steps = [name for name, _ in run.per_step]
    first = steps.index("layer_norm") + 1
    last = len(steps) - 1 - steps[::-1].index("layer_norm")
    return sum(v for _, v in run.per_step[first:last])


def _mhsa_instructions(run: BoardRun) -> int:
    return sum(v for k, v in run.per_kernel.items() if k.startswith("tvm_tiny_mhsa"))


def _group_bytes(lib: tvm_tiny.TinyModule, group: str) -> tuple[int, int]:
    """(dense, stored) bytes of the pruned group's weight matrices in one tvm_tiny build."""
    dense = stored = 0
    if group in ("attn", "both"):
        for entry in lib.metadata["offloaded"]:
            dense += sum(w["dense_bytes"] for w in entry["weights"].values())
            stored += sum(w["stored_bytes"] for w in entry["weights"].values())
    if group in ("ffn", "both"):
        e, f = SHAPE["embed"], SHAPE["ffn"]
        ffn_dense = 4 * (e * f + f * e)
        dense += ffn_dense
        layers = lib.metadata["sparse_linear"]
        stored += (sum(x["stored_bytes"] - 4 * x["out_features"] for x in layers)
                   if layers else ffn_dense)
    return dense, stored


def measure(group: str, sparsity: float) -> dict[str, Any]:
    model = pruned_encoder(sparsity, parts=GROUPS[group], **SHAPE)
    x = list(example_inputs(model).values())
    tvm_fits, tvm_over = True, ""
    try:
        tvm_alone = tvm_tiny.build(model, target=BOARD, name="pruned", offload=False)
    except MemoryPlanError as err:
        # Counted on the same Cortex-M4 and QEMU machine with larger memories instead.
        tvm_fits, tvm_over = False, str(err).split(": ", 1)[1]
        tvm_alone = tvm_tiny.build(model, target=FALLBACK_BOARD, name="pruned", offload=False)
    libs = {
        "tvm": tvm_alone,
        "dense": tvm_tiny.build(model, target=BOARD, name="pruned", sparse=False),
        "sparse": tvm_tiny.build(model, target=BOARD, name="pruned"),
    }
    runs = {k: lib.run_on_board(*x) for k, lib in libs.items()}
    for k in ("dense", "sparse"):
        np.testing.assert_allclose(runs[k].outputs[0], runs["tvm"].outputs[0], rtol=0, atol=1e-4)
    sparse_names = {e["name"] for e in libs["sparse"].metadata["sparse_linear"]}
    row: dict[str, Any] = {"group": group, "sparsity": sparsity, "tvm_fits": tvm_fits,
                           "tvm_over": tvm_over}
    for k, lib in libs.items():
        row[f"params_{k}"] = lib.metadata["params_bytes"]
        row[f"model_instr_{k}"] = runs[k].instructions
    row["weights_dense_bytes"], row["weights_stored_bytes"] = _group_bytes(libs["sparse"], group)
    if group == "attn":
        row["kernel_instr_dense"] = _mhsa_instructions(runs["dense"])
        row["kernel_instr_sparse"] = _mhsa_instructions(runs["sparse"])
        row["kernel_instr_tvm"] = None  # TVM alone runs the MHSA as a dozen unfused kernels
        row["mhsa_formats"] = sorted({w["format"] for e in libs["sparse"].metadata["offloaded"]
                                      for w in e["weights"].values()})
    elif group == "ffn":
        row["kernel_instr_dense"] = _ffn_instructions(runs["dense"], set())
        row["kernel_instr_sparse"] = _ffn_instructions(runs["sparse"], sparse_names)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| pruned | group | params (flash, B): TVM alone / tvm_tiny dense / sparse | "
           "pruned weights dense → stored (B) | their kernels' instr.: dense → sparse | "
           "model instr.: TVM alone / tvm_tiny dense / sparse |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        kernels = "—"
        if "kernel_instr_dense" in r:
            speed = r["kernel_instr_dense"] / r["kernel_instr_sparse"]
            kernels = (f"{r['kernel_instr_dense']:,} → {r['kernel_instr_sparse']:,} "
                       f"({speed:.2f}x)")
        out.append(
            f"| {100 * r['sparsity']:.0f}% | {r['group']} | {r['params_tvm']:,} / "
            f"{r['params_dense']:,} / {r['params_sparse']:,} "
            f"({100 * r['params_sparse'] / r['params_dense']:.0f}%) | "
            f"{r['weights_dense_bytes']:,} → {r['weights_stored_bytes']:,} | {kernels} | "
            f"{r['model_instr_tvm']:,}{'' if r['tvm_fits'] else '*'} / "
            f"{r['model_instr_dense']:,} / {r['model_instr_sparse']:,} |")
    misfits = [r for r in rows if not r["tvm_fits"]]
    if misfits:
        out.append(f"\n\\* TVM alone does not fit {BOARD} ({misfits[0]['tvm_over']}); its "
                   f"instructions are counted on {FALLBACK_BOARD} (the same Cortex-M4 and QEMU "
                   "machine, larger memories).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--sparsities", default=",".join(str(s) for s in SPARSITIES))
    parser.add_argument("--groups", default=",".join(GROUPS))
    args = parser.parse_args(argv)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    groups = args.groups.split(",")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {list(GROUPS)}")
    rows = [measure(g, s) for g in groups for s in sparsities]
    print(f"board {BOARD} (QEMU mps2-an386: instructions, not cycles); encoder {SHAPE}, 1 layer")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MHSA memory and parameter table: layer-wise (TVM alone) vs tvm_tiny (FWSA + depth-first).

For each reference shape an MHSA-only model (onnx.helper, seed 0) is built twice for the host:
with the MHSA offloaded to tvm_tiny, and with ``offload=False`` (TVM lowers it layer-wise). All
figures are bytes read from ``metadata``; nothing is timed. Run: ``python benchmarks/memory.py``.

- params: the MHSA's Q/K/V/O weights and biases as stored (float32), unfused vs as tvm_tiny
  stores them (FWSA fused when E < 2P, the default rule);
- MHSA peak: working memory of the one MHSA call including its input and output tensors —
  layer-wise is the arena TVM's plan needs for the MHSA alone (intermediates + workspace),
  DFT is our kernel's scratch (closed form, ``tt_mhsa_f32_get_buffer_size``);
- model arena: the planned arena of the whole model, tvm_tiny vs TVM alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

import tvm_tiny
from tvm_tiny.ir.mhsa import KernelConfig, MhsaShape, scratch_bytes
from tvm_tiny.testing.models import mhsa_helper

SHAPES = [  # name, S, E, H, P (sources: shared notes, paper-and-deeploy.md "shapes")
    ("EEGFormer", 81, 32, 8, 32),
    ("ECGFormer", 66, 16, 8, 2),
    ("TinyRadar layer", 32, 64, 16, 64),
    ("Attention (Deeploy)", 16, 64, 8, 8),
    ("CCT", 64, 128, 1, 192),
    ("long sequence", 256, 64, 4, 16),
]


def measure(name: str, s: int, e: int, h: int, p: int) -> dict[str, object]:
    model = mhsa_helper(s, e, h, p, seed=0)
    lib = tvm_tiny.build(model, target="host", name="bench", compare=True)
    (entry,) = lib.metadata["offloaded"]
    shape = MhsaShape(s, e, h, p, e)
    # The other FWSA choice, for the parameter column (same rows_per_block).
    default = KernelConfig.default_for(shape)
    fused = replace(default, fuse_qk=True)
    return {
        "name": name, "S": s, "E": e, "H": h, "P": p,
        "fuse_qk": entry["kernel"]["fuse_qk"],
        "rows_per_block": entry["kernel"]["rows_per_block"],
        "params_unfused": entry["unfused_params_bytes"],
        "params_stored": entry["params_bytes"],
        "params_if_fused": 4 * (h * e * e + h * e + 2 * h * e * p + h * p + e),
        "peak_layerwise": entry["layerwise_peak_bytes"],
        "peak_dft": entry["peak_bytes"],
        "scratch_if_fused": scratch_bytes(shape, fused),
        "arena_tvm_tiny": lib.metadata["arena_bytes"],
        "arena_layerwise": lib.metadata["layerwise_arena_bytes"],
    }


def table(rows: list[dict[str, object]]) -> str:
    head = ("| shape (S, E, H, P) | FWSA | MHSA params unfused → stored (B) | change | "
            "MHSA peak layer-wise (B) | MHSA peak DFT (B) | peak ratio | "
            "model arena TVM alone (B) | model arena tvm_tiny (B) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        change = (r["params_stored"] - r["params_unfused"]) / r["params_unfused"]
        lines.append(
            f"| {r['name']} ({r['S']}, {r['E']}, {r['H']}, {r['P']}) | "
            f"{'fused' if r['fuse_qk'] else 'unfused'} | {r['params_unfused']:,} → "
            f"{r['params_stored']:,} | {change:+.1%} | {r['peak_layerwise']:,} | "
            f"{r['peak_dft']:,} | {r['peak_layerwise'] / r['peak_dft']:.2f}x | "
            f"{r['arena_layerwise']:,} | {r['arena_tvm_tiny']:,} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = [measure(*shape) for shape in SHAPES]
    print("Host target, float32, batch 1. Bytes from build metadata (no timing).")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

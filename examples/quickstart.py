"""Quick start: build a transformer for a board, run it on the host and in the board's emulator.

    python examples/quickstart.py
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

import tvm_tiny
from tvm_tiny.testing.networks import build_network, network_inputs

model = build_network("deeploy_attention")  # S=16, E=64, H=8, P=8, one encoder layer
(x,) = network_inputs(model)
reference = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

lib = tvm_tiny.build(model, target="stm32l4")
(y,) = lib.run(x)  # the generated C, compiled for the host
print("offloaded:", [e["name"] for e in lib.metadata["offloaded"]])
print(f"max |error| vs onnxruntime: {np.abs(y - reference).max():.2e}")
print(f"arena {lib.metadata['arena_bytes']} B, params {lib.metadata['params_bytes']} B")

run = lib.run_on_board(x)  # QEMU mps2-an386: instructions, not cycles
print(f"stm32l4 (emulated): {run.instructions:,} instructions per inference")
for name, count in sorted(run.per_kernel.items(), key=lambda kv: -kv[1])[:5]:
    print(f"  {name:40s} {count:>10,}")

int8 = tvm_tiny.quantize(model, [network_inputs(model, seed=s)[0] for s in range(16)])
lib8 = tvm_tiny.build(int8, target="stm32l4")
print(f"int8: {lib8.run_on_board(x).instructions:,} instructions per inference (emulated)")

"""Reference networks of the benchmark suite (re-exported from ``tvm_tiny.testing.networks``).

``python examples/networks.py [DIR]`` writes each network as float32 and int8 QDQ ONNX files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx

from tvm_tiny.testing.networks import *  # noqa: F403
from tvm_tiny.testing.networks import NETWORKS, build_network

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("networks")
    out.mkdir(parents=True, exist_ok=True)
    for name in NETWORKS:
        for dtype in ("float32", "int8"):
            path = out / f"{name}_{dtype}.onnx"
            onnx.save(build_network(name, dtype), str(path))
            print(f"{path}  {path.stat().st_size} bytes")

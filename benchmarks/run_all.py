"""Benchmark suite of the reference networks (see ``tvm_tiny/bench.py``; also ``tvm-tiny bench``).

Run: ``python benchmarks/run_all.py [--quick]``.
"""

from __future__ import annotations

import sys

from tvm_tiny.bench import main

if __name__ == "__main__":
    sys.exit(main())

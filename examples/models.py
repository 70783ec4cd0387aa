"""Model builders of the tests and reference networks (from ``tvm_tiny.testing.models``).

Run ``python examples/models.py [OUT_DIR]`` to regenerate the committed test models in
``tests/data`` (default), with their README stating versions and seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tvm_tiny.testing.models import *  # noqa: F403
from tvm_tiny.testing.models import save_test_models

if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "tests" / "data"
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    for path in save_test_models(target):
        print(f"{path}  {path.stat().st_size} bytes")

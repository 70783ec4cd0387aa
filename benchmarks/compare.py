"""Compare two folders of benchmark JSONs field by field (a refactor must leave them equal).

Run: ``python benchmarks/compare.py BEFORE_DIR AFTER_DIR``. Run metadata (commit, seconds) and
build wall-clock columns are ignored; every other field that differs is printed with both values,
and the exit status is 1 when anything differs. Counts are QEMU instruction counts, not cycles.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IGNORED = {"meta", "seconds", "commit", "tiny_build_s", "tvm_build_s"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """``path: before -> after`` for every leaf that differs."""
    if type(before) is not type(after):
        return [f"{path}: {before!r} -> {after!r}"]
    if isinstance(before, dict):
        return [d for k in sorted(set(before) | set(after))
                for d in differences(before.get(k), after.get(k), f"{path}.{k}")]
    if isinstance(before, list):
        out = [] if len(before) == len(after) else [f"{path}: {len(before)} -> {len(after)} items"]
        return out + [d for i, (b, a) in enumerate(zip(before, after))
                      for d in differences(b, a, f"{path}[{i}]")]
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    same = True
    for old in sorted(args.before.glob("*.json")):
        new = args.after / old.name
        if not new.exists():
            print(f"{old.name}: missing in {args.after}")
            same = False
            continue
        diffs = differences(_strip(json.loads(old.read_text())),
                            _strip(json.loads(new.read_text())))
        print(f"{old.name}: {'identical' if not diffs else f'{len(diffs)} fields differ'}")
        for line in diffs:
            print(f"  {line}")
        same &= not diffs
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

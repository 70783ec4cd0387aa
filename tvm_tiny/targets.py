"""Compilation targets known to the build. The host profile lives here until board profiles
(issue #4) turn this into data in ``boards.py``."""

from __future__ import annotations

from dataclasses import dataclass

import tvm


@dataclass(frozen=True)
class TargetProfile:
    """What the build needs to know about where the code runs."""

    name: str
    tir_target: dict[str, object]  # TVM "c" target attributes (mcpu/march for boards)
    description: str

    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(dict(self.tir_target))


HOST = TargetProfile("host", {"kind": "c"}, "the build machine (gcc, x86-64), run via ctypes")

_TARGETS = {HOST.name: HOST}


def get_target(name: str) -> TargetProfile:
    """The profile called ``name``; unknown names list the known ones."""
    try:
        return _TARGETS[name]
    except KeyError:
        known = ", ".join(sorted(_TARGETS))
        raise ValueError(f"unknown target '{name}'; known targets: {known}") from None


def target_names() -> list[str]:
    return sorted(_TARGETS)

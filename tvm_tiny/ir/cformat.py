"""Formatting helpers for generated C: identifiers, dtypes and constant arrays.

Floats are printed with the shortest decimal form that round-trips in their own precision (numpy's
``unique`` formatting), so the C reads naturally and parses back to the exact bits.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

# dtype -> (C type, DLPack type code, bits)
_DTYPES: dict[str, tuple[str, str, int]] = {
    "float32": ("float", "kDLFloat", 32),
    "float64": ("double", "kDLFloat", 64),
    "int8": ("int8_t", "kDLInt", 8),
    "int16": ("int16_t", "kDLInt", 16),
    "int32": ("int32_t", "kDLInt", 32),
    "int64": ("int64_t", "kDLInt", 64),
    "uint8": ("uint8_t", "kDLUInt", 8),
    "uint16": ("uint16_t", "kDLUInt", 16),
    "uint32": ("uint32_t", "kDLUInt", 32),
    "bool": ("uint8_t", "kDLBool", 8),
}


def c_type(dtype: str) -> str:
    """C element type of a tensor dtype; unknown dtypes raise with the dtype named."""
    try:
        return _DTYPES[dtype][0]
    except KeyError:
        raise ValueError(f"dtype '{dtype}' has no C mapping in tvm_tiny") from None


def dl_type(dtype: str) -> tuple[str, int]:
    """(DLPack type-code enumerator, bits) of a dtype."""
    _, code, bits = _DTYPES[dtype]
    return code, bits


# C99 keywords (and the C11 ones a C99 compiler may still reserve): never valid identifiers.
_C_KEYWORDS = frozenset((
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Bool", "_Complex", "_Imaginary",
    "_Alignas", "_Alignof", "_Atomic", "_Generic", "_Noreturn", "_Static_assert",
    "_Thread_local", "bool", "true", "false",
))


def c_identifier(name: str) -> str:
    """A valid, readable C identifier derived from ``name`` (keywords get a ``_`` suffix)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not ident or ident[0].isdigit():
        ident = "m_" + ident
    if ident in _C_KEYWORDS:
        ident += "_"
    return ident


def _float_literal(value: float, suffix: str, single: bool) -> str:
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    as_type = np.float32(value) if single else np.float64(value)
    text = np.format_float_scientific(as_type, unique=True, exp_digits=2)
    return text + suffix


def format_values(array: np.ndarray, per_line: int = 8, indent: str = "  ") -> str:
    """Comma-separated C initializer values of ``array`` (flattened), several per line."""
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        items = [_float_literal(float(v), "f", True) for v in flat]
    elif array.dtype == np.float64:
        items = [_float_literal(float(v), "", False) for v in flat]
    elif array.dtype == np.bool_:
        items = [str(int(v)) for v in flat]
    elif np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.int64:
            items = [f"INT64_C({int(v)})" for v in flat]
        else:
            items = [str(int(v)) for v in flat]
    else:
        raise ValueError(f"cannot print constant of dtype {array.dtype} as C")
    lines = [indent + ", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n".join(lines)


def warn_non_finite(name: str, array: np.ndarray) -> None:
    """Warn (never fail) when a weight holds NaN or Inf: the model is probably broken.

    Called by the frontend with the model's own tensor names, once per weight.
    """
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        warnings.warn(
            f"weight '{name}' (shape {list(array.shape)}) holds {bad} NaN/Inf value(s); "
            "the compiled model will propagate them",
            RuntimeWarning,
            stacklevel=4,
        )


def const_array(name: str, array: np.ndarray, alignment: int, comment: str = "") -> str:
    """A ``static const`` aligned array definition holding ``array``."""
    ctype = _DTYPES[str(array.dtype) if array.dtype != np.bool_ else "bool"][0]
    head = f"/* {comment} */\n" if comment else ""
    count = max(array.size, 1)
    body = format_values(array) if array.size else "  0"
    return (
        f"{head}static const {ctype} {name}[{count}] TT_ALIGNED({alignment}) = {{\n{body}\n}};\n"
    )

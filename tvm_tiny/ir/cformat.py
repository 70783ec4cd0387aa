"""Formatting helpers for generated C: identifiers, dtypes and constant arrays.

Floats are printed with the shortest decimal form that round-trips in their own precision (numpy's
``unique`` formatting), so the C reads naturally and parses back to the exact bits.
"""

from __future__ import annotations

import math
import re
import textwrap
import warnings
from collections.abc import Sequence

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


COLUMN_LIMIT = 100
"""Column limit of generated C, as in the repository's ``.clang-format``."""
CONTINUATION_INDENT = 4
"""clang-format's ``ContinuationIndentWidth`` (Google style), used for wrapped lines."""


def c_float(value: float, single: bool = True) -> str:
    """A C literal of ``value``: shortest round-trip decimal, ``f`` suffix for float."""
    return _float_literal(float(value), "f" if single else "", single)


def real_text(value: float) -> str:
    """A real number for a C comment: the shortest decimal that round-trips as float32."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return np.format_float_scientific(np.float32(value), unique=True, exp_digits=2)


def designated(fields: Sequence[tuple[str, str]], indent: int = CONTINUATION_INDENT) -> str:
    """The lines of a designated initializer ``{.a = x, ...}`` between ``= {`` and ``};``: one
    field per line with a trailing comma, a layout clang-format keeps as it is."""
    return "\n".join(f"{' ' * indent}.{name} = {value}," for name, value in fields)


def value_items(array: np.ndarray) -> list[str]:
    """The C literals of ``array``'s elements (flattened)."""
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        return [_float_literal(float(v), "f", True) for v in flat]
    if array.dtype == np.float64:
        return [_float_literal(float(v), "", False) for v in flat]
    if array.dtype == np.bool_:
        return [str(int(v)) for v in flat]
    if np.issubdtype(array.dtype, np.integer):
        if array.dtype == np.int64:
            return [f"INT64_C({int(v)})" for v in flat]
        return [str(int(v)) for v in flat]
    raise ValueError(f"cannot print constant of dtype {array.dtype} as C")


def braced_items(items: Sequence[str], indent: int = CONTINUATION_INDENT) -> str:
    """The lines between ``= {`` and ``};`` of an initializer with a trailing comma, laid out as
    clang-format lays it out, so the check of ``tests/test_clang_format.py`` holds.

    clang-format (``CommaSeparatedList``) puts up to four items one per line, and five or more
    in columns: every column count whose columns (each as wide as its widest item, one space
    apart) fit the limit and differ by at most 10 characters within a column is a candidate;
    the fewest columns that still give the minimal number of lines win.
    """
    cells = [f"{item}," for item in items]
    pad = " " * indent
    if len(cells) < 5:
        return "\n".join(pad + c for c in cells)
    lengths = np.array([len(c) for c in cells], dtype=np.int64)
    candidates = []
    for columns in range(1, COLUMN_LIMIT // 3 + 1):
        if len(cells) < columns:
            break
        # Column k holds items k, k + columns, ...: pad to whole rows (padding never wins a
        # max or a min) and reduce each column at once; arrays of 10^5 weights stay fast.
        rows = -(-len(cells) // columns)
        padded_max = np.full(rows * columns, -1, dtype=np.int64)
        padded_min = np.full(rows * columns, COLUMN_LIMIT, dtype=np.int64)
        padded_max[:len(cells)] = lengths
        padded_min[:len(cells)] = lengths
        widths = [int(w) for w in padded_max.reshape(rows, columns).max(axis=0)]
        narrowest = [int(w) for w in padded_min.reshape(rows, columns).min(axis=0)]
        if any(widths[c] - narrowest[c] > 10 for c in range(columns - 1)):
            continue
        total = sum(widths) + columns - 1
        if total > COLUMN_LIMIT and columns > 1:
            continue
        candidates.append((columns, total, -(-len(cells) // columns), widths))
    chosen = None
    for columns, total, rows, widths in reversed(candidates):
        if total <= COLUMN_LIMIT - indent or columns == 1:
            if chosen is not None and rows > chosen[2]:
                break
            chosen = (columns, total, rows, widths)
    assert chosen is not None  # one column always qualifies
    columns, _, _, widths = chosen
    lines = []
    for start in range(0, len(cells), columns):
        row = cells[start:start + columns]
        text = "".join(c.ljust(widths[i] + 1) for i, c in enumerate(row[:-1])) + row[-1]
        lines.append(pad + text)
    return "\n".join(lines)


def format_values(array: np.ndarray, indent: int = CONTINUATION_INDENT) -> str:
    """C initializer lines of ``array`` (flattened), clang-format's column layout."""
    return braced_items(value_items(array), indent)


def c_comment(text: str, indent: int = 0) -> str:
    """``/* text */`` on one line when it fits, else a block of `` * `` lines (no newline at
    the end)."""
    pad = " " * indent
    text = text.replace("*/", "* /")
    if len(pad) + len(text) + 6 <= COLUMN_LIMIT:
        return f"{pad}/* {text} */"
    wrapped = textwrap.wrap(text, COLUMN_LIMIT - indent - 3, break_long_words=False,
                            break_on_hyphens=False)
    return "\n".join([f"{pad}/*", *(f"{pad} * {w}" for w in wrapped), f"{pad} */"])


def _pack(items: Sequence[str], column: int, first_column: int) -> tuple[list[str], int]:
    """Greedy bin-packing of ``items`` (each ending with its separator) into lines starting at
    ``first_column`` then ``column``: (lines, characters past the column limit). An item too
    long for any line gets a line of its own, past the limit, as clang-format leaves it."""
    lines: list[str] = []
    current, start, excess = "", first_column, 0
    for item in items:
        if current and start + len(current) + 1 + len(item) <= COLUMN_LIMIT:
            current += " " + item
            continue
        if current:
            excess += max(0, start + len(current) - COLUMN_LIMIT)
            lines.append(current)
            start = column
        current = item
    excess += max(0, start + len(current) - COLUMN_LIMIT)
    lines.append(current)
    return lines, excess


_EXCESS_PENALTY = 1_000_000
"""clang-format's ``PenaltyExcessCharacter``: a character past the limit outweighs any break."""


def format_call(head: str, args: Sequence[str], tail: str = ";", indent: int = 0,
                assign: str = "", open_: str = "(", close: str = ")", sep: str = ",",
                declaration: bool = False) -> str:
    """``[assign ]head(arg, ...)tail`` broken as clang-format breaks it (Google style, column
    limit 100): one line if it fits, else the cheapest of three layouts by clang-format's
    penalties (a break inside the parentheses costs about 20; after ``=`` 2; after the opening
    parenthesis 1 more in a call, 100 more in a ``declaration``; a character past the limit a
    million): arguments bin-packed aligned after the parenthesis; for an ``assign``-ment, the
    call on the next line (+4), bin-packed aligned; bin-packed on lines indented +4 after a
    break behind the parenthesis.

    ``open_``/``close`` ``{``/``}`` print a braced initializer (clang-format aligns it the same
    way but never breaks after its ``=``); ``sep`` `` ||`` an ``if`` condition. An argument
    longer than a whole line (a TVM function named after many fused ops) is left past the
    limit; clang-format would break inside it, which this does not imitate.
    """
    pad = " " * indent
    lhs = f"{assign} " if assign else ""
    joined = f"{sep} ".join(args)
    one = f"{pad}{lhs}{head}{open_}{joined}{close}{tail}"
    if len(one) <= COLUMN_LIMIT or not args:
        return one
    items = [f"{a}{sep}" for a in args[:-1]] + [f"{args[-1]}{close}{tail}"]
    start = f"{pad}{lhs}{head}{open_}"
    layouts: list[tuple[int, str]] = []
    aligned, excess = _pack(items, len(start), len(start))
    text = ("\n" + " " * len(start)).join([start + aligned[0], *aligned[1:]])
    layouts.append((_EXCESS_PENALTY * excess + 20 * (len(aligned) - 1), text))
    if assign and open_ == "(":
        inner = " " * (indent + CONTINUATION_INDENT)
        column = len(inner) + len(head) + len(open_)
        after, excess = _pack(items, column, column)
        lines = [inner + head + open_ + after[0], *after[1:]]
        layouts.append((_EXCESS_PENALTY * excess + 2 + 20 * (len(after) - 1),
                        f"{pad}{assign}\n" + ("\n" + " " * column).join(lines)))
    inner_column = indent + CONTINUATION_INDENT
    broken, excess = _pack(items, inner_column, inner_column)
    excess += max(0, len(start) - COLUMN_LIMIT)
    text = f"{start}\n" + "\n".join(" " * inner_column + line for line in broken)
    layouts.append((_EXCESS_PENALTY * excess + (100 if declaration else 1) + 20 * len(broken),
                    text))
    return min(layouts, key=lambda layout: layout[0])[1]


def format_signature(head: str, params: Sequence[str], tail: str = ";") -> str:
    """A function declaration or definition line (``tail`` ``" {"``), broken as clang-format
    breaks it: :func:`format_call` with declaration penalties."""
    return format_call(head, params, tail, declaration=True)


def c_define(name: str, value: str) -> str:
    """``#define name value``, continued on the next line (+2) when too long, as clang-format
    breaks a long macro."""
    one = f"#define {name} {value}"
    return one if len(one) <= COLUMN_LIMIT else f"#define {name} \\\n  {value}"


def c_declaration(type_: str, rest: str) -> str:
    """``type rest`` on one line, or broken after the type (+4) when too long, as clang-format
    breaks a long declaration."""
    one = f"{type_} {rest}"
    return one if len(one) <= COLUMN_LIMIT else f"{type_}\n{' ' * CONTINUATION_INDENT}{rest}"


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
    """A ``static const`` aligned array definition holding ``array``, clang-format clean."""
    ctype = _DTYPES[str(array.dtype) if array.dtype != np.bool_ else "bool"][0]
    head = f"{c_comment(comment)}\n" if comment else ""
    count = max(array.size, 1)
    body = format_values(array) if array.size else braced_items(["0"])
    decl = c_declaration(f"static const {ctype}", f"{name}[{count}] TT_ALIGNED({alignment}) = {{")
    return f"{head}{decl}\n{body}\n}};\n"

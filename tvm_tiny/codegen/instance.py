"""The C file of one int8 kernel instance, shared by ``codegen.linear_s8``, ``conv_s8`` and
``mhsa_s8``.

Each of those emitters writes the same file around different structs: the constant arrays, three
``static const`` structs (dims, config, params), then the AOT entry that passes them with the
arena's input, output and scratch to the library kernel. One function writes that frame so the
three instances keep one layout (one clang-format check, one AOT calling convention) and a fix
to it lands in all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tvm_tiny.ir.cformat import c_declaration, format_call, format_signature, real_text

__all__ = ["ENTRY_PARAMETERS", "entry_call", "fixed_point_text", "instance_source"]

ENTRY_PARAMETERS = ("const void *const *args", "void *const *outs", "uint8_t *scratch",
                    "int32_t scratch_bytes")
"""The parameters of every AOT entry ``tvmtiny_<model>_<symbol>`` (``codegen.ext`` calls it)."""


def fixed_point_text(mult: int, shift: int, exponent_of_shift: int = -31) -> str:
    """``real = mult * 2^(shift + exponent_of_shift)`` as the comments print it: the real value
    beside each fixed-point multiplier, so a reader can check it against the ONNX scales."""
    exponent = int(shift) + exponent_of_shift
    return f"{real_text(math.ldexp(int(mult), exponent))} = {int(mult)} * 2^{exponent}"


def entry_call(fn: str, kernel: str, *extra: str) -> str:
    """The body line of the entry ``fn``: ``return (int32_t)kernel(&fn_dims, &fn_config,
    &fn_params, x, y, scratch, scratch_bytes, extra...)``, the library kernels' common order."""
    args = [f"&{fn}_dims", f"&{fn}_config", f"&{fn}_params", "(const int8_t *)args[0]",
            "(int8_t *)outs[0]", "(int8_t *)(void *)scratch", "scratch_bytes", *extra]
    return format_call(f"return (int32_t){kernel}", args, indent=2)


def instance_source(header: str, includes: Sequence[str], consts: Sequence[str], fn: str,
                    structs: Sequence[tuple[str, str, str]], entry_comment: str, call: str,
                    preamble: str = "") -> str:
    """The C file: ``header`` (a comment ending in a newline), ``<stddef.h>``, ``<stdint.h>``
    and ``includes``, ``preamble`` (ending in a blank line), the ``consts`` definitions, each
    ``(type, name suffix, initializer lines)`` of ``structs`` as ``static const type
    fn_suffix = {...};``, then the declaration and definition of the entry ``fn`` whose body is
    ``call`` (:func:`entry_call`), below ``entry_comment``."""
    parts = [f"{header}#include <stddef.h>\n#include <stdint.h>\n\n"]
    parts += [f'#include "{name}"\n' for name in includes]
    parts.append(f"\n{preamble}" + "\n".join(consts) + "\n")
    parts += [f"{c_declaration(f'static const {type_}', f'{fn}_{suffix} = {{')}\n{fields}\n}};\n"
              for type_, suffix, fields in structs]
    parts.append(f"\n{format_signature(f'int32_t {fn}', ENTRY_PARAMETERS)}\n\n{entry_comment}\n"
                 f"{format_signature(f'int32_t {fn}', ENTRY_PARAMETERS, ' {')}\n{call}\n}}\n")
    return "".join(parts)

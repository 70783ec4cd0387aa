"""Hypothesis strategies for random multi-head self-attention models (issue #9).

A drawn :class:`MhsaCase` is a plain, frozen description (style, S, E, H, P, biases, scale
operator, seeds, dtype); :meth:`MhsaCase.onnx_model` turns it into an ONNX model through the
builders of :mod:`tvm_tiny.testing.models` and :meth:`MhsaCase.expected_mhsa` says which MHSAs the
partitioner must offload. Keeping the case separate from the model means a failing example prints
as ``MhsaCase(style='helper', seq=1, ...)``, which pastes straight into ``@example(case=...)``.

Export styles (``STYLES``), and which axes each allows:

========================  ========================================  =====================
style                     builder                                   P != E/H, no biases, Div
========================  ========================================  =====================
``helper``                ``models.mhsa_helper`` (+ ``out_features``)  yes, yes, yes
``encoder``               ``models.encoder_helper`` (1-2 layers)      yes, no, no
``mha_torch``             ``nn.MultiheadAttention`` (``mha_torch``)   no, yes, no
``torch_linear``          hand-written ``nn.Linear`` attention         yes, yes, yes
========================  ========================================  =====================

``nn.MultiheadAttention`` fixes P = E/H and its own scaling; the encoder builder has biases and
a Mul scale. The torch styles with the builder's defaults (biases, Mul) call the public builders;
the other combinations export the same modules with ``bias=False`` or a ``Div`` through
``tvm_tiny.testing.models._export_torch`` so they get the same seeded weights and export settings.

Torch export costs ~0.2 s per model after a ~5 s first import, so torch styles are drawn about a
quarter of the time (``STYLE_WEIGHTS``) and every exported model is cached by case.

dtype axis: ``DTYPES`` lists what :meth:`MhsaCase.onnx_model` can build. int8 QDQ models add
``"int8"`` there plus a builder branch in ``_build`` (and their own tolerance in the test).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import onnx
from hypothesis import strategies as st

from tvm_tiny.testing import models

#: Export styles, see the module docstring.
STYLES = ("helper", "encoder", "mha_torch", "torch_linear")
#: Relative draw frequency of each style: onnx.helper models are cheap, torch exports are not.
STYLE_WEIGHTS = {"helper": 10, "encoder": 3, "mha_torch": 3, "torch_linear": 4}
#: Element types the builders can produce today (int8 QDQ: later, see the module docstring).
DTYPES = ("float32",)

MIN_SEQ, MAX_SEQ = 1, 128
MIN_EMBED, MAX_EMBED = 4, 128
#: Feed-forward width of encoder examples (the builder's default 4*E would reach 512 and make
#: a two-layer example cost ~7 s to build; the MLP is TVM's, not ours, so width adds nothing).
MAX_FFN = 256
#: Bound on H*P when P != E/H: keeps a model's weights <= 4 * 128 * 256 floats (512 KiB) so an
#: example builds in about a second, while still reaching P up to 2*E (FWSA, E < 2P).
MAX_HEAD_WIDTH = 256
MAX_OUT_FEATURES = 128
#: Input magnitudes: 1 is the builders' N(0, 1); 4 drives softmax towards saturation (scores of
#: order 16) to catch a kernel that does not subtract the row maximum.
INPUT_SCALES = (1.0, 4.0)

_ALLOWS_PROJ = {"helper", "encoder", "torch_linear"}
_ALLOWS_NO_BIAS = {"helper", "mha_torch", "torch_linear"}
_ALLOWS_DIV = {"helper", "torch_linear"}
_TORCH_STYLES = {"mha_torch", "torch_linear"}


@dataclass(frozen=True)
class MhsaCase:
    """One random MHSA model: every field is an axis the strategy draws."""

    style: str
    seq: int
    embed: int
    heads: int
    proj: int
    biases: bool = True
    scale_op: str = "mul"
    out_features: int | None = None  # helper only: E_out != E
    layers: int = 1  # encoder only
    ffn: int | None = None  # encoder only (None: the builder's 4*E)
    activation: str = "gelu"  # encoder only
    seed: int = 0  # weights
    input_seed: int = 0
    input_scale: float = 1.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; known: {STYLES}")
        if self.style not in _ALLOWS_PROJ and self.heads * self.proj != self.embed:
            raise ValueError(f"style {self.style!r} needs P = E/H")
        if self.style not in _ALLOWS_NO_BIAS and not self.biases:
            raise ValueError(f"style {self.style!r} always has biases")
        if self.style not in _ALLOWS_DIV and self.scale_op != "mul":
            raise ValueError(f"style {self.style!r} always scales with Mul")

    @property
    def is_torch(self) -> bool:
        return self.style in _TORCH_STYLES

    def expected_mhsa(self) -> list[dict[str, object]]:
        """The ``metadata["offloaded"]`` shape fields every MHSA of the model must have."""
        out = self.out_features if self.out_features is not None else self.embed
        one = {"seq": self.seq, "embed": self.embed, "heads": self.heads, "proj": self.proj,
               "out_features": out, "dtype": self.dtype}
        return [dict(one) for _ in range(self.layers if self.style == "encoder" else 1)]

    def call(self) -> str:
        """The builder call that makes this model (for failure reports)."""
        s, e, h, p = self.seq, self.embed, self.heads, self.proj
        if self.style == "helper":
            return (f"mhsa_helper({s}, {e}, {h}, {p}, scale_op={self.scale_op!r}, "
                    f"biases={self.biases}, out_features={self.out_features}, seed={self.seed})")
        if self.style == "encoder":
            return (f"encoder_helper({s}, {e}, {h}, layers={self.layers}, ffn={self.ffn}, "
                    f"proj={p}, activation={self.activation!r}, seed={self.seed})")
        if self.style == "mha_torch":
            return f"mha_torch({s}, {e}, {h}, bias={self.biases}, seed={self.seed})"
        return (f"mhsa_torch_linear({s}, {e}, {h}, {p}, bias={self.biases}, "
                f"scale_op={self.scale_op!r}, seed={self.seed})")

    def onnx_model(self) -> onnx.ModelProto:
        """The ONNX model of this case (a fresh copy: callers may mutate it)."""
        return onnx.load_from_string(_model_bytes(self))

    def inputs(self, model: onnx.ModelProto) -> dict[str, object]:
        """Seeded standard-normal inputs times ``input_scale`` (float32)."""
        values = models.example_inputs(model, seed=self.input_seed)
        return {k: (v * self.input_scale).astype(v.dtype) for k, v in values.items()}


@functools.lru_cache(maxsize=128)
def _model_bytes(case: MhsaCase) -> bytes:
    """Serialized model of ``case``, cached: shrinking and replays rebuild the same cases."""
    return _build(case).SerializeToString()


def _build(case: MhsaCase) -> onnx.ModelProto:
    if case.dtype != "float32":
        raise NotImplementedError(f"dtype {case.dtype!r}: add its builder here (int8 QDQ)")
    s, e, h, p = case.seq, case.embed, case.heads, case.proj
    if case.style == "helper":
        return models.mhsa_helper(s, e, h, p, scale_op=case.scale_op, biases=case.biases,
                                  out_features=case.out_features, seed=case.seed)
    if case.style == "encoder":
        return models.encoder_helper(s, e, h, layers=case.layers, ffn=case.ffn, proj=p,
                                     activation=case.activation, seed=case.seed)
    if case.style == "mha_torch" and case.biases:
        return models.mha_torch(s, e, h, seed=case.seed)
    if case.style == "torch_linear" and case.biases and case.scale_op == "mul":
        return models.mhsa_torch_linear(s, e, h, p, seed=case.seed)
    import torch

    torch.manual_seed(case.seed)
    module = (_self_attention(e, h, case.biases) if case.style == "mha_torch"
              else _linear_attention(e, h, p, case.biases, case.scale_op))
    return models._export_torch(module, s, e, case.seed, "legacy")


def _self_attention(embed: int, heads: int, bias: bool) -> object:
    """``nn.MultiheadAttention(bias=bias, batch_first=True)`` called as self-attention."""
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(embed, heads, bias=bias, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    return SelfAttention()


def _linear_attention(embed: int, heads: int, proj: int, bias: bool, scale_op: str) -> object:
    """Hand-written attention (as ``models.mhsa_torch_linear``) with optional biases and the
    scale as a multiplication by 1/sqrt(P) or a division by sqrt(P)."""
    import torch

    class LinearMHSA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hp = heads * proj
            self.q = torch.nn.Linear(embed, hp, bias=bias)
            self.k = torch.nn.Linear(embed, hp, bias=bias)
            self.v = torch.nn.Linear(embed, hp, bias=bias)
            self.o = torch.nn.Linear(hp, embed, bias=bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q = self.q(x).view(b, s, heads, proj).transpose(1, 2)
            k = self.k(x).view(b, s, heads, proj).transpose(1, 2)
            v = self.v(x).view(b, s, heads, proj).transpose(1, 2)
            scores = q @ k.transpose(-2, -1)
            if scale_op == "mul":
                scores = scores * (1.0 / math.sqrt(proj))
            else:
                scores = scores / math.sqrt(proj)
            ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, s, heads * proj)
            return self.o(ctx)

    return LinearMHSA()


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _weighted_styles(styles: tuple[str, ...]) -> st.SearchStrategy[str]:
    # sampled_from shrinks towards the first entry: the cheapest style (helper) comes first.
    return st.sampled_from([s for s in styles for _ in range(STYLE_WEIGHTS[s])])


@st.composite
def mhsa_cases(draw: st.DrawFn, styles: tuple[str, ...] = STYLES,
               dtypes: tuple[str, ...] = DTYPES, max_seq: int = MAX_SEQ,
               max_embed: int = MAX_EMBED) -> MhsaCase:
    """A random :class:`MhsaCase`: S in [1, 128], E in [4, 128], H dividing E, P = E/H or any
    P with H*P <= 256 where the style allows, biases on/off and Mul/Div where it allows."""
    style = draw(_weighted_styles(styles))
    dtype = draw(st.sampled_from(dtypes))
    seq = draw(st.integers(MIN_SEQ, max_seq))
    embed = draw(st.integers(MIN_EMBED, max_embed))
    heads = draw(st.sampled_from(divisors(embed)))
    proj = embed // heads
    if style in _ALLOWS_PROJ:
        proj = draw(st.one_of(st.just(proj),
                              st.integers(1, max(1, MAX_HEAD_WIDTH // heads))))
    biases = draw(st.booleans()) if style in _ALLOWS_NO_BIAS else True
    scale_op = draw(st.sampled_from(["mul", "div"])) if style in _ALLOWS_DIV else "mul"
    extra: dict[str, object] = {}
    if style == "helper":
        extra["out_features"] = draw(st.none() | st.integers(1, MAX_OUT_FEATURES))
    if style == "encoder":
        extra["layers"] = draw(st.integers(1, 2))
        extra["ffn"] = draw(st.integers(1, MAX_FFN))
        extra["activation"] = draw(st.sampled_from(["gelu", "relu"]))
    return MhsaCase(
        style=style, seq=seq, embed=embed, heads=heads, proj=proj, biases=biases,
        scale_op=scale_op, seed=draw(st.integers(0, 2**16)),
        input_seed=draw(st.integers(0, 2**16)), input_scale=draw(st.sampled_from(INPUT_SCALES)),
        dtype=dtype, **extra)

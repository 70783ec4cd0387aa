"""Deterministic ONNX model builders for tvm_tiny tests and examples.

Why this module exists: the MHSA offload is driven by dataflow patterns that
match the exact op chain the TVM 0.27 ONNX importer emits.  Those chains differ
between model *styles* (hand-built with ``onnx.helper``, exported from
``torch.nn.MultiheadAttention``, exported from hand-written ``nn.Linear``
attention), so the tests need one reproducible model of each style, plus
"near misses" that look like self-attention but must *not* be offloaded.

Every builder is deterministic: weights come from ``numpy.random.default_rng``
or ``torch.manual_seed`` with an explicit ``seed``, so the same call always
yields the same weights (and, for ``onnx.helper`` models, the same bytes).
All models have a single static-shape input ``"x"`` of shape ``[1, S, E]``
(float32) and an output ``"y"``; the cross-attention near miss has a second
input ``"m"``.

They live in the package (not only in ``examples/``) because ``tvm-tiny demo`` builds one of
them from an installed wheel. Run ``python examples/models.py [OUT_DIR]`` to regenerate
``tests/data``.
"""

from __future__ import annotations

import importlib.util
import io
import math
import platform
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    import torch

__all__ = [
    "OPSET",
    "Exporter",
    "ScaleOp",
    "encoder_helper",
    "encoder_torch",
    "example_inputs",
    "mha_torch",
    "mhsa_helper",
    "mhsa_torch_linear",
    "near_miss_cross_attention",
    "near_miss_leaked_intermediate",
    "near_miss_masked",
    "near_miss_shared_weight",
    "save_test_models",
]

ScaleOp = Literal["mul", "div"]
Exporter = Literal["legacy", "dynamo"]

#: Opset of the ``onnx.helper`` models and of the legacy torch exporter.
#: 17 is the first opset with ``LayerNormalization`` and the one the rest of
#: the project targets.
OPSET = 17
#: IR version pinned so that the serialized bytes do not depend on the
#: installed ``onnx`` package's default (IR 8 is what opset 17 shipped with,
#: and every onnxruntime we care about loads it).
IR_VERSION = 8
#: Opset used by the dynamo exporter; it implements nothing below 18, and
#: asking for 17 triggers a lossy version conversion.
DYNAMO_OPSET = 18

_FLOAT = TensorProto.FLOAT


# ---------------------------------------------------------------------------
# onnx.helper graph construction
# ---------------------------------------------------------------------------


class _Graph:
    """Accumulates nodes and initializers with unique, readable names.

    Kept tiny on purpose: the builders below read like the ONNX graph they
    produce, which is what a pattern writer wants to compare against.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: dict[str, int] = {}

    def name(self, base: str) -> str:
        """Return ``base`` made unique by a numeric suffix."""
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def const(self, base: str, value: np.ndarray) -> str:
        """Add an initializer and return its name."""
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], fan_in: int) -> str:
        """Add a random float32 initializer scaled by ``1/sqrt(fan_in)``.

        The scaling keeps activations O(1) so softmax is not saturated and
        numerical comparisons at 1e-5 stay meaningful.
        """
        value = self.rng.standard_normal(shape) / math.sqrt(fan_in)
        return self.const(base, value.astype(np.float32))

    def shape(self, base: str, dims: list[int]) -> str:
        """Add an int64 shape initializer (for ``Reshape``)."""
        return self.const(base, np.asarray(dims, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], base: str | None = None, **attrs: object) -> str:
        """Append a single-output node and return its output name."""
        out = self.name(base or op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=self.name(f"{op_type}_node"), **attrs)
        )
        return out

    def rename(self, old: str, new: str) -> None:
        """Rename tensor ``old`` to ``new`` everywhere (used to name graph outputs)."""
        for node in self.nodes:
            for seq in (node.input, node.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = new

    def model(
        self,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        graph_name: str,
    ) -> onnx.ModelProto:
        """Assemble, check and return the model (opset ``OPSET``, IR ``IR_VERSION``)."""
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="tvm_tiny.examples.models",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _tensor(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, _FLOAT, shape)


def _linear(g: _Graph, x: str, in_f: int, out_f: int, base: str, bias: bool) -> tuple[str, str]:
    """``MatMul(x, W[in_f, out_f])`` then optionally ``Add(., b[out_f])``.

    Returns ``(output name, weight initializer name)``.
    """
    w = g.weight(f"{base}.weight", (in_f, out_f), in_f)
    y = g.op("MatMul", [x, w], f"{base}.matmul")
    if bias:
        b = g.weight(f"{base}.bias", (out_f,), in_f)
        y = g.op("Add", [y, b], f"{base}.add")
    return y, w


class _Attn:
    """Names of the interesting tensors of one MHSA block (for near misses)."""

    def __init__(self, out: str, probs: str, wq: str) -> None:
        self.out = out
        self.probs = probs
        self.wq = wq


def _mhsa_block(
    g: _Graph,
    x: str,
    seq: int,
    embed: int,
    heads: int,
    proj: int,
    *,
    prefix: str,
    scale_op: ScaleOp = "mul",
    biases: bool = True,
    out_features: int | None = None,
    kv: str | None = None,
    kv_seq: int | None = None,
    mask: np.ndarray | None = None,
) -> _Attn:
    """Emit the canonical ONNX MHSA chain and return its key tensor names.

    Chain: Q/K/V = MatMul(+Add) of ``x`` -> Reshape[1,S,H,P] ->
    Transpose (Q,V: [0,2,1,3]; K: [0,2,3,1], i.e. already K^T) ->
    MatMul(Q, K^T) -> Mul(1/sqrt(P)) | Div(sqrt(P)) -> [Add(mask)] ->
    Softmax(-1) -> MatMul(., V) -> Transpose[0,2,1,3] -> Reshape[1,S,H*P] ->
    MatMul(+Add) output projection.
    ``kv``/``kv_seq``/``mask`` exist only to build the near misses.
    """
    hp = heads * proj
    kv_src = x if kv is None else kv
    s_kv = seq if kv_seq is None else kv_seq
    out_f = embed if out_features is None else out_features

    q, wq = _linear(g, x, embed, hp, f"{prefix}.q", biases)
    k, _ = _linear(g, kv_src, embed, hp, f"{prefix}.k", biases)
    v, _ = _linear(g, kv_src, embed, hp, f"{prefix}.v", biases)

    q = g.op("Reshape", [q, g.shape(f"{prefix}.q_shape", [1, seq, heads, proj])], f"{prefix}.q4")
    k = g.op("Reshape", [k, g.shape(f"{prefix}.k_shape", [1, s_kv, heads, proj])], f"{prefix}.k4")
    v = g.op("Reshape", [v, g.shape(f"{prefix}.v_shape", [1, s_kv, heads, proj])], f"{prefix}.v4")
    q = g.op("Transpose", [q], f"{prefix}.qh", perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], f"{prefix}.kt", perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], f"{prefix}.vh", perm=[0, 2, 1, 3])

    scores = g.op("MatMul", [q, k], f"{prefix}.scores")
    if scale_op == "mul":
        c = g.const(f"{prefix}.scale", np.asarray(1.0 / math.sqrt(proj), dtype=np.float32))
        scores = g.op("Mul", [scores, c], f"{prefix}.scaled")
    else:
        c = g.const(f"{prefix}.sqrt_d", np.asarray(math.sqrt(proj), dtype=np.float32))
        scores = g.op("Div", [scores, c], f"{prefix}.scaled")
    if mask is not None:
        scores = g.op("Add", [scores, g.const(f"{prefix}.mask", mask)], f"{prefix}.masked")
    probs = g.op("Softmax", [scores], f"{prefix}.probs", axis=-1)

    ctx = g.op("MatMul", [probs, v], f"{prefix}.ctx")
    ctx = g.op("Transpose", [ctx], f"{prefix}.ctx_t", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, g.shape(f"{prefix}.ctx_shape", [1, seq, hp])], f"{prefix}.ctx3")
    out, _ = _linear(g, ctx, hp, out_f, f"{prefix}.o", biases)
    return _Attn(out, probs, wq)


def _layer_norm(g: _Graph, x: str, embed: int, base: str) -> str:
    """``LayerNormalization(axis=-1, eps=1e-5)`` with random-ish gamma/beta."""
    gamma = g.const(f"{base}.weight", (1.0 + 0.1 * g.rng.standard_normal(embed)).astype(np.float32))
    beta = g.const(f"{base}.bias", (0.1 * g.rng.standard_normal(embed)).astype(np.float32))
    return g.op("LayerNormalization", [x, gamma, beta], base, axis=-1, epsilon=1e-5)


def _gelu_erf(g: _Graph, x: str, base: str) -> str:
    """Exact GELU ``0.5*x*(1+erf(x/sqrt(2)))``: opset 17 has no ``Gelu`` op."""
    sqrt2 = g.const(f"{base}.sqrt2", np.asarray(math.sqrt(2.0), dtype=np.float32))
    one = g.const(f"{base}.one", np.asarray(1.0, dtype=np.float32))
    half = g.const(f"{base}.half", np.asarray(0.5, dtype=np.float32))
    t = g.op("Div", [x, sqrt2], f"{base}.div")
    t = g.op("Erf", [t], f"{base}.erf")
    t = g.op("Add", [t, one], f"{base}.add")
    t = g.op("Mul", [x, t], f"{base}.mul")
    return g.op("Mul", [t, half], f"{base}.out")


def _check_heads(embed: int, heads: int, proj: int | None) -> int:
    if proj is None:
        if embed % heads:
            raise ValueError(f"embed={embed} is not divisible by heads={heads}")
        return embed // heads
    return proj


# ---------------------------------------------------------------------------
# onnx.helper models
# ---------------------------------------------------------------------------


def mhsa_helper(
    seq: int,
    embed: int,
    heads: int,
    proj: int,
    *,
    scale_op: ScaleOp = "mul",
    biases: bool = True,
    out_features: int | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """Bare MHSA ``x[1,S,E] -> y[1,S,out_features]`` built with ``onnx.helper``.

    The reference form of the attention the backend offloads: Q/K/V weights are
    ``[E, H*P]`` initializers, K is transposed straight to ``[0,2,3,1]``, the
    scale is a ``Mul`` by ``1/sqrt(P)`` or a ``Div`` by ``sqrt(P)`` (both occur
    in the wild, so the patterns must accept both).  ``biases=False`` drops all
    four ``Add`` nodes.  ``proj`` need not equal ``E/H``.
    """
    g = _Graph(seed)
    attn = _mhsa_block(
        g,
        "x",
        seq,
        embed,
        heads,
        proj,
        prefix="attn",
        scale_op=scale_op,
        biases=biases,
        out_features=out_features,
    )
    g.rename(attn.out, "y")
    out_f = embed if out_features is None else out_features
    return g.model([_tensor("x", [1, seq, embed])], [_tensor("y", [1, seq, out_f])], "mhsa")


def encoder_helper(
    seq: int,
    embed: int,
    heads: int,
    *,
    layers: int = 2,
    ffn: int | None = None,
    proj: int | None = None,
    activation: Literal["gelu", "relu"] = "gelu",
    seed: int = 0,
) -> onnx.ModelProto:
    """Post-LN transformer encoder stack built with ``onnx.helper``.

    Each layer: ``h = LN(x + MHSA(x)); x = LN(h + W2·act(W1·h + b1) + b2)``,
    i.e. the same layout as ``nn.TransformerEncoderLayer(norm_first=False)``.
    It checks that the offloaded MHSA composes with the surrounding ops that
    TVM keeps (residual add, layer_norm, MLP).  ``activation="gelu"`` uses the
    erf form (opset 17 has no Gelu op); ``ffn`` defaults to ``4*embed`` and
    ``proj`` to ``embed // heads``.
    """
    p = _check_heads(embed, heads, proj)
    f = 4 * embed if ffn is None else ffn
    g = _Graph(seed)
    x = "x"
    for i in range(layers):
        pre = f"layers.{i}"
        attn = _mhsa_block(g, x, seq, embed, heads, p, prefix=f"{pre}.attn")
        h = g.op("Add", [x, attn.out], f"{pre}.res1")
        h = _layer_norm(g, h, embed, f"{pre}.norm1")
        t, _ = _linear(g, h, embed, f, f"{pre}.ffn1", True)
        t = (
            _gelu_erf(g, t, f"{pre}.gelu")
            if activation == "gelu"
            else g.op("Relu", [t], f"{pre}.relu")
        )
        t, _ = _linear(g, t, f, embed, f"{pre}.ffn2", True)
        t = g.op("Add", [h, t], f"{pre}.res2")
        x = _layer_norm(g, t, embed, f"{pre}.norm2")
    g.rename(x, "y")
    return g.model([_tensor("x", [1, seq, embed])], [_tensor("y", [1, seq, embed])], "encoder")


# ---------------------------------------------------------------------------
# Near misses: look like MHSA, must not be offloaded
# ---------------------------------------------------------------------------


def near_miss_masked(
    seq: int, embed: int, heads: int, proj: int, *, seed: int = 0
) -> onnx.ModelProto:
    """MHSA with a constant causal mask ``Add``-ed to the scaled scores.

    Must not be offloaded: the kernel computes unmasked softmax, so matching
    it would silently drop the mask.  The mask is ``[1,1,S,S]`` with ``-1e4``
    above the diagonal (finite so ORT/TVM/NumPy agree exactly).
    """
    mask = np.triu(np.full((seq, seq), -1e4, dtype=np.float32), k=1)[None, None]
    g = _Graph(seed)
    attn = _mhsa_block(g, "x", seq, embed, heads, proj, prefix="attn", mask=mask)
    g.rename(attn.out, "y")
    return g.model([_tensor("x", [1, seq, embed])], [_tensor("y", [1, seq, embed])], "masked")


def near_miss_cross_attention(
    seq: int, embed: int, heads: int, proj: int, *, mem_seq: int | None = None, seed: int = 0
) -> onnx.ModelProto:
    """Cross-attention: Q from ``x[1,S,E]``, K and V from a second input ``m[1,S2,E]``.

    Must not be offloaded as *self*-attention: the kernel reads one input.
    ``mem_seq`` (S2) defaults to ``seq + 4`` so shapes differ too.
    """
    s2 = seq + 4 if mem_seq is None else mem_seq
    g = _Graph(seed)
    attn = _mhsa_block(g, "x", seq, embed, heads, proj, prefix="attn", kv="m", kv_seq=s2)
    g.rename(attn.out, "y")
    return g.model(
        [_tensor("x", [1, seq, embed]), _tensor("m", [1, s2, embed])],
        [_tensor("y", [1, seq, embed])],
        "cross_attention",
    )


def near_miss_shared_weight(
    seq: int, embed: int, heads: int, proj: int, *, seed: int = 0
) -> onnx.ModelProto:
    """MHSA whose Q weight initializer also feeds a second ``MatMul``.

    ``y = MHSA(x) + MatMul(x, Wq)`` (requires ``heads*proj == embed``).  Models
    a weight tied across layers: a backend that moves Wq into flash for the
    kernel must not also drop it from the rest of the graph.
    """
    if heads * proj != embed:
        raise ValueError("near_miss_shared_weight needs heads*proj == embed")
    g = _Graph(seed)
    attn = _mhsa_block(g, "x", seq, embed, heads, proj, prefix="attn")
    side = g.op("MatMul", ["x", attn.wq], "side.matmul")
    g.op("Add", [attn.out, side], "y")
    return g.model(
        [_tensor("x", [1, seq, embed])], [_tensor("y", [1, seq, embed])], "shared_weight"
    )


def near_miss_leaked_intermediate(
    seq: int,
    embed: int,
    heads: int,
    proj: int,
    *,
    leak: Literal["output", "consumer"] = "output",
    seed: int = 0,
) -> onnx.ModelProto:
    """MHSA whose softmax output escapes the attention block.

    ``leak="output"``: the probabilities ``[1,H,S,S]`` are a second graph output
    ``"probs"``.  ``leak="consumer"``: they also feed
    ``ReduceMax(axes=[1,3]) -> Unsqueeze -> Add`` into ``y``.  Either way a
    fused kernel that never materializes the probabilities cannot replace it.
    """
    g = _Graph(seed)
    attn = _mhsa_block(g, "x", seq, embed, heads, proj, prefix="attn")
    outputs = [_tensor("y", [1, seq, embed])]
    if leak == "output":
        g.rename(attn.out, "y")
        g.rename(attn.probs, "probs")
        outputs.append(_tensor("probs", [1, heads, seq, seq]))
    else:
        m = g.op("ReduceMax", [attn.probs], "side.max", axes=[1, 3], keepdims=0)
        m = g.op("Unsqueeze", [m, g.const("side.axes", np.asarray([2], dtype=np.int64))], "side.m3")
        g.op("Add", [attn.out, m], "y")
    return g.model([_tensor("x", [1, seq, embed])], outputs, f"leaked_{leak}")


# ---------------------------------------------------------------------------
# torch-exported models
# ---------------------------------------------------------------------------


def _reinit_parameters(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter fresh, distinct, seeded random values.

    Why not keep torch's init: ``nn.TransformerEncoder`` deep-copies one layer,
    so all layers start with *identical* weights and the legacy exporter then
    deduplicates them into one initializer shared by every layer (an
    accidental "shared weight" near miss).  torch also initializes the
    ``MultiheadAttention`` biases to 0 and LayerNorm to gamma=1/beta=0, which
    an exporter may drop and a kernel may ignore without any test noticing.
    Matrices get ``N(0, 1/fan_in)``, vectors ``N(0, 0.01)`` (+1 for norm gains).
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() >= 2:
                param.copy_(noise / math.sqrt(param.shape[-1]))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def _export_torch(
    module: torch.nn.Module,
    seq: int,
    embed: int,
    seed: int,
    exporter: Exporter,
) -> onnx.ModelProto:
    """Export ``module`` (eval mode, fast path off) with input x[1,S,E] -> y.

    ``legacy`` (TorchScript, ``dynamo=False``) works with the project venv
    as-is and gives opset 17.  It emits some ``Shape/Gather/Concat``
    arithmetic; the TVM importer keeps it, and ``relax.transform.FoldConstant``
    removes it because the input shape is static.  ``dynamo`` (torch's
    default) needs ``onnxscript`` and emits opset 18.  The fused fast path
    (``aten::_native_multi_head_attention`` / ``_transformer_encoder_layer_fwd``)
    is disabled for the duration of the export so that attention is exported
    as plain MatMul/Softmax ops.
    """
    import torch

    module = module.eval()
    _reinit_parameters(module, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, seq, embed, generator=gen)
    was_fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            if exporter == "legacy":
                buf = io.BytesIO()
                with warnings.catch_warnings():
                    # torch>=2.9 warns that the TorchScript exporter is legacy; known.
                    warnings.filterwarnings(
                        "ignore", "You are using the legacy", DeprecationWarning
                    )
                    torch.onnx.export(
                        module,
                        (x,),
                        buf,
                        input_names=["x"],
                        output_names=["y"],
                        opset_version=OPSET,
                        dynamo=False,
                        do_constant_folding=True,
                    )
                model = onnx.load_from_string(buf.getvalue())
            else:
                if importlib.util.find_spec("onnxscript") is None:
                    raise ImportError("exporter='dynamo' needs the onnxscript package")
                prog = torch.onnx.export(
                    module,
                    (x,),
                    input_names=["x"],
                    output_names=["y"],
                    opset_version=DYNAMO_OPSET,
                    dynamo=True,
                    optimize=True,
                    verbose=False,
                )
                if prog is None:  # pragma: no cover - only with f=...
                    raise RuntimeError("torch.onnx.export returned no program")
                model = prog.model_proto
    finally:
        torch.backends.mha.set_fastpath_enabled(was_fast)
    fused = {n.op_type for n in model.graph.node} & {"Attention", "MultiHeadAttention"}
    if fused:
        raise RuntimeError(f"exporter emitted fused attention ops {sorted(fused)}")
    onnx.checker.check_model(model, full_check=True)
    return model


def encoder_torch(
    seq: int,
    embed: int,
    heads: int,
    *,
    layers: int = 2,
    ffn: int | None = None,
    seed: int = 0,
    exporter: Exporter = "legacy",
) -> onnx.ModelProto:
    """``nn.TransformerEncoder`` of ``nn.TransformerEncoderLayer`` (batch_first, dropout 0).

    The most common way users will hand us a tiny transformer.  Its attention
    uses the packed ``in_proj_weight`` ([3E, E]), so the exported Q/K/V
    projections are a single MatMul followed by slicing, unlike the helper
    models.  ``ffn`` defaults to ``4*embed`` (torch's 2048 is far too big for
    test data).  Post-LN, ReLU activation (torch defaults).
    """
    import torch

    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(
        d_model=embed,
        nhead=heads,
        dim_feedforward=4 * embed if ffn is None else ffn,
        dropout=0.0,
        batch_first=True,
    )
    enc = torch.nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
    return _export_torch(enc, seq, embed, seed, exporter)


def _make_self_attention(embed: int, heads: int) -> torch.nn.Module:
    """``nn.MultiheadAttention(batch_first=True)`` called as self-attention."""
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    return SelfAttention()


def mha_torch(
    seq: int, embed: int, heads: int, *, seed: int = 0, exporter: Exporter = "legacy"
) -> onnx.ModelProto:
    """Bare ``nn.MultiheadAttention(batch_first=True)`` self-attention (q=k=v=x).

    Isolates torch's MHA export (packed in-projection, q pre-scaled) from the
    rest of an encoder layer.  ``need_weights=False`` so no averaged attention
    weights are returned.
    """
    import torch

    torch.manual_seed(seed)
    return _export_torch(_make_self_attention(embed, heads), seq, embed, seed, exporter)


def _make_linear_mhsa(embed: int, heads: int, proj: int) -> torch.nn.Module:
    import torch

    class LinearMHSA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            hp = heads * proj
            self.q = torch.nn.Linear(embed, hp)
            self.k = torch.nn.Linear(embed, hp)
            self.v = torch.nn.Linear(embed, hp)
            self.o = torch.nn.Linear(hp, embed)
            self.scale = 1.0 / math.sqrt(proj)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            q = self.q(x).view(b, s, heads, proj).transpose(1, 2)
            k = self.k(x).view(b, s, heads, proj).transpose(1, 2)
            v = self.v(x).view(b, s, heads, proj).transpose(1, 2)
            att = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(b, s, heads * proj)
            return self.o(ctx)

    return LinearMHSA()


def mhsa_torch_linear(
    seq: int,
    embed: int,
    heads: int,
    proj: int,
    *,
    seed: int = 0,
    exporter: Exporter = "legacy",
) -> onnx.ModelProto:
    """Hand-written torch MHSA with separate ``nn.Linear`` q/k/v/o.

    The "nanoGPT style" users write by hand: ``nn.Linear`` stores ``W`` as
    ``[out, in]``, so the export carries transposed weights (folded or not,
    depending on the exporter), and the scale multiplies the scores.
    """
    import torch

    torch.manual_seed(seed)
    return _export_torch(_make_linear_mhsa(embed, heads, proj), seq, embed, seed, exporter)


# ---------------------------------------------------------------------------
# Inputs and test data
# ---------------------------------------------------------------------------


def _static_shape(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def example_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic standard-normal float32 inputs for every graph input."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    return {
        vi.name: rng.standard_normal(_static_shape(vi)).astype(np.float32)
        for vi in model.graph.input
        if vi.name not in inits
    }


def _test_model_table() -> dict[str, tuple[str, Callable[[], onnx.ModelProto]]]:
    """Return the small instances saved under ``tests/data``: name -> (call, builder)."""
    return {
        "mhsa_helper_mul": (
            "mhsa_helper(8, 16, 2, 8, scale_op='mul')",
            lambda: mhsa_helper(8, 16, 2, 8, scale_op="mul"),
        ),
        "mhsa_helper_div": (
            "mhsa_helper(8, 16, 2, 8, scale_op='div')",
            lambda: mhsa_helper(8, 16, 2, 8, scale_op="div"),
        ),
        "mhsa_helper_nobias": (
            "mhsa_helper(8, 16, 2, 8, biases=False)",
            lambda: mhsa_helper(8, 16, 2, 8, biases=False),
        ),
        "mhsa_helper_proj": (
            "mhsa_helper(12, 24, 3, 4, out_features=16, seed=1)",
            lambda: mhsa_helper(12, 24, 3, 4, out_features=16, seed=1),
        ),
        "encoder_helper_gelu": (
            "encoder_helper(16, 32, 4, layers=2)",
            lambda: encoder_helper(16, 32, 4, layers=2),
        ),
        "encoder_helper_relu": (
            "encoder_helper(8, 16, 2, layers=2, activation='relu')",
            lambda: encoder_helper(8, 16, 2, layers=2, activation="relu"),
        ),
        "encoder_torch": (
            "encoder_torch(16, 32, 4, layers=2)",
            lambda: encoder_torch(16, 32, 4, layers=2),
        ),
        "mha_torch": ("mha_torch(8, 16, 2)", lambda: mha_torch(8, 16, 2)),
        "mhsa_torch_linear": (
            "mhsa_torch_linear(8, 16, 2, 8)",
            lambda: mhsa_torch_linear(8, 16, 2, 8),
        ),
        "near_miss_masked": (
            "near_miss_masked(8, 16, 2, 8)",
            lambda: near_miss_masked(8, 16, 2, 8),
        ),
        "near_miss_cross_attention": (
            "near_miss_cross_attention(8, 16, 2, 8)",
            lambda: near_miss_cross_attention(8, 16, 2, 8),
        ),
        "near_miss_shared_weight": (
            "near_miss_shared_weight(8, 16, 2, 8)",
            lambda: near_miss_shared_weight(8, 16, 2, 8),
        ),
        "near_miss_leaked_output": (
            "near_miss_leaked_intermediate(8, 16, 2, 8)",
            lambda: near_miss_leaked_intermediate(8, 16, 2, 8),
        ),
        "near_miss_leaked_consumer": (
            "near_miss_leaked_intermediate(8, 16, 2, 8, leak='consumer')",
            lambda: near_miss_leaked_intermediate(8, 16, 2, 8, leak="consumer"),
        ),
    }


_README = """\
# tests/data: generated ONNX models

Generated by `examples/models.py` (do not edit by hand):

    python examples/models.py tests/data

All builders are deterministic: weights are seeded (`seed=0` unless the table in
`_test_model_table()` says otherwise; numpy `default_rng(seed)` for the
`onnx.helper` models, `torch.manual_seed(seed)` for the exported ones), so
re-running the command reproduces the same models.  Every model has a static
input `x` of shape `[1, S, E]` (float32) and output `y`.
`near_miss_cross_attention` also has input `m` of shape `[1, S+4, E]`, and
`near_miss_leaked_output` a second output `probs` of shape `[1, H, S, S]`.
Use `examples.models.example_inputs(model, seed=0)` for reproducible inputs.

| file | builder call | near miss? |
| --- | --- | --- |
{rows}

Generated with: python {python}, onnx {onnx}, torch {torch}, numpy {numpy};
`onnx.helper` models use opset {opset} / IR {ir}; torch models use the legacy
TorchScript exporter (`dynamo=False`) at opset {opset}.
"""


def save_test_models(out_dir: str | Path) -> list[Path]:
    """Write every test model as ``<name>.onnx`` plus ``README.md`` into ``out_dir``.

    Returns the written ``.onnx`` paths.  Raises if any file exceeds 200 KB,
    because test data is committed to git.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows: list[str] = []
    for name, (call, build) in _test_model_table().items():
        path = out / f"{name}.onnx"
        data = build().SerializeToString()
        if len(data) >= 200_000:
            raise ValueError(f"{name}: {len(data)} bytes, test data must stay < 200 KB")
        path.write_bytes(data)
        written.append(path)
        near = "yes" if name.startswith("near_miss") else "no"
        rows.append(f"| `{name}.onnx` | `{call}` | {near} |")
    (out / "README.md").write_text(
        _README.format(
            rows="\n".join(rows),
            python=platform.python_version(),
            onnx=onnx.__version__,
            torch=torch.__version__,
            numpy=np.__version__,
            opset=OPSET,
            ir=IR_VERSION,
        )
    )
    return written


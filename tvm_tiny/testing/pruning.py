"""Magnitude pruning of ONNX weights (numpy) and the pruned encoders the sparse tests and
``benchmarks/sparse.py`` use (issue #8: pruned MHSA projections inside the offloaded kernel,
pruned linear layers outside attention)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tvm_tiny.testing.models import encoder_helper


def magnitude_prune(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weight`` with the ``round(sparsity * size)`` smallest-magnitude entries set
    to zero (ties broken by position, so the result is deterministic)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} is not in [0, 1]")
    out = np.array(weight, dtype=weight.dtype, copy=True)
    count = int(round(sparsity * out.size))
    if count:
        order = np.argsort(np.abs(out), axis=None, kind="stable")[:count]
        out.flat[order] = 0
    return out


def prune_initializers(model: onnx.ModelProto, sparsity: float,
                       contains: str | tuple[str, ...] = "ffn",
                       suffix: str = ".weight") -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named ``*<contains>*<suffix>`` (any of several
    ``contains``) are pruned."""
    parts = (contains,) if isinstance(contains, str) else contains
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if any(part in init.name for part in parts) and init.name.endswith(suffix):
            pruned = magnitude_prune(numpy_helper.to_array(init), sparsity)
            init.CopyFrom(numpy_helper.from_array(pruned, init.name))
    return model


def pruned_ffn_encoder(sparsity: float, seq: int = 16, embed: int = 32, heads: int = 4,
                       ffn: int | None = None, layers: int = 1, seed: int = 0) -> onnx.ModelProto:
    """``models.encoder_helper`` (MHSA + ReLU FFN) with its FFN weights magnitude-pruned; the
    attention weights stay dense."""
    model = encoder_helper(seq, embed, heads, layers=layers, ffn=ffn, activation="relu",
                           seed=seed)
    return prune_initializers(model, sparsity)


def pruned_encoder(sparsity: float, seq: int = 16, embed: int = 32, heads: int = 4,
                   ffn: int | None = None, layers: int = 1, seed: int = 0,
                   parts: tuple[str, ...] = ("attn", "ffn")) -> onnx.ModelProto:
    """``models.encoder_helper`` with the weights of ``parts`` magnitude-pruned: ``"attn"`` the
    Q, K, V and output projections of every MHSA, ``"ffn"`` the feed-forward matrices."""
    model = encoder_helper(seq, embed, heads, layers=layers, ffn=ffn, activation="relu",
                           seed=seed)
    return prune_initializers(model, sparsity, contains=tuple(f".{p}" for p in parts))


def prune_matrices(model: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    """A copy of ``model`` with every 2-D float32 initializer magnitude-pruned: the weight
    matrices of any exporter (torch's packed ``in_proj_weight`` and pre-transposed ``nn.Linear``
    weights included), whatever their names."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
            pruned = magnitude_prune(numpy_helper.to_array(init), sparsity)
            init.CopyFrom(numpy_helper.from_array(pruned, init.name))
    return model

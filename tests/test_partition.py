"""``partition_for_tiny``: one ``Codegen="tvm_tiny"`` function per MHSA, near misses left to TVM.

As in TVM's ``test_backend_tensorrt.py``: positives assert the exact regions, every rejection
reason has a parametrized case (its ``id``) asserting no region, the reason, and that the TVM
fallback still builds and matches onnxruntime (the near misses of ``tests/data`` here, one case
per further reason in ``test_partition_rejections.py``). The pattern registry's priority order,
the proof marks and the int8 weights kept through constant folding are tested here too; the
canonicalizer has a ``Before``/``Expected`` test in the style of TVM's
``tests/python/relax/test_transform_*.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from conftest import NEAR_MISSES, POSITIVE_MODELS, assert_outputs_close
from onnx import numpy_helper
from tvm import relax
from tvm.relax.backend.pattern_registry import get_pattern, get_patterns_with_prefix
from tvm.script import ir as I
from tvm.script import relax as R

import tvm_tiny
from tvm_tiny.codegen import ext as codegen
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.ir.relax_compat import constant_value
from tvm_tiny.partition import partitioner, patterns
from tvm_tiny.partition.canonicalize import CanonicalizeSelfAttention
from tvm_tiny.partition.describe import descriptors_of
from tvm_tiny.partition.partitioner import CODEGEN_NAME, PartitionReport, partition_for_tiny
from tvm_tiny.partition.proof_mark import RemoveProofMarks, count_marks, unclaimed_marks
from tvm_tiny.partition.qdq import (
    FoldConstantExceptInt8Weights,
    dequantize_like_tvm,
    int8_matmul_weights,
)
from tvm_tiny.testing.models import mhsa_helper
from tvm_tiny.testing.pruning import pruned_encoder


def _codegen_functions(mod: tvm.IRModule) -> dict[str, relax.Function]:
    return {
        gv.name_hint: func for gv, func in mod.functions.items()
        if isinstance(func, relax.Function) and func.attrs is not None
        and "Codegen" in func.attrs
    }


def _inner_composites(func: relax.Function) -> list[str]:
    """``Composite`` attributes of the functions bound inside an offloaded wrapper."""
    found = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, relax.Function):
                value = value.op
            if isinstance(value, relax.Function) and value.attrs is not None:
                found.append(str(value.attrs.get("Composite")))
    return found


def _composites(mod: tvm.IRModule) -> list[str]:
    """Every ``Composite`` name of the offloaded functions of ``mod``, sorted."""
    return sorted(c for func in _codegen_functions(mod).values() for c in _inner_composites(func))


def _called_globals(mod: tvm.IRModule) -> list[str]:
    calls = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
                calls.append(value.op.name_hint)
    return calls


@pytest.mark.parametrize("name", sorted(POSITIVE_MODELS))
def test_one_codegen_function_per_mhsa(name, relax_module):
    report = PartitionReport()
    mod = partition_for_tiny(relax_module(name), report=report)
    expected = [f"tvm_tiny_mhsa_{i}" for i in range(POSITIVE_MODELS[name])]
    functions = _codegen_functions(mod)
    assert sorted(functions) == expected
    for symbol, func in functions.items():
        assert func.attrs["Codegen"] == CODEGEN_NAME
        assert func.attrs["global_symbol"] == symbol
        assert _inner_composites(func) == [patterns.MHSA_COMPOSITE]
    assert [c for c in _called_globals(mod) if c.startswith("tvm_tiny")] == expected
    assert report.offloaded == expected
    assert report.rejected == []
    assert count_marks(mod) == 0, "proof marks must not outlive the partitioner"


def test_partition_does_not_mutate_its_input(relax_module):
    mod = relax_module("mhsa_helper_mul")
    before = mod.script(show_meta=True)
    first = partition_for_tiny(mod)
    assert mod.script(show_meta=True) == before
    tvm.ir.assert_structural_equal(first, partition_for_tiny(mod))


#: Near-miss id (conftest.NEAR_MISSES) -> words the rejection reason must contain: the cause.
REJECTIONS = {
    "masked": "mask",
    "cross_attention": "cross-attention",
    "shared_weight": "shared",
    "leaked_output": "used outside the attention",
    "leaked_consumer": "used outside the attention",
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_near_miss_is_not_offloaded(case, relax_module):
    report = PartitionReport()
    mod = partition_for_tiny(relax_module(NEAR_MISSES[case]), report=report)
    assert _codegen_functions(mod) == {}
    assert report.offloaded == []
    assert len(report.rejected) == 1
    assert REJECTIONS[case] in report.rejected[0], report.rejected


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_near_miss_falls_back_to_tvm(case, built, model_inputs, reference):
    name = NEAR_MISSES[case]
    lib = built(name)
    meta = lib.metadata
    assert meta["offloaded"] == []
    assert len(meta["not_offloaded"]) == 1
    assert REJECTIONS[case] in meta["not_offloaded"][0]
    assert not any("tvm_tiny_mhsa" in path for path in lib.files)
    assert meta["tvm_functions"], "the attention must run as TVM PrimFuncs"
    assert_outputs_close(lib.run(*model_inputs(name).values()), reference(name))


def test_every_near_miss_has_a_rejection_case():
    assert sorted(REJECTIONS) == sorted(NEAR_MISSES)


# --- TVM's pattern registry -----------------------------------------------------------------


def test_patterns_are_registered_once_highest_priority_last():
    """``patterns.py`` registers at import, once, in TVM's order (later = higher priority);
    the registry hands them back highest priority first."""
    defined = [entry[0] for entry in patterns.tiny_patterns()]
    registered = [p.name for p in get_patterns_with_prefix(patterns.PATTERN_PREFIX)]
    assert registered == defined[::-1]
    assert registered == [patterns.MHSA_S8_COMPOSITE, patterns.MHSA_COMPOSITE,
                          patterns.CONV_S8_COMPOSITE, patterns.LINEAR_S8_COMPOSITE,
                          patterns.LINEAR_SPARSE_COMPOSITE]


def test_emitters_and_patterns_agree_one_to_one():
    names = [p.name for p in get_patterns_with_prefix(patterns.PATTERN_PREFIX)]
    composites = [composite for composite, _dtype in codegen.EMITTERS]
    assert len(names) == len(set(names)), f"duplicate pattern names: {names}"
    assert len(codegen.EMITTERS) == len(set(codegen.EMITTERS))
    assert set(names) == set(composites)
    assert all(name.startswith(f"{CODEGEN_NAME}.") for name in names)


@pytest.fixture(scope="module")
def pruned_attention() -> tvm.IRModule:
    """An encoder whose attention projections (and only those) are pruned 75%: every
    projection of the canonical MHSA chain also matches the sparse linear pattern."""
    return to_relax(pruned_encoder(0.75, parts=("attn",)))[0]


def _fuse(mod: tvm.IRModule, names: list[str]) -> tvm.IRModule:
    """``FuseOpsByPattern`` with the registered patterns ``names``, in that priority order."""
    return relax.transform.FuseOpsByPattern([get_pattern(n) for n in names], bind_constants=True,
                                            annotate_codegen=True)(mod)


def test_mhsa_pattern_wins_over_linear_where_both_match(pruned_attention):
    canonical = _canonicalize(pruned_attention)[0]
    mhsa, linear = patterns.MHSA_COMPOSITE, patterns.LINEAR_SPARSE_COMPOSITE
    # Both match: alone, the linear pattern claims all four projections of the attention...
    assert _composites(_fuse(canonical, [linear])) == [linear] * 4
    # ...and with the lower priority it would leave no whole MHSA to claim.
    assert _composites(_fuse(canonical, [linear, mhsa])) == [linear] * 4
    # The registry's order: the fused MHSA pattern wins and takes its projections with it.
    assert _composites(partition_for_tiny(pruned_attention)) == [mhsa]
    report = PartitionReport()
    assert _composites(partition_for_tiny(pruned_attention, report, sparse=False)) == [mhsa]
    assert report.offloaded == ["tvm_tiny_mhsa_0"]


# --- proof marks: what the canonicalizer proved, in the IR ------------------------------------


def test_verbatim_canonical_chain_is_not_offloaded_without_a_proof(relax_module):
    """The onnx.helper MHSA is already the canonical chain; only the canonicalizer's proof
    mark makes the patterns claim it (near misses of that form must stay with TVM)."""
    folded = relax.transform.FoldConstant()(relax_module("mhsa_helper_mul"))
    names = [p.name for p in get_patterns_with_prefix(patterns.PATTERN_PREFIX)]
    assert _composites(_fuse(folded, names)) == []
    canonical, _ = _canonicalize(relax_module("mhsa_helper_mul"))
    assert count_marks(canonical) == 1
    assert _composites(_fuse(canonical, names)) == [patterns.MHSA_COMPOSITE]


def test_unclaimed_canonical_chain_keeps_the_model_as_it_was(relax_module, monkeypatch):
    """A canonical chain no pattern claims would run with the canonical chain's rounding:
    the partitioner then returns its input unchanged and says why."""
    mod = relax_module("mhsa_helper_mul")
    only_linear = [get_pattern(patterns.LINEAR_SPARSE_COMPOSITE)]
    monkeypatch.setattr(partitioner, "get_patterns_with_prefix", lambda prefix: only_linear)
    report = PartitionReport()
    out = partition_for_tiny(mod, report)
    assert out.same_as(mod)
    assert report.offloaded == []
    assert report.rejected == ["internal: 1 of 1 canonicalized attention(s) not matched by the "
                               "tvm_tiny patterns; the whole model is left to TVM"]


def test_unclaimed_marks_counts_marks_read_outside_offloaded_functions(relax_module):
    canonical, _ = _canonicalize(relax_module("encoder_helper_relu"))
    assert unclaimed_marks(canonical, []) == count_marks(canonical) == 2
    names = [p.name for p in get_patterns_with_prefix(patterns.PATTERN_PREFIX)]
    fused = _fuse(canonical, names)
    assert unclaimed_marks(fused, partitioner.offloaded_functions(fused)) == 0
    assert count_marks(RemoveProofMarks()(fused)) == 0


# --- CanonicalizeSelfAttention ------------------------------------------------------------


def _canonicalize(mod: tvm.IRModule) -> tuple[tvm.IRModule, CanonicalizeSelfAttention]:
    """``CanonicalizeSelfAttention`` with its documented precondition (constants folded but the
    int8 weights)."""
    canonicalize = CanonicalizeSelfAttention()
    out = tvm.transform.Sequential([
        FoldConstantExceptInt8Weights(),
        canonicalize,
        relax.transform.DeadCodeElimination(),
    ])(mod)
    return out, canonicalize


@I.ir_module
class Before:
    """Single-layer MHSA (S=4, E=4, H=2, P=2) as an exporter may write it: K transposed in two
    steps, the scale as a division, no Q/K/V biases. Weights are parameters, bound below."""

    @R.function
    def main(x: R.Tensor((1, 4, 4), "float32"), wq: R.Tensor((4, 4), "float32"),
             wk: R.Tensor((4, 4), "float32"), wv: R.Tensor((4, 4), "float32"),
             wo: R.Tensor((4, 4), "float32"), bo: R.Tensor((4,), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            q = R.permute_dims(R.reshape(R.matmul(x, wq), R.shape([1, 4, 2, 2])), [0, 2, 1, 3])
            k = R.permute_dims(R.reshape(R.matmul(x, wk), R.shape([1, 4, 2, 2])), [0, 2, 1, 3])
            v = R.permute_dims(R.reshape(R.matmul(x, wv), R.shape([1, 4, 2, 2])), [0, 2, 1, 3])
            kt = R.permute_dims(k, [0, 1, 3, 2])
            scores = R.divide(R.matmul(q, kt), R.const(2.0, "float32"))
            ctx = R.matmul(R.nn.softmax(scores, axis=-1), v)
            merged = R.reshape(R.permute_dims(ctx, [0, 2, 1, 3]), R.shape([1, 4, 4]))
            y = R.add(R.matmul(merged, wo), bo)
            R.output(y)
        return y


@I.ir_module
class Expected:
    """The canonical chain: input behind the proof mark, K straight to [0, 2, 3, 1], the scale a
    multiplication, everything else as ``CanonicalizeSelfAttention``'s docstring writes it."""

    @R.function
    def main(x: R.Tensor((1, 4, 4), "float32"), wq: R.Tensor((4, 4), "float32"),
             wk: R.Tensor((4, 4), "float32"), wv: R.Tensor((4, 4), "float32"),
             wo: R.Tensor((4, 4), "float32"), bo: R.Tensor((4,), "float32")):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            xp = R.call_pure_packed("tvm_tiny.proven_attention_input", x,
                                    ty_args=R.Tensor((1, 4, 4), "float32"))
            q = R.reshape(R.matmul(xp, wq), R.shape([1, 4, 2, 2]))
            k = R.reshape(R.matmul(xp, wk), R.shape([1, 4, 2, 2]))
            scores = R.multiply(R.matmul(R.permute_dims(q, [0, 2, 1, 3]),
                                         R.permute_dims(k, [0, 2, 3, 1])), R.const(0.5, "float32"))
            v = R.reshape(R.matmul(xp, wv), R.shape([1, 4, 2, 2]))
            ctx = R.matmul(R.nn.softmax(scores, axis=-1), R.permute_dims(v, [0, 2, 1, 3]))
            merged = R.reshape(R.permute_dims(ctx, [0, 2, 1, 3]), R.shape([1, 4, 4]))
            y = R.add(R.matmul(merged, wo), bo)
            R.output(y)
        return y


def _bound(mod: tvm.IRModule) -> tvm.IRModule:
    rng = np.random.default_rng(0)
    weights = {n: rng.standard_normal((4, 4)).astype(np.float32) for n in ("wq", "wk", "wv", "wo")}
    weights["bo"] = rng.standard_normal(4).astype(np.float32)
    return relax.transform.BindParams("main", weights)(mod)


def test_canonicalize_before_expected():
    after, canonicalize = _canonicalize(_bound(Before))
    assert canonicalize.rejections == []
    tvm.ir.assert_structural_equal(after, _bound(Expected))


def test_canonicalize_leaves_a_rejected_attention_as_it_was(relax_module):
    mod = relax_module("near_miss_masked")
    after, canonicalize = _canonicalize(mod)
    assert len(canonicalize.rejections) == 1 and "mask" in canonicalize.rejections[0]
    tvm.ir.assert_structural_equal(after, relax.transform.FoldConstant()(mod))


def _attentions_matching_canonical_pattern(mod: tvm.IRModule) -> int:
    """How many distinct softmaxes of ``main`` sit in a match of ``make_mhsa_pattern()``."""
    pattern, annotations = patterns.make_mhsa_pattern()
    probs = set()
    for block in mod["main"].body.blocks:
        var2val = {b.var: b.value for b in block.bindings}
        for binding in block.bindings:
            matched = pattern.extract_matched_expr(binding.value, var2val)
            if matched is not None:
                probs.add(matched[annotations["probs"]])
    return len(probs)


@pytest.mark.parametrize("name", ["mha_torch", "encoder_torch"])
def test_canonicalize_legacy_torch_attention(name, relax_module):
    before = relax_module(name)
    folded = relax.transform.FoldConstant()(before)
    assert _attentions_matching_canonical_pattern(folded) == 0, "torch export already canonical?"
    after, canonicalize = _canonicalize(before)
    assert canonicalize.rejections == []
    assert count_marks(after) == POSITIVE_MODELS[name]
    assert _attentions_matching_canonical_pattern(after) == POSITIVE_MODELS[name]


def test_canonicalize_is_idempotent(relax_module):
    """Before = the torch import, Expected = its canonical form; canonicalizing Expected again
    changes nothing."""
    expected, _ = _canonicalize(relax_module("mha_torch"))
    again, canonicalize = _canonicalize(expected)
    assert canonicalize.rejections == []
    assert count_marks(again) == 1
    tvm.ir.assert_structural_equal(again, expected)


def test_canonicalize_preserves_semantics(relax_module, model_inputs, reference):
    """The canonical module, proof marks removed and compiled by TVM alone, still computes
    the torch model."""
    canonical, _ = _canonicalize(relax_module("mha_torch"))
    lib = tvm_tiny.build(RemoveProofMarks()(canonical), offload=False, name="mha_torch_canonical")
    outputs = lib.run(*model_inputs("mha_torch").values())
    assert_outputs_close(outputs, reference("mha_torch"))


# --- int8 weights stay in the IR ----------------------------------------------------------


@pytest.fixture(scope="module")
def qdq_helper() -> onnx.ModelProto:
    """``mhsa_helper`` quantized per channel: weights are DequantizeLinear(int8 initializer)."""
    rng = np.random.default_rng(7)
    model = mhsa_helper(8, 16, 2, 8)
    calibration = [rng.standard_normal((1, 8, 16)).astype(np.float32) for _ in range(8)]
    return tvm_tiny.quantize(model, calibration, per_channel=True)


def test_fold_keeps_the_int8_weights_and_folds_everything_else(qdq_helper):
    mod = to_relax(qdq_helper)[0]
    before = mod.script(show_meta=True)
    kept = FoldConstantExceptInt8Weights()(mod)
    assert mod.script(show_meta=True) == before, "the pass must not mutate its input"
    assert len(int8_matmul_weights(kept["main"])) == 4  # Wq, Wk, Wv, Wo
    # Folding what was kept gives exactly what a plain fold gives: nothing else differs.
    tvm.ir.assert_structural_equal(relax.transform.FoldConstant()(kept),
                                   relax.transform.FoldConstant()(mod))
    # A second run that keeps the same weights has nothing left to fold.
    assert FoldConstantExceptInt8Weights(refold=True)(kept).same_as(kept)


def test_offloaded_int8_weights_are_the_models_int8_initializers(qdq_helper):
    """The kernel's int8 weights are read from the IR: exactly the ONNX initializers' values
    (this model's heads are already in canonical order)."""
    (desc,) = descriptors_of(partition_for_tiny(to_relax(qdq_helper)[0]))
    initializers = {i.name: numpy_helper.to_array(i) for i in qdq_helper.graph.initializer}
    for name in ("q", "k", "v", "o"):
        values = initializers[f"attn.{name}.weight_quantized"]
        np.testing.assert_array_equal(getattr(desc.quant, f"w{name}").values, values)


@pytest.mark.parametrize("axis", [None, 0, 1], ids=["per_tensor", "axis0", "axis1"])
def test_dequantize_like_tvm_is_bit_exact(axis):
    """The float value of a kept int8 weight equals TVM's folded ``dequantize``, bit for bit."""
    rng = np.random.default_rng(3)
    values = rng.integers(-127, 128, size=(24, 40)).astype(np.int8)
    channels = 1 if axis is None else values.shape[axis]
    scale = (rng.random(channels) * 0.05 + 1e-3).astype(np.float32)
    scale = scale.reshape(()) if axis is None else scale
    zero = np.zeros(scale.shape, dtype=np.int8)
    builder = relax.BlockBuilder()
    with builder.function("main", []):
        with builder.dataflow():
            out = builder.emit_output(relax.op.dequantize(
                relax.const(values), relax.const(scale), relax.const(zero),
                axis=1 if axis is None else axis))
        builder.emit_func_output(out)
    folded = relax.transform.FoldConstant()(builder.get())["main"].body.body
    tvm_value = constant_value(folded)
    ours = dequantize_like_tvm(values, scale, zero, 1 if axis is None else axis)
    assert tvm_value.dtype == ours.dtype == np.float32
    np.testing.assert_array_equal(tvm_value.view(np.uint32), ours.view(np.uint32))

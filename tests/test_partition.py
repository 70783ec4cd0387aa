"""``partition_for_tiny``: one ``Codegen="tvm_tiny"`` function per MHSA, near misses left to TVM.

As in TVM's ``test_backend_tensorrt.py``: positives assert the exact regions, every rejection
reason has a parametrized case (its ``id``) asserting no region, the reason, and that the TVM
fallback still builds and matches onnxruntime.
"""

from __future__ import annotations

import pytest
import tvm
from conftest import NEAR_MISSES, POSITIVE_MODELS, assert_outputs_close
from tvm import relax

from tvm_tiny.codegen import ext as codegen
from tvm_tiny.partition import patterns
from tvm_tiny.partition.canonicalize import CanonicalizeSelfAttention
from tvm_tiny.partition.partitioner import CODEGEN_NAME, PartitionReport, partition_for_tiny


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


def test_emitters_and_patterns_agree_one_to_one():
    names = [p.name for p in patterns.tiny_patterns()]
    composites = [composite for composite, _dtype in codegen.EMITTERS]
    assert len(names) == len(set(names)), f"duplicate pattern names: {names}"
    assert len(codegen.EMITTERS) == len(set(codegen.EMITTERS))
    assert set(names) == set(composites)
    assert all(name.startswith(f"{CODEGEN_NAME}.") for name in names)


def _canonicalize(mod: tvm.IRModule) -> tuple[tvm.IRModule, CanonicalizeSelfAttention]:
    """``CanonicalizeSelfAttention`` with its documented precondition (``FoldConstant`` first)."""
    canonicalize = CanonicalizeSelfAttention()
    out = tvm.transform.Sequential([
        relax.transform.FoldConstant(),
        canonicalize,
        relax.transform.DeadCodeElimination(),
    ])(mod)
    return out, canonicalize


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
    assert len(canonicalize.approved) == POSITIVE_MODELS[name]
    assert _attentions_matching_canonical_pattern(after) == POSITIVE_MODELS[name]


def test_canonicalize_is_idempotent(relax_module):
    """Before = the torch import, Expected = its canonical form; canonicalizing Expected again
    changes nothing."""
    expected, _ = _canonicalize(relax_module("mha_torch"))
    again, canonicalize = _canonicalize(expected)
    assert len(canonicalize.approved) == 1
    tvm.ir.assert_structural_equal(again, expected)


def test_canonicalize_preserves_semantics(relax_module, model_inputs, reference):
    """The canonical module, compiled by TVM alone, still computes the torch model."""
    import tvm_tiny

    canonical, _ = _canonicalize(relax_module("mha_torch"))
    lib = tvm_tiny.build(canonical, offload=False, name="mha_torch_canonical")
    outputs = lib.run(*model_inputs("mha_torch").values())
    assert_outputs_close(outputs, reference("mha_torch"))

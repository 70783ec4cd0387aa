"""The code generator runs once per kernel, inside ``RunCodegen``, and ``build`` compiles the model
once unless asked to compare (issue: "codegen once", "the layer-wise comparison leaves build")."""

from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

import tvm_tiny
from tvm_tiny.codegen import ext
from tvm_tiny.codegen.ext import CodegenSession
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.ir.errors import CodegenError
from tvm_tiny.testing.models import encoder_helper, example_inputs


@pytest.fixture(scope="module")
def encoder():
    return encoder_helper(16, 32, 4, layers=2)


def _counting(monkeypatch, module, name):
    calls: list[str] = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[1] if isinstance(args[1], str) else type(args[0]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_each_kernel_is_generated_and_described_once(encoder, monkeypatch):
    emitted: list[str] = []
    for key, emitter in list(ext.EMITTERS.items()):
        def counted(desc, *args, _emitter=emitter, **kwargs):
            emitted.append(desc.symbol)
            return _emitter(desc, *args, **kwargs)

        monkeypatch.setitem(ext.EMITTERS, key, counted)
    described = _counting(monkeypatch, ext, "describe_mhsa")
    lib = tvm_tiny.build(encoder, target="host")
    symbols = [entry["name"] for entry in lib.metadata["offloaded"]]
    assert len(symbols) == 2
    assert sorted(emitted) == sorted(symbols)  # once each, and nothing else emitted
    assert sorted(described) == sorted(symbols)
    for entry in lib.metadata["offloaded"]:
        source = lib.files[f"codegen/host/src/{lib.prefix}_{entry['name']}.c"]
        assert entry["function"] in source


def test_layerwise_comparison_only_when_asked(encoder):
    plain = tvm_tiny.build(encoder, target="host")
    assert plain.metadata["layerwise_arena_bytes"] is None
    assert all(e["layerwise_peak_bytes"] is None for e in plain.metadata["offloaded"])
    compared = tvm_tiny.build(encoder, target="host", compare=True)
    alone = tvm_tiny.build(encoder, target="host", offload=False)
    assert compared.metadata["layerwise_arena_bytes"] == alone.metadata["arena_bytes"]
    assert compared.metadata["layerwise_memory_plan"] == alone.metadata["memory_plan"]
    for entry in compared.metadata["offloaded"]:
        assert entry["layerwise_peak_bytes"] > entry["peak_bytes"]
    # The comparison changes nothing of the model itself.
    assert compared.files["codegen/host/src/tvmtiny_" + compared.name + ".c"] == \
        plain.files["codegen/host/src/tvmtiny_" + plain.name + ".c"]
    feeds = list(example_inputs(encoder, seed=0).values())
    np.testing.assert_array_equal(compared.run(*feeds)[0], plain.run(*feeds)[0])


def test_runcodegen_without_a_session_uses_defaults(encoder):
    """A user's own pipeline (partition_for_tiny, then RunCodegen with no options) gets the
    same kernels as build on the host, where no tuning log applies."""
    mod, _ = to_relax(encoder)
    partitioned = tvm_tiny.partition_for_tiny(mod)
    lowered = relax.transform.RunCodegen()(partitioned)
    sources = {m.inspect_source() for m in lowered.attrs["external_mods"]}
    session = CodegenSession("model")
    relax.transform.RunCodegen({"tvm_tiny": session.options()})(partitioned)
    assert len(session.generated) == 2
    assert sources == {k.source for k in session.generated.values()}


def test_a_foreign_session_option_is_refused(encoder):
    mod, _ = to_relax(encoder)
    partitioned = tvm_tiny.partition_for_tiny(mod)
    # Outside build the FFI retypes the error; its text still names the fault.
    with pytest.raises(RuntimeError, match="expected a CodegenSession"):
        relax.transform.RunCodegen({"tvm_tiny": {"session": "not a session"}})(partitioned)


def test_a_code_generator_error_reaches_the_user_with_its_type(encoder, monkeypatch):
    """Errors raised inside RunCodegen cross TVM's FFI; build re-raises the original."""
    def failing(desc, *args, **kwargs):
        raise CodegenError(f"'{desc.symbol}': refused for the test")

    for key in list(ext.EMITTERS):
        monkeypatch.setitem(ext.EMITTERS, key, failing)
    with pytest.raises(CodegenError, match="refused for the test"):
        tvm_tiny.build(encoder, target="host")

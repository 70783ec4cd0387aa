"""int8 all the way through a network: the passes that make the whole graph integer and small.

- ``SplitSharedDequantize`` lets every FFN layer reach the int8 linear kernel even when its
  input is also the residual;
- ``InlineSingleUseElementwise`` keeps integer builds' arenas below the fake-quant ones, without
  changing a single output;
- equal constants are stored once;
- the int8 EEGFormer network fits the STM32L4 it is deployed on.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_tiny
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.partition.split_dequantize import SplitSharedDequantize
from tvm_tiny.testing.networks import build_network, network_inputs


@pytest.fixture(scope="module")
def eegformer_int8():
    return build_network("eegformer", "int8")


def _dequantize_users(func: relax.Function) -> dict[str, int]:
    """Readers per dequantize binding of ``func``'s dataflow blocks."""
    deq = {b.var for block in func.body.blocks for b in block.bindings
           if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "")
           == "relax.dequantize"}
    users: dict[str, int] = {}
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call):
                for arg in b.value.args:
                    if arg in deq:
                        users[arg.name] = users.get(arg.name, 0) + 1
    return users


def test_split_gives_each_matmul_its_own_dequantize():
    x = relax.Var("x", relax.TensorType([4, 8], "int8"))
    bb = relax.BlockBuilder()
    w = relax.const(np.ones((8, 8), np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            d = bb.emit(relax.op.dequantize(x, relax.const(0.5, "float32"),
                                            relax.const(0, "int8")))
            m = bb.emit(relax.op.matmul(d, w))
            r = bb.emit(relax.op.add(d, m))
            out = bb.emit_output(r)
        bb.emit_func_output(out)
    before = bb.get()
    after = SplitSharedDequantize()(before)
    users = _dequantize_users(after["main"])
    assert sorted(users.values()) == [1, 1], users  # one reader each
    feed = np.arange(32, dtype=np.int8).reshape(4, 8)
    results = []
    for mod in (before, after):
        vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(feed)).numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_every_ffn_layer_of_eegformer_runs_on_the_int8_linear_kernel(eegformer_int8):
    lib = tvm_tiny.build(eegformer_int8, target="host")
    assert len(lib.metadata["offloaded"]) == 2
    # Two layers x (FFN in, FFN out): the first FFN matmul reads the residual's dequantize.
    assert len(lib.metadata["linear_s8"]) == 4
    assert lib.metadata["not_integerized"] == []


def test_inlining_changes_no_output_and_shrinks_the_arena(eegformer_int8, monkeypatch):
    inlined = tvm_tiny.build(eegformer_int8, target="host", name="inlined")
    fake_quant = tvm_tiny.build(eegformer_int8, target="host", integer=False, name="fq")
    assert inlined.metadata["arena_bytes"] < fake_quant.metadata["arena_bytes"]
    build_module = __import__("sys").modules["tvm_tiny.build"]
    real = build_module.fuse_and_plan
    monkeypatch.setattr(build_module, "fuse_and_plan",
                        lambda mod, inline_single_use=False: real(mod, False))
    plain = tvm_tiny.build(eegformer_int8, target="host", name="plain")
    assert inlined.metadata["arena_bytes"] < plain.metadata["arena_bytes"]
    for seed in range(2):
        x = network_inputs(eegformer_int8, seed=seed)
        np.testing.assert_array_equal(inlined.run(*x)[0], plain.run(*x)[0])


def test_int8_eegformer_fits_the_stm32l4(eegformer_int8):
    """The paper's board: SRAM1 96 KiB. Before the integer path it was 85,184 B over."""
    lib = tvm_tiny.build(eegformer_int8, target="stm32l4")
    sram1 = next(n for n in lib.metadata["memory_needs"] if n["memory"] == "SRAM1")
    assert sram1["bytes"] <= sram1["size"]
    # One byte per weight: 2 layers x (Q, K, V, O: 4 E H P, FFN: 2 E F) int8 weights (S=81,
    # E=32, H=8, P=32, F=128), plus per output column an int32 bias and, for the exported
    # graph's two rounding points, a stage-2 bias, a multiplier and a shift (16 bytes).
    weights = 2 * (4 * 32 * 8 * 32 + 2 * 32 * 128)
    columns = 2 * (3 * 8 * 32 + 32 + 128 + 32)
    assert weights < lib.metadata["params_bytes"] <= weights + 16 * columns + 1024
    # the build report's per-layer view adds up, each kernel with its own row
    rows = lib.metadata["params_by_layer"]
    assert sum(r["bytes"] for r in rows) == lib.metadata["params_bytes"]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("mhsa") == 2 and kinds.count("linear_s8") == 4 and "tvm" in kinds
    mhsa = next(r for r in rows if r["kind"] == "mhsa")
    assert mhsa["bytes"] == lib.metadata["offloaded"][0]["params_bytes"]


def test_equal_constants_are_stored_once():
    x = relax.Var("x", relax.TensorType([4, 8], "float32"))
    bb = relax.BlockBuilder()
    values = np.arange(64, dtype=np.float32).reshape(8, 8)
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(x, relax.const(values)))
            b = bb.emit(relax.op.matmul(a, relax.const(values.copy())))
            out = bb.emit_output(b)
        bb.emit_func_output(out)
    mod, _ = to_relax(bb.get())
    lib = tvm_tiny.build(mod, target="host", offload=False, name="shared")
    assert lib.metadata["tvm_params_bytes"] == values.nbytes
    (y,) = lib.run(np.ones((4, 8), np.float32))
    np.testing.assert_allclose(y, np.ones((4, 8), np.float32) @ values @ values, rtol=1e-6)

"""Sparse float32 linear layers outside attention (composite ``tvm_tiny.linear``,
kernel ``tt_linear_f32_csr``): issue #8 part 1."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from conftest import assert_outputs_close, onnxruntime_outputs
from tvm.relax.backend.pattern_registry import get_patterns_with_prefix

import tvm_tiny
from tvm_tiny.codegen import ext as codegen
from tvm_tiny.codegen.linear import csr_by_output
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.partition import patterns
from tvm_tiny.partition.partitioner import (
    mhsa_functions,
    partition_for_tiny,
    sparse_linear_functions,
)
from tvm_tiny.targets.boards import get_board
from tvm_tiny.targets.resources import kernels_dir
from tvm_tiny.testing.models import example_inputs
from tvm_tiny.testing.pruning import magnitude_prune, pruned_ffn_encoder

SPARSITIES = (0.0, 0.5, 0.75, 0.9)
STRICT_C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]


@pytest.fixture(scope="module")
def dense_lib() -> tvm_tiny.TinyModule:
    return tvm_tiny.build(pruned_ffn_encoder(0.0), name="sparse_ffn")


@pytest.fixture(scope="module")
def libs(dense_lib) -> dict[float, tvm_tiny.TinyModule]:
    out = {0.0: dense_lib}
    for s in SPARSITIES[1:]:
        out[s] = tvm_tiny.build(pruned_ffn_encoder(s), name="sparse_ffn")
    return out


def test_magnitude_prune_zeroes_the_smallest():
    w = np.arange(1, 11, dtype=np.float32).reshape(2, 5) * np.array([1, -1] * 5).reshape(2, 5)
    p = magnitude_prune(w, 0.5)
    assert np.count_nonzero(p) == 5
    assert set(np.abs(p[p != 0]).tolist()) == {6.0, 7.0, 8.0, 9.0, 10.0}
    np.testing.assert_array_equal(magnitude_prune(w, 0.0), w)


def test_csr_by_output_round_trips():
    rng = np.random.default_rng(0)
    w = magnitude_prune(rng.standard_normal((7, 5)).astype(np.float32), 0.6)
    csr = csr_by_output(w)
    assert csr["k_idx"].dtype == np.uint16 and csr["col_ptr"][-1] == np.count_nonzero(w)
    back = np.zeros_like(w)
    for n in range(w.shape[1]):
        for j in range(csr["col_ptr"][n], csr["col_ptr"][n + 1]):
            back[csr["k_idx"][j], n] = csr["values"][j]
    np.testing.assert_array_equal(back, w)


def test_pattern_listed_after_mhsa_and_has_an_emitter():
    names = [p.name for p in get_patterns_with_prefix(patterns.PATTERN_PREFIX)]  # by priority
    assert names.index(patterns.LINEAR_SPARSE_COMPOSITE) > names.index(patterns.MHSA_COMPOSITE)
    assert names.index(patterns.LINEAR_SPARSE_COMPOSITE) > names.index(
        patterns.MHSA_S8_COMPOSITE)
    assert (patterns.LINEAR_SPARSE_COMPOSITE, "float32") in codegen.EMITTERS


def test_sparse_bytes_threshold():
    k, n = 32, 128
    dense = 4 * k * n
    # 2-byte indices: 6 bytes per nonzero plus the row pointers.
    limit = (dense - 4 * (n + 1)) // 6
    assert patterns.sparse_stored_bytes(limit, k, n) <= dense
    assert patterns.sparse_stored_bytes(limit + 1, k, n) >= dense
    assert patterns.sparse_stored_bytes(10, 70000, 2) == 4 * 10 + 4 * 10 + 12


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_partition_offloads_only_pruned_ffn(sparsity):
    mod, _ = to_relax(pruned_ffn_encoder(sparsity))
    part = partition_for_tiny(mod)
    assert len(mhsa_functions(part)) == 1  # the MHSA keeps its region (and priority)
    linear = [gv.name_hint for gv in sparse_linear_functions(part)]
    assert linear == ([] if sparsity == 0.0 else ["tvm_tiny_linear_0", "tvm_tiny_linear_1"])


def test_dense_model_is_unaffected(dense_lib):
    meta = dense_lib.metadata
    assert meta["sparse_linear"] == []
    assert [e["name"] for e in meta["offloaded"]] == ["tvm_tiny_mhsa_0"]
    # No kernel instance nor library source (every header of kernels/include ships, as before).
    assert not any("linear" in name for name in dense_lib.files if name.endswith(".c"))
    model = pruned_ffn_encoder(0.0)
    x = example_inputs(model)
    assert_outputs_close(dense_lib.run(*x.values()), onnxruntime_outputs(model, x))


@pytest.mark.parametrize("sparsity", SPARSITIES[1:])
def test_pruned_ffn_offloaded_sparse_matches_onnxruntime(libs, sparsity):
    lib, dense = libs[sparsity], libs[0.0]
    model = pruned_ffn_encoder(sparsity)
    x = example_inputs(model)
    assert_outputs_close(lib.run(*x.values()), onnxruntime_outputs(model, x))
    meta = lib.metadata
    assert [e["name"] for e in meta["offloaded"]] == ["tvm_tiny_mhsa_0"]
    assert meta["offloaded"] == dense.metadata["offloaded"]  # MHSA entries untouched
    sparse = meta["sparse_linear"]
    assert [e["name"] for e in sparse] == ["tvm_tiny_linear_0", "tvm_tiny_linear_1"]
    assert [(e["in_features"], e["out_features"]) for e in sparse] == [(32, 128), (128, 32)]
    for entry in sparse:
        size = entry["in_features"] * entry["out_features"]
        assert entry["nnz"] == size - int(round(sparsity * size))
        assert entry["density"] == pytest.approx(1.0 - sparsity, abs=1e-3)
        assert entry["stored_bytes"] < entry["dense_bytes"]
        assert entry["dense_bytes"] == 4 * size + 4 * entry["out_features"]
        assert entry["stored_bytes"] == 6 * entry["nnz"] + 4 * (entry["out_features"] + 1) \
            + 4 * entry["out_features"]
        assert entry["params_bytes"] == entry["stored_bytes"]
    saved = sum(e["dense_bytes"] - e["stored_bytes"] for e in sparse)
    assert meta["params_bytes"] == dense.metadata["params_bytes"] - saved
    assert meta["params_bytes"] < dense.metadata["params_bytes"]


def test_params_bytes_fall_with_sparsity(libs):
    sizes = [libs[s].metadata["params_bytes"] for s in SPARSITIES]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


def test_bias_free_and_unpruned_layers():
    """A bias-free pruned matmul is offloaded without a bias; a dense layer next to it is not."""
    from tvm_tiny.testing.models import _Graph, _linear, _tensor

    g = _Graph(3)
    h, w1 = _linear(g, "x", 24, 40, "a", False)
    h = g.op("Relu", [h], "relu")
    y, _ = _linear(g, h, 40, 8, "b", True)
    g.rename(y, "y")
    model = g.model([_tensor("x", [2, 5, 24])], [_tensor("y", [2, 5, 8])], "two_linear")
    from tvm_tiny.testing.pruning import prune_initializers

    model = prune_initializers(model, 0.8, contains="a.", suffix="weight")
    lib = tvm_tiny.build(model, name="two_linear")
    (entry,) = lib.metadata["sparse_linear"]
    assert (entry["rows"], entry["in_features"], entry["out_features"]) == (10, 24, 40)
    assert entry["dense_bytes"] == 4 * 24 * 40
    x = example_inputs(model)
    assert_outputs_close(lib.run(*x.values()), onnxruntime_outputs(model, x))


def test_kernel_rejects_bad_arguments(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    inc = kernels_dir() / "include"
    so = tmp_path / "libtt_linear.so"
    subprocess.run(["gcc", *STRICT_C_FLAGS, "-shared", "-fPIC", f"-I{inc}",
                    str(kernels_dir() / "linear" / "tt_linear_f32_csr.c"), "-o", str(so)],
                   check=True)
    lib = ctypes.CDLL(str(so))

    class Dims(ctypes.Structure):
        _fields_ = [("rows", ctypes.c_int32), ("in_features", ctypes.c_int32),
                    ("out_features", ctypes.c_int32)]

    class Params(ctypes.Structure):
        _fields_ = [("col_ptr", ctypes.c_void_p), ("k_idx16", ctypes.c_void_p),
                    ("k_idx32", ctypes.c_void_p), ("values", ctypes.c_void_p),
                    ("bias", ctypes.c_void_p), ("nnz", ctypes.c_int32)]

    rng = np.random.default_rng(1)
    w = magnitude_prune(rng.standard_normal((6, 4)).astype(np.float32), 0.5)
    b = rng.standard_normal(4).astype(np.float32)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    y = np.zeros((3, 4), np.float32)
    csr = csr_by_output(w)
    k32 = csr["k_idx"].astype(np.int32)

    def ptr(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    def call(dims, params, x_arr=x, y_arr=y):
        return lib.tt_linear_f32_csr(ctypes.byref(dims), ctypes.byref(params), ptr(x_arr),
                                     ptr(y_arr))

    dims = Dims(3, 6, 4)
    for idx16, idx32 in ((ptr(csr["k_idx"]), None), (None, ptr(k32))):
        y[:] = 0
        params = Params(ptr(csr["col_ptr"]), idx16, idx32, ptr(csr["values"]), ptr(b),
                        int(csr["col_ptr"][-1]))
        assert call(dims, params) == 0
        np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-6)
    good = Params(ptr(csr["col_ptr"]), ptr(csr["k_idx"]), None, ptr(csr["values"]), None,
                  int(csr["col_ptr"][-1]))
    assert call(dims, good) == 0
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-6)
    y[:] = 7.0
    bad = [
        (Dims(0, 6, 4), good),
        (dims, Params(ptr(csr["col_ptr"]), ptr(csr["k_idx"]), ptr(k32), ptr(csr["values"]),
                      None, good.nnz)),  # both index arrays
        (dims, Params(ptr(csr["col_ptr"]), None, None, ptr(csr["values"]), None, good.nnz)),
        (dims, Params(ptr(csr["col_ptr"]), ptr(csr["k_idx"]), None, ptr(csr["values"]), None,
                      good.nnz + 1)),  # col_ptr[N] != nnz
        (dims, Params(None, ptr(csr["k_idx"]), None, ptr(csr["values"]), None, good.nnz)),
    ]
    for d, p in bad:
        assert call(d, p) == -1
    assert call(dims, good, x, x[:, :4].copy()) == 0  # distinct buffers are fine
    xy = np.zeros(24, np.float32)
    assert call(dims, good, xy, xy) == -1  # y overlaps x
    assert np.all(y == 7.0), "nothing is written on error"


@pytest.mark.emulator
def test_sparse_on_emulated_stm32l4_equals_host():
    board = get_board("stm32l4")
    assert board.toolchain is not None and board.emulator is not None
    for tool in (board.toolchain.cc, board.emulator.binary, "make", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (run `make setup`)")
    model = pruned_ffn_encoder(0.75)
    lib = tvm_tiny.build(model, target="stm32l4", name="sparse_ffn")
    assert len(lib.metadata["sparse_linear"]) == 2
    x = example_inputs(model)
    run = lib.run_on_board(*x.values())
    host = lib.run(*x.values())
    np.testing.assert_allclose(run.outputs[0], host[0], rtol=0, atol=1e-5)
    assert {"tvm_tiny_linear_0", "tvm_tiny_linear_1"} <= set(run.per_kernel)
    assert all(run.per_kernel[k] > 0 for k in ("tvm_tiny_linear_0", "tvm_tiny_linear_1"))


@pytest.mark.parametrize("sparsity", [1.0, 0.95])
def test_fully_and_nearly_fully_pruned_weight(sparsity):
    from tvm_tiny.testing.models import _Graph, _linear, _tensor
    from tvm_tiny.testing.pruning import prune_initializers

    g = _Graph(5)
    y, _ = _linear(g, "x", 70, 3, "a", True)
    g.rename(y, "y")
    model = g.model([_tensor("x", [1, 4, 70])], [_tensor("y", [1, 4, 3])], "one_linear")
    model = prune_initializers(model, sparsity, contains="a.", suffix="weight")
    lib = tvm_tiny.build(model, name="one_linear")
    (entry,) = lib.metadata["sparse_linear"]
    assert entry["nnz"] == 210 - int(round(sparsity * 210))
    x = example_inputs(model)
    assert_outputs_close(lib.run(*x.values()), onnxruntime_outputs(model, x))

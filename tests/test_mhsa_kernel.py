"""The float32 MHSA kernel (kernels/mhsa/tt_mhsa_f32.c) against the numpy reference.

The kernel is compiled once per session with host gcc and called through
ctypes, with weights laid out by ``tvm_tiny.ir.mhsa.arrange_f32``, and compared
with ``tvm_tiny.reference.mhsa_f32.reference_mhsa_f32``; so these tests cover
the C code, the offline layouts and FWSA fusion together.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_tiny.ir.mhsa import (
    FLOAT32_BYTES,
    SPARSE_FIELDS,
    KernelConfig,
    MhsaShape,
    MhsaWeights,
    arrange_f32,
    scratch_bytes,
    stored_arrays_f32,
    stored_params_bytes,
    unfused_params_bytes,
)
from tvm_tiny.ir.sparse import CsrMatrix, smaller_sparse
from tvm_tiny.reference.mhsa_f32 import reference_mhsa_f32
from tvm_tiny.testing.pruning import magnitude_prune

REPO = Path(__file__).resolve().parents[1]
KERNEL_C = REPO / "kernels" / "mhsa" / "tt_mhsa_f32.c"
INCLUDE_DIR = REPO / "kernels" / "include"
STRICT_C_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"]

TT_OK = 0
TT_ARG_ERROR = -1
TT_SCRATCH_ERROR = -2

F32_RTOL = 1e-5
# Absolute floor for outputs near zero, where a relative bound is meaningless.
# Inputs and weights are N(0, 1/fan_in), so every intermediate is O(1). The kernel
# rounds in float32 (eps = 2**-23 ~ 1.2e-7) through four chained dot products of
# length n <= 40 and an expf; each adds about sqrt(n) * eps ~ 1e-6 relative to the
# O(1) sum of |terms|, so 3e-5 leaves a ~5x margin over the worst error observed
# (~6e-6 over thousands of random shapes) while still catching any layout slip,
# which produces O(1) errors.
F32_ATOL = 3e-5

PARAM_FIELDS = ("wq", "bq", "wk", "bk", "wf", "bf", "wv", "bv", "wo", "bo")
FLOAT_P = ctypes.POINTER(ctypes.c_float)


class Dims(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_int32) for name in ("seq", "embed", "heads", "proj", "out_features")
    ]


class Config(ctypes.Structure):
    _fields_ = [("rows_per_block", ctypes.c_int32), ("fuse_qk", ctypes.c_int32)]


class Params(ctypes.Structure):
    _fields_ = [(name, FLOAT_P) for name in PARAM_FIELDS] + [("scale", ctypes.c_float),
                                                             ("sparse", ctypes.c_void_p)]


class Csr(ctypes.Structure):
    _fields_ = [("row_ptr", ctypes.c_void_p), ("col_idx", ctypes.c_void_p),
                ("values", ctypes.c_void_p)]


class Sparse(ctypes.Structure):
    _fields_ = [(name, Csr) for name in SPARSE_FIELDS]


def _sparse_struct(compressed: dict[str, CsrMatrix]) -> Sparse:
    sparse = Sparse()
    for name, m in compressed.items():
        setattr(sparse, name, Csr(m.row_ptr.ctypes.data,
                                  m.col_idx.ctypes.data if m.nnz else None,
                                  m.values.ctypes.data if m.nnz else None))
    return sparse


def _float_p(array: np.ndarray) -> ctypes._Pointer:
    assert array.dtype == np.float32 and array.flags.c_contiguous
    return array.ctypes.data_as(FLOAT_P)


@dataclass
class Call:
    """One tt_mhsa_f32 call with all its arguments, mutable for the rejection cases."""

    dims: Dims
    config: Config
    params: Params
    x: np.ndarray
    y: np.ndarray
    scratch: np.ndarray
    scratch_bytes: int
    keep_alive: list[object]
    x_p: ctypes._Pointer | None = None
    y_p: ctypes._Pointer | None = None
    scratch_p: ctypes._Pointer | None = None

    def __post_init__(self) -> None:
        self.x_p = _float_p(self.x)
        self.y_p = _float_p(self.y)
        self.scratch_p = _float_p(self.scratch)


class Kernel:
    """ctypes front of the compiled kernel library."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._size = lib.tt_mhsa_f32_get_buffer_size
        self._size.argtypes = [ctypes.POINTER(Dims), ctypes.POINTER(Config)]
        self._size.restype = ctypes.c_int32
        self._run = lib.tt_mhsa_f32
        self._run.argtypes = [
            ctypes.POINTER(Dims),
            ctypes.POINTER(Config),
            ctypes.POINTER(Params),
            FLOAT_P,
            FLOAT_P,
            FLOAT_P,
            ctypes.c_int32,
        ]
        self._run.restype = ctypes.c_int  # tt_status, an int-sized enum

    def buffer_size(self, dims: Dims | None, config: Config | None) -> int:
        return self._size(
            ctypes.byref(dims) if dims is not None else None,
            ctypes.byref(config) if config is not None else None,
        )

    def prepare(
        self,
        shape: MhsaShape,
        config: KernelConfig,
        weights: MhsaWeights,
        x: np.ndarray,
        extra_scratch_bytes: int = 0,
    ) -> Call:
        """All arguments of a valid call; scratch sized by the Python formula. Pruned
        matrices are passed row-compressed when ``config.sparse`` (as the code generator
        emits them)."""
        arrays, compressed = stored_arrays_f32(weights, shape, config)
        params = Params(scale=weights.scale)
        for name, array in arrays.items():
            setattr(params, name, _float_p(array))
        keep: list[object] = [*arrays.values(), *compressed.values()]
        if compressed:
            sparse = _sparse_struct(compressed)
            params.sparse = ctypes.addressof(sparse)
            keep.append(sparse)
        nbytes = scratch_bytes(shape, config)
        total = nbytes + extra_scratch_bytes
        scratch = np.zeros((total + FLOAT32_BYTES - 1) // FLOAT32_BYTES, dtype=np.float32)
        return Call(
            dims=Dims(shape.seq, shape.embed, shape.heads, shape.proj, shape.out_features),
            config=Config(config.rows_per_block, int(config.fuse_qk)),
            params=params,
            x=np.ascontiguousarray(x, dtype=np.float32),
            y=np.zeros((shape.seq, shape.out_features), dtype=np.float32),
            scratch=scratch,
            scratch_bytes=nbytes,
            keep_alive=keep,
        )

    def call(self, c: Call) -> int:
        return self._run(
            ctypes.byref(c.dims) if c.dims is not None else None,
            ctypes.byref(c.config) if c.config is not None else None,
            ctypes.byref(c.params) if c.params is not None else None,
            c.x_p,
            c.y_p,
            c.scratch_p,
            c.scratch_bytes,
        )

    def run(
        self, shape: MhsaShape, config: KernelConfig, weights: MhsaWeights, x: np.ndarray
    ) -> np.ndarray:
        c = self.prepare(shape, config, weights, x)
        status = self.call(c)
        assert status == TT_OK, f"tt_mhsa_f32 returned {status}"
        return c.y


def _compile(compiler: str, flags: list[str], source: Path, output: Path) -> None:
    argv = [compiler, *STRICT_C_FLAGS, *flags, f"-I{INCLUDE_DIR}", str(source), "-o", str(output)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stderr}"


@pytest.fixture(scope="session")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found (Debian package gcc)")
    lib_path = tmp_path_factory.mktemp("mhsa_kernel") / "libtt_mhsa_f32.so"
    _compile("gcc", ["-shared", "-fPIC"], KERNEL_C, lib_path)
    return Kernel(ctypes.CDLL(str(lib_path)))


def make_weights(
    rng: np.random.Generator,
    shape: MhsaShape,
    biases: tuple[bool, bool, bool, bool] = (True, True, True, True),
    scale: float | None = None,
) -> MhsaWeights:
    """Random N(0, 1/fan_in) weights, so activations stay O(1) at any size."""
    e, hp, e_out = shape.embed, shape.heads * shape.proj, shape.out_features

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    def vec(n: int, present: bool) -> np.ndarray | None:
        return rng.standard_normal(n).astype(np.float32) if present else None

    return MhsaWeights(
        wq=mat(e, hp),
        wk=mat(e, hp),
        wv=mat(e, hp),
        wo=mat(hp, e_out),
        bq=vec(hp, biases[0]),
        bk=vec(hp, biases[1]),
        bv=vec(hp, biases[2]),
        bo=vec(e_out, biases[3]),
        scale=float(1.0 / np.sqrt(shape.proj)) if scale is None else scale,
    )


def make_input(rng: np.random.Generator, shape: MhsaShape) -> np.ndarray:
    return rng.standard_normal((shape.seq, shape.embed)).astype(np.float32)


@st.composite
def cases(draw: st.DrawFn) -> tuple[MhsaShape, KernelConfig, MhsaWeights, np.ndarray]:
    shape = MhsaShape(
        seq=draw(st.integers(1, 40)),
        embed=draw(st.integers(1, 24)),
        heads=draw(st.integers(1, 4)),
        proj=draw(st.integers(1, 16)),
        out_features=draw(st.integers(1, 24)),
    )
    config = KernelConfig(
        rows_per_block=draw(st.integers(1, shape.seq + 3)), fuse_qk=draw(st.booleans())
    )
    biases = draw(st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()))
    scale = draw(st.floats(-1.5, 1.5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return shape, config, make_weights(rng, shape, biases, scale), make_input(rng, shape)


# ---------------------------------------------------------------- correctness


@settings(max_examples=80, deadline=None)
@given(case=cases())
def test_kernel_matches_reference(kernel: Kernel, case: tuple) -> None:
    shape, config, weights, x = case
    y = kernel.run(shape, config, weights, x)
    np.testing.assert_allclose(
        y, reference_mhsa_f32(x, weights, shape.heads), rtol=F32_RTOL, atol=F32_ATOL
    )


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_fused_and_unfused_agree(kernel: Kernel, case: tuple) -> None:
    shape, config, weights, x = case
    fused = kernel.run(shape, replace(config, fuse_qk=True), weights, x)
    unfused = kernel.run(shape, replace(config, fuse_qk=False), weights, x)
    # Each is within F32_ATOL of the float64 reference, so they agree within twice that.
    np.testing.assert_allclose(fused, unfused, rtol=2 * F32_RTOL, atol=2 * F32_ATOL)


def prune_weights(weights: MhsaWeights, sparsity: float) -> MhsaWeights:
    """``weights`` with Wq, Wk, Wv and Wo magnitude-pruned to ``sparsity``."""
    return replace(weights, **{name: magnitude_prune(getattr(weights, name), sparsity)
                               for name in ("wq", "wk", "wv", "wo")})


@settings(max_examples=60, deadline=None)
@given(case=cases(), sparsity=st.sampled_from([0.0, 0.5, 0.75, 0.9]))
def test_sparse_weights_match_dense_bit_for_bit(kernel: Kernel, case: tuple,
                                                sparsity: float) -> None:
    """Row-compressed matrices skip only zero terms, summed in the dense order: the outputs
    are bitwise those of the dense kernel on the same pruned weights, and match the reference."""
    shape, config, weights, x = case
    pruned = prune_weights(weights, sparsity)
    sparse_y = kernel.run(shape, replace(config, sparse=True), pruned, x)
    dense_y = kernel.run(shape, replace(config, sparse=False), pruned, x)
    np.testing.assert_array_equal(sparse_y, dense_y)
    np.testing.assert_allclose(sparse_y, reference_mhsa_f32(x, pruned, shape.heads),
                               rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("fuse_qk", [False, True], ids=["unfused", "fused"])
def test_sparse_storage_only_when_smaller(kernel: Kernel, sparsity: float,
                                          fuse_qk: bool) -> None:
    """A matrix is compressed exactly when that is smaller: at 0% none is; from 50% every
    pruned one is (6 B per nonzero + 4 B per row < 4 B per element). The fused Wf = Wq Wk^T is
    denser than its factors (here compressed at 75% and 90% only). The stored bytes drop
    accordingly, and the kernel still matches the reference."""
    rng = np.random.default_rng(7)
    shape = MhsaShape(seq=16, embed=32, heads=4, proj=8, out_features=32)
    weights = prune_weights(make_weights(rng, shape), sparsity)
    config = KernelConfig(4, fuse_qk)
    dense_arrays = arrange_f32(weights, shape, config)
    arrays, compressed = stored_arrays_f32(weights, shape, config)
    expected = {name for name in SPARSE_FIELDS if name in dense_arrays and smaller_sparse(
        dense_arrays[name].reshape(-1, dense_arrays[name].shape[-1]))}
    assert set(compressed) == expected
    if sparsity > 0.0:
        assert {"wv", "wo"} | (set() if fuse_qk else {"wq", "wk"}) <= expected
    stored = stored_params_bytes(arrays, compressed)
    if sparsity == 0.0:
        assert stored == stored_params_bytes(dense_arrays)
    else:
        assert stored < stored_params_bytes(dense_arrays)
    for name, m in compressed.items():
        np.testing.assert_array_equal(m.to_dense().reshape(dense_arrays[name].shape),
                                      dense_arrays[name])
    x = make_input(rng, shape)
    np.testing.assert_allclose(kernel.run(shape, config, weights, x),
                               reference_mhsa_f32(x, weights, shape.heads),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_pruned_q_and_k_make_unfused_the_default() -> None:
    """FWSA pays in parameters for dense weights at E < 2P, but Wq Wk^T of pruned Q and K is
    dense: the default then keeps them separate and row-compressed, the smaller choice."""
    rng = np.random.default_rng(3)
    shape = MhsaShape(seq=8, embed=16, heads=2, proj=16, out_features=16)
    weights = make_weights(rng, shape)
    assert KernelConfig.default_for(shape, weights).fuse_qk  # dense: E < 2P fuses
    pruned = prune_weights(weights, 0.75)
    chosen = KernelConfig.default_for(shape, pruned)
    assert not chosen.fuse_qk and chosen.sparse
    fused = KernelConfig(chosen.rows_per_block, True)
    assert (stored_params_bytes(*stored_arrays_f32(pruned, shape, chosen))
            < stored_params_bytes(*stored_arrays_f32(pruned, shape, fused)))


def _sparse_call(kernel: Kernel) -> Call:
    rng = np.random.default_rng(11)
    shape = MhsaShape(seq=6, embed=8, heads=2, proj=4, out_features=8)
    weights = prune_weights(make_weights(rng, shape), 0.75)
    return kernel.prepare(shape, KernelConfig(2, False), weights, make_input(rng, shape))


def test_sparse_call_is_valid_before_corruption(kernel: Kernel) -> None:
    c = _sparse_call(kernel)
    assert c.params.sparse is not None
    assert kernel.call(c) == TT_OK


@pytest.mark.parametrize("corrupt", ["both_dense_and_sparse", "row_ptr_decreases",
                                     "row_ptr_not_from_zero", "values_null"])
def test_bad_sparse_matrices_are_rejected(kernel: Kernel, corrupt: str) -> None:
    """A matrix given twice, an inconsistent row_ptr or missing nonzeros: TT_ARG_ERROR, and
    nothing is written."""
    c = _sparse_call(kernel)
    sparse = next(k for k in c.keep_alive if isinstance(k, Sparse))
    wv = next(k for k in c.keep_alive
              if isinstance(k, CsrMatrix) and k.row_ptr.ctypes.data == sparse.wv.row_ptr)
    bad_ptr = wv.row_ptr.copy()
    c.keep_alive.append(bad_ptr)
    if corrupt == "both_dense_and_sparse":
        dense = wv.to_dense()
        c.keep_alive.append(dense)
        c.params.wv = _float_p(dense)
    elif corrupt == "row_ptr_decreases":
        bad_ptr[3], bad_ptr[4] = bad_ptr[4], bad_ptr[3] - 1
        sparse.wv.row_ptr = bad_ptr.ctypes.data
    elif corrupt == "row_ptr_not_from_zero":
        bad_ptr += 1
        sparse.wv.row_ptr = bad_ptr.ctypes.data
    else:
        sparse.wv.values = None
    c.y[...] = 7.0
    assert kernel.call(c) == TT_ARG_ERROR
    assert np.all(c.y == 7.0)


@pytest.mark.parametrize("fuse_qk", [False, True], ids=["unfused", "fused"])
def test_runs_twice_with_same_result(kernel: Kernel, fuse_qk: bool) -> None:
    """No hidden state: a second call on dirty scratch gives bit-identical output."""
    rng = np.random.default_rng(7)
    shape = MhsaShape(seq=13, embed=12, heads=3, proj=5, out_features=9)
    c = kernel.prepare(
        shape, KernelConfig(4, fuse_qk), make_weights(rng, shape), make_input(rng, shape)
    )
    assert kernel.call(c) == TT_OK
    first = c.y.copy()
    assert kernel.call(c) == TT_OK
    np.testing.assert_array_equal(c.y, first)


def test_reference_batches_items_independently() -> None:
    rng = np.random.default_rng(3)
    shape = MhsaShape(seq=6, embed=8, heads=2, proj=4, out_features=5)
    weights = make_weights(rng, shape)
    xb = rng.standard_normal((3, shape.seq, shape.embed)).astype(np.float32)
    batched = reference_mhsa_f32(xb, weights, shape.heads)
    assert batched.shape == (3, shape.seq, shape.out_features)
    for b in range(3):
        np.testing.assert_allclose(batched[b], reference_mhsa_f32(xb[b], weights, shape.heads))


# ---------------------------------------------------------------------- memory


@settings(max_examples=200, deadline=None)
@given(
    shape=st.builds(
        MhsaShape,
        seq=st.integers(1, 300),
        embed=st.integers(1, 300),
        heads=st.integers(1, 16),
        proj=st.integers(1, 300),
        out_features=st.integers(1, 300),
    ),
    rows=st.integers(1, 400),
    fuse_qk=st.booleans(),
)
def test_scratch_size_c_equals_python(
    kernel: Kernel, shape: MhsaShape, rows: int, fuse_qk: bool
) -> None:
    config = KernelConfig(rows, fuse_qk)
    dims = Dims(shape.seq, shape.embed, shape.heads, shape.proj, shape.out_features)
    assert kernel.buffer_size(dims, Config(rows, int(fuse_qk))) == scratch_bytes(shape, config)


@pytest.mark.parametrize("fuse_qk", [False, True], ids=["unfused", "fused"])
def test_scratch_too_small_is_rejected(kernel: Kernel, fuse_qk: bool) -> None:
    rng = np.random.default_rng(1)
    shape = MhsaShape(seq=9, embed=6, heads=2, proj=4, out_features=6)
    c = kernel.prepare(
        shape, KernelConfig(3, fuse_qk), make_weights(rng, shape), make_input(rng, shape)
    )
    c.scratch_bytes -= FLOAT32_BYTES
    c.y[...] = 42.0
    assert kernel.call(c) == TT_SCRATCH_ERROR
    assert np.all(c.y == 42.0), "y was written although the call failed"


@pytest.mark.parametrize("fuse_qk", [False, True], ids=["unfused", "fused"])
def test_scratch_canary_untouched(kernel: Kernel, fuse_qk: bool) -> None:
    """The kernel writes no byte of scratch past scratch_bytes (nor of y past S*E_out)."""
    canary = 0xA5
    rng = np.random.default_rng(11)
    shape = MhsaShape(seq=17, embed=10, heads=3, proj=6, out_features=7)
    config = KernelConfig(5, fuse_qk)  # 17 = 3 * 5 + 2: a partial last block
    weights = make_weights(rng, shape)
    x = make_input(rng, shape)
    c = kernel.prepare(shape, config, weights, x, extra_scratch_bytes=256)
    c.scratch.view(np.uint8)[...] = canary
    y_padded = np.full(shape.seq * shape.out_features + 64, np.nan, dtype=np.float32)
    c.y = y_padded[: shape.seq * shape.out_features].reshape(shape.seq, shape.out_features)
    c.y_p = _float_p(c.y)
    assert kernel.call(c) == TT_OK
    tail = c.scratch.view(np.uint8)[c.scratch_bytes :]
    assert tail.size >= 256
    assert np.all(tail == canary), (
        f"scratch written at byte {c.scratch_bytes + np.argmax(tail != canary)}"
    )
    assert np.all(np.isnan(y_padded[c.y.size :])), "y written past S*E_out"
    np.testing.assert_allclose(
        c.y, reference_mhsa_f32(x, weights, shape.heads), rtol=F32_RTOL, atol=F32_ATOL
    )


def test_fwsa_saves_a_quarter_of_the_parameters_at_e_equal_p() -> None:
    """Paper figure: at E = P, Q/K/V/O weights go from 4HEP to HE^2 + 2HEP (-25%)."""
    shape = MhsaShape(seq=81, embed=32, heads=8, proj=32, out_features=32)  # EEGFormer
    weights = make_weights(np.random.default_rng(0), shape, biases=(False,) * 4)
    unfused = stored_params_bytes(arrange_f32(weights, shape, KernelConfig(8, fuse_qk=False)))
    fused = stored_params_bytes(arrange_f32(weights, shape, KernelConfig(8, fuse_qk=True)))
    h, e, p = shape.heads, shape.embed, shape.proj
    assert unfused == 4 * h * e * p * FLOAT32_BYTES == 32768 * FLOAT32_BYTES
    assert unfused == unfused_params_bytes(shape, with_biases=False)
    assert fused == (h * e * e + 2 * h * e * p) * FLOAT32_BYTES == 24576 * FLOAT32_BYTES
    assert fused * 4 == unfused * 3


# ------------------------------------------------------------- python helpers


@pytest.mark.parametrize("fuse_qk", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("with_biases", [False, True], ids=["no-bias", "bias"])
def test_arranged_keys_are_param_fields(fuse_qk: bool, with_biases: bool) -> None:
    shape = MhsaShape(seq=4, embed=6, heads=2, proj=3, out_features=5)
    weights = make_weights(np.random.default_rng(0), shape, biases=(with_biases,) * 4)
    arrays = arrange_f32(weights, shape, KernelConfig(2, fuse_qk))
    qk = ["wf", "bf"] if fuse_qk else ["wq", "bq", "wk", "bk"]
    expected = {k for k in [*qk, "wv", "bv", "wo", "bo"] if with_biases or not k.startswith("b")}
    assert set(arrays) == expected
    assert set(arrays) <= set(PARAM_FIELDS)
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays.values())
    if with_biases:
        assert unfused_params_bytes(shape) == stored_params_bytes(
            arrange_f32(weights, shape, KernelConfig(2, fuse_qk=False))
        )


def test_status_values_match_header() -> None:
    header = (INCLUDE_DIR / "tt_status.h").read_text()
    for name, value in [
        ("TT_OK", TT_OK),
        ("TT_ARG_ERROR", TT_ARG_ERROR),
        ("TT_SCRATCH_ERROR", TT_SCRATCH_ERROR),
    ]:
        assert re.search(rf"\b{name}\s*=\s*{value}\b", header), name


def test_default_config() -> None:
    narrow = MhsaShape(seq=66, embed=16, heads=8, proj=2, out_features=16)  # E >= 2P
    wide = MhsaShape(seq=5, embed=32, heads=8, proj=32, out_features=32)  # E < 2P
    assert KernelConfig.default_for(narrow) == KernelConfig(8, fuse_qk=False)
    assert KernelConfig.default_for(wide) == KernelConfig(5, fuse_qk=True)


def test_macs() -> None:
    shape = MhsaShape(seq=32, embed=64, heads=16, proj=64, out_features=64)  # TinyRadar layer
    assert shape.macs == 10_485_760  # the 10.49 M MACs of COINS'21


@pytest.mark.parametrize(
    ("field", "bad", "message"),
    [
        ("wk", np.zeros((6, 5), np.float32), r"wk has shape \(6, 5\), expected \(6, 6\)"),
        ("wo", np.zeros((5, 4), np.float32), r"wo has shape \(5, 4\), expected \(6, 4\)"),
        ("bv", np.zeros(7, np.float32), r"bv has shape \(7,\), expected \(6,\)"),
        ("bo", np.zeros(3, np.float32), r"bo has shape \(3,\), expected \(5,\)"),
        ("wq", np.zeros((6, 6), np.float64), r"wq must be a float32"),
    ],
    ids=["wk-shape", "wo-rows", "bv-shape", "bo-shape", "wq-dtype"],
)
def test_weights_validation_names_the_tensor(field: str, bad: np.ndarray, message: str) -> None:
    shape = MhsaShape(seq=4, embed=6, heads=2, proj=3, out_features=5)
    weights = make_weights(np.random.default_rng(0), shape)
    with pytest.raises((ValueError, TypeError), match=message):
        replace(weights, **{field: bad})


# ------------------------------------------------------------------ rejections


def _set(attr_path: str, value: object) -> Callable[[Call], None]:
    def mutate(c: Call) -> None:
        target, _, attr = attr_path.rpartition(".")
        setattr(getattr(c, target) if target else c, attr, value)

    return mutate


def _alias_y_to_x(c: Call) -> None:
    c.y_p = c.x_p


def _scratch_inside_y(c: Call) -> None:
    c.scratch_p = ctypes.cast(ctypes.addressof(c.y_p.contents) + 8, FLOAT_P)


def _set_param(field: str, source: str | None) -> Callable[[Call], None]:
    """Set a params pointer to NULL (source None) or to another field's array."""

    def mutate(c: Call) -> None:
        value = None if source is None else getattr(c.params, source)
        setattr(c.params, field, value)

    return mutate


REJECTIONS: list[tuple[str, bool, Callable[[Call], None]]] = [
    ("null-dims", False, _set("dims", None)),
    ("null-config", False, _set("config", None)),
    ("null-params", False, _set("params", None)),
    ("null-x", False, _set("x_p", None)),
    ("null-y", False, _set("y_p", None)),
    ("null-scratch", False, _set("scratch_p", None)),
    ("zero-seq", False, _set("dims.seq", 0)),
    ("negative-heads", False, _set("dims.heads", -1)),
    ("zero-proj", False, _set("dims.proj", 0)),
    ("zero-out_features", False, _set("dims.out_features", 0)),
    ("zero-rows_per_block", False, _set("config.rows_per_block", 0)),
    ("fuse_qk-not-0-or-1", False, _set("config.fuse_qk", 2)),
    ("x-overflows-int32", False, _set("dims.seq", 1 << 28)),
    ("wf-overflows-int32", True, _set("dims.embed", 1 << 14)),
    ("unfused-missing-wq", False, _set_param("wq", None)),
    ("unfused-missing-wk", False, _set_param("wk", None)),
    ("unfused-with-wf", False, _set_param("wf", "wq")),
    ("fused-missing-wf", True, _set_param("wf", None)),
    ("fused-with-wq", True, _set_param("wq", "wv")),
    ("fused-with-bk", True, _set_param("bk", "bv")),
    ("missing-wv", False, _set_param("wv", None)),
    ("missing-wo", True, _set_param("wo", None)),
    ("y-aliases-x", False, _alias_y_to_x),
    ("scratch-overlaps-y", True, _scratch_inside_y),
]


@pytest.mark.parametrize(
    ("fuse_qk", "mutate"), [(f, m) for _, f, m in REJECTIONS], ids=[i for i, _, _ in REJECTIONS]
)
def test_bad_arguments_are_rejected(
    kernel: Kernel, fuse_qk: bool, mutate: Callable[[Call], None]
) -> None:
    rng = np.random.default_rng(5)
    shape = MhsaShape(seq=5, embed=6, heads=2, proj=3, out_features=6)  # E_out = E for aliasing
    c = kernel.prepare(
        shape, KernelConfig(2, fuse_qk), make_weights(rng, shape), make_input(rng, shape)
    )
    c.y[...] = 42.0
    x_before = c.x.copy()
    mutate(c)
    assert kernel.call(c) == TT_ARG_ERROR
    assert np.all(c.y == 42.0), "y was written although the call failed"
    np.testing.assert_array_equal(c.x, x_before)


@pytest.mark.parametrize(
    ("dims", "config"),
    [
        (None, Config(1, 0)),
        (Dims(4, 4, 1, 4, 4), None),
        (Dims(0, 4, 1, 4, 4), Config(1, 0)),
        (Dims(4, 4, 1, 4, 4), Config(0, 0)),
        (Dims(4, 4, 1, 4, 4), Config(1, -1)),
        (Dims(1 << 16, 1 << 16, 1, 4, 4), Config(1, 0)),
        (Dims(4, 1 << 14, 1 << 4, 4, 4), Config(1, 1)),
    ],
    ids=[
        "null-dims",
        "null-config",
        "zero-seq",
        "zero-rows",
        "bad-fuse",
        "x-too-big",
        "wf-too-big",
    ],
)
def test_buffer_size_rejects_bad_arguments(
    kernel: Kernel, dims: Dims | None, config: Config | None
) -> None:
    assert kernel.buffer_size(dims, config) == TT_ARG_ERROR


# ------------------------------------------------------------ cross compilers

CROSS_TOOLCHAINS = [
    pytest.param(
        "arm-none-eabi-gcc",
        ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
        "gcc-arm-none-eabi and libnewlib-arm-none-eabi",
        id="cortex-m4",
    ),
    pytest.param(
        "riscv64-unknown-elf-gcc",
        ["--specs=picolibc.specs", "-march=rv32imac", "-mabi=ilp32"],
        "gcc-riscv64-unknown-elf and picolibc-riscv64-unknown-elf",
        id="rv32imac",
    ),
]


@pytest.mark.parametrize(("compiler", "flags", "debian_packages"), CROSS_TOOLCHAINS)
def test_cross_compiles_warning_free(
    tmp_path: Path, compiler: str, flags: list[str], debian_packages: str
) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found (Debian packages: {debian_packages})")
    _compile(compiler, [*flags, "-c"], KERNEL_C, tmp_path / "tt_mhsa_f32.o")

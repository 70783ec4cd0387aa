"""Session fixtures shared by the tvm_tiny test suite.

Every model of ``tests/data`` is imported, built and run at most once per session (per
``offload`` setting): the factories below cache by name. Compiled host libraries are cached by
content hash in ``$TVM_TINY_CACHE`` / ``~/.cache/tvm_tiny``
(``tvm_tiny.targets.toolchain``), so reruns
skip gcc entirely.

Inputs come from ``examples.models.example_inputs(model, seed=INPUT_SEED)`` (standard normal,
float32), references from onnxruntime's CPU provider.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "tests" / "data"
if str(REPO) not in sys.path:  # ``examples`` is not an installed package
    sys.path.insert(0, str(REPO))

import os  # noqa: E402

from hypothesis import settings  # noqa: E402

import tvm_tiny  # noqa: E402

# CI must be reproducible: there, every property test draws the same examples each run
# (``make fuzz`` and local runs keep exploring new ones).
settings.register_profile("tvm_tiny_ci", derandomize=True, deadline=None, database=None)
if os.environ.get("CI"):
    settings.load_profile("tvm_tiny_ci")
from examples.models import example_inputs  # noqa: E402

#: Seed of every example input (``examples.models.example_inputs``).
INPUT_SEED = 0

#: Models of tests/data that must be offloaded, with their number of MHSA blocks
#: (tests/data/README.md gives the builder call of each).
POSITIVE_MODELS: dict[str, int] = {
    "mhsa_helper_mul": 1,
    "mhsa_helper_div": 1,
    "mhsa_helper_nobias": 1,
    "mhsa_helper_proj": 1,
    "encoder_helper_gelu": 2,
    "encoder_helper_relu": 2,
    "encoder_torch": 2,
    "mha_torch": 1,
    "mhsa_torch_linear": 1,
}

#: Near misses of tests/data: id -> file stem. None of them may be offloaded.
NEAR_MISSES: dict[str, str] = {
    "masked": "near_miss_masked",
    "cross_attention": "near_miss_cross_attention",
    "shared_weight": "near_miss_shared_weight",
    "leaked_output": "near_miss_leaked_output",
    "leaked_consumer": "near_miss_leaked_consumer",
}

#: Output tolerance, relative to max |reference| of each output. Inputs and weights are
#: N(0, 1/fan_in) (examples/models.py), so activations are O(1). Our C and onnxruntime (MLAS:
#: blocked, FMA, other summation order) both round in float32 (eps = 2**-23 ~ 1.2e-7) through
#: dot products of length <= 4*E = 128, softmax, LayerNorm and erf, over at most two layers;
#: each contributes ~sqrt(n)*eps ~ 1e-6. The worst error seen on every model here is ~5e-7, so
#: 1e-4 leaves > 100x margin, while any layout, head-order or scale slip gives an O(1) error.
OUTPUT_RTOL = 1e-4


def assert_outputs_close(actual: list[np.ndarray], expected: list[np.ndarray],
                         rtol: float = OUTPUT_RTOL) -> None:
    """Same count, shapes and dtypes; max |a - e| <= rtol * max |e| for every output."""
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"output {i}: shape {a.shape}, expected {e.shape}"
        assert a.dtype == e.dtype, f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        assert np.all(np.isfinite(a)), f"output {i} holds NaN/Inf"
        scale = float(np.max(np.abs(e)))
        err = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
        index = np.unravel_index(int(np.argmax(np.abs(a - e))), a.shape)
        assert err <= rtol * scale, (
            f"output {i}: max |error| {err:.3g} at {index} (got {a[index]}, expected "
            f"{e[index]}) exceeds {rtol:g} * max|ref| = {rtol * scale:.3g}"
        )


def onnxruntime_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]
                        ) -> list[np.ndarray]:
    """Reference outputs of ``model`` from onnxruntime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: the committed ONNX test models."""
    return DATA_DIR


@pytest.fixture(scope="session")
def onnx_model(data_dir: Path) -> Callable[[str], onnx.ModelProto]:
    """``onnx_model(name)``: the loaded ``tests/data/<name>.onnx`` (cached)."""
    cache: dict[str, onnx.ModelProto] = {}

    def load(name: str) -> onnx.ModelProto:
        if name not in cache:
            cache[name] = onnx.load(str(data_dir / f"{name}.onnx"))
        return cache[name]

    return load


@pytest.fixture(scope="session")
def built(data_dir: Path) -> Callable[..., tvm_tiny.TinyModule]:
    """``built(name, offload=True)``: ``tvm_tiny.build`` of ``tests/data/<name>.onnx`` for host,
    built once per session. Tests must not mutate the returned module."""
    cache: dict[tuple[str, bool], tvm_tiny.TinyModule] = {}

    def build(name: str, offload: bool = True) -> tvm_tiny.TinyModule:
        key = (name, offload)
        if key not in cache:
            cache[key] = tvm_tiny.build(data_dir / f"{name}.onnx", target="host",
                                        offload=offload)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def model_inputs(onnx_model: Callable[[str], onnx.ModelProto]
                 ) -> Callable[[str], dict[str, np.ndarray]]:
    """``model_inputs(name)``: seeded inputs by ONNX input name, in graph input order."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def inputs(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = example_inputs(onnx_model(name), seed=INPUT_SEED)
        return cache[name]

    return inputs


@pytest.fixture(scope="session")
def reference(onnx_model: Callable[[str], onnx.ModelProto],
              model_inputs: Callable[[str], dict[str, np.ndarray]]
              ) -> Callable[[str], list[np.ndarray]]:
    """``reference(name)``: onnxruntime outputs of ``name`` on ``model_inputs(name)``."""
    cache: dict[str, list[np.ndarray]] = {}

    def outputs(name: str) -> list[np.ndarray]:
        if name not in cache:
            cache[name] = onnxruntime_outputs(onnx_model(name), model_inputs(name))
        return cache[name]

    return outputs


@pytest.fixture(scope="session")
def relax_module(data_dir: Path) -> Callable[[str], object]:
    """``relax_module(name)``: the Relax IRModule tvm_tiny imports from ``<name>.onnx``."""
    from tvm_tiny.frontend.importer import to_relax

    cache: dict[str, object] = {}

    def module(name: str) -> object:
        if name not in cache:
            cache[name] = to_relax(data_dir / f"{name}.onnx")[0]
        return cache[name]

    return module

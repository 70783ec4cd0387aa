"""Quiet output (issue 13, item 9): building and quantizing a model that is fine prints neither
TVM's "Fast mode" take warning nor onnxruntime's quantization advice, and loses nothing else.

The controls (``*_unfiltered``) show that the same TVM pass and the same onnxruntime call do print
those messages for these models, so their absence from tvm_tiny's output is the filters' doing.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from tvm import relax

import tvm_tiny
from tvm_tiny.frontend.importer import to_relax
from tvm_tiny.ir.native_log import TAKE_FAST_MODE_WARNING, drop_native_log_lines
from tvm_tiny.testing import models

TVM_TAKE = "Fast mode segfaults when there are out-of-bounds indices"
ORT_ADVICE = (
    "Please consider to run pre-processing before quantization",
    "Please consider pre-processing before quantization",
    "is out-of-range for weight",
)
QUIET = (TVM_TAKE, *ORT_ADVICE)


def _calibration(model: onnx.ModelProto, count: int = 2) -> list[dict[str, np.ndarray]]:
    return [models.example_inputs(model, seed=seed) for seed in range(count)]


def _heard(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
           caught: list[warnings.WarningMessage]) -> str:
    """Everything a user could have seen: fd 1 and 2, log records and Python warnings."""
    out, err = capfd.readouterr()
    return "\n".join([out, err, caplog.text, *(str(w.message) for w in caught)])


@pytest.fixture(scope="module")
def mha() -> onnx.ModelProto:
    """``nn.MultiheadAttention``: TVM imports its packed Q/K/V split as three fast-mode takes."""
    pytest.importorskip("torch", reason="the test model is exported from PyTorch")
    return models.mha_torch(8, 16, 2)


def test_tvm_prints_the_take_warning_unfiltered(mha: onnx.ModelProto,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    mod, _ = to_relax(mha)
    capfd.readouterr()
    relax.transform.LegalizeOps()(mod)
    assert TVM_TAKE in capfd.readouterr().err


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "tvm_alone"])
def test_build_and_int8_build_are_quiet(mha: onnx.ModelProto, offload: bool,
                                        capfd: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = tvm_tiny.build(mha, target="host", offload=offload)
        qdq = tvm_tiny.quantize(mha, _calibration(mha))
        lib8 = tvm_tiny.build(qdq, target="host", offload=offload)
    heard = _heard(capfd, caplog, caught)
    for message in QUIET:
        assert message not in heard
    expected = 1 if offload else 0
    assert len(lib.metadata["offloaded"]) == expected  # the partitioner's FoldConstant ran on it
    assert len(lib8.metadata["offloaded"]) == expected


def test_onnxruntime_gives_that_advice_unfiltered(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = models.encoder_helper(8, 16, 2, layers=1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_calibration(model))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    onnx.save(model, str(tmp_path / "float.onnx"))
    with caplog.at_level(logging.WARNING):
        quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True)
    for advice in ORT_ADVICE:
        assert advice in caplog.text


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_quantize_is_quiet(per_channel: bool, capfd: pytest.CaptureFixture[str],
                           caplog: pytest.LogCaptureFixture) -> None:
    model = models.encoder_helper(8, 16, 2, layers=1)  # LayerNorm: 1-D weights per channel
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tvm_tiny.quantize(model, _calibration(model), per_channel=per_channel)
    heard = _heard(capfd, caplog, caught)
    for advice in ORT_ADVICE:
        assert advice not in heard


def test_quantize_keeps_other_onnxruntime_warnings(caplog: pytest.LogCaptureFixture) -> None:
    model = models.encoder_helper(8, 16, 2, layers=1)
    qdq = tvm_tiny.quantize(model, _calibration(model))
    with caplog.at_level(logging.WARNING):
        tvm_tiny.quantize(qdq, _calibration(model))  # quantizing twice is a user's mistake
    # onnxruntime objects (today: "Expected bias ... to be an initializer") and is heard.
    assert any("onnxruntime" in Path(r.pathname).parts for r in caplog.records)
    assert all(advice not in caplog.text for advice in ORT_ADVICE)
    assert not logging.getLogger().filters  # the filter leaves with the call


def test_dropping_a_native_line_keeps_every_other_line(capfd: pytest.CaptureFixture[str]) -> None:
    with drop_native_log_lines(TAKE_FAST_MODE_WARNING):
        os.write(2, f"[10:00:00] transform.h:1261: {TAKE_FAST_MODE_WARNING}\n".encode())
        os.write(2, b"[10:00:00] some_pass.cc:12: Warning: another TVM message\n")
        print("python's own stderr", file=sys.stderr)
        print("stdout is untouched")
    os.write(2, b"after the block\n")
    out, err = capfd.readouterr()
    assert out == "stdout is untouched\n"
    # (pytest routes sys.stderr around fd 2, so Python's line is not ordered with the others)
    lines = err.splitlines()
    assert "python's own stderr" in lines
    lines.remove("python's own stderr")
    assert lines == ["[10:00:00] some_pass.cc:12: Warning: another TVM message",
                     "after the block"]


def test_dropping_a_native_line_keeps_what_came_before_an_error(
        capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError, match="the pass failed"), \
            drop_native_log_lines(TAKE_FAST_MODE_WARNING):
        os.write(2, f"{TAKE_FAST_MODE_WARNING}\ncontext of the failure\n".encode())
        raise RuntimeError("the pass failed")
    os.write(2, b"stderr restored\n")
    assert capfd.readouterr().err == "context of the failure\nstderr restored\n"

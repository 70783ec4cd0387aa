"""Pruned MHSA projections stored row-compressed inside the offloaded kernel (issue #8 part 1):
end to end against onnxruntime at 0/50/75/90% sparsity, the bytes metadata reports, the
``sparse`` build switch, and the tuning knob that may keep a pruned MHSA dense."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_outputs_close, onnxruntime_outputs

import tvm_tiny
from tvm_tiny.ir.mhsa import KernelConfig
from tvm_tiny.targets.boards import get_board
from tvm_tiny.testing import models
from tvm_tiny.testing.models import example_inputs
from tvm_tiny.testing.pruning import prune_matrices, pruned_encoder
from tvm_tiny.tuning.log import append_records, make_record
from tvm_tiny.tuning.space import config_space
from tvm_tiny.tuning.task import TuningTask, Workload, extract_tasks, target_string

SPARSITIES = (0.0, 0.5, 0.75, 0.9)
SHAPE = {"seq": 16, "embed": 32, "heads": 4, "ffn": 64}


def _model(sparsity: float):
    return pruned_encoder(sparsity, **SHAPE)


@pytest.fixture(scope="module")
def builds() -> dict[float, tuple[tvm_tiny.TinyModule, tvm_tiny.TinyModule]]:
    """(sparse build, dense build) of the pruned encoder per sparsity."""
    return {s: (tvm_tiny.build(_model(s), name="pruned"),
                tvm_tiny.build(_model(s), name="pruned", sparse=False)) for s in SPARSITIES}


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_pruned_encoder_matches_onnxruntime(builds, sparsity: float) -> None:
    model = _model(sparsity)
    inputs = example_inputs(model)
    for lib in builds[sparsity]:
        assert_outputs_close(lib.run(*inputs.values()), onnxruntime_outputs(model, inputs))


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_params_below_dense_when_pruned(builds, sparsity: float) -> None:
    sparse, dense = builds[sparsity]
    if sparsity == 0.0:
        assert sparse.metadata["params_bytes"] == dense.metadata["params_bytes"]
    else:
        assert sparse.metadata["params_bytes"] < dense.metadata["params_bytes"]


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_metadata_reports_dense_and_stored_bytes(builds, sparsity: float) -> None:
    """Per matrix: format, nonzeros, dense and stored bytes; they add up to the instance's
    params_bytes (biases dense) and its dense_params_bytes equals the dense build's."""
    sparse, dense = builds[sparsity]
    (entry,), (dense_entry,) = sparse.metadata["offloaded"], dense.metadata["offloaded"]
    weights = entry["weights"]
    assert set(weights) == {"wq", "wk", "wv", "wo"}  # E = 32 = 2P * 2: unfused
    formats = {w["format"] for w in weights.values()}
    assert formats == ({"dense"} if sparsity == 0.0 else {"csr"})
    for w in weights.values():
        if w["format"] == "dense":
            assert w["stored_bytes"] == w["dense_bytes"] == 4 * w["rows"] * w["cols"]
        else:
            assert w["stored_bytes"] == 6 * w["nnz"] + 4 * (w["rows"] + 1) < w["dense_bytes"]
    biases = entry["params_bytes"] - sum(w["stored_bytes"] for w in weights.values())
    assert biases == 4 * (3 * 32 + 32)
    assert entry["dense_params_bytes"] == dense_entry["params_bytes"]
    assert all(w["format"] == "dense" for w in dense_entry["weights"].values())
    assert entry["kernel"]["sparse"] and not dense_entry["kernel"]["sparse"]


def test_sparse_false_leaves_linear_layers_to_tvm(builds) -> None:
    sparse, dense = builds[0.75]
    assert len(sparse.metadata["sparse_linear"]) == 2
    assert dense.metadata["sparse_linear"] == []


def test_generated_source_names_the_storage(builds) -> None:
    sparse, _ = builds[0.9]
    (source,) = [text for path, text in sparse.files.items() if path.endswith("mhsa_0.c")]
    assert "sparse=1" in source and "wq CSR 10% dense" in source
    assert "static const tt_mhsa_f32_sparse" in source and ".wq = NULL" in source


# ------------------------------------------------------------------------------ tuning knob


def test_pruned_workload_has_nnz_and_a_sparse_knob() -> None:
    (task,) = extract_tasks(_model(0.75), "stm32l4")
    assert task.workload.nnz == (256, 256, 256, 256)
    assert "density 0.25/0.25/0.25/0.25" in task.workload.describe()
    space = config_space(task)
    assert space.knob("sparse").values == (False, True)
    (dense_task,) = extract_tasks(_model(0.0), "stm32l4")
    assert dense_task.workload.nnz is None and not config_space(dense_task).has_knob("sparse")
    assert task.workload.key() != dense_task.workload.key()
    # The sparse choice stores fewer bytes, which the validity check sees.
    default = task.default_config()
    on = space.from_kernel_config(default)
    off = space.from_kernel_config(KernelConfig(default.rows_per_block, default.fuse_qk, False))
    assert on is not None and off is not None and on["sparse"] and not off["sparse"]
    assert space.params_bytes(on) < space.params_bytes(off)
    assert space.features(on)[-2:].tolist() == [1.0, 0.25]


def test_workload_round_trips_through_a_record() -> None:
    (task,) = extract_tasks(_model(0.5), "stm32l4")
    record = make_record(task.target, task.workload, 0, [], None, [1.0], 0, 1.0, 0.0)
    assert record.kwargs == {"nnz": list(task.workload.nnz)}
    assert record.workload == task.workload
    with pytest.raises(ValueError, match="nnz"):
        Workload.from_args(task.name, task.workload.args(), {"nnz": [1, 2]})


def test_tuning_record_keeps_a_pruned_mhsa_dense(tmp_path) -> None:
    """A record whose best config has sparse=False is applied: the kernel stores dense."""
    model = _model(0.75)
    (task,) = extract_tasks(model, "host")
    space = config_space(task)
    default = task.default_config()
    dense = space.from_kernel_config(KernelConfig(default.rows_per_block, default.fuse_qk, False))
    log = tmp_path / "host.jsonl"
    append_records(log, [make_record(target_string(get_board("host")), task.workload,
                                     dense.index, space.record_entity(dense),
                                     space.code_hash(dense), [100.0], 0, 1.0, 0.0)])
    lib = tvm_tiny.build(model, name="pruned", tuning_log=str(log))
    (entry,) = lib.metadata["offloaded"]
    assert entry["kernel"]["source"].startswith("tuning_log:") and not entry["kernel"]["sparse"]
    assert all(w["format"] == "dense" for w in entry["weights"].values())
    inputs = example_inputs(model)
    assert_outputs_close(lib.run(*inputs.values()), onnxruntime_outputs(model, inputs))


# ------------------------------------------------------------------------------ on the board


@pytest.mark.emulator
def test_pruned_encoder_on_stm32l4(builds) -> None:
    """Built for the STM32L4 and run in QEMU: the board's outputs equal the host's, with the
    MHSA's four matrices row-compressed and the model's parameters below the dense build's."""
    model = _model(0.75)
    inputs = list(example_inputs(model).values())
    lib = tvm_tiny.build(model, target="stm32l4", name="pruned")
    dense = tvm_tiny.build(model, target="stm32l4", name="pruned", sparse=False)
    assert lib.metadata["params_bytes"] < dense.metadata["params_bytes"]
    board = lib.run_on_board(*inputs)
    host = builds[0.75][0].run(*inputs)
    np.testing.assert_allclose(board.outputs[0], host[0], rtol=0, atol=1e-5)
    assert board.per_kernel and board.instructions > 0


def test_task_measures_with_the_layers_pruned_weights() -> None:
    """The tuner's task measures with the layer's own pruned weights (not random ones)."""
    model = _model(0.9)
    (task,) = extract_tasks(model, "stm32l4")
    assert isinstance(task, TuningTask)
    assert np.count_nonzero(task.weights.wq) == task.workload.nnz[0]


@pytest.mark.emulator
def test_tuner_measures_both_storages_on_stm32l4() -> None:
    """The knob is measured like any other: both storages of a 90%-pruned MHSA run correctly
    in one tuning firmware on the emulated STM32L4, and their instruction counts differ."""
    from tvm_tiny.tuning.measure import measure_configs

    (task,) = extract_tasks(_model(0.9), "stm32l4")
    space = config_space(task)
    default = task.default_config()
    on = space.from_kernel_config(default)
    off = space.from_kernel_config(KernelConfig(default.rows_per_block, default.fuse_qk, False))
    sparse, dense = measure_configs(task, [on.index, off.index])
    assert sparse.ok and dense.ok, (sparse.error_msg, dense.error_msg)
    assert sparse.max_error is not None and sparse.max_error < 1e-4
    assert sparse.mean_cost != dense.mean_cost


TORCH_MODELS = {
    "nn.TransformerEncoder": lambda: models.encoder_torch(16, 32, 4, layers=1, ffn=64),
    "nn.MultiheadAttention": lambda: models.mha_torch(16, 32, 4),
    "nn.Linear attention": lambda: models.mhsa_torch_linear(16, 32, 4, 8),
}


@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_pruned_torch_exports(name: str) -> None:
    """torch exports store their matrices packed (in_proj_weight) or transposed (nn.Linear);
    pruned at 75% they still offload, store every MHSA matrix row-compressed, match
    onnxruntime, and take fewer parameter bytes than the dense build."""
    model = prune_matrices(TORCH_MODELS[name](), 0.75)
    inputs = example_inputs(model)
    lib = tvm_tiny.build(model, name="pruned_torch")
    dense = tvm_tiny.build(model, name="pruned_torch", sparse=False)
    (entry,) = lib.metadata["offloaded"]
    assert {w["format"] for w in entry["weights"].values()} == {"csr"}
    assert lib.metadata["params_bytes"] < dense.metadata["params_bytes"]
    assert_outputs_close(lib.run(*inputs.values()), onnxruntime_outputs(model, inputs))


def test_cli_build_reports_storage_and_dense_switch(tmp_path, capsys) -> None:
    import onnx

    from tvm_tiny.cli import main

    path = tmp_path / "pruned.onnx"
    onnx.save(_model(0.75), path)
    assert main(["build", str(path), "-o", str(tmp_path / "sparse")]) == 0
    sparse_out = capsys.readouterr().out
    assert "CSR: wq 4096 -> 1668 B" in sparse_out and "pruned linear" in sparse_out
    assert main(["build", str(path), "-o", str(tmp_path / "dense"), "--dense"]) == 0
    dense_out = capsys.readouterr().out
    assert "CSR" not in dense_out and "pruned linear" not in dense_out

"""ONNX session creation (provider reporting, CPU-only warning) and signature checks on a tiny exported model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.teachers import onnx_utils
from reid.teachers.onnx_utils import ModelSignatureError, check_signature, create_session


class TwoHead(torch.nn.Module):
    """A 3-channel conv with two outputs, standing in for a real teacher network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        return y, y.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "two_head.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(TwoHead().eval(), (torch.zeros(1, 3, 8, 6),), str(path), input_names=["input"],
                          output_names=["maps", "pooled"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    return path


def test_session_runs_and_reports_providers(model_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="reid.teachers.onnx_utils"):
        session, used = create_session(model_path)
    assert "CPUExecutionProvider" in used and used == session.get_providers()
    assert "uses providers" in caplog.text
    maps, pooled = session.run(None, {"input": np.zeros((2, 3, 8, 6), np.float32)})
    assert maps.shape == (2, 2, 8, 6) and pooled.shape == (2, 2)


def test_signature_ok(model_path: Path) -> None:
    session, _ = create_session(model_path)
    check_signature(session, ["input"], n_outputs=2, output_names=["maps", "pooled"], path=model_path)


def test_wrong_signature_names_expected_and_found(model_path: Path) -> None:
    session, _ = create_session(model_path)
    with pytest.raises(ModelSignatureError) as err:
        check_signature(session, ["input.1"], n_outputs=3, path=model_path)
    msg = str(err.value)
    assert str(model_path) in msg
    assert "expected inputs ['input.1'], found ['input']" in msg
    assert "expected 3 outputs, found 2" in msg
    assert "input ('batch', 3, 8, 6)" in msg and "pooled ('batch', 2)" in msg  # shapes of what was found
    with pytest.raises(ModelSignatureError, match=r"expected outputs \['output'\], found \['maps', 'pooled'\]"):
        check_signature(session, ["input"], output_names=["output"], path=model_path)


def test_cpu_only_with_gpu_present_warns_loudly(model_path: Path, monkeypatch, caplog, capsys) -> None:
    monkeypatch.setattr(onnx_utils, "gpu_present", lambda: True)
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.WARNING, logger="reid.teachers.onnx_utils"):
        _, used = create_session(model_path)
    assert used == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in caplog.text
    banner = capsys.readouterr().err
    assert "!!!!" in banner and "pip install onnxruntime-gpu" in banner


def test_no_warning_without_gpu(model_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(onnx_utils, "gpu_present", lambda: False)
    create_session(model_path)
    assert "!!!!" not in capsys.readouterr().err


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX model not found: .*none.onnx"):
        create_session(tmp_path / "none.onnx")

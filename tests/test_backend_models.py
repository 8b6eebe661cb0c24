"""The shared test models (tests/helpers/models.py) are valid ONNX."""

from __future__ import annotations

from pathlib import Path

import onnx
from helpers.models import conv_bn_relu, fp16_uint8_inputs, unique_op


def test_models_are_valid_onnx(tmp_path: Path) -> None:
    for make in (conv_bn_relu, fp16_uint8_inputs, unique_op):
        onnx.checker.check_model(onnx.load(str(make(tmp_path / f"{make.__name__}.onnx"))), full_check=True)
    onnx.checker.check_model(onnx.load(str(conv_bn_relu(tmp_path / "dyn.onnx", batch="N"))), full_check=True)

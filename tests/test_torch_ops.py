"""The torch engine's converters of ours (If, LSTM, Size, Pad, Split-18, Reduce*-18, BatchNorm of any rank),
checked against onnxruntime on the CPU. Skips cleanly without torch and onnx2torch.

Real models: silero VAD (opset 18: If on the sample rate, reflect Pad of 2-D audio, Split-18, ReduceMean-18)
and the PP-OCRv4 recognizer (BatchNorm whose input rank shape inference cannot tell).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers.numerics import build_and_validate, corpus_model, project
from helpers.passes import run_ort
from onnx import TensorProto, helper, numpy_helper

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("torch and onnx2torch are not installed (pip install 'trtflow[torch]')", allow_module_level=True)

from trtflow.backends import _torch_ops

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _torch_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    module = _torch_ops.load()(model).eval()
    names = [i.name for i in model.graph.input]
    with torch.inference_mode():
        out = module(*(torch.from_numpy(feeds[n]) for n in names))
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto], opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, shape: list[int] | None, t: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, t, shape)


@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 0), ("bidirectional", 0), ("forward", 1)])
def test_lstm_matches_onnxruntime(direction: str, layout: int) -> None:
    rng = np.random.default_rng(0)
    d, hid, inp, seq, batch = (2 if direction == "bidirectional" else 1), 5, 3, 4, 2
    w = numpy_helper.from_array(rng.normal(0, 0.5, (d, 4 * hid, inp)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.5, (d, 4 * hid, hid)).astype(np.float32), "R")
    b = numpy_helper.from_array(rng.normal(0, 0.5, (d, 8 * hid)).astype(np.float32), "B")
    xs = [seq, batch, inp] if layout == 0 else [batch, seq, inp]
    hs = [d, batch, hid] if layout == 0 else [batch, d, hid]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=hid,
                            direction=direction, layout=layout)
    m = _model([node], [_vi("x", xs), _vi("h0", hs), _vi("c0", hs)], [_vi("y", None), _vi("yh", None), _vi("yc", None)],
               [w, r, b], opset=14)
    feeds = {"x": rng.normal(size=xs).astype(np.float32), "h0": rng.normal(size=hs).astype(np.float32),
             "c0": rng.normal(size=hs).astype(np.float32)}
    if layout == 0:
        ref = run_ort(m, feeds)
    else:  # onnxruntime has no batch-major LSTM: the same LSTM time-major, transposed around it
        node0 = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=hid)
        m0 = _model([node0], [_vi("x", [seq, batch, inp]), _vi("h0", [d, batch, hid]), _vi("c0", [d, batch, hid])],
                    [_vi("y", None), _vi("yh", None), _vi("yc", None)], [w, r, b], opset=14)
        ref = run_ort(m0, {k: np.ascontiguousarray(v.swapaxes(0, 1)) for k, v in feeds.items()})
        ref = {"y": ref["y"].transpose(2, 0, 1, 3), "yh": ref["yh"].swapaxes(0, 1), "yc": ref["yc"].swapaxes(0, 1)}
    for got, name in zip(_torch_run(m, feeds), ("y", "yh", "yc")):
        np.testing.assert_allclose(got, ref[name], atol=1e-5)


def test_if_pad_reflect_split18_reduce18_size() -> None:
    """If picks a branch on the host; each branch uses an op onnx2torch lacks (or gets wrong) at opset 18."""
    then_nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
                  helper.make_node("ReduceMean", ["p", "axes"], ["t_out"], keepdims=1)]
    then_g = helper.make_graph(then_nodes, "then", [], [_vi("t_out", None)])
    else_nodes = [helper.make_node("Split", ["x"], ["s0", "s1"], axis=1, num_outputs=2),
                  helper.make_node("Size", ["s1"], ["n"]), helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["s0", "nf"], ["e_out"])]
    else_g = helper.make_graph(else_nodes, "else", [], [_vi("e_out", None)])
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.array([0, 3, 0, 2], np.int64), "pads"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(np.array(16000), "k16")]
    m = _model(nodes, [_vi("x", [1, 9]), _vi("sr", [], TensorProto.INT64)], [_vi("y", None)], inits, opset=18)
    x = np.arange(9, dtype=np.float32).reshape(1, 9)
    for sr in (16000, 8000):
        feeds = {"x": x, "sr": np.array(sr, np.int64)}
        np.testing.assert_allclose(_torch_run(m, feeds)[0], run_ort(m, feeds)["y"], rtol=1e-6)


def test_batchnorm_whose_input_rank_is_unknown() -> None:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), n) for n in ("s", "b", "m", "v")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"])]
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [2, 4, -1])
    m = _model(nodes, [_vi("x", [2, 4, 6])], [_vi("y", None)], [*inits, shape], opset=15)
    m.graph.input[0].type.tensor_type.ClearField("shape")  # rank unknown: onnx2torch's converter gives up
    feeds = {"x": rng.normal(size=(2, 4, 6)).astype(np.float32)}
    np.testing.assert_allclose(_torch_run(m, feeds)[0], run_ort(m, feeds)["y"], atol=1e-5)


def test_what_nothing_converts_is_named_once(tmp_path: Path) -> None:
    nodes = [helper.make_node("Det", ["x"], ["d"]), helper.make_node("Einsum", ["x", "x"], ["e"], equation="bij,bjk->bik"),
             helper.make_node("Trilu", ["x"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 3, 3])], [_vi("y", None)], [])
    missing = _torch_ops.missing_ops(m)
    assert "Det (opset 17)" in missing and "Trilu (opset 17)" in missing and not any("Einsum" in x for x in missing)


def test_torchvision_stand_in_is_not_left_behind() -> None:
    _torch_ops.load()
    mod = sys.modules.get("torchvision")
    assert mod is None or getattr(mod, "__file__", None)  # a real torchvision or none: never our stand-in


@pytest.mark.slow
def test_silero_vad_runs_on_the_torch_engine(tmp_path: Path) -> None:
    body = ("inputs:\n  input: {shape: [1, 512]}\n  state: {shape: [2, 1, 128]}\nbuild: {backend: torch}\n"
            "validate:\n  inputs:\n    sr: {kind: choice, values: [16000, 8000]}\n    state: {kind: zeros}\n"
            "    input: {kind: range, low: -0.5, high: 0.5}\n")
    _, rep = build_and_validate(project(tmp_path, corpus_model("silero_vad"), body, "vad_torch"),
                                backend="torch", device="cpu")
    assert rep.backend == "torch" and rep.passed, [o.to_dict() for o in rep.outputs]


@pytest.mark.slow
def test_ppocr_rec_runs_on_the_torch_engine(tmp_path: Path) -> None:
    body = ("inputs:\n  x: {shape: [1, 3, 48, 160]}\nbuild: {backend: torch}\nvalidate:\n  samples: 1\n  inputs:\n"
            "    x: {kind: image, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}\n")
    _, rep = build_and_validate(project(tmp_path, corpus_model("ppocr_rec"), body, "rec_torch"),
                                backend="torch", device="cpu")
    assert rep.backend == "torch" and rep.passed, [o.to_dict() for o in rep.outputs]

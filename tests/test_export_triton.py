"""`trtflow export triton`: config.pbtxt checked against Triton's own ModelConfig protobuf, plus the repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from helpers.ecosystem import add_model, build_artifact, rewrite_report
from helpers.models import make_conv_model
from typer.testing import CliRunner

from trtflow.cli import app
from trtflow.errors import ArtifactError, OutputError, UsageError
from trtflow.export.triton import batching, config_text, export_artifact, triton_config
from trtflow.plan import Plan, make_plan
from trtflow.recipe import parse_recipe

try:
    from tritonclient.grpc import model_config_pb2 as mc
except ImportError:  # the `triton` extra
    mc = None

needs_triton = pytest.mark.skipif(mc is None, reason="tritonclient is not installed: pip install 'trtflow[triton]' "
                                  "(its model_config_pb2 is Triton's own config schema)")


def parse(text: str) -> Any:
    """Parse with Triton's ModelConfig message: unknown fields, bad enums or syntax raise."""
    return text_format.Parse(text, mc.ModelConfig())


def conv_plan(project: Path, body: str, **model_kw: Any) -> Plan:
    make_conv_model(project / "m.onnx", **model_kw)
    return make_plan(parse_recipe("model: m.onnx\n" + body, project / "conv.yaml"))


# ------------------------------------------------------------------------------------------- config
@needs_triton
def test_dynamic_batch_becomes_max_batch_size(project: Path) -> None:
    plan = conv_plan(project, "precision: fp16\ninputs: {image: {profile: {min: [1,3,16,16], opt: [4,3,16,16], "
                     "max: [16,3,16,16]}, dtype: float16, format: hwc8}}\noutputs: {logits: {reduce: {op: argmax}}}\n"
                     "streams: {topology: pipelined, depth: 3, cuda_graph: true}\n", batch="batch")
    cfg, notes = triton_config(plan, name="conv", platform="tensorrt_plan")
    c = parse(config_text(cfg, ["header line", "a second\nline"]))
    assert (c.name, c.platform, c.backend, c.max_batch_size) == ("conv", "tensorrt_plan", "", 16)
    (i,), (o,) = c.input, c.output
    assert (i.name, mc.DataType.Name(i.data_type), list(i.dims), i.is_non_linear_format_io) == (
        "image", "TYPE_FP16", [3, 16, 16], True)
    assert (o.name, mc.DataType.Name(o.data_type), list(o.dims), o.is_non_linear_format_io) == (
        "logits", "TYPE_UINT8", [16, 16], False)
    (g,) = c.instance_group
    assert g.count == 3 and g.kind == mc.ModelInstanceGroup.KIND_GPU
    assert c.optimization.cuda.graphs and not c.optimization.cuda.graph_spec  # only the batch dim is dynamic
    assert list(c.dynamic_batching.preferred_batch_size) == [4]
    assert any("depth" in n for n in notes)


@needs_triton
def test_one_value_per_batch_item_gets_a_reshape(project: Path) -> None:
    add_model(project, "mobilenet_v3_small.onnx")
    plan = make_plan(parse_recipe("model: models/mobilenet_v3_small.onnx\ninputs: {images: {profile: "
                                  "{min: [1,3,224,224], opt: [8,3,224,224], max: [32,3,224,224]}}}\n"
                                  "outputs: {logits: {reduce: {op: argmax, axis: 1, dtype: int32}}}\n",
                                  project / "argmax.yaml"))
    assert plan.outputs[0].max_shape == (32,)
    c = parse(config_text(triton_config(plan, name="a", platform="tensorrt_plan")[0], []))
    (o,) = c.output
    assert c.max_batch_size == 32 and list(o.dims) == [1] and o.HasField("reshape") and list(o.reshape.shape) == []


@needs_triton
def test_static_model_keeps_full_dims(project: Path) -> None:
    plan = conv_plan(project, "inputs: {image: {dtype: uint8, layout: NHWC}}\n")
    c = parse(config_text(*triton_config(plan, name="m", platform="tensorrt_plan")[:1], []))
    assert c.max_batch_size == 0 and not c.HasField("dynamic_batching") and not c.HasField("optimization")
    assert list(c.input[0].dims) == [1, 16, 16, 3] and mc.DataType.Name(c.input[0].data_type) == "TYPE_UINT8"
    assert list(c.output[0].dims) == [1, 5, 16, 16] and c.instance_group[0].count == 1


@needs_triton
def test_batch_not_starting_at_one_and_dynamic_spatial_dims(project: Path) -> None:
    plan = conv_plan(project, "inputs: {image: {profile: {min: [2,3,16,16], opt: [4,3,16,16], max: [8,3,16,16]}}}\n"
                     "streams: {cuda_graph: true}\n", batch="batch")
    assert batching(plan).max_batch_size == 0 and "starts at 2" in str(batching(plan).why_not)
    cfg, notes = triton_config(plan, name="m", platform="tensorrt_plan")
    c = parse(config_text(cfg, []))
    assert c.max_batch_size == 0 and list(c.input[0].dims) == [-1, 3, 16, 16]
    assert any("max_batch_size 0" in n for n in notes)
    (spec,) = c.optimization.cuda.graph_spec  # a dynamic dim outside the batch: capture at opt
    assert list(spec.input["image"].dim) == [4, 3, 16, 16] and spec.batch_size == 0


@needs_triton
def test_onnxruntime_platform(project: Path) -> None:
    plan = conv_plan(project, "precision: fp16\ninputs: {image: {dtype: float16, format: hwc8}}\n"
                     "streams: {cuda_graph: true}\n")
    cfg, notes = triton_config(plan, name="m", platform="onnxruntime", kind="cpu")
    c = parse(config_text(cfg, []))
    assert (c.platform, c.backend) == ("", "onnxruntime")
    assert not c.input[0].is_non_linear_format_io and not c.HasField("optimization")
    assert c.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert any("linear" in n for n in notes) and any("cuda_graph" in n for n in notes)


@needs_triton
def test_hostile_tensor_names_survive(project: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    names = ['in "quoted"', "back\\slash", "new\nline", "ünï", "x } input [ {"]
    graph = helper.make_graph([helper.make_node("Identity", [n], [f"o{i}"]) for i, n in enumerate(names)], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2]) for n in names],
                              [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, [1, 2])
                               for i in range(len(names))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(project / "h.onnx"))
    plan = make_plan(parse_recipe("model: h.onnx\n", project / "h.yaml"))
    c = parse(config_text(triton_config(plan, name="h", platform="tensorrt_plan")[0], ["line\nwith 'quotes' \"x\""]))
    assert [i.name for i in c.input] == names and len(c.output) == len(names)


# ------------------------------------------------------------------------------------------- export
CLS = """model: ../models/m.onnx
precision: fp16
inputs: {image: {profile: {min: [1,3,16,16], opt: [4,3,16,16], max: [8,3,16,16]}}}
streams: {topology: pipelined, depth: 2}
"""


@pytest.fixture
def conv_project(project: Path) -> Path:
    (project / "models").mkdir()
    make_conv_model(project / "models" / "m.onnx", batch="batch")
    (project / "recipes").mkdir()
    (project / "recipes" / "conv.yaml").write_text(CLS)
    return project


def test_rtx_artifact_exports_onnx_with_a_reason(conv_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_artifact(conv_project / "recipes" / "conv.yaml", conv_project / "build", "tensorrt_rtx", monkeypatch)
    exp = export_artifact(built.artifact, conv_project / "repo")
    assert exp.platform == "onnxruntime" and exp.model_file == conv_project / "repo" / "conv" / "1" / "model.onnx"
    assert exp.model_file.read_bytes() == (built.artifact / "model.onnx").read_bytes()
    assert any("TensorRT-RTX plan" in n for n in exp.notes)
    prov = json.loads((exp.model_dir / "trtflow.json").read_text())
    assert prov["built_with"] == "tensorrt_rtx" and prov["platform"] == "onnxruntime"
    if mc is not None:
        c = parse(exp.config_path.read_text())
        assert c.backend == "onnxruntime" and c.max_batch_size == 8 and c.instance_group[0].count == 2


def test_tensorrt_artifact_exports_the_plan(conv_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_artifact(conv_project / "recipes" / "conv.yaml", conv_project / "build", "tensorrt_rtx", monkeypatch)
    # Pose as a full-TensorRT build (report.json is not hashed): the export path is what is under test.
    rewrite_report(built.artifact, backend="tensorrt", versions={"tensorrt": "10.13.0"}, target="NVIDIA H100 (9.0)")
    exp = export_artifact(built.artifact, conv_project / "repo", name="served")
    assert exp.platform == "tensorrt_plan" and exp.model_file.name == "model.plan"
    assert exp.model_file.read_bytes() == (built.artifact / "engine.plan").read_bytes()
    text = exp.config_path.read_text()
    assert text.startswith("# Written by trtflow") and "TensorRT 10.13.0" in text
    assert any("Triton must ship TensorRT 10.13.0" in n for n in exp.notes)
    if mc is not None:
        c = parse(text)
        assert (c.name, c.platform, c.max_batch_size) == ("served", "tensorrt_plan", 8)
        assert list(c.input[0].dims) == [3, 16, 16] and list(c.dynamic_batching.preferred_batch_size) == [4]
    with pytest.raises(OutputError, match="already exists"):
        export_artifact(built.artifact, conv_project / "repo", name="served")
    export_artifact(built.artifact, conv_project / "repo", name="served", force=True)
    with pytest.raises(UsageError, match="GPU only"):
        export_artifact(built.artifact, conv_project / "repo", name="cpu", kind="cpu")
    exp = export_artifact(built.artifact, conv_project / "repo", name="cpu", kind="cpu", prefer_onnx=True)
    assert exp.platform == "onnxruntime"
    assert sorted(p.name for p in (conv_project / "repo").iterdir()) == ["cpu", "served"]  # no temp folders left


def test_onnxruntime_artifact_and_corruption(conv_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build_artifact(conv_project / "recipes" / "conv.yaml", conv_project / "build", "onnxruntime", monkeypatch)
    exp = export_artifact(built.artifact, conv_project / "repo")
    assert exp.platform == "onnxruntime" and any("no engine.plan" in n for n in exp.notes)
    with pytest.raises(UsageError, match="not usable as a Triton model name"):
        export_artifact(built.artifact, conv_project / "repo", name="../evil")
    (built.artifact / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(ArtifactError, match="does not match"):
        export_artifact(built.artifact, conv_project / "repo2")
    assert not (conv_project / "repo2").exists()


def test_cli_builds_then_exports(conv_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI builds through trtflow.build.build; one build here makes the CLI's build a cache hit.
    build_artifact(conv_project / "recipes" / "conv.yaml", conv_project / "artifacts", "onnxruntime", monkeypatch)
    monkeypatch.chdir(conv_project)
    runner = CliRunner()
    res = runner.invoke(app, ["export", "triton", "recipes/conv.yaml", "--out", "model_repository",
                              "--backend", "onnxruntime"])
    assert res.exit_code == 0, res.output
    assert (conv_project / "model_repository" / "conv" / "config.pbtxt").is_file()
    assert (conv_project / "model_repository" / "conv" / "1" / "model.onnx").is_file()
    res = runner.invoke(app, ["export", "triton", "artifacts/conv", "--out", "model_repository", "--force",
                              "--name", "conv2"])
    assert res.exit_code == 0, res.output
    assert (conv_project / "model_repository" / "conv2" / "config.pbtxt").is_file()


@needs_triton
def test_shipped_cls_recipe_config(project: Path) -> None:
    """recipes/cls.yaml (dynamic batch 1..32, top-5 in the engine) maps onto Triton's batching."""
    add_model(project, "mobilenet_v3_small.onnx")
    text = (Path(__file__).resolve().parents[1] / "recipes" / "cls.yaml").read_text()
    plan = make_plan(parse_recipe(text, project / "recipes" / "cls.yaml"))
    cfg, _ = triton_config(plan, name="cls", platform="tensorrt_plan")
    assert cfg.max_batch_size == 32 and [list(o.dims) for o in cfg.output] == [[5], [5]]
    assert parse(config_text(cfg, [])).dynamic_batching.preferred_batch_size == [8]

"""Validation inputs a user can trust: generators, .npz data of any rank, shape sets, rank-0 scalars.

Real models: the PP-OCRv4 text detector at its profile's min, max and a mixed non-square shape (and its
response to image-like inputs versus uniform noise); silero VAD with a rank-0 int64 sample-rate input,
fed from .npz data and called with a plain Python int.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.numerics import build_and_validate, corpus_model, project
from helpers.passes import conv_net, make_project

from trtflow.errors import InputError, RecipeError
from trtflow.validate.inputs import generate_inputs, load_data, mixed_shape, photo_like, shape_cases

pytestmark = pytest.mark.filterwarnings("ignore::trtflow.passes._graph.PassNote")

DYNAMIC = "inputs:\n  image: {profile: {min: [1, 3, 32, 32], opt: [2, 3, 64, 64], max: [4, 3, 128, 128]}}\n"


# -- shape sets ---------------------------------------------------------------------------------------
def test_dynamic_profiles_validate_at_opt_min_max_and_a_mixed_non_square_shape(tmp_path: Path) -> None:
    plan = make_project(tmp_path, conv_net(h="H", w="W"), DYNAMIC)
    cases = shape_cases(plan)
    assert [c.label for c in cases] == ["opt", "min", "max", "mixed"]
    n, _, h, w = cases[3].shapes["image"]
    assert h != w and h % 32 == 0 and w % 32 == 0 and (h, w) != (64, 64) and n != 2  # off opt, on the grid


def test_mixed_shape_moves_every_dynamic_dim_off_opt(tmp_path: Path) -> None:
    plan = make_project(tmp_path, conv_net(h="H", w="W"), DYNAMIC)
    t = plan.inputs[0]
    m = mixed_shape(t)
    assert all(d != o for d, o, lo, hi in zip(m, t.shape, t.min_shape, t.max_shape) if lo != hi)
    assert all(lo <= d <= hi for d, lo, hi in zip(m, t.min_shape, t.max_shape))


def test_explicit_shapes_are_in_the_models_layout_and_checked(tmp_path: Path) -> None:
    body = ("inputs:\n  image: {dtype: uint8, layout: NHWC, profile: {min: [1, 3, 32, 32], opt: [1, 3, 64, 64], "
            "max: [1, 3, 128, 128]}}\n")
    plan = make_project(tmp_path, conv_net(h="H", w="W", batch=1), body)
    (case,) = shape_cases(plan, ["image:1x3x96x64"])  # trtexec syntax, NCHW like the model
    assert case.shapes["image"] == (1, 96, 64, 3)  # what the NHWC caller hands over
    (case,) = shape_cases(plan, [{"image": [1, 3, 32, 128]}])
    assert case.shapes["image"] == (1, 32, 128, 3)
    with pytest.raises(RecipeError, match="outside its profile"):
        shape_cases(plan, ["image:1x3x256x64"])
    with pytest.raises(RecipeError, match="no input named"):
        shape_cases(plan, [{"img": [1, 3, 32, 32]}])


def test_validate_runs_every_shape_set(tmp_path: Path) -> None:
    model = tmp_path / "dyn.onnx"
    import onnx

    onnx.save(conv_net(h="H", w="W"), str(model))
    recipe = project(tmp_path, model, DYNAMIC + "build: {backend: onnxruntime}\nvalidate: {samples: 1}\n", "dyn")
    _, rep = build_and_validate(recipe)
    assert rep.cases == ["opt", "min", "max", "mixed"] and rep.passed
    assert [o.shape[-2:] for o in rep.outputs][:3] == [(64, 64), (32, 32), (128, 128)]  # (samples, N, C, H, W)
    _, rep = build_and_validate(recipe, shapes=[{"image": [3, 3, 96, 32]}])
    assert rep.cases == ["image:3x3x96x32"] and rep.outputs[0].shape == (1, 3, 4, 96, 32)


# -- generators ---------------------------------------------------------------------------------------
def _plan(tmp_path: Path, gens: str, model: object = None):  # type: ignore[no-untyped-def]
    return make_project(tmp_path, model or conv_net(batch=1), f"validate:\n  inputs:\n{gens}")


def test_generators(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "    image: {kind: range, low: -2, high: -1}\n")
    x = generate_inputs(plan, 0, tmp_path)["image"]
    assert x.dtype == np.float32 and -2 <= x.min() and x.max() < -1
    assert np.array_equal(x, generate_inputs(plan, 0, tmp_path)["image"])  # seeded
    assert not np.array_equal(x, generate_inputs(plan, 1, tmp_path)["image"])
    plan = _plan(tmp_path, "    image: {kind: choice, values: [0.25, 4]}\n")
    assert {float(generate_inputs(plan, k, tmp_path)["image"].flat[0]) for k in range(2)} == {0.25, 4.0}
    plan = _plan(tmp_path, "    image: {kind: zeros}\n")
    assert not generate_inputs(plan, 3, tmp_path)["image"].any()
    plan = _plan(tmp_path, "    image: {kind: normal, mean: 5, std: 0.1}\n")
    assert abs(float(generate_inputs(plan, 0, tmp_path)["image"].mean()) - 5) < 0.05


def test_image_generator_follows_dtype_and_layout(tmp_path: Path) -> None:
    body = "inputs:\n  image: {dtype: uint8, layout: NHWC}\nvalidate:\n  inputs:\n    image: {kind: image}\n"
    plan = make_project(tmp_path, conv_net(batch=1, h=48, w=64), body)
    x = generate_inputs(plan, 0, tmp_path)["image"]
    assert x.shape == (1, 48, 64, 3) and x.dtype == np.uint8 and x.std() > 20  # a real spread of pixel values
    img = photo_like(np.random.default_rng(0), 64, 96)
    gy, gx = np.abs(np.diff(img, axis=0)).mean(), np.abs(np.diff(img, axis=1)).mean()
    noise = np.random.default_rng(0).random((64, 96, 3))
    assert gy < 0.5 * np.abs(np.diff(noise, axis=0)).mean() and gx < 0.5 * np.abs(np.diff(noise, axis=1)).mean()


def test_unknown_generator_input_is_a_recipe_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"(?s)recipe.yaml:4:5 validate.inputs.imag:.*did you mean 'image'"):
        _plan(tmp_path, "    imag: {kind: zeros}\n")


@pytest.mark.slow
def test_image_inputs_exercise_a_text_detector_uniform_noise_does_not(tmp_path: Path) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(corpus_model("ppocr_det")), providers=["CPUExecutionProvider"])
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    img = ((photo_like(np.random.default_rng(0), 320, 320) - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
    noise = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    text = float((sess.run(None, {"x": img})[0] > 0.3).mean())
    assert text > 0.005 and float((sess.run(None, {"x": noise})[0] > 0.3).mean()) < 1e-4


@pytest.mark.slow
def test_ppocr_det_validates_at_min_max_and_non_square(tmp_path: Path) -> None:
    body = ("inputs:\n  x: {profile: {min: [1, 3, 64, 64], opt: [1, 3, 128, 128], max: [1, 3, 256, 256]}}\n"
            "build: {backend: onnxruntime}\nvalidate:\n  samples: 1\n  inputs:\n    x: {kind: image, mean: "
            "[0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n")
    _, rep = build_and_validate(project(tmp_path, corpus_model("ppocr_det"), body, "det"))
    assert rep.passed and rep.cases == ["opt", "min", "max", "mixed"]
    h, w = rep.outputs[3].shape[-2:]
    assert h != w and (h, w) != (128, 128)


# -- .npz data ----------------------------------------------------------------------------------------
def _scalar_model(tmp_path: Path) -> Path:
    """y = x * float(sr): a rank-0 int64 input like a sample rate."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["sr"], ["f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "f"], ["y"])]
    g = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                       helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_npz_rank0_stacked_and_per_sample(tmp_path: Path) -> None:
    model = _scalar_model(tmp_path)
    np.savez(tmp_path / "d.npz", sr=np.array([8000, 16000]), **{"0/x": np.ones((1, 4), np.float32),
                                                                "1/x": np.full((1, 4), 2, np.float32)})
    plan = make_project(tmp_path, model, "validate: {data: d.npz}\n", model_file="scalar.onnx")
    samples = load_data(plan, tmp_path)
    assert [s["sr"].shape for s in samples] == [(), ()] and [int(s["sr"]) for s in samples] == [8000, 16000]
    assert float(samples[1]["x"][0, 0]) == 2.0
    np.savez(tmp_path / "one.npz", sr=np.array(16000, np.int32))  # one rank-0 sample, a safe int cast
    plan = make_project(tmp_path, model, "validate: {data: one.npz}\n", model_file="scalar.onnx")
    (s,) = load_data(plan, tmp_path)
    assert s["sr"].shape == () and s["sr"].dtype == np.int64 and s["x"].shape == (1, 4)  # x generated


def test_npz_errors_name_the_array_and_the_convention(tmp_path: Path) -> None:
    model = _scalar_model(tmp_path)
    np.savez(tmp_path / "bad.npz", rate=np.array(1))
    plan = make_project(tmp_path, model, "validate: {data: bad.npz}\n", model_file="scalar.onnx")
    with pytest.raises(RecipeError, match=r"(?s)'rate' that is no input.*<k>/<input>"):
        load_data(plan, tmp_path)
    np.savez(tmp_path / "f.npz", sr=np.array(1.5))
    plan = make_project(tmp_path, model, "validate: {data: f.npz}\n", model_file="scalar.onnx")
    with pytest.raises(RecipeError, match="is float64; input 'sr' takes int64"):
        load_data(plan, tmp_path)


def test_runner_takes_python_and_numpy_scalars_for_rank0_inputs(tmp_path: Path) -> None:
    from trtflow import load_runner
    from trtflow.build import build

    model = _scalar_model(tmp_path)
    make_project(tmp_path, model, "build: {backend: onnxruntime}\n", model_file="scalar.onnx")
    art = build(tmp_path / "recipe.yaml", out_root=tmp_path / "build").artifact
    x = np.ones((1, 4), np.float32)
    with load_runner(art)(device="cpu") as r:
        assert float(r(x=x, sr=16000).y[0, 0]) == 16000.0
        assert float(r(x=x, sr=np.int64(8000)).y[0, 0]) == 8000.0
        assert float(r(x=x, sr=np.array(3)).y[0, 0]) == 3.0
        with pytest.raises(InputError, match="expected dtype int64, got int32"):
            r(x=x, sr=np.int32(3))  # numpy scalars keep their dtype: no implicit casts
        with pytest.raises(InputError, match="does not fit its dtype int64"):
            r(x=x, sr=2.5)


@pytest.mark.slow
def test_silero_vad_from_npz_with_a_rank0_sample_rate(tmp_path: Path) -> None:
    model = corpus_model("silero_vad")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "audio.npz", sr=np.array([16000, 8000]), input=rng.uniform(-0.3, 0.3, (2, 1, 512)).astype(np.float32),
             state=np.zeros((2, 2, 1, 128), np.float32))
    body = ("inputs:\n  input: {shape: [1, 512]}\n  state: {shape: [2, 1, 128]}\nbuild: {backend: onnxruntime}\n"
            "validate: {data: audio.npz}\n")
    _, rep = build_and_validate(project(tmp_path, model, body, "vad"))
    assert rep.passed and rep.cases == ["data"] and rep.samples == 2

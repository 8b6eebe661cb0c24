"""The encoded-input stage (trtflow.runtime.encoded): request checks, host decode on the CPU, and the
CUDA path on the fake CUDA runtime with a fake nvImageCodec (``test_contract_*``: the real GPU decode is
proved by tests/gpu/test_gpu_encoded.py)."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import runtime as sup
from helpers.image_files import (
    corrupt_header,
    jpeg,
    jpeg_cmyk,
    jpeg_gray,
    jpeg_progressive,
    png,
    png_rgba,
    truncated,
)
from helpers.models import make_conv_model

from trtflow.decode import host, inspect
from trtflow.errors import InputError
from trtflow.plan import Plan, make_plan
from trtflow.recipe import parse_recipe
from trtflow.runtime import encoded


def plan_of(project: Path, body: str = "", **kw: object) -> Plan:
    make_conv_model(project / "m.onnx", **{"hw": 32, **kw})  # type: ignore[arg-type]
    return make_plan(parse_recipe("model: m.onnx\ninputs:\n  image:\n    encoding: image\n" + body, project / "r.yaml"))


def decoded(data: bytes) -> np.ndarray:
    return host.decode_rgb(data, inspect(data))


# -- request checks -------------------------------------------------------------------------------------------
def test_every_bytes_like_is_one_file_and_a_list_is_a_batch(project: Path) -> None:
    t = plan_of(project).inputs[0]
    data = jpeg(32, 32)
    for value in (data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert encoded.check_files(t, value).shape == (1, 32, 32, 3)
    t = plan_of(project, "    profile: {min: [1, 3, 32, 32], opt: [2, 3, 32, 32], max: [4, 3, 32, 32]}\n",
                batch="batch").inputs[0]
    files = encoded.check_files(t, [data, png(32, 32), bytearray(data)])
    assert files.shape == (3, 32, 32, 3) and [h.codec for h in files.headers] == ["jpeg", "png", "jpeg"]


@pytest.mark.parametrize(("value", "words"), [
    (np.zeros((32, 32, 3), np.uint8), "expected the bytes of a JPEG or PNG file"),
    ("path/to/a.jpg", "got a str"),
    ([], "an empty list of files"),
    ([jpeg(32, 32), 3], "file 1: expected bytes"),
    (truncated(jpeg(32, 32)), "input 'image': truncated JPEG"),
    (corrupt_header(jpeg(32, 32)), "corrupt JPEG"),
    (jpeg_gray(32, 32), "a grayscale JPEG (1 channel), but the model takes RGB"),
    (jpeg_cmyk(32, 32), "a CMYK JPEG"),
    (png_rgba(32, 32), "an RGBA PNG"),
    (b"GIF89a" + bytes(30), "a GIF file"),
    (jpeg(40, 48), "the image is 48x40 (WxH), the engine takes 32x32"),
    ([jpeg(32, 32), jpeg(32, 32)], "2 file(s), the engine takes a batch of 1"),
])
def test_bad_files_name_the_tensor_and_the_problem(project: Path, value: Any, words: str) -> None:
    t = plan_of(project).inputs[0]
    with pytest.raises(InputError) as exc:
        encoded.check_files(t, value)
    assert words in str(exc.value) and exc.value.exit_code == 7 and exc.value.hint


def test_size_errors_suggest_resize_and_batches_must_share_a_size(project: Path) -> None:
    t = plan_of(project).inputs[0]
    with pytest.raises(InputError) as exc:
        encoded.check_files(t, jpeg(40, 48))
    assert "resize: {mode: bilinear}" in str(exc.value.hint)
    t = plan_of(project, "    resize: {mode: bilinear}\n").inputs[0]
    assert encoded.check_files(t, jpeg(40, 48)).shape == (1, 40, 48, 3)
    t = plan_of(project, "    profile: {min: [1, 3, 32, 32], opt: [2, 3, 32, 32], max: [4, 3, 32, 32]}\n"
                "    resize: {mode: bilinear}\n", batch="batch").inputs[0]
    with pytest.raises(InputError, match=r"different sizes \(file 0: 32x32, file 1: 48x40"):
        encoded.check_files(t, [jpeg(32, 32), jpeg(40, 48)])


# -- CPU: Pillow into the runner's host buffer -------------------------------------------------------------------
def test_host_stage_decodes_into_the_runner_buffer(project: Path) -> None:
    t = plan_of(project, "    profile: {min: [1, 3, 32, 32], opt: [2, 3, 32, 32], max: [2, 3, 32, 32]}\n",
                batch="batch").inputs[0]
    mem = encoded.make_encoded_memory(t, device="cpu", decoders=encoded.Decoders("auto"))
    files = [jpeg(32, 32, 1), png(32, 32, 2)]
    mem.prepare(files, (2, 32, 32, 3), stream=0)
    feed = mem.feed()  # type: ignore[attr-defined]
    assert feed.shape == (2, 32, 32, 3)
    assert np.array_equal(feed[0], decoded(files[0])) and np.array_equal(feed[1], decoded(files[1]))
    mem.close()


# -- CUDA path on the fake runtime, with a fake nvImageCodec --------------------------------------------------
class FakeNv:
    """Enough of nvidia.nvimgcodec 0.9 for the adapter: decodes with Pillow as a stream op on ``cuda_stream``.

    The hardware backend returns None for progressive JPEGs (as NVJPG does); ``moved`` makes the decoder
    write into memory of its own instead of the given image."""

    def __init__(self, fake: sup.FakeCudart, *, moved: bool = False, fail: bool = False) -> None:
        self.fake, self.moved, self.fail = fake, moved, fail
        self.calls: list[tuple[str, int, int]] = []  # (backend, files, stream)
        nv = self

        class BackendKind:
            HW_GPU_ONLY = "hw"

        class Backend:
            def __init__(self, kind: str) -> None:
                self.kind = kind

        class CodeStream:
            def __init__(self, data: Any) -> None:
                self.data = bytes(memoryview(data))
                inspect(self.data)

        class Image:
            def __init__(self, ptr: int, shape: tuple[int, ...]) -> None:
                self.shape = shape
                self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape}

        def as_image(target: Any, cuda_stream: int = 0) -> Image:
            cai = target.__cuda_array_interface__
            return Image(cai["data"][0], cai["shape"])

        class Decoder:
            def __init__(self, device_id: int = 0, backends: list[Backend] | None = None) -> None:
                self.kind = backends[0].kind if backends else "default"

            def decode(self, streams: list[CodeStream], *, images: list[Image], params: Any, cuda_stream: int) -> list[Any]:
                nv.calls.append((self.kind, len(streams), cuda_stream))
                out: list[Any] = []
                for cs, im in zip(streams, images):
                    head = inspect(cs.data)
                    if nv.fail or (self.kind == "hw" and head.coding == "progressive"):
                        out.append(None)
                        continue
                    px = np.ascontiguousarray(decoded(cs.data))
                    ptr = im.__cuda_array_interface__["data"][0]
                    if nv.moved:
                        _, ptr = nv.fake.cudaMalloc(px.nbytes)
                    keep = px

                    def op(ptr: int = ptr, keep: np.ndarray = keep) -> None:
                        ctypes.memmove(ptr, keep.ctypes.data, keep.nbytes)

                    nv.fake.enqueue(cuda_stream, sup._Op(op))
                    out.append(Image(ptr, px.shape))
                return out

        self.module = types.SimpleNamespace(
            __version__="0.9-fake", BackendKind=BackendKind, Backend=Backend, CodeStream=CodeStream,
            as_image=as_image, Decoder=Decoder, ColorSpec=types.SimpleNamespace(SRGB=1),
            DecodeParams=lambda **kw: kw)


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> tuple[sup.FakeCudart, FakeNv]:
    from trtflow.decode import nvimgcodec

    fake = sup.install(monkeypatch)
    nv = FakeNv(fake)
    monkeypatch.setattr(nvimgcodec, "_nv", nv.module)
    return fake, nv


def test_contract_jpeg_decodes_on_the_input_stream_into_the_engine_buffer(project: Path, gpu: Any) -> None:
    fake, nv = gpu
    from trtflow.runtime import cuda

    t = plan_of(project, "    profile: {min: [1, 3, 32, 32], opt: [2, 3, 32, 32], max: [3, 3, 32, 32]}\n",
                batch="batch").inputs[0]
    dec = encoded.Decoders("auto", device="cuda")
    assert dec.on_gpu and "nvImageCodec 0.9-fake" in dec.status
    mem = encoded.make_encoded_memory(t, device="cuda", decoders=dec)
    assert isinstance(mem, encoded.EncodedMemory)
    stream = cuda.stream_create()
    files = [jpeg(32, 32, 1), jpeg_progressive(32, 32, 2), png(32, 32, 3)]
    mem.prepare(encoded.check_files(t, files), (3, 32, 32, 3), stream=stream)
    mem.enqueue_in((3, 32, 32, 3), stream=stream)
    # one batched hardware call for both JPEGs, the progressive one again on the default backend, on our stream
    assert nv.calls == [("hw", 2, stream), ("default", 1, stream)]
    cuda.stream_synchronize(stream)
    got = mem.decoded((3, 32, 32, 3))
    for i, f in enumerate(files):
        assert np.array_equal(got[i], decoded(f)), i
    assert (mem.gpu_decoded, mem.host_decoded, mem.extra_copies) == (2, 1, 0)  # PNG: host decode + H2D
    assert mem.staging.grown == 1
    for _ in range(3):  # staging is reused, not regrown
        mem.prepare(encoded.check_files(t, files[:2]), (2, 32, 32, 3), stream=stream)
        mem.enqueue_in((2, 32, 32, 3), stream=stream)
    assert mem.staging.grown == 1 and fake.is_pinned(mem.staging.ptr, 16)
    cuda.stream_synchronize(stream)  # as Runner.close does before freeing buffers
    mem.close()
    cuda.stream_destroy(stream)
    assert not cuda.live_handles()


def test_contract_a_decoder_writing_elsewhere_costs_one_counted_copy(project: Path, gpu: Any) -> None:
    _, nv = gpu
    from trtflow.runtime import cuda

    nv.moved = True
    t = plan_of(project).inputs[0]
    mem = encoded.make_encoded_memory(t, device="cuda", decoders=encoded.Decoders("gpu", device="cuda"))
    s = cuda.stream_create()
    data = jpeg(32, 32)
    mem.prepare(data, (1, 32, 32, 3), stream=s)
    mem.enqueue_in((1, 32, 32, 3), stream=s)
    cuda.stream_synchronize(s)
    assert mem.extra_copies == 1 and np.array_equal(mem.decoded((1, 32, 32, 3))[0], decoded(data))
    mem.close()
    cuda.stream_destroy(s)


def test_contract_a_file_the_decoder_refuses_is_an_input_error(project: Path, gpu: Any) -> None:
    _, nv = gpu
    from trtflow.runtime import cuda

    nv.fail = True
    t = plan_of(project).inputs[0]
    mem = encoded.make_encoded_memory(t, device="cuda", decoders=encoded.Decoders("gpu", device="cuda"))
    s = cuda.stream_create()
    mem.prepare(jpeg(32, 32), (1, 32, 32, 3), stream=s)
    with pytest.raises(InputError, match="input 'image': the GPU decoder could not decode it"):
        mem.enqueue_in((1, 32, 32, 3), stream=s)
    nv.fail = False  # the next request works
    mem.prepare(jpeg(32, 32), (1, 32, 32, 3), stream=s)
    mem.enqueue_in((1, 32, 32, 3), stream=s)
    cuda.stream_synchronize(s)
    mem.close()
    cuda.stream_destroy(s)
    assert not cuda.live_handles()


def test_contract_without_nvimgcodec_auto_decodes_on_the_host_and_gpu_refuses(project: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.decode import nvimgcodec
    from trtflow.errors import BackendMissing

    sup.install(monkeypatch)
    monkeypatch.setattr(nvimgcodec, "_nv", None)
    monkeypatch.setattr(nvimgcodec.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    dec = encoded.Decoders("auto", device="cuda")
    assert not dec.on_gpu and dec.status.startswith("host (Pillow): no GPU decoder")
    with pytest.raises(BackendMissing, match="trtflow\\[decode-cu13\\]"):
        encoded.Decoders("gpu", device="cuda")


# -- the generated runner end to end on the CPU (onnxruntime): files in, the host-decoded result out ---------
def build_runner(project: Path, body: str, **kw: object) -> tuple[Any, Plan]:
    from trtflow import load_runner
    from trtflow.build import build

    make_conv_model(project / "m.onnx", **{"hw": 32, **kw})  # type: ignore[arg-type]
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n" + body)
    res = build(project / "r.yaml", out_root=project / "build")
    return load_runner(res.artifact), res.plan


def expected(plan: Plan, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from trtflow.passes.reference import reference_input, reference_outputs

    sess = ort.InferenceSession(plan.model_path, providers=["CPUExecutionProvider"])
    raw = sess.run(None, {"image": reference_input(plan.inputs[0], pixels)})[0]
    return reference_outputs(plan, "logits", raw)["logits"]


def test_runner_takes_jpeg_bytes_and_returns_what_decoding_first_gives(project: Path) -> None:
    cls, plan = build_runner(project, "inputs:\n  image:\n    encoding: jpeg\n    preprocess: {scale: 0.0039}\n"
                             "outputs:\n  logits: {reduce: {op: argmax, axis: 1}}\n")
    data = jpeg(32, 32, 5)
    with cls() as run:
        assert run.decoder.startswith("host (Pillow)")
        got = run(image=data).logits
        want = expected(plan, decoded(data)[None])
        assert np.array_equal(got, want)
        assert np.array_equal(run.decoded("image"), decoded(data)[None])
        for bad, words in ((truncated(data), "truncated JPEG"), (png(32, 32), "a PNG file, but the recipe declares")):
            with pytest.raises(InputError, match=words):
                run(image=bad)
        assert np.array_equal(run(image=bytearray(data)).logits, want)  # still usable after bad input
        with pytest.raises(InputError, match="no runner-owned host staging"):
            run.input_view("image")


def test_runner_resizes_in_the_engine_and_unpacks_bit_masks(project: Path) -> None:
    cls, plan = build_runner(project, "inputs:\n  image:\n    encoding: image\n    resize: {mode: bilinear, max: [96, 96]}\n"
                             "    preprocess: {scale: 0.0039, mean: [0.5], std: [0.25]}\n"
                             "outputs:\n  logits: {reduce: {op: threshold, value: 0.0, pack: bits}}\n", hw=20)
    with cls() as run:
        for data in (jpeg(45, 70, 1), png(20, 20, 2), jpeg_progressive(90, 33, 3)):
            packed = run(image=data).logits
            assert packed.shape == (1, 5, 20, 3) and packed.dtype == np.uint8
            want = expected(plan, decoded(data)[None])
            flips = np.unpackbits(packed, axis=-1, count=20) != np.unpackbits(want, axis=-1, count=20)
            assert flips.mean() < 1e-3  # near-ties at the threshold only
            mask = run.unpack("logits", packed)
            assert mask.dtype == bool and mask.shape == (1, 5, 20, 20)
        with pytest.raises(InputError, match="the image is 100x20 .WxH., the engine takes 1..96 x 1..96"):
            run(image=jpeg(20, 100))


def test_validate_feeds_files_checks_the_decoder_and_compares_on_the_decoded_pixels(project: Path) -> None:
    from trtflow.build import build
    from trtflow.validate.run import validate_artifact

    make_conv_model(project / "m.onnx", hw=32)
    (project / "s.jpg").write_bytes(jpeg(32, 32, 9))
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\ninputs:\n  image:\n"
                                    "    encoding: jpeg\n    sample: s.jpg\n    preprocess: {scale: 0.0039}\n"
                                    "validate: {samples: 3}\n")
    res = build(project / "r.yaml", out_root=project / "build")
    assert res.plan.inputs[0].sample == str(project / "s.jpg")
    rep = validate_artifact(res.artifact, device="cpu")
    assert rep.passed and rep.samples == 3
    (d,) = rep.decoders
    assert (d["input"], d["max_abs"], d["passed"]) == ("image", 0, True)  # the same libjpeg-turbo on both sides
    assert rep.to_dict()["decoders"][0]["fraction_allowed"] == 0.01


def test_decoder_check_allows_one_step_on_baseline_and_two_on_progressive_files() -> None:
    """The decoder gate of validate (check_decoder): +-1 on <= 1% for baseline JPEGs (T.83's IDCT
    accuracy), +-2 on <= 5% for progressive ones (nvImageCodec's CUDA decoder measured max 2 on 3.5% on the
    H200); a file is judged by its own coding, a batch by its worst file."""
    from trtflow.validate.run import check_decoder

    base, prog = jpeg(32, 32, 1), jpeg_progressive(32, 32, 2)
    ref_b, ref_p = decoded(base)[None], decoded(prog)[None]
    assert check_decoder("image", ref_b, base)["passed"]
    off_by_2 = ref_b.astype(np.int16)
    off_by_2[0, 0, :4, 0] = np.clip(off_by_2[0, 0, :4, 0] + np.where(off_by_2[0, 0, :4, 0] > 127, -2, 2), 0, 255)
    d = check_decoder("image", off_by_2.astype(np.uint8), base)
    assert not d["passed"] and d["max_abs"] == 2 and d["max_abs_allowed"] == 1
    p2 = ref_p.astype(np.int16)
    p2[0, 0, :4, 0] = np.clip(p2[0, 0, :4, 0] + np.where(p2[0, 0, :4, 0] > 127, -2, 2), 0, 255)
    assert check_decoder("image", p2.astype(np.uint8), prog)["passed"]
    batch = check_decoder("image", np.concatenate([ref_p, off_by_2.astype(np.uint8)]), [prog, base])
    assert not batch["passed"] and batch["max_abs_allowed"] == 1  # the failing file is the one reported
    wrong_colour = ref_p[..., ::-1].copy()  # RGB read as BGR differs by far more
    assert not check_decoder("image", wrong_colour, prog)["passed"]

"""GPU tests of encoded inputs (issue #13): JPEG bytes decoded by nvImageCodec straight into the engine's
input buffer (run on the GPU machine: scripts/gpu_suite.sh; needs nvImageCodec from
../shared/device/fetch-nvimgcodec.sh and LD_LIBRARY_PATH=/tmp/site/nvidia/cu13/lib).

What they prove, against libjpeg-turbo (Pillow) on the host:
* the decoded pixels differ from the host decoder's by at most 1 (IDCT rounding) on at most 1% of the
  values, and the engine's outputs equal the reference model's on the pixels the engine read;
* the decode lands in the engine's input buffer itself (no extra copy), ordered after earlier work on
  the runner's stream (a memset queued behind a long copy would otherwise overwrite it);
* pipelined: the GPU decode of request i+1 starts before the engine of request i ends (CUDA events);
* bad files (truncated, corrupt, grayscale, CMYK, 16-bit PNG, too large) are exit-7 errors that leave
  the runner usable, with no growth of CUDA allocations;
* PNG decodes on the host and batches decode in one call; CUDA graphs cover the engine only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import image_files as files
from helpers import runtime as sup

from trtflow.validate.run import check_decoder

ROOT = Path(__file__).resolve().parents[2]
HW = 64


def _why_not() -> str | None:
    for mod in ("cuda.bindings", "torch", "onnx2torch", "onnxruntime", "PIL"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed"
        except ModuleNotFoundError:
            return f"{mod} is not installed"
    from trtflow.runtime import cuda

    if not cuda.cuda_available():
        return "no CUDA GPU is visible"
    from trtflow.decode import nvimgcodec

    try:
        nvimgcodec.GpuDecoder(0)
    except Exception as exc:  # noqa: BLE001 - any reason nvImageCodec cannot decode here
        return f"nvImageCodec does not decode here: {str(exc).splitlines()[0]}"
    return None


REASON = _why_not()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU encoded tests: {REASON}")]


def host(data: bytes) -> np.ndarray:
    from trtflow.decode import host as h
    from trtflow.decode import inspect

    return h.decode_rgb(data, inspect(data))


def build(root: Path, body: str, *, hw: int = HW, batch: int | str = 1) -> tuple[Path, Any]:
    from trtflow.build import build as do_build

    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    sup.conv_model(root / "m.onnx", hw=hw, batch=batch)
    (root / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n" + body)
    res = do_build(root / "r.yaml", out_root=root / "build")
    return res.artifact, res.plan


#: the engine these tests run; tests/test_encoded_gpu_contract.py runs the same bodies on the fake CUDA runtime
#: ("fakecuda") with a fake nvImageCodec, so a renamed runner API fails on the CPU first, not on the GPU machine
BACKEND = "torch"
#: bytes of device-to-device copy queued ahead of a decode (milliseconds of work on a GPU)
QUEUED_BYTES = 1 << 30


def runner(art: Path, **kw: Any) -> Any:
    """The artifact's generated runner class (``r(image=...)`` returns its Outputs NamedTuple), on CUDA."""
    from trtflow import load_runner

    return load_runner(art)(backend=BACKEND, device="cuda", decoder=kw.pop("decoder", "gpu"), **kw)


def reference(plan: Any, pixels: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from trtflow.passes.reference import reference_input, reference_outputs

    sess = ort.InferenceSession(plan.model_path, providers=["CPUExecutionProvider"])
    raw = sess.run(None, {plan.inputs[0].source: reference_input(plan.inputs[0], pixels)})[0]
    return reference_outputs(plan, plan.outputs[0].source, raw)[plan.outputs[0].name]


NORM = "    preprocess: {scale: 0.00392156862745098, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}\n"


@pytest.fixture(scope="module")
def jpeg_art(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return build(tmp_path_factory.mktemp("jpeg"), "inputs:\n  image:\n    encoding: image\n" + NORM)


def test_gpu_decode_matches_libjpeg_turbo_and_outputs_match_the_reference(jpeg_art: tuple[Path, Any]) -> None:
    art, plan = jpeg_art
    with runner(art) as r:
        assert r.decoder.startswith("GPU (nvImageCodec")
        for seed, data in enumerate((files.jpeg(HW, HW, 1), files.jpeg_progressive(HW, HW, 2),
                                     files.jpeg(HW, HW, 3, quality=75, subsampling=0))):
            got = np.asarray(r(image=data).logits)
            seen = r.decoded("image")
            assert check_decoder("image", seen, data)["passed"], (seed, check_decoder("image", seen, data))
            np.testing.assert_allclose(got, reference(plan, seen), atol=1e-3, rtol=1e-3)
            np.testing.assert_allclose(got, reference(plan, host(data)[None]), atol=0.1, rtol=0.05)


def test_decode_lands_in_the_engine_input_buffer_without_a_copy(jpeg_art: tuple[Path, Any]) -> None:
    from trtflow.runtime.encoded import EncodedMemory

    art, _ = jpeg_art
    with runner(art) as r:
        r(image=files.jpeg(HW, HW))
        mem = r._sets[0].mems["image"]
        assert isinstance(mem, EncodedMemory)
        assert (mem.gpu_decoded, mem.extra_copies, mem.host_decoded) == (1, 0, 0)
        assert r._binding.addrs["image"] == mem.device_ptr  # the engine reads what the decoder wrote


def test_the_decode_is_ordered_after_earlier_work_on_its_stream() -> None:
    from trtflow.decode.nvimgcodec import GpuDecoder, Target
    from trtflow.runtime import cuda

    big = QUEUED_BYTES
    data = files.jpeg(512, 768)
    want = host(data)
    dec = GpuDecoder(cuda.current_device())
    s = cuda.stream_create()
    src, dst, target = cuda.malloc(big), cuda.malloc(big), cuda.malloc(want.nbytes)
    try:
        for _ in range(3):
            cuda.memcpy_async(dst, src, big, "d2d", stream=s)     # ~ms of queued work
            cuda.memset_async(target, 0x7F, want.nbytes, stream=s)  # must land BEFORE the decode
            out = dec.decode([data], [Target(target, 512, 768)], stream=s)
            assert out[0].error is None and not out[0].moved_from
            got = np.empty_like(want)
            cuda.memcpy_async(int(got.ctypes.data), target, got.nbytes, "d2h", stream=s)  # after the decode
            cuda.stream_synchronize(s)
            assert np.abs(got.astype(int) - want).max() <= 1
    finally:
        for p in (src, dst, target):
            cuda.free(p)
        cuda.stream_destroy(s)


def pipelined_starts_and_ends(tmp_path: Path) -> tuple[list[float], list[float]]:
    """Three pipelined requests, each engine made long by device copies queued ahead of it on the compute
    stream: when each decode started and each engine ended (ms, CUDA events, from the first decode's start)."""
    from trtflow.runtime import cuda

    art, _ = build(tmp_path, "inputs:\n  image:\n    encoding: jpeg\n" + NORM, hw=512)
    data = files.jpeg(512, 512)
    src, dst = cuda.malloc(QUEUED_BYTES), cuda.malloc(QUEUED_BYTES)
    try:
        with runner(art, topology="pipelined", depth=3, timing=True) as r:
            for _ in range(3):
                r(image=data)
            pend = []
            for _ in range(3):
                for _ in range(4):  # ~ms of work the engine of this request waits for
                    cuda.memcpy_async(dst, src, QUEUED_BYTES, "d2d", stream=r.streams["compute"])
                pend.append(r.submit_feeds({"image": data}))
            for p in pend:
                p.result_dict()
            origin = pend[0]._set.t_h2d
            starts = [cuda.event_elapsed_ms(origin, p._set.t_h2d) for p in pend]
            ends = [cuda.event_elapsed_ms(origin, p._set.ev_compute) for p in pend]
            return starts, ends
    finally:
        cuda.free(src)
        cuda.free(dst)


def test_pipelined_decode_of_the_next_request_overlaps_the_engine(tmp_path: Path) -> None:
    """The decode of request i+1 starts on the GPU before the engine of request i ends: the runner never
    orders a decode behind the previous request's engine (the engines are made long, so the check does not
    depend on this small model's speed; the seed scenario's overlap is row (d) of bench --sweep encoding)."""
    starts, ends = pipelined_starts_and_ends(tmp_path)
    assert all(starts[i + 1] < ends[i] for i in range(2)), (starts, ends)


@pytest.mark.parametrize(("make", "words"), [
    (lambda: files.truncated(files.jpeg(HW, HW)), "truncated JPEG"),
    (lambda: files.corrupt_header(files.jpeg(HW, HW)), "corrupt JPEG"),
    (lambda: files.jpeg_gray(HW, HW), "a grayscale JPEG"),
    (lambda: files.jpeg_cmyk(HW, HW), "a CMYK JPEG"),
    (lambda: files.png_rgb16(HW, HW), "a 16-bit PNG"),
    (lambda: files.jpeg(2 * HW, HW), "the image is 64x128"),
    (lambda: b"not an image at all", "no image format known here"),
])
def test_bad_files_are_exit_7_and_leave_the_runner_usable(jpeg_art: tuple[Path, Any], make: Any, words: str) -> None:
    from trtflow.errors import InputError
    from trtflow.runtime import cuda

    art, _ = jpeg_art
    good = files.jpeg(HW, HW)
    with runner(art) as r:
        want = np.array(r(image=good).logits)
        before = cuda.live_handles()
        for _ in range(20):
            with pytest.raises(InputError, match=words) as exc:
                r(image=make())
            assert exc.value.exit_code == 7
        assert np.array_equal(r(image=good).logits, want)
        assert cuda.live_handles() == before


def test_png_decodes_on_the_host_and_a_batch_in_one_call(tmp_path: Path) -> None:
    art, plan = build(tmp_path, "inputs:\n  image:\n    encoding: image\n"
                      "    profile: {min: [1, 3, 64, 64], opt: [4, 3, 64, 64], max: [4, 3, 64, 64]}\n" + NORM,
                      batch="batch")
    batch = [files.jpeg(HW, HW, 1), files.png(HW, HW, 2), files.jpeg(HW, HW, 3), files.jpeg(HW, HW, 4)]
    with runner(art) as r:
        got = np.asarray(r(image=batch).logits)
        mem = r._sets[0].mems["image"]
        assert (mem.gpu_decoded, mem.host_decoded) == (3, 1)
        seen = r.decoded("image")
        assert np.array_equal(seen[1], host(batch[1]))  # PNG: lossless, decoded by libpng
        np.testing.assert_allclose(got, reference(plan, seen), atol=1e-3, rtol=1e-3)


def test_cuda_graph_covers_the_engine_and_says_the_decode_is_outside(jpeg_art: tuple[Path, Any]) -> None:
    art, _ = jpeg_art
    data = [files.jpeg(HW, HW, s) for s in range(3)]
    with runner(art, cuda_graph=False) as eager:
        want = [np.array(eager(image=d).logits) for d in data]
    with runner(art, cuda_graph=True) as r:
        for _ in range(2):
            for d, w in zip(data, want):
                np.testing.assert_allclose(np.asarray(r(image=d).logits), w, atol=1e-4, rtol=1e-4)
        status = r.graph_status
        assert "encoded inputs ['image'] are decoded before each replay" in status, status


def test_resize_on_the_gpu_matches_the_host_resize(tmp_path: Path) -> None:
    art, plan = build(tmp_path, "inputs:\n  image:\n    encoding: jpeg\n    resize: {mode: bilinear, max: [256, 256]}\n" + NORM)
    with runner(art) as r:
        for h, w in ((100, 150), (64, 64), (33, 250)):
            data = files.jpeg(h, w, h)
            got = np.asarray(r(image=data).logits)
            np.testing.assert_allclose(got, reference(plan, r.decoded("image")), atol=2e-3, rtol=2e-3)


def test_the_seed_scenario_file_decodes_on_the_gpu() -> None:
    from trtflow.decode.nvimgcodec import GpuDecoder, Target
    from trtflow.runtime import cuda

    data = (ROOT / "data" / "street_1600x2560.jpg").read_bytes()
    want = host(data)
    dec = GpuDecoder(cuda.current_device())
    s = cuda.stream_create()
    ptr = cuda.malloc(want.nbytes)
    try:
        out = dec.decode([data], [Target(ptr, 1600, 2560)], stream=s)
        assert out[0].error is None and out[0].backend in ("hardware", "default")
        got = np.empty_like(want)
        cuda.memcpy_async(int(got.ctypes.data), ptr, got.nbytes, "d2h", stream=s)
        cuda.stream_synchronize(s)
        diff = np.abs(got.astype(int) - want)
        print(f"\nseed JPEG on the GPU ({out[0].backend} backend) vs libjpeg-turbo: max {diff.max()}, "
              f"differing {(diff > 0).mean():.2e}")
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01
    finally:
        cuda.free(ptr)
        cuda.stream_destroy(s)


def test_exif_orientation_is_applied_like_the_host_decoder(tmp_path: Path) -> None:
    art, _ = build(tmp_path, "inputs:\n  image:\n    encoding: jpeg\n    resize: {mode: bilinear, max: [128, 128]}\n" + NORM)
    data = files.jpeg_rotated(48, 64, orientation=6)  # stored 64 wide, shown 48 wide
    with runner(art) as r:
        r(image=data)
        seen = r.decoded("image")
        assert seen.shape == (1, 64, 48, 3)
        assert np.abs(seen.astype(int) - host(data)[None]).max() <= 1

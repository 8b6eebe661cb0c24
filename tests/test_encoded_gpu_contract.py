"""The bodies of tests/gpu/test_gpu_encoded.py on the CPU: the fake CUDA runtime, the ``fakecuda`` engine
(onnxruntime run as a stream op) and a fake nvImageCodec that decodes with Pillow (``test_contract_*``).

They prove nothing about the GPU decode (the GPU tests do that); they prove that every runner, stage and
CUDA call those tests make exists and behaves as they expect, so the one GPU run has no API surprises.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import runtime as sup
from test_encoded_stage import FakeNv

GPU_TESTS = Path(__file__).resolve().parent / "gpu" / "test_gpu_encoded.py"


def _gpu_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_encoded_bodies", GPU_TESTS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


G = _gpu_module()


@pytest.fixture
def g(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The GPU test module with the fakes in place: fake cudart + fakecuda backend + fake nvImageCodec."""
    from trtflow.decode import nvimgcodec

    fake = sup.install_with_backend(monkeypatch, seed=3)
    monkeypatch.setattr(nvimgcodec, "_nv", FakeNv(fake).module)
    monkeypatch.setattr(G, "BACKEND", "fakecuda")
    monkeypatch.setattr(G, "QUEUED_BYTES", 1 << 20)
    return G


@pytest.fixture
def jpeg_art(g: ModuleType, tmp_path: Path) -> tuple[Path, Any]:
    return g.build(tmp_path / "jpeg", "inputs:\n  image:\n    encoding: image\n" + g.NORM)  # type: ignore[no-any-return]


def test_contract_gpu_decode_matches_libjpeg_turbo(g: ModuleType, jpeg_art: tuple[Path, Any]) -> None:
    g.test_gpu_decode_matches_libjpeg_turbo_and_outputs_match_the_reference(jpeg_art)


def test_contract_decode_lands_in_the_engine_input_buffer(g: ModuleType, jpeg_art: tuple[Path, Any]) -> None:
    g.test_decode_lands_in_the_engine_input_buffer_without_a_copy(jpeg_art)


def test_contract_decode_is_ordered_after_earlier_work(g: ModuleType) -> None:
    g.test_the_decode_is_ordered_after_earlier_work_on_its_stream()


def test_contract_pipelined_decode_overlap_is_measurable(g: ModuleType, tmp_path: Path) -> None:
    # the fake's clock counts stream ops, it is no timing model: the overlap itself is asserted on the GPU only
    # (g.test_pipelined_decode_of_the_next_request_overlaps_the_engine), here that its numbers can be taken
    starts, ends = g.pipelined_starts_and_ends(tmp_path)
    assert len(starts) == len(ends) == 3 and starts[0] == 0.0 and all(e > 0 for e in ends)


@pytest.mark.parametrize("case", range(7))
def test_contract_bad_files_are_exit_7(g: ModuleType, jpeg_art: tuple[Path, Any], case: int) -> None:
    mark = next(m for m in g.test_bad_files_are_exit_7_and_leave_the_runner_usable.pytestmark if m.name == "parametrize")
    make, words = mark.args[1][case]
    g.test_bad_files_are_exit_7_and_leave_the_runner_usable(jpeg_art, make, words)


def test_contract_png_on_the_host_and_a_batch(g: ModuleType, tmp_path: Path) -> None:
    g.test_png_decodes_on_the_host_and_a_batch_in_one_call(tmp_path)


def test_contract_cuda_graph_covers_the_engine(g: ModuleType, jpeg_art: tuple[Path, Any]) -> None:
    g.test_cuda_graph_covers_the_engine_and_says_the_decode_is_outside(jpeg_art)


def test_contract_resize(g: ModuleType, tmp_path: Path) -> None:
    g.test_resize_on_the_gpu_matches_the_host_resize(tmp_path)


def test_contract_seed_scenario_file(g: ModuleType) -> None:
    g.test_the_seed_scenario_file_decodes_on_the_gpu()


def test_contract_exif_orientation(g: ModuleType, tmp_path: Path) -> None:
    g.test_exif_orientation_is_applied_like_the_host_decoder(tmp_path)


def test_contract_every_gpu_test_has_a_contract_twin() -> None:
    """A GPU test added without its CPU twin here would meet the runner API first on the GPU machine."""
    gpu = {n for n in vars(G) if n.startswith("test_")}
    here = Path(__file__).read_text()
    assert not {n for n in gpu if f"g.{n}" not in here}

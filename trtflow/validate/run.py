"""``trtflow validate``: run the artifact's generated runner and the fp32 reference, compare every output.

The candidate is the generated runner itself (the code users ship), never a parallel code path.
The reference is onnxruntime on the CPU (fp32, no TF32) running the ORIGINAL model; the recipe's I/O
contract is applied around it in numpy (the same input converted to fp32 NCHW, reducers applied to its
outputs), so both sides see the same data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtflow import artifact as art
from trtflow.errors import RecipeError
from trtflow.plan.model import Plan, TensorPlan
from trtflow.validate.compare import FORMULA_TEXT, OutputComparison, compare

INTEGER_REDUCERS = {"argmax", "threshold"}


@dataclass
class ValidationReport:
    name: str
    artifact: str
    backend: str
    device: str
    reference: str
    formula: str
    formula_text: str
    statistic: str
    samples: int
    outputs: list[OutputComparison] = field(default_factory=list)
    seconds: float = 0.0
    # What ran as the candidate, said plainly: the engine plan, or the lowered model.onnx in its place
    candidate: str = ""
    engine_file: str | None = None       # the artifact's engine (engine.plan) if its builder wrote one
    engine_validated: bool = False       # False: engine_file did not run here; model.onnx was checked instead
    # encoded inputs: the runner's decoded pixels against the host decoder's (see check_decoder)
    decoders: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs) and all(d["passed"] for d in self.decoders)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "decoders": self.decoders,
            "name": self.name, "artifact": self.artifact, "backend": self.backend, "device": self.device,
            "reference": self.reference, "formula": self.formula, "formula_text": self.formula_text,
            "statistic": self.statistic, "samples": self.samples, "passed": self.passed,
            "seconds": self.seconds, "candidate": self.candidate, "engine_file": self.engine_file,
            "engine_validated": self.engine_validated, "outputs": [o.to_dict() for o in self.outputs],
        }


def generate_inputs(plan: Plan, sample: int, folder: Path, *, batch: int | None = None) -> dict[str, np.ndarray]:
    """One sample of caller-side inputs: from the recipe's .npz data, or seeded random data.

    ``batch`` replaces dimension 0 of inputs whose profile lets it vary (batch sweeps).
    """
    v = plan.validate
    if v.get("data") and batch is None:
        path = (folder / v["data"]).resolve()
        with np.load(path) as data:
            missing = [t.name for t in plan.inputs if t.name not in data.files]
            if missing:
                raise RecipeError(f"{path}: no arrays named {missing} (has {data.files})")
            return {t.name: np.ascontiguousarray(data[t.name][sample % len(data[t.name])] if data[t.name].ndim
                                                 == len(t.shape) + 1 else data[t.name]) for t in plan.inputs}
    rng = np.random.default_rng(int(v.get("seed", 0)) + sample)
    return {t.name: _random(rng, t, v.get("generator", "uniform"), batch) for t in plan.inputs}


def _random(rng: np.random.Generator, t: TensorPlan, generator: str, batch: int | None = None) -> np.ndarray:
    shape = t.shape
    if batch is not None and shape and t.min_shape[0] != t.max_shape[0]:
        shape = (batch, *shape[1:])
    if t.dtype in ("uint8",):
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if t.dtype in ("int8",):
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    if t.dtype in ("int32", "int64"):
        return rng.integers(0, 16, size=shape).astype(t.dtype)
    if t.dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    x = rng.standard_normal(shape) if generator == "normal" else rng.random(shape)
    if t.dtype == "bfloat16":
        import ml_dtypes  # noqa: F401  (numpy bfloat16)

        return x.astype("bfloat16")
    return x.astype(t.dtype)


def reference_outputs(plan: Plan, feeds: dict[str, np.ndarray], sess: Any = None) -> dict[str, np.ndarray]:
    """Run the original model in fp32 on onnxruntime CPU with the contract applied in numpy.

    ``sess``: a session from :func:`trtflow.backends.onnxruntime.reference_session`, reused across samples.
    """
    from trtflow.backends.onnxruntime import reference_session
    from trtflow.passes.reference import reference_input
    from trtflow.passes.reference import reference_outputs as reduce_outputs

    sess = sess or reference_session(Path(plan.model_path))
    model_feeds = {t.source: reference_input(t, feeds[t.name]) for t in plan.inputs}
    sources = list(dict.fromkeys(t.source for t in plan.outputs))
    raw = sess.run(sources, model_feeds)
    out: dict[str, np.ndarray] = {}
    for src, arr in zip(sources, raw):
        out.update(reduce_outputs(plan, src, np.asarray(arr)))
    return out


def _gate(t: TensorPlan, plan: Plan) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the numeric tolerance gates ``t``, and its task metrics (defaults for reduced outputs)."""
    v = plan.validate
    metrics = v.get("metrics", {}).get(t.name) or v.get("metrics", {}).get(t.source)
    red = (t.reduce or {}).get("op")
    if red in INTEGER_REDUCERS:
        return False, metrics or [{"kind": "agreement", "min": 0.99}]
    if red == "topk" and t.name.endswith("_indices"):
        return False, metrics or [{"kind": "topk_overlap", "min": 0.9}]
    return True, metrics or []


def import_runner(artifact: Path) -> type:
    """Import the artifact's generated runner module and return its runner class."""
    import importlib.util
    import sys

    plan = Plan.from_json((artifact / art.PLAN).read_text())
    path = artifact / art.RUNNER
    mod_name = f"trtflow_artifact_{plan.name.replace('-', '_').replace('.', '_')}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise RecipeError(f"{path}: cannot import the generated runner")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return getattr(module, plan.class_name)  # type: ignore[no-any-return]


def _as_dict(result: Any) -> dict[str, np.ndarray]:
    if hasattr(result, "_asdict"):
        return dict(result._asdict())
    return dict(result)


def describe_candidate(report: dict[str, Any], backend: str, device: str) -> tuple[str, str | None, bool]:
    """(what ran, the engine file, whether that engine is what ran): said plainly, for tables and JSON."""
    engine = report.get("engine_file")
    built = str(report.get("backend"))
    if engine and backend == built:
        return f"{engine} ({built}) on {device}", engine, True
    if engine:
        why = (f"model.onnx (the lowered model) on {backend} {device}: {engine} ({built}) cannot run here, "
               "so the engine itself is NOT validated")
        return why, engine, False
    return f"model.onnx (the lowered model) on {backend} {device}", None, False


# Two conforming JPEG decoders may differ by one step per sample (the IDCT's rounding: JPEG's accuracy
# test, ITU-T T.83 / IEEE 1180, allows +-1): nvJPEG and libjpeg-turbo were measured at max 1, on 0.017%
# of the values. The gate is that plus margin; a wrong colour conversion or a truncated decode fails it.
DECODER_MAX_ABS = 1
DECODER_MAX_FRACTION = 0.01


def encoded_files(t: TensorPlan, sample: int) -> Any:
    """Validation input of encoded input ``t``: the recipe's sample file first, then seeded photo-like
    images at the plan shape, encoded as the recipe declares (PNG for ``png``, else JPEG quality 90)."""
    from trtflow.decode import host, synth

    n, h, w = t.shape[0], t.shape[1], t.shape[2]
    if t.sample and sample == 0 and n == 1:
        return Path(t.sample).read_bytes()
    codec = "png" if t.encoding == "png" else "jpeg"
    files = [host.encode(synth.photo(h, w, seed=1000 * sample + k), codec) for k in range(n)]
    return files[0] if n == 1 else files


def check_decoder(name: str, seen: np.ndarray, files: Any) -> dict[str, Any]:
    """The runner's decoded pixels (``Runner.decoded``) against the host decoder (libjpeg-turbo, libpng)."""
    from trtflow.decode import host, inspect

    items = files if isinstance(files, list) else [files]
    want = np.stack([host.decode_rgb(f, inspect(f)) for f in items])
    diff = np.abs(seen.astype(np.int16) - want.astype(np.int16))
    max_abs, frac = int(diff.max(initial=0)), float((diff > 0).mean()) if diff.size else 0.0
    return {"input": name, "max_abs": max_abs, "fraction_differing": frac, "max_abs_allowed": DECODER_MAX_ABS,
            "fraction_allowed": DECODER_MAX_FRACTION,
            "passed": max_abs <= DECODER_MAX_ABS and frac <= DECODER_MAX_FRACTION}


def validate_artifact(artifact: Path, *, backend: str = "auto", device: str = "auto",
                      samples: int | None = None, allow_host_code: bool = False,
                      progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Compare the artifact's runner with the reference; ``progress(done, total)`` after each sample."""
    t0 = time.perf_counter()
    plan, built = art.load(artifact)  # a truncated or replaced file or a bad plan fails here, before anything runs
    v = plan.validate
    n = samples or int(v.get("samples", 1))
    runner_cls = import_runner(artifact)
    by_name = {t.name: t for t in plan.outputs}
    cand: dict[str, list[np.ndarray]] = {t.name: [] for t in plan.outputs}
    refs: dict[str, list[np.ndarray]] = {t.name: [] for t in plan.outputs}
    folder = Path(plan.recipe_path).parent
    from trtflow.backends.onnxruntime import reference_session

    ref_sess = reference_session(Path(plan.model_path))  # one session for every sample
    with runner_cls(backend=backend, device=device, allow_host_code=allow_host_code) as runner:
        used_backend = getattr(runner, "backend", backend)
        used_device = getattr(runner, "device", device)
        encoded = [t for t in plan.inputs if t.encoding]
        worst: dict[str, dict[str, Any]] = {}
        for i in range(n):
            feeds: dict[str, Any] = generate_inputs(plan, i, folder) if len(encoded) < len(plan.inputs) else {}
            for t in encoded:
                feeds[t.name] = encoded_files(t, i)
            got = _as_dict(runner(**{plan.tensor(k).ident: x for k, x in feeds.items()}))
            got = {t.name: got[t.ident] if t.ident in got else got[t.name] for t in plan.outputs}
            for t in encoded:  # the reference sees the pixels the engine saw; the decoder is checked apart
                seen = runner.decoded(t.name)
                d = check_decoder(t.name, seen, feeds[t.name])
                if t.name not in worst or (d["max_abs"], d["fraction_differing"]) > (
                        worst[t.name]["max_abs"], worst[t.name]["fraction_differing"]):
                    worst[t.name] = d
                feeds[t.name] = seen
            ref = reference_outputs(plan, feeds, ref_sess)
            for name, seen in cand.items():
                seen.append(np.array(got[name], copy=True))
                refs[name].append(ref[name])
            if progress is not None:
                progress(i + 1, n)
    tol = v.get("tolerances", {})
    out = []
    for name, t in by_name.items():
        gate, metrics = _gate(t, plan)
        tl = tol.get(name) or tol.get(t.source) or v["default"]
        out.append(compare(name, np.stack(cand[name]), np.stack(refs[name]), atol=tl["atol"], rtol=tl["rtol"],
                           formula=v["formula"], statistic=v["statistic"], metrics=metrics, numeric_gate=gate))
    candidate, engine_file, engine_validated = describe_candidate(built, str(used_backend), str(used_device))
    return ValidationReport(
        name=plan.name, artifact=str(artifact), backend=str(used_backend), device=str(used_device),
        reference="onnxruntime CPU fp32, original model", formula=v["formula"],
        formula_text=FORMULA_TEXT[v["formula"]], statistic=v["statistic"], samples=n, outputs=out,
        seconds=time.perf_counter() - t0, candidate=candidate, engine_file=engine_file,
        engine_validated=engine_validated, decoders=list(worst.values()))


def write_report(rep: ValidationReport, path: Path) -> None:
    art.atomic_write(path, json.dumps(rep.to_dict(), indent=2, default=float) + "\n")

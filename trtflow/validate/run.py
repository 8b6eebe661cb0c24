"""``trtflow validate``: run the artifact's generated runner and the fp32 reference, compare every output.

The candidate is the generated runner itself (the code users ship), never a parallel code path.
The reference is onnxruntime on the CPU (fp32, no TF32) running the ORIGINAL model; the recipe's I/O
contract is applied around it in numpy (the same input converted to fp32 NCHW, reducers applied to its
outputs), so both sides see the same data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow import artifact as art
from trtflow import load_runner
from trtflow.errors import ModelError, TrtflowError
from trtflow.plan.model import Plan, TensorPlan
from trtflow.validate.compare import FORMULA_TEXT, OutputComparison, compare
from trtflow.validate.inputs import generate_inputs, load_data, shape_cases

if TYPE_CHECKING:
    from trtflow.decode import ImageHeader


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
    samples: int                       # per shape set (the largest, with data grouped by shape)
    outputs: list[OutputComparison] = field(default_factory=list)  # one per output per shape set
    cases: list[str] = field(default_factory=list)                 # the shape sets, in the order run
    mixed_precision: dict[str, Any] | None = None                  # the build's fp32 islands (report.json)
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
            "statistic": self.statistic, "samples": self.samples, "cases": self.cases, "passed": self.passed,
            "seconds": self.seconds, "candidate": self.candidate, "engine_file": self.engine_file,
            "engine_validated": self.engine_validated, "outputs": [o.to_dict() for o in self.outputs],
            "mixed_precision": self.mixed_precision,
        }


def reference_outputs(plan: Plan, feeds: dict[str, np.ndarray], sess: Any = None) -> dict[str, np.ndarray]:
    """Run the original model in fp32 on onnxruntime CPU with the contract applied in numpy.

    ``sess``: a session from :func:`trtflow.backends.onnxruntime.reference_session`, reused across samples.
    """
    from trtflow.backends.onnxruntime import reference_session
    from trtflow.passes.reference import fixed_feeds, reference_input
    from trtflow.passes.reference import reference_outputs as reduce_outputs

    sess = sess or reference_session(Path(plan.model_path))
    model_feeds = {t.source: reference_input(t, feeds[t.name]) for t in plan.inputs}
    model_feeds |= fixed_feeds(plan)  # inputs the recipe fixed (`value:`): constants inside the engine
    sources = list(dict.fromkeys(t.source for t in plan.outputs))
    raw = sess.run(sources, model_feeds)
    out: dict[str, np.ndarray] = {}
    for src, arr in zip(sources, raw):
        out.update(reduce_outputs(plan, src, np.asarray(arr)))
    return out


def _reference(plan: Plan, feeds: dict[str, Any], sess: Any, label: str) -> dict[str, np.ndarray]:
    """:func:`reference_outputs`; onnxruntime refusing the original model at these shapes is a ModelError
    naming the shape set and every input's shape, not an internal error."""
    try:
        return reference_outputs(plan, feeds, sess)
    except TrtflowError:
        raise
    except Exception as exc:  # onnxruntime's own error types (Fail, InvalidArgument, ...)
        shapes = ", ".join(f"{name}:{_dims(np.shape(x))}" for name, x in feeds.items())
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"the reference run (onnxruntime CPU, the original model) fails at shape set {label!r} "
                         f"({shapes}): {why[:400]}",
                         hint="the model does not run at these shapes: validate at shapes it runs "
                              "(validate.shapes, --shapes) or narrow inputs.<name>.profile") from exc


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
# test, ITU-T T.83 / IEEE 1180, allows +-1): nvJPEG's hardware decoder and libjpeg-turbo were measured at
# max 1, on 0.017% of the values. Progressive files take nvImageCodec's CUDA decoder, measured at max 2 on
# 3.5% of the values of a 64x64 photo (H200, nvImageCodec 0.9): the standard pins the IDCT's accuracy, not
# how a decoder upsamples chroma or rounds between refinement scans. The gate is that plus margin; a wrong
# colour conversion, a missing EXIF rotation or a truncated decode differs by far more.
DECODER_MAX_ABS = 1
DECODER_MAX_FRACTION = 0.01
PROGRESSIVE_MAX_ABS = 2
PROGRESSIVE_MAX_FRACTION = 0.05


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


def decoder_tolerance(header: ImageHeader) -> tuple[int, float]:
    """(max abs difference, fraction of values allowed to differ) of a decoded file against libjpeg-turbo."""
    if header.coding == "progressive":
        return PROGRESSIVE_MAX_ABS, PROGRESSIVE_MAX_FRACTION
    return DECODER_MAX_ABS, DECODER_MAX_FRACTION


def check_decoder(name: str, seen: np.ndarray, files: Any) -> dict[str, Any]:
    """The runner's decoded pixels (``Runner.decoded``) against the host decoder (libjpeg-turbo, libpng),
    file by file, each at its :func:`decoder_tolerance`; the worst file is reported."""
    from trtflow.decode import host, inspect

    items = files if isinstance(files, list) else [files]
    checks = []
    for k, f in enumerate(items):
        header = inspect(f)
        diff = np.abs(seen[k].astype(np.int16) - host.decode_rgb(f, header).astype(np.int16))
        max_abs, frac = int(diff.max(initial=0)), float((diff > 0).mean()) if diff.size else 0.0
        allowed_abs, allowed_frac = decoder_tolerance(header)
        checks.append({"input": name, "max_abs": max_abs, "fraction_differing": frac, "max_abs_allowed": allowed_abs,
                       "fraction_allowed": allowed_frac,
                       "passed": max_abs <= allowed_abs and frac <= allowed_frac})
    # the worst file: a failing one first, then the largest difference
    return min(checks, key=lambda d: (d["passed"], -d["max_abs"], -d["fraction_differing"]), default={})


def validate_artifact(artifact: Path, *, backend: str = "auto", device: str = "auto",
                      samples: int | None = None, allow_host_code: bool = False,
                      shapes: Sequence[str | Mapping[str, Sequence[int]]] | None = None,
                      progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Validate at every shape set (``shapes``: ``--shapes`` dicts or words, in the model's layout; else
    ``validate.shapes``/the default), or on every sample of ``validate.data``. ``samples`` caps the
    samples per shape set (or of the data); ``progress(done, total)`` after each sample."""
    t0 = time.perf_counter()
    plan, built = art.load(artifact)  # a truncated or replaced file or a bad plan fails here, before anything runs
    v = plan.validate
    runs = _runs(plan, samples, shapes)
    runner_cls: type[Any] = load_runner(artifact)  # the generated subclass: __call__ takes the plan's inputs
    per_output = v.per_output
    from trtflow.backends.onnxruntime import reference_session

    ref_sess = reference_session(Path(plan.model_path))  # one session for every sample
    out = []
    total, done = sum(len(b) for _, b in runs), 0
    with runner_cls(backend=backend, device=device, allow_host_code=allow_host_code) as runner:
        used_backend = getattr(runner, "backend", backend)
        used_device = getattr(runner, "device", device)
        encoded = [t for t in plan.inputs if t.encoding]
        worst: dict[str, dict[str, Any]] = {}
        for label, batch in runs:
            cand: dict[str, list[np.ndarray]] = {t.name: [] for t in plan.outputs}
            refs: dict[str, list[np.ndarray]] = {t.name: [] for t in plan.outputs}
            for k, generated in enumerate(batch):
                feeds: dict[str, Any] = dict(generated)
                for t in encoded:
                    feeds[t.name] = encoded_files(t, k)
                try:
                    got = _as_dict(runner(**{plan.tensor(x).ident: v_ for x, v_ in feeds.items()}))
                except TrtflowError:
                    raise
                except Exception:
                    if not encoded:  # the original model fails there too: that is what to say (ModelError)
                        _reference(plan, feeds, ref_sess, label)
                    raise
                got = {t.name: got[t.ident] if t.ident in got else got[t.name] for t in plan.outputs}
                for t in encoded:  # the reference sees the pixels the engine saw; the decoder is checked apart
                    seen = runner.decoded(t.name)
                    d = check_decoder(t.name, seen, feeds[t.name])
                    if t.name not in worst or (d["max_abs"], d["fraction_differing"]) > (
                            worst[t.name]["max_abs"], worst[t.name]["fraction_differing"]):
                        worst[t.name] = d
                    feeds[t.name] = seen
                ref = _reference(plan, feeds, ref_sess, label)
                for name, got_so_far in cand.items():
                    got_so_far.append(np.array(got[name], copy=True))
                    refs[name].append(ref[name])
                done += 1
                if progress is not None:
                    progress(done, total)
            for t in plan.outputs:
                pol = per_output[t.name]
                out.append(compare(t.name, np.stack(cand[t.name]), np.stack(refs[t.name]),
                                   atol=pol.atol or 0.0, rtol=pol.rtol or 0.0, formula=v.formula,
                                   statistic=pol.statistic or v.statistic, metrics=pol.metrics, numeric_gate=pol.gate == "tolerance",
                                   case=label))
    candidate, engine_file, engine_validated = describe_candidate(built, str(used_backend), str(used_device))
    mp = built.get("mixed_precision")
    return ValidationReport(
        name=plan.name, artifact=str(artifact), backend=str(used_backend), device=str(used_device),
        reference="onnxruntime CPU fp32, original model", formula=v.formula,
        formula_text=FORMULA_TEXT[v.formula], statistic=v.statistic,
        samples=max((len(b) for _, b in runs), default=0), outputs=out, cases=[label for label, _ in runs],
        mixed_precision=mp if isinstance(mp, dict) else None, seconds=time.perf_counter() - t0,
        candidate=candidate, engine_file=engine_file, engine_validated=engine_validated,
        decoders=list(worst.values()))


def _runs(plan: Plan, samples: int | None,
          shapes: Sequence[Any] | None) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
    """(label, input samples) per shape set; with ``validate.data`` (and no --shapes), its samples grouped
    by their shapes (samples of one group are stacked for the comparison)."""
    v = plan.validate
    folder = Path(plan.recipe_path).parent
    if v.data and not shapes:
        groups: dict[tuple[Any, ...], list[dict[str, np.ndarray]]] = {}
        for feeds in load_data(plan, folder)[:samples]:
            groups.setdefault(tuple(feeds[t.name].shape for t in plan.inputs), []).append(feeds)
        if len(groups) == 1:
            return [("data", next(iter(groups.values())))]
        return [("data " + ",".join(f"{t.name}:{_dims(s)}" for t, s in zip(plan.inputs, key)), group)
                for key, group in groups.items()]
    n = samples or v.samples
    return [(case.label, [generate_inputs(plan, i, folder, shapes=case.shapes) for i in range(n)])
            for case in shape_cases(plan, shapes or None)]


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "()"


def write_report(rep: ValidationReport, path: Path) -> None:
    art.atomic_write(path, json.dumps(rep.to_dict(), indent=2, default=float) + "\n")

"""Dims the model needs equal (tied dims): silero's ``input`` batch and ``state`` batch, here on a small
synthetic model of the same structure (the real model: tests/corpus/test_corpus_fixes.py).

Planning is deterministic (the merged dim is named after the earliest input dim, whatever the hash
seed), the plan records the ties, validate's shape sets give a tied group one value, and the runner
refuses a request that breaks a tie with an InputError naming both tensors.
"""

from __future__ import annotations

from pathlib import Path

from helpers.models import make_project, plan_in_subprocess, tied_state_model

TIED_RECIPE = """model: tied.onnx
inputs:
  audio: {profile: {min: [1, 8], opt: [4, 8], max: [16, 8]}}
  state: {profile: {min: [2, 1, 8], opt: [2, 4, 8], max: [2, 16, 8]}}
"""


def tied_project(folder: Path, *, names: tuple[str, str] = ("n", "m")) -> Path:
    make_project(folder)
    tied_state_model(folder / "tied.onnx", names=names)
    recipe = folder / "tied.yaml"
    recipe.write_text(TIED_RECIPE)
    return recipe


def test_plan_of_tied_dims_is_the_same_in_every_process(tmp_path: Path) -> None:
    # Before: onnxruntime's merge named the class after the first input symbol of a set, so the
    # outputs read audio[0] under PYTHONHASHSEED=0 and state[1] under 1: another cache key, and
    # `validate --no-build` called the artifact stale (exit 6).
    recipe = tied_project(tmp_path)
    first, second = (plan_in_subprocess(recipe, hash_seed=s) for s in (0, 1))
    assert first == second
    assert '"2",\n        "audio[0]",\n        "8"' in first  # named after the earliest input dim

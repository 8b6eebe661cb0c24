"""On the GPU machine: the README's code blocks run as written, the GPU-only ones (`<!-- snippet: gpu -->`)
included, on CUDA (tests/helpers/docs_snippets.py says how a document is run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gpu_runtime import REASON

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"GPU tests: {REASON}")]
from helpers.docs_snippets import ROOT, run_snippet, sandbox, snippets


def test_readme_snippets_run_on_cuda(tmp_path: Path) -> None:
    cwd = sandbox(tmp_path / "project")
    ran = 0
    for s in snippets(ROOT / "README.md"):
        run_snippet(s, cwd)
        ran += s.has("gpu")
    assert ran >= 1, "the README has no GPU snippet any more: keep at least the device-memory one"

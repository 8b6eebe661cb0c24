"""Shared fixtures: a temporary project folder (recipes resolve model paths inside a project root)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project folder (has pyproject.toml, so it is a project root)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    return tmp_path

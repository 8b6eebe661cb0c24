"""The corpus tier runs in CI (CI=true) and when asked for (`pytest -m corpus`); `make test` elsewhere skips it."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CI") == "true" or "corpus" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="corpus tier: `python scripts/corpus.py fetch` then `pytest -m corpus`")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)

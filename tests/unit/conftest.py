"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every ``WSHA_*`` variable removed from the environment."""
    for name in list(os.environ):
        if name.startswith("WSHA_"):
            monkeypatch.delenv(name)
    return monkeypatch

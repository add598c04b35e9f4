"""Shared fixtures: a real SQLite store in tmp_path and a CSV writer. Kept small on purpose."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ckptsel.store import Store


@pytest.fixture
def store(tmp_path: Path):
    """A fresh store file under tmp_path, closed after the test."""
    with Store(tmp_path / "ws" / "ckptsel.db") as s:
        yield s


@pytest.fixture
def write_csv(tmp_path: Path):
    """``write_csv(name, text)`` writes dedented text to tmp_path/name and returns the path."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write

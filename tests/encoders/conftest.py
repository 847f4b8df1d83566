"""Shared fixtures for the encoders tests: real data files and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from encoders.data import Dataset, load_ml1m, load_movielens_small

# tests/encoders/conftest.py -> repo root -> its parent holds shared/data.
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def data_folder(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        if os.environ.get("CI"):  # a CI run without the data must not look green
            pytest.fail(f"shared dataset {folder} not present (CI is set, so this is a failure, not a skip)")
        pytest.skip(f"shared dataset {folder} not present")
    return folder


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    return data_folder("ml-latest-small")


@pytest.fixture(scope="session")
def ml1m() -> Dataset:
    return load_ml1m(data_folder("ml-1m"))


@pytest.fixture(scope="session")
def ml_small(ml_small_dir: Path) -> Dataset:
    return load_movielens_small(ml_small_dir)


@pytest.fixture(scope="session")
def shared_folder():
    """``shared_folder("name")``: a shared dataset's folder (skips when absent; fails when CI is set)."""
    return data_folder

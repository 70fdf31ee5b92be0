"""Shared test helpers: locating the golden fixtures and loading the reference model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """``../shared/fixtures/zipformer_ref`` beside the checkout (or $ZIPSCRIBE_FIXTURES)."""
    env = os.environ.get("ZIPSCRIBE_FIXTURES")
    return Path(env) if env else REPO.parent / "shared" / "fixtures" / "zipformer_ref"


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    path = fixture_dir()
    if not (path / "pretrained.pt").exists():
        pytest.fail(f"golden fixtures not found at {path} (set ZIPSCRIBE_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def ref_config(ref_dir: Path) -> dict:
    return json.loads((ref_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def ref_inputs(ref_dir: Path) -> dict:
    return torch.load(ref_dir / "inputs.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def ref_expected(ref_dir: Path) -> dict:
    return torch.load(ref_dir / "expected.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def ref_model(ref_dir: Path, ref_config: dict):
    from model import load_checkpoint

    return load_checkpoint(ref_dir / "pretrained.pt", config=ref_config)

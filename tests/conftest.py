"""Shared test helpers: the golden fixtures and the reference model, and the ``needs_tools``
marker.

``@pytest.mark.needs_tools("espeak-ng", "sox", word_list=True)``: the test needs these programs
(and Debian's text data: the wamerican word list, wordnet-base and fortunes, which the corpus
generator reads). Where one is missing the test is skipped, saying which, except under
``CI=true``: there ``make test`` has installed them, so a missing tool fails the test instead of
quietly hiding what it covers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from model.training.corpus import DEFAULT_WORD_LIST as WORD_LIST  # Debian wamerican
from model.training.text_sources import FORTUNE_DIR, WORDNET_DIR  # Debian fortunes, wordnet-base

TEXT_DATA = (WORD_LIST, WORDNET_DIR / "data.noun", FORTUNE_DIR)

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_tools(*programs, word_list=False): skip without them (fail under CI=true)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device; bench/gpu_suite.sh runs these (-m cuda)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    missing: list[str] = []
    for mark in item.iter_markers("needs_tools"):
        missing += [t for t in mark.args if shutil.which(t) is None and t not in missing]
        if mark.kwargs.get("word_list"):
            missing += [str(p) for p in TEXT_DATA if not p.exists() and str(p) not in missing]
    if not missing:
        return
    message = f"needs {', '.join(missing)} (make install and make test-deps install them)"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


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

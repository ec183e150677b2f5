"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The recorded provider interactions; CI has ../shared beside the checkout.
WIRE_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire"


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    """The directory of recorded wire fixtures (fails loudly if it is missing)."""
    assert WIRE_FIXTURES.is_dir(), f"wire fixtures not found at {WIRE_FIXTURES}"
    return WIRE_FIXTURES

"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from llmbackend.testing._replay import ReplayServer

#: The recorded provider interactions; CI has ../shared beside the checkout.
WIRE_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "wire"


@pytest.fixture(scope="session")
def wire_dir() -> Path:
    """The directory of recorded wire fixtures (fails loudly if it is missing)."""
    assert WIRE_FIXTURES.is_dir(), f"wire fixtures not found at {WIRE_FIXTURES}"
    return WIRE_FIXTURES


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session for the backends under test to borrow, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def replay_server() -> AsyncIterator[ReplayServer]:
    """A loopback server with nothing scripted and no default reply, stopped after the test."""
    async with ReplayServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """``structlog.testing.capture_logs`` leaves structlog configured; later tests must see
    the library's default (unconfigured) path, as an application that configured nothing."""
    yield
    structlog.reset_defaults()

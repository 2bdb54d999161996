"""pytest plugin for bot authors (installed with flask_ampalibe): fixtures for testing bots.

- ``fake_graph``: a :class:`~flask_ampalibe.testing.FakeGraph` listening on loopback.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from .testing.graph import FakeGraph


@pytest.fixture
def fake_graph() -> Iterator[FakeGraph]:
    """A fake Graph API on 127.0.0.1 that records what the bot sends."""
    with FakeGraph() as graph:
        yield graph

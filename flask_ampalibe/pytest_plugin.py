"""pytest plugin for bot authors (installed with flask_ampalibe): fixtures for testing bots.

- ``fake_graph``: a :class:`~flask_ampalibe.testing.FakeGraph` listening on loopback.
- ``bot_tester``: makes :class:`~flask_ampalibe.testing.BotTester` objects that drive a bot
  through its real webhook route against ``fake_graph``::

      def test_hello(bot_tester):
          bot = bot_tester.project("mybot")    # or bot_tester(create_app), bot_tester(app)
          bot.send("hi")
          bot.assert_replied("Hello, Ampalibe")
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from .testing.graph import FakeGraph
    from .testing.kit import BotTesters


@pytest.fixture
def fake_graph() -> Iterator["FakeGraph"]:
    """A fake Graph API on 127.0.0.1 that records what the bot sends."""
    from .testing.graph import FakeGraph

    with FakeGraph() as graph:
        yield graph


@pytest.fixture
def bot_tester(fake_graph: "FakeGraph", tmp_path: Path) -> Iterator["BotTesters"]:
    """``bot_tester(app_or_factory)`` / ``bot_tester.project(folder)`` → a :class:`BotTester`.

    Everything it changes (environment, ``sys.path``, current folder, imported project modules,
    the app's settings) is put back after the test.
    """
    from .testing.kit import BotTesters

    with BotTesters(fake_graph, tmp_path / "bots") as testers:
        yield testers

"""Tools for testing bots built with flask_ampalibe: a fake Graph API and a webhook client."""
from __future__ import annotations

from .graph import FakeGraph, RecordedRequest

__all__ = ["FakeGraph", "RecordedRequest"]

"""The exceptions flask_ampalibe raises.  All derive from :class:`AmpalibeError`."""
from __future__ import annotations

__all__ = [
    "AmpalibeError", "ConfigurationError", "RoutingError", "PayloadError", "LimitError",
    "GraphError", "GraphTimeout", "GraphConnectionError",
]


class AmpalibeError(Exception):
    """Base class of every error raised by flask_ampalibe."""


class ConfigurationError(AmpalibeError):
    """A setting is missing or wrong; the message names the setting that fixes it."""


class RoutingError(AmpalibeError, ValueError):
    """A handler was registered wrongly (for instance the same command twice)."""


class PayloadError(AmpalibeError, ValueError):
    """A :class:`~flask_ampalibe.Payload` cannot be encoded (too long, not JSON-serialisable)."""


class LimitError(AmpalibeError, ValueError):
    """Something to send exceeds one of Messenger's limits; the message names the limit and the fix."""


class GraphError(AmpalibeError):
    """The Graph API could not be used for a request (no answer to return)."""


class GraphTimeout(GraphError):
    """The request was sent but Graph did not answer within the timeout.

    Its outcome is unknown (the message may have been delivered), so it was not sent again.
    """


class GraphConnectionError(GraphError):
    """Graph could not be reached, or the connection broke after the request was sent."""

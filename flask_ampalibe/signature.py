"""Webhook signatures: ``X-Hub-Signature-256`` over the raw request body."""
from __future__ import annotations

import hashlib
import hmac

__all__ = ["generate_signature", "verify_signature", "HEADER"]

HEADER = "X-Hub-Signature-256"


def generate_signature(secret: str, body: bytes) -> str:
    """The header value Meta sends for ``body``: ``sha256=<hex HMAC-SHA256>``.

    Useful in tests to sign the webhook bodies you post.
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of the raw ``body``, compared in constant time.

    Any header value is safe to pass, including one with non-ASCII characters (never a valid
    signature): the comparison is on bytes.
    """
    if not header:
        return False
    given = header.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(generate_signature(secret, body).encode("ascii"), given)

"""Reading JWT claims without verifying them, and the token store.

The analysis never verifies its own token (the services do); it only needs ``exp`` to report
``token_remaining_time``. Payloads are base64url, which the old SDK decoded as standard base64.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import orjson
from pydantic import SecretStr

__all__ = ["TokenStore", "decode_claims", "remaining_seconds"]


def _b64url_decode(segment: str) -> bytes:
    padded = segment + "=" * (-len(segment) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def decode_claims(token: str) -> dict[str, Any]:
    """Return the claims of a JWT without checking its signature.

    Raises:
        ValueError: The token is not three dot-separated base64url segments with a JSON object
            payload.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError(f"a JWT has 3 dot-separated parts, this one has {len(parts)}")
    try:
        claims = orjson.loads(_b64url_decode(parts[1]))
    except (binascii.Error, UnicodeEncodeError, orjson.JSONDecodeError, ValueError) as exc:
        raise ValueError("the JWT payload is not base64url-encoded JSON") from exc
    if not isinstance(claims, dict):
        raise ValueError("the JWT payload is not a JSON object")  # noqa: TRY004 - callers catch ValueError
    return claims


def remaining_seconds(token: str, *, now: float | None = None) -> int:
    """Seconds until the token's ``exp``, floored at 0; 0 when it cannot be decoded."""
    try:
        exp = decode_claims(token).get("exp")
    except ValueError:
        return 0
    if not isinstance(exp, int | float):
        return 0
    current = time.time() if now is None else now
    return max(0, int(exp - current))


class TokenStore:
    """Holds the node's current bearer token; ``/token_refresh`` swaps it in place.

    Every request reads the token from here, so a refresh needs no new HTTP session.
    """

    __slots__ = ("_token",)

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "TokenStore(token='**********')"

    @property
    def token(self) -> SecretStr:
        """The current token."""
        return self._token

    def authorization(self) -> str:
        """The ``Authorization`` header value for the current token."""
        return "Bearer " + self._token.get_secret_value()

    def replace(self, token: str) -> None:
        """Swap in a new token.

        Raises:
            ValueError: ``token`` is empty.
        """
        if not token:
            raise ValueError("the new token is empty")
        self._token = SecretStr(token)

    def remaining_seconds(self) -> int:
        """Seconds until the current token expires (0 if expired or undecodable)."""
        return remaining_seconds(self._token.get_secret_value())

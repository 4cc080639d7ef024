"""Reading JWT claims, judging a token offered by ``/token_refresh``, and the token store.

The analysis cannot verify a token's signature (it has no key; the node's services do). It reads
``exp`` to report ``token_remaining_time``, and before it takes a token from ``/token_refresh``
it checks the token's shape and claims (:func:`check_token`); the node API then proves the
token against the node's own services before swapping it in. Payloads are base64url, which the
old SDK decoded as standard base64.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from typing import Any, Final

import orjson
from pydantic import SecretStr

__all__ = [
    "MAX_TOKEN_CHARS",
    "MAX_TOKEN_LIFETIME",
    "MalformedToken",
    "TokenRefused",
    "TokenStore",
    "check_token",
    "decode_claims",
    "remaining_seconds",
]

MAX_TOKEN_LIFETIME: Final = 366 * 24 * 3600
"""The furthest ahead, in seconds, a refreshed token's ``exp`` may lie (366 days), and the
largest ``token_remaining_time`` ``/healthz`` reports. Keycloak tokens live minutes; a later
``exp`` is a forgery or a broken clock."""

MAX_TOKEN_CHARS: Final = 16 * 1024
"""The longest token ``/token_refresh`` takes. A Keycloak token is one to a few KB, and nginx
refuses request headers beyond 8 KB by default."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_-]*")
_SHOWN: Final = 60  # characters of a claim value quoted in an error


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
    """Seconds until the token's ``exp``, clamped to ``0 .. MAX_TOKEN_LIFETIME``.

    0 when the token cannot be decoded or its ``exp`` is not a number; never raises, whatever
    the token holds (``exp: 1e300`` gives :data:`MAX_TOKEN_LIFETIME`).
    """
    try:
        exp = decode_claims(token).get("exp")
    except ValueError:
        return 0
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return 0
    current = time.time() if now is None else now
    try:
        left = float(exp) - current
    except OverflowError:  # an int beyond float range: far past or far future
        return MAX_TOKEN_LIFETIME if exp > 0 else 0
    if math.isnan(left):
        return 0
    return int(min(max(left, 0.0), MAX_TOKEN_LIFETIME))


class TokenRefused(ValueError):
    """A token offered to the node is a JWT the node does not take (unsigned, for another
    analysis, expired, or with an ``exp`` out of range).

    Attributes:
        reason: What is wrong with it, for whoever sent it.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class MalformedToken(TokenRefused):
    """A token offered to the node is not a JWT at all (wrong shape, not base64url JSON)."""


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_b64url_decode(segment))
    except (binascii.Error, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise MalformedToken(f"the JWT {what} is not base64url-encoded JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(
            f"the JWT {what} must be a JSON object, it is a {type(value).__name__}"
        )
    return value


def check_token(token: str, *, analysis_id: str, now: float | None = None) -> float:
    """Check that ``token`` is a JWT this node may take as its bearer token; return its ``exp``.

    Only what can be judged without the signing key: a compact JWS of at most
    :data:`MAX_TOKEN_CHARS` characters, signed (an ``alg`` other than ``none`` and a non-empty
    signature), whose ``client_id`` claim is ``analysis_id`` and whose ``exp`` is a number in
    the future, at most :data:`MAX_TOKEN_LIFETIME` seconds ahead. Whether the signature is
    right only the node's services can tell.

    Args:
        token: The compact JWT.
        analysis_id: This node's analysis (``ANALYSIS_ID``).
        now: The current Unix time; ``time.time()`` when omitted.

    Raises:
        MalformedToken: The token is too long, not three base64url segments, or its header or
            payload is not a JSON object.
        TokenRefused: It is unsigned, for another analysis, expired, or its ``exp`` is missing,
            not a number or too far ahead.
    """
    if len(token) > MAX_TOKEN_CHARS:
        raise MalformedToken(
            f"the token is {len(token)} characters long; at most {MAX_TOKEN_CHARS} are taken "
            "(a platform token is a few KB)"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken(
            f"a JWT has 3 dot-separated parts (header.payload.signature), this one has {len(parts)}"
        )
    for what, segment in zip(("header", "payload", "signature"), parts, strict=True):
        if not _SEGMENT.fullmatch(segment):
            raise MalformedToken(
                f"the JWT {what} holds characters base64url does not use (only letters, "
                "digits, '-' and '_' are allowed, no padding or spaces)"
            )
    header = _json_segment(parts[0], "header")
    claims = _json_segment(parts[1], "payload")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none":
        raise TokenRefused(
            f"the token is unsigned (its header has alg {_shown(alg)}); only tokens signed by "
            "the platform are taken"
        )
    if not parts[2]:
        raise TokenRefused("the token has an empty signature; only signed tokens are taken")
    client = claims.get("client_id")
    if client != analysis_id:
        which = "has no client_id claim" if client is None else f"is for {_shown(client)}"
        raise TokenRefused(f"the token {which}; this node runs analysis {analysis_id!r}")
    return _checked_exp(claims.get("exp"), time.time() if now is None else now)


def _checked_exp(exp: object, now: float) -> float:
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        shown = "is missing" if exp is None else f"is {_shown(exp)}, not a number"
        raise TokenRefused(f"the token's exp claim {shown} (seconds since 1970 are expected)")
    try:
        value = float(exp)
    except OverflowError:
        value = math.inf if exp > 0 else -math.inf
    if not math.isfinite(value) or value - now > MAX_TOKEN_LIFETIME:
        raise TokenRefused(
            f"the token's exp ({_shown(exp)}) lies more than {MAX_TOKEN_LIFETIME // 86400} days "
            "ahead; platform tokens live minutes"
        )
    if value <= now:
        ago = now - value
        when = f"{math.ceil(ago)} s ago" if ago < MAX_TOKEN_LIFETIME else "long ago"
        raise TokenRefused(f"the token expired {when} (exp {_shown(exp)}); send a fresh one")
    return value


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
        """Swap in a new token (the caller has checked it, e.g. with :func:`check_token`).

        Raises:
            ValueError: ``token`` is empty.
        """
        if not token:
            raise ValueError("the new token is empty")
        self._token = SecretStr(token)

    def remaining_seconds(self) -> int:
        """Seconds until the current token expires, clamped to ``0 .. MAX_TOKEN_LIFETIME``
        (0 if expired or undecodable); never raises."""
        return remaining_seconds(self._token.get_secret_value())
